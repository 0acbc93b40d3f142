"""Reading and writing images: every format a user hands us, validated, written atomically.

``files``
    Open / read / write by file type (TIFF, OME-TIFF, NumPy, PNG, ...); output paths checked before work.
``listing``
    Which images files, folders and glob patterns name, and what each result in a folder is called.
``limits``
    What a file claims (sizes, links) checked before anything is allocated or followed.
``atomic``
    Outputs written to a temporary and renamed into place; leftovers of killed runs removed.
``dicom``, ``nifti``, ``zarr_store``
    Medical formats and chunked (OME-)zarr stores, read lazily where they are large.
``samples``
    The napari samples shipped with the package.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "open_image": "files",
    "read_image": "files",
    "write_image": "files",
    "ImageFile": "files",
})
