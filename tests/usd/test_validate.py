"""``validate_asset``: a clean asset passes; each TD check catches the stage broken on purpose for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pxr import Gf, Sdf, Vt

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.usd import validate_asset
from expdiff_core.usd.validate import TD_CHECKS, find_entry_layer

MESH = "/hero/geo/skel/face"
MTL = "/hero/mtl/skin"


def _edit(layer_path: Path, change) -> None:
    layer = Sdf.Layer.FindOrOpen(str(layer_path))
    change(layer)
    assert layer.Save()


def _errors(entry: Path, check: str) -> list[str]:
    return [i.message for i in validate_asset(entry) if i.check == check and i.is_error]


def test_the_untouched_copy_is_clean(broken_copy):
    assert validate_asset(broken_copy) == []


def test_every_td_check_is_documented():
    assert all(name.startswith("expdiff:") and text for name, text in TD_CHECKS.items())


def test_stage_metadata_missing_up_axis(broken_copy):
    _edit(broken_copy, lambda layer: layer.pseudoRoot.ClearInfo("upAxis"))
    assert _errors(broken_copy, "expdiff:StageMetadata") == ["upAxis is not authored"]
    assert _errors(broken_copy, "usdGeomValidators:StageMetadataChecker")


def test_stage_metadata_missing_default_prim(broken_copy):
    _edit(broken_copy, lambda layer: layer.ClearDefaultPrim())
    assert _errors(broken_copy, "expdiff:StageMetadata") == ["defaultPrim is not set"]


def test_root_kind_must_be_component(broken_copy):
    _edit(broken_copy, lambda layer: layer.GetPrimAtPath("/hero").SetInfo("kind", "group"))
    assert _errors(broken_copy, "expdiff:RootKind") == ["kind is 'group', expected 'component'"]


def test_skel_binding_mesh_outside_a_skel_root(broken_copy):
    def retype(layer):
        layer.GetPrimAtPath("/hero/geo/skel").typeName = "Xform"
    _edit(broken_copy.parent / "geo.usdc", retype)
    assert "skinned mesh is not under a SkelRoot" in _errors(broken_copy, "expdiff:SkelBinding")


def test_skel_binding_unresolvable_skeleton(broken_copy):
    def unbind(layer):
        layer.GetRelationshipAtPath(f"{MESH}.skel:skeleton").targetPathList.ClearEdits()
    _edit(broken_copy.parent / "geo.usdc", unbind)
    assert "skel:skeleton does not resolve to a Skeleton" in _errors(broken_copy, "expdiff:SkelBinding")


def test_skel_binding_missing_animation_source(broken_copy):
    def unbind(layer):
        layer.GetRelationshipAtPath("/hero/geo/skel/skeleton.skel:animationSource").targetPathList.ClearEdits()
    _edit(broken_copy.parent / "geo.usdc", unbind)
    assert any("animationSource" in m for m in _errors(broken_copy, "expdiff:SkelBinding"))


def test_blendshape_targets_out_of_order(broken_copy):
    def reverse(layer):
        targets = layer.GetRelationshipAtPath(f"{MESH}.skel:blendShapeTargets").targetPathList
        targets.explicitItems = list(reversed(targets.explicitItems))
    _edit(broken_copy.parent / "geo.usdc", reverse)
    assert any("out of order" in m for m in _errors(broken_copy, "expdiff:BlendShapeTargets"))


def test_blendshape_targets_fewer_than_channels(broken_copy):
    def drop(layer):
        targets = layer.GetRelationshipAtPath(f"{MESH}.skel:blendShapeTargets").targetPathList
        targets.explicitItems = list(targets.explicitItems)[:-1]
    _edit(broken_copy.parent / "geo.usdc", drop)
    assert "3 skel:blendShapes but 2 skel:blendShapeTargets" in _errors(broken_copy, "expdiff:BlendShapeTargets")


def test_blendshape_channel_missing_from_the_animation(broken_copy):
    def drop(layer):
        attr = layer.GetAttributeAtPath("/hero/geo/skel/preview.blendShapes")
        attr.default = list(attr.default)[:-1]
    _edit(broken_copy.parent / "geo.usdc", drop)
    assert any("not in the animation" in m for m in _errors(broken_copy, "expdiff:BlendShapeTargets"))


def test_point_indices_and_offsets_differ_in_length(broken_copy):
    def truncate(layer):
        attr = layer.GetAttributeAtPath(f"{MESH}/mouthSmile_L.pointIndices")
        attr.default = Vt.IntArray(list(attr.default)[:-1])
    _edit(broken_copy.parent / "geo.usdc", truncate)
    assert any("pointIndices but" in m for m in _errors(broken_copy, "expdiff:BlendShapeOffsets"))


def test_point_indices_unsorted(broken_copy):
    def shuffle(layer):
        attr = layer.GetAttributeAtPath(f"{MESH}/mouthSmile_L.pointIndices")
        attr.default = Vt.IntArray(list(reversed(attr.default)))
    _edit(broken_copy.parent / "geo.usdc", shuffle)
    assert "pointIndices are not sorted and unique" in _errors(broken_copy, "expdiff:BlendShapeOffsets")


def test_time_range_shorter_than_the_animation(broken_copy):
    def shorten(layer):
        layer.endTimeCode = 10
    _edit(broken_copy, shorten)
    assert any("outside the stage's range 1..10" in m for m in _errors(broken_copy, "expdiff:TimeRange"))


def test_roughness_map_read_as_srgb(broken_copy):
    def srgb(layer):
        layer.GetAttributeAtPath(f"{MTL}/roughnessTexture.inputs:sourceColorSpace").default = "sRGB"
    _edit(broken_copy.parent / "mtl.usda", srgb)
    assert any("feeds roughness" in m for m in _errors(broken_copy, "expdiff:RawDataMaps"))


def test_normal_map_without_scale_and_bias(broken_copy):
    def unscaled(layer):
        layer.GetAttributeAtPath(f"{MTL}/normalTexture.inputs:scale").default = Gf.Vec4f(1, 1, 1, 1)
    _edit(broken_copy.parent / "mtl.usda", unscaled)
    assert _errors(broken_copy, "expdiff:NormalMapEncoding")


def test_udim_tile_beyond_1100(broken_copy):
    textures = broken_copy.parent / "textures" / "jawOpen"
    (textures / "normal.1002.exr").rename(textures / "normal.1101.exr")
    messages = _errors(broken_copy, "expdiff:UdimTiles")
    assert any("[1101] outside 1001..1100" in m for m in messages)


def test_udim_tile_missing_in_one_expression(broken_copy):
    (broken_copy.parent / "textures" / "mouthSmile_L" / "albedo.1002.exr").unlink()
    messages = [i for i in validate_asset(broken_copy) if i.check == "expdiff:UdimTiles"]
    assert any("expression=mouthSmile_L" in i.site and "differ" in i.message for i in messages)


def test_udim_pattern_without_any_tile(broken_copy):
    for tile in (broken_copy.parent / "textures" / "jawOpen").glob("roughness.*.exr"):
        tile.unlink()
    assert any("matches no tile file" in m for m in _errors(broken_copy, "expdiff:UdimTiles"))


def test_uvs_outside_the_udim_range(broken_copy):
    def move(layer):
        attr = layer.GetAttributeAtPath(f"{MESH}.primvars:st")
        uvs = list(attr.default)
        uvs[0] = Gf.Vec2f(10.5, 0.5)
        attr.default = Vt.Vec2fArray(uvs)
    _edit(broken_copy.parent / "geo.usdc", move)
    assert any("outside tiles 1001..1100" in m for m in _errors(broken_copy, "expdiff:UdimTiles"))


def test_missing_facs_api_is_a_warning(broken_copy):
    _edit(broken_copy.parent / "geo.usdc", lambda layer: layer.GetPrimAtPath(f"{MESH}/jawOpen").ClearInfo("apiSchemas"))
    issues = [i for i in validate_asset(broken_copy) if i.check == "expdiff:Schemas"]
    assert [(i.severity, i.site) for i in issues] == [("warning", f"{MESH}/jawOpen")]


def test_missing_geometry_layer_is_a_composition_error(broken_copy):
    (broken_copy.parent / "geo.usdc").unlink()
    issues = validate_asset(broken_copy)
    checks = {i.check for i in issues if i.is_error}
    assert "expdiff:SkelBinding" in checks  # no blendshapes left
    assert checks & {"usdValidation:CompositionErrorTest", "usdUtilsValidators:MissingReferenceValidator"}


def test_entry_layer_is_found_from_version_or_character_folder(small_published, tmp_path):
    version_dir = small_published.version_dir
    assert find_entry_layer(version_dir) == version_dir / "hero.usda"
    assert find_entry_layer(version_dir.parent) == version_dir / "hero.usda"
    assert find_entry_layer(small_published.root_layer) == small_published.root_layer
    with pytest.raises(ExpDiffInputError, match="no such file"):
        find_entry_layer(tmp_path / "absent")
    with pytest.raises(ExpDiffInputError, match="not an asset version folder"):
        find_entry_layer(tmp_path)
