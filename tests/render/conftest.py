"""Renderer test data made by our own generators (a UV sphere, constant and procedural maps), and
ICT-FaceKit from shared data (skips if absent). Generators are handed to tests as fixtures because tests are
imported with ``--import-mode=importlib`` (no test-folder imports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expdiff_core.io.mesh import FaceMesh

ICT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ict-facekit"


def uv_sphere(radius: float = 10.0, rings: int = 32, segments: int = 64, center=(0.0, 0.0, 0.0)) -> FaceMesh:
    """A Y-up UV sphere (cm) with outward CCW quads, poles as triangles and per-corner UVs.

    Longitude phi is 0 at +Z (the front) and grows toward +X; u = (phi + pi) / pi spans [0, 2], so the -X
    half lies in UDIM 1001 and the +X half in 1002; v = latitude from 0 (south pole) to 1 (north pole).
    """
    lat = np.linspace(-np.pi / 2, np.pi / 2, rings + 1)
    lon = np.linspace(-np.pi, np.pi, segments + 1)
    ring_vertices = [np.array([[0.0, -radius, 0.0]])]
    for th in lat[1:-1]:
        ring_vertices.append(np.stack([radius * np.cos(th) * np.sin(lon[:-1]), np.full(segments, radius * np.sin(th)),
                                       radius * np.cos(th) * np.cos(lon[:-1])], axis=1))
    ring_vertices.append(np.array([[0.0, radius, 0.0]]))
    vertices = np.concatenate(ring_vertices) + np.asarray(center)
    uu, vv = np.meshgrid((lon + np.pi) / np.pi, (lat + np.pi / 2) / np.pi)  # (rings+1, segments+1)
    uvs = np.stack([uu.ravel(), vv.ravel()], axis=1)

    def vid(ring: int, seg: int) -> int:
        if ring == 0:
            return 0
        if ring == rings:
            return len(vertices) - 1
        return 1 + (ring - 1) * segments + seg % segments

    def tid(ring: int, seg: int) -> int:
        return ring * (segments + 1) + seg

    counts, fv, ft = [], [], []
    for r in range(rings):
        for s in range(segments):
            corners = [(r, s), (r, s + 1), (r + 1, s + 1), (r + 1, s)]  # CCW seen from outside
            if r == 0:
                corners = [(r, s), (r + 1, s + 1), (r + 1, s)]
            elif r == rings - 1:
                corners = [(r, s), (r, s + 1), (r + 1, s)]
            counts.append(len(corners))
            fv += [vid(a, b) for a, b in corners]
            ft += [tid(a, b) for a, b in corners]
    return FaceMesh(vertices, counts, fv, uvs, ft, np.zeros(len(counts)), ["M_Face"], "cm", "uv_sphere")


def sine_bump_normal_map(size: int = 256, frequency: float = 12.0, amplitude: float = 0.6) -> np.ndarray:
    """(3, size, size) tangent-space normal map in [0, 1] of the height field
    ``h = amplitude / (2 pi f) * sin(2 pi f u) * sin(2 pi f v)`` (OpenGL convention, row 0 = v 1)."""
    v, u = np.meshgrid((size - 0.5 - np.arange(size)) / size, (np.arange(size) + 0.5) / size, indexing="ij")
    w = 2 * np.pi * frequency
    dh_du = amplitude * np.cos(w * u) * np.sin(w * v)
    dh_dv = amplitude * np.sin(w * u) * np.cos(w * v)
    n = np.stack([-dh_du, -dh_dv, np.ones_like(u)])
    n /= np.linalg.norm(n, axis=0, keepdims=True)
    return (0.5 * n + 0.5).astype(np.float32)


def tilted_normal_map(tilt_u: float, tilt_v: float, size: int = 8) -> np.ndarray:
    """(3, size, size) constant tangent-space normal tilted toward +U by ``tilt_u`` and +V by ``tilt_v``."""
    n = np.array([tilt_u, tilt_v, 1.0])
    n /= np.linalg.norm(n)
    return np.broadcast_to((0.5 * n + 0.5)[:, None, None], (3, size, size)).astype(np.float32).copy()


def merge_meshes(parts: list[tuple[FaceMesh, str]]) -> FaceMesh:
    """One FaceMesh holding every part in order, each part's faces in its own material group."""
    vertices, uvs, counts, fv, ft, groups = [], [], [], [], [], []
    v_off = t_off = 0
    for g, (mesh, _) in enumerate(parts):
        vertices.append(mesh.vertices)
        uvs.append(mesh.uvs)
        counts.append(mesh.face_vertex_counts)
        fv.append(mesh.face_vertex_indices + v_off)
        ft.append(mesh.face_uv_indices + t_off)
        groups.append(np.full(mesh.n_faces, g))
        v_off += mesh.n_vertices
        t_off += len(mesh.uvs)
    return FaceMesh(np.concatenate(vertices), np.concatenate(counts), np.concatenate(fv), np.concatenate(uvs),
                    np.concatenate(ft), np.concatenate(groups), [name for _, name in parts], "cm", "merged")


def constant_maps(albedo=(0.5, 0.5, 0.5), specular: float = 0.04, roughness: float = 0.5,
                  tiles=(1001, 1002)) -> dict[str, dict[int, np.ndarray]]:
    """Maps with one constant value per kind on every tile (4 x 4 texels)."""
    return {
        "albedo": {t: np.broadcast_to(np.asarray(albedo, np.float32)[:, None, None], (3, 4, 4)).copy() for t in tiles},
        "specular": {t: np.full((1, 4, 4), specular, np.float32) for t in tiles},
        "roughness": {t: np.full((1, 4, 4), roughness, np.float32) for t in tiles},
    }


@pytest.fixture(scope="session")
def sphere() -> FaceMesh:
    return uv_sphere()


@pytest.fixture(name="make_sphere")
def _make_sphere():
    return uv_sphere


@pytest.fixture(name="merge_meshes")
def _merge_meshes():
    return merge_meshes


@pytest.fixture(name="constant_maps")
def _constant_maps():
    return constant_maps


@pytest.fixture(name="tilted_normal_map")
def _tilted_normal_map():
    return tilted_normal_map


@pytest.fixture(name="sine_bump_normal_map")
def _sine_bump_normal_map():
    return sine_bump_normal_map


@pytest.fixture(scope="session")
def ict_mesh() -> FaceMesh:
    path = ICT_DIR / "generic_neutral_mesh.obj"
    if not path.is_file():
        pytest.skip(f"ICT-FaceKit data not found at {path}")
    from expdiff_core.io.mesh import read_obj

    return read_obj(path)


@pytest.fixture(scope="session")
def ict_expressions() -> dict[str, np.ndarray]:
    path = ICT_DIR / "ict_facekit_deltas.npz"
    if not path.is_file():
        pytest.skip(f"ICT-FaceKit data not found at {path}")
    with np.load(path) as data:
        return {str(n): d for n, d in zip(data["expression_names"], data["expression_deltas"])}
