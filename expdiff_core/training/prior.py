"""Fit the identity-aware expression prior (``models.prior``) on a dataset, its strength chosen on ``val``.

The training identities' neutrals and changes are read once (:class:`IdentityCorpus`); every candidate
(n_components, ridge) is scored on the validation identities by the mean vertex error of the predicted
expressions (FVD, mm) and the RMS error of the coarse map changes, and the best one is refitted and saved.
With ``maps=True`` the prior also gets a map part (the BRDF maps' change at full resolution), whose components
and ridge are chosen per kind on the same validation identities by the change PSNR of that kind.
The test split is never read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ExpDiffInputError
from ..io.dataset import MAP_SPECS, NEUTRAL, Dataset
from ..models.prior import (MAP_CHANGING, ExpressionPrior, IdentityFeatures, coarse_maps, fit_expression_prior,
                            fit_map_change, flatten_maps, map_layout, map_slices, ridge_weights)
from .latents import latent_key, read_latent_shard, read_manifest

COMPONENTS = (4, 8, 12, 16, 24, 32)
MAP_COMPONENTS = (4, 8, 16, 24)
RIDGES = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
UNTUNED = (16, 1e-2)  # (components, ridge) when there is no validation identity: the corpus's usual best


@dataclass
class IdentityCorpus:
    """Neutrals and changes of some identities.

    neutral_vertices (N, V, 3) float32; map_features (N, Fm) coarse neutral maps; vertex_changes
    {expression: (N, V, 3)}; map_changes {expression: (N, Fm)} coarse map changes. With ``full_kinds``:
    full_changes {expression: (N, D) float16} the changes of those kinds at the dataset's resolution, flattened
    in ``full_layout`` order ([[kind, udim, channels], ...], :func:`~expdiff_core.models.prior.flatten_maps`).
    """

    subjects: list[str]
    neutral_vertices: np.ndarray
    map_features: np.ndarray
    vertex_changes: dict[str, np.ndarray]
    map_changes: dict[str, np.ndarray]
    full_changes: dict[str, np.ndarray] = field(default_factory=dict)
    full_layout: list = field(default_factory=list)

    @classmethod
    def load(cls, dataset: Dataset, subjects: Sequence[str], expressions: Sequence[str],
             progress: bool = True, full_kinds: Sequence[str] = ()) -> "IdentityCorpus":
        if not subjects:
            raise ExpDiffInputError(dataset.root / "manifest.json", "no identities to fit the prior on")
        kinds, udims = list(dataset.map_kinds), list(dataset.udims)
        n = len(subjects)
        verts = np.zeros((n, dataset.vertex_count, 3), np.float32)
        vchange = {e: np.zeros((n, dataset.vertex_count, 3), np.float32) for e in expressions}
        feats, mchange = [], {e: [] for e in expressions}
        layout = map_layout(full_kinds, udims)
        size = sum(c for _, _, c in layout) * dataset.resolution ** 2
        full = {e: np.zeros((n, size), np.float16) for e in expressions} if layout else {}
        bar = tqdm(total=n * (len(expressions) + 1), desc="read identities", unit="expr", disable=not progress)
        for i, s in enumerate(subjects):
            verts[i] = dataset.load_vertices(s, NEUTRAL)
            neutral = dataset.load_maps(s, NEUTRAL)
            neutral_maps = coarse_maps(neutral, kinds, udims)
            neutral_full = flatten_maps(neutral, layout) if layout else None
            feats.append(neutral_maps)
            bar.update(1)
            for e in expressions:
                vchange[e][i] = dataset.load_vertices(s, e) - verts[i]
                maps = dataset.load_maps(s, e)
                mchange[e].append(coarse_maps(maps, kinds, udims) - neutral_maps)
                if layout:
                    full[e][i] = flatten_maps(maps, layout) - neutral_full
                bar.update(1)
        bar.close()
        return cls(list(subjects), verts, np.stack(feats), vchange, {e: np.stack(m) for e, m in mchange.items()},
                   full, layout)


def latent_changes(latents_root: str | os.PathLike, subjects: Sequence[str],
                   expressions: Sequence[str]) -> tuple[list[int], dict[str, np.ndarray]]:
    """(rows, {expression: (n, M, C, h, w)}): latent minus neutral latent of the ``subjects`` that have a shard
    (``rows``: their positions in ``subjects``), maps tile-major as the pipeline orders them. In a change
    encoding the expressions' latents are changes already (relative to no change) and are taken as they are.

    Encoding is the slowest step of the recipe (~30 s per identity on 2 CPU cores), so the latent part may be
    fitted on the identities encoded so far; at least 2 are needed.
    """
    manifest = read_manifest(latents_root)
    if manifest.kinds[0] != "position":
        raise ExpDiffInputError(Path(latents_root), f"latent kinds {manifest.kinds} do not start with position")
    rows = [i for i, s in enumerate(subjects) if (Path(latents_root) / f"{s}.safetensors").is_file()]
    if len(rows) < 2:
        raise ExpDiffInputError(Path(latents_root), f"has latents of {len(rows)} of the {len(subjects)} identities; "
                                "the prior needs at least 2")
    order = [(k, u) for u in manifest.udims for k in manifest.kinds]
    out = {e: [] for e in expressions}
    for i in rows:
        shard = read_latent_shard(Path(latents_root) / f"{subjects[i]}.safetensors")
        z0 = torch.stack([shard[latent_key(NEUTRAL, k, u)].float() for k, u in order])
        if manifest.encodes_change:
            z0 = torch.zeros_like(z0)
        for e in expressions:
            out[e].append((torch.stack([shard[latent_key(e, k, u)].float() for k, u in order]) - z0).numpy())
    return rows, {e: np.stack(v) for e, v in out.items()}


@dataclass
class PriorScore:
    n_components: int
    ridge: float
    fvd_mm: float
    map_rmse: float


def score_candidates(train: IdentityCorpus, val: IdentityCorpus, units_to_mm: float = 10.0,
                     components: Sequence[int] = COMPONENTS, ridges: Sequence[float] = RIDGES) -> list[PriorScore]:
    """Every (n_components, ridge) scored on ``val``: mean vertex error (mm) and coarse map change RMSE."""
    n = len(train.subjects)
    tv = train.neutral_vertices.reshape(n, -1)
    vv = val.neutral_vertices.reshape(len(val.subjects), -1)
    expressions = list(train.vertex_changes)
    out = []
    for k in sorted({min(c, n - 1) for c in components}):
        features = IdentityFeatures.fit(tv, train.map_features, k)
        ts, vs = features.scores(tv, train.map_features), features.scores(vv, val.map_features)
        for r in ridges:
            w = ridge_weights(ts, vs, r)  # (Nv, N)
            fvd, mse = [], []
            for e in expressions:
                y = train.vertex_changes[e].reshape(n, -1)
                pred = y.mean(0) + w @ (y - y.mean(0))
                err = (pred - val.vertex_changes[e].reshape(len(vs), -1)).reshape(len(vs), -1, 3)
                fvd.append(np.linalg.norm(err, axis=2).mean() * units_to_mm)
                m = train.map_changes[e]
                mpred = m.mean(0) + w @ (m - m.mean(0))
                mse.append(((mpred - val.map_changes[e]) ** 2).mean())
            out.append(PriorScore(features.n_components, float(r), float(np.mean(fvd)), float(np.sqrt(np.mean(mse)))))
    return out


def best_candidate(scores: Sequence[PriorScore]) -> PriorScore:
    """Lowest val FVD; among candidates within 1% of it, the one with the lowest map error, then fewest components."""
    best = min(s.fvd_mm for s in scores)
    near = [s for s in scores if s.fvd_mm <= best * 1.01]
    return min(near, key=lambda s: (round(s.map_rmse, 6), s.n_components))


def choose_components_and_ridge(dataset: Dataset, train: IdentityCorpus, tune_split: str,
                                n_components: int | None, ridge: float | None, progress: bool = True,
                                val: IdentityCorpus | None = None) -> tuple[int, float, list[PriorScore]]:
    """(n_components, ridge, validation scores): the given values, else the best on ``tune_split``'s identities
    (``val`` when already read; searching only what is not given), else ``UNTUNED`` when that split is empty
    (scores then empty)."""
    if n_components is not None and ridge is not None:
        return n_components, ridge, []
    if not dataset.split(tune_split):
        return n_components or UNTUNED[0], UNTUNED[1] if ridge is None else ridge, []
    if val is None:
        val = IdentityCorpus.load(dataset, dataset.split(tune_split), list(train.vertex_changes), progress)
    scores = score_candidates(train, val, components=[n_components] if n_components else COMPONENTS,
                              ridges=[ridge] if ridge is not None else RIDGES)
    chosen = best_candidate(scores)
    return chosen.n_components, chosen.ridge, scores


@dataclass
class MapScore:
    """One map-part candidate on the validation identities: ``change_psnr`` = mean over the units that change
    the kind of -10 log10(MSE of the predicted change), dB (the peak is 1, the maps' range)."""

    kind: str
    n_components: int
    ridge: float
    change_psnr: float


def score_map_candidates(train_scores: np.ndarray, val_scores: np.ndarray, train: IdentityCorpus,
                         val: IdentityCorpus, components: Sequence[int] = MAP_COMPONENTS,
                         ridges: Sequence[float] = RIDGES, progress: bool = True) -> list[MapScore]:
    """Every (kind, components, ridge) of the map part scored on ``val`` (both corpora read with full maps).

    A prediction is ``mean + phi_val[:k] (Phi_k^T Phi_k + ridge N I)^-1 Phi_k^T (Y - mean)``; the product
    ``Phi^T (Y - mean)`` is formed once per unit, so every candidate costs one small solve.
    """
    layout = train.full_layout
    n = len(train.subjects)
    texels = next(iter(train.full_changes.values())).shape[1] // sum(int(c) for _, _, c in layout)
    slices = map_slices(layout, texels)
    kinds = sorted(slices)
    candidates = [(k, r) for k in sorted({min(c, train_scores.shape[1]) for c in components}) for r in ridges]
    logs = {(kind, k, r): [] for kind in kinds for k, r in candidates}
    for e in tqdm(list(train.full_changes), desc="tune map part", unit="unit", disable=not progress):
        y = train.full_changes[e].astype(np.float32)
        mean = y.mean(axis=0)
        gram = train_scores.T.astype(np.float32) @ (y - mean)  # (K, D)
        del y
        truth = val.full_changes[e].astype(np.float32) - mean
        # the kinds this unit changes in the val identities: only they are scored
        changed = [kind for kind in kinds
                   if max(float(np.abs(truth[:, sl] + mean[sl]).max()) for sl in slices[kind]) > MAP_CHANGING]
        for k, r in candidates:
            phi = train_scores[:, :k]
            w = val_scores[:, :k] @ np.linalg.solve(phi.T @ phi + r * n * np.eye(k), np.eye(k))  # (Nv, k)
            err = w.astype(np.float32) @ gram[:k] - truth
            for kind in changed:
                parts = [err[:, sl] for sl in slices[kind]]
                mse = sum(float((x ** 2).sum()) for x in parts) / sum(x.size for x in parts)
                logs[(kind, k, r)].append(-10.0 * np.log10(max(mse, 1e-20)))
    return [MapScore(kind, k, r, float(np.mean(v)) if v else float("nan")) for (kind, k, r), v in logs.items()]


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_map_memory(dataset: Dataset, splits: Sequence[Sequence[str]], expressions: Sequence[str],
                      kinds: Sequence[str]) -> None:
    """Refuse, before reading anything, a map part whose changes (float16, every identity x unit) would not fit."""
    texels = sum(MAP_SPECS[k]["channels"] for k in kinds) * len(dataset.udims) * dataset.resolution ** 2
    need = sum(len(s) for s in splits) * len(expressions) * texels * 2
    available = _available_memory()
    if available is not None and need > 0.7 * available:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"the map part holds every train/val identity's "
                                f"map changes at {dataset.resolution}^2: ~{need / 1e9:.1f} GB, and {available / 1e9:.1f} "
                                "GB are available; fit it on a corpus made at the model resolution")


def fit_prior(dataset_root: str | os.PathLike, out: str | os.PathLike, *, latents_root: str | os.PathLike | None = None,
              n_components: int | None = None, ridge: float | None = None, split: str = "train",
              tune_split: str = "val", maps: bool = False,
              progress: bool = True) -> tuple[ExpressionPrior, list[PriorScore]]:
    """Fit the prior on ``split`` (components and ridge chosen on ``tune_split`` unless both are given),
    save it to ``out`` (must not exist) and return it with the candidates' validation scores.

    maps: also fit the map part (BRDF kinds at the dataset's resolution), each kind's components and ridge
    chosen on ``tune_split`` (which then must have identities); its candidates' scores are kept in the
    config's ``fitted_on["map_validation"]`` (dB).
    """
    dataset = Dataset(Path(dataset_root))
    expressions = [e for e in dataset.units if e != NEUTRAL]
    full_kinds = [k for k in dataset.map_kinds if k != "position"] if maps else []
    if maps and not dataset.split(tune_split):
        raise ExpDiffInputError(dataset.root / "manifest.json", f"the map part is tuned on the {tune_split!r} "
                                "split, which has no identity")
    if maps:
        _check_map_memory(dataset, [dataset.split(split), dataset.split(tune_split)], expressions, full_kinds)
    train = IdentityCorpus.load(dataset, dataset.split(split), expressions, progress, full_kinds)
    val = (IdentityCorpus.load(dataset, dataset.split(tune_split), expressions, progress, full_kinds)
           if maps else None)
    n_components, ridge, scores = choose_components_and_ridge(dataset, train, tune_split, n_components, ridge,
                                                              progress, val)
    latents, rows = None, None
    if latents_root is not None:
        rows, latents = latent_changes(latents_root, train.subjects, expressions)
    prior = fit_expression_prior(
        train.neutral_vertices, train.map_features, train.vertex_changes, n_components=n_components, ridge=ridge,
        map_kinds=list(dataset.map_kinds), udims=list(dataset.udims), latent_changes=latents, latent_rows=rows,
        fitted_on={"dataset": dataset.root.name, "split": split, "identities": len(train.subjects),
                   "latent_identities": None if rows is None else len(rows),
                   "latent_representation": None if latents_root is None else
                   ("change" if read_manifest(latents_root).encodes_change else "absolute"),
                   "tuned_on": tune_split if scores else None})
    if maps:
        n = len(train.subjects)
        train_scores = prior.features.scores(train.neutral_vertices.reshape(n, -1), train.map_features)
        val_scores = prior.features.scores(val.neutral_vertices.reshape(len(val.subjects), -1), val.map_features)
        map_scores = score_map_candidates(train_scores, val_scores, train, val, progress=progress)
        tuning = {}
        for kind in sorted({m.kind for m in map_scores}):
            best = max((m for m in map_scores if m.kind == kind), key=lambda m: (np.nan_to_num(m.change_psnr, nan=-1e9),
                                                                                -m.n_components))
            tuning[kind] = (best.n_components, best.ridge)
        part = fit_map_change(train_scores, train.full_changes, expressions, train.full_layout, dataset.resolution,
                              tuning)
        prior = prior.with_map_part(part, train.full_layout, dataset.resolution, tuning)
        validation = {}
        for m in map_scores:
            validation.setdefault(m.kind, {})[f"K={m.n_components} ridge={m.ridge:g}"] = round(m.change_psnr, 3)
        prior.config.fitted_on["map_validation"] = validation
    prior.save_pretrained(out)
    return prior, scores


def score_prior_strengths(model_dir: str | os.PathLike, dataset_root: str | os.PathLike, strengths: Sequence[float],
                          *, split: str = "val", max_subjects: int | None = 4, steps: int | None = None,
                          seed: int = 0, device: str = "cpu", progress: bool = True) -> list[dict]:
    """Score a pipeline with a prior at several SDEdit strengths on ``split`` (never the test split).

    Returns one dict per strength: ``strength``, ``fvd_mm`` and ``change_psnr`` (mean over kinds), averaged
    over the subjects' every unit.
    """
    from ..evaluation.evaluate import expdiff_predictions, score_predictions
    from ..evaluation.baselines import Prediction
    from ..pipelines.expdiff import ExpDiffPipeline

    if split == "test":
        raise ExpDiffInputError(None, "the prior strength is tuned on val (or train), never on the test split")
    dataset = Dataset(Path(dataset_root))
    pipe = ExpDiffPipeline.from_pretrained(model_dir, device=device)
    if pipe.prior is None:
        raise ExpDiffInputError(Path(model_dir), "has no expression prior")
    units = [e for e in dataset.units if e != NEUTRAL]
    kinds = list(dataset.map_kinds)
    subjects = dataset.split(split)[:max_subjects]
    results = []
    for strength in strengths:
        pipe.config.prior_strength = float(strength)
        fvd, change = [], []
        for s in tqdm(subjects, desc=f"strength {strength}", disable=not progress):
            neutral = Prediction(dataset.load_vertices(s, NEUTRAL), dataset.load_maps(s, NEUTRAL, kinds))
            mesh = dataset.template().with_vertices(neutral.vertices)
            predicted = expdiff_predictions(pipe, mesh, neutral.maps, units, seed=seed, steps=steps)
            truth = {e: Prediction(dataset.load_vertices(s, e), dataset.load_maps(s, e, kinds)) for e in units}
            for sample in score_predictions(predicted, truth, kinds, neutral=neutral).values():
                fvd.append(sample.fvd_mm)
                change.extend(sample.change_psnr.values())
        results.append({"strength": float(strength), "fvd_mm": float(np.mean(fvd)),
                        "change_psnr": float(np.mean(change))})
    return results
