"""FaceMesh, OBJ reader/writer, validate_mesh and read_mesh dispatch."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.io.mesh import FaceMesh, read_mesh, read_obj, validate_mesh, write_mesh, write_obj


def assert_same_mesh(a: FaceMesh, b: FaceMesh) -> None:
    assert np.array_equal(a.vertices, b.vertices)
    assert np.array_equal(a.face_vertex_counts, b.face_vertex_counts)
    assert np.array_equal(a.face_vertex_indices, b.face_vertex_indices)
    assert np.array_equal(a.uvs[a.face_uv_indices], b.uvs[b.face_uv_indices])
    assert [a.group_names[g] for g in a.face_groups] == [b.group_names[g] for g in b.face_groups]
    assert a.units == b.units


def write_text(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


TRIANGLE_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0.1 0.1\nvt 0.9 0.1\nvt 0.1 0.9\nf 1/1 2/2 3/3\n"


def test_obj_round_trip_is_exact_and_keeps_units(tmp_path, make_grid_mesh):
    mesh = make_grid_mesh(units="mm")
    back = read_obj(write_obj(mesh, tmp_path / "grid.obj"))
    assert_same_mesh(mesh, back)
    assert np.array_equal(back.uvs, mesh.uvs) and np.array_equal(back.face_uv_indices, mesh.face_uv_indices)


def test_udims_are_the_tiles_of_the_faces(small_mesh):
    assert small_mesh.udims == [1001, 1002]
    assert small_mesh.face_udims().tolist() == [1001, 1001, 1002, 1002] * 2 + [1001] * 4 + [1002] * 4


def test_a_uv_on_a_tiles_right_edge_does_not_add_the_next_tile(tmp_path):
    # A layout filling tile 1001 exactly has corners at u = 1.0, which udim_of alone would call tile 1002.
    mesh = read_obj(write_text(tmp_path / "full.obj", TRIANGLE_OBJ.replace("vt 0.9 0.1", "vt 1.0 0.0")))
    assert mesh.udims == [1001]


def test_missing_obj_names_the_file(tmp_path):
    with pytest.raises(ExpDiffInputError, match=r"nope\.obj: file not found"):
        read_obj(tmp_path / "nope.obj")


def test_binary_garbage_is_an_unreadable_obj(tmp_path):
    path = tmp_path / "garbage.obj"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ExpDiffInputError, match=r"garbage\.obj: cannot read as a text OBJ"):
        read_obj(path)


def test_unparsable_face_names_file_and_line(tmp_path):
    path = write_text(tmp_path / "bad_face.obj", TRIANGLE_OBJ + "f a b c\n")
    with pytest.raises(ExpDiffInputError, match=r"bad_face\.obj: line 8: cannot parse face 'a b c'"):
        read_obj(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_vertex_names_the_vertex(tmp_path, value):
    path = write_text(tmp_path / "nan.obj", TRIANGLE_OBJ.replace("v 0 1 0", f"v 0 {value} 0"))
    with pytest.raises(ExpDiffInputError, match=r"nan\.obj: vertex 2 has a NaN or infinite coordinate"):
        read_obj(path)


def test_obj_without_uvs_is_refused(tmp_path):
    path = write_text(tmp_path / "no_uv.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ExpDiffInputError, match=r"no_uv\.obj: mesh has no UVs"):
        read_obj(path)


@pytest.mark.parametrize("vt, shown", [("-0.5 0.2", r"\(-0\.5, 0\.2\)"), ("0.2 10.5", r"\(0\.2, 10\.5\)"),
                                       ("10 0.5", r"\(10, 0\.5\)")])
def test_uv_outside_every_tile_names_the_uv_and_its_value(tmp_path, vt, shown):
    path = write_text(tmp_path / "off_tile.obj", TRIANGLE_OBJ.replace("vt 0.9 0.1", f"vt {vt}"))
    with pytest.raises(ExpDiffInputError, match=rf"off_tile\.obj: UV 1 = {shown} lies outside every UDIM tile"):
        read_obj(path)


def test_face_referencing_a_missing_vertex_is_refused(tmp_path):
    path = write_text(tmp_path / "range.obj", TRIANGLE_OBJ + "f 1/1 2/2 9/3\n")
    with pytest.raises(ExpDiffInputError, match=r"range\.obj: a face references vertex 9 but there are 3"):
        read_obj(path)


def test_validate_mesh_names_the_face_with_a_bad_index(small_mesh):
    small_mesh.face_vertex_indices[13] = 99  # a corner of face 3 (faces 0-7 are quads)
    with pytest.raises(ExpDiffInputError, match=r"m\.obj: face 3 references vertex 99 but the mesh has 20"):
        validate_mesh(small_mesh, "m.obj")


def test_validate_mesh_refuses_a_two_corner_face():
    mesh = FaceMesh(np.zeros((3, 3)), [2], [0, 1], [[0.5, 0.5]], [0, 0], [0])
    with pytest.raises(ExpDiffInputError, match="face 0 has 2 corner"):
        validate_mesh(mesh, "m.usd")


def test_validate_mesh_refuses_counts_that_do_not_match_the_indices():
    mesh = FaceMesh(np.zeros((4, 3)), [4], [0, 1, 2], [[0.5, 0.5]], [0, 0, 0], [0])
    with pytest.raises(ExpDiffInputError, match="face_vertex_indices has 3 entries but the face counts sum to 4"):
        validate_mesh(mesh, "m.usd")


def test_read_mesh_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(ExpDiffInputError, match=r"face\.fbx: unknown mesh format '\.fbx'"):
        read_mesh(tmp_path / "face.fbx")


def test_write_obj_refuses_to_overwrite_when_asked(tmp_path, small_mesh):
    path = write_obj(small_mesh, tmp_path / "grid.obj")
    before = path.read_bytes()
    with pytest.raises(PublishError, match="already exists"):
        write_mesh(small_mesh.with_vertices(small_mesh.vertices + 1), path, overwrite=False)
    assert path.read_bytes() == before


def test_failed_obj_write_leaves_no_file_and_no_temp(tmp_path, small_mesh):
    target = tmp_path / "grid.obj"
    target.mkdir()  # the final rename onto a folder fails after the temp file was fully written
    with pytest.raises(PublishError, match=r"grid\.obj: cannot write OBJ"):
        write_obj(small_mesh, target)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.obj"] and not any(target.iterdir())


def test_invalid_mesh_is_not_written(tmp_path, small_mesh):
    small_mesh.vertices[0, 0] = np.nan
    with pytest.raises(ExpDiffInputError, match="vertex 0 has a NaN"):
        write_obj(small_mesh, tmp_path / "nan.obj")
    assert not any(tmp_path.iterdir())
