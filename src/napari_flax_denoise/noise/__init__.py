"""The image's own noise, measured from the image: below inference and training, which both use it.

``line``
    The noise variance as a line in the intensity (constant and photon noise),
    fitted from the finest wavelet details; pixel fusion weighs with it.
``resident_line``
    ``line`` in JAX, for crops on the device (the accelerator route).
``level``
    The noise level a noise-aware network takes as input: estimated with
    ``line``, or given by the user, as two constant channels.
"""
