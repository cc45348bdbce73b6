"""Publishing a character: what a DCC reads back from the asset equals what the pipeline gave the writer."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from pxr import Sdf, Usd, UsdGeom, UsdShade, UsdSkel

import expdiff_core.usd.writer as writer
from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.facs import unit
from expdiff_core.io.images import read_image
from expdiff_core.usd import (FACS_API, PROVENANCE_API, ExportOptions, Provenance, publish_character,
                              read_facs_api, read_provenance_api, validate_asset)
from expdiff_core.usd.read import channel_weights, posed_points
from expdiff_core.usd.schema import normalize_side
from expdiff_core.usd.writer import vertex_normals

MESH = "/hero/geo/skel/face"
MATERIAL = "/hero/mtl/skin"


def _stage(published) -> Usd.Stage:
    return Usd.Stage.Open(str(published.root_layer))


def _peak_times(stage) -> dict[str, float]:
    """channel -> the time code where the preview animation holds it at weight 1."""
    anim = UsdSkel.Animation(stage.GetPrimAtPath("/hero/geo/skel/preview"))
    names = list(anim.GetBlendShapesAttr().Get())
    attr = anim.GetBlendShapeWeightsAttr()
    peaks = {}
    for t in attr.GetTimeSamples():
        w = np.asarray(attr.Get(t))
        if w.max() == 1.0:
            peaks[names[int(w.argmax())]] = t
    return peaks


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_full_asset_passes_validation_without_any_issue(published):
    assert validate_asset(published.root_layer) == []


def test_each_blendshape_at_weight_one_reproduces_its_expression_mesh(published, face, expressions):
    stage = _stage(published)
    mesh = stage.GetPrimAtPath(MESH)
    peaks = _peak_times(stage)
    assert set(peaks) == set(expressions)
    extent = float(np.linalg.norm(face.vertices.max(0) - face.vertices.min(0)))
    for name, expected in expressions.items():
        weights = channel_weights(mesh, peaks[name])
        assert weights[name] == 1.0 and sum(weights.values()) == 1.0
        posed = posed_points(mesh, peaks[name])
        # Rest + offset in float32 differs from the expression by a few ulps of the coordinates (~1e-7 of the
        # head's size); the sparse cut-off drops offsets below 1e-7 of it. 1e-5 leaves room for both.
        assert np.abs(posed - expected).max() / extent < 1e-5, name


def test_all_weights_zero_gives_back_the_neutral(published, face):
    stage = _stage(published)
    posed = posed_points(stage.GetPrimAtPath(MESH), stage.GetStartTimeCode())
    np.testing.assert_array_equal(posed, face.vertices)


def test_offsets_are_sparse_and_sorted_where_only_part_of_the_face_moves(published, face, expressions, dense_unit):
    stage = _stage(published)
    for name, verts in expressions.items():
        shape = UsdSkel.BlendShape(stage.GetPrimAtPath(f"{MESH}/{name}"))
        offsets = np.asarray(shape.GetOffsetsAttr().Get())
        if name == dense_unit:
            assert not shape.GetPointIndicesAttr().HasAuthoredValue()
            assert len(offsets) == face.n_vertices
            continue
        indices = np.asarray(shape.GetPointIndicesAttr().Get())
        moving = np.flatnonzero(np.abs(verts - face.vertices).max(axis=1) > 0)
        assert len(indices) < face.n_vertices
        assert (np.diff(indices) > 0).all()
        assert set(moving) <= set(indices.tolist())
        assert len(indices) == len(offsets) == len(shape.GetNormalOffsetsAttr().Get())


def test_normal_offsets_turn_the_rest_normals_into_the_expression_normals(published, face, expressions, dense_unit):
    stage = _stage(published)
    rest = np.asarray(UsdGeom.Mesh(stage.GetPrimAtPath(MESH)).GetNormalsAttr().Get())
    triangles = face.triangulated().faces
    for name in ("mouthSmile_L", dense_unit):
        shape = UsdSkel.BlendShape(stage.GetPrimAtPath(f"{MESH}/{name}"))
        normals = rest.copy()
        indices = (np.asarray(shape.GetPointIndicesAttr().Get()) if shape.GetPointIndicesAttr().HasAuthoredValue()
                   else np.arange(len(rest)))
        normals[indices] += np.asarray(shape.GetNormalOffsetsAttr().Get())
        # Unit normals stored as float32 differences: 1e-5 covers rounding and the 1e-5 sparse cut-off.
        np.testing.assert_allclose(normals, vertex_normals(expressions[name], triangles), atol=2e-5)


def test_blendshape_channels_targets_and_animation_share_one_order(published, expressions):
    stage = _stage(published)
    binding = UsdSkel.BindingAPI(stage.GetPrimAtPath(MESH))
    names = list(binding.GetBlendShapesAttr().Get())
    targets = binding.GetBlendShapeTargetsRel().GetTargets()
    anim = UsdSkel.Animation(stage.GetPrimAtPath("/hero/geo/skel/preview"))
    assert names == list(expressions) == list(anim.GetBlendShapesAttr().Get()) == list(published.blendshapes)
    assert [t.name for t in targets] == names


def test_time_range_covers_the_preview_animation(published, expressions):
    stage = _stage(published)
    times = UsdSkel.Animation(stage.GetPrimAtPath("/hero/geo/skel/preview")).GetBlendShapeWeightsAttr().GetTimeSamples()
    assert stage.GetStartTimeCode() == times[0] == 1.0
    assert stage.GetEndTimeCode() == times[-1] == 1.0 + 12 * len(expressions)
    assert stage.GetTimeCodesPerSecond() == 24.0


def test_asset_layout_follows_the_aswf_structure(published):
    folder = published.version_dir
    assert folder.name == "v001" and published.version == 1
    for name in ("hero.usda", "payload.usda", "geo.usdc", "mtl.usda", "shapes.usdc"):
        assert (folder / name).is_file(), name
    stage = _stage(published)
    root = stage.GetDefaultPrim()
    assert root.GetPath() == Sdf.Path("/hero") and root.IsA(UsdGeom.Xform)
    model = Usd.ModelAPI(root)
    assert model.GetKind() == "component"
    assert (model.GetAssetName(), model.GetAssetVersion()) == ("hero", "v001")
    assert UsdGeom.GetStageUpAxis(stage) == "Y"
    assert UsdGeom.GetStageMetersPerUnit(stage) == pytest.approx(0.01)  # the face is in cm
    assert root.HasAuthoredPayloads()
    root_layer = Sdf.Layer.FindOrOpen(str(published.root_layer))
    assert not root_layer.GetPrimAtPath("/hero/geo"), "geometry must sit behind the payload"
    assert stage.GetPrimAtPath("/hero/geo").IsA(UsdGeom.Scope)
    assert stage.GetPrimAtPath("/hero/mtl").IsA(UsdGeom.Scope)
    assert stage.GetPrimAtPath("/hero/geo/skel").IsA(UsdSkel.Root)
    unloaded = Usd.Stage.Open(str(published.root_layer), Usd.Stage.LoadNone)
    assert not unloaded.GetPrimAtPath(MESH)


def test_facs_api_is_applied_to_every_blendshape_and_reads_back(published, expressions):
    definition = Usd.SchemaRegistry().FindAppliedAPIPrimDefinition(FACS_API)
    assert set(definition.GetPropertyNames()) == {
        "expdiff:facs:expression", "expdiff:facs:actionUnits", "expdiff:facs:side", "expdiff:facs:region",
        "expdiff:facs:prompt"}
    stage = _stage(published)
    for name in expressions:
        prim = stage.GetPrimAtPath(f"{MESH}/{name}")
        assert FACS_API in prim.GetAppliedSchemas()
        info = read_facs_api(prim)
        expected = unit(name)
        assert info.expression == name
        assert info.action_units == expected.action_units
        assert info.side == normalize_side(expected.side)
        assert (info.region, info.prompt) == (expected.region, expected.prompt)


def test_provenance_api_on_the_root_reads_back(published, provenance_record):
    assert Usd.SchemaRegistry().FindAppliedAPIPrimDefinition(PROVENANCE_API) is not None
    stage = Usd.Stage.Open(str(published.root_layer), Usd.Stage.LoadNone)  # provenance is outside the payload
    root = stage.GetDefaultPrim()
    assert PROVENANCE_API in root.GetAppliedSchemas()
    assert read_provenance_api(root) == provenance_record


def _texture_shaders(stage):
    material = stage.GetPrimAtPath(MATERIAL)
    return [UsdShade.Shader(p) for p in material.GetChildren() if UsdShade.Shader(p).GetShaderId() == "UsdUVTexture"]


def test_variant_selects_the_map_set_of_each_expression(published):
    stage = _stage(published)
    variant_set = stage.GetPrimAtPath(MATERIAL).GetVariantSet("expression")
    assert variant_set.GetVariantSelection() == "neutral"
    shaders = _texture_shaders(stage)
    assert sorted(s.GetPrim().GetName() for s in shaders) == [
        "albedoTexture", "normalTexture", "roughnessTexture", "specularTexture"]
    for shader in shaders:
        assert "/neutral/" in shader.GetInput("file").Get().path
    variant_set.SetVariantSelection("jawOpen")
    for shader in _texture_shaders(stage):
        assert shader.GetInput("file").Get().path.startswith("./textures/jawOpen/")


def test_every_udim_path_resolves_to_a_tile_file_holding_that_expressions_map(published, maps):
    stage = _stage(published)
    variant_set = stage.GetPrimAtPath(MATERIAL).GetVariantSet("expression")
    names = variant_set.GetVariantNames()
    assert sorted(names) == sorted(maps)
    for name in names:
        variant_set.SetVariantSelection(name)
        for shader in _texture_shaders(stage):
            file_input = shader.GetInput("file")
            kind = shader.GetPrim().GetName().removesuffix("Texture")
            layer = next(s.layer for s in file_input.GetAttr().GetPropertyStack() if s.HasDefaultValue())
            tiles = dict((int(t), p) for p, t in
                         UsdShade.UdimUtils.ResolveUdimTilePaths(file_input.Get().path, layer))
            assert sorted(tiles) == [1001, 1002], (name, kind)
            if name in ("neutral", "jawOpen"):
                for tile, path in tiles.items():
                    pixels = np.moveaxis(read_image(path), -1, 0)
                    expected = maps[name][kind][tile]
                    if kind == "specular":
                        expected = np.repeat(expected, 3, axis=0)
                    # Half-float EXR keeps 11 significant bits: values in [0, 1] round by < 5e-4.
                    np.testing.assert_allclose(pixels, expected, atol=5e-4)


def test_material_wires_the_specular_workflow_with_raw_data_maps(published):
    stage = _stage(published)
    surface = UsdShade.Shader(stage.GetPrimAtPath(f"{MATERIAL}/previewSurface"))
    assert surface.GetInput("useSpecularWorkflow").Get() == 1
    wiring = {i.GetBaseName(): i.GetConnectedSources()[0][0].source.GetPrim().GetName()
              for i in surface.GetInputs() if i.HasConnectedSource()}
    assert wiring == {"diffuseColor": "albedoTexture", "specularColor": "specularTexture",
                      "roughness": "roughnessTexture", "normal": "normalTexture"}
    for shader in _texture_shaders(stage):
        assert shader.GetInput("sourceColorSpace").Get() == "raw"  # EXR albedo is linear already
    normal = UsdShade.Shader(stage.GetPrimAtPath(f"{MATERIAL}/normalTexture"))
    assert tuple(normal.GetInput("scale").Get()) == (2, 2, 2, 1)
    assert tuple(normal.GetInput("bias").Get()) == (-1, -1, -1, 0)


def test_shapes_layer_holds_every_expression_as_a_full_mesh(published, face, expressions):
    stage = Usd.Stage.Open(str(published.version_dir / "shapes.usdc"))
    for name, verts in {"neutral": face.vertices, **expressions}.items():
        mesh = UsdGeom.Mesh(stage.GetPrimAtPath(f"/hero/shapes/{name}"))
        np.testing.assert_array_equal(np.asarray(mesh.GetPointsAttr().Get()), verts)
        assert list(mesh.GetFaceVertexCountsAttr().Get()) == face.face_vertex_counts.tolist()


@pytest.fixture
def small_inputs(expressions, make_maps):
    """A fresh (shapes, maps) pair with two expressions and 4x4 maps, for tests that publish their own asset."""
    def make(names=("jawOpen", "mouthSmile_L")):
        return {n: expressions[n] for n in names}, make_maps(["neutral", *names], size=4)
    return make


def test_png_albedo_is_srgb_and_8_bit_normal_maps_pass_usd_normal_map_rules(tmp_path, face, provenance_record,
                                                                            expressions, small_inputs):
    shapes, maps = small_inputs()
    asset = publish_character(tmp_path, "hero", face, shapes, maps, provenance_record,
                              ExportOptions(texture_format="png"))
    assert validate_asset(asset.root_layer) == []
    stage = Usd.Stage.Open(str(asset.root_layer))
    spaces = {s.GetPrim().GetName(): s.GetInput("sourceColorSpace").Get() for s in _texture_shaders(stage)}
    assert spaces == {"albedoTexture": "sRGB", "specularTexture": "raw", "roughnessTexture": "raw",
                      "normalTexture": "raw"}
    albedo = read_image(asset.version_dir / "textures" / "neutral" / "albedo.1001.png", srgb=True)
    # One 8-bit sRGB code step is < 0.01 in linear terms (steepest near white); 0.02 bounds the rounding.
    np.testing.assert_allclose(np.moveaxis(albedo, -1, 0), maps["neutral"]["albedo"][1001], atol=0.02)


def test_textured_groups_bind_the_material_to_those_subsets_only(tmp_path, face, small_inputs, provenance_record):
    shapes, maps = small_inputs()
    asset = publish_character(tmp_path, "hero", face, shapes, maps, provenance_record,
                              ExportOptions(textured_groups=("M_Face",)))
    assert validate_asset(asset.root_layer) == []
    stage = Usd.Stage.Open(str(asset.root_layer))
    bound = {}
    for name in ("M_Face", "M_Lashes"):
        subset = stage.GetPrimAtPath(f"{MESH}/{name}")
        material, _ = UsdShade.MaterialBindingAPI(subset).ComputeBoundMaterial()
        bound[name] = str(material.GetPath()) if material else None
        assert UsdGeom.Subset(subset).GetFamilyNameAttr().Get() == "materialBind"
    assert bound == {"M_Face": MATERIAL, "M_Lashes": None}
    faces = [len(UsdGeom.Subset(stage.GetPrimAtPath(f"{MESH}/{n}")).GetIndicesAttr().Get()) for n in bound]
    assert sum(faces) == face.n_faces


def test_free_prompt_expression_gets_a_valid_prim_name_and_its_prompt(tmp_path, face,
                                                                      expressions, provenance_record, make_maps):
    shapes = {"nose right": expressions["noseSneer_R"]}
    asset = publish_character(tmp_path, "hero", face, shapes, make_maps(["neutral", "nose right"], size=4),
                              provenance_record)
    assert asset.blendshapes == ("nose_right",)
    stage = Usd.Stage.Open(str(asset.root_layer))
    info = read_facs_api(stage.GetPrimAtPath(f"{MESH}/nose_right"))
    assert (info.expression, info.prompt, info.action_units, info.region) == ("nose right", "nose right", (), "free")
    assert (asset.version_dir / "textures" / "nose_right" / "albedo.1001.exr").is_file()


def test_a_second_publish_takes_the_next_version_and_leaves_the_first_untouched(tmp_path, face,
                                                                                expressions, small_inputs, provenance_record):
    shapes, maps = small_inputs()
    first = publish_character(tmp_path, "hero", face, shapes, maps, provenance_record)
    before = _tree_digest(first.version_dir)
    second = publish_character(tmp_path, "hero", face, shapes, maps, provenance_record)
    assert (first.version, second.version) == (1, 2)
    assert second.version_dir.name == "v002"
    assert _tree_digest(first.version_dir) == before
    stage = Usd.Stage.Open(str(second.root_layer))
    assert Usd.ModelAPI(stage.GetDefaultPrim()).GetAssetVersion() == "v002"


def test_a_failed_export_leaves_no_version_and_no_temp_folder(tmp_path, face, expressions, small_inputs):
    shapes, maps = small_inputs()
    # The seed is authored last (on the entry layer), after every texture and the geometry were written.
    bad = Provenance("expdiff-denoiser", "7", seed="not-a-number", scheduler="DDIMScheduler", steps=25)
    with pytest.raises(ValueError):
        publish_character(tmp_path, "hero", face, shapes, maps, bad)
    assert list((tmp_path / "hero").iterdir()) == []


def test_a_version_taken_by_a_concurrent_export_is_never_overwritten(tmp_path, face, expressions,
                                                                     monkeypatch, small_inputs, provenance_record):
    shapes, maps = small_inputs()
    first = publish_character(tmp_path, "hero", face, shapes, maps, provenance_record)
    before = _tree_digest(first.version_dir)
    # Another process took v001 between our scan of the folder and our rename: we must refuse, not replace.
    monkeypatch.setattr(writer, "next_version", lambda character_dir: 1)
    with pytest.raises(PublishError, match="v001"):
        publish_character(tmp_path, "hero", face, shapes, maps, provenance_record)
    assert _tree_digest(first.version_dir) == before
    assert sorted(p.name for p in (tmp_path / "hero").iterdir()) == ["v001"]


def test_inconsistent_inputs_are_refused_before_anything_is_written(tmp_path, face,
                                                                    expressions, small_inputs, provenance_record):
    shapes, maps = small_inputs()
    del maps["jawOpen"]
    with pytest.raises(ExpDiffInputError, match="missing \\['jawOpen'\\]"):
        publish_character(tmp_path, "hero", face, shapes, maps, provenance_record)
    shapes, maps = small_inputs()
    maps["jawOpen"]["normal"][1001] = maps["jawOpen"]["normal"][1001][:1]
    with pytest.raises(ExpDiffInputError, match=r"maps\['jawOpen'\]\['normal'\]\[1001\]"):
        publish_character(tmp_path, "hero", face, shapes, maps, provenance_record)
    with pytest.raises(ExpDiffInputError, match="not a valid USD prim name"):
        publish_character(tmp_path, "3d-hero", face, *small_inputs(), provenance_record)
    assert not (tmp_path / "hero").exists()
