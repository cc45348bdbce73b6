"""Failures of the machine (full disk, read-only, unreadable layers), retries, caches and leftovers."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import run_cli


# ------------------------------------------------------------------ usd validate on unreadable layers
def _copy_of_guard(guarded) -> Path:
    target = guarded.root / "copy" / "hero" / "v001"
    shutil.copytree(guarded.out / "hero" / "v001", target)
    return target


def test_usd_validate_reports_a_truncated_geo_layer_as_one_error_line(guarded, capsys):
    version = _copy_of_guard(guarded)
    geo = version / "geo.usdc"
    geo.write_bytes(geo.read_bytes()[: geo.stat().st_size // 2])
    code, out, err = run_cli(["usd", "validate", str(version)], capsys)
    assert code == 1 and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR   [expdiff:LayerReadable] {geo}: " + errors[0].split(f"{geo}: ", 1)[1]]
    assert "truncated" in errors[0]


def test_usd_validate_reports_a_truncated_entry_layer(guarded, capsys):
    version = _copy_of_guard(guarded)
    entry = version / "hero.usda"
    entry.write_text(entry.read_text()[:200])
    code, out, err = run_cli(["usd", "validate", str(entry)], capsys)
    assert code == 1 and "Traceback" not in out + err
    assert [line for line in out.splitlines() if line.startswith("ERROR")][0].startswith(
        f"ERROR   [expdiff:LayerReadable] {entry}:")


def test_usd_validate_of_a_missing_path_exits_2_with_one_line(guarded, capsys):
    code, out, err = run_cli(["usd", "validate", str(guarded.root / "nothing")], capsys)
    assert code == 2 and err.strip() == f"expdiff usd: error: {guarded.root / 'nothing'}: no such file or folder"


# ------------------------------------------------------------------ full disk, read-only: one line, exit 3
def test_an_exr_write_on_a_full_disk_says_no_space(full_tmpfs):
    from expdiff_core.errors import ExpDiffEnvironmentError
    from expdiff_core.io.images import write_image

    target = full_tmpfs / "maps" / "albedo.1001.exr"
    target.parent.mkdir(exist_ok=True)
    with pytest.raises(ExpDiffEnvironmentError, match="albedo.1001.exr: no space left on device"):
        write_image(target, np.random.default_rng(0).random((256, 256, 3), dtype=np.float32))
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_usd_publish_on_a_full_disk_says_no_space_and_leaves_nothing(tmp_path, full_tmpfs):
    from expdiff_core.errors import ExpDiffEnvironmentError

    from ..helpers.assets import publish_guard_version

    with pytest.raises(ExpDiffEnvironmentError, match="no space left on device"):
        publish_guard_version(full_tmpfs / "builds")
    assert list((full_tmpfs / "builds" / "hero").iterdir()) == []  # no version, no .partial


def test_a_usd_layer_write_on_a_full_disk_is_one_environment_error(full_tmpfs, monkeypatch):
    """USD's own writer failing (its 40-odd errors) comes out as one line naming the version and the cause."""
    from expdiff_core.errors import ExpDiffEnvironmentError
    from expdiff_core.usd import writer

    from ..helpers.assets import publish_guard_version

    monkeypatch.setattr(writer, "_write_textures", lambda folder, maps, options: {
        name: {} for name in ("neutral", "jawOpen")})  # straight to the USD layers
    with pytest.raises(ExpDiffEnvironmentError) as caught:
        publish_guard_version(full_tmpfs / "builds")
    assert str(caught.value).startswith(f"{full_tmpfs / 'builds' / 'hero' / 'v001'}: cannot write the USD asset: "
                                        "no space left on device")
    assert "\n" not in str(caught.value)
    assert list((full_tmpfs / "builds" / "hero").iterdir()) == []


def test_a_read_only_output_at_publish_time_is_one_environment_error(read_only_folder):
    from expdiff_core.errors import ExpDiffEnvironmentError

    from ..helpers.assets import publish_guard_version

    with pytest.raises(ExpDiffEnvironmentError, match="read-only file system|permission denied"):
        publish_guard_version(read_only_folder / "builds")


@pytest.mark.parametrize("code,cause", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                                        (errno.EACCES, "permission denied"),
                                        (errno.ENOTDIR, "a part of the path is a file, not a folder")])
def test_the_cli_reports_an_unhealable_os_error_as_one_line_exit_3(capsys, tmp_path, code, cause):
    import argparse

    from expdiff_core.cli import report_error

    exc = OSError(code, os.strerror(code), str(tmp_path / "out" / "geo.usdc"))
    status = report_error(argparse.Namespace(command="build", debug=False), exc)
    err = capsys.readouterr().err.strip()
    assert status == 3
    assert err.startswith(f"expdiff build: error: {tmp_path / 'out' / 'geo.usdc'}: {cause}") and "\n" not in err


# ------------------------------------------------------------------ retries
class _FailedState:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self, raise_on_failure: bool = True):
        return self.exc


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EROFS, "Read-only"),
                                 NotADirectoryError(errno.ENOTDIR, "Not a directory"),
                                 PermissionError(errno.EACCES, "Permission denied")],
                         ids=["ENOSPC", "EROFS", "ENOTDIR", "EACCES"])
def test_errors_that_cannot_heal_are_not_retried(exc):
    from tasks.common import retry_on_transient_io

    assert retry_on_transient_io(None, None, _FailedState(exc)) is False


def test_environment_and_input_errors_are_not_retried():
    from expdiff_core.errors import ExpDiffEnvironmentError, ExpDiffInputError
    from tasks.common import retry_on_transient_io

    assert not retry_on_transient_io(None, None, _FailedState(ExpDiffEnvironmentError("/x", "no space left")))
    assert not retry_on_transient_io(None, None, _FailedState(ExpDiffInputError("/x", "bad")))


@pytest.mark.parametrize("exc", [ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError("timed out"),
                                 OSError(errno.EIO, "I/O error")], ids=["ECONNRESET", "timeout", "EIO"])
def test_transient_os_errors_are_still_retried(exc):
    from tasks.common import retry_on_transient_io

    assert retry_on_transient_io(None, None, _FailedState(exc)) is True


# ------------------------------------------------------------------ caches that heal
@pytest.fixture
def result_store(tmp_path):
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore
    from prefect.serializers import JSONSerializer

    return ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path / "results")), serializer=JSONSerializer())


def test_a_cache_record_naming_a_deleted_work_file_becomes_a_miss(result_store, tmp_path):
    from tasks.common import drop_stale_record

    gone = tmp_path / "work" / "neutral_latents.safetensors"
    result_store.write(obj={"latents": str(gone), "shape": [2, 4, 4, 4]}, key="encode-abc")
    assert result_store.exists("encode-abc")
    assert drop_stale_record(result_store, "encode-abc") is True
    assert not result_store.exists("encode-abc")


def test_a_cache_record_whose_files_exist_is_kept(result_store, tmp_path):
    from tasks.common import drop_stale_record

    kept = tmp_path / "latents.safetensors"
    kept.write_bytes(b"x")
    result_store.write(obj={"latents": str(kept)}, key="encode-def")
    assert drop_stale_record(result_store, "encode-def") is False
    assert result_store.exists("encode-def")


def test_a_cache_key_of_a_deleted_input_file_is_computed_not_raised(tmp_path):
    from tasks.common import content_cache_key

    key_fn = content_cache_key("diffuse", files=["encoded.latents"], values=["seed"])
    key = key_fn(None, {"encoded": {"latents": str(tmp_path / "gone.safetensors")}, "seed": 0})
    (tmp_path / "gone.safetensors").write_bytes(b"now here")
    assert key.startswith("diffuse-") and key != key_fn(None, {"encoded": {"latents": str(tmp_path / "gone.safetensors")},
                                                               "seed": 0})


def test_cached_stage_folders_are_named_by_their_inputs(tmp_path, monkeypatch):
    from expdiff_core.config import load_settings
    from tasks.common import cached_stage_dir

    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(tmp_path / "state"))
    settings = load_settings()
    a = cached_stage_dir(settings, "encode", {"m.obj": "1"}, "model/1")
    assert a == cached_stage_dir(settings, "encode", {"m.obj": "1"}, "model/1")
    assert a != cached_stage_dir(settings, "encode", {"m.obj": "2"}, "model/1")
    assert Path(a).parent == settings.cache_path / "stages" and "/builds/" not in a


# ------------------------------------------------------------------ leftovers
def _dead_builds_partial(out: Path, name: str = ".v002.dead1234.partial", age_s: float = 3600) -> Path:
    folder = out / "hero" / name
    (folder / "textures").mkdir(parents=True)
    (folder / "geo.usdc").write_bytes(b"half a layer")
    old = time.time() - age_s
    for p in (folder / "textures", folder):
        os.utime(p, (old, old))
    return folder


def test_the_sweep_removes_partial_version_and_work_folders_of_dead_builds(tmp_path):
    from expdiff_core.housekeeping import register_build, release_build, sweep_stale, work_folder

    out, state = tmp_path / "out", tmp_path / "state"
    partial = _dead_builds_partial(out)
    dead_work = work_folder(state, "hero", "run-dead")
    dead_work.mkdir(parents=True)
    old = time.time() - 3600
    os.utime(dead_work, (old, old))
    register_build(state, "run-now", work_folder(state, "hero", "run-now"))
    try:
        removed = sweep_stale(out, state)
    finally:
        release_build(state, "run-now")
    assert removed == {"partial": [str(partial)], "work": [str(dead_work)], "dead_runs": []}
    assert not partial.exists() and not dead_work.exists()


def test_the_sweep_keeps_what_a_running_build_is_writing(tmp_path):
    """A build in another process (holding its record's lock) started an hour ago and is still writing."""
    from expdiff_core.housekeeping import running_builds, sweep_stale, work_folder

    out, state = tmp_path / "out", tmp_path / "state"
    started = time.time() - 7200
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from expdiff_core.housekeeping import register_build, work_folder
        register_build({str(state)!r}, "run-other", work_folder({str(state)!r}, "hero", "run-other"), started={started})
        print("ready", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        theirs = _dead_builds_partial(out, ".v003.other.partial", age_s=3600)  # written after it started
        their_work = work_folder(state, "hero", "run-other")
        their_work.mkdir(parents=True)
        os.utime(their_work, (started, started))
        assert [b.run_id for b in running_builds(state)] == ["run-other"]
        assert sweep_stale(out, state) == {"partial": [], "work": [], "dead_runs": []}
        assert theirs.exists() and their_work.exists()
    finally:
        holder.kill()
        holder.wait()
    # The lock went with the process: the next sweep drops its record, names the run, and clears its folders.
    assert sweep_stale(out, state) == {"partial": [str(theirs)], "work": [str(their_work)], "dead_runs": ["run-other"]}
    assert running_builds(state) == []


def test_a_run_work_folder_is_removed_at_the_end_unless_kept(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from expdiff_core.housekeeping import register_build, running_builds, work_folder
    from tasks.common import end_build_run

    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(tmp_path / "state"))
    state = tmp_path / "state"
    for run_id, keep in (("run-a", False), ("run-b", True)):
        work = work_folder(state, "hero", run_id)
        (work / "decoded").mkdir(parents=True)
        register_build(state, run_id, work)
        end_build_run(None, SimpleNamespace(id=run_id, parameters={"character": "hero", "keep_work": keep}), None)
    assert not work_folder(state, "hero", "run-a").exists()
    assert work_folder(state, "hero", "run-b").exists()
    assert running_builds(state) == []


def test_a_killed_parent_takes_its_server_child_with_it(tmp_path):
    """The parent-watching child stops what a SIGKILLed build had started (here a stand-in server)."""
    from expdiff_core.housekeeping import _alive, _proc_table

    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from expdiff_core.housekeeping import start_watchdog
        server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        start_watchdog()
        print(server.pid, flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    server = int(parent.stdout.readline())
    started = _proc_table()[server][1]
    time.sleep(1.5)  # the watchdog has seen the server
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while _alive(server, started) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(server, started)
    if alive:
        os.kill(server, signal.SIGKILL)
    assert not alive, "the server outlived its killed build"
