"""Determinism of a build: the same seed twice, and the spread of vertices over several seeds.

    python benchmarks/seed_spread.py --model models/expdiff --dataset HELDOUT [--seeds 0 1 2 3]

Runs every unit of one held-out identity per seed and prints: the largest difference between two runs with
the same seed (0 for a deterministic build), and over the seeds the per-vertex standard deviation (mean and
max over vertices and units, mm).
"""

from __future__ import annotations

import argparse

import numpy as np

from expdiff_core.facs import NEUTRAL, UNIT_NAMES
from expdiff_core.io.dataset import Dataset
from expdiff_core.pipelines.expdiff import ExpDiffPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline folder")
    parser.add_argument("--dataset", required=True, help="dataset with the identity (held out from training)")
    parser.add_argument("--subject", default=None, help="subject id (default: the dataset's first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = Dataset(args.dataset)
    subject = args.subject or data.subjects[0]
    pipe = ExpDiffPipeline.from_pretrained(args.model, device=args.device)
    mesh = data.template().with_vertices(data.load_vertices(subject, NEUTRAL), name=subject)
    maps = data.load_maps(subject, NEUTRAL, [k for k in pipe.config.kinds if k != "position"])
    units = list(UNIT_NAMES)
    to_mm = 10.0 if mesh.units == "cm" else 1.0

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
