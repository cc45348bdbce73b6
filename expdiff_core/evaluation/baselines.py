"""Baselines the paper compares against (Tables II and III), computed from a dataset.

* **neutral copy**: every expression is the subject's own neutral (geometry and maps unchanged).
* **3DMM** (linear): the mean over the training identities of (expression - neutral), added to the
  subject's neutral, for vertices and for every BRDF map (maps clipped to [0, 1], normal vectors kept at
  the neutral's lengths: the same directional rule ``transfer_map`` applies to generated maps).
* **ridge** (a personalised 3DMM): per expression, ridge regression from the neutral's identity
  coefficients (``models.prior``: PCA of the training neutrals) to the change of every vertex and texel;
  components and strength chosen on the validation identities (``training.prior``). A prediction is a
  weighted sum of the training identities' changes, so the maps are streamed once for every evaluated
  subject together (:class:`RidgeBaseline`).

The mean training face per expression is computed once per dataset, split and expression list and kept
in memory (``mean_training_face``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import ExpDiffInputError
from ..io.dataset import NEUTRAL, Dataset
from ..pipelines.expdiff import transfer_map

NEUTRAL_COPY = "neutral copy"
LINEAR_3DMM = "3DMM"
RIDGE = "ridge"
BASELINES = (NEUTRAL_COPY, LINEAR_3DMM, RIDGE)
Maps = dict[str, dict[int, np.ndarray]]  # {kind: {udim: (C, R, R) float32}}


@dataclass
class Prediction:
    """One predicted expression of one subject: vertices (V, 3) float32 in the dataset's unit, maps {kind: {udim}}."""

    vertices: np.ndarray
    maps: Maps


@dataclass
class MeanFace:
    """Mean over ``subjects`` of every expression: vertices {expression: (V, 3)}, maps {expression: Maps}."""

    subjects: list[str]
    vertices: dict[str, np.ndarray]
    maps: dict[str, Maps]

    def vertex_delta(self, expression: str) -> np.ndarray:
        """(V, 3) mean of (expression - neutral) over the subjects."""
        return self.vertices[expression] - self.vertices[NEUTRAL]


_MEAN_FACES: dict[tuple, MeanFace] = {}


def _dataset_key(dataset: Dataset) -> tuple:
    manifest = dataset.root / "manifest.json"
    return (str(dataset.root.resolve()), manifest.stat().st_mtime_ns)


def mean_training_face(dataset: Dataset, expressions: Sequence[str], split: str = "train",
                       progress: bool = True) -> MeanFace:
    """The mean face (vertices and maps) of ``split``'s identities for ``neutral`` + ``expressions``.

    Cached in memory per dataset folder (and manifest version), split and expression list. Accumulates in
    float64 so the mean of many identities does not drift.
    """
    expressions = [NEUTRAL] + [e for e in expressions if e != NEUTRAL]
    key = (*_dataset_key(dataset), split, tuple(expressions))
    if key in _MEAN_FACES:
        return _MEAN_FACES[key]
    subjects = dataset.split(split)
    if not subjects:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"split {split!r} has no subject; the 3DMM "
                                "baseline needs training identities")
    missing = sorted(set(expressions) - set(dataset.expressions))
    if missing:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"dataset has no expression(s) {missing}")
    vertex_sums = {e: np.zeros((dataset.vertex_count, 3), np.float64) for e in expressions}
    map_sums: dict[str, dict[str, dict[int, np.ndarray]]] = {e: {} for e in expressions}
    bar = tqdm(total=len(subjects) * len(expressions), desc=f"3DMM mean ({split})", unit="expr", disable=not progress)
    for subject in subjects:
        for e in expressions:
            vertex_sums[e] += dataset.load_vertices(subject, e)
            for kind, tiles in dataset.load_maps(subject, e).items():
                sums = map_sums[e].setdefault(kind, {})
                for udim, image in tiles.items():
                    if udim in sums:
                        sums[udim] += image
                    else:
                        sums[udim] = image.astype(np.float64)
            bar.update(1)
    bar.close()
    n = float(len(subjects))
    face = MeanFace(
        subjects=list(subjects),
        vertices={e: (v / n).astype(np.float32) for e, v in vertex_sums.items()},
        maps={e: {k: {u: (img / n).astype(np.float32) for u, img in tiles.items()} for k, tiles in kinds.items()}
              for e, kinds in map_sums.items()},
    )
    _MEAN_FACES[key] = face
    return face


def clear_cache() -> None:
    """Forget every cached mean face (e.g. after a dataset folder was replaced in place)."""
    _MEAN_FACES.clear()


def neutral_copy(neutral_vertices: np.ndarray, neutral_maps: Maps, expressions: Sequence[str]) -> dict[str, Prediction]:
    """{expression: the neutral itself} for every expression."""
    return {e: Prediction(neutral_vertices.copy(), {k: {u: img.copy() for u, img in tiles.items()}
                                                   for k, tiles in neutral_maps.items()}) for e in expressions}


def linear_3dmm(neutral_vertices: np.ndarray, neutral_maps: Maps, mean_face: MeanFace,
                expressions: Sequence[str]) -> dict[str, Prediction]:
    """{expression: neutral + mean training (expression - neutral)} for vertices and every map kind.

    neutral_vertices: (V, 3); neutral_maps: {kind: {udim: (C, R, R)}} at the dataset resolution.
    """
    out: dict[str, Prediction] = {}
    mean_neutral = mean_face.maps[NEUTRAL]
    for e in expressions:
        vertices = (neutral_vertices + mean_face.vertex_delta(e)).astype(np.float32)
        maps = {kind: {u: transfer_map(img, mean_face.maps[e][kind][u], mean_neutral[kind][u], kind)
                       for u, img in tiles.items()} for kind, tiles in neutral_maps.items()}
        out[e] = Prediction(vertices, maps)
    return out


def baseline_predictions(dataset: Dataset | str | os.PathLike, subject: str, expressions: Sequence[str],
                         train_split: str = "train", progress: bool = True) -> dict[str, dict[str, Prediction]]:
    """{baseline name: {expression: Prediction}} for one subject, both baselines, from its dataset neutral."""
    dataset = dataset if isinstance(dataset, Dataset) else Dataset(Path(dataset))
    vertices = dataset.load_vertices(subject, NEUTRAL)
    maps = dataset.load_maps(subject, NEUTRAL)
    mean_face = mean_training_face(dataset, expressions, train_split, progress=progress)
    return {NEUTRAL_COPY: neutral_copy(vertices, maps, expressions),
            LINEAR_3DMM: linear_3dmm(vertices, maps, mean_face, expressions)}


class RidgeBaseline:
    """The ridge baseline fitted on ``split`` of ``dataset`` (components and strength chosen on ``tune_split``;
    ``training.prior.UNTUNED`` when it has no identity).

    ``predict`` gives every requested expression for many subjects at once (one pass over the training maps).
    """

    def __init__(self, dataset: Dataset, expressions: Sequence[str], split: str = "train", tune_split: str = "val",
                 n_components: int | None = None, ridge: float | None = None, progress: bool = True):
        from ..models.prior import IdentityFeatures
        from ..training.prior import IdentityCorpus, choose_components_and_ridge

        self.dataset = dataset
        self.expressions = [e for e in expressions if e != NEUTRAL]
        self.subjects = dataset.split(split)
        train = IdentityCorpus.load(dataset, self.subjects, self.expressions, progress)
        n_components, ridge, _ = choose_components_and_ridge(dataset, train, tune_split, n_components, ridge,
                                                             progress)
        self.n_components, self.ridge = int(n_components), float(ridge)
        n = len(self.subjects)
        self.features = IdentityFeatures.fit(train.neutral_vertices.reshape(n, -1), train.map_features, self.n_components)
        self.train_scores = self.features.scores(train.neutral_vertices.reshape(n, -1), train.map_features)
        self.vertex_changes = train.vertex_changes
        self.progress = progress

    def weights(self, neutrals: Sequence[Prediction]) -> np.ndarray:
        """(Q, N) weights over the training identities (summing the changes gives the prediction)."""
        from ..models.prior import coarse_maps, ridge_weights

        v = np.stack([p.vertices.reshape(-1) for p in neutrals])
        m = np.stack([coarse_maps(p.maps, self.dataset.map_kinds, self.dataset.udims) for p in neutrals])
        w = ridge_weights(self.train_scores, self.features.scores(v, m), self.ridge)
        return w + (1.0 - w.sum(axis=1, keepdims=True)) / w.shape[1]  # mean(Y) + w (Y - mean(Y)) = w' Y

    def predict(self, neutrals: Sequence[Prediction], expressions: Sequence[str]) -> list[dict[str, Prediction]]:
        """Per neutral (vertices (V, 3), maps at the dataset resolution): {expression: Prediction}."""
        w = self.weights(neutrals).astype(np.float32)
        out: list[dict[str, Prediction]] = [{} for _ in neutrals]
        kinds = [k for k in neutrals[0].maps]
        bar = tqdm(total=len(expressions) * len(self.subjects), desc="ridge baseline", unit="expr",
                   disable=not self.progress)
        neutral_maps = {s: self.dataset.load_maps(s, NEUTRAL, kinds) for s in self.subjects}
        for e in expressions:
            changes = {k: {u: np.zeros((len(neutrals), *img.shape), np.float32) for u, img in tiles.items()}
                       for k, tiles in neutrals[0].maps.items()}
            if e != NEUTRAL:
                for i, s in enumerate(self.subjects):
                    neutral, expression = neutral_maps[s], self.dataset.load_maps(s, e, kinds)
                    for k in kinds:
                        for u in changes[k]:
                            changes[k][u] += w[:, i, None, None, None] * (expression[k][u] - neutral[k][u])
                    bar.update(1)
                vertex = np.einsum("qn,nvd->qvd", w, self.vertex_changes[e])
            else:
                vertex = np.zeros((len(neutrals), *neutrals[0].vertices.shape), np.float32)
            for q, p in enumerate(neutrals):
                maps = {k: {u: transfer_map(img, img + changes[k][u][q], img, k) for u, img in tiles.items()}
                        for k, tiles in p.maps.items()}
                out[q][e] = Prediction((p.vertices + vertex[q]).astype(np.float32), maps)
        bar.close()
        return out
