"""Peak memory of the texture-transfer stage alone against the number of expressions (does it level off?).

    python benchmarks/transfer_memory.py [--resolution 2048] [--expressions 1,6,14]

For each count N, in a fresh process: random decoded maps (128^2, as the bundled model makes) for the neutral
and N expressions, the smooth user tiles of ``texture_memory.write_head`` at ``--resolution``^2, and the four
map kinds transferred at once on four threads (as the flow's mapped tasks run) through
``build.transfer_textures``; prints the peak resident GB. No model is loaded, so it runs minutes where a full
4096^2 build takes most of an hour, and shows whether the transfer stage's peak keeps growing with N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from texture_memory import PeakMemory, write_head  # noqa: E402

KINDS = {"albedo": 3, "specular": 1, "roughness": 1, "normal": 3}
UDIMS = (1001, 1002)


def transfer_peak(n: int, resolution: int, head: Path) -> dict:
    """Peak resident GB while transferring N expressions + neutral at ``resolution``^2 (this process)."""
    from expdiff_core import build
    from expdiff_core.io.images import write_image

    root = Path(tempfile.mkdtemp(prefix="expdiff-transfer-"))
    _, textures = write_head(head, resolution)
    labels = ["neutral"] + [f"e{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    for label in labels:
        for kind, channels in KINDS.items():
            for udim in UDIMS:
                write_image(root / "decoded" / label / f"{kind}.{udim}.exr",
                            rng.random((128, 128, channels), dtype=np.float32) * 0.2 + 0.4, pixel_type="float")
    decoded = {"decoded": str(root / "decoded"), "labels": labels, "kinds": list(KINDS), "udims": list(UDIMS)}
    ingested = {"textures": {k: {u: textures[k].replace("<UDIM>", str(u)) for u in UDIMS} for k in KINDS}}
    peaks = PeakMemory()
    try:
        with peaks.stage("transfer"), ThreadPoolExecutor(len(KINDS)) as pool:
            list(pool.map(lambda k: build.transfer_textures(decoded, ingested, k, root), KINDS))
    finally:
        peaks.close()
    return {"expressions": n, "peak_gb": round(peaks.peaks["transfer"], 3), "seconds": peaks.seconds["transfer"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=2048)
    parser.add_argument("--expressions", default="1,6,14")
    args = parser.parse_args(argv)
    head = Path(tempfile.mkdtemp(prefix="expdiff-transfer-head-"))
    for n in (int(c) for c in args.expressions.split(",")):
        code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); from pathlib import Path; "
                f"from transfer_memory import transfer_peak; "
                f"print('RESULT ' + json.dumps(transfer_peak({n}, {args.resolution}, Path({str(head)!r}))))")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        run = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
        print(f"{args.resolution}^2, {n:3d} expression(s): transfer peak {run['peak_gb']:.2f} GB ({run['seconds']:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
