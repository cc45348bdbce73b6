"""The USD delivery on a production-like head: ICT-FaceKit (26,719 vertices, quads + triangles, 12 material
groups, UDIM tiles 1001-1007) with its 55 expression shapes. Skips when the shared data is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pxr import Usd, UsdShade, UsdSkel

from expdiff_core.facs import ICT_SKIPPED_SHAPES, ICT_UNIT_NAMES, unit
from expdiff_core.io.mesh import read_obj
from expdiff_core.usd import FACS_API, ExportOptions, publish_character, read_facs_api, validate_asset
from expdiff_core.usd.read import posed_points

# Publishing 55 shapes on 26,719 vertices with 1,568 texture tiles takes several seconds: an end-to-end run.
pytestmark = pytest.mark.slow

ICT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ict-facekit"
MESH = "/ict/geo/skel/face"
MATERIAL = "/ict/mtl/skin"


@pytest.fixture(scope="module")
def ict_asset(tmp_path_factory, make_maps, provenance_record):
    folder = ICT_DIR
    if not (folder / "generic_neutral_mesh.obj").is_file():
        pytest.skip(f"ICT-FaceKit data not found at {folder}")
    neutral = read_obj(folder / "generic_neutral_mesh.obj")
    data = np.load(folder / "ict_facekit_deltas.npz")
    shapes = {ICT_UNIT_NAMES[str(name)]: neutral.vertices + delta.astype(np.float32)
              for name, delta in zip(data["expression_names"], data["expression_deltas"])
              if str(name) not in ICT_SKIPPED_SHAPES}
    maps = make_maps(["neutral", *shapes], tiles=tuple(neutral.udims), size=4)
    out = tmp_path_factory.mktemp("usd-ict")
    asset = publish_character(out, "ict", neutral, shapes, maps, provenance_record,
                              ExportOptions(textured_groups=("M_Face", "M_BackHead")))
    return asset, neutral, shapes


@pytest.fixture(scope="module")
def ict_stage(ict_asset):
    return Usd.Stage.Open(str(ict_asset[0].root_layer))


def test_ict_head_has_the_shape_the_test_is_about(ict_asset):
    _, neutral, shapes = ict_asset
    assert neutral.n_vertices == 26719 and len(shapes) == 55
    assert neutral.udims == list(range(1001, 1008))
    assert {3, 4} <= set(neutral.face_vertex_counts.tolist())


def test_ict_asset_validates_clean(ict_asset):
    assert validate_asset(ict_asset[0].root_layer) == []


def test_ict_blendshapes_at_weight_one_reproduce_the_expression_meshes(ict_asset, ict_stage):
    _, neutral, shapes = ict_asset
    mesh = ict_stage.GetPrimAtPath(MESH)
    anim = UsdSkel.Animation(ict_stage.GetPrimAtPath("/ict/geo/skel/preview"))
    names = list(anim.GetBlendShapesAttr().Get())
    extent = float(np.linalg.norm(neutral.vertices.max(0) - neutral.vertices.min(0)))
    attr = anim.GetBlendShapeWeightsAttr()
    checked = set()
    for t in attr.GetTimeSamples():
        w = np.asarray(attr.Get(t))
        if w.max() != 1.0:
            continue
        name = names[int(w.argmax())]
        # Same bound as the synthetic head: float32 rounding of rest + offset, far below 1e-5 of the head.
        assert np.abs(posed_points(mesh, t) - shapes[name]).max() / extent < 1e-5, name
        checked.add(name)
    assert checked == set(shapes)


def test_ict_blendshapes_carry_their_facs_records(ict_stage, ict_asset):
    for name in ict_asset[2]:
        prim = ict_stage.GetPrimAtPath(f"{MESH}/{name}")
        assert prim.HasAPI(FACS_API)
        assert read_facs_api(prim).action_units == unit(name).action_units


def test_ict_material_covers_every_tile_and_switches_with_the_expression(ict_stage):
    material = ict_stage.GetPrimAtPath(MATERIAL)
    variant_set = material.GetVariantSet("expression")
    for selection in ("neutral", "jawOpen"):
        variant_set.SetVariantSelection(selection)
        for child in material.GetChildren():
            shader = UsdShade.Shader(child)
            if shader.GetShaderId() != "UsdUVTexture":
                continue
            file_input = shader.GetInput("file")
            assert f"/{selection}/" in file_input.Get().path
            layer = next(s.layer for s in file_input.GetAttr().GetPropertyStack() if s.HasDefaultValue())
            tiles = sorted(int(t) for _, t in UsdShade.UdimUtils.ResolveUdimTilePaths(file_input.Get().path, layer))
            assert tiles == list(range(1001, 1008))


def test_ict_skin_groups_alone_are_bound_to_the_skin_material(ict_stage):
    bound = {}
    for subset in UsdShade.MaterialBindingAPI(ict_stage.GetPrimAtPath(MESH)).GetMaterialBindSubsets():
        material, _ = UsdShade.MaterialBindingAPI(subset.GetPrim()).ComputeBoundMaterial()
        bound[subset.GetPrim().GetName()] = bool(material)
    assert len(bound) == 12
    assert sorted(g for g, is_bound in bound.items() if is_bound) == ["M_BackHead", "M_Face"]
