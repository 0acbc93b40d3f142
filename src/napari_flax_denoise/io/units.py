"""Units of physical spacing: each format's spelling read into one, and written back in each format's.

Readers record ``metadata["units"]`` (axis letter -> ``"mm"``, ``"µm"`` ...)
next to the spacing; writers pass it on where the format can hold it.
"""

from __future__ import annotations

_SPELLINGS = {
    "m": ("m", "meter", "metre"), "mm": ("mm", "millimeter", "millimetre"),
    "µm": ("µm", "μm", "um", "micron", "micrometer", "micrometre"), "nm": ("nm", "nanometer", "nanometre"),
    "s": ("s", "sec", "second"), "ms": ("ms", "msec", "millisecond"),
}
_CANONICAL = {spelling: unit for unit, spellings in _SPELLINGS.items() for spelling in spellings}
NGFF = {"m": "meter", "mm": "millimeter", "µm": "micrometer", "nm": "nanometer", "s": "second", "ms": "millisecond"}
NIFTI = {"m": "meter", "mm": "mm", "µm": "micron"}
OME = {"m": "m", "mm": "mm", "µm": "µm", "nm": "nm", "s": "s", "ms": "ms"}


def canonical(unit) -> str | None:
    """Our spelling of ``unit`` (``"micrometer"`` -> ``"µm"``), or None when it is not a length or time we know."""
    return _CANONICAL.get(str(unit).strip().lower().replace("μ", "µ")) if unit is not None else None


def known(units: dict | None) -> dict:
    """Only the axes whose unit we know, in our spelling."""
    found = {axis: canonical(unit) for axis, unit in (units or {}).items()}
    return {axis: unit for axis, unit in found.items() if unit is not None}
