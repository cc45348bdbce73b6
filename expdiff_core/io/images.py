"""Single images through OpenImageIO: the only place ExpDiff reads or writes pixels.

Arrays are (H, W, C) float32. 8/16-bit files hold [0, 1] values; ``srgb=True`` applies the sRGB transfer
curve on the way (decode on read, encode on write) — albedo in 8/16-bit files is sRGB, data maps are raw.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import OpenImageIO as oiio

from ..errors import ExpDiffInputError, PublishError
from ..fileio import atomic_path, diagnose_write_failure

PIXEL_TYPES = {"uint8": oiio.UINT8, "uint16": oiio.UINT16, "half": oiio.HALF, "float": oiio.FLOAT}


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decode, elementwise on [0, 1] values."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encode, elementwise on [0, 1] values."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator["oiio.ImageInput"]:
    """An open OpenImageIO input for ``path``; missing or unopenable files are ExpDiffInputErrors."""
    if not path.is_file():
        raise ExpDiffInputError(path, "image file not found")
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise ExpDiffInputError(path, f"cannot open image: {oiio.geterror() or 'unknown format'}")
    try:
        yield inp
    finally:
        inp.close()


def image_pixel_type(path: str | os.PathLike) -> str:
    """The stored pixel type of an image file: ``uint8``, ``uint16``, ``half``, ``float`` (or OIIO's name)."""
    with _open_image(Path(path)) as inp:
        return str(inp.spec().format)


def read_image(path: str | os.PathLike, *, srgb: bool = False, channels: int | None = None) -> np.ndarray:
    """Read an image as (H, W, C) float32.

    srgb: decode the sRGB curve (only applied to integer files; float/half EXR is linear already).
    channels: if given, the file must have exactly this many channels.
    Raises ExpDiffInputError for a missing, unreadable, corrupt or truncated file or a wrong channel count.
    """
    path = Path(path)
    with _open_image(path) as inp:
        spec = inp.spec()
        if channels is not None and spec.nchannels != channels:
            raise ExpDiffInputError(path, f"has {spec.nchannels} channel(s), expected {channels}")
        pixels = inp.read_image(0, 0, 0, spec.nchannels, oiio.FLOAT)
        err = inp.geterror()
    if pixels is None or err:
        raise ExpDiffInputError(path, f"corrupt or truncated image: {err or oiio.geterror() or 'no pixels'}")
    arr = np.asarray(pixels, dtype=np.float32).reshape(spec.height, spec.width, spec.nchannels)
    if not np.isfinite(arr).all():
        raise ExpDiffInputError(path, "image holds NaN or infinite pixel values")
    if srgb and spec.format.basetype in (oiio.UINT8, oiio.UINT16):
        arr = srgb_to_linear(arr)
    return arr


def image_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(H, W, C) of an image file from its header, without reading pixels."""
    with _open_image(Path(path)) as inp:
        spec = inp.spec()
        return spec.height, spec.width, spec.nchannels


def write_image(path: str | os.PathLike, image: np.ndarray, *, pixel_type: str = "half",
                srgb: bool = False, overwrite: bool = True) -> Path:
    """Write (H, W, C) or (H, W) float values atomically; format from the suffix (.exr .png .tif .jpg).

    pixel_type: ``uint8`` / ``uint16`` (values clipped to [0, 1]) or ``half`` / ``float``.
    srgb: encode the sRGB curve first (use for albedo in 8/16-bit files).
    """
    return write_images([(path, image)], pixel_type=pixel_type, srgb=srgb, overwrite=overwrite)[0]


def write_images(items: list[tuple[str | os.PathLike, np.ndarray]], *, pixel_type: str = "half",
                 srgb: bool = False, overwrite: bool = True) -> list[Path]:
    """Write several images all or nothing: each goes to a temp file first, and only when every one is
    written are they renamed into place; any failure removes all temp files and leaves no target touched.

    Arguments as ``write_image``; every array is checked before any file is created.
    """
    prepared = [(Path(path), *_prepare_pixels(Path(path), image, pixel_type, srgb)) for path, image in items]
    for path, _, _ in prepared:
        # Renames are the only step after the temps are written; refuse here what would make one fail.
        if path.is_dir():
            raise ExpDiffInputError(path, "is a folder; cannot write an image there")
    try:
        with contextlib.ExitStack() as stack:
            temps = [stack.enter_context(atomic_path(path, overwrite=overwrite)) for path, _, _ in prepared]
            for (path, arr, spec), tmp in zip(prepared, temps):
                _write_pixels(path, tmp, arr, spec)
    except OSError as exc:
        raise PublishError(f"{exc.filename or prepared[0][0]}: cannot write image ({exc.strerror or exc})") from None
    return [path for path, _, _ in prepared]


def _prepare_pixels(path: Path, image: np.ndarray, pixel_type: str, srgb: bool) -> tuple[np.ndarray, "oiio.ImageSpec"]:
    if pixel_type not in PIXEL_TYPES:
        raise ExpDiffInputError(path, f"unknown pixel type {pixel_type!r}; use one of {list(PIXEL_TYPES)}")
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ExpDiffInputError(path, f"image array must be (H, W, C), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ExpDiffInputError(path, "refusing to write NaN or infinite pixel values")
    integer = pixel_type in ("uint8", "uint16")
    if srgb and integer:
        arr = linear_to_srgb(arr)
    if integer:
        arr = np.clip(arr, 0.0, 1.0)
    h, w, c = arr.shape
    spec = oiio.ImageSpec(w, h, c, PIXEL_TYPES[pixel_type])
    # An empty DateTime keeps OpenImageIO from stamping the write time: same pixels, same bytes.
    spec.attribute("DateTime", "")
    if srgb and integer:
        spec.attribute("oiio:ColorSpace", "srgb_rec709_scene")
    return np.ascontiguousarray(arr), spec


def _write_pixels(path: Path, tmp: Path, arr: np.ndarray, spec: "oiio.ImageSpec") -> None:
    """Encode ``arr`` into ``tmp`` with the writer ``path``'s suffix selects."""
    out = oiio.ImageOutput.create(str(path))
    if out is None:
        raise ExpDiffInputError(path, f"no image writer for this suffix: {oiio.geterror()}")
    try:
        if not out.open(str(tmp), spec) or not out.write_image(arr):
            message = out.geterror()
            # OpenImageIO does not say why a write failed: name a full, read-only or unwritable disk.
            cause = diagnose_write_failure(path, needed_bytes=arr.nbytes, message=message)
            if cause is not None:
                raise cause
            raise ExpDiffInputError(path, f"cannot write image: {message}")
    finally:
        out.close()
