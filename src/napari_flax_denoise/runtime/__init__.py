"""Where the package meets the hardware: the one place that knows the device.

``backend``
    The profile (``cpu`` or ``accelerator``) that decides everything that differs between them.
``devices``
    Spreading batches over several devices.
``compile_cache``
    The disk cache of compiled programs for the processes the package owns.
``convolution``
    XLA's own convolution.
``cpu``
    CPU-only kernels: the convolution route, packed training batches, memory keeping.

It imports nothing else of the package.
"""
