"""tasks.common: content-hash cache keys, the transient-I/O retry condition, result storage binding."""

from __future__ import annotations

import pytest
from prefect import task
from prefect.states import Failed

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from tasks.common import (IO_RETRIES, IO_RETRY_DELAYS, bind_result_storage, content_cache_key, folder_files,
                          results_path, retry_on_transient_io)


@pytest.fixture
def inputs(tmp_path):
    mesh = tmp_path / "neutral.obj"
    mesh.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    maps = tmp_path / "maps"
    (maps / "albedo").mkdir(parents=True)
    (maps / "albedo" / "1001.exr").write_bytes(b"\x76\x2f\x31\x01" + bytes(64))
    return mesh, maps


def _key(fn, **params):
    return fn(None, params)


def test_same_inputs_give_the_same_key(inputs):
    mesh, maps = inputs
    key = content_cache_key("ingest", files=["mesh", "maps"])
    params = {"mesh": str(mesh), "maps": str(maps), "model": "models:/expdiff/3", "seed": 0}
    assert _key(key, **params) == _key(key, **params)
    assert _key(key, **params).startswith("ingest-")


def test_one_changed_byte_in_a_file_changes_the_key(inputs):
    mesh, maps = inputs
    key = content_cache_key("ingest", files=["mesh", "maps"])
    params = {"mesh": str(mesh), "maps": str(maps)}
    before = _key(key, **params)
    mesh.write_bytes(mesh.read_bytes().replace(b"v 1 0 0", b"v 1 0 1"))
    assert _key(key, **params) != before


def test_a_changed_file_inside_a_folder_changes_the_key(inputs):
    mesh, maps = inputs
    key = content_cache_key("encode", files=["maps"])
    before = _key(key, maps=str(maps))
    tile = maps / "albedo" / "1001.exr"
    tile.write_bytes(tile.read_bytes()[:-1] + b"\x01")
    assert _key(key, maps=str(maps)) != before


def test_model_version_and_config_values_are_part_of_the_key(inputs):
    mesh, _ = inputs
    key = content_cache_key("diffuse", files=["mesh"])
    base = {"mesh": str(mesh), "model_version": "expdiff/3", "steps": 20}
    assert _key(key, **base) != _key(key, **{**base, "model_version": "expdiff/4"})
    assert _key(key, **base) != _key(key, **{**base, "steps": 25})


def test_listed_values_only_ignore_other_parameters(inputs):
    mesh, _ = inputs
    key = content_cache_key("diffuse", files=["mesh"], values=["model_version"])
    a = _key(key, mesh=str(mesh), model_version="v1", work_dir="/tmp/a")
    assert a == _key(key, mesh=str(mesh), model_version="v1", work_dir="/tmp/b")


def test_the_step_name_separates_keys(inputs):
    mesh, _ = inputs
    assert _key(content_cache_key("encode", files=["mesh"]), mesh=str(mesh)) != \
        _key(content_cache_key("diffuse", files=["mesh"]), mesh=str(mesh))


def test_a_missing_input_file_is_a_cache_miss_not_an_error(tmp_path):
    """The cache lookup never crashes on a file that is gone (a cleaned work folder): its key is one no run
    with the file has, so the task runs and reports the missing file itself."""
    key = content_cache_key("ingest", files=["mesh"])
    missing = _key(key, mesh=str(tmp_path / "nope.obj"))
    (tmp_path / "nope.obj").write_text("v 0 0 0\n")
    assert missing != _key(key, mesh=str(tmp_path / "nope.obj"))


def test_folder_files_are_sorted_by_relative_path(tmp_path):
    for name in ("b.txt", "a/z.txt", "a/b.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert [p.relative_to(tmp_path).as_posix() for p in folder_files(tmp_path)] == ["a/b.txt", "a/z.txt", "b.txt"]


@pytest.mark.parametrize("exc,retry", [
    (OSError(5, "Input/output error"), True),
    (TimeoutError("read timed out"), True),
    (ConnectionResetError("reset by peer"), True),
    (ExpDiffInputError("/x/albedo.1001.exr", "not an image"), False),
    (RuntimeError("bug"), False),
])
def test_only_os_level_errors_are_retried(exc, retry):
    assert retry_on_transient_io(None, None, Failed(data=exc)) is retry


def test_io_retries_back_off_exponentially():
    delays = IO_RETRY_DELAYS(IO_RETRIES)
    assert len(delays) == IO_RETRIES and all(b == 2 * a for a, b in zip(delays, delays[1:]))


def test_bound_tasks_persist_results_under_the_state_folder():
    @task
    def step() -> int:
        return 1

    settings = load_settings()
    (bound,) = bind_result_storage(settings, step)
    assert results_path(settings) == settings.state_path / "prefect-results"
    assert bound.result_storage == results_path(settings) and results_path(settings).is_dir()
    assert step.result_storage is None  # the module-level task is left alone


def test_input_files_expand_udim_patterns_folders_and_mappings(tmp_path):
    from tasks.common import input_files

    tex = tmp_path / "tex"
    tex.mkdir()
    for name in ("albedo.1002.exr", "albedo.1001.exr", "albedo.1001.exr.bak", "normal.1001.exr"):
        (tex / name).write_bytes(b"x")
    pattern = str(tex / "albedo.<UDIM>.exr")
    assert input_files(pattern) == [tex / "albedo.1001.exr", tex / "albedo.1002.exr"]
    assert input_files({"normal": str(tex / "normal.1001.exr"), "albedo": pattern}) == \
        [tex / "albedo.1001.exr", tex / "albedo.1002.exr", tex / "normal.1001.exr"]
    assert len(input_files(str(tex))) == 4 and input_files(None) == []


def test_a_new_udim_tile_changes_the_key_of_a_pattern(tmp_path):
    tex = tmp_path / "tex"
    tex.mkdir()
    (tex / "albedo.1001.exr").write_bytes(b"a")
    key = content_cache_key("ingest", files=["textures"])
    params = {"textures": {"albedo": str(tex / "albedo.<UDIM>.exr")}}
    before = _key(key, **params)
    (tex / "albedo.1002.exr").write_bytes(b"b")
    assert _key(key, **params) != before


def test_dotted_names_read_keys_of_mapping_parameters(tmp_path):
    latents = tmp_path / "neutral_latents.safetensors"
    latents.write_bytes(b"z0")
    key = content_cache_key("diffuse", files=["encoded.latents"], values=["model.fingerprint", "seed"])
    params = {"encoded": {"latents": str(latents), "shape": [10, 4, 4, 4]}, "model": {"fingerprint": "m/1",
              "path": "/cache/a"}, "seed": 0, "work_dir": "/tmp/run1"}
    before = _key(key, **params)
    assert _key(key, **{**params, "work_dir": "/tmp/run2", "model": {"fingerprint": "m/1", "path": "/b"}}) == before
    assert _key(key, **{**params, "model": {"fingerprint": "m/2", "path": "/cache/a"}}) != before
    latents.write_bytes(b"z1")
    assert _key(key, **params) != before
