"""Kernels and settings for XLA's CPU backend, used through the CPU profile (:mod:`..backend`).

``convolution``
    A faster route for the U-Net's convolutions and their gradients.
``packing``
    Training patches side by side in wide rows.
``memory``
    Keeping freed memory for the next step; aligned tile buffers; process settings.
"""
