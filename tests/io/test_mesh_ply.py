"""PLY reading: vertex order and polygons kept, UVs per corner or per vertex, ASCII and binary."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.mesh import FaceMesh, read_mesh, read_ply


def ply_bytes(mesh: FaceMesh, fmt: str = "ascii", uv: str = "corner", extra_vertex_props: bool = False) -> bytes:
    """Serialise ``mesh`` as PLY. uv="corner": per-face ``texcoord`` lists; "vertex": per-vertex s/t
    (taken from the first UV each vertex uses; only exact for meshes without seams)."""
    counts = mesh.face_vertex_counts
    offsets = mesh.face_offsets
    vert_uv = np.zeros((mesh.n_vertices, 2), np.float32)
    vert_uv[mesh.face_vertex_indices[::-1]] = mesh.uvs[mesh.face_uv_indices[::-1]]
    header = ["ply", f"format {fmt} 1.0", "comment made by tests/io/test_mesh_ply.py",
              f"element vertex {mesh.n_vertices}", "property float x", "property float y", "property float z"]
    if extra_vertex_props:
        header += ["property float nx", "property uchar red"]
    if uv == "vertex":
        header += ["property float s", "property float t"]
    header += [f"element face {mesh.n_faces}", "property list uchar int vertex_indices"]
    if uv == "corner":
        header += ["property list uchar float texcoord"]
    header += ["element edge 0", "property int vertex1", "property int vertex2", "end_header"]
    rows_v, rows_f = [], []
    for i, p in enumerate(mesh.vertices.tolist()):
        row = list(p) + ([0.5, 7] if extra_vertex_props else []) + (vert_uv[i].tolist() if uv == "vertex" else [])
        rows_v.append(row)
    for f in range(mesh.n_faces):
        o, n = int(offsets[f]), int(counts[f])
        row = [n] + mesh.face_vertex_indices[o:o + n].tolist()
        if uv == "corner":
            row += [2 * n] + mesh.uvs[mesh.face_uv_indices[o:o + n]].ravel().tolist()
        rows_f.append(row)
    head = ("\n".join(header) + "\n").encode("ascii")
    if fmt == "ascii":
        return head + "".join(" ".join(repr(x) for x in r) + "\n" for r in rows_v + rows_f).encode("ascii")
    e = ">" if fmt == "binary_big_endian" else "<"
    body = bytearray()
    for r in rows_v:
        body += np.array(r[:3], e + "f4").tobytes()
        if extra_vertex_props:
            body += np.array([r[3]], e + "f4").tobytes() + bytes([r[4]])
        if uv == "vertex":
            body += np.array(r[-2:], e + "f4").tobytes()
    for r in rows_f:
        n = r[0]
        body += bytes([n]) + np.array(r[1:1 + n], e + "i4").tobytes()
        if uv == "corner":
            body += bytes([2 * n]) + np.array(r[2 + n:], e + "f4").tobytes()
    return head + bytes(body)


def per_vertex_uv_mesh(mesh: FaceMesh) -> FaceMesh:
    """Same positions and faces, one UV per vertex (no seams), inside tile 1001."""
    uv = (mesh.vertices[:, :2] - mesh.vertices[:, :2].min(0)) / (np.ptp(mesh.vertices[:, :2], 0) * 1.1) + 0.01
    return FaceMesh(mesh.vertices, mesh.face_vertex_counts, mesh.face_vertex_indices, uv,
                    mesh.face_vertex_indices, np.zeros(mesh.n_faces), ["default"], mesh.units, mesh.name)


def assert_same_geometry(a: FaceMesh, b: FaceMesh) -> None:
    assert np.array_equal(a.vertices, b.vertices)
    assert np.array_equal(a.face_vertex_counts, b.face_vertex_counts)
    assert np.array_equal(a.face_vertex_indices, b.face_vertex_indices)
    assert np.array_equal(a.uvs[a.face_uv_indices], b.uvs[b.face_uv_indices])


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_per_corner_texcoords_keep_seams_quads_and_vertex_order(tmp_path, small_mesh, fmt):
    path = tmp_path / "grid.ply"
    path.write_bytes(ply_bytes(small_mesh, fmt, uv="corner"))
    mesh = read_mesh(path)
    assert_same_geometry(mesh, small_mesh)
    assert len(mesh.uvs) == len(small_mesh.uvs)  # 24: the seam vertices keep two UVs each
    assert mesh.group_names == ["default"] and mesh.udims == [1001, 1002]


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_per_vertex_st_with_interleaved_properties(tmp_path, small_mesh, fmt):
    expected = per_vertex_uv_mesh(small_mesh)
    path = tmp_path / "grid.ply"
    path.write_bytes(ply_bytes(expected, fmt, uv="vertex", extra_vertex_props=True))
    assert_same_geometry(read_ply(path), expected)


def test_triangle_ply_written_by_trimesh_keeps_its_vertex_order(tmp_path):
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(30, 3)).astype(np.float32)
    faces = rng.permutation(np.arange(30)).reshape(10, 3)
    uv = rng.uniform(0.0, 1.0, size=(30, 2))
    tm = trimesh.Trimesh(vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uv), process=False)
    path = tmp_path / "tri.ply"
    path.write_bytes(tm.export(file_type="ply", encoding="binary"))
    mesh = read_ply(path)
    assert np.array_equal(mesh.vertices, vertices)
    assert np.array_equal(mesh.face_vertex_indices.reshape(-1, 3), faces)
    assert np.allclose(mesh.uvs[mesh.face_uv_indices], uv[faces.ravel()], atol=1e-7)  # stored as float32


def test_truncated_binary_ply_is_refused(tmp_path, small_mesh):
    data = ply_bytes(small_mesh, "binary_little_endian")
    path = tmp_path / "cut.ply"
    path.write_bytes(data[:-40])
    with pytest.raises(ExpDiffInputError, match=r"cut\.ply: truncated: the file ends inside the 16 'face' rows"):
        read_ply(path)


def test_truncated_ascii_ply_is_refused(tmp_path, small_mesh):
    text = ply_bytes(small_mesh, "ascii")
    path = tmp_path / "cut.ply"
    path.write_bytes(text[: text.index(b"\n4 ")])  # ends before the first face row
    with pytest.raises(ExpDiffInputError, match=r"cut\.ply: truncated: the file ends inside the 16 'face' rows"):
        read_ply(path)


def test_ply_without_uvs_is_refused(tmp_path, small_mesh):
    path = tmp_path / "no_uv.ply"
    path.write_bytes(ply_bytes(small_mesh, "ascii", uv="none"))
    with pytest.raises(ExpDiffInputError, match=r"no_uv\.ply: mesh has no UVs"):
        read_ply(path)


def test_nan_vertex_in_ply_is_refused(tmp_path, small_mesh):
    small_mesh.vertices[5, 1] = np.nan
    path = tmp_path / "nan.ply"
    path.write_bytes(ply_bytes(small_mesh, "binary_little_endian"))
    with pytest.raises(ExpDiffInputError, match=r"nan\.ply: vertex 5 has a NaN or infinite coordinate"):
        read_ply(path)


def test_a_file_that_is_not_ply_is_refused(tmp_path):
    path = tmp_path / "fake.ply"
    path.write_text("solid cube\nendsolid\n")
    with pytest.raises(ExpDiffInputError, match=r"fake\.ply: not a PLY file"):
        read_ply(path)
