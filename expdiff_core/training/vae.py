"""Train the offline-default latent codec: a small AutoencoderKL on UV maps of every kind.

Input is any sized collection of ``(kind, map)`` pairs (a torch Dataset or a list): ``kind`` one of
``expdiff_core.models.vae.MAP_KINDS``, ``map`` a (C, H, W) float tensor in that kind's range. Every map goes
through the same ``LatentCodec.vae_input`` the codec uses at inference (range mapping, then the per-kind
standardisation a fresh codec measures on its training maps), so training and use see identical inputs.
Loss: L1 + MSE reconstruction in that space plus a small KL term; AdamW with cosine decay.
The result is a diffusers folder (config.json + safetensors) with metrics.json and a model card README.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..device import autocast, resolve_device
from ..errors import ExpDiffInputError
from ..facs import NEUTRAL
from ..models.vae import (MAP_KINDS, RANGE_TOLERANCE, ChangeScales, LatentCodec, MapNormalization, map_kind,
                          offline_vae_config, to_vae_input)

if TYPE_CHECKING:
    from ..io.dataset import Dataset
    from ..uv.position_map import PositionMapConfig

MapSample = tuple[str, torch.Tensor]
ProgressCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class VAETrainConfig:
    """Settings of one VAE training run (all plain values, saved into metrics.json)."""

    steps: int = 2000
    batch_size: int = 8
    # Random square crops (texels); None trains on whole maps. GroupNorm and the mid-block attention see
    # the whole image, so a codec trained on crops does worse on whole maps (measured: 32^2 crops of 64^2
    # maps lose 10-15 dB on whole maps); crop only to go faster, e.g. for a first look.
    crop_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    # Per latent element. Keeps the posterior near N(0, I) so the diffusion model sees regular latents,
    # while staying ~100x below the reconstruction terms at the PSNR we aim for.
    kl_weight: float = 1e-4
    grad_clip: float = 1.0
    # Weight of the neutral-paired difference loss: each training map is also reconstructed together with
    # the same subject's neutral map (same kind and tile), and |(D(E(x)) - D(E(x0))) - (x - x0)| is
    # penalised. Eq. 9 and the texture transfer use exactly these decoded differences, and a codec trained
    # on reconstructions alone can get them wrong by more than many expressions move (measured on a codec
    # without per-kind standardisation: 0.74 mm mean vertex error through encode -> decode -> Eq. 9 on true
    # latents, 0.60 mm after 600 paired steps; the standardised offline default: 0.19 mm without it).
    # 0 = off; needs maps with neutrals.
    pair_weight: float = 0.0
    # A trained codec folder to start from (fine-tuning, e.g. with pair_weight); None = fresh weights.
    init_from: str | None = None
    # A fresh codec standardises each kind (models.vae.MapNormalization), measured on scaling_samples
    # training maps (an even share per kind); False keeps the plain [-1, 1] range mapping. A warm start
    # keeps its codec's own.
    normalize_kinds: bool = True
    # A change codec (models.vae.ChangeScales): trained on expression-relative maps (expression - neutral),
    # each kind companded by its own scale, measured on scaling_samples training changes. Needs maps that are
    # changes (DatasetMaps(change=True)); a warm start from an absolute codec keeps its weights only.
    change: bool = False
    change_power: float = 0.5
    # Changes are sparse: most (unit, kind, tile) maps barely change (the back of the head never does), and a
    # change codec trained on every map learns to decode nothing (measured: 1200 steps on all maps decoded
    # ~20% of jawOpen's chin and none of eyeBlink's lid). Training draws only maps whose largest companded
    # change reaches this (0.1: 1% of the kind's scale at power 0.5); the zero change is exact by
    # construction (decoded against the decoded zero change).
    change_min: float = 0.1
    held_out_fraction: float = 0.1  # used only when no held-out set is given
    scaling_samples: int = 256  # training maps encoded to measure the latent std -> scaling_factor
    held_out_max_maps: int | None = 512  # a seeded random subset keeps evaluation to minutes on a CPU
    seed: int = 0
    device: str = "auto"
    model: dict[str, Any] = field(default_factory=offline_vae_config)

    def validate(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "kl_weight": self.kl_weight >= 0,
            "pair_weight": self.pair_weight >= 0,
            "held_out_fraction": 0 < self.held_out_fraction < 1,
            "scaling_samples": self.scaling_samples >= 1,
            "held_out_max_maps": self.held_out_max_maps is None or self.held_out_max_maps >= 1,
            "change_power": 0 < self.change_power <= 1,
            "change_min": 0 <= self.change_min < 1,
            "pair_weight with change": not (self.change and self.pair_weight > 0),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ExpDiffInputError(None, f"invalid VAE training setting(s): {bad}")


def psnr_db(reference: torch.Tensor, estimate: torch.Tensor, value_range: float) -> float:
    """PSNR (dB) of ``estimate`` against ``reference`` (same shape) for signals spanning ``value_range``."""
    mse = torch.mean((reference.double() - estimate.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(value_range ** 2 / mse)


def _checked_sample(maps: Sequence[MapSample], index: int) -> MapSample:
    """maps[index] as a float32 tensor, its shape and values checked (changes: within +-the kind's span)."""
    kind, image = maps[index]
    spec = map_kind(kind)
    image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim != 3 or image.shape[0] not in (spec.channels, 3):
        channels = "3" if spec.channels == 3 else f"{spec.channels} or 3"
        raise ExpDiffInputError(None, f"map {index} ({kind}) must be ({channels}, H, W), "
                                      f"got shape {tuple(image.shape)}")
    low, high = (spec.low - spec.high, spec.high - spec.low) if _are_changes(maps) else (spec.low, spec.high)
    lo, hi = float(image.min()), float(image.max())
    if not (low - RANGE_TOLERANCE <= lo and hi <= high + RANGE_TOLERANCE):
        raise ExpDiffInputError(None, f"map {index} ({kind}) values span [{lo:.4g}, {hi:.4g}], "
                                      f"expected within [{low:g}, {high:g}]")
    return kind, image


def _are_changes(maps: Sequence[MapSample]) -> bool:
    return bool(getattr(maps, "change", False))


def _split(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, round(count * fraction))
    if held >= count:
        raise ExpDiffInputError(None, f"{count} map(s) are too few to hold out {fraction:.0%} and still train")
    return sorted(order[held:]), sorted(order[:held])


def _subset(indices: Sequence[int], limit: int | None, seed: int) -> list[int]:
    """At most ``limit`` of ``indices``, drawn at random (strides could alias with the kind/tile nesting)."""
    indices = list(indices)
    if limit is None or len(indices) <= limit:
        return indices
    pick = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:limit]
    return sorted(indices[i] for i in pick.tolist())


def _kind_of(maps: Sequence[MapSample], index: int) -> str:
    kind_of = getattr(maps, "kind_of", None)
    return kind_of(index) if kind_of is not None else maps[index][0]


class DatasetMaps(Sequence):
    """Every map tile of some subjects of an ExpDiff dataset as ``(kind, (C, R, R) tensor)``, read on access.

    Items nest subject > expression > kind > UDIM tile; kinds are ``position`` plus the dataset's BRDF kinds.
    Position maps are made from the stored vertices as the latent encoder makes them: displacement from the
    dataset template's shape per tile (``training.encode.dataset_rasters``), normalised by ``position``.
    ``change=True``: every non-neutral expression's map minus the same subject's neutral map (what a change
    codec encodes); the neutral itself is left out.
    """

    def __init__(self, dataset: "Dataset", subjects: Sequence[str], position: "PositionMapConfig | None" = None,
                 *, expressions: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
                 change: bool = False):
        from ..uv.position_map import PositionMapConfig

        unknown = sorted(set(subjects) - set(dataset.subjects))
        if unknown:
            raise ExpDiffInputError(dataset.root, f"subject(s) {unknown} not in this dataset")
        self.dataset = dataset
        self.position = position or PositionMapConfig()
        self.kinds = ["position", *dataset.map_kinds]
        self.change = change
        chosen = [e for e in (expressions or dataset.expressions) if not (change and e == NEUTRAL)]
        self.items = [(s, e, k, u) for s in subjects for e in chosen for k in self.kinds for u in dataset.udims]
        self._cache_dir = cache_dir
        self._rasters = None
        self._positions: dict[tuple[str, str], dict[int, Any]] = {}
        self._index: dict[tuple[str, str, str, int], int] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def kind_of(self, index: int) -> str:
        """The kind of item ``index`` without reading it."""
        return self.items[index][2]

    def neutral_index(self, index: int) -> int:
        """Index of the same subject's neutral map of item ``index``'s kind and tile."""
        subject, _, kind, udim = self.items[index]
        if self._index is None:
            self._index = {item: i for i, item in enumerate(self.items)}
        found = self._index.get((subject, NEUTRAL, kind, udim))
        if found is None:
            raise ExpDiffInputError(self.dataset.root, f"subject {subject!r} has no neutral {kind} map of tile {udim} "
                                    "to pair with")
        return found

    def __getitem__(self, index: int) -> MapSample:
        subject, expression, kind, udim = self.items[index]
        image = self._map(subject, expression, kind, udim)
        if self.change:
            image = image - self._map(subject, NEUTRAL, kind, udim)
        return kind, torch.from_numpy(image)

    def _map(self, subject: str, expression: str, kind: str, udim: int) -> Any:
        if kind != "position":
            return self.dataset.load_map(subject, expression, kind, udim)
        return self._position_maps(subject, expression)[udim]

    def _position_maps(self, subject: str, expression: str) -> dict[int, Any]:
        from ..uv.position_map import position_maps
        from .encode import dataset_rasters

        key = (subject, expression)
        if key not in self._positions:
            if self._rasters is None:
                self._rasters = dataset_rasters(self.dataset, self._cache_dir)
            template = self.dataset.template()
            if len(self._positions) >= 8:  # a few recent ones: a change needs its expression's and its neutral's
                self._positions.pop(next(iter(self._positions)))
            self._positions[key] = position_maps(self.dataset.load_vertices(subject, expression), template.vertices,
                                                 self._rasters, self.position.scale_in(template.units))
        return self._positions[key]


class _Batches:
    """Seeded epochs of shuffled indices -> (B, 3, S, S) VAE-space batches with random crops."""

    def __init__(self, maps: Sequence[MapSample], indices: list[int], config: VAETrainConfig, factor: int,
                 vae_input: Callable[[torch.Tensor, str], torch.Tensor]):
        self.maps, self.indices, self.config, self.vae_input = maps, indices, config, vae_input
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.queue: list[int] = []
        if config.crop_size is not None and (config.crop_size % factor or config.crop_size < factor):
            raise ExpDiffInputError(None, f"crop_size {config.crop_size} must be a positive multiple of {factor}")
        if config.pair_weight > 0 and not hasattr(maps, "neutral_index"):
            raise ExpDiffInputError(None, "pair_weight needs maps that know each map's neutral (DatasetMaps)")

    def next(self) -> torch.Tensor:
        """(B, 3, S, S); with ``pair_weight`` (2B, 3, S, S): the B maps, then their neutrals in the same order."""
        pairs = self.config.pair_weight > 0
        images, neutrals = [], []
        skipped = 0
        while len(images) < self.config.batch_size:
            if not self.queue:
                perm = torch.randperm(len(self.indices), generator=self.generator).tolist()
                self.queue = [self.indices[i] for i in perm]
            index = self.queue.pop()
            kind, image = _checked_sample(self.maps, index)
            window = self._window(image, index)
            x = self.vae_input(_cut(image, window)[None], kind)[0]
            if self.config.change and x.abs().max() < self.config.change_min and skipped < 50 * self.config.batch_size:
                skipped += 1  # a map that barely changes (bounded, so a corpus of them still trains)
                continue
            images.append(x)
            if pairs:
                _, neutral = _checked_sample(self.maps, self.maps.neutral_index(index))
                neutrals.append(self.vae_input(_cut(neutral, window)[None], kind)[0])
        images += neutrals
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise ExpDiffInputError(None, f"maps of different sizes {sorted(sizes)} in one batch; set crop_size")
        return torch.stack(images)

    def _window(self, image: torch.Tensor, index: int) -> tuple[int, int, int] | None:
        """(top, left, size) of a random crop, None for the whole map."""
        size = self.config.crop_size
        if size is None:
            return None
        height, width = image.shape[-2:]
        if height < size or width < size:
            raise ExpDiffInputError(None, f"map {index} is {height}x{width}, smaller than crop_size {size}")
        top = int(torch.randint(0, height - size + 1, (1,), generator=self.generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=self.generator))
        return top, left, size


def _cut(image: torch.Tensor, window: tuple[int, int, int] | None) -> torch.Tensor:
    if window is None:
        return image
    top, left, size = window
    return image[:, top:top + size, left:left + size]


def evaluate_codec(codec: LatentCodec, maps: Sequence[MapSample], indices: Sequence[int] | None = None
                   ) -> dict[str, dict[str, float]]:
    """Per map kind: mean / min PSNR (dB, over the kind's value range), mean absolute error, max error, count.

    Each map is encoded (posterior mean) and decoded whole, in its own channel count. For a change codec the
    peak is the span of changes it represents (twice the kind's change scale).
    """
    per_kind: dict[str, list[tuple[float, float, float]]] = {}
    pending: dict[tuple, list[torch.Tensor]] = {}

    def flush(key: tuple) -> None:
        kind = key[0]
        spec = MAP_KINDS[kind]
        peak = 2 * codec.change_scales.scale(kind) if codec.encodes_change else spec.high - spec.low
        images = torch.stack(pending.pop(key))
        decoded = codec.reconstruct(images, kind)
        for image, estimate in zip(images, decoded):
            error = (estimate - image).abs()
            per_kind.setdefault(kind, []).append((psnr_db(image, estimate, peak), error.mean().item(), error.max().item()))

    # Same-kind, same-shape maps are reconstructed together, codec.batch_size at a time.
    for index in (range(len(maps)) if indices is None else indices):
        kind, image = _checked_sample(maps, index)
        key = (kind, tuple(image.shape))
        pending.setdefault(key, []).append(image)
        if len(pending[key]) == codec.batch_size:
            flush(key)
    for key in list(pending):
        flush(key)
    report = {}
    for kind, rows in sorted(per_kind.items()):
        report[kind] = {
            "psnr_db": sum(r[0] for r in rows) / len(rows),
            "psnr_min_db": min(r[0] for r in rows),
            "mean_abs_error": sum(r[1] for r in rows) / len(rows),
            "max_abs_error": max(r[2] for r in rows),
            "maps": len(rows),
        }
    return report


def measure_normalization(maps: Sequence[MapSample], indices: Sequence[int], limit: int | None = None,
                          seed: int = 0) -> MapNormalization:
    """Per-kind standardisation (``MapNormalization.measure``) of ``maps[indices]``, whole maps.

    limit: at most about this many maps in all, drawn at random *per kind* (an even share each), so that
    every kind present in ``indices`` is measured however few maps are drawn.
    """
    by_kind: dict[str, list[int]] = {}
    for index in indices:
        by_kind.setdefault(_kind_of(maps, index), []).append(index)
    share = None if limit is None else max(1, limit // max(1, len(by_kind)))
    images: dict[str, list[torch.Tensor]] = {}
    for kind_indices in by_kind.values():
        for index in _subset(kind_indices, share, seed):
            kind, image = _checked_sample(maps, index)
            images.setdefault(kind, []).append(to_vae_input(image[None].float(), kind)[0])
    return MapNormalization.measure(images)


def measure_change_scales(maps: Sequence[MapSample], indices: Sequence[int], limit: int | None = None,
                          seed: int = 0, power: float = 0.5) -> ChangeScales:
    """Per-kind change scales (``ChangeScales.measure``) of the changes ``maps[indices]``.

    A scale is a largest change, so every expression must be looked at (a random draw of a few hundred maps
    misses jawOpen, whose chin moves twice as far as most units): ``limit`` is shared evenly among the
    (kind, expression) groups of DatasetMaps, at least 2 maps each.
    """
    by_group: dict[tuple[str, str], list[int]] = {}
    items = getattr(maps, "items", None)
    for index in indices:
        expression = items[index][1] if items is not None else ""
        by_group.setdefault((_kind_of(maps, index), expression), []).append(index)
    share = None if limit is None else max(2, limit // max(1, len(by_group)))
    changes: dict[str, list[torch.Tensor]] = {}
    for group_indices in by_group.values():
        for index in _subset(group_indices, share, seed):
            kind, image = _checked_sample(maps, index)
            changes.setdefault(kind, []).append(image)
    return ChangeScales.measure(changes, power=power)


@torch.no_grad()
def measure_scaling_factor(codec: LatentCodec, maps: Sequence[MapSample], indices: Sequence[int]) -> float:
    """1 / std of the posterior-mean latents of ``maps[indices]``: scaled latents get unit variance.

    Independent of the codec's current ``scaling_factor`` (latents are unscaled before measuring).
    """
    total = total_sq = count = 0.0
    for index in indices:
        kind, image = _checked_sample(maps, index)
        z = codec.encode(image, kind).double() / codec.scaling_factor
        total += z.sum().item()
        total_sq += (z ** 2).sum().item()
        count += z.numel()
    variance = total_sq / count - (total / count) ** 2
    return 1.0 / math.sqrt(max(variance, 1e-12))


def _model_card(codec: LatentCodec, metrics: dict[str, Any]) -> str:
    lines = [
        "# ExpDiff offline-default latent codec (AutoencoderKL)",
        "",
        "A small AutoencoderKL of the Stable Diffusion family (8x downsampling, "
        f"{codec.latent_channels} latent channels), trained by `expdiff_core.training.vae` on ExpDiff UV maps "
        "of every kind (position maps in [-1, 1]; albedo, specular, roughness, normal in [0, 1]; one-channel "
        "maps replicated to 3). Load with `expdiff_core.models.vae.LatentCodec.from_pretrained(folder)`.",
        "",
        *_normalization_lines(codec),
        f"- block widths {list(codec.config.block_out_channels)}, layers per block {codec.config.layers_per_block}, "
        f"{metrics['parameters']:,} parameters",
        f"- scaling factor {codec.scaling_factor:.5f} (1 / std of training latents)",
        f"- trained {metrics['steps']} steps, batch {metrics['config']['batch_size']}, "
        f"crop {metrics['config']['crop_size']}, seed {metrics['config']['seed']}, "
        f"{metrics['seconds']:.0f} s on {metrics['device']}",
        f"- training maps per kind: {metrics['train_maps']}",
        "",
        "## Held-out reconstruction",
        "",
        "| kind | maps | PSNR (dB) | min PSNR (dB) | mean abs error |",
        "|---|---|---|---|---|",
    ]
    for kind, row in metrics["held_out"].items():
        lines.append(f"| {kind} | {row['maps']} | {row['psnr_db']:.2f} | {row['psnr_min_db']:.2f} | "
                     f"{row['mean_abs_error']:.5f} |")
    return "\n".join(lines) + "\n"


def _normalization_lines(codec: LatentCodec) -> list[str]:
    if codec.change_scales is not None:
        scales = codec.change_scales
        lines = ["A **change codec**: it encodes expression-relative maps (expression - neutral, in map units) and "
                 "decodes against the decoded zero change (`change_scales.json`): VAE input "
                 f"`sign(d) * |d / scale| ** {scales.power:g}`, scale 1.1x the kind's largest change on training maps "
                 "(larger changes are clipped, with a warning).", "", "| kind | scale |", "|---|---|"]
        return lines + [f"| {k} | {v:.5f} |" for k, v in sorted(scales.scales.items())] + [""]
    if codec.normalization is None:
        return ["Inputs: the plain [-1, 1] range mapping of each kind.", ""]
    lines = ["Inputs are standardised per kind after the [-1, 1] range mapping (`map_normalization.json`): "
             "`(x - offset) / scale`, offset the kind's mean per channel and scale 3x its std on training maps.",
             "", "| kind | offset | scale |", "|---|---|---|"]
    for kind, entry in sorted(codec.normalization.kinds.items()):
        lines.append(f"| {kind} | {', '.join(f'{v:.4f}' for v in entry.offset)} | {entry.scale:.4f} |")
    return lines + [""]


def train_vae(maps: Sequence[MapSample], config: VAETrainConfig, out_dir: str | os.PathLike, *,
              held_out: Sequence[MapSample] | None = None, progress: ProgressCallback | None = None,
              show_progress: bool = True, data_info: dict[str, Any] | None = None) -> Path:
    """Train an AutoencoderKL on ``maps`` and publish it to ``out_dir`` (which must not exist yet).

    held_out: maps kept out of training for metrics.json (e.g. other identities); default: a seeded
    ``config.held_out_fraction`` of ``maps``. progress(step, steps, {"loss": ...}) is called every step.
    data_info: where the maps came from (dataset, splits, position-map scale), kept in metrics.json.
    Deterministic on CPU given ``config.seed``. Returns ``out_dir``.
    """
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ExpDiffInputError(out_dir, "output folder already exists; trained models are never overwritten")
    if len(maps) == 0:
        raise ExpDiffInputError(None, "no maps to train on")
    if held_out is None:
        train_idx, held_idx = _split(len(maps), config.held_out_fraction, config.seed)
        eval_maps = maps
    else:
        if len(held_out) == 0:
            raise ExpDiffInputError(None, "the held-out set is empty")
        train_idx, held_idx, eval_maps = list(range(len(maps))), list(range(len(held_out))), held_out
    held_idx = _subset(held_idx, config.held_out_max_maps, config.seed + 3)

    device = resolve_device(config.device)
    if config.change != _are_changes(maps):
        raise ExpDiffInputError(None, "a change codec trains on changes (DatasetMaps(change=True)) and only it does")
    if config.init_from is not None:
        codec = LatentCodec.from_pretrained(config.init_from, device=device)
        # metrics.json records the architecture actually trained, not the unused default.
        config = dataclasses.replace(config, model={k: v for k, v in dict(codec.config).items() if not k.startswith("_")})
        if config.change and not codec.encodes_change:  # an absolute codec's weights, a change codec's inputs
            codec.normalization = None
            codec.change_scales = measure_change_scales(maps, train_idx, config.scaling_samples, config.seed + 5,
                                                        config.change_power)
    else:
        codec = LatentCodec.from_config(config.model, seed=config.seed, device=device)
        if config.change:
            codec.change_scales = measure_change_scales(maps, train_idx, config.scaling_samples, config.seed + 5,
                                                        config.change_power)
        elif config.normalize_kinds:
            codec.normalization = measure_normalization(maps, train_idx, config.scaling_samples, config.seed + 5)
    vae = codec.vae.train().requires_grad_(True)
    batches = _Batches(maps, train_idx, config, codec.downsample_factor, codec.vae_input)
    noise_generator = torch.Generator().manual_seed(config.seed + 2)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, config.steps - 1), config.steps)

    started = time.perf_counter()
    curve: list[tuple[int, float]] = []
    curve_every = max(1, config.steps // 50)
    bar = tqdm(range(1, config.steps + 1), desc="train vae", unit="step", disable=not show_progress)
    for step in bar:
        x = batches.next().to(device)
        with autocast(device):
            posterior = vae.encode(x).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=noise_generator).to(device)
            z = posterior.mean + posterior.std * noise
            y = vae.decode(z).sample.float()
        l1 = (y - x).abs().mean()
        mse = ((y - x) ** 2).mean()
        kl = posterior.kl().float().mean() / posterior.mean[0].numel()
        loss = config.l1_weight * l1 + config.mse_weight * mse + config.kl_weight * kl
        if config.pair_weight > 0:
            # Second half of the batch: each map's neutral (see _Batches.next).
            half = x.shape[0] // 2
            miss = (y[:half] - y[half:]) - (x[:half] - x[half:])
            loss = loss + config.pair_weight * (config.l1_weight * miss.abs().mean() + config.mse_weight * miss.pow(2).mean())
        if not torch.isfinite(loss):
            raise ExpDiffInputError(None, f"VAE training diverged at step {step} (loss {loss.item()}); "
                                          "lower learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        values = {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}
        if step % curve_every == 0 or step == config.steps:
            curve.append((step, values["loss"]))
        bar.set_postfix(loss=f"{values['loss']:.4f}", l1=f"{values['l1']:.4f}")
        if progress is not None:
            progress(step, config.steps, values)
    bar.close()
    seconds = time.perf_counter() - started

    vae.eval().requires_grad_(False)
    scaling_idx = _subset(train_idx, config.scaling_samples, config.seed + 4)
    scaling = measure_scaling_factor(codec, maps, scaling_idx)
    vae.register_to_config(scaling_factor=scaling)
    held_metrics = evaluate_codec(codec, eval_maps, held_idx)

    def counts(source: Sequence[MapSample], indices: Sequence[int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in indices:
            kind = _kind_of(source, i)
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))

    metrics = {
        "held_out": held_metrics,
        "scaling_factor": scaling,
        "steps": config.steps,
        "seconds": seconds,
        "device": str(device),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "train_maps": counts(maps, train_idx),
        "held_out_maps": counts(eval_maps, held_idx),
        "final_loss": curve[-1][1],
        "loss_curve": curve,
        "config": dataclasses.asdict(config),
        "data": dict(data_info or {}),
    }
    codec.save_pretrained(out_dir, extra_files={
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "README.md": _model_card(codec, metrics),
    })
    return out_dir


def train_vae_on_dataset(dataset_root: str | os.PathLike, out: str | os.PathLike, config: VAETrainConfig, *,
                         position: "PositionMapConfig | None" = None, cache_dir: str | os.PathLike | None = None,
                         progress: ProgressCallback | None = None, show_progress: bool = True) -> Path:
    """Train the latent codec on an ExpDiff dataset's train split; held-out metrics on its val split.

    ``config.crop_size``: texels of the random training crops; None or the dataset's resolution trains on
    whole maps (larger is refused). ``config.model["sample_size"]`` is set to the dataset's resolution.
    Without a val split a seeded ``config.held_out_fraction`` of the train maps is held out.
    ``out`` must not exist. Returns ``out`` (config.json + safetensors + metrics.json + README.md).
    """
    from ..io.dataset import require_valid_dataset
    from ..uv.position_map import PositionMapConfig

    out = Path(out)
    if out.exists():
        raise ExpDiffInputError(out, "output folder already exists; trained models are never overwritten")
    # Headers only: every map is range-checked when the trainer reads it, so the full pixel pass is skipped.
    dataset = require_valid_dataset(dataset_root, check_pixels=False)
    train_subjects, val_subjects = dataset.split("train"), dataset.split("val")
    if not train_subjects:
        raise ExpDiffInputError(dataset.root, "the dataset's train split is empty")
    crop = config.crop_size
    if crop is not None and crop > dataset.resolution:
        raise ExpDiffInputError(dataset.root, f"crop size {crop} exceeds the dataset's "
                                              f"{dataset.resolution}x{dataset.resolution} maps")
    config = dataclasses.replace(config, crop_size=None if crop == dataset.resolution else crop,
                                 model={**config.model, "sample_size": dataset.resolution})
    position = position or PositionMapConfig()
    maps = DatasetMaps(dataset, train_subjects, position, cache_dir=cache_dir, change=config.change)
    held_out = (DatasetMaps(dataset, val_subjects, position, cache_dir=cache_dir, change=config.change)
                if val_subjects else None)
    data_info = {
        "dataset": str(dataset.root.resolve()), "resolution": dataset.resolution, "udims": dataset.udims,
        "train_subjects": train_subjects, "held_out": f"val split: {val_subjects}" if val_subjects
        else f"{config.held_out_fraction:.0%} of the train maps", "position_map": position.to_dict(),
        "train_map_count": len(maps), "map_kinds": list(maps.kinds),
    }
    return train_vae(maps, config, out, held_out=held_out, data_info=data_info, progress=progress,
                     show_progress=show_progress)
