"""Left/right checks of generated expressions: which half a unit moves, and whether _L and _R mirror each other.

The character's left is +X. ``mirror_index`` pairs every vertex with the vertex nearest its reflection
through x = 0 on the neutral, so a right-side offset field can be reflected onto the left side and compared.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ..facs import UNIT_NAMES


def mirror_index(vertices: np.ndarray) -> np.ndarray:
    """(V,) int: for each vertex of ``vertices`` (V, 3), the vertex nearest its mirror image (-x, y, z)."""
    reflected = np.asarray(vertices, np.float64) * np.array([-1.0, 1.0, 1.0])
    return cKDTree(np.asarray(vertices, np.float64)).query(reflected)[1]


def side_ratio(offsets: np.ndarray, vertices: np.ndarray, side: str) -> float:
    """Mean displacement of the unit's own half over the other half (``side`` "L": +X is its own)."""
    magnitude = np.linalg.norm(offsets, axis=1)
    left = vertices[:, 0] > 0
    own, other = (left, ~left) if side == "L" else (~left, left)
    return float(magnitude[own].mean() / max(magnitude[other].mean(), 1e-12))


def mirror_cosine(left_offsets: np.ndarray, right_offsets: np.ndarray, mirror: np.ndarray) -> float:
    """Cosine between the _L offsets (V, 3) and the _R offsets reflected onto the left: 1 = perfect mirrors."""
    reflected = right_offsets[mirror] * np.array([-1.0, 1.0, 1.0])
    a, b = left_offsets.ravel(), reflected.ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def side_pairs() -> list[tuple[str, str]]:
    """Every (unit_L, unit_R) pair of the vocabulary."""
    return [(u, u[:-2] + "_R") for u in UNIT_NAMES if u.endswith("_L") and u[:-2] + "_R" in UNIT_NAMES]


def sides_table(neutral: np.ndarray, expressions: dict[str, np.ndarray]) -> list[dict]:
    """Per L/R pair present in ``expressions`` ({unit: (V, 3) vertices}): both side ratios and the mirror cosine."""
    mirror = mirror_index(neutral)
    rows = []
    for left, right in side_pairs():
        if left in expressions and right in expressions:
            dl, dr = expressions[left] - neutral, expressions[right] - neutral
            rows.append({"pair": left[:-2], "ratio_L": side_ratio(dl, neutral, "L"),
                         "ratio_R": side_ratio(dr, neutral, "R"), "mirror_cosine": mirror_cosine(dl, dr, mirror)})
    return rows
