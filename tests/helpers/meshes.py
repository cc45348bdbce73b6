"""Tiny meshes built in code for tests."""

from __future__ import annotations

import numpy as np

from expdiff_core.io.mesh import FaceMesh


def sheet_face(n: int = 9) -> FaceMesh:
    """An n x n flat quad sheet (cm), one 'skin' group, UVs inset in tile 1001."""
    t = np.linspace(0.0, 1.0, n)
    uu, vv = np.meshgrid(t, t)
    uvs = np.stack([0.05 + 0.9 * uu.ravel(), 0.05 + 0.9 * vv.ravel()], axis=1)
    vertices = np.concatenate([uvs * 12.0, np.zeros((n * n, 1))], axis=1)
    vid = np.arange(n * n).reshape(n, n)
    quads = np.stack([vid[:-1, :-1], vid[:-1, 1:], vid[1:, 1:], vid[1:, :-1]], axis=-1).reshape(-1)
    faces = (n - 1) ** 2
    return FaceMesh(vertices, np.full(faces, 4), quads, uvs, quads, np.zeros(faces), ["skin"], "cm", "sheet")
