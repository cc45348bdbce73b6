"""Template check: a mesh on another topology is refused with a message saying what differs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError, TemplateMismatchError
from expdiff_core.io.mesh import read_usd_mesh, write_usd_mesh
from expdiff_core.io.template import TemplateSignature, check_template, template_signature


@pytest.fixture
def template(make_grid_mesh):
    return make_grid_mesh(nx=16, ny=12)  # 221 vertices, 208 faces: several 64-face blocks


def test_signature_survives_json(template):
    sig = template_signature(template, block_size=64)
    assert TemplateSignature.from_json(sig.to_json()) == sig
    assert sig.n_vertices == 221 and sig.n_faces == 208 and sig.udims == (1001, 1002)


def test_malformed_signature_json_names_its_source():
    with pytest.raises(ExpDiffInputError, match=r"model/config\.json: not a valid template signature"):
        TemplateSignature.from_json('{"n_vertices": 3}', source="model/config.json")


def test_same_topology_with_other_positions_and_uv_indexing_passes(tmp_path, template):
    moved = template.with_vertices(template.vertices * 1.3 + 2.0)
    # Non-indexed faceVarying st in USD gives another UV indexing of the same layout.
    reindexed = dataclasses.replace(moved, uvs=moved.uvs[moved.face_uv_indices],
                                    face_uv_indices=np.arange(moved.face_uv_indices.size))
    for candidate in (moved, reindexed, read_usd_mesh(write_usd_mesh(moved, tmp_path / "m.usdc"))):
        check_template(candidate, template_signature(template), "moved.obj")
        check_template(candidate, template, "moved.obj")


def test_vertex_count_difference_is_spelled_out(template, make_grid_mesh):
    other = make_grid_mesh(nx=16, ny=11)
    with pytest.raises(TemplateMismatchError,
                       match=r"scan\.obj: .*has 204 vertices, template has 221; has 192 faces, template has 208"):
        check_template(other, template_signature(template), "scan.obj")


def test_swapped_face_corners_name_the_first_differing_face(template):
    indices = template.face_vertex_indices.copy()
    offsets = template.face_offsets
    indices[[offsets[150], offsets[150] + 1]] = indices[[offsets[150] + 1, offsets[150]]]
    scan = dataclasses.replace(template, face_vertex_indices=indices)
    with pytest.raises(TemplateMismatchError, match=r"face connectivity differs from the template "
                                                    r"\(first differing face 150\)"):
        check_template(scan, template, "scan.obj")
    # The signature alone locates the block of 64 faces holding the change.
    with pytest.raises(TemplateMismatchError, match=r"face connectivity differs .*\(first difference in faces "
                                                    r"128–191\)"):
        check_template(scan, template_signature(template, block_size=64), "scan.obj")


def test_moved_uv_island_is_a_uv_layout_difference(template):
    uvs = template.uvs.copy()
    uvs[template.face_uv_indices[:40]] += 0.01  # ~40 texels at 4K: an island edit, not rounding
    scan = dataclasses.replace(template, uvs=uvs)
    with pytest.raises(TemplateMismatchError, match=r"scan\.obj: .*UV layout differs from the template"):
        check_template(scan, template_signature(template), "scan.obj")
    with pytest.raises(TemplateMismatchError, match=r"UV layout differs .*first at face 0"):
        check_template(scan, template, "scan.obj")


def test_uvs_rounded_by_another_tool_pass_against_the_template_mesh(template):
    # Exporters writing 6 significant digits move UVs in [0, 10) by up to 5e-6: far under the tolerance
    # (half a texel at 4K), so the template mesh accepts them; the exact signature hash does not.
    noise = np.random.default_rng(0).uniform(-5e-6, 5e-6, template.uvs.shape)
    rounded = dataclasses.replace(template, uvs=template.uvs + noise)
    check_template(rounded, template, "rounded.obj")
    with pytest.raises(TemplateMismatchError, match="UV layout differs"):
        check_template(rounded, template_signature(template), "rounded.obj")
