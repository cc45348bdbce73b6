"""Latent codec ``E`` / ``D`` (Eq. 5 and 7): every UV map kind <-> AutoencoderKL latents.

One image VAE serves all map kinds. Each kind has a channel count and a value range; maps are rescaled to
the VAE's [-1, 1] input range, one-channel maps (specular, roughness) are replicated to 3 channels, and
latents are the posterior mean (deterministic) times the VAE's ``scaling_factor`` (minus ``shift_factor``
first when the config has one). Production uses a local Stable Diffusion VAE folder unmodified; the offline
default is a small AutoencoderKL of the same family (:func:`offline_vae_config`) trained by
``expdiff_core.training.vae``. A codec folder may also hold ``map_normalization.json``
(:class:`MapNormalization`): a per-kind offset and scale applied after the range mapping, so that every kind
fills the VAE's input range (the offline default has one; a Stable Diffusion VAE does not).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..device import autocast, resolve_device
from ..errors import ExpDiffInputError
from ..fileio import atomic_dir
from .weights import require_safetensors

RANGE_TOLERANCE = 1e-3  # maps come from float pipelines; tiny overshoots of the range are rounding, not bugs


@dataclass(frozen=True)
class MapKind:
    """A kind of UV map: its native channel count and value range inside the core."""

    name: str
    channels: int
    low: float
    high: float


MAP_KINDS: dict[str, MapKind] = {k.name: k for k in (
    MapKind("position", 3, -1.0, 1.0),   # normalised displacement from the template mean
    MapKind("albedo", 3, 0.0, 1.0),
    MapKind("specular", 1, 0.0, 1.0),
    MapKind("roughness", 1, 0.0, 1.0),
    MapKind("normal", 3, 0.0, 1.0),      # tangent-space, [0, 1] encoding
)}


def map_kind(kind: str) -> MapKind:
    """The :class:`MapKind` named ``kind``; ExpDiffInputError for an unknown name."""
    try:
        return MAP_KINDS[kind]
    except KeyError:
        raise ExpDiffInputError(None, f"unknown map kind {kind!r}; known: {list(MAP_KINDS)}") from None


def _codec_json(path: Path) -> Any:
    """The JSON of an optional codec file, None when there is none; one clear error when it is unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExpDiffInputError(path, f"unreadable JSON: {exc}") from None


@dataclass(frozen=True)
class KindNormalization:
    """``(x - offset) / scale`` on a kind's [-1, 1] VAE input; offset per channel (3,), scale > 0."""

    offset: tuple[float, float, float]
    scale: float


@dataclass(frozen=True)
class MapNormalization:
    """Per-kind standardisation of VAE inputs, stored as ``map_normalization.json`` in a codec folder.

    Why: in the [-1, 1] range mapping, the maps of a face barely vary (albedo std ~0.14, position ~0.1,
    specular ~0.01), so a codec trained on all kinds spends its capacity on the kinds with the most spread
    (normals) and reconstructs the rest little better than their mean colour. Measured on held-out
    identities, same small codec and 400 steps at 64^2: PSNR albedo 18.6 -> 26.6, position 29.9 -> 41.2,
    normal 19.5 -> 40.1 dB with this standardisation; the offline default (3000 steps at 128^2) reaches
    albedo 37.3, normal 40.7, position 53.0, roughness 34.6, specular 53.6 dB. Kinds not listed pass
    through unchanged.
    """

    kinds: Mapping[str, KindNormalization]

    FILE = "map_normalization.json"

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": {k: {"offset": list(v.offset), "scale": v.scale} for k, v in sorted(self.kinds.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | None = None) -> "MapNormalization":
        try:
            kinds = {}
            for kind, entry in data["kinds"].items():
                map_kind(kind)
                offset = tuple(float(v) for v in entry["offset"])
                scale = float(entry["scale"])
                if len(offset) != 3 or not np.isfinite(offset).all() or not (np.isfinite(scale) and scale > 0):
                    raise ValueError(f"{kind}: offset must be 3 finite numbers and scale a positive number")
                kinds[kind] = KindNormalization(offset, scale)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, ExpDiffInputError) as exc:
            raise ExpDiffInputError(source, f"invalid map normalisation: {exc}") from None
        return cls(kinds)

    @classmethod
    def load(cls, folder: Path) -> "MapNormalization | None":
        """The normalisation stored in codec ``folder``, or None when it has none."""
        data = _codec_json(folder / cls.FILE)
        return None if data is None else cls.from_dict(data, folder / cls.FILE)

    @classmethod
    def measure(cls, samples: Mapping[str, Sequence[torch.Tensor]], spread: float = 3.0) -> "MapNormalization":
        """From {kind: [(3, H, W) VAE inputs in [-1, 1]]}: offset = per-channel mean, scale = ``spread`` x std.

        spread 3 puts a kind's texels mostly inside [-1, 1] (std 1/3), like an ordinary image's.
        """
        kinds = {}
        for kind, images in samples.items():
            total = torch.zeros(3, dtype=torch.float64)
            total_sq = torch.zeros(3, dtype=torch.float64)
            count = 0
            for image in images:
                x = image.double().reshape(3, -1)
                total += x.sum(dim=1)
                total_sq += x.pow(2).sum(dim=1)
                count += x.shape[1]
            if count == 0:
                continue
            mean = total / count
            variance = float((total_sq / count - mean.pow(2)).clamp_min(0).mean())
            kinds[kind] = KindNormalization(tuple(float(v) for v in mean),  # type: ignore[arg-type]
                                            spread * max(variance ** 0.5, 1e-3))
        return cls(kinds)

    def _affine(self, kind: str, like: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        entry = self.kinds.get(kind)
        if entry is None:
            return None
        return torch.tensor(entry.offset, dtype=like.dtype, device=like.device).view(1, 3, 1, 1), entry.scale


@dataclass(frozen=True)
class ChangeScales:
    """What makes a codec a *change* codec: it encodes expression-relative maps (expression - neutral).

    Stored as ``change_scales.json`` in the codec folder. Per kind, ``scale`` in the kind's own map units
    (position: the normalised position map's; BRDF kinds: [0, 1] texture units) is the largest change the
    codec represents; larger ones are clipped (counted by :meth:`clipped`). The VAE input is the companded
    change ``sign(d) * |d / scale| ** power`` (3 channels, in [-1, 1]).

    Why companding (power < 1): most expression motion is 1-3 mm against a largest change of ~2 cm. Linearly,
    a codec's error of a fraction of its input range is the same number of millimetres everywhere, on the lips
    as on vertices that should not move. Companded, an error eps in the VAE's space is ~2 eps sqrt(d s) on a
    change d (power 0.5) and ~s eps^2 where nothing changes.
    """

    scales: Mapping[str, float]
    power: float = 0.5

    FILE = "change_scales.json"

    def to_dict(self) -> dict[str, Any]:
        return {"representation": "change", "power": self.power, "scales": dict(sorted(self.scales.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | None = None) -> "ChangeScales":
        try:
            power = float(data.get("power", 0.5))
            scales = {}
            for kind, value in data["scales"].items():
                map_kind(kind)
                value = float(value)
                if not (np.isfinite(value) and value > 0):
                    raise ValueError(f"{kind}: scale must be a positive number, got {value}")
                scales[kind] = value
            if not 0 < power <= 1:
                raise ValueError(f"power must be in (0, 1], got {power}")
        except (KeyError, TypeError, ValueError, AttributeError, ExpDiffInputError) as exc:
            raise ExpDiffInputError(source, f"invalid change scales: {exc}") from None
        return cls(scales, power)

    @classmethod
    def load(cls, folder: Path) -> "ChangeScales | None":
        """The change scales stored in codec ``folder``, or None for a codec of absolute maps."""
        data = _codec_json(folder / cls.FILE)
        return None if data is None else cls.from_dict(data, folder / cls.FILE)

    @classmethod
    def measure(cls, samples: Mapping[str, Sequence[torch.Tensor]], margin: float = 1.1,
                power: float = 0.5) -> "ChangeScales":
        """From {kind: [(C, H, W) changes in map units]}: scale = ``margin`` x the largest |change|.

        The largest, not a quantile: most texels do not change, and a quantile then cuts the strongest
        expressions (jawOpen's chin) short; companding keeps the small changes precise all the same. The
        margin leaves room for a face beyond the sampled ones.
        """
        scales = {}
        for kind, changes in samples.items():
            largest = max((float(c.abs().max()) for c in changes), default=0.0)
            scales[kind] = max(margin * largest, 1e-4)
        return cls(scales, power)

    def scale(self, kind: str) -> float:
        try:
            return self.scales[kind]
        except KeyError:
            raise ExpDiffInputError(None, f"this change codec has no scale for {kind!r} maps "
                                          f"(it has {sorted(self.scales)})") from None

    def clipped(self, changes: torch.Tensor, kind: str) -> int:
        """How many values of ``changes`` exceed the kind's scale (they are clipped on encoding)."""
        return int((changes.abs() > self.scale(kind)).sum())

    def to_input(self, changes: torch.Tensor, kind: str) -> torch.Tensor:
        """(B, C, H, W) changes in map units -> (B, 3, H, W) companded VAE input in [-1, 1]."""
        x = (_three_channels(changes, kind, "changes") / self.scale(kind)).clamp(-1.0, 1.0)
        return x.sign() * x.abs().pow(self.power)

    def from_output(self, images: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        """Inverse of :meth:`to_input`: (B, 3, H, W) VAE output -> (B, channels, H, W) changes in map units."""
        spec = map_kind(kind)
        channels = spec.channels if channels is None else channels
        if channels not in (spec.channels, 3):
            raise ExpDiffInputError(None, f"decoded {kind} changes have {spec.channels} or 3 channels, not {channels}")
        y = images.clamp(-1.0, 1.0)
        if channels == 1:
            y = y.mean(dim=1, keepdim=True)
        return y.sign() * y.abs().pow(1.0 / self.power) * self.scale(kind)


def _three_channels(maps: torch.Tensor, kind: str, what: str) -> torch.Tensor:
    """(B, C, H, W) with C the kind's channel count or 3 -> (B, 3, H, W), one-channel kinds replicated."""
    spec = map_kind(kind)
    if maps.ndim != 4 or maps.shape[1] not in (spec.channels, 3):
        raise ExpDiffInputError(None, f"{kind} {what} must be (B, {spec.channels}, H, W) or (B, 3, H, W), "
                                      f"got shape {tuple(maps.shape)}")
    return maps.expand(-1, 3, -1, -1) if maps.shape[1] == 1 else maps


def to_vae_input(maps: torch.Tensor, kind: str, normalization: MapNormalization | None = None) -> torch.Tensor:
    """(B, C, H, W) maps of ``kind`` (C = the kind's channels, or 3) -> (B, 3, H, W) VAE input.

    In [-1, 1] without ``normalization``; with it, the kind's ``(x - offset) / scale`` of that.
    """
    spec = map_kind(kind)
    images = (_three_channels(maps, kind, "maps") - spec.low) * (2.0 / (spec.high - spec.low)) - 1.0
    affine = normalization._affine(kind, images) if normalization is not None else None
    if affine is not None:
        images = (images - affine[0]) / affine[1]
    return images


def from_vae_output(images: torch.Tensor, kind: str, channels: int | None = None,
                    normalization: MapNormalization | None = None) -> torch.Tensor:
    """(B, 3, H, W) VAE output -> (B, channels, H, W) maps of ``kind``, clamped to its range.

    The inverse of :func:`to_vae_input` with the same ``normalization``.
    channels: None = the kind's own count; 1 averages the three channels (one-channel kinds are stored
    replicated, so the mean is the least-noise estimate); 3 keeps them.
    """
    spec = map_kind(kind)
    channels = spec.channels if channels is None else channels
    if channels not in (spec.channels, 3):
        raise ExpDiffInputError(None, f"decoded {kind} maps have {spec.channels} or 3 channels, not {channels}")
    affine = normalization._affine(kind, images) if normalization is not None else None
    if affine is not None:
        images = images * affine[1] + affine[0]
    images = images.clamp(-1.0, 1.0)
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    return (images + 1.0) * ((spec.high - spec.low) / 2.0) + spec.low


def offline_vae_config(**overrides: Any) -> dict[str, Any]:
    """AutoencoderKL settings of the offline default: SD family (8x down, 4 latent channels), small widths.

    Stable Diffusion's VAE is (128, 256, 512, 512) wide with 2 layers per block; this one is 16x cheaper
    per texel so it trains on a 2-core CPU. ``scaling_factor`` is re-measured by the trainer (1 / std of
    the training latents, as Stable Diffusion did for 0.18215).
    """
    config: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 64, 128, 128],
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=128,
        scaling_factor=1.0,
    )
    unknown = set(overrides) - set(config) - {"mid_block_add_attention", "shift_factor", "force_upcast",
                                              "use_quant_conv", "use_post_quant_conv"}
    if unknown:
        raise ExpDiffInputError(None, f"unknown AutoencoderKL setting(s) {sorted(unknown)}")
    config.update(overrides)
    blocks = len(config["block_out_channels"])  # one down/up block per width: 2^(blocks - 1) downsampling
    if "down_block_types" not in overrides:
        config["down_block_types"] = ["DownEncoderBlock2D"] * blocks
    if "up_block_types" not in overrides:
        config["up_block_types"] = ["UpDecoderBlock2D"] * blocks
    return config


def _resolve_vae_folder(folder: Path) -> Path:
    """A VAE folder itself, or the ``vae/`` folder of a Stable Diffusion pipeline folder."""
    if not folder.is_dir():
        raise ExpDiffInputError(folder, "VAE folder not found")
    if (folder / "config.json").is_file():
        return folder
    if (folder / "vae" / "config.json").is_file():
        return folder / "vae"
    raise ExpDiffInputError(folder, "no config.json (nor vae/config.json): not a diffusers AutoencoderKL folder")


def _as_batch(maps: torch.Tensor | np.ndarray, what: str) -> tuple[torch.Tensor, bool]:
    """(C,H,W) or (B,C,H,W) tensor/array -> (B,C,H,W) tensor and whether a batch axis was added."""
    tensor = torch.as_tensor(maps)
    if tensor.ndim == 3:
        return tensor[None], True
    if tensor.ndim == 4:
        return tensor, False
    raise ExpDiffInputError(None, f"{what} must be (C, H, W) or (B, C, H, W), got shape {tuple(tensor.shape)}")


class LatentCodec:
    """Encode UV maps of any kind to scaled latents and decode them back, in chunks, on one device.

    A codec with :class:`ChangeScales` (``change_scales``) is a *change* codec: it encodes expression-relative
    maps (expression - neutral, in map units) to latents relative to the zero change's (``E(d) - E(0)``) and
    decodes *against the decoded zero change* (``D(z + E(0)) - D(E(0))``): no change is zero latents and back,
    and what the codec adds where nothing changes cancels (as Eq. 9 cancels it on the neutral).
    """

    def __init__(self, vae, *, device: str | torch.device = "auto", batch_size: int = 8,
                 normalization: MapNormalization | None = None, change_scales: ChangeScales | None = None):
        from diffusers import AutoencoderKL

        if not isinstance(vae, AutoencoderKL):
            raise ExpDiffInputError(None, f"LatentCodec wraps a diffusers AutoencoderKL, got {type(vae).__name__}")
        if vae.config.in_channels != 3 or vae.config.out_channels != 3:
            raise ExpDiffInputError(None, "the VAE must take and return 3-channel images")
        if batch_size < 1:
            raise ExpDiffInputError(None, f"batch_size must be >= 1, got {batch_size}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if vae.dtype != torch.float32:  # weights stay fp32; speed on CUDA comes from bf16 autocast
            vae = vae.to(dtype=torch.float32)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.normalization = normalization
        self.change_scales = change_scales
        self._zero_change: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, *, seed: int = 0,
                    device: str | torch.device = "auto", batch_size: int = 8,
                    normalization: MapNormalization | None = None,
                    change_scales: ChangeScales | None = None) -> "LatentCodec":
        """An untrained codec (weights initialised from ``seed``); ``config`` defaults to offline_vae_config()."""
        from diffusers import AutoencoderKL

        config = dict(offline_vae_config() if config is None else config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKL(**config)
        return cls(vae, device=device, batch_size=batch_size, normalization=normalization,
                   change_scales=change_scales)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "auto",
                        batch_size: int = 8) -> "LatentCodec":
        """Load an AutoencoderKL folder (ours, a Stable Diffusion VAE folder, or an SD pipeline's ``vae/``).

        Only safetensors weights are read; a folder with only pickle checkpoints raises UnsafeModelFileError.
        Nothing is downloaded.
        """
        from diffusers import AutoencoderKL

        model_dir = _resolve_vae_folder(Path(folder))
        require_safetensors(model_dir)
        try:
            class_name = json.loads((model_dir / "config.json").read_text()).get("_class_name", "AutoencoderKL")
        except (OSError, json.JSONDecodeError) as exc:
            raise ExpDiffInputError(model_dir / "config.json", f"unreadable JSON: {exc}") from None
        if class_name != "AutoencoderKL":
            raise ExpDiffInputError(model_dir / "config.json", f"is a {class_name}, expected an AutoencoderKL")
        try:
            vae = AutoencoderKL.from_pretrained(model_dir, use_safetensors=True, local_files_only=True,
                                                torch_dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExpDiffInputError(model_dir, f"cannot load AutoencoderKL: {exc}") from None
        return cls(vae, device=device, batch_size=batch_size, normalization=MapNormalization.load(model_dir),
                   change_scales=ChangeScales.load(model_dir))

    def save_pretrained(self, folder: str | os.PathLike, *, extra_files: Mapping[str, str] | None = None) -> Path:
        """Write config.json + diffusion_pytorch_model.safetensors (+ the map normalisation, + ``extra_files``:
        name -> text) atomically.

        ``folder`` must not exist yet (published models are never overwritten).
        """
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            self.vae.save_pretrained(tmp, safe_serialization=True)
            if self.normalization is not None:
                (tmp / MapNormalization.FILE).write_text(json.dumps(self.normalization.to_dict(), indent=2) + "\n")
            if self.change_scales is not None:
                (tmp / ChangeScales.FILE).write_text(json.dumps(self.change_scales.to_dict(), indent=2) + "\n")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
        return folder

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.vae.config

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(latent channels, H / f, W / f) for maps of ``height`` x ``width`` texels."""
        self._check_size(height, width)
        f = self.downsample_factor
        return self.latent_channels, height // f, width // f

    @property
    def encodes_change(self) -> bool:
        """True for a change codec (expression-relative maps), False for one of absolute maps."""
        return self.change_scales is not None

    def to(self, device: str | torch.device) -> "LatentCodec":
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.vae.to(self.device)
        self._zero_change.clear()
        return self

    # ------------------------------------------------------------------ encode / decode
    def vae_input(self, maps: torch.Tensor, kind: str) -> torch.Tensor:
        """(B, C, H, W) maps (changes, for a change codec) -> (B, 3, H, W) what this codec's VAE takes."""
        if self.change_scales is not None:
            return self.change_scales.to_input(maps, kind)
        return to_vae_input(maps, kind, self.normalization)

    def map_output(self, images: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) VAE output -> (B, channels, H, W) maps (raw changes, for a change codec)."""
        if self.change_scales is not None:
            return self.change_scales.from_output(images, kind, channels)
        return from_vae_output(images, kind, channels, self.normalization)

    def value_range(self, kind: str) -> tuple[float, float]:
        """The values ``encode`` accepts for ``kind``: the kind's range, or +-its span for a change codec."""
        spec = map_kind(kind)
        if self.change_scales is not None:
            return spec.low - spec.high, spec.high - spec.low
        return spec.low, spec.high

    @torch.no_grad()
    def _zero(self, kind: str, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A change codec's (unscaled latents (C, h, w), decoded images (3, H, W)) of the zero change."""
        key = (kind, height, width)
        if key not in self._zero_change:
            zero = torch.zeros(1, 3, height, width, device=self.device)
            with autocast(self.device):
                z = self.vae.encode(self.vae_input(zero, kind)).latent_dist.mode()
                images = self.vae.decode(z).sample
            self._zero_change[key] = (z.float()[0], images.float()[0])
        return self._zero_change[key]

    @torch.no_grad()
    def encode(self, maps: torch.Tensor | np.ndarray, kind: str) -> torch.Tensor:
        """Maps (C, H, W) or (B, C, H, W) of ``kind`` -> scaled latents (4, H/8, W/8) or (B, 4, H/8, W/8).

        Values must lie in the kind's range (positions [-1, 1], BRDF maps [0, 1]). A change codec takes
        changes (within +-the range's span; those beyond its scale are clipped, with a warning) and returns
        latents relative to the zero change's, so that no change encodes to zero. Deterministic: the
        posterior mean is used. Returns float32 on the input tensor's device (CPU for NumPy input).
        """
        batch, added = _as_batch(maps, f"{kind} maps")
        low, high = self.value_range(kind)
        out_device = batch.device
        self._check_size(*batch.shape[-2:])
        batch = batch.float()
        if not torch.isfinite(batch).all():
            raise ExpDiffInputError(None, f"{kind} maps hold NaN or infinite values")
        lo, hi = float(batch.min()), float(batch.max())
        if lo < low - RANGE_TOLERANCE or hi > high + RANGE_TOLERANCE:
            raise ExpDiffInputError(None, f"{kind} map values span [{lo:.4g}, {hi:.4g}], "
                                          f"expected within [{low:g}, {high:g}]")
        if self.change_scales is not None:
            clipped = self.change_scales.clipped(batch, kind)
            if clipped:
                warnings.warn(f"{clipped} {kind} change value(s) beyond the codec's scale "
                              f"{self.change_scales.scale(kind):.4g} were clipped", stacklevel=3)
        zero = self._zero(kind, *batch.shape[-2:])[0] if self.change_scales is not None else 0.0
        chunks = []
        for start in range(0, batch.shape[0], self.batch_size):
            x = self.vae_input(batch[start:start + self.batch_size].to(self.device), kind)
            with autocast(self.device):
                mean = self.vae.encode(x).latent_dist.mode()
            chunks.append(((mean.float() - zero - self.shift_factor) * self.scaling_factor).to(out_device))
        latents = torch.cat(chunks)
        return latents[0] if added else latents

    def decode_pass(self, latents: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        """One decoder pass: scaled latents (B, 4, h, w) on this codec's device -> (B, channels, 8h, 8w) maps.

        Channels-last (oneDNN / cuDNN's faster layout), bf16 autocast on CUDA; the caller chooses the batch and
        the grad mode. A change codec adds the zero change's latents back and returns changes read against
        the decoded zero change, ``D(z + z0) - D(z0)``: what the codec adds where nothing changes cancels.
        """
        z = latents.float() / self.scaling_factor + self.shift_factor
        zero = None
        if self.change_scales is not None:
            zero = self._zero(kind, z.shape[-2] * self.downsample_factor, z.shape[-1] * self.downsample_factor)
            z = z + zero[0]
        # only the decoder side goes channels-last: the encoder keeps its layout (and its float rounding)
        for part in (self.vae.decoder, getattr(self.vae, "post_quant_conv", None)):
            if part is not None:
                part.to(memory_format=torch.channels_last)
        with autocast(self.device):
            images = self.vae.decode(z.contiguous(memory_format=torch.channels_last)).sample
        maps = self.map_output(images.float(), kind, channels)
        if zero is not None:
            maps = maps - self.map_output(zero[1][None], kind, channels)
        return maps.contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        """Scaled latents (4, h, w) or (B, 4, h, w) -> maps of ``kind`` (channels, 8h, 8w), clamped to its range.

        channels: None = the kind's own count (1 for specular/roughness, averaged from the 3 decoded
        channels), or 3 to keep the replicated channels. float32 on the input's device. A change codec
        returns changes (:meth:`decode_pass`).
        """
        batch, added = _as_batch(latents, "latents")
        map_kind(kind)
        if batch.shape[1] != self.latent_channels:
            raise ExpDiffInputError(None, f"latents must have {self.latent_channels} channels, "
                                          f"got shape {tuple(batch.shape)}")
        out_device = batch.device
        chunks = [self.decode_pass(batch[start:start + self.batch_size].to(self.device), kind, channels).to(out_device)
                  for start in range(0, batch.shape[0], self.batch_size)]
        maps = torch.cat(chunks)
        return maps[0] if added else maps

    def reconstruct(self, maps: torch.Tensor | np.ndarray, kind: str) -> torch.Tensor:
        """decode(encode(maps)) with the input's channel count: what the codec keeps of a map."""
        batch, added = _as_batch(maps, f"{kind} maps")
        out = self.decode(self.encode(batch, kind), kind, channels=batch.shape[1])
        return out[0] if added else out

    def _check_size(self, height: int, width: int) -> None:
        f = self.downsample_factor
        if height % f or width % f or height < f or width < f:
            raise ExpDiffInputError(None, f"map size {height}x{width} must be a positive multiple of {f} "
                                          f"(the VAE downsamples by {f})")
