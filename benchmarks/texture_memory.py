"""Peak memory of a build with 4096^2 tiles for all four maps, per stage, against the number of expressions.

    python benchmarks/texture_memory.py [--resolution 4096] [--expressions 1,3] [--json OUT.json]
                                        [--previous EARLIER.json]

Writes a neutral head (our template) with smooth ``--resolution``^2 albedo / specular / roughness / normal
tiles 1001-1002, then for each expression count N runs one build in a fresh process (the bundled model, the
first N FACS units + neutral, 2 sampling steps: steps do not change memory) through every ``expdiff_core
.build`` stage, the four texture transfers at once on four threads as the flow's mapped tasks run them,
and samples the process's resident memory every 20 ms: peak GB per stage. A build whose memory does not grow
with the number of expressions has the same peak for every N. Prints the peaks, the growth per expression
(GB) and the peak a 56-unit build reaches at that growth: measured for the counts run, extrapolated linearly
to 56 units (a full 56-unit 4K build writes 2 x 456 4K EXR tiles: ~1 hour on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
UNITS_56 = 56


class PeakMemory:
    """Resident-set high-water mark per named stage, sampled on a thread (``with peaks.stage(name): ...``)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._process, self._interval = psutil.Process(), interval
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._process.memory_info().rss / 1e9
            if self._current is not None:
                self.peaks[self._current] = max(self.peaks.get(self._current, 0.0), rss)
            time.sleep(self._interval)

    def stage(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def run():
            self._current, start = name, time.perf_counter()
            self.peaks[name] = self._process.memory_info().rss / 1e9
            try:
                yield
            finally:
                self.peaks[name] = max(self.peaks[name], self._process.memory_info().rss / 1e9)
                self.seconds[name] = round(time.perf_counter() - start, 2)
                self._current = None
        return run()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def write_head(folder: Path, resolution: int) -> tuple[str, dict[str, str]]:
    """Our template head and smooth tiles 1001-1002 of every kind at ``resolution``^2 (float16 EXR)."""
    from expdiff_core.io.mesh import write_obj
    from expdiff_core.io.textures import write_texture_set
    from expdiff_core.synth.template import template_mesh

    kinds = ("albedo", "specular", "roughness", "normal")
    textures = {k: str(folder / "tex" / f"{k}.<UDIM>.exr") for k in kinds}
    if (folder / "head.obj").is_file() and all((folder / "tex" / f"{k}.1002.exr").is_file() for k in kinds):
        return str(folder / "head.obj"), textures
    folder.mkdir(parents=True, exist_ok=True)
    write_obj(template_mesh(), folder / "head.obj")
    y, x = np.ogrid[0:resolution, 0:resolution]
    x = (x / resolution).astype(np.float32)
    y = (y / resolution).astype(np.float32)
    ripple = (0.02 * np.sin(40 * x) * np.cos(40 * y)).astype(np.float32)
    ones = np.ones((resolution, resolution), np.float32)
    maps = {"albedo": np.stack([0.6 + 0.2 * x + ripple, 0.4 + 0.1 * y + ripple, 0.35 * ones + ripple]),
            "specular": (0.3 + 0.1 * x + ripple)[None], "roughness": (0.5 + 0.2 * y + ripple)[None],
            "normal": np.stack([0.5 + ripple, 0.5 - ripple, 0.98 * ones])}
    for kind, image in maps.items():
        write_texture_set({1001: image, 1002: image[:, ::-1].copy()}, folder / "tex", kind)
        del image
    return str(folder / "head.obj"), textures


def one_build(n: int, head: Path, model: Path, work: Path) -> dict:
    """Every stage of one build of ``n`` FACS units (+ neutral) in this process: {stage: peak GB}, seconds."""
    from expdiff_core import build, facs

    mesh, textures = write_head(head, 0)
    expressions = list(facs.UNIT_NAMES)[:n]
    peaks = PeakMemory()
    try:
        with peaks.stage("ingest"):
            ingested = build.ingest(mesh, textures, model)
        with peaks.stage("encode"):
            encoded = build.encode_neutral(ingested, model, work, device="cpu")
        with peaks.stage("diffuse"):
            diffused = build.diffuse(encoded, model, expressions, work, steps=2, device="cpu")
        with peaks.stage("decode"):
            decoded = build.decode(diffused, model, work, device="cpu")
        with peaks.stage("recover"):
            recovered = build.recover(decoded, ingested, model, work)
        with peaks.stage("transfer textures"):
            kinds = [k for k in decoded["kinds"] if k != "position"]
            with ThreadPoolExecutor(len(kinds)) as pool:  # as the flow's mapped transfer tasks run
                textured = list(pool.map(lambda k: build.transfer_textures(decoded, ingested, k, work), kinds))
        with peaks.stage("export USD"):
            prov = dict(model_name="expdiff", model_version="0", seed=0, scheduler="ddim", steps=2)
            exported = build.export_usd(ingested, recovered, textured, "mem_head", work / "out", prov)
        with peaks.stage("contact sheet"):
            build.contact_sheet(ingested, recovered, textured, work / "sheet.png")
    finally:
        peaks.close()
    return {"expressions": n, "peaks_gb": {k: round(v, 3) for k, v in peaks.peaks.items()},
            "peak_gb": round(max(peaks.peaks.values()), 3), "seconds": peaks.seconds,
            "version": exported["version_dir"]}


def measure(resolution: int, counts: list[int], model: Path, root: Path | None = None,
            previous: list[dict] | None = None) -> dict:
    """Run ``one_build`` for each count in its own process; peaks, growth per expression, 56-unit figure.

    previous: runs of an earlier measurement at the same resolution, fitted together with these. The growth
    is the slope between the two largest counts measured (a growth that levels off shows as ~0 there)."""
    root = Path(root or tempfile.mkdtemp(prefix="expdiff-texmem-"))
    write_head(root / "head", resolution)
    runs = list(previous or [])
    # One process per count (each its own resident-memory figure), all at once: wall time is the slowest.
    procs = []
    for n in counts:
        code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'benchmarks')!r}); "
                "from pathlib import Path; from texture_memory import one_build; "
                f"print('RESULT ' + json.dumps(one_build({n}, Path({str(root / 'head')!r}), Path({str(model)!r}), "
                f"Path({str(root / f'work-{n}')!r}))))")
        procs.append((n, subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)))
    for n, proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"build of {n} expression(s) failed:\n{stderr[-3000:]}")
        line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
        runs.append(json.loads(line[len("RESULT "):]))
        print(f"{n:3d} expression(s): peak {runs[-1]['peak_gb']:.2f} GB  "
              + "  ".join(f"{k} {v:.2f}" for k, v in runs[-1]["peaks_gb"].items()), flush=True)
    runs.sort(key=lambda r: r["expressions"])
    growth = 0.0
    if len(runs) >= 2:
        a, b = runs[-2], runs[-1]
        growth = (b["peak_gb"] - a["peak_gb"]) / (b["expressions"] - a["expressions"])
    last = runs[-1]
    at_56 = last["peak_gb"] + max(growth, 0.0) * (UNITS_56 - last["expressions"])
    return {"resolution": resolution, "runs": runs, "growth_gb_per_expression": round(growth, 4),
            "peak_gb_56_units": round(at_56, 3),
            "method": "measured" if last["expressions"] >= UNITS_56 else
                      f"extrapolated linearly from the runs of {[r['expressions'] for r in runs]} expressions "
                      "(slope of the two largest)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=4096)
    parser.add_argument("--expressions", default="1,3", help="comma-separated FACS unit counts")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "expdiff")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--previous", type=Path, default=None, help="an earlier result JSON to fit together with")
    args = parser.parse_args(argv)
    previous = None
    if args.previous:
        earlier = json.loads(args.previous.read_text())
        if earlier["resolution"] != args.resolution:
            parser.error(f"{args.previous}: measured at {earlier['resolution']}^2, not {args.resolution}^2")
        previous = earlier["runs"]
    result = measure(args.resolution, [int(c) for c in args.expressions.split(",")], args.model.resolve(),
                     previous=previous)
    print(f"growth per expression {result['growth_gb_per_expression']:+.3f} GB; 56-unit build at "
          f"{args.resolution}^2: {result['peak_gb_56_units']:.2f} GB peak ({result['method']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
