import numpy as np
import pytest

from napari_flax_denoise.axes import Layout, check_image, validate_axes
from napari_flax_denoise.errors import UserInputError


@pytest.mark.parametrize("axes,shape", [("YX", (5, 6)), ("ZYX", (3, 5, 6)), ("TYX", (2, 5, 6)),
                                        ("YXC", (5, 6, 3)), ("CZYX", (2, 3, 5, 6)), ("STCYX", (2, 3, 4, 5, 6)),
                                        ("XYT", (6, 5, 2))])
def test_layout_round_trip(axes, shape):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    layout = Layout(axes, shape)
    model = layout.to_model(image)
    assert model.shape[-1] == layout.channels
    assert model.shape[1:-1] == layout.spatial_shape
    back, out_axes = layout.from_model(model)
    assert out_axes == axes
    np.testing.assert_array_equal(back, image)


def test_layout_adds_channel_axis_for_multichannel_output():
    layout = Layout("TYX", (2, 5, 6))
    out, axes = layout.from_model(np.zeros((2, 5, 6, 3)))
    assert axes == "TYXC" and out.shape == (2, 5, 6, 3)


@pytest.mark.parametrize("axes,ndim,fragment", [("YQ", 2, "unknown"), ("YYX", 3, "repeat"), ("ZX", 2, "Y and X"),
                                                ("ZYX", 2, "2"), ("", 2, "non-empty")])
def test_bad_axes_name_the_problem(axes, ndim, fragment):
    with pytest.raises(UserInputError, match=fragment):
        validate_axes(axes, ndim)


@pytest.mark.parametrize("image,fragment", [
    (np.zeros((8, 8), complex), "complex"), (np.zeros((8, 8), bool), "bool"),
    (np.zeros((0, 8)), "empty"), (np.ones((1, 1)), "too small"),
    (np.full((8, 8), np.nan), "NaN"), (np.full((8, 8), np.inf), "NaN"),
])
def test_bad_images_name_the_problem(image, fragment):
    with pytest.raises(UserInputError, match=fragment):
        check_image(image, "YX")
