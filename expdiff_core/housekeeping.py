"""What a build leaves behind, and how it is cleared: running-build records, stale folders, orphaned servers.

- ``register_build`` records a running build as ``<state>/running/<run_id>.lock``, held with an exclusive
  ``flock`` for as long as the build's process lives (the kernel drops the lock when the process dies,
  however it dies), with its start time and work folder.
- ``sweep_stale`` removes what dead builds left: hidden ``.v###.*.partial`` version folders under the output
  root and per-run work folders under ``<state>/cache/builds``, each only when it was last written before
  the oldest running build started (so no running build's folder is touched), and the records of dead builds
  (whose run ids it returns, so the orchestrator can mark those runs crashed).
- ``remove_work_folder`` removes one run's work folder at the end of the run.
- ``start_watchdog`` starts a small child process that watches its parent (the build) and, when the parent is
  gone (SIGKILL included), stops the processes the parent had started, e.g. Prefect's temporary API server.
  Linux only (``/proc``); elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RUNNING_FOLDER = "running"
WORK_FOLDER = Path("cache") / "builds"
PARTIAL_RE = re.compile(r"\.v\d{3,}\..+\.partial")
_HELD: dict[str, int] = {}  # run id -> fd holding its lock, in this process


@dataclass(frozen=True)
class RunningBuild:
    """A build whose record's lock is held: its run id, process, start time (epoch s) and work folder."""

    run_id: str
    pid: int
    started: float
    work_dir: str | None


def running_folder(state_path: str | os.PathLike) -> Path:
    return Path(state_path) / RUNNING_FOLDER


def register_build(state_path: str | os.PathLike, run_id: str, work_dir: str | os.PathLike | None = None,
                   started: float | None = None) -> Path:
    """Record this process's build ``run_id`` as running until ``release_build(run_id)`` or process exit."""
    folder = running_folder(state_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    record = {"run_id": run_id, "pid": os.getpid(), "started": time.time() if started is None else started,
              "work_dir": None if work_dir is None else str(work_dir)}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(record).encode())
    os.fsync(fd)
    _HELD[run_id] = fd
    return path


def release_build(state_path: str | os.PathLike, run_id: str) -> None:
    """Drop the running record of ``run_id`` (held by this process)."""
    fd = _HELD.pop(run_id, None)
    path = running_folder(state_path) / f"{run_id}.lock"
    if fd is not None:
        path.unlink(missing_ok=True)
        os.close(fd)


def running_builds(state_path: str | os.PathLike, dead: list[str] | None = None) -> list[RunningBuild]:
    """The builds recorded under ``state_path`` whose process still holds its lock; records of dead builds
    are removed on the way (their run ids appended to ``dead`` when given)."""
    folder = running_folder(state_path)
    found = []
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            if path.stem in _HELD:
                held = True
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = False
                except BlockingIOError:
                    held = True
            if not held:
                path.unlink(missing_ok=True)
                if dead is not None:
                    dead.append(path.stem)
                continue
            try:
                data = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                data = {}
            found.append(RunningBuild(path.stem, int(data.get("pid", 0)), float(data.get("started", time.time())),
                                      data.get("work_dir")))
        finally:
            os.close(fd)
    return found


def _last_written(path: Path) -> float:
    """Latest mtime of a folder and the folders directly inside it (files added deeper touch those)."""
    times = [path.stat().st_mtime]
    try:
        times += [p.stat().st_mtime for p in path.iterdir() if p.is_dir()]
    except OSError:
        pass
    return max(times)


def sweep_stale(output_root: str | os.PathLike, state_path: str | os.PathLike) -> dict[str, list[str]]:
    """Remove partial version folders and work folders left by dead builds; returns what was removed
    ({"partial": [...], "work": [...], "dead_runs": [run ids of dead builds whose records were dropped]}).

    A folder is stale when it was last written before the oldest running build started (now, when none
    runs) and it is not a running build's work folder.
    """
    dead: list[str] = []
    running = running_builds(state_path, dead)
    oldest = min((b.started for b in running), default=time.time())
    keep = {os.path.realpath(b.work_dir) for b in running if b.work_dir}
    removed: dict[str, list[str]] = {"partial": [], "work": [], "dead_runs": dead}
    out = Path(output_root)
    for character in _subfolders(out):
        for entry in _subfolders(character):
            if PARTIAL_RE.fullmatch(entry.name) and _last_written(entry) < oldest:
                shutil.rmtree(entry, ignore_errors=True)
                removed["partial"].append(str(entry))
    for character in _subfolders(Path(state_path) / WORK_FOLDER):
        for run in _subfolders(character):
            if os.path.realpath(run) not in keep and _last_written(run) < oldest:
                shutil.rmtree(run, ignore_errors=True)
                removed["work"].append(str(run))
        with contextlib.suppress(OSError):
            character.rmdir()  # only when empty
    return removed


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def work_folder(state_path: str | os.PathLike, character: str, run_id: str) -> Path:
    """The per-run work folder: ``<state>/cache/builds/<character>/<run_id>``."""
    return Path(state_path) / WORK_FOLDER / character / run_id


def remove_work_folder(work_dir: str | os.PathLike) -> bool:
    """Remove a run's work folder (and its character folder when that is left empty); True when removed."""
    work = Path(work_dir)
    if not work.is_dir():
        return False
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()
    return not work.exists()


# ------------------------------------------------------------------------------- parent-watching child
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(pid: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """{pid: start time} of every process below ``pid``."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in out:
            out[p] = table[p][1]
            todo += children.get(p, [])
    return out


def _alive(pid: int, started: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0] != "Z" and int(fields[19]) == started


def stop_processes(procs: dict[int, int], grace: float = 5.0) -> list[int]:
    """SIGTERM each (pid, start time) still alive, SIGKILL those left after ``grace`` s; returns pids hit."""
    hit = [p for p, t in procs.items() if _alive(p, t)]
    for p in hit:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p, procs[p]) for p in hit):
        time.sleep(0.1)
    for p in hit:
        if _alive(p, procs[p]):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
    return hit


def watch(parent: int, interval: float = 0.5) -> list[int]:
    """Follow ``parent``'s descendants until it is gone, then stop those still running; returns their pids."""
    table = _proc_table()
    if parent not in table:
        return []
    parent_start = table[parent][1]
    me = os.getpid()
    known: dict[int, int] = {}
    while _alive(parent, parent_start):
        now = descendants(parent)
        now.pop(me, None)
        known = {p: t for p, t in known.items() if _alive(p, t)}
        known.update(now)
        time.sleep(interval)
    return stop_processes(known)


def start_watchdog(parent: int | None = None) -> subprocess.Popen | None:
    """Start the parent-watching child for this process (None where /proc is missing). It outlives a
    SIGKILL of the parent just long enough to stop the parent's leftover children."""
    if not os.path.isdir("/proc"):
        return None
    parent = os.getpid() if parent is None else parent
    return subprocess.Popen([sys.executable, "-m", "expdiff_core.housekeeping", "watch", str(parent)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


if __name__ == "__main__":  # python -m expdiff_core.housekeeping watch PID
    if len(sys.argv) == 3 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m expdiff_core.housekeeping watch PID")
