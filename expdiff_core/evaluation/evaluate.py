"""Evaluate ExpDiff models and the baselines on held-out identities (paper Tables II and III).

For every subject of the evaluated split, each method predicts every requested expression from the
subject's own neutral (mesh + maps at the dataset resolution):

* an ExpDiff pipeline folder runs all stages with all expressions in one batch; vertices come from Eq. 9
  against the *generated* neutral and maps from ``transfer_map`` at the dataset resolution;
* the baselines (``neutral copy``, ``3DMM``) come from ``baselines``.

Predictions are compared with the true expression: FVD (mm) on vertices, PSNR and SSIM per BRDF map
kind (mean over tiles), LPIPS when a metric is given. Rows hold means per (method, expression) over
subjects, plus one ``all`` row per method averaging every (subject, expression) sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ExpDiffInputError
from ..io.dataset import BRDF_KINDS, NEUTRAL, Dataset
from .baselines import (BASELINES, LINEAR_3DMM, NEUTRAL_COPY, RIDGE, Prediction, RidgeBaseline, linear_3dmm,
                        mean_training_face, neutral_copy)
from .metrics import LpipsMetric, change_psnr, fvd, group_vertex_mask, psnr_batch, ssim_batch

ALL = "all"


@dataclass
class Row:
    """One table row: a method's mean scores on one expression (or ``all``) over ``samples`` samples.

    fvd_mm: mean vertex L2 distance in mm; psnr (dB), ssim, lpips: {map kind: mean}; lpips is empty when
    LPIPS was not computed.
    """

    method: str
    expression: str
    samples: int
    fvd_mm: float
    psnr: dict[str, float]
    ssim: dict[str, float]
    lpips: dict[str, float] = field(default_factory=dict)
    change_psnr: dict[str, float] = field(default_factory=dict)
    change_region_psnr: dict[str, float] = field(default_factory=dict)

    @property
    def psnr_mean(self) -> float:
        return float(np.mean(list(self.psnr.values())))

    @property
    def ssim_mean(self) -> float:
        return float(np.mean(list(self.ssim.values())))

    @property
    def lpips_mean(self) -> float | None:
        return float(np.mean(list(self.lpips.values()))) if self.lpips else None

    @property
    def change_psnr_mean(self) -> float | None:
        return float(np.mean(list(self.change_psnr.values()))) if self.change_psnr else None

    @property
    def change_region_psnr_mean(self) -> float | None:
        return float(np.mean(list(self.change_region_psnr.values()))) if self.change_region_psnr else None


@dataclass
class Sample:
    """Scores of one predicted expression of one subject: FVD (mm) and {map kind: value} per measure."""

    fvd_mm: float
    psnr: dict[str, float]
    ssim: dict[str, float]
    lpips: dict[str, float]
    change_psnr: dict[str, float] = field(default_factory=dict)
    change_region_psnr: dict[str, float] = field(default_factory=dict)


def expdiff_predictions(pipeline, neutral_mesh, neutral_maps: Mapping[str, Mapping[int, np.ndarray]],
                        expressions: Sequence[str], *, seed: int = 0, steps: int | None = None,
                        progress: bool = False) -> dict[str, Prediction]:
    """{expression: Prediction} from an ExpDiffPipeline for one subject, maps at the neutral maps' resolution.

    neutral_mesh: the subject's neutral FaceMesh (template topology); neutral_maps: {kind: {udim: (C, R, R)}}.
    All expressions run in one batch together with the generated neutral; each expression's maps are read
    against its reference (``ExpDiffOutput.references``: its prior, or the generated neutral).
    """
    from ..pipelines.expdiff import transfer_map

    generated_udims = set(pipeline.config.udims)
    for kind, tiles in neutral_maps.items():
        if kind not in pipeline.config.kinds:
            raise ExpDiffInputError(None, f"the model does not generate {kind} maps (it makes {pipeline.config.kinds})")
        missing = sorted(set(tiles) - generated_udims)
        if missing:
            raise ExpDiffInputError(None, f"the model does not generate UDIM tile(s) {missing} of the {kind} maps")
    output = pipeline(neutral_mesh, neutral_maps, list(expressions), seed=seed, steps=steps, progress=progress)
    out: dict[str, Prediction] = {}
    for label in expressions:
        generated, reference = output.maps[label], output.references[label]
        maps = {kind: {u: transfer_map(img, generated[kind][u], reference[kind][u], kind)
                       for u, img in tiles.items()} for kind, tiles in neutral_maps.items()}
        out[label] = Prediction(output.vertices[label].astype(np.float32), maps)
    return out


def score_predictions(predictions: Mapping[str, Prediction], truth: Mapping[str, Prediction], kinds: Sequence[str],
                      *, units: str = "cm", vertex_mask: np.ndarray | None = None,
                      lpips: LpipsMetric | None = None, neutral: Prediction | None = None) -> dict[str, Sample]:
    """Scores of one subject's predicted expressions against the truth; map metrics batched per kind.

    With the subject's ``neutral`` the change metrics (``change_psnr``) are scored too; expressions whose
    true change of a kind is zero (e.g. neutral) have none for that kind.
    """
    expressions = list(predictions)
    scores = {e: Sample(fvd(predictions[e].vertices, truth[e].vertices, units, vertex_mask), {}, {}, {})
              for e in expressions}
    for kind in kinds:
        udims = sorted(truth[expressions[0]].maps[kind])
        pred = [predictions[e].maps[kind][u] for e in expressions for u in udims]
        true = [truth[e].maps[kind][u] for e in expressions for u in udims]
        measures = {"psnr": psnr_batch(pred, true), "ssim": ssim_batch(pred, true)}
        if lpips is not None:
            measures["lpips"] = lpips.batch(pred, true)
        for name, values in measures.items():
            per_expression = values.reshape(len(expressions), len(udims)).mean(axis=1)
            for e, value in zip(expressions, per_expression):
                getattr(scores[e], name)[kind] = float(value)
        if neutral is not None:
            base = np.stack([neutral.maps[kind][u] for u in udims])
            for e in expressions:
                whole, region = change_psnr(np.stack([predictions[e].maps[kind][u] for u in udims]) - base,
                                            np.stack([truth[e].maps[kind][u] for u in udims]) - base)
                if whole is not None:
                    scores[e].change_psnr[kind], scores[e].change_region_psnr[kind] = whole, region
    return scores


def _mean_row(method: str, expression: str, samples: Sequence[Sample], kinds: Sequence[str]) -> Row:
    def mean(name: str) -> dict[str, float]:
        out = {}
        for k in kinds:  # LPIPS may be not computed; change metrics are absent where the truth has no change
            values = [getattr(s, name)[k] for s in samples if k in getattr(s, name)]
            if values:
                out[k] = float(np.mean(values))
        return out

    return Row(method, expression, len(samples), float(np.mean([s.fvd_mm for s in samples])),
               mean("psnr"), mean("ssim"), mean("lpips"), mean("change_psnr"), mean("change_region_psnr"))


def evaluate_methods(dataset_root: str | os.PathLike, methods: Mapping[str, str | os.PathLike], *,
                     split: str = "test", max_subjects: int | None = None, expressions: Sequence[str] | None = None,
                     seed: int = 0, steps: int | None = None, device: str | torch.device = "cpu",
                     progress: bool = True, train_split: str = "train", lpips: LpipsMetric | None = None,
                     fvd_groups: Sequence[str] | None = None,
                     train_dataset_root: str | os.PathLike | None = None,
                     without_prior: Sequence[str] = ()) -> list[Row]:
    """Score the baselines and every ExpDiff pipeline folder in ``methods`` on ``split``'s identities.

    methods: {display name: pipeline folder}, e.g. {"ExpDiff": ..., "w/o attention": ..., "one-hot": ...};
    the baselines ``neutral copy``, ``3DMM`` (mean delta of ``train_split``) and ``ridge`` (fitted on
    ``train_split``, tuned on ``val``) are always included, first. without_prior: names of methods whose
    pipelines are also scored with their expression prior switched off, as ``"<name> (no prior)"``.
    expressions: units to evaluate (default: every unit of the dataset). max_subjects: the first N subjects
    of the split. steps: sampler steps (default: each model's own). fvd_groups: restrict FVD to vertices
    of these material groups (default: every vertex). train_dataset_root: the dataset whose ``train_split``
    the 3DMM baseline averages (default: ``dataset_root``), so a separately made held-out set can be scored
    against the models' own training corpus. Returns, per method, its ``all`` row followed by one
    row per expression.
    """
    dataset = Dataset(Path(dataset_root))
    clash = sorted(set(methods) & set(BASELINES))
    if clash:
        raise ExpDiffInputError(None, f"method name(s) {clash} are taken by the baselines; choose other names")
    # "all": every subject, for a held-out set made separately from the models' corpus (--train-dataset).
    subjects = (dataset.subjects if split == "all" else dataset.split(split))[: max_subjects]
    if not subjects:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"split {split!r} has no subject to evaluate")
    expressions = list(expressions) if expressions is not None else list(dataset.units)
    unknown = sorted(set(expressions) - set(dataset.units))
    if unknown or not expressions:
        raise ExpDiffInputError(dataset.root / "manifest.json",
                                f"cannot evaluate expression(s) {unknown or expressions}; the dataset's units are "
                                f"{dataset.units}")
    kinds = [k for k in BRDF_KINDS if k in dataset.map_kinds]
    mask = group_vertex_mask(dataset.template(), list(fvd_groups)) if fvd_groups else None

    from ..pipelines.expdiff import ExpDiffPipeline

    pipelines = {name: ExpDiffPipeline.from_pretrained(folder, device=device) for name, folder in methods.items()}
    for name in without_prior:
        if name not in pipelines:
            raise ExpDiffInputError(None, f"--without-prior names {name!r}, which is not a scored method")
        if pipelines[name].prior is None:
            raise ExpDiffInputError(Path(methods[name]), f"method {name!r} has no expression prior to switch off")
        plain = ExpDiffPipeline.from_pretrained(methods[name], device=device)
        plain.use_prior = False
        pipelines[f"{name} (no prior)"] = plain
    train_dataset = dataset if train_dataset_root is None else Dataset(Path(train_dataset_root))
    if train_dataset.manifest["template"] != dataset.manifest["template"]:
        raise ExpDiffInputError(train_dataset.root / "manifest.json", "is on another template than the evaluated dataset")
    mean_face = mean_training_face(train_dataset, expressions, train_split, progress=progress)
    neutrals = {s: Prediction(dataset.load_vertices(s, NEUTRAL), dataset.load_maps(s, NEUTRAL, kinds)) for s in subjects}
    ridge = RidgeBaseline(train_dataset, expressions, train_split, progress=progress)
    ridge_predictions = dict(zip(subjects, ridge.predict([neutrals[s] for s in subjects], expressions)))
    names = [NEUTRAL_COPY, LINEAR_3DMM, RIDGE, *pipelines]
    samples: dict[str, dict[str, list[Sample]]] = {m: {e: [] for e in expressions} for m in names}

    bar = tqdm(total=len(subjects) * len(names), desc=f"evaluate ({split})", unit="method", disable=not progress)
    for subject in subjects:
        neutral = neutrals[subject]
        truth = {e: Prediction(dataset.load_vertices(subject, e), dataset.load_maps(subject, e, kinds))
                 for e in expressions}
        for name in names:
            bar.set_postfix_str(f"{subject} {name}")
            if name == NEUTRAL_COPY:
                predictions = neutral_copy(neutral.vertices, neutral.maps, expressions)
            elif name == LINEAR_3DMM:
                predictions = linear_3dmm(neutral.vertices, neutral.maps, mean_face, expressions)
            elif name == RIDGE:
                predictions = ridge_predictions[subject]
            else:
                mesh = dataset.template().with_vertices(neutral.vertices, name=f"{subject}/{NEUTRAL}")
                predictions = expdiff_predictions(pipelines[name], mesh, neutral.maps, expressions,
                                                  seed=seed, steps=steps)
            for e, score in score_predictions(predictions, truth, kinds, vertex_mask=mask, lpips=lpips,
                                              neutral=neutral).items():
                samples[name][e].append(score)
            bar.update(1)
    bar.close()

    rows: list[Row] = []
    for name in names:
        rows.append(_mean_row(name, ALL, [s for e in expressions for s in samples[name][e]], kinds))
        rows.extend(_mean_row(name, e, samples[name][e], kinds) for e in expressions)
    return rows
