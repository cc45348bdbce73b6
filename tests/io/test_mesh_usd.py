"""UsdGeom.Mesh out and in: topology, seams (faceVarying indexed st), material subsets, units, up axis."""

from __future__ import annotations

import numpy as np
import pytest
from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, Vt

from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.io.mesh import FaceMesh, read_mesh, read_usd_mesh, write_usd_mesh


def assert_same_mesh(a: FaceMesh, b: FaceMesh) -> None:
    assert np.array_equal(a.vertices, b.vertices)
    assert np.array_equal(a.face_vertex_counts, b.face_vertex_counts)
    assert np.array_equal(a.face_vertex_indices, b.face_vertex_indices)
    assert np.array_equal(a.uvs[a.face_uv_indices], b.uvs[b.face_uv_indices])
    assert [a.group_names[g] for g in a.face_groups] == [b.group_names[g] for g in b.face_groups]


@pytest.mark.parametrize("suffix", [".usda", ".usdc", ".usd"])
def test_usd_round_trip_keeps_points_topology_uvs_and_groups(tmp_path, small_mesh, suffix):
    back = read_mesh(write_usd_mesh(small_mesh, tmp_path / f"grid{suffix}"))
    assert_same_mesh(small_mesh, back)
    assert np.array_equal(back.uvs, small_mesh.uvs) and np.array_equal(back.face_uv_indices, small_mesh.face_uv_indices)
    assert back.units == "cm" and back.name == "grid"


def test_usd_file_follows_the_agreed_layout(tmp_path, make_grid_mesh):
    path = write_usd_mesh(make_grid_mesh(units="mm"), tmp_path / "grid.usda")
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == pytest.approx(0.001)
    mesh = UsdGeom.Mesh(stage.GetDefaultPrim())
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert st.GetInterpolation() == UsdGeom.Tokens.faceVarying and st.IsIndexed()
    assert len(st.Get()) == 24  # one value per distinct UV: the seam is kept, not split into vertices
    subsets = UsdShade.MaterialBindingAPI(mesh.GetPrim()).GetMaterialBindSubsets()
    assert [s.GetPrim().GetName() for s in subsets] == ["M_Left", "M_Right"]
    assert all(s.GetFamilyNameAttr().Get() == "materialBind" for s in subsets)
    assert UsdGeom.Subset.ValidateFamily(mesh, UsdGeom.Tokens.face, "materialBind")[0]


def test_group_names_usd_cannot_spell_survive(tmp_path, small_mesh):
    small_mesh.group_names = ["skin.001", "eye L"]
    back = read_usd_mesh(write_usd_mesh(small_mesh, tmp_path / "grid.usda"))
    assert back.group_names == ["skin.001", "eye L"]


def _define_mesh(stage, path: str, mesh: FaceMesh) -> UsdGeom.Mesh:
    usd_mesh = UsdGeom.Mesh.Define(stage, path)
    usd_mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(mesh.vertices))
    usd_mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(mesh.face_vertex_counts))
    usd_mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(mesh.face_vertex_indices))
    return usd_mesh


def test_reads_unindexed_face_varying_uvs_written_by_others(tmp_path, small_mesh):
    stage = Usd.Stage.CreateNew(str(tmp_path / "other.usda"))
    usd_mesh = _define_mesh(stage, "/Face", small_mesh)
    st = UsdGeom.PrimvarsAPI(usd_mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                     UsdGeom.Tokens.faceVarying)
    st.Set(Vt.Vec2fArray.FromNumpy(small_mesh.uvs[small_mesh.face_uv_indices]))
    stage.Save()
    back = read_usd_mesh(tmp_path / "other.usda")
    assert np.array_equal(back.uvs[back.face_uv_indices], small_mesh.uvs[small_mesh.face_uv_indices])
    assert back.group_names == ["default"]


def test_reads_vertex_uvs_z_up_mm_and_a_transformed_parent(tmp_path, small_mesh):
    stage = Usd.Stage.CreateNew(str(tmp_path / "zup.usda"))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 0.001)
    root = UsdGeom.Xform.Define(stage, "/Rig")
    root.AddTranslateOp().Set(Gf.Vec3d(10, 0, 0))
    stage.SetDefaultPrim(root.GetPrim())
    usd_mesh = _define_mesh(stage, "/Rig/Head", small_mesh)
    per_vertex = np.zeros((small_mesh.n_vertices, 2), np.float32) + 0.5
    st = UsdGeom.PrimvarsAPI(usd_mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
    st.Set(Vt.Vec2fArray.FromNumpy(per_vertex))
    stage.Save()
    back = read_usd_mesh(tmp_path / "zup.usda")
    moved = small_mesh.vertices + [10, 0, 0]
    expected = np.stack([moved[:, 0], moved[:, 2], -moved[:, 1]], axis=1)  # Z-up -> Y-up
    assert np.allclose(back.vertices, expected, atol=1e-6)  # float32 points through a float64 transform
    assert back.units == "mm" and back.name == "Head"
    assert np.array_equal(back.face_uv_indices, small_mesh.face_vertex_indices)


def test_several_meshes_need_a_prim_path(tmp_path, small_mesh):
    stage = Usd.Stage.CreateNew(str(tmp_path / "two.usda"))
    for name in ("A", "B"):
        usd_mesh = _define_mesh(stage, f"/{name}", small_mesh)
        st = UsdGeom.PrimvarsAPI(usd_mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                         UsdGeom.Tokens.faceVarying)
        st.Set(Vt.Vec2fArray.FromNumpy(small_mesh.uvs[small_mesh.face_uv_indices]))
    stage.Save()
    with pytest.raises(ExpDiffInputError, match=r"two\.usda: 2 meshes found \(/A, /B\); say which one"):
        read_usd_mesh(tmp_path / "two.usda")
    assert read_usd_mesh(tmp_path / "two.usda", prim_path="/B").name == "B"


def test_usd_mesh_without_uvs_is_refused(tmp_path, small_mesh):
    stage = Usd.Stage.CreateNew(str(tmp_path / "no_uv.usda"))
    _define_mesh(stage, "/Face", small_mesh)
    stage.Save()
    with pytest.raises(ExpDiffInputError, match=r"no_uv\.usda: mesh /Face has no UVs"):
        read_usd_mesh(tmp_path / "no_uv.usda")


def test_usd_without_a_mesh_is_refused(tmp_path):
    stage = Usd.Stage.CreateNew(str(tmp_path / "empty.usda"))
    UsdGeom.Xform.Define(stage, "/Nothing")
    stage.Save()
    with pytest.raises(ExpDiffInputError, match=r"empty\.usda: no UsdGeom\.Mesh prim found"):
        read_usd_mesh(tmp_path / "empty.usda")


def test_corrupt_usd_is_refused(tmp_path):
    path = tmp_path / "broken.usda"
    path.write_text("#usda 1.0\ndef Mesh \"Face\" {\n  point3f[] points = [(0, 0\n")
    with pytest.raises(ExpDiffInputError, match=r"broken\.usda: cannot open as USD"):
        read_usd_mesh(path)


def test_missing_usd_names_the_file(tmp_path):
    with pytest.raises(ExpDiffInputError, match=r"gone\.usdc: file not found"):
        read_mesh(tmp_path / "gone.usdc")


def test_failed_usd_write_leaves_no_file_and_no_temp(tmp_path, small_mesh):
    target = tmp_path / "grid.usdc"
    target.mkdir()  # the final rename onto a folder fails after the temp file was fully written
    with pytest.raises(PublishError, match=r"grid\.usdc: cannot write USD"):
        write_usd_mesh(small_mesh, target)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.usdc"] and not any(target.iterdir())
