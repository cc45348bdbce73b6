"""UDIM tiles: tile 1001 covers u in [0, 1), v in [0, 1); tile number = 1001 + floor(u) + 10 * floor(v).

Ten tiles per row (u in [0, 10)) and ten rows (v in [0, 10)), so valid tiles are 1001..1100.
"""

from __future__ import annotations

import numpy as np

UDIM_FIRST = 1001
UDIM_LAST = 1100
TILES_PER_ROW = 10


def udim_of(uv: np.ndarray) -> np.ndarray:
    """(N, 2) float UVs -> (N,) int64 UDIM tile of each UV (no range check; see ``uv_outside_tiles``)."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    tile = np.floor(uv).astype(np.int64)
    return UDIM_FIRST + tile[:, 0] + TILES_PER_ROW * tile[:, 1]


def uv_outside_tiles(uv: np.ndarray) -> np.ndarray:
    """(N, 2) float UVs -> (N,) bool: UV is non-finite or outside every UDIM tile 1001..1100."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        inside = (uv >= 0.0) & (uv < TILES_PER_ROW)
    return ~inside.all(axis=1)


def udim_origin(udim: int) -> tuple[int, int]:
    """(u0, v0): the lower-left corner of tile ``udim`` in UV space, e.g. 1012 -> (1, 1)."""
    if not UDIM_FIRST <= int(udim) <= UDIM_LAST:
        raise ValueError(f"UDIM tile {udim} is outside {UDIM_FIRST}..{UDIM_LAST}")
    index = int(udim) - UDIM_FIRST
    return index % TILES_PER_ROW, index // TILES_PER_ROW


def format_udims(udims) -> str:
    """Human list of tiles, runs collapsed: [1001, 1002, 1003, 1011] -> '1001–1003, 1011'."""
    tiles = sorted({int(t) for t in udims})
    if not tiles:
        return "none"
    runs: list[str] = []
    start = prev = tiles[0]
    for t in tiles[1:] + [None]:
        if t is not None and t == prev + 1:
            prev = t
            continue
        runs.append(str(start) if start == prev else f"{start}–{prev}")
        if t is not None:
            start = prev = t
    return ", ".join(runs)
