"""The published asset's provenance: registered with USD through our plugin, and free of build-machine paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..helpers.assets import publish_guard_version

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]

_READ_SCHEMAS = """
import json, sys
from pxr import Usd, UsdSkel
stage = Usd.Stage.Open(sys.argv[1])
root = stage.GetDefaultPrim()
shapes = [p for p in stage.Traverse() if p.IsA(UsdSkel.BlendShape)]
print(json.dumps({"provenance": root.HasAPI("ExpDiffProvenanceAPI"), "facs": [p.HasAPI("ExpDiffFacsAPI") for p in shapes],
                  "applied": list(root.GetAppliedSchemas())}))
"""


def _schemas_seen(root_layer, plugin_path: str | None) -> dict:
    """What a plain USD process (no ExpDiff import) sees, with or without our plugin on PXR_PLUGINPATH_NAME."""
    env = {k: v for k, v in os.environ.items() if k != "PXR_PLUGINPATH_NAME"}
    if plugin_path:
        env["PXR_PLUGINPATH_NAME"] = plugin_path
    done = subprocess.run([sys.executable, "-c", _READ_SCHEMAS, str(root_layer)], capture_output=True, text=True,
                          env=env, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_provenance_api_is_applied_with_the_plugin_on_the_path(tmp_path):
    asset = publish_guard_version(tmp_path / "builds")
    seen = _schemas_seen(asset.root_layer, str(REPO / "usd_schemas"))
    assert seen["provenance"] is True and seen["facs"] == [True]
    assert "ExpDiffProvenanceAPI" in seen["applied"]


def test_without_the_plugin_usd_does_not_list_the_schemas(tmp_path):
    asset = publish_guard_version(tmp_path / "builds")
    assert _schemas_seen(asset.root_layer, None)["provenance"] is False


def test_the_published_asset_carries_no_absolute_path_of_the_build_machine(tmp_path):
    from pxr import Sdf, Usd

    from expdiff_core.usd import read_provenance_api

    asset = publish_guard_version(tmp_path / "builds")  # its provenance names /build/machine/in/head.obj
    for layer in sorted(asset.version_dir.glob("*.usd*")):
        text = Sdf.Layer.FindOrOpen(str(layer)).ExportToString()
        assert "/build/machine" not in text and str(tmp_path) not in text, layer.name
    stage = Usd.Stage.Open(str(asset.root_layer))
    prov = read_provenance_api(stage.GetDefaultPrim())
    assert prov.input_hashes == {"head.obj": "a" * 64}


def test_inputs_with_one_file_name_keep_enough_of_their_folders_to_tell_them_apart():
    from expdiff_core.usd.schema import portable_input_names

    names = portable_input_names({"/m/in/head.obj": "1", "/m/in/a/albedo.1001.exr": "2", "/m/in/b/albedo.1001.exr": "3",
                                  "neutral_mesh": "4"})
    assert names == {"head.obj": "/m/in/head.obj", "a/albedo.1001.exr": "/m/in/a/albedo.1001.exr",
                     "b/albedo.1001.exr": "/m/in/b/albedo.1001.exr", "neutral_mesh": "neutral_mesh"}
