"""The disk cache of compiled programs used by the processes we start (command line, training child)."""

import json
import os
import subprocess
import sys
import time

import tifffile

from napari_flax_denoise.runtime.compile_cache import machine_type, trim

HIT = "Persistent compilation cache hit for 'jit_train_step'"


def _enable(*settings: dict) -> list[str]:
    """The folder enable_compilation_cache picks in a fresh process per environment in ``settings``
    ("None" when off); the processes run at once."""
    script = "from napari_flax_denoise.runtime.compile_cache import enable_compilation_cache as e; print(e())"
    environ = {k: v for k, v in os.environ.items() if k not in ("NAPARI_FLAX_DENOISE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**environ, **env}) for env in settings]
    outputs = [run.communicate() for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outputs]
    return [out.strip().splitlines()[-1] for out, _ in outputs]


def test_a_second_training_process_loads_its_step_instead_of_compiling(tmp_path, noisy):
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    (tmp_path / "config.json").write_text(json.dumps({"features": 8, "batch_size": 4, "patch_size": 32}))
    env = {**os.environ, "NAPARI_FLAX_DENOISE_CACHE": str(tmp_path / "xla"), "JAX_LOG_COMPILES": "1"}
    runs = [subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", "train", str(tmp_path / "noisy.tif"),
                            "--axes", "YX", "--output", str(tmp_path / f"m{i}"), "--epochs", "1", "--steps-per-epoch",
                            "2", "--config", str(tmp_path / "config.json"), "--quiet"],
                           capture_output=True, text=True, env=env) for i in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[-1].stderr
    assert HIT not in runs[0].stderr and HIT in runs[1].stderr
    assert [p.name for p in (tmp_path / "xla").iterdir()] == [machine_type()]


def test_the_cache_folder_follows_the_settings(tmp_path):
    (tmp_path / "file").write_text("")
    assert _enable({"NAPARI_FLAX_DENOISE_CACHE": "off"},
                   {"NAPARI_FLAX_DENOISE_CACHE": str(tmp_path / "ours")},
                   {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")},  # JAX's own wins
                   {"XDG_CACHE_HOME": str(tmp_path / "home")},
                   {"NAPARI_FLAX_DENOISE_CACHE": str(tmp_path / "file" / "below")}) == [  # cannot be made: off
        "None", str(tmp_path / "ours" / machine_type()), str(tmp_path / "jax"),
        str(tmp_path / "home" / "napari-flax-denoise" / "xla" / machine_type()), "None"]


def test_trim_removes_the_oldest_programs_first(tmp_path):
    now = time.time()
    for age, name in enumerate(["newest", "middle", "oldest"]):
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (now - age * 60, now - age * 60))
    trim(tmp_path, 250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle", "newest"]
    trim(tmp_path, 1000)
    assert len(list(tmp_path.iterdir())) == 2
