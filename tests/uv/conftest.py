"""Meshes for the UV tests: a two-tile wavy sheet made here, and ICT-FaceKit from shared data (skips if absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expdiff_core.io.mesh import FaceMesh, read_obj
from expdiff_core.uv import VertexSampler, uv_raster

ICT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ict-facekit"
ICT_SKIN = ("M_Face", "M_BackHead")


def sheet_mesh(n: int = 17) -> FaceMesh:
    """A wavy n x n vertex quad sheet (cm) whose left half lies on UDIM 1001 and right half on 1002, plus a
    detached 3 x 3 "eye" patch (group ``eye``) floating in front of the sheet's centre.

    The middle column is a UV seam: its vertices have one UV on each tile. Sheet UV islands leave a
    5% margin around each tile so dilation has something to fill.
    """
    half = n // 2
    xs, ys = np.meshgrid(np.linspace(-5.0, 5.0, n), np.linspace(-5.0, 5.0, n))
    zs = 0.8 * np.sin(xs) * np.cos(0.7 * ys)
    sheet = np.stack([xs, ys, zs], axis=-1).reshape(-1, 3)
    vid = np.arange(n * n).reshape(n, n)  # [row (y), column (x)]

    uvs, uv_id = [], {}
    for tile, columns in ((0, range(0, half + 1)), (1, range(half, n))):
        for r in range(n):
            for c in columns:
                u = tile + 0.05 + 0.9 * (c - columns.start) / (len(columns) - 1)
                v = 0.05 + 0.9 * r / (n - 1)
                uv_id[(tile, r, c)] = len(uvs)
                uvs.append((u, v))
    fv, ft = [], []
    for r in range(n - 1):
        for c in range(n - 1):
            tile = 0 if c < half else 1
            quad = [(r, c), (r, c + 1), (r + 1, c + 1), (r + 1, c)]
            fv += [vid[q] for q in quad]
            ft += [uv_id[(tile, *q)] for q in quad]
    n_sheet_faces = (n - 1) ** 2

    eye = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 3), np.linspace(-0.5, 0.5, 3)), -1).reshape(-1, 2)
    eye_vertices = np.concatenate([eye, np.full((9, 1), 2.0)], axis=1)
    eye_base, eye_uv_base = len(sheet), len(uvs)
    uvs += [(0.4 + 0.1 * (i % 3), 0.4 + 0.1 * (i // 3)) for i in range(9)]  # overlaps the sheet on 1001
    for r in range(2):
        for c in range(2):
            quad = [r * 3 + c, r * 3 + c + 1, (r + 1) * 3 + c + 1, (r + 1) * 3 + c]
            fv += [eye_base + q for q in quad]
            ft += [eye_uv_base + q for q in quad]
    groups = [0] * n_sheet_faces + [1] * 4
    return FaceMesh(np.concatenate([sheet, eye_vertices]), np.full(n_sheet_faces + 4, 4), np.array(fv),
                    np.array(uvs), np.array(ft), np.array(groups), ["skin", "eye"], "cm", "sheet")


@pytest.fixture(scope="session")
def sheet() -> FaceMesh:
    return sheet_mesh()


@pytest.fixture(scope="session")
def ict_data():
    """(neutral FaceMesh, expression names list, expression deltas (57, V, 3) cm, identity deltas)."""
    if not (ICT_DIR / "generic_neutral_mesh.obj").is_file():
        pytest.skip(f"ICT-FaceKit data not found at {ICT_DIR}")
    mesh = read_obj(ICT_DIR / "generic_neutral_mesh.obj")
    data = np.load(ICT_DIR / "ict_facekit_deltas.npz")
    return mesh, [str(s) for s in data["expression_names"]], data["expression_deltas"], data["identity_deltas"]


@pytest.fixture(scope="session")
def ict_rasters_512(ict_data):
    """ICT skin rasterised once per session at 512^2 per tile (~0.5 s)."""
    return uv_raster(ict_data[0], 512, groups=ICT_SKIN)


@pytest.fixture(scope="session")
def ict_sampler_512(ict_data, ict_rasters_512):
    """Least-squares vertex sampler on the ICT skin rasters (factorised once)."""
    return VertexSampler(ict_data[0], ict_rasters_512)
