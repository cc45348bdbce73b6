"""The bad-input corpus: every case runs beside a published version it must not touch.

``guarded`` gives each test a sandbox: inputs made by our own generators (``helpers.assets``), an output root
holding a published ``hero/v001``, and the state folder. After the test it checks that the published version
is byte for byte what it was and that nothing appeared outside the output root and the state folder, and
counts the case; the session ends with the line "bad inputs tried: N, outputs corrupted: M".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..helpers.assets import (preflight_model_folder, publish_guard_version, tree_digest, write_albedo_tiles,
                              write_neutral_asset)

TALLY = {"tried": 0, "corrupted": 0}


@dataclass
class Sandbox:
    """Paths of one case: ``root`` (inputs: tests may add or change files here), ``mesh``/``textures`` (a good
    asset), ``model`` (a pipeline folder as pre-flight reads it), ``out`` (output root with hero/v001),
    ``state`` (state folder)."""

    root: Path
    mesh: Path
    textures: dict[str, str]
    model: Path
    out: Path
    state: Path

    def build_args(self, *extra: str, character: str | None = "hero", albedo: str | None = None) -> list[str]:
        """``expdiff build`` arguments of a good build, then ``extra``."""
        args = ["build", str(self.mesh), "--albedo", albedo or self.textures["albedo"], "--model", str(self.model),
                "--output-root", str(self.out), "--expressions", "jawOpen", "--device", "cpu"]
        return args + (["--character", character] if character else []) + list(extra)


@pytest.fixture(scope="session")
def _inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input-sources")
    mesh, textures = write_neutral_asset(root / "asset")
    model = preflight_model_folder(root)
    guard = root / "guard"
    publish_guard_version(guard)
    return {"mesh": mesh, "textures": textures, "model": model, "guard": guard, "root": root}


def _outside(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    return {k: v for k, v in tree_digest(root).items() if not any((root / k).is_relative_to(s) for s in skip)}


@pytest.fixture
def guarded(_inputs, tmp_path, monkeypatch):
    """A Sandbox: inputs under ``root/inputs`` (tests may change them), output root and state folder deep
    inside ``root`` (so ``../../..`` from the output root stays inside it); checks and counts the case."""
    root = tmp_path / "site"
    inputs = root / "inputs"
    work = root / "a" / "b" / "c"
    shutil.copytree(_inputs["root"] / "asset", inputs / "asset")
    shutil.copytree(_inputs["model"], inputs / "model")
    shutil.copytree(_inputs["guard"], work / "out")
    state = work / "state"
    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(state))
    monkeypatch.setenv("EXPDIFF_OUTPUT_ROOT", str(work / "out"))
    # A refused build never gets as far as starting Prefect (the watchdog is started just before it).
    import expdiff_core.housekeeping as housekeeping

    def started(*args, **kwargs):
        raise AssertionError("the build started: the bad input was not refused before Prefect")

    monkeypatch.setattr(housekeeping, "start_watchdog", started)
    box = Sandbox(inputs, inputs / "asset" / "head.obj",
                  {k: str(inputs / "asset" / "tex" / Path(v).name) for k, v in _inputs["textures"].items()},
                  inputs / "model", work / "out", state)
    published = tree_digest(box.out / "hero" / "v001")
    others = _outside(root, (inputs, box.out, state))
    yield box
    TALLY["tried"] += 1
    intact = tree_digest(box.out / "hero" / "v001") == published
    TALLY["corrupted"] += not intact
    assert intact, "the published version changed"
    assert _outside(root, (inputs, box.out, state)) == others, "files appeared outside the output root and state"
    stray = [p.name for p in box.out.glob("*/.*.partial")]
    assert not stray, f"partial folders left: {stray}"


@pytest.fixture
def albedo_of(guarded):
    """albedo_of(height, width) -> a ``<UDIM>`` pattern of albedo tiles of that size in the sandbox."""
    def make(height: int, width: int) -> str:
        return write_albedo_tiles(guarded.root / f"albedo-{height}x{width}", height, width)

    return make


def pytest_terminal_summary(terminalreporter):
    if TALLY["tried"]:
        terminalreporter.write_line(f"bad inputs tried: {TALLY['tried']}, outputs corrupted: {TALLY['corrupted']}")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``expdiff ARGS`` in this process: (exit status, stdout, stderr)."""
    from expdiff_core.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _mount_tmpfs(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


def _unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path, is_root):
    """A folder nobody may write: a read-only tmpfs as root, else a 0555 folder."""
    folder = tmp_path / "read-only"
    if is_root:
        if not _mount_tmpfs(folder, "ro,size=1m"):
            pytest.skip("cannot mount a read-only tmpfs here")
        yield folder
        _unmount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def full_tmpfs(tmp_path, is_root):
    """A 1 MiB tmpfs filled to the last block (root only; skipped otherwise)."""
    folder = tmp_path / "full"
    if not is_root or not _mount_tmpfs(folder, "size=1m"):
        pytest.skip("a full disk needs a small tmpfs, which needs root")
    try:
        with open(folder / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass
    yield folder
    _unmount(folder)
