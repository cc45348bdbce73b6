"""Held-out evaluation of the upscaling stage on synthetic identities whose truth the factory makes at 4x.

For each identity (drawn from ``EVAL_SEED``, disjoint from the training identities) and expression: the truth
is the high-resolution expression map, the inputs are the model-resolution (area-reduced) expression and neutral
maps and the high-resolution user neutral. Methods produce the high-resolution expression map:
- ``bilinear transfer``: today's ``transfer_map`` (user neutral + bilinear(expression - neutral));
- ``lanczos``: OpenImageIO lanczos3 of the expression map alone; ``lanczos transfer``: through the transfer;
- any ``MapUpscaler``: through the transfer, as the build uses it (user neutral + G(E) - G(N)).
Scores: PSNR (dB, maps in [0, 1]) over the whole face tile and inside the wrinkle mask (texels whose true
change from the neutral exceeds ``threshold`` in any channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..pipelines.expdiff import transfer_map
from .maps import MapUpscaler, lanczos

EVAL_SEED = 4_500
VAL_SEED = 4_600  # identities to choose between upscaler variants on, apart from training (4400) and reporting
DEFAULT_UNITS = ("browInnerUp_L", "browDown_R", "noseSneer_L", "mouthSmile_R", "eyeSquint_L", "jawOpen")


def _psnr(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> float:
    err = (pred.astype(np.float64) - true.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[:, mask]
    mse = float(err.mean())
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


@dataclass
class EvalCase:
    """One (identity, expression, kind): hi-res truth and neutral (C, R, R), lo-res expression and neutral."""

    identity: int
    expression: str
    kind: str
    truth: np.ndarray
    neutral: np.ndarray
    lo: np.ndarray
    lo_neutral: np.ndarray


def eval_cases(identities: int = 2, units: Sequence[str] = DEFAULT_UNITS, kinds: Sequence[str] = ("albedo", "normal"),
               model_resolution: int = 128, scale: int = 4, cache_dir=None, seed: int = EVAL_SEED) -> list[EvalCase]:
    """The held-out cases of ``identities`` identities from dataset ``seed`` (``VAL_SEED`` to choose between
    variants, ``EVAL_SEED`` to report)."""
    from ..synth.factory import ProceduralSource, identity_seed, skin_rasters
    from ..synth.skin import SkinSynthesizer

    source = ProceduralSource()
    rasters = skin_rasters(source, model_resolution * scale, cache_dir)
    cases = []
    for i in range(identities):
        ident = identity_seed(seed, i)
        identity = source.identity(ident)
        mesh = source.template.with_vertices(identity.neutral, name=f"eval{ident}")
        synth = SkinSynthesizer(mesh, rasters, identity.skin, identity.seed, identity.regions)
        neutral = synth.maps()
        for unit in units:
            maps = synth.maps(source.expression(identity, unit))
            for kind in kinds:
                hi, hn = maps[kind][1001], neutral[kind][1001]
                lo = torch.nn.functional.avg_pool2d(torch.from_numpy(hi)[None], scale)[0].numpy()
                ln = torch.nn.functional.avg_pool2d(torch.from_numpy(hn)[None], scale)[0].numpy()
                cases.append(EvalCase(ident, unit, kind, hi, hn, lo, ln))
    return cases


def method_bilinear(case: EvalCase) -> np.ndarray:
    return transfer_map(case.neutral, case.lo, case.lo_neutral, case.kind)


def method_lanczos(case: EvalCase) -> np.ndarray:
    out = lanczos(case.lo, case.truth.shape[1:])
    if case.kind == "normal":
        n = out * 2 - 1
        out = n / np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-6) * 0.5 + 0.5
    return np.clip(out, 0, 1)


def method_lanczos_transfer(case: EvalCase) -> np.ndarray:
    size = case.truth.shape[1:]
    return transfer_map(case.neutral, lanczos(case.lo, size), lanczos(case.lo_neutral, size), case.kind)


def network_method(upscaler: MapUpscaler) -> Callable[[EvalCase], np.ndarray]:
    """The build's use of ``upscaler``: user neutral + G(E) - G(N) through ``transfer_map``."""
    cache: dict[tuple[int, str], np.ndarray] = {}

    def run(case: EvalCase) -> np.ndarray:
        key = (case.identity, case.kind)
        if key not in cache:
            cache[key] = upscaler.upscale(case.lo_neutral, case.lo_neutral, case.neutral, case.kind)
        up = upscaler.upscale(case.lo, case.lo_neutral, case.neutral, case.kind)
        return transfer_map(case.neutral, up, cache[key], case.kind)

    return run


def evaluate(methods: Mapping[str, Callable[[EvalCase], np.ndarray]], cases: Sequence[EvalCase],
             threshold: float = 0.01) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {kind: {"psnr_full", "psnr_wrinkle"}}}, each the mean over cases of that kind (dB)."""
    scores: dict[str, dict[str, dict[str, list[float]]]] = {}
    for case in cases:
        mask = np.abs(case.truth - case.neutral).max(axis=0) > threshold
        for name, method in methods.items():
            pred = method(case)
            s = scores.setdefault(name, {}).setdefault(case.kind, {"psnr_full": [], "psnr_wrinkle": []})
            s["psnr_full"].append(_psnr(pred, case.truth))
            s["psnr_wrinkle"].append(_psnr(pred, case.truth, mask))
    return {m: {k: {n: float(np.nanmean(v)) for n, v in d.items()} for k, d in kinds.items()}
            for m, kinds in scores.items()}


def markdown_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], kinds: Sequence[str]) -> str:
    head = "| method | " + " | ".join(f"{k} full | {k} wrinkles" for k in kinds) + " |"
    sep = "|---|" + "---|" * (2 * len(kinds))
    rows = [f"| {m} | " + " | ".join(f"{r[k]['psnr_full']:.2f} | {r[k]['psnr_wrinkle']:.2f}" for k in kinds) + " |"
            for m, r in results.items()]
    return "\n".join([head, sep, *rows])
