"""Identity-aware linear expression prior: a "personalised 3DMM" fitted by ridge regression.

Per expression, the change from the neutral (of every vertex, and of the latents of every map) is regressed
on the neutral's identity coefficients: the first ``n_components`` principal components of the training
neutrals (vertices and coarse maps, each block weighted to unit total variance, scores standardised). With
``Phi`` (N, K) the training scores and ``Y`` (N, D) the training changes of one expression::

    change(phi) = mean(Y) + phi^T B,    B = (Phi^T Phi + ridge * N * I)^-1 Phi^T (Y - mean(Y))

so ``ridge`` is relative to the per-identity scale (0: least squares; large: the mean change, i.e. the
plain 3DMM). A unit moves few vertices (7% on average on our corpus), so the vertex part is stored sparsely:
per unit, only the vertices some training identity moves by more than ``MOVING`` (0.1 um); the latent part
uses only the first ``latent_components`` scores, to keep the file small. The optional *map part* predicts the
BRDF maps' change in map space, at the model resolution, without passing the codec (whose error on a small
change is larger than the change's identity-specific part): per unit, sparse over the texels some training
identity changes by more than ``MAP_CHANGING``, with its own components and, per kind, its own ridge (both
chosen on the validation identities by ``training.prior``). The same operator serves the
evaluation baseline (:func:`ridge_weights`: the prediction as a weighted sum of the training identities'
changes) and the pipeline's prior (:class:`ExpressionPrior`: ``B`` stored per expression). Free prompts get
the prior of the units they resemble (``ExpDiffPipeline.prior_mix``).

A prior folder: ``config.json`` (:class:`ExpressionPriorConfig`) + ``expression_prior.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import ExpDiffInputError
from ..fileio import atomic_dir
from ..io.dataset import MAP_SPECS
from .weights import require_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "expression_prior.safetensors"
FEATURE_RESOLUTION = 16  # texels per tile side of the maps that enter the identity features (skin tone, not pores)
MOVING = 1e-5  # cm: vertices a unit moves less than this in every training identity are stored as not moving
MAP_CHANGING = 2e-4  # map units: 1/20 of an 8-bit level; texels a unit changes less than this are stored as still

Maps = Mapping[str, Mapping[int, np.ndarray]]  # {kind: {udim: (C, R, R)}}


# ------------------------------------------------------------------------------------------ features
def coarse_maps(maps: Maps, kinds: Sequence[str], udims: Sequence[int], size: int = FEATURE_RESOLUTION) -> np.ndarray:
    """(sum_k C_k * len(udims) * size^2,) float64: every kind's tiles area-averaged to ``size``^2, flattened.

    A kind missing from ``maps`` gives NaNs (filled with the training mean by :meth:`IdentityFeatures.scores`).
    """
    out = []
    for kind in kinds:
        for udim in udims:
            tile = maps.get(kind, {}).get(udim)
            if tile is None:
                channels = 3 if kind in ("albedo", "normal") else 1
                out.append(np.full(channels * size * size, np.nan))
                continue
            tile = np.asarray(tile, dtype=np.float64)
            c, h, w = tile.shape
            if h % size or w % size:
                raise ExpDiffInputError(None, f"{kind} tile {udim} is {w}x{h}; the prior needs a multiple of {size}")
            out.append(tile.reshape(c, size, h // size, size, w // size).mean(axis=(2, 4)).ravel())
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class IdentityFeatures:
    """PCA of training neutrals -> standardised identity scores.

    mean: (F,) feature mean; block_scale: (F,) per-feature weight (each block -- vertices, coarse maps --
    to unit total variance); basis: (K, F) principal directions; score_std: (K,) training score std.
    """

    mean: np.ndarray
    block_scale: np.ndarray
    basis: np.ndarray
    score_std: np.ndarray

    @classmethod
    def fit(cls, vertex_features: np.ndarray, map_features: np.ndarray, n_components: int) -> "IdentityFeatures":
        """vertex_features (N, 3V) neutral vertices; map_features (N, Fm) coarse maps (``coarse_maps``).

        At most N - 1 components (none from a single identity: the prior is then its change).
        """
        x = np.concatenate([vertex_features, map_features], axis=1).astype(np.float64)
        n = x.shape[0]
        if n < 1:
            raise ExpDiffInputError(None, "the prior needs at least one training identity")
        mean = x.mean(axis=0)
        centred = x - mean
        scale = np.empty(x.shape[1])
        for block in (slice(0, vertex_features.shape[1]), slice(vertex_features.shape[1], x.shape[1])):
            total = float((centred[:, block] ** 2).sum() / n)
            scale[block] = 1.0 / np.sqrt(total) if total > 0 else 0.0
        _, s, vt = np.linalg.svd(centred * scale, full_matrices=False)
        k = int(min(n_components, n - 1, vt.shape[0]))
        std = s[:k] / np.sqrt(n)
        return cls(mean, scale, vt[:k], np.maximum(std, 1e-12))

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[0])

    def scores(self, vertex_features: np.ndarray, map_features: np.ndarray) -> np.ndarray:
        """(N, K) standardised scores; NaN features (maps the user does not have) take the training mean."""
        x = np.concatenate([np.atleast_2d(vertex_features), np.atleast_2d(map_features)], axis=1).astype(np.float64)
        x = np.where(np.isnan(x), self.mean, x)
        return ((x - self.mean) * self.block_scale) @ self.basis.T / self.score_std


def ridge_operator(scores: np.ndarray, ridge: float) -> np.ndarray:
    """(K, N): ``(Phi^T Phi + ridge * N * I)^-1 Phi^T`` for training scores ``Phi`` (N, K)."""
    n, k = scores.shape
    if k == 0:  # one training identity: no identity direction, the prediction is its change (the mean)
        return np.zeros((0, n))
    return np.linalg.solve(scores.T @ scores + float(ridge) * n * np.eye(k), scores.T)


def ridge_weights(train_scores: np.ndarray, query_scores: np.ndarray, ridge: float) -> np.ndarray:
    """(Q, N) weights: ridge prediction for a query = mean(Y) + weights @ (Y - mean(Y))."""
    return np.atleast_2d(query_scores) @ ridge_operator(train_scores, ridge)


# ------------------------------------------------------------------------------------------ the prior
@dataclass
class ExpressionPriorConfig:
    """expressions: units with a prior (``neutral`` excluded: its change is zero). vertex_count: V.
    latent_shape: (M, C, h, w) of the pipeline's latents, or None (no latent prior); latent_components: how
    many identity scores the latent part uses. map_kinds, udims: the maps that enter the features.
    n_components, ridge: see the module docstring. units: length unit of the vertex changes (the dataset's, cm).
    fitted_on: provenance (dataset, split, identities). Map part (empty without one): map_layout [[kind, udim,
    channels], ...] the order of the flattened maps (:func:`flatten_maps`), map_resolution texels per tile side,
    map_tuning {kind: [components, ridge]}.
    """

    expressions: list[str]
    vertex_count: int
    n_components: int
    ridge: float
    map_kinds: list[str]
    udims: list[int]
    latent_shape: list[int] | None = None
    latent_components: int = 0
    units: str = "cm"
    fitted_on: dict = field(default_factory=dict)
    format: str = "expdiff-expression-prior/1"
    map_layout: list = field(default_factory=list)
    map_resolution: int = 0
    map_tuning: dict = field(default_factory=dict)


class ExpressionPrior:
    """Per-expression ridge coefficients for the change of vertices (and latents) given the neutral.

    Vertex part, sparse over the E units: ``vertex_offsets`` (E + 1,) into ``vertex_index`` (S,) vertex ids,
    ``vertex_mean`` (S, 3) and ``vertex_coef`` (K, S, 3). Latent part: ``latent_mean`` (E, M, C, h, w) and
    ``latent_coef`` (E, k, M, C, h, w) with k = ``config.latent_components``. Map part: ``map_parts``
    {kind: :class:`SparseChange` over the flattened maps (:func:`flatten_maps`)}, empty without one.
    """

    def __init__(self, config: ExpressionPriorConfig, features: IdentityFeatures, vertex_offsets: np.ndarray,
                 vertex_index: np.ndarray, vertex_mean: np.ndarray, vertex_coef: np.ndarray,
                 latent_mean: np.ndarray | None = None, latent_coef: np.ndarray | None = None,
                 map_parts: "Mapping[str, SparseChange] | None" = None):
        self.config = config
        self.features = features
        self.vertex_offsets = np.asarray(vertex_offsets, np.int64)
        self.vertex_index = np.asarray(vertex_index, np.int64)
        self.vertex_mean = np.asarray(vertex_mean, np.float32)
        self.vertex_coef = np.asarray(vertex_coef, np.float32)
        self.latent_mean = None if latent_mean is None else np.asarray(latent_mean, np.float32)
        self.latent_coef = None if latent_coef is None else np.asarray(latent_coef, np.float32)
        self.map_parts = dict(map_parts or {})
        self.index = {e: i for i, e in enumerate(config.expressions)}

    @property
    def expressions(self) -> list[str]:
        return list(self.config.expressions)

    def scores(self, neutral_vertices: np.ndarray, neutral_maps: Maps) -> np.ndarray:
        """(K,) identity scores of one neutral: vertices (V, 3) in ``config.units``, maps at any multiple of 16."""
        v = np.asarray(neutral_vertices, np.float64).reshape(1, -1)
        if v.shape[1] != 3 * self.config.vertex_count:
            raise ExpDiffInputError(None, f"the prior is for {self.config.vertex_count} vertices, the neutral has "
                                    f"{v.shape[1] // 3}")
        m = coarse_maps(neutral_maps, self.config.map_kinds, self.config.udims)[None]
        return self.features.scores(v, m)[0]

    def weights_for(self, expressions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """(N_expr, E) mixing weights from ``{unit: weight}`` dicts (units without a prior weigh 0)."""
        return unit_weights(expressions, self.index)

    def vertex_change(self, scores: np.ndarray, mix: np.ndarray) -> np.ndarray:
        """(N_expr, V, 3) float32: prior vertex change for each row of mixing weights ``mix`` (N_expr, E)."""
        out = np.zeros((len(mix), self.config.vertex_count, 3), np.float32)
        change = self.vertex_mean + np.einsum("k,ksd->sd", scores.astype(np.float32), self.vertex_coef)
        for e in np.flatnonzero(np.abs(mix).sum(axis=0)):
            part = slice(self.vertex_offsets[e], self.vertex_offsets[e + 1])
            out[:, self.vertex_index[part]] += mix[:, e, None, None] * change[part]
        return out

    def latent_change(self, scores: np.ndarray, mix: np.ndarray) -> np.ndarray | None:
        """(N_expr, M, C, h, w) float32 prior latent change, or None when the prior has no latent part."""
        if self.latent_mean is None:
            return None
        k = self.latent_coef.shape[1]
        flat_mean = self.latent_mean.reshape(len(self.index), -1)
        flat_coef = self.latent_coef.reshape(len(self.index), k, -1)
        per_unit = flat_mean + np.einsum("k,ekd->ed", scores[:k].astype(np.float32), flat_coef)
        return (mix @ per_unit).reshape(len(mix), *self.latent_mean.shape[1:]).astype(np.float32)

    def map_change(self, scores: np.ndarray, mix: np.ndarray) -> list[Maps] | None:
        """Per row of ``mix`` (N_expr, E): the prior's change of the BRDF maps {kind: {udim: (C, R, R)}}, or
        None when the prior has no map part."""
        if not self.map_parts:
            return None
        flat = np.zeros((len(mix), map_size(self.config.map_layout, self.config.map_resolution)), np.float32)
        for part in self.map_parts.values():
            part.add_change(flat, scores.astype(np.float32), mix)
        return [unflatten_maps(row, self.config.map_layout, self.config.map_resolution) for row in flat]

    def with_map_part(self, map_parts: Mapping[str, "SparseChange"], layout: Sequence[Sequence], resolution: int,
                      tuning: Mapping[str, tuple[int, float]]) -> "ExpressionPrior":
        """This prior with ``map_parts`` (fitted on its own identity scores: :func:`fit_map_change`)."""
        config = ExpressionPriorConfig(**{**asdict(self.config), "map_layout": [list(x) for x in layout],
                                          "map_resolution": int(resolution),
                                          "map_tuning": {k: [int(c), float(r)] for k, (c, r) in tuning.items()}})
        return ExpressionPrior(config, self.features, self.vertex_offsets, self.vertex_index, self.vertex_mean,
                               self.vertex_coef, self.latent_mean, self.latent_coef, map_parts)

    # -------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``expression_prior.safetensors`` (coefficients in float16) into a new folder."""
        tensors = {
            "features.mean": self.features.mean, "features.block_scale": self.features.block_scale,
            "features.basis": self.features.basis.astype(np.float32), "features.score_std": self.features.score_std,
            "vertex.offsets": self.vertex_offsets, "vertex.index": self.vertex_index.astype(np.int32),
            "vertex.mean": self.vertex_mean, "vertex.coef": self.vertex_coef.astype(np.float16),
        }
        if self.latent_mean is not None:
            tensors.update({"latent.mean": self.latent_mean, "latent.coef": self.latent_coef.astype(np.float16)})
        for kind, part in self.map_parts.items():
            tensors.update(part.tensors(f"map.{kind}"))
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "ExpressionPrior":
        """Load a prior folder (safetensors only)."""
        folder = Path(folder)
        try:
            data = json.loads((folder / CONFIG_NAME).read_text())
            config = ExpressionPriorConfig(**data)
        except FileNotFoundError:
            raise ExpDiffInputError(folder / CONFIG_NAME, "expression prior config not found") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise ExpDiffInputError(folder / CONFIG_NAME, f"not an expression prior config ({exc})") from None
        require_safetensors(folder)
        t = {k: v.numpy() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
        f = {k: t[f"features.{k}"].astype(np.float64) for k in ("mean", "block_scale", "basis", "score_std")}
        features = IdentityFeatures(**f)
        e, k = len(config.expressions), features.n_components
        s = t["vertex.index"].shape[0]
        if t["vertex.offsets"].shape != (e + 1,) or t["vertex.coef"].shape != (k, s, 3) or t["vertex.mean"].shape != (s, 3):
            raise ExpDiffInputError(folder / WEIGHTS_NAME, "vertex coefficients do not match the config's "
                                    f"{e} units and {k} components")
        size = map_size(config.map_layout, config.map_resolution)
        map_parts = {kind: SparseChange.from_tensors(t, f"map.{kind}", e, int(k), size, folder / WEIGHTS_NAME)
                     for kind, (k, _) in config.map_tuning.items()}
        return cls(config, features, t["vertex.offsets"], t["vertex.index"], t["vertex.mean"],
                   t["vertex.coef"].astype(np.float32), t.get("latent.mean"),
                   None if "latent.coef" not in t else t["latent.coef"].astype(np.float32), map_parts)


def unit_weights(expressions: Sequence[Mapping[str, float]], index: Mapping[str, int]) -> np.ndarray:
    """(N_expr, E) float32 mixing weights from ``{unit: weight}`` dicts; ``index`` {unit: column} (others weigh 0)."""
    out = np.zeros((len(expressions), len(index)), np.float32)
    for row, mix in enumerate(expressions):
        for unit, w in mix.items():
            if unit in index:
                out[row, index[unit]] += float(w)
    return out


def fit_expression_prior(neutral_vertices: np.ndarray, neutral_map_features: np.ndarray,
                         vertex_changes: Mapping[str, np.ndarray], *, n_components: int, ridge: float,
                         map_kinds: Sequence[str], udims: Sequence[int],
                         latent_changes: Mapping[str, np.ndarray] | None = None, latent_components: int = 8,
                         latent_rows: Sequence[int] | None = None, fitted_on: Mapping | None = None) -> ExpressionPrior:
    """Fit the prior on N training identities.

    neutral_vertices (N, V, 3); neutral_map_features (N, Fm) from ``coarse_maps``; vertex_changes
    {expression: (N, V, 3)} (expression minus neutral); latent_changes {expression: (n, M, C, h, w)} of the
    identities ``latent_rows`` (default: all N, in order).
    """
    n, v, _ = neutral_vertices.shape
    features = IdentityFeatures.fit(neutral_vertices.reshape(n, -1), neutral_map_features, n_components)
    scores = features.scores(neutral_vertices.reshape(n, -1), neutral_map_features)
    operator = ridge_operator(scores, ridge)  # (K, N)
    expressions = list(vertex_changes)

    def coefficients(y: np.ndarray, op: np.ndarray = operator) -> tuple[np.ndarray, np.ndarray]:
        flat = y.reshape(len(y), -1).astype(np.float64)
        mean = flat.mean(axis=0)
        return mean.reshape(y.shape[1:]), (op @ (flat - mean)).reshape(-1, *y.shape[1:])

    offsets, index, means, coefs = [0], [], [], []
    for e in expressions:
        moving = np.flatnonzero(np.abs(vertex_changes[e]).max(axis=(0, 2)) > MOVING)
        mean, coef = coefficients(vertex_changes[e][:, moving])
        offsets.append(offsets[-1] + moving.size)
        index.append(moving)
        means.append(mean)
        coefs.append(coef)
    lm = lc = None
    latent_shape, k_latent = None, 0
    if latent_changes is not None:
        k_latent = int(min(latent_components, features.n_components))
        rows = np.arange(n) if latent_rows is None else np.asarray(latent_rows)
        sub = scores[rows, :k_latent]
        centre = sub.mean(axis=0)  # scores are centred on all N identities; the latents may cover fewer
        latent_operator = ridge_operator(sub - centre, ridge)
        lm, lc = zip(*(coefficients(latent_changes[e], latent_operator) for e in expressions))
        lm = [m - np.tensordot(centre, c, axes=1) for m, c in zip(lm, lc)]
        latent_shape = list(lm[0].shape)
    config = ExpressionPriorConfig(expressions, int(v), features.n_components, float(ridge), list(map_kinds),
                                   [int(u) for u in udims], latent_shape, k_latent, fitted_on=dict(fitted_on or {}))
    return ExpressionPrior(config, features, np.asarray(offsets), np.concatenate(index), np.concatenate(means),
                           np.concatenate(coefs, axis=1), None if lm is None else np.stack(lm),
                           None if lc is None else np.stack(lc))


# ------------------------------------------------------------------------------------------ the map part
def map_layout(kinds: Sequence[str], udims: Sequence[int]) -> list[list]:
    """[[kind, udim, channels], ...] of ``kinds`` x ``udims``, kind-major: the order maps are flattened in."""
    return [[k, int(u), MAP_SPECS[k]["channels"]] for k in kinds for u in udims]


def map_size(layout: Sequence[Sequence], resolution: int) -> int:
    """Length of the flattened maps of ``layout`` [[kind, udim, channels], ...] at ``resolution``^2 texels."""
    return sum(int(c) for _, _, c in layout) * resolution * resolution


def map_slices(layout: Sequence[Sequence], texels: int) -> dict[str, list[slice]]:
    """{kind: [slice of the flattened maps, one per tile]} for ``layout`` with ``texels`` texels per channel."""
    bounds = np.cumsum([0] + [int(c) * texels for _, _, c in layout])
    out: dict[str, list[slice]] = {}
    for i, (kind, _, _) in enumerate(layout):
        out.setdefault(kind, []).append(slice(int(bounds[i]), int(bounds[i + 1])))
    return out


def flatten_maps(maps: Maps, layout: Sequence[Sequence]) -> np.ndarray:
    """{kind: {udim: (C, R, R)}} -> (sum C * R * R,) float32 in ``layout`` order."""
    return np.concatenate([np.asarray(maps[kind][int(udim)], np.float32).reshape(-1) for kind, udim, _ in layout])


def unflatten_maps(flat: np.ndarray, layout: Sequence[Sequence], resolution: int) -> Maps:
    """Inverse of :func:`flatten_maps`: (D,) -> {kind: {udim: (C, R, R) float32}} (views of ``flat``)."""
    out: dict[str, dict[int, np.ndarray]] = {}
    start = 0
    for kind, udim, channels in layout:
        size = int(channels) * resolution * resolution
        out.setdefault(kind, {})[int(udim)] = flat[start:start + size].reshape(int(channels), resolution, resolution)
        start += size
    return out


@dataclass
class SparseChange:
    """Per-unit ridge coefficients over the entries each unit changes: ``offsets`` (E + 1,) into ``index`` (S,)
    entry ids, ``mean`` (S,) and ``coef`` (k, S): the change of entry ``index[s]`` is ``mean[s] + phi[:k] @ coef[:, s]``.
    Stored in float16 (relative 5e-4 of a change).
    """

    offsets: np.ndarray
    index: np.ndarray
    mean: np.ndarray
    coef: np.ndarray

    def add_change(self, out: np.ndarray, scores: np.ndarray, mix: np.ndarray) -> None:
        """Add to ``out`` (N_expr, D) the change for each row of mixing weights ``mix`` (N_expr, E), given the
        identity ``scores`` (K >= k,)."""
        k = self.coef.shape[0]
        for e in np.flatnonzero(np.abs(mix).sum(axis=0)):
            part = slice(int(self.offsets[e]), int(self.offsets[e + 1]))
            unit = self.mean[part].astype(np.float32) + scores[:k] @ self.coef[:, part].astype(np.float32)
            out[:, self.index[part]] += mix[:, e, None] * unit

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.offsets": self.offsets.astype(np.int64), f"{prefix}.index": self.index.astype(np.int32),
                f"{prefix}.mean": self.mean.astype(np.float16), f"{prefix}.coef": self.coef.astype(np.float16)}

    @classmethod
    def from_tensors(cls, t: Mapping[str, np.ndarray], prefix: str, units: int, components: int, size: int,
                     source: Path) -> "SparseChange":
        try:
            part = cls(t[f"{prefix}.offsets"].astype(np.int64), t[f"{prefix}.index"].astype(np.int64),
                       t[f"{prefix}.mean"], t[f"{prefix}.coef"])
        except KeyError as exc:
            raise ExpDiffInputError(source, f"the config has a {prefix} part but the weights lack {exc}") from None
        s = part.index.shape[0]
        if (part.offsets.shape != (units + 1,) or part.mean.shape != (s,) or part.coef.shape != (components, s)
                or (s and (part.index.min() < 0 or part.index.max() >= size))):
            raise ExpDiffInputError(source, f"{prefix} coefficients do not match the config's {units} units, "
                                    f"{components} components and {size} entries")
        return part


def fit_map_change(scores: np.ndarray, changes: Mapping[str, np.ndarray], expressions: Sequence[str],
                   layout: Sequence[Sequence], resolution: int, tuning: Mapping[str, tuple[int, float]],
                   changing: float = MAP_CHANGING) -> dict[str, SparseChange]:
    """The map part, {kind: SparseChange}, from training ``scores`` (N, K) and flattened map ``changes``
    {expression: (N, D)} in ``layout`` order.

    Per unit and kind, the entries some identity changes by more than ``changing``, regressed on the first
    ``tuning[kind][0]`` scores with ridge ``tuning[kind][1]``.
    """
    parts = {}
    for kind, slices in map_slices(layout, resolution * resolution).items():
        kind_entries = np.concatenate([np.arange(sl.start, sl.stop) for sl in slices])
        k, ridge = int(tuning[kind][0]), float(tuning[kind][1])
        operator = ridge_operator(scores[:, :k], ridge)  # (k, N)
        offsets, index, means, coefs = [0], [], [], []
        for e in expressions:
            y = np.asarray(changes[e][:, kind_entries], np.float32)
            keep = np.flatnonzero(np.abs(y).max(axis=0) > changing)
            y = y[:, keep]
            mean = y.mean(axis=0)
            offsets.append(offsets[-1] + keep.size)
            index.append(kind_entries[keep])
            means.append(mean)
            coefs.append((operator @ (y - mean)).astype(np.float32))
        parts[kind] = SparseChange(np.asarray(offsets), np.concatenate(index), np.concatenate(means),
                                   np.concatenate(coefs, axis=1))
    return parts
