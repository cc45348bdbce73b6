"""Small meshes built in code for the io tests (no committed binaries)."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.io.mesh import FaceMesh


def grid_mesh(nx: int = 4, ny: int = 3, units: str = "cm") -> FaceMesh:
    """A bumpy (nx x ny) grid: quads, with the top row split into triangles; two UV islands.

    Faces left of the middle column are group ``M_Left`` with UVs in tile 1001, the others ``M_Right`` in
    tile 1002, so the vertices of the middle column sit on a UV seam and carry two UVs each.
    """
    half = nx // 2
    vid = lambda i, j: j * (nx + 1) + i  # noqa: E731
    xs, ys = np.meshgrid(np.arange(nx + 1), np.arange(ny + 1))
    vertices = np.stack([xs.ravel(), ys.ravel(), 0.1 * xs.ravel() * ys.ravel()], axis=1).astype(np.float32)
    uv_index: dict[tuple[int, int, int], int] = {}
    uvs: list[tuple[float, float]] = []

    def uv(i: int, j: int, island: int) -> int:
        key = (i, j, island)
        if key not in uv_index:
            uv_index[key] = len(uvs)
            local = (i - island * half) / (nx - half if island else half)
            uvs.append((island + 0.05 + 0.9 * local, 0.05 + 0.9 * j / ny))
        return uv_index[key]

    counts, fvi, fti, groups = [], [], [], []
    for j in range(ny):
        for i in range(nx):
            island = int(i >= half)
            corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)]
            polys = [corners] if j < ny - 1 else [corners[:3], [corners[0], corners[2], corners[3]]]
            for poly in polys:
                counts.append(len(poly))
                fvi += [vid(a, b) for a, b in poly]
                fti += [uv(a, b, island) for a, b in poly]
                groups.append(island)
    return FaceMesh(vertices, counts, fvi, np.asarray(uvs), fti, groups, ["M_Left", "M_Right"], units, "grid")


@pytest.fixture
def small_mesh() -> FaceMesh:
    """grid_mesh(): 20 vertices, 16 faces (8 quads, 8 triangles), 24 UVs (4 seam vertices carry two),
    groups M_Left/M_Right, UDIM tiles 1001 and 1002."""
    return grid_mesh()


@pytest.fixture
def make_grid_mesh():
    """The grid_mesh generator, for tests that need another size or unit."""
    return grid_mesh
