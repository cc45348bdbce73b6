"""Texture maps per UDIM tile: discovery of tile sets on disk, and reading/writing them as (C, H, W) float32.

Map kinds: ``albedo`` (colour: sRGB-decoded when stored in 8/16-bit files), ``specular``, ``roughness``,
``normal`` (tangent space, [0, 1] encoding) and ``position`` (signed, [-1, 1]; float files only) — all but
albedo are raw data. The model sees 3 channels per map: 1-channel specular/roughness are replicated.
File names carry the tile: ``albedo.1001.exr``; patterns spell it ``<UDIM>``: ``albedo.<UDIM>.exr``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..errors import ExpDiffInputError
from .images import image_pixel_type, image_shape, read_image, write_images
from .udim import UDIM_FIRST, UDIM_LAST, format_udims

MAP_KINDS = ("albedo", "specular", "roughness", "normal", "position")
COLOUR_KINDS = frozenset({"albedo"})
MODEL_CHANNELS = 3
FILE_CHANNELS = {"albedo": (3,), "specular": (1, 3), "roughness": (1, 3), "normal": (3,), "position": (3,)}
VALUE_RANGES = {"albedo": (0.0, 1.0), "specular": (0.0, 1.0), "roughness": (0.0, 1.0), "normal": (0.0, 1.0),
                "position": (-1.0, 1.0)}
# Resampling filters (Lanczos, sharpening) overshoot a map's range by a few percent; such values are
# clipped. Anything further out means another encoding (e.g. a normal map stored in [-1, 1]) and is refused.
RANGE_SLACK = 0.02
READ_SUFFIXES = (".exr", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
WRITE_SUFFIXES = (".exr", ".png", ".tif", ".tiff")  # JPEG is lossy: read, never written
UDIM_TOKEN = "<UDIM>"
_TILE_RE = re.compile(r"(?<!\d)(\d{4})(?!\d)")


@dataclass
class TextureSet:
    """Texture files of one asset: ``tiles[kind][udim] -> Path`` for each map kind present."""

    tiles: dict[str, dict[int, Path]] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, kinds: Iterable[str] = MAP_KINDS) -> "TextureSet":
        """Discover every map kind present in ``folder`` (``<kind>.<udim>.<ext>`` files); none -> error."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ExpDiffInputError(folder, "texture folder not found")
        tiles = {}
        for kind in kinds:
            found = _discover_in_folder(folder, _check_kind(kind))
            if found:
                tiles[kind] = found
        if not tiles:
            raise ExpDiffInputError(folder, f"no texture maps found (expected files like albedo.1001.exr; "
                                            f"kinds {', '.join(kinds)}; suffixes {', '.join(READ_SUFFIXES)})")
        return cls(tiles)

    @property
    def kinds(self) -> list[str]:
        """Map kinds present, in MAP_KINDS order."""
        return [k for k in MAP_KINDS if k in self.tiles]

    def __getitem__(self, kind: str) -> dict[int, Path]:
        return self.tiles[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self.tiles

    def udims(self, kind: str | None = None) -> list[int]:
        """Sorted tiles of one kind, or of all kinds together."""
        kinds = [kind] if kind else list(self.tiles)
        return sorted({t for k in kinds for t in self.tiles[k]})

    def paths(self) -> list[Path]:
        """Every file, kind by kind in MAP_KINDS order and tile order (e.g. for ``fileio.hash_files``)."""
        return [self.tiles[k][t] for k in self.kinds for t in sorted(self.tiles[k])]

    def read(self, kind: str, expected_udims: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """``read_texture_set`` on this set's tiles of ``kind``."""
        if kind not in self.tiles:
            raise ExpDiffInputError(None, f"texture set has no {kind} maps (has {', '.join(self.kinds)})")
        return read_texture_set(self.tiles[kind], kind, expected_udims=expected_udims)


def discover_udim_set(pattern_or_path: str | os.PathLike, kind: str | None = None) -> dict[int, Path]:
    """Find the tiles of one map: ``{udim: path}`` in tile order.

    Accepts a pattern with ``<UDIM>`` (``maps/albedo.<UDIM>.exr``), one tile's file (``maps/albedo.1001.exr``:
    its siblings with other tile numbers are found too), a single file without a tile number (tile 1001),
    or a folder together with ``kind`` (files ``[prefix_]<kind>.<udim>.<ext>``).
    """
    text = os.fspath(pattern_or_path)
    path = Path(text)
    if path.is_dir():
        if kind is None:
            raise ExpDiffInputError(path, "is a folder; say which map kind to look for (albedo, normal, ...)")
        found = _discover_in_folder(path, _check_kind(kind))
        if not found:
            raise ExpDiffInputError(path, f"no {kind} tiles found (expected files like {kind}.1001.exr)")
        return found
    token = re.search(re.escape(UDIM_TOKEN), path.name, re.IGNORECASE)
    if token:
        found = _match_siblings(path.parent, path.name[:token.start()], path.name[token.end():])
        if not found:
            raise ExpDiffInputError(path, "no UDIM tiles match this pattern")
        return found
    if not path.is_file():
        raise ExpDiffInputError(path, "texture file not found")
    if path.suffix.lower() not in READ_SUFFIXES:
        raise ExpDiffInputError(path, f"not a texture file suffix; use one of {', '.join(READ_SUFFIXES)}")
    tiles = [m for m in _TILE_RE.finditer(path.name) if UDIM_FIRST <= int(m.group(1)) <= UDIM_LAST]
    if not tiles:
        return {UDIM_FIRST: path}
    m = tiles[-1]  # the tile number sits last in every naming convention we know (name.1001.exr, name_1001.exr)
    return _match_siblings(path.parent, path.name[:m.start()], path.name[m.end():])


def read_texture_set(tiles: Mapping[int, str | os.PathLike] | str | os.PathLike, kind: str, *,
                     expected_udims: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Read one map's tiles as ``{udim: (3, H, W) float32}`` (tile order), ready for the model.

    tiles: ``{udim: path}`` or anything ``discover_udim_set`` accepts. expected_udims: tiles that must be
    present (e.g. ``mesh.udims``); when given, only those are read. Checks, before reading pixels: every tile
    has one resolution, and a channel count allowed for ``kind``. Albedo in 8/16-bit files is sRGB-decoded;
    1-channel specular/roughness are replicated to 3; values within RANGE_SLACK of the kind's range are
    clipped into it, values further out are an error.
    """
    kind = _check_kind(kind)
    if not isinstance(tiles, Mapping):
        tiles = discover_udim_set(tiles, kind)
    tiles = {int(t): Path(p) for t, p in sorted(tiles.items())}
    if not tiles:
        raise ExpDiffInputError(None, f"no {kind} tiles given")
    if expected_udims is not None:
        expected = sorted({int(t) for t in expected_udims})
        missing = [t for t in expected if t not in tiles]
        if missing:
            first = next(iter(tiles.values()))
            raise ExpDiffInputError(first.parent, f"no {kind} tile for UDIM {format_udims(missing)}: the mesh "
                                                  f"uses {format_udims(expected)}, found {format_udims(tiles)}")
        tiles = {t: tiles[t] for t in expected}
    shapes = {t: image_shape(p) for t, p in tiles.items()}
    first_tile = next(iter(tiles))
    h0, w0, _ = shapes[first_tile]
    for t, (h, w, c) in shapes.items():
        if (h, w) != (h0, w0):
            raise ExpDiffInputError(tiles[t], f"is {w}x{h} but {tiles[first_tile].name} is {w0}x{h0}; all tiles "
                                              "of a map must share one resolution")
        if c not in FILE_CHANNELS[kind]:
            allowed = " or ".join(str(n) for n in FILE_CHANNELS[kind])
            raise ExpDiffInputError(tiles[t], f"has {c} channel(s); {kind} maps need {allowed}")
    out = {}
    for t, p in tqdm(tiles.items(), desc=f"reading {kind}", unit="tile", disable=None, leave=False):
        if kind == "position" and image_pixel_type(p) in ("uint8", "uint16"):
            raise ExpDiffInputError(p, "position maps are signed; store them as half or float EXR")
        image = read_image(p, srgb=kind in COLOUR_KINDS)
        out[t] = _to_model_map(p, kind, image)
    return out


def write_texture_set(maps: Mapping[int, np.ndarray], folder: str | os.PathLike, kind: str, *, ext: str = "exr",
                      pixel_type: str = "half", name: str | None = None,
                      overwrite: bool = True) -> dict[int, Path]:
    """Write ``{udim: (C, H, W)}`` as ``<name>.<udim>.<ext>`` files (name defaults to ``kind``), all or nothing.

    Every array is checked first (C allowed for ``kind``, one resolution for all tiles, tiles 1001..1100),
    then all files are written to temp names and renamed only when every one succeeded. Albedo is
    sRGB-encoded in 8/16-bit files; position maps need ``half``/``float``. Returns ``{udim: path}``.
    """
    kind = _check_kind(kind)
    folder = Path(folder)
    suffix = "." + ext.lower().lstrip(".")
    stem = name or kind
    if suffix not in WRITE_SUFFIXES:
        raise ExpDiffInputError(folder / f"{stem}.{UDIM_TOKEN}{suffix}",
                                f"cannot write {suffix} textures; use one of {', '.join(WRITE_SUFFIXES)}")
    if not maps:
        raise ExpDiffInputError(folder, f"no {kind} tiles to write")
    if kind == "position" and pixel_type in ("uint8", "uint16"):
        raise ExpDiffInputError(folder / f"{stem}.{UDIM_TOKEN}{suffix}",
                                "position maps are signed; write them as half or float EXR")
    items = []
    size = None
    for udim, chw in sorted(maps.items()):
        target = folder / f"{stem}.{int(udim)}{suffix}"
        if not UDIM_FIRST <= int(udim) <= UDIM_LAST:
            raise ExpDiffInputError(target, f"{udim} is not a UDIM tile ({UDIM_FIRST}..{UDIM_LAST})")
        chw = np.asarray(chw, dtype=np.float32)
        if chw.ndim != 3 or chw.shape[0] not in FILE_CHANNELS[kind]:
            allowed = " or ".join(str(n) for n in FILE_CHANNELS[kind])
            raise ExpDiffInputError(target, f"array of shape {chw.shape} is not a (C, H, W) {kind} map "
                                            f"with C = {allowed}")
        if size is None:
            size = (chw.shape[1:], target)
        elif chw.shape[1:] != size[0]:
            raise ExpDiffInputError(target, f"is {chw.shape[2]}x{chw.shape[1]} but {size[1].name} is "
                                            f"{size[0][1]}x{size[0][0]}; all tiles of a map must share one "
                                            "resolution")
        items.append((target, np.moveaxis(chw, 0, -1)))
    written = write_images(items, pixel_type=pixel_type, srgb=kind in COLOUR_KINDS, overwrite=overwrite)
    return {int(udim): p for udim, p in zip(sorted(maps), written)}


# ---------------------------------------------------------------- internals
def _check_kind(kind: str) -> str:
    if kind not in MAP_KINDS:
        raise ExpDiffInputError(None, f"unknown map kind {kind!r}; use one of {', '.join(MAP_KINDS)}")
    return kind


def _to_model_map(path: Path, kind: str, image: np.ndarray) -> np.ndarray:
    """(H, W, C) file pixels -> (3, H, W) float32 within the kind's value range."""
    lo, hi = VALUE_RANGES[kind]
    vmin, vmax = float(image.min()), float(image.max())
    if vmin < lo - RANGE_SLACK or vmax > hi + RANGE_SLACK:
        hint = "; tangent-space normals must use the [0, 1] encoding" if kind == "normal" and vmin < 0 else ""
        raise ExpDiffInputError(path, f"holds values in [{vmin:.4g}, {vmax:.4g}]; {kind} maps must lie in "
                                      f"[{lo:g}, {hi:g}]{hint}")
    chw = np.moveaxis(np.clip(image, lo, hi), -1, 0)
    if chw.shape[0] == 1:
        chw = np.repeat(chw, MODEL_CHANNELS, axis=0)
    return np.ascontiguousarray(chw, dtype=np.float32)


def _match_siblings(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    """Files in ``folder`` named prefix + 4-digit tile + suffix (case-insensitive)."""
    if not folder.is_dir():
        raise ExpDiffInputError(folder, "texture folder not found")
    rx = re.compile(re.escape(prefix) + r"(\d{4})" + re.escape(suffix) + r"\Z", re.IGNORECASE)
    return _collect(folder, rx)


def _discover_in_folder(folder: Path, kind: str) -> dict[int, Path]:
    exts = "|".join(s.lstrip(".") for s in READ_SUFFIXES)
    rx = re.compile(rf"(?:.*[._-])?{kind}[._-](\d{{4}})\.(?:{exts})\Z", re.IGNORECASE)
    found = _collect(folder, rx)
    if not found:
        single = [p for p in sorted(folder.iterdir())
                  if p.is_file() and p.stem.lower() == kind and p.suffix.lower() in READ_SUFFIXES]
        if len(single) > 1:
            raise ExpDiffInputError(folder, f"several {kind} files ({', '.join(p.name for p in single)}); keep one")
        if single:
            found = {UDIM_FIRST: single[0]}
    return found


def _collect(folder: Path, rx: re.Pattern) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = rx.match(p.name)
        # Dot files are skipped: atomic writes in progress live there under hidden temp names.
        if not m or p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in READ_SUFFIXES:
            continue
        tile = int(m.group(1))
        if not UDIM_FIRST <= tile <= UDIM_LAST:
            continue
        if tile in found:
            raise ExpDiffInputError(p, f"tile {tile} is also in {found[tile].name}; keep one file per tile")
        found[tile] = p
    return dict(sorted(found.items()))
