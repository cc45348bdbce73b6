"""A night that fans out: a 4-character ``nightly-build`` on 1 vs 2 local process workers (one torch thread each).

    python benchmarks/night_fanout.py [--characters 4] [--expressions 12] [--workers 1,2]
                                      [--screenshot docs/img/nightly-fanout.png] [--json OUT.json]

Starts a Prefect server on loopback (SQLite, temp PREFECT_HOME), makes the ``gpu`` pool and the ``gpu`` tag
limit (``expdiff infra setup``), deploys ``build-character/on-demand`` from prefect.yaml, writes ``--characters``
held-out synthetic heads (the demo factory, distinct identity seeds) and a manifest using the bundled model,
then for each worker count: starts that many ``prefect worker start --pool gpu --limit 1`` processes
(one core each: one thread in torch, OpenImageIO and the task runner; ``ONE_CORE``), runs ``nightly_build(manifest, build_deployment="build-character/on-demand")`` from this
process against the server and times it to the end, checks every character's version is published and
passes ``validate_asset``, and stops the workers. Task caching is refreshed (PREFECT_TASKS_REFRESH_CACHE) so
the second night recomputes everything. Prints wall seconds per worker count and the speedup; with
``--screenshot`` the last night's flow-run page in the Prefect UI (headless Chromium) is saved there.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.flows.chromium import Chromium, chromium_binary  # noqa: E402
from tests.flows.services import PrefectStack  # noqa: E402

DEPLOYMENT = "build-character/on-demand"


def _run(argv, env, timeout: float) -> str:
    done = subprocess.run([str(a) for a in argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout


def write_night(root: Path, characters: int, expressions: int, model: Path) -> Path:
    """``characters`` synthetic heads (256^2 maps) + a manifest building ``expressions`` FACS units each."""
    from expdiff_core import facs
    from expdiff_core.demo import DEMO_SEED, write_demo_asset

    lines = ["[defaults]", f'model = "{model}"',
             "expressions = [" + ", ".join(f'"{u}"' for u in list(facs.UNIT_NAMES)[:expressions]) + "]", ""]
    for i in range(characters):
        asset = write_demo_asset(root / f"c{i}", seed=DEMO_SEED + 1 + i)
        textures = ", ".join(f'{k} = "{v}"' for k, v in asset["textures"].items())
        lines += ["[[characters]]", f'name = "c{i}"', f'mesh = "{asset["mesh"]}"', f"textures = {{ {textures} }}", ""]
    manifest = root / "nightly.toml"
    manifest.write_text("\n".join(lines))
    return manifest


# A worker is one core: one thread in torch (OMP_NUM_THREADS, above), in OpenImageIO / OpenEXR and in the flow's
# task runner (the four texture transfers run one after another). Otherwise one worker alone spreads its image
# writes and transfers over both cores, and the night measures that rather than the fan-out.
ONE_CORE = {"OPENIMAGEIO_OPTIONS": "threads=1,exr_threads=1", "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "1"}


def night(env: dict[str, str], manifest: Path, timeout: float) -> dict:
    """Run the nightly flow in a child process against the server; returns wall seconds and its outcome."""
    code = ("import json, sys; from flows.nightly_build import nightly_build; "
            f"s = nightly_build(manifest={str(manifest)!r}, build_deployment={DEPLOYMENT!r}, return_state=True); "
            "print('RESULT ' + json.dumps({'id': str(s.state_details.flow_run_id), 'state': s.type.value, "
            "'message': s.message or '', 'result': s.result(raise_on_failure=False) if s.is_completed() else None}))")
    start = time.perf_counter()
    out = _run([sys.executable, "-c", code], env, timeout)
    wall = time.perf_counter() - start
    found = json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1))
    return {"seconds": wall, **found}


def check_versions(result: dict | None, characters: int) -> list[str]:
    """Problems with the night's published versions (empty when all are there and valid)."""
    from expdiff_core.usd.validate import validate_asset

    if not result:
        return ["the night did not complete"]
    problems = []
    if len(result["versions"]) != characters:
        problems.append(f"{len(result['versions'])} versions for {characters} characters")
    for version, name in zip(result["versions"], result["built"]):
        root = Path(version) / f"{name}.usda"
        errors = [i for i in validate_asset(root) if i.severity == "error"] if root.is_file() else ["missing"]
        if errors:
            problems.append(f"{root}: {errors}")
    return problems


def screenshot(ui: str, api: str, run_id: str, path: Path) -> None:
    """The nightly flow run's page (graph of the mapped build tasks and their build-character subflows)."""
    binary = chromium_binary()
    if binary is None:
        print("chromium not installed: no screenshot (apt-get install -y chromium)")
        return
    name = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["name"]
    browser = Chromium(binary, width=1600, height=1000)
    try:
        browser.goto(f"{ui}/runs/flow-run/{run_id}")
        browser.wait_for_text(name, "Completed", "build-c0", timeout=120)
        time.sleep(3)  # let the run graph lay out
        path.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(path)
        print(f"screenshot  {path}")
    finally:
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", type=int, default=4)
    parser.add_argument("--expressions", type=int, default=12, help="FACS units per character (+ neutral)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "expdiff")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per night")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.workers.split(",")]

    root = Path(tempfile.mkdtemp(prefix="expdiff-night-"))
    figures: dict = {"characters": args.characters, "expressions": args.expressions, "nights": {}}
    # CPU benchmark: flow runs on EXPDIFF_DEVICE=cpu, one torch thread; every night recomputes (no cache hits).
    extra = {"PREFECT_TASKS_REFRESH_CACHE": "true", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with PrefectStack(root, REPO, deployments=[DEPLOYMENT], gpu_limit=max(counts), extra_env=extra) as stack:
        manifest = write_night(root / "assets", args.characters, args.expressions, args.model.resolve())
        last = None
        for n in counts:
            env_n = {**stack.env, "EXPDIFF_OUTPUT_ROOT": str(root / f"builds-{n}w")}
            workers = stack.start_workers([f"bench-worker-{n}-{i}" for i in range(n)], {**env_n, **ONE_CORE})
            done = night(env_n, manifest, args.timeout)
            problems = check_versions(done["result"], args.characters)
            figures["nights"][n] = {"seconds": round(done["seconds"], 2), "state": done["state"], "problems": problems}
            print(f"{n} worker(s)  {done['seconds']:7.1f} s  {done['state']}  "
                  f"{'all versions valid' if not problems else problems} {done['message']}", flush=True)
            for w in workers:
                w.stop()
            last = done
        if len(counts) >= 2:
            a, b = figures["nights"][counts[0]]["seconds"], figures["nights"][counts[-1]]["seconds"]
            figures["speedup"] = round(a / b, 3)
            print(f"speedup {counts[-1]} vs {counts[0]} worker(s): {a / b:.2f}x")
        if args.screenshot and last is not None:
            screenshot(stack.ui, stack.api, last["id"], args.screenshot)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = all(v["state"] == "COMPLETED" and not v["problems"] for v in figures["nights"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
