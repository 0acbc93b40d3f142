"""Regenerate the files in ``sample_data/`` from packages on PyPI.

Run once with the source wheels unpacked (see ``sample_data/README.md``)::

    pip download --no-deps stardist nibabel -d /tmp/wheels
    python scripts/make_samples.py /tmp/wheels

Every file gets a fixed seed where noise is synthetic, so the output is
byte-for-byte reproducible.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile

OUT = Path(__file__).resolve().parent.parent / "sample_data"


def _write(name, data, axes, spacing=None, unit="µm"):
    metadata = {"axes": axes}
    if spacing:
        for axis, size in zip(axes[-len(spacing):], spacing):
            metadata[f"PhysicalSize{axis}"] = float(size)
            metadata[f"PhysicalSize{axis}Unit"] = unit
    tifffile.imwrite(OUT / name, data, ome=True, metadata=metadata, compression="zlib")
    print(f"{name}: {data.shape} {data.dtype}, {(OUT / name).stat().st_size / 1e3:.0f} kB")


def _from_wheel(wheels: Path, pattern: str, member: str, target: Path) -> Path:
    wheel = next(wheels.glob(pattern))
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read(member))
    return target


def main(wheels: str) -> None:
    import nibabel
    import pydicom
    from pydicom.data import get_testdata_file
    from skimage import data

    wheels = Path(wheels)
    tmp = Path("/tmp")
    # Real noise: nuclei (stardist / DSB2018), fMRI volume (nibabel), CT slice (pydicom).
    nuclei = tifffile.imread(_from_wheel(wheels, "stardist-*.whl", "stardist/data/images/img2d.tif",
                                         tmp / "img2d.tif"))
    _write("nuclei2d_noisy.tif", nuclei, "YX")
    nifti = nibabel.load(_from_wheel(wheels, "nibabel-*.whl", "nibabel/tests/data/example4d.nii.gz",
                                     tmp / "example4d.nii.gz"))
    volume = np.asarray(nifti.dataobj[..., 0]).transpose(2, 1, 0)  # x, y, z -> Z, Y, X
    zooms = nifti.header.get_zooms()[:3][::-1]
    _write("fmri3d_noisy.tif", volume.astype(np.int16), "ZYX", [round(float(z), 3) for z in zooms], "mm")
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    _write("ct2d.tif", hu.astype(np.int16), "YX", [float(s) for s in ct.PixelSpacing], "mm")
    # A supervised pair: clean quantitative-phase cell, synthetic Poisson-Gaussian noise.
    clean = data.cell()
    rng = np.random.default_rng(2026)
    photons = rng.poisson(clean.astype(np.float64) / 255 * 30)  # 30 photons at the brightest pixel
    noisy = np.clip(np.round(100 + photons + rng.normal(0, 2, clean.shape)), 0, 65535).astype(np.uint16)
    _write("cell2d_clean.tif", clean, "YX", [0.107, 0.107])
    _write("cell2d_noisy.tif", noisy, "YX", [0.107, 0.107])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/wheels")
