"""The denoising network: a U-Net in Flax NNX, device-agnostic.

``unet``
    The U-Net, its blocks, receptive radius and halo.
``pooling``
    Max-pool and max-blur-pool (N2V2) with one-pass gradients.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "UNet": "unet",
    "halo": "unet",
    "receptive_radius": "unet",
})
