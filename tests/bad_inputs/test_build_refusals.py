"""`expdiff build` refuses bad inputs before Prefect or any model starts: one line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import run_cli

PREFIX = "expdiff build: error: "


def refused(code: int, err: str, *needles: str) -> None:
    """Exit 2 and exactly one line ``expdiff build: error: ...`` holding every needle, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------ character names (path escape)
def test_a_character_name_that_climbs_out_of_the_output_root_is_refused(guarded, capsys):
    code, _, err = run_cli(guarded.build_args(character="../../../x"), capsys)
    refused(code, err, "character name '../../../x' is not valid", "--character x")


def test_a_character_name_with_a_slash_is_refused(guarded, capsys):
    code, _, err = run_cli(guarded.build_args(character="hero/evil"), capsys)
    refused(code, err, "'hero/evil' is not valid")


def test_a_name_taken_from_a_file_name_with_a_dash_says_which_character_to_pass(guarded, capsys):
    mesh = guarded.mesh.with_name("hero-v2.obj")
    mesh.write_bytes(guarded.mesh.read_bytes())
    args = guarded.build_args(character=None)
    args[1] = str(mesh)
    code, _, err = run_cli(args, capsys)
    refused(code, err, str(mesh), "'hero-v2'", "pass --character hero_v2")


# ------------------------------------------------------------------ expressions
def test_a_misspelt_unit_gets_a_did_you_mean(guarded, capsys):
    code, _, err = run_cli(guarded.build_args("--expressions", "jawOpne"), capsys)
    refused(code, err, "'jawOpne' is not a FACS unit name", "did you mean jawOpen?", "--prompt 'jawOpne'")


def test_free_text_is_refused_unless_asked_for_with_prompt(guarded, capsys):
    code, _, err = run_cli(guarded.build_args("--expressions", "nose right"), capsys)
    refused(code, err, "'nose right' is not a FACS unit name", "--prompt 'nose right'")


def test_a_free_prompt_asked_for_with_prompt_passes_preflight():
    from expdiff_core.preflight import PROMPT_PREFIX, check_expressions

    assert check_expressions(["jawOpen", PROMPT_PREFIX + "nose right"]) == ["jawOpen", "nose right"]


@pytest.mark.parametrize("weight", ["-1", "1.5", "nan"])
def test_a_blend_weight_outside_0_1_is_refused(guarded, capsys, weight):
    code, _, err = run_cli(guarded.build_args("--expressions", f"jawOpen->mouthSmile_L@{weight}"), capsys)
    refused(code, err, f"weight {weight} is outside [0, 1]")


def test_a_blend_weight_that_is_not_a_number_is_refused(guarded, capsys):
    code, _, err = run_cli(guarded.build_args("--expressions", "jawOpen->mouthSmile_L@half"), capsys)
    refused(code, err, "weight 'half' is not a number")


def test_a_blend_keeps_its_weight_in_the_pipeline_text():
    from expdiff_core.preflight import check_expressions

    assert check_expressions(["jawOpen->mouthSmile_L@0.25", "jawOpen->mouthSmile_L"]) == [
        "jawOpen->mouthSmile_L@0.25", "jawOpen->mouthSmile_L@0.5"]


def test_an_expression_asked_for_twice_is_refused(guarded, capsys):
    code, _, err = run_cli(guarded.build_args("--expressions", "jawOpen", "jawOpen"), capsys)
    refused(code, err, "['jawOpen'] requested more than once")


# ------------------------------------------------------------------ sampling flags
def test_zero_steps_are_refused(guarded, capsys):
    code, _, err = run_cli(guarded.build_args("--steps", "0"), capsys)
    refused(code, err, "--steps 0: must be an integer >= 1")


@pytest.mark.parametrize("seed", [str(2**63), "-1"])
def test_a_seed_outside_0_to_2_63_is_refused(guarded, capsys, seed):
    code, _, err = run_cli(guarded.build_args("--seed", seed), capsys)
    refused(code, err, f"--seed {seed}: must be an integer from 0 to {2**63 - 1}")


@pytest.mark.parametrize("strength", ["0.0", "1.5"])
def test_a_strength_outside_0_1_is_refused(guarded, capsys, strength):
    code, _, err = run_cli(guarded.build_args("--strength", strength), capsys)
    refused(code, err, f"--strength {strength}: must be in (0, 1]")


# ------------------------------------------------------------------ input files
def test_a_missing_mesh_is_refused(guarded, capsys):
    args = guarded.build_args()
    args[1] = str(guarded.mesh.with_name("nope.obj"))
    code, _, err = run_cli(args, capsys)
    refused(code, err, "nope.obj: mesh file not found")


def test_a_mesh_that_is_not_a_mesh_is_refused(guarded, capsys):
    guarded.mesh.write_text("this is not an OBJ\nf 1 2 3\n")
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, str(guarded.mesh))


def test_a_mesh_off_the_model_template_is_refused(guarded, capsys):
    from expdiff_core.io.mesh import write_obj

    from ..helpers.meshes import sheet_face

    write_obj(sheet_face(), guarded.mesh)
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, str(guarded.mesh), "does not match the model's template")


def test_a_missing_texture_is_refused(guarded, capsys):
    code, _, err = run_cli(guarded.build_args(albedo=str(guarded.root / "none" / "albedo.<UDIM>.exr")), capsys)
    refused(code, err, "none: texture folder not found")


def test_a_truncated_texture_is_refused(guarded, capsys):
    tile = Path(guarded.textures["albedo"].replace("<UDIM>", "1002"))
    tile.write_bytes(tile.read_bytes()[:300])
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, str(tile))


def test_a_texture_missing_a_tile_the_model_generates_is_refused(guarded, capsys):
    Path(guarded.textures["albedo"].replace("<UDIM>", "1002")).unlink()
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, "lacks UDIM tile(s) 1002")


def test_a_tiny_texture_is_refused(guarded, albedo_of, capsys):
    code, _, err = run_cli(guarded.build_args(albedo=albedo_of(4, 4)), capsys)
    refused(code, err, "albedo.1001.exr: is 4x4; texture tiles must be at least 32x32")


def test_a_texture_that_is_not_square_is_refused(guarded, albedo_of, capsys):
    code, _, err = run_cli(guarded.build_args(albedo=albedo_of(100, 200)), capsys)
    refused(code, err, "is 200x100; texture tiles must be square")


def test_a_texture_neither_a_power_of_two_nor_a_multiple_of_the_model_resolution_is_refused(guarded, albedo_of,
                                                                                              capsys):
    code, _, err = run_cli(guarded.build_args(albedo=albedo_of(48, 48)), capsys)
    refused(code, err, "is 48x48; the side must be a power of two or a multiple of the model's resolution 32")


def test_a_texture_at_a_multiple_of_the_model_resolution_passes(guarded, albedo_of):
    from expdiff_core.preflight import check_textures, model_info

    found = check_textures({"albedo": albedo_of(96, 96)}, model_info(None, str(guarded.model)))
    assert found["albedo"][1] == 96


# ------------------------------------------------------------------ model
def test_a_model_folder_with_pickle_weights_is_refused(guarded, capsys):
    (guarded.model / "denoiser").mkdir()
    (guarded.model / "denoiser" / "model.bin").write_bytes(b"\x80\x04pickle")
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, "model.bin: is a pickle checkpoint")


def test_a_missing_model_folder_is_refused(guarded, capsys):
    args = guarded.build_args()
    args[args.index("--model") + 1] = str(guarded.root / "no-model")
    code, _, err = run_cli(args, capsys)
    refused(code, err, "no-model: model folder not found")


def test_a_malformed_model_reference_is_refused(guarded, capsys):
    args = guarded.build_args()
    args[args.index("--model") + 1] = "models:/expdiff@"
    code, _, err = run_cli(args, capsys)
    refused(code, err, "--model 'models:/expdiff@'")


# ------------------------------------------------------------------ output root and state folder
def test_an_output_root_that_is_a_file_is_refused(guarded, capsys):
    blocker = guarded.root / "a-file"
    blocker.write_text("not a folder")
    args = guarded.build_args()
    args[args.index("--output-root") + 1] = str(blocker / "builds")
    code, _, err = run_cli(args, capsys)
    refused(code, err, f"output root: {blocker} is a file, not a folder")


def test_a_character_path_that_is_a_file_is_refused(guarded, capsys):
    (guarded.out / "villain").write_text("a file where the character folder goes")
    code, _, err = run_cli(guarded.build_args(character="villain"), capsys)
    refused(code, err, "villain: is a file")


def test_a_read_only_output_root_is_refused(guarded, capsys, is_root, read_only_folder):
    args = guarded.build_args()
    args[args.index("--output-root") + 1] = str(read_only_folder)
    code, _, err = run_cli(args, capsys)
    refused(code, err, "output root is not writable")


def test_an_output_root_without_room_for_the_output_is_refused(guarded, capsys, monkeypatch):
    import expdiff_core.preflight as preflight

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 1 << 20)
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, "not enough free space: the build needs about", "1.0 MiB free")


def test_an_output_root_on_a_full_disk_is_refused(guarded, capsys, full_tmpfs):
    args = guarded.build_args()
    args[args.index("--output-root") + 1] = str(full_tmpfs / "builds")
    code, _, err = run_cli(args, capsys)
    refused(code, err, "not enough free space")


def test_an_unwritable_state_folder_is_refused(guarded, capsys, monkeypatch):
    blocker = guarded.root / "state-file"
    blocker.write_text("x")
    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(blocker / "state"))
    code, _, err = run_cli(guarded.build_args(), capsys)
    refused(code, err, f"state folder: {blocker} is a file, not a folder")


def test_neither_mesh_nor_demo_is_refused(guarded, capsys):
    code, _, err = run_cli(["build", "--expressions", "jawOpen"], capsys)
    refused(code, err, "give either a MESH or --demo")


# ------------------------------------------------------------------ --debug and a real process
def test_debug_adds_the_traceback(guarded, capsys):
    code, _, err = run_cli(guarded.build_args("--steps", "0", "--debug"), capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith(PREFIX)


def test_a_refusal_comes_within_10_s_without_prefect_output(guarded):
    env = {**os.environ, "EXPDIFF_STATE_DIR": str(guarded.state), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "expdiff_core.cli", *guarded.build_args(character="../../../x")],
                          capture_output=True, text=True, env=env, timeout=60)
    seconds = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(PREFIX)
    assert "prefect" not in (done.stdout + done.stderr).lower()
    assert seconds < 10, f"refused after {seconds:.1f} s"


def test_the_help_documents_the_exit_statuses():
    from expdiff_core.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["build"].format_help()
    for needle in ("exit status:", "  2  refused", "  3  the machine failed", "--prompt TEXT", "--keep-work"):
        assert needle in text, needle


# ------------------------------------------------------------------ the flow checks its parameters itself
@pytest.mark.slow  # importing the flow imports Prefect, torch and diffusers (~1 min on 2 busy cores)
def test_the_flow_refuses_a_path_escaping_character_before_writing(guarded):
    """A deployment parameter goes through the same pre-flight (the flow body's first call)."""
    from expdiff_core.preflight import PreflightError
    from flows.build_character import build_character

    with pytest.raises(PreflightError, match="character name '../../x' is not valid"):
        build_character.fn(character="../../x", mesh=str(guarded.mesh), textures=guarded.textures,
                           expressions=["jawOpen"], model=str(guarded.model), steps=2)
    assert not guarded.state.exists()


@pytest.mark.slow
def test_the_flow_refuses_a_free_prompt_not_marked_as_one(guarded):
    from expdiff_core.preflight import PreflightError
    from flows.build_character import build_character

    with pytest.raises(PreflightError, match="did you mean jawOpen"):
        build_character.fn(character="hero", mesh=str(guarded.mesh), textures=guarded.textures,
                           expressions=["jawopen"], model=str(guarded.model))


def test_a_bad_flag_with_demo_is_refused_before_the_demo_asset_is_written(guarded, capsys):
    code, _, err = run_cli(["build", "--demo", "--steps", "0", "--output-root", str(guarded.out)], capsys)
    refused(code, err, "--steps 0")
    assert not (guarded.state / "demo").exists()
