"""The codeless schema plugin: its three files agree, USD registers it, and a DCC finds it by plugin path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pxr import Sdf, Usd

import usd_schemas
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.facs import UNITS, unit
from expdiff_core.usd import FACS_API, PROVENANCE_API, FacsInfo, Provenance, read_facs_api, read_provenance_api
from expdiff_core.usd.schema import apply_facs_api, apply_provenance_api, facs_info_for, normalize_side

PLUGIN = usd_schemas.PLUGIN_DIR


def _plug_info() -> dict:
    text = (PLUGIN / "plugInfo.json").read_text()
    return json.loads("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))


def _classes(path) -> dict[str, dict[str, tuple]]:
    """class name -> property name -> (type, variability, default, allowedTokens) of a schema layer."""
    layer = Sdf.Layer.FindOrOpen(str(path))
    out = {}
    for prim in layer.rootPrims:
        if prim.specifier != Sdf.SpecifierClass:
            continue
        out[prim.name] = {a.name: (str(a.typeName), a.variability, a.default,
                                   tuple(a.GetInfo("allowedTokens")) if a.HasInfo("allowedTokens") else ())
                          for a in prim.attributes}
    return out


def test_generated_schema_matches_its_source():
    source, generated = _classes(PLUGIN / "schema.usda"), _classes(PLUGIN / "generatedSchema.usda")
    assert set(source) == {FACS_API, PROVENANCE_API}
    assert generated == source


def test_plug_info_declares_every_schema_class_as_a_single_apply_api():
    source = Sdf.Layer.FindOrOpen(str(PLUGIN / "schema.usda"))
    types = _plug_info()["Plugins"][0]["Info"]["Types"]
    aliases = {t["alias"]["UsdSchemaBase"]: (name, t) for name, t in types.items()}
    assert set(aliases) == {FACS_API, PROVENANCE_API}
    for schema, (type_name, info) in aliases.items():
        custom = source.GetPrimAtPath(f"/{schema}").customData
        assert type_name == "ExpDiffSchemas" + custom["className"]
        assert info["schemaKind"] == "singleApplyAPI"
        assert info.get("apiSchemaCanOnlyApplyTo", []) == list(custom.get("apiSchemaCanOnlyApplyTo", []))


def test_usd_knows_the_schemas_once_registered():
    assert usd_schemas.register() == PLUGIN  # registering again is harmless
    registry = Usd.SchemaRegistry()
    for schema, prefix in ((FACS_API, "expdiff:facs:"), (PROVENANCE_API, "expdiff:provenance:")):
        definition = registry.FindAppliedAPIPrimDefinition(schema)
        assert definition is not None
        assert all(name.startswith(prefix) for name in definition.GetPropertyNames())
    assert registry.GetAPISchemaCanOnlyApplyToTypeNames(FACS_API) == ["BlendShape"]


def test_facs_api_applies_to_blendshapes_only():
    stage = Usd.Stage.CreateInMemory()
    shape = stage.DefinePrim("/s", "BlendShape")
    apply_facs_api(shape, FacsInfo("mouthSmile_L", ("AU12",), "left", "mouth", "smile with the left corner"))
    assert read_facs_api(shape) == FacsInfo("mouthSmile_L", ("AU12",), "left", "mouth", "smile with the left corner")
    with pytest.raises(ValueError, match="can only be applied"):
        apply_facs_api(stage.DefinePrim("/x", "Xform"), FacsInfo("jawOpen"))
    assert read_facs_api(stage.DefinePrim("/plain", "BlendShape")) is None


def test_side_outside_the_allowed_tokens_is_refused():
    with pytest.raises(ValueError, match="unknown face side"):
        normalize_side("up")
    assert [normalize_side(s) for s in ("L", "R", "both")] == ["left", "right", "center"]


def test_provenance_round_trips_through_usd():
    stage = Usd.Stage.CreateInMemory()
    root = stage.DefinePrim("/hero", "Xform")
    record = Provenance("expdiff-denoiser", "champion", 2**40, "DPMSolverMultistepScheduler", 12,
                        input_hashes={"neutral_mesh": "1" * 64, "normal": "2" * 64})
    apply_provenance_api(root, record)
    assert read_provenance_api(root) == record


def test_every_vocabulary_unit_maps_to_its_facs_record():
    for u in UNITS:
        info = facs_info_for(u.name)
        assert info.action_units == unit(u.name).action_units
        assert info.side in ("left", "right", "center") and info.region == u.region and info.prompt == u.prompt
    assert facs_info_for("mouthSmile_L").side == "left" and facs_info_for("jawOpen").side == "center"


def test_names_outside_the_vocabulary_are_free_prompts():
    assert facs_info_for("brows left") == FacsInfo("brows left", (), "center", "free", "brows left")

    def strict(name):
        raise ExpDiffInputError(None, f"unknown {name}")
    assert facs_info_for("jawOpen", strict).region == "free"


_DCC_SCRIPT = """
import sys
from pxr import Usd
stage = Usd.Stage.Open(sys.argv[1])
shape = stage.GetPrimAtPath('/hero/geo/skel/face/jawOpen')
print(shape.HasAPI('ExpDiffFacsAPI'), shape.GetAttribute('expdiff:facs:prompt').Get())
print(Usd.SchemaRegistry().FindAppliedAPIPrimDefinition('ExpDiffProvenanceAPI') is not None)
"""


def test_a_dcc_finds_the_schemas_through_pxr_pluginpath_name(small_published):
    # A DCC's Python knows nothing of expdiff: only the documented environment variable.
    env = {**os.environ, "PXR_PLUGINPATH_NAME": str(PLUGIN)}
    run = subprocess.run([sys.executable, "-c", _DCC_SCRIPT, str(small_published.root_layer)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=small_published.version_dir)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == [f"True {unit('jawOpen').prompt}", "True"]


def test_registering_after_usd_built_its_schema_registry_explains_the_fix():
    script = ("from pxr import Usd\nUsd.Stage.CreateInMemory().DefinePrim('/a', 'Xform')\n"
              "import usd_schemas\nusd_schemas.register()\n")
    env = {k: v for k, v in os.environ.items() if k != "PXR_PLUGINPATH_NAME"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "PXR_PLUGINPATH_NAME" in run.stderr and "before opening any USD stage" in run.stderr
