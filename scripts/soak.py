#!/usr/bin/env python
"""Soak test of ``expdiff build``: small builds back to back with faults injected at random stages.

Each build runs the real command line (``python -m expdiff_core.cli build``) on a tiny untrained model and a
64-texel neutral asset made by the test helpers, so a build takes seconds once Prefect is up. Faults:

- ``sigkill``      SIGKILL of the build process at a random stage (after ingest ... during USD export); these
                   builds use Prefect's ephemeral API, so a killed build would orphan its temporary server;
- ``delete-work``  the run's work folder deleted while the build runs (after decode): the build must fail with
                   one clear line, no retries, no partial version;
- ``delete-cache`` every cached stage output deleted before the build: the cache must heal (a miss, a rebuild);
- ``full-disk``    (root only) the output root on a small tmpfs that is filled during the build: one line,
                   exit 3, no partial version.

Other builds use one Prefect server started by the soak. After the last build (always a clean one) it reports:
builds completed, faults survived (the build ended as expected and the next clean build published),
partial folders left, orphaned servers, versions corrupted (a published version whose files changed or that
fails ``validate_asset``) and work folders left.

    OMP_NUM_THREADS=1 python scripts/soak.py --builds 20 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ["ingest", "encode", "diffuse", "decode", "recover-meshes", "transfer-textures", "export-usd"]
SERVER_APP = "prefect.server.api.server:create_app"


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_processes(home: Path) -> dict[int, int]:
    """pid -> parent pid of every Prefect API server process (uvicorn running Prefect's app, or ``prefect server
    start``) whose PREFECT_HOME is under ``home`` (other users' servers on the machine are not ours to count)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if SERVER_APP in cmd or "prefect server start" in cmd:
            try:
                environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(e.startswith(b"PREFECT_HOME=" + str(home).encode()) for e in environ):
                found[int(name)] = int(stat[stat.rfind(")") + 2:].split()[1])
    return found


def _children_of(pid: int, table: dict[int, int]) -> set[int]:
    out, todo = set(), [p for p, pp in table.items() if pp == pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += [c for c, pp in table.items() if pp == p]
    return out


def _mount_tmpfs(target: Path, size: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True).returncode == 0


def _fill(folder: Path) -> None:
    try:
        with open(folder / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * (1 << 16))
    except OSError:
        pass


class Build:
    """One ``expdiff build`` process; its merged output is followed line by line."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.lines: list[str] = []
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "expdiff_core.cli", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.log.write(line)
            self.log.flush()

    def finished(self, stage: str) -> bool:
        return any(f"Task run '{stage}-" in line and "Finished in state" in line for line in self.lines)

    def wait_for(self, stage: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.finished(stage):
                return True
            time.sleep(0.05)
        return False

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        self.log.close()
        return code

    def error_lines(self) -> list[str]:
        return [line.strip() for line in self.lines if line.startswith("expdiff build: error:")]


def schedule(n: int, rng: random.Random, full_disk: bool) -> list[str]:
    """Fault of each of n builds: up to 4 SIGKILLs, 2 deleted work folders, 1 deleted cache and (as root) 2 full
    disks, shuffled between clean builds; the first and the last build are clean."""
    kinds = ["sigkill"] * 4 + ["delete-work"] * 2 + ["delete-cache"] + (["full-disk"] * 2 if full_disk else [])
    if n < 2:
        return ["none"] * n
    faults = kinds[: n - 2]
    middle = faults + ["none"] * (n - 2 - len(faults))
    rng.shuffle(middle)
    return ["none", *middle, "none"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="/tmp/expdiff-soak", help="working folder (emptied first)")
    ap.add_argument("--timeout", type=float, default=400, help="seconds one build may take")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    root = Path(opts.root)
    if root.exists():
        subprocess.run(["umount", "-l", str(root / "tmpfs")], capture_output=True)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.monotonic()

    from tests.helpers.assets import write_neutral_asset
    from tests.helpers.tiny_models import tiny_pipeline_folder

    mesh, textures = write_neutral_asset(root / "asset", resolution=64)
    model = tiny_pipeline_folder(root / "tiny")
    state, out = root / "state", root / "builds"
    (root / "prefect-home").mkdir()
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EXPDIFF_STATE_DIR": str(state),
                "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    base_env.pop("PREFECT_API_URL", None)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=base_env, stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{api}/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        print("the soak's Prefect server did not start", file=sys.stderr)
        return 1
    print(f"prepared in {time.monotonic() - t0:.0f} s; Prefect server {api}", flush=True)

    is_root = os.geteuid() == 0
    plan = schedule(opts.builds, rng, is_root)
    published: dict[str, dict[str, str]] = {}
    rows = []
    (root / "prefect-home-ephemeral").mkdir()
    for i, fault in enumerate(plan):
        env = dict(base_env)
        if fault == "sigkill":  # Prefect's ephemeral API: the server a killed build must not leave behind
            env["PREFECT_HOME"] = str(root / "prefect-home-ephemeral")
        else:
            env["PREFECT_API_URL"] = api
        out_root = out
        if fault == "full-disk":
            if not _mount_tmpfs(root / "tmpfs", "64m"):
                fault, out_root = "none", out
            else:
                out_root = root / "tmpfs" / "builds"
        if fault == "delete-cache":
            shutil.rmtree(state / "cache" / "stages", ignore_errors=True)
        seed = i % 3
        args = ["build", str(mesh), "--albedo", textures["albedo"], "--normal", textures["normal"],
                "--model", str(model), "--expressions", "jawOpen", "mouthSmile_L", "--steps", "2", "--seed", str(seed),
                "--device", "cpu", "--character", "soak", "--output-root", str(out_root)]
        start = time.monotonic()
        servers_before = set(_server_processes(root))
        build = Build(args, env, root / f"build-{i:02d}.log")
        detail = ""
        if fault == "sigkill":
            stage = rng.choice(STAGES)
            after = STAGES[STAGES.index(stage) - 1] if stage != "ingest" else "resolve-model"
            if build.wait_for(after, opts.timeout):
                time.sleep(rng.uniform(0.0, 1.0))
                build.proc.send_signal(signal.SIGKILL)
                detail = f"killed during {stage}"
            else:
                detail = "ended before the kill"
        elif fault == "delete-work":
            if build.wait_for("decode", opts.timeout):
                for run in (state / "cache" / "builds" / "soak").glob("*"):
                    shutil.rmtree(run, ignore_errors=True)
                detail = "work folder deleted after decode"
        elif fault == "full-disk":
            if build.wait_for("transfer-textures", opts.timeout):
                _fill(root / "tmpfs")
                detail = "output disk filled after the texture transfer"
        code = build.wait(opts.timeout)
        seconds = time.monotonic() - start
        time.sleep(3 if fault == "sigkill" else 0.5)  # the watchdog's grace
        ours = {server.pid} | _children_of(server.pid, _server_processes(root))
        orphans = [p for p in _server_processes(root) if p not in servers_before and p not in ours]
        for p in orphans:  # do not let one orphan spoil the next builds' figures
            os.kill(p, signal.SIGKILL)
        version = None
        for line in build.lines:
            if line.startswith("published "):
                version = Path(line.split(" ", 1)[1].strip()).parent
        if code == 0 and version is not None:
            published[str(version)] = _digest(version)
        errors = build.error_lines()
        retried = sum("Retrying" in line or "AwaitingRetry" in line for line in build.lines)
        expected = {"none": code == 0, "delete-cache": code == 0, "sigkill": code == -signal.SIGKILL or code == 0,
                    "delete-work": code in (1, 2) and len(errors) == 1 and retried == 0,
                    "full-disk": code == 3 and len(errors) == 1 and "no space left" in errors[0] and retried == 0}[fault]
        partial_now = sorted(str(p) for p in out_root.glob("*/.v*.partial"))
        if fault == "full-disk":
            subprocess.run(["umount", "-l", str(root / "tmpfs")], capture_output=True)
        rows.append({"build": i, "fault": fault, "detail": detail, "exit": code, "seconds": round(seconds, 1),
                     "ended_as_expected": expected, "error": errors[0] if errors else "", "orphans": len(orphans),
                     "retries": retried, "partials_after": len(partial_now)})
        print(json.dumps(rows[-1]), flush=True)

    # Survival: a fault is survived when its build ended as expected and the next clean build published.
    survived = 0
    for k, row in enumerate(rows):
        if row["fault"] == "none":
            continue
        nxt = next((r for r in rows[k + 1:] if r["fault"] == "none"), None)
        survived += bool(row["ended_as_expected"] and row["orphans"] == 0 and nxt and nxt["exit"] == 0)

    from expdiff_core.usd.validate import validate_asset

    corrupted = 0
    for version, digest in published.items():
        bad = _digest(Path(version)) != digest or any(i.is_error for i in validate_asset(version))
        corrupted += bad
    partials = sorted(str(p) for p in out.glob("*/.v*.partial"))
    work_left = sorted(str(p) for p in (state / "cache" / "builds").glob("*/*"))
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    report = {
        "builds": len(rows), "builds completed": sum(r["exit"] == 0 for r in rows),
        "faults injected": sum(r["fault"] != "none" for r in rows), "faults survived": survived,
        "partial folders left": len(partials), "orphaned servers": sum(r["orphans"] for r in rows),
        "versions published": len(published), "versions corrupted": corrupted, "work folders left": len(work_left),
        "retries of unhealable errors": sum(r["retries"] for r in rows if r["fault"] in ("delete-work", "full-disk")),
        "faults": {k: sum(r["fault"] == k for r in rows) for k in ("sigkill", "delete-work", "delete-cache", "full-disk")},
        "minutes": round((time.monotonic() - t0) / 60, 1),
    }
    print("soak:", json.dumps(report, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"report": report, "builds": rows}, indent=2) + "\n")
    ok = (report["partial folders left"] == 0 and report["orphaned servers"] == 0 and corrupted == 0
          and survived == report["faults injected"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
