"""Preview renderer throughput: ms per frame at 256² and 512² on the ICT-FaceKit head (or any OBJ).

    python benchmarks/render_preview.py [--mesh PATH.obj] [--repeats 5] [--json OUT.json]

Prints one line per (size, supersample) with the median wall time and the process CPU time per frame, and
optionally writes the same as JSON. Default mesh: ../shared/data/ict-facekit/generic_neutral_mesh.obj.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from expdiff_core.io.mesh import read_obj
from expdiff_core.render.preview import render_preview

ICT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ict-facekit"
DEFAULT_MESH = ICT_DIR / "generic_neutral_mesh.obj"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time render_preview (ms/frame) at 256 and 512 pixels square.")
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH,
                        help="OBJ mesh to render (default: ICT-FaceKit head)")
    parser.add_argument("--repeats", type=int, default=5, help="timed frames per setting (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sizes in pixels")
    parser.add_argument("--supersample", type=int, nargs="+", default=[2, 1],
                        help="supersampling factors to time (2 is the renderer's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not args.mesh.is_file():
        print(f"mesh not found: {args.mesh} (pass --mesh PATH.obj)", file=sys.stderr)
        return 2
    mesh = read_obj(args.mesh)
    tris = len(mesh.triangulated().faces)
    cpu = platform.processor() or platform.machine()
    print(f"mesh {args.mesh.name}: {mesh.n_vertices} vertices, {tris} triangles; {cpu}, {os.cpu_count()} CPUs")
    rng = np.random.default_rng(0)
    results = []
    for size in args.sizes:
        for ss in args.supersample:
            render_preview(mesh, width=size, height=size, supersample=ss)  # warm-up: triangulation cache
            wall, cpu = [], []
            for _ in range(args.repeats):
                posed = mesh.vertices + rng.normal(0, 0.01, mesh.vertices.shape).astype(np.float32)
                w0, c0 = time.perf_counter(), time.process_time()
                render_preview(mesh, vertices=posed, width=size, height=size, supersample=ss)
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
            row = {"size": size, "supersample": ss, "ms_per_frame": round(1000 * statistics.median(wall), 1),
                   "cpu_ms_per_frame": round(1000 * statistics.median(cpu), 1), "repeats": args.repeats}
            results.append(row)
            print(f"{size}x{size} supersample {ss}: {row['ms_per_frame']:7.1f} ms/frame wall, "
                  f"{row['cpu_ms_per_frame']:7.1f} ms CPU")
    if args.json:
        args.json.write_text(json.dumps({"mesh": str(args.mesh), "vertices": mesh.n_vertices, "triangles": tris,
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
