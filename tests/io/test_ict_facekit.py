"""Acceptance on the real ICT-FaceKit neutral (skips when ../shared/data/ict-facekit is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.io.mesh import read_mesh, write_obj, write_usd_mesh
from expdiff_core.io.template import check_template, template_signature

ICT_GROUPS = ["M_Face", "M_BackHead", "M_GumsTongue", "M_Teeth", "M_ScleraLeft", "M_IrisLeft", "M_ScleraRight",
              "M_IrisRight", "M_LacrimalFluid", "M_EyeBlend", "M_EyeOcclusion", "M_EyeLashes"]


@pytest.fixture(scope="module")
def ict_neutral():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ict-facekit" / "generic_neutral_mesh.obj"
    if not path.is_file():
        pytest.skip(f"ICT-FaceKit data not found at {path}")
    return read_mesh(path)


def test_ict_neutral_loads_with_its_published_counts(ict_neutral):
    mesh = ict_neutral
    assert mesh.n_vertices == 26_719 and mesh.n_faces == 26_384
    assert set(mesh.face_vertex_counts.tolist()) == {3, 4}
    assert mesh.udims == list(range(1001, 1008))
    assert mesh.group_names == ICT_GROUPS


def test_ict_obj_round_trip_is_exact(tmp_path, ict_neutral):
    back = read_mesh(write_obj(ict_neutral, tmp_path / "neutral.obj"))
    for field in ("vertices", "face_vertex_counts", "face_vertex_indices", "uvs", "face_uv_indices", "face_groups"):
        assert np.array_equal(getattr(back, field), getattr(ict_neutral, field)), field
    assert back.group_names == ict_neutral.group_names


@pytest.mark.parametrize("suffix", [".usdc", ".usda"])
def test_ict_usd_round_trip_keeps_points_topology_and_uvs(tmp_path, ict_neutral, suffix):
    back = read_mesh(write_usd_mesh(ict_neutral, tmp_path / f"neutral{suffix}"))
    for field in ("vertices", "face_vertex_counts", "face_vertex_indices", "uvs", "face_uv_indices", "face_groups"):
        assert np.array_equal(getattr(back, field), getattr(ict_neutral, field)), field
    assert back.group_names == ict_neutral.group_names and back.units == "cm"
    check_template(back, template_signature(ict_neutral), "neutral.usd")
