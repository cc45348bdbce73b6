"""Blender 4.5 (PyPI ``bpy``, the ``dcc`` extra) imports a published asset headless and renders it.

A small asset is published with our own writer (the tests/usd synthetic face: 169 vertices in cm, Y-up, UDIM
tiles 1001-1002, three blendshapes, 32-texel maps: orange skin on 1001, teal on 1002). Blender runs in its own
process (``python -m expdiff_core.render.blender``): it bundles its own USD libraries, which must not meet
usd-core's ``pxr`` in this one. Its report is checked here against the asset read back with ``pxr``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from expdiff_core.usd import publish_character

from ..usd.conftest import expression_vertices, provenance, synthetic_face

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                reason="Blender's bpy 4.5 is not installed (pip install '.[dcc]'; .ci/run installs "
                                       "it): the Blender import test needs it")]

UNITS = ["jawOpen", "mouthSmile_L", "browDown_R"]
TILE_COLOURS = {1001: (0.8, 0.45, 0.3), 1002: (0.2, 0.6, 0.7)}
POSED = "mouthSmile_L"
RESOLUTION = 160


def _maps(size: int = 32) -> dict:
    """kind -> tile -> (C, size, size): a flat colour per tile (so the render shows each tile where it lies)."""
    out: dict = {"albedo": {}, "specular": {}, "roughness": {}, "normal": {}}
    for tile, colour in TILE_COLOURS.items():
        out["albedo"][tile] = np.broadcast_to(np.array(colour, np.float32)[:, None, None], (3, size, size)).copy()
        out["specular"][tile] = np.full((1, size, size), 0.25, np.float32)
        out["roughness"][tile] = np.full((1, size, size), 0.5, np.float32)
        out["normal"][tile] = np.broadcast_to(np.array([0.5, 0.5, 1.0], np.float32)[:, None, None],
                                              (3, size, size)).copy()
    return out


@pytest.fixture(scope="module")
def asset(tmp_path_factory):
    face = synthetic_face()
    shapes = {u: v for u, v in expression_vertices(face).items() if u in UNITS}
    maps = {e: _maps() for e in ["neutral", *UNITS]}
    return publish_character(tmp_path_factory.mktemp("dcc"), "hero", face, shapes, maps, provenance())


@pytest.fixture(scope="module")
def blender(asset, tmp_path_factory):
    """(report, png path): Blender's import of the asset, posed at mouthSmile_L = 1 and rendered."""
    out = tmp_path_factory.mktemp("blender")
    png, report = out / "frame.png", out / "report.json"
    cmd = [sys.executable, "-m", "expdiff_core.render.blender", str(asset.root_layer), "--out", str(png),
           "--expression", POSED, "--resolution", str(RESOLUTION), "--samples", "8", "--threads", "2",
           "--report", str(report), "--points", POSED]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(report.read_text()), png


def _stage(asset):
    from pxr import Usd

    return Usd.Stage.Open(str(asset.root_layer))


def test_one_animated_shape_key_per_blendshape_in_order(asset, blender):
    report, _ = blender
    assert report["blender"].startswith("4.5")
    assert report["shape_keys"] == ["Basis", *asset.blendshapes] and report["reference_key"] == "Basis"
    assert report["animated_shape_keys"] == sorted(asset.blendshapes)
    assert report["armature"] is not None and report["materials"] == ["skin"]


def test_stage_units_and_up_axis_become_blender_metres_and_z_up(asset, blender):
    from pxr import UsdGeom

    stage = _stage(asset)
    scale = UsdGeom.GetStageMetersPerUnit(stage)  # 0.01: cm
    assert UsdGeom.GetStageUpAxis(stage) == "Y"
    y_up_to_z_up = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)  # +90 degrees about X
    matrix = np.array(blender[0]["matrix_world"])
    np.testing.assert_allclose(matrix[:3, :3], scale * y_up_to_z_up, atol=1e-9)
    np.testing.assert_allclose(matrix[:3, 3], 0.0, atol=1e-9)


def test_a_shape_at_weight_one_poses_the_points_at_neutral_plus_its_offsets(asset, blender):
    from pxr import UsdGeom, UsdSkel

    stage = _stage(asset)
    mesh = stage.GetPrimAtPath("/hero/geo/skel/face")
    neutral = np.asarray(UsdGeom.Mesh(mesh).GetPointsAttr().Get(), dtype=np.float64)
    shape = UsdSkel.BlendShape(mesh.GetChild(POSED))
    offsets = np.asarray(shape.GetOffsetsAttr().Get(), dtype=np.float64)
    indices = shape.GetPointIndicesAttr().Get()
    expected = neutral.copy()
    expected[np.asarray(indices) if indices else slice(None)] += offsets
    assert np.abs(expected - neutral).max() > 0.5, "the shape must move points by more than the tolerance"

    posed = blender[0]["posed"][POSED]
    local, world = np.asarray(posed["local"]), np.asarray(posed["world"])
    # Tolerance: the points are float32 in cm (|p| <= 12) and Blender adds float32 offsets once, so the
    # rounding is ~1e-6 cm; 1e-5 cm (0.1 micrometre) is far below any real mismatch (a wrong weight,
    # shape or vertex order moves points by 0.1-1 cm here).
    np.testing.assert_allclose(local, expected, atol=1e-5, rtol=0)
    matrix = np.array(blender[0]["matrix_world"])
    np.testing.assert_allclose(world, expected @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-7, rtol=0)


def test_udim_textures_load_as_tiled_images(asset, blender):
    images = {i["name"]: i for i in blender[0]["images"]}
    assert sorted(images) == [f"{k}.<UDIM>.exr" for k in ("albedo", "normal", "roughness", "specular")]
    for image in images.values():
        assert image["source"] == "TILED" and image["tiles"] == [1001, 1002]
        assert image["has_data"] and image["size"] == [32, 32]
        assert image["filepath"].startswith(str(asset.version_dir / "textures" / "neutral"))


def test_cycles_renders_the_face_with_each_tile_s_colour(blender):
    from PIL import Image

    _, png = blender
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 255.0
    assert image.shape == (RESOLUTION, RESOLUTION, 3)
    background = image[2, 2]
    face = np.abs(image - background).sum(axis=2) > 0.1
    assert 0.2 < face.mean() < 0.95, "the face fills a good part of the frame"
    # Tile 1001 is the face's -X half and 1002 its +X half; seen from the front (+Z), -X is on the left.
    mid = RESOLUTION // 2
    left, right = image[:, : mid - 8][face[:, : mid - 8]], image[:, mid + 8:][face[:, mid + 8:]]
    assert left[:, 0].mean() > left[:, 2].mean() + 0.1, "orange (red > blue) on tile 1001"
    assert right[:, 2].mean() > right[:, 0].mean() + 0.1, "teal (blue > red) on tile 1002"
