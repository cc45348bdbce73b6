"""How much of a face the latent codec keeps: maps -> encode -> decode, measured the way the pipeline uses them.

Two readings per held-out subject and expression (issue "Unified representation", codec acceptance):

- *absolute*: the decoded position map sampled back at every vertex and added to the template, against the
  true vertices (mean vertex error, mm), and each decoded BRDF map against the true one (PSNR);
- *through Eq. 9*: the decoded (expression - neutral) difference added to the subject's true neutral
  (:func:`expdiff_core.uv.recover.recover_mesh`) and to its true neutral maps
  (:func:`expdiff_core.pipelines.expdiff.transfer_map`). This is the best any denoiser can do with this
  codec: it would have to produce the true latents exactly.

A change codec (``LatentCodec.encodes_change``) is read the way the pipeline reads it: each expression's change
(its maps minus the neutral's) is encoded and decoded, and the decoded change is added to the true neutral
(its *absolute* reading is the same thing, so it is not repeated). Both codecs also report the spurious motion:
the mean displacement, after Eq. 9, of the vertices the expression does not move (true motion < 1 micron).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..facs import NEUTRAL
from ..io.dataset import Dataset
from ..models.vae import LatentCodec
from ..training.encode import POSITION, dataset_rasters, subject_maps
from ..uv.position_map import PositionMapConfig
from ..uv.raster import VertexSampler
from ..uv.recover import recover_mesh
from .metrics import MM_PER_UNIT, fvd, psnr_batch


class PooledChanges:
    """A reference "codec" of changes with no learning: area-pool by ``factor``, upsample bilinearly.

    What a linear latent of the same downsampling keeps; a learned change codec should do better.
    """

    encodes_change = True

    def __init__(self, factor: int):
        self.factor = int(factor)

    def encode(self, maps: torch.Tensor, kind: str) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(torch.as_tensor(maps).float(), self.factor)

    def decode(self, latents: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        return torch.nn.functional.interpolate(latents, scale_factor=self.factor, mode="bilinear", align_corners=False)


@dataclass
class CodecRoundTrip:
    """Means over subjects x expressions. mm: mean vertex error; psnr: {kind: dB}; samples: count.

    still_mm: mean displacement of the vertices the expression leaves still; absolute_mm is NaN for a change codec.
    """

    absolute_mm: float
    eq9_mm: float
    neutral_copy_mm: float
    still_mm: float
    psnr: dict[str, float] = field(default_factory=dict)
    transfer_psnr: dict[str, float] = field(default_factory=dict)
    samples: int = 0


@torch.no_grad()
def codec_round_trip(dataset: Dataset, codec: LatentCodec, subjects: Sequence[str] | None = None, *,
                     position: PositionMapConfig = PositionMapConfig(), cache_dir=None,
                     progress: bool = True, textures: bool = True) -> CodecRoundTrip:
    """Measure ``codec`` on ``subjects`` (default: all) x every non-neutral expression of ``dataset``.

    textures=False: geometry only (the BRDF maps are most of a CPU's time: decoding runs at ~6 maps/s at 128^2).
    """
    from ..pipelines.expdiff import transfer_map

    subjects = list(subjects or dataset.subjects)
    template = dataset.template()
    rasters = dataset_rasters(dataset, cache_dir)
    scale = position.scale_in(template.units)
    zero = {u: np.zeros((3, dataset.resolution, dataset.resolution), np.float32) for u in rasters}
    kinds = list(dataset.map_kinds) if textures else []
    expressions = [e for e in dataset.expressions if e != NEUTRAL]
    absolute, eq9, copy, still = [], [], [], []
    change = getattr(codec, "encodes_change", False)
    psnr: dict[str, list[float]] = {k: [] for k in kinds}
    transfer: dict[str, list[float]] = {k: [] for k in kinds}
    for subject in tqdm(subjects, desc="codec round trip", unit="subject", disable=not progress):
        maps = {e: subject_maps(dataset, subject, e, rasters, position) for e in [NEUTRAL, *expressions]}
        decoded = {e: {} for e in maps}
        for kind in [POSITION, *kinds]:
            keys = [(e, u) for e in (expressions if change else maps) for u in rasters]
            batch = torch.from_numpy(np.stack([maps[e][kind][u] for e, u in keys]))
            if change:  # decoded changes, on the true neutral: what the pipeline adds them to
                batch = batch - torch.from_numpy(np.stack([maps[NEUTRAL][kind][u] for _, u in keys]))
            for (e, u), image in zip(keys, codec.decode(codec.encode(batch, kind), kind).float().cpu().numpy()):
                base = maps[NEUTRAL][kind][u] if change else 0.0
                decoded[e].setdefault(kind, {})[u] = base + image
        if change:
            decoded[NEUTRAL] = maps[NEUTRAL]
        neutral_vertices = dataset.load_vertices(subject, NEUTRAL)
        neutral = template.with_vertices(neutral_vertices)
        sampler = VertexSampler(neutral, rasters)
        template_sampler = VertexSampler(template, rasters)
        for e in expressions:
            true = dataset.load_vertices(subject, e)
            if not change:
                back = recover_mesh(template, decoded[e][POSITION], zero, rasters, scale, sampler=template_sampler)
                absolute.append(fvd(back.vertices, true, template.units))
            moved = recover_mesh(neutral, decoded[e][POSITION], decoded[NEUTRAL][POSITION], rasters, scale,
                                 sampler=sampler)
            eq9.append(fvd(moved.vertices, true, template.units))
            keep = np.linalg.norm(true - neutral_vertices, axis=1) * MM_PER_UNIT[template.units] < 1e-3
            if keep.any():
                still.append(fvd(moved.vertices[keep], neutral_vertices[keep], template.units))
            copy.append(fvd(neutral_vertices, true, template.units))
            for kind in kinds:
                truth = [maps[e][kind][u] for u in rasters]
                psnr[kind].extend(psnr_batch([decoded[e][kind][u] for u in rasters], truth).tolist())
                moved_maps = [transfer_map(maps[NEUTRAL][kind][u], decoded[e][kind][u], decoded[NEUTRAL][kind][u], kind)
                              for u in rasters]
                transfer[kind].extend(psnr_batch(moved_maps, truth).tolist())
    return CodecRoundTrip(float(np.mean(absolute)) if absolute else float("nan"), float(np.mean(eq9)),
                          float(np.mean(copy)), float(np.mean(still)) if still else float("nan"),
                          {k: float(np.mean(v)) for k, v in psnr.items()},
                          {k: float(np.mean(v)) for k, v in transfer.items()}, len(eq9))
