"""USD delivery fixtures: a small synthetic face with all 56 expression units, its maps, a published asset.

The face is a curved quad sheet over UDIM tiles 1001 and 1002 (a UV seam down the middle, so seam vertices
carry two UVs), with a row of triangles in a second material group. Each unit moves a compact bump around
its own centre, so most blendshapes are sparse; jawOpen moves every vertex (the dense case).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from expdiff_core.facs import UNITS
from expdiff_core.io.mesh import FaceMesh
from expdiff_core.usd import ExportOptions, Provenance, publish_character

MAP_SIZE = 16  # texels per tile side: tiny keeps 57 x 4 x 2 EXR files fast to write and read
KINDS_CHANNELS = {"albedo": 3, "specular": 1, "roughness": 1, "normal": 3}
DENSE_UNIT = "jawOpen"


def synthetic_face(n: int = 13) -> FaceMesh:
    """(n*n)-vertex face sheet in cm: quads, one triangle row, UV seam at the middle column, tiles 1001-1002."""
    xs = np.linspace(-8.0, 8.0, n)
    X, Y = np.meshgrid(xs, np.linspace(-10.0, 10.0, n))
    Z = 6.0 - 0.06 * X**2 - 0.03 * Y**2  # dome, so normals vary across the face
    vertices = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1).astype(np.float32)
    mid = n // 2
    # UVs per grid point, twice on the seam column: the left copy closes tile 1001, the right one opens 1002.
    uv_left = [((i / mid) * 0.98 + 0.01, (j / (n - 1)) * 0.98 + 0.01) for j in range(n) for i in range(mid + 1)]
    uv_right = [(1.01 + ((i - mid) / (n - 1 - mid)) * 0.98, (j / (n - 1)) * 0.98 + 0.01)
                for j in range(n) for i in range(mid, n)]
    uvs = np.array(uv_left + uv_right, dtype=np.float32)

    def uv_index(i: int, j: int, right: bool) -> int:
        return len(uv_left) + j * (n - mid) + (i - mid) if right else j * (mid + 1) + i

    counts, corners, uv_corners, groups = [], [], [], []
    for j in range(n - 1):
        for i in range(n - 1):
            quad = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)]
            right = i >= mid
            polys = [quad] if j < n - 2 else [quad[:3], [quad[0], quad[2], quad[3]]]
            for poly in polys:
                counts.append(len(poly))
                corners += [b * n + a for a, b in poly]
                uv_corners += [uv_index(a, b, right) for a, b in poly]
                groups.append(0 if j < n - 2 else 1)
    return FaceMesh(vertices, np.array(counts), np.array(corners), uvs, np.array(uv_corners), np.array(groups),
                    ["M_Face", "M_Lashes"], "cm", "synthetic_face")


def expression_vertices(face: FaceMesh) -> dict[str, np.ndarray]:
    """unit name -> (V, 3) float32 for every FACS unit; each a compact bump, jawOpen a global shear."""
    v = face.vertices.astype(np.float64)
    rng = np.random.default_rng(7)
    out = {}
    for k, unit in enumerate(UNITS):
        if unit.name == DENSE_UNIT:
            moved = v + np.stack([0.05 * v[:, 0], -0.4 - 0.1 * v[:, 1], 0.02 * v[:, 2]], axis=1)
        else:
            centre = v[(k * 37) % len(v)]
            r = np.linalg.norm(v - centre, axis=1) / 3.5
            bump = np.where(r < 1.0, (1.0 - r**2) ** 2, 0.0)[:, None]  # zero outside radius: sparse
            moved = v + bump * rng.normal(0.0, 0.6, size=3)
        out[unit.name] = moved.astype(np.float32)
    return out


def expression_maps(names, tiles=(1001, 1002), size: int = MAP_SIZE) -> dict:
    """expression -> kind -> tile -> (C, size, size) float32 in [0, 1], different for every expression."""
    maps = {}
    for e, name in enumerate(names):
        rng = np.random.default_rng(1000 + e)
        maps[name] = {kind: {t: rng.random((c, size, size), dtype=np.float32) for t in tiles}
                      for kind, c in KINDS_CHANNELS.items()}
    return maps


def provenance() -> Provenance:
    return Provenance(model_name="expdiff-denoiser", model_version="7", seed=1234, scheduler="DDIMScheduler",
                      steps=25, mlflow_run_id="0123abcd", prefect_flow_run_id="f-42",
                      input_hashes={"neutral_mesh": "a" * 64, "albedo": "b" * 64})


@pytest.fixture(scope="session")
def make_maps():
    """The ``expression_maps`` factory, for tests that publish their own small assets."""
    return expression_maps


@pytest.fixture(scope="session")
def provenance_record() -> Provenance:
    return provenance()


@pytest.fixture(scope="session")
def dense_unit() -> str:
    return DENSE_UNIT


@pytest.fixture(scope="session")
def face() -> FaceMesh:
    return synthetic_face()


@pytest.fixture(scope="session")
def expressions(face) -> dict[str, np.ndarray]:
    return expression_vertices(face)


@pytest.fixture(scope="session")
def maps(expressions) -> dict:
    return expression_maps(["neutral", *expressions])


@pytest.fixture(scope="session")
def published(tmp_path_factory, face, expressions, maps):
    """The full asset: 56 blendshapes, 57 map sets on two tiles, shapes layer included."""
    out = tmp_path_factory.mktemp("usd-full")
    return publish_character(out, "hero", face, expressions, maps, provenance(),
                             ExportOptions(write_shapes=True))


@pytest.fixture(scope="session")
def small_published(tmp_path_factory, face, expressions):
    """A three-expression asset for the tests that break things on purpose."""
    names = ["jawOpen", "mouthSmile_L", "browDown_R"]
    shapes = {n: expressions[n] for n in names}
    out = tmp_path_factory.mktemp("usd-small")
    return publish_character(out, "hero", face, shapes, expression_maps(["neutral", *names]), provenance())


@pytest.fixture
def broken_copy(small_published, tmp_path):
    """A fresh copy of the small asset's version folder to damage; returns its entry layer."""
    target = tmp_path / "hero" / "v001"
    shutil.copytree(small_published.version_dir, target)
    return target / "hero.usda"

