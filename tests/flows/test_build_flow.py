"""``build-character`` and ``nightly-build`` under the Prefect test harness, on a tiny untrained model.

One build and its rerun are shared by several tests (a build is ~30-60 s on 2 cores); they run in their
own state folder so the rerun finds the first run's cache records.
"""

from __future__ import annotations

import json

import pytest

from .conftest import flow_run_id, run_artifacts, task_states, write_neutral_asset

pytestmark = pytest.mark.slow

EXPRESSIONS = ["jawOpen", "mouthSmile_L"]
CACHED_STAGES = ("ingest", "encode", "diffuse")


@pytest.fixture(scope="module")
def builds(prefect_harness, tiny_model, tmp_path_factory):
    """Register the tiny model in MLflow, build 'hero' from models:/expdiff-tiny@candidate, then build again."""
    from expdiff_core.config import load_settings
    from expdiff_core.registry import register_model_folder, tracked_run
    from flows.build_character import build_character

    root = tmp_path_factory.mktemp("build")
    mesh, textures = write_neutral_asset(root / "asset")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EXPDIFF_STATE_DIR", str(root / "state"))
        env.setenv("EXPDIFF_OUTPUT_ROOT", str(root / "builds"))
        settings = load_settings()
        with tracked_run(settings, "expdiff-tests", "tiny"):
            version = register_model_folder(settings, tiny_model, "expdiff-tiny")
        params = dict(character="hero", mesh=str(mesh), textures=textures, expressions=EXPRESSIONS,
                      model="models:/expdiff-tiny@candidate", seed=1, steps=3, device="cpu")
        first = build_character(**params, return_state=True)
        second = build_character(**params, return_state=True)
    return {"first": first, "second": second, "version": version, "root": root}


def test_build_publishes_a_valid_usd_version(builds):
    from expdiff_core.usd.validate import validate_asset

    state = builds["first"]
    assert state.is_completed(), state.message
    result = state.result()
    assert result["version_dir"] == str(builds["root"] / "builds" / "hero" / "v001")
    assert [i for i in validate_asset(result["root_layer"]) if i.is_error] == []
    assert result["model"] == f"expdiff-tiny/{builds['version'].version}"


def test_every_stage_ran_once(builds):
    states = task_states(flow_run_id(builds["first"]))
    assert set(states.values()) == {"Completed"}
    assert {"resolve-model", "ingest", "encode", "diffuse", "decode", "recover-meshes", "upscale", "transfer-textures",
            "export-usd", "validate-usd", "contact-sheet"} <= set(states)


def test_a_rerun_with_the_same_inputs_is_served_from_the_cache(builds):
    state = builds["second"]
    assert state.is_completed(), state.message
    states = task_states(flow_run_id(state))
    assert {stage: states[stage] for stage in CACHED_STAGES} == {stage: "Cached" for stage in CACHED_STAGES}
    assert states["export-usd"] == "Completed"  # publishing always runs: a new version
    assert state.result()["version_dir"].endswith("hero/v002")


def test_build_artifacts_summarise_the_run(builds):
    found = run_artifacts(flow_run_id(builds["first"]))
    summary = found["build-hero-summary"].data
    for needle in ("# Build hero", "hero/v001", f"expdiff-tiny version {builds['version'].version}", "| **seed** | 1 |",
                   "diffuse (s)", "export USD (s)"):
        assert needle in summary, needle
    rows = json.loads(found["build-hero-expressions"].data)
    assert [r["expression"] for r in rows] == ["neutral", *EXPRESSIONS]
    assert rows[0]["max_displacement_mm"] == 0.0  # Eq. 9: the neutral is the user's mesh itself
    assert found["build-hero-diffusion-progress"].data == 100.0
    assert "hero-" in found["build-hero-contact-sheet"].data


def test_a_changed_texture_byte_misses_the_ingest_cache(builds, tmp_path):
    from tasks.build import ingest

    key_fn = ingest.cache_key_fn
    mesh, textures = write_neutral_asset(tmp_path / "asset")
    model = {"fingerprint": "expdiff-tiny/1"}
    before = key_fn(None, {"mesh": str(mesh), "textures": textures, "model": model})
    tile = tmp_path / "asset" / "tex" / "roughness.1002.exr"
    data = bytearray(tile.read_bytes())
    data[-1] ^= 0x01
    tile.write_bytes(bytes(data))
    assert key_fn(None, {"mesh": str(mesh), "textures": textures, "model": model}) != before


def test_a_corrupt_texture_fails_the_build_naming_the_file(prefect_harness, tiny_model, tmp_path):
    from flows.build_character import build_character

    mesh, textures = write_neutral_asset(tmp_path / "asset")
    broken = tmp_path / "asset" / "tex" / "albedo.1002.exr"
    broken.write_bytes(broken.read_bytes()[:300])
    state = build_character(character="hero", mesh=str(mesh), textures=textures, expressions=EXPRESSIONS,
                            model=str(tiny_model), steps=3, device="cpu", return_state=True)
    assert state.is_failed()
    assert str(broken) in state.message
    assert task_states(flow_run_id(state)) == {}  # refused by the flow's pre-flight, before any task ran


def test_nightly_builds_the_good_characters_and_reports_the_bad_one(prefect_harness, tiny_model, tmp_path):
    from flows.nightly_build import nightly_build

    mesh, textures = write_neutral_asset(tmp_path / "asset")
    manifest = tmp_path / "nightly.toml"
    manifest.write_text(f"""
[defaults]
model = "{tiny_model}"
expressions = ["jawOpen"]
steps = 2

[[characters]]
name = "bad"
mesh = "asset/head.obj"
textures = {{ albedo = "asset/tex/missing.<UDIM>.exr" }}

[[characters]]
name = "good"
mesh = "asset/head.obj"
textures = {{ albedo = "{textures['albedo']}" }}
""")
    state = nightly_build(manifest=str(manifest), return_state=True)
    assert state.is_failed() and "1 of 2 character build(s) failed: bad" in state.message
    found = run_artifacts(flow_run_id(state))
    rows = {r["character"]: r for r in json.loads(found["nightly-characters"].data)}
    assert rows["good"]["outcome"] == "built" and rows["good"]["version"].endswith("good/v001")
    assert rows["bad"]["outcome"] == "failed" and "missing" in rows["bad"]["detail"]
    summary = found["nightly-summary"].data
    assert "| **failed** | bad |" in summary and "**bad** failed" in summary
