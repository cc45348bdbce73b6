"""What a perfect *sampler* would score against the mean-predicting baselines, per map kind.

    python benchmarks/sampling_bound.py --dataset HELDOUT --train-dataset CORPUS [--others 4]

A generative model that draws an expression from the true distribution, instead of predicting its mean, pays
for what it cannot know twice: a draw's error is the truth's spread plus the draw's own, i.e. 2x the
conditional variance, where a mean predictor pays 1x. This script measures that bound with the truth itself,
no model involved, on every identity of ``--dataset``:

- ``exact draw, identity-blind``: another identity's true change, transferred onto the held-out neutral like
  the 3DMM's mean change is: a draw from p(change | unit).
- ``exact draw, identity-aware``: the ridge prediction plus another identity's ridge residual (its true change
  minus the ridge's prediction for it): a draw from p(change | unit, what the ridge knows).

beside ``3DMM`` (mean change) and ``ridge``, as in ``expdiff eval``. The other identities are the first
``--others`` of the corpus's val split: the ridge is fitted on its train split, where in-sample residuals
would understate the spread. Where the identity-aware draw loses to 3DMM on a kind, no
sampler that draws from the truth's distribution can beat the 3DMM's change error on that kind.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from expdiff_core.evaluation.baselines import (LINEAR_3DMM, RIDGE, MeanFace, Prediction, RidgeBaseline,
                                               linear_3dmm, mean_training_face)
from expdiff_core.evaluation.evaluate import score_predictions
from expdiff_core.io.dataset import BRDF_KINDS, NEUTRAL, Dataset

BLIND = "exact draw, identity-blind"
AWARE = "exact draw, identity-aware"


def _load(dataset: Dataset, subject: str, expressions: list[str], kinds: list[str]) -> dict[str, Prediction]:
    return {e: Prediction(dataset.load_vertices(subject, e), dataset.load_maps(subject, e, kinds))
            for e in [NEUTRAL, *expressions]}


def _plus_residual(base: Prediction, truth: Prediction, predicted: Prediction) -> Prediction:
    """``base`` + (``truth`` - ``predicted``), vertices and every map."""
    maps = {k: {u: base.maps[k][u] + truth.maps[k][u] - predicted.maps[k][u] for u in tiles}
            for k, tiles in base.maps.items()}
    return Prediction(base.vertices + truth.vertices - predicted.vertices, maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="held-out dataset (every subject is scored)")
    parser.add_argument("--train-dataset", required=True, help="the models' corpus (its train split)")
    parser.add_argument("--others", type=int, default=4, help="val identities of the corpus whose changes are drawn")
    parser.add_argument("--max-subjects", type=int, default=None, help="score only the first N held-out subjects")
    args = parser.parse_args()

    data, train = Dataset(args.dataset), Dataset(args.train_dataset)
    subjects = data.subjects[: args.max_subjects]
    units = list(data.units)
    kinds = [k for k in BRDF_KINDS if k in data.map_kinds]
    others = train.split("val")[: args.others]
    mean_face = mean_training_face(train, units, progress=False)
    ridge = RidgeBaseline(train, units, progress=False)
    neutrals = {s: Prediction(data.load_vertices(s, NEUTRAL), data.load_maps(s, NEUTRAL, kinds)) for s in subjects}
    ridge_held = dict(zip(subjects, ridge.predict([neutrals[s] for s in subjects], units)))
    other_truth = {o: _load(train, o, units, kinds) for o in others}
    ridge_other = dict(zip(others, ridge.predict([other_truth[o][NEUTRAL] for o in others], units)))

    samples: dict[str, list] = defaultdict(list)
    for subject in subjects:
        neutral = neutrals[subject]
        truth = _load(data, subject, units, kinds)
        methods = {LINEAR_3DMM: [linear_3dmm(neutral.vertices, neutral.maps, mean_face, units)],
                   RIDGE: [ridge_held[subject]], BLIND: [], AWARE: []}
        for o in others:
            one = MeanFace([o], {e: p.vertices for e, p in other_truth[o].items()},
                           {e: p.maps for e, p in other_truth[o].items()})
            methods[BLIND].append(linear_3dmm(neutral.vertices, neutral.maps, one, units))
            methods[AWARE].append({e: _plus_residual(ridge_held[subject][e], other_truth[o][e], ridge_other[o][e])
                                   for e in units})
        for name, predictions in methods.items():
            for p in predictions:
                samples[name].extend(score_predictions(p, {e: truth[e] for e in units}, kinds,
                                                       neutral=neutral).values())
        print(f"scored {subject}", flush=True)

    def mean(values: list[float]) -> str:
        return f"{np.mean(values):.2f}" if values else "-"

    print(f"\n{len(subjects)} identities of {args.dataset} x {len(units)} units; draws from {len(others)} val "
          f"identities of {args.train_dataset}. Change PSNR (dB), whole map / change region.\n")
    print("| method | FVD mm | " + " | ".join(f"dPSNR {k}" for k in kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for name, scored in samples.items():
        cells = [f"{mean([s.change_psnr[k] for s in scored if k in s.change_psnr])} / "
                 f"{mean([s.change_region_psnr[k] for s in scored if k in s.change_region_psnr])}" for k in kinds]
        print(f"| {name} | {np.mean([s.fvd_mm for s in scored]):.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
