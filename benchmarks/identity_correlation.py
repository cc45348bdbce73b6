"""Does the model use who the face is? Correlation of predicted and true identity-specific motion.

    python benchmarks/identity_correlation.py --model models/expdiff --dataset HELDOUT

For every held-out identity and unit, the identity-specific part of a change is the change minus the training
identities' mean change for that unit (what the plain 3DMM cannot know). Printed per face region of the units
(brow, eye, cheek, nose, mouth, jaw, tongue): the Pearson correlation, over every (identity, unit, moving vertex,
axis), between the predicted and the true identity-specific vertex change, and the share of its variance the
prediction explains (1 - residual / true). The prediction is the model's expression prior (its vertex change
for that identity's neutral); a model without a prior is refused. With the prior's map part, the same per BRDF
kind and region, over the texels whose true change exceeds 0.01 (map units).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from expdiff_core import facs
from expdiff_core.facs import NEUTRAL
from expdiff_core.io.dataset import Dataset
from expdiff_core.pipelines.expdiff import ExpDiffPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline folder with an expression prior")
    parser.add_argument("--dataset", required=True, help="held-out dataset (every subject is used)")
    args = parser.parse_args()
    data = Dataset(args.dataset)
    pipe = ExpDiffPipeline.from_pretrained(args.model, device="cpu")
    prior = pipe.prior
    if prior is None:
        raise SystemExit(f"{args.model}: has no expression prior")
    units = [u for u in prior.expressions if u in data.units]
    mix = prior.weights_for([{u: 1.0} for u in units])
    zero = np.zeros(prior.features.n_components)  # scores 0: the training mean change
    mean = prior.vertex_change(zero, mix)
    mean_maps = prior.map_change(zero, mix)
    pred_parts, true_parts = defaultdict(list), defaultdict(list)
    pred_maps, true_maps = defaultdict(list), defaultdict(list)
    for subject in data.subjects:
        neutral = data.load_vertices(subject, NEUTRAL)
        mesh = data.template().with_vertices(neutral)
        neutral_maps = data.load_maps(subject, NEUTRAL)
        scores = pipe.prior_scores(mesh, neutral_maps)
        predicted = prior.vertex_change(scores, mix)
        predicted_maps = prior.map_change(scores, mix)
        for i, unit in enumerate(units):
            true = data.load_vertices(subject, unit) - neutral
            moving = np.linalg.norm(true, axis=1) > 0.01  # cm: the vertices this unit moves by more than 0.1 mm
            region = facs.unit(unit).region
            pred_parts[region].append((predicted[i] - mean[i])[moving].ravel())
            true_parts[region].append((true - mean[i])[moving].ravel())
            if predicted_maps:
                maps = data.load_maps(subject, unit, list(predicted_maps[i]))
                for kind, tiles in predicted_maps[i].items():
                    for udim, change in tiles.items():
                        true_map = maps[kind][udim] - neutral_maps[kind][udim]
                        changing = np.abs(true_map) > 0.01
                        pred_maps[(kind, region)].append((change - mean_maps[i][kind][udim])[changing])
                        true_maps[(kind, region)].append((true_map - mean_maps[i][kind][udim])[changing])
    print(f"{args.model} on {args.dataset}: {len(data.subjects)} identities x {len(units)} units")
    print(f"  {'region':<8} {'correlation':>11} {'explained':>9}  {'true identity part, RMS mm':>26}")
    for region in sorted(pred_parts):
        p, t = np.concatenate(pred_parts[region]), np.concatenate(true_parts[region])
        corr = float(np.corrcoef(p, t)[0, 1])
        explained = 1.0 - float(np.sum((p - t) ** 2) / np.sum(t ** 2))
        print(f"  {region:<8} {corr:>11.3f} {explained:>9.3f}  {np.sqrt(np.mean(t ** 2)) * 10:>26.3f}")
    if pred_maps:
        print(f"  {'kind':<9} {'region':<8} {'correlation':>11} {'explained':>9}  "
              f"{'true identity part, RMS':>23}  texels")
        for kind, region in sorted(pred_maps):
            p, t = np.concatenate(pred_maps[(kind, region)]), np.concatenate(true_maps[(kind, region)])
            if p.size < 2:
                continue
            corr = float(np.corrcoef(p, t)[0, 1])
            explained = 1.0 - float(np.sum((p - t) ** 2) / np.sum(t ** 2))
            rms = np.sqrt(np.mean(t ** 2))
            print(f"  {kind:<9} {region:<8} {corr:>11.3f} {explained:>9.3f}  {rms:>23.4f}  {p.size}")


if __name__ == "__main__":
    main()
