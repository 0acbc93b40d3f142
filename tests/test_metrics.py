import numpy as np
import pytest

from napari_flax_denoise import classical_denoise, evaluate, psnr
from napari_flax_denoise.errors import UserInputError


def test_psnr_known_value():
    target = np.zeros((10, 10))
    target[0, 0] = 100
    prediction = target + 1.0  # MSE 1, range 100 -> 40 dB
    assert psnr(prediction, target) == pytest.approx(40.0)
    assert psnr(prediction, target, data_range=10) == pytest.approx(20.0)


def test_evaluate_keys_and_shape_check(clean, noisy):
    scores = evaluate(noisy, clean, data_range=255)
    assert set(scores) == {"psnr", "ssim", "mse"} and 0 < scores["ssim"] < 1
    with pytest.raises(UserInputError, match="same shape"):
        evaluate(noisy[:10], clean)


@pytest.mark.parametrize("method", ["nlm", "tv", "wavelet", "jinv"])
def test_classical_baselines_improve_psnr(clean, noisy, method):
    out = classical_denoise(noisy, method)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert psnr(out, clean, data_range=255) > psnr(noisy, clean, data_range=255) + 2
