"""A dask.distributed LocalCluster of 2 worker processes on loopback, as an HPC cluster would be used."""

import numpy as np
import pytest
import tifffile

from napari_flax_denoise import denoise
from napari_flax_denoise.models.checkpoint import save_model

from test_cli import flax_denoise

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


def test_cluster_matches_local_and_loads_the_model_once_per_worker(client, tiny_model, noisy, tmp_path):
    from napari_flax_denoise.inference.cluster import denoise_on_cluster

    save_model(tiny_model, tmp_path / "model")
    stack = np.stack([noisy, noisy[::-1], noisy.T, noisy[:, ::-1]])
    result = denoise_on_cluster(stack, tmp_path / "model", axes="TYX", client=client)
    np.testing.assert_allclose(result, denoise(stack, tiny_model, axes="TYX"), atol=1e-4)
    half = denoise_on_cluster(stack[:2], tmp_path / "model", axes="TYX", client=client, precision="bf16")
    np.testing.assert_allclose(half, denoise(stack[:2], tiny_model, axes="TYX", precision="bf16"), atol=1e-3)
    assert not np.allclose(half, result[:2], atol=1e-5)  # bfloat16 arithmetic did run on the workers

    def loads():
        from napari_flax_denoise.inference.cluster import worker_model

        return worker_model.cache_info().misses

    per_worker = client.run(loads)
    assert len(per_worker) == 2 and set(per_worker.values()) <= {0, 1} and sum(per_worker.values()) >= 1


def test_cli_scheduler_option_denoises_on_the_cluster(client, tiny_model, noisy, tmp_path):
    save_model(tiny_model, tmp_path / "model")
    stack = np.stack([noisy, noisy[::-1]])
    tifffile.imwrite(tmp_path / "in.tif", stack, metadata={"axes": "TYX"}, ome=True)
    run = flax_denoise("denoise", tmp_path / "in.tif", "--output", tmp_path / "out.tif", "--model", tmp_path / "model",
                       "--scheduler", client.scheduler.address, "--quiet")
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif"), denoise(stack, tiny_model, axes="TYX"), atol=1e-4)
