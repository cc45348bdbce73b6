"""Determinism of a build: the same seed twice, and the spread of vertices over several seeds.

    python benchmarks/seed_spread.py --model models/expdiff --dataset HELDOUT [--seeds 0 1 2 3]

Runs every unit of one held-out identity per seed and prints: the largest difference between two runs with
the same seed (0 for a deterministic build), and over the seeds the per-vertex standard deviation (mean and
max over vertices and units, mm).
"""

from __future__ import annotations

import argparse

import numpy as np

from expdiff_core.facs import UNIT_NAMES

from _subject import load_subject, subject_arguments  # benchmarks/_subject.py (scripts run from benchmarks/)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subject_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    loaded = load_subject(args)
    pipe, subject, mesh, maps = loaded.pipe, loaded.name, loaded.mesh, loaded.maps
    units = list(UNIT_NAMES)
    to_mm = loaded.mm

    def run(seed: int) -> np.ndarray:
        out = pipe(mesh, maps, units, seed=seed, steps=args.steps, progress=False)
        return np.stack([out.vertices[u] for u in units]).astype(np.float64)

    runs = [run(s) for s in args.seeds]
    again = run(args.seeds[0])
    spread = np.linalg.norm(np.stack(runs).std(axis=0), axis=-1) * to_mm  # (units, V)
    print(f"{args.model} on {args.dataset}/{subject}, {len(units)} units, seeds {args.seeds}")
    print(f"same seed twice: largest vertex difference {np.abs(again - runs[0]).max() * to_mm:.2e} mm")
    print(f"over seeds: vertex std mean {spread.mean():.4f} mm, max {spread.max():.4f} mm")


if __name__ == "__main__":
    main()
