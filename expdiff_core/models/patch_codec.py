"""A linear change codec: each f x f patch of a change map <-> its coefficients on a basis fitted to the corpus.

Why linear: the codec bound of issue #12 (true change latents -> decode -> Eq. 9 within 0.3 x the 3DMM's vertex
error, ~8 microns) asks for near-lossless geometry, and a learned 8x AutoencoderKL trained on a CPU keeps only
~40% of the motion (0.115 mm), three times worse than plain 8x pooling. Expression changes are smooth and
low-rank, so a linear basis fitted to them keeps far more per latent value than pooling: per map kind, the
principal directions (uncentred, so no change is zero latents) of every f x f patch of the training changes.
Encoding is a stride-f convolution with the basis, decoding its transpose: latents (L, H/f, W/f) on the same
grid as the absolute codec's (f = 8 at 128^2 -> 16^2), with more channels (L: 64 in the committed codec) instead of 4.

Latents are standardised per kind (``latent_scale``: 1 / the training coefficients' RMS) so that every kind's
latents have unit variance, as a diffusion model expects. No change encodes to exactly zero and decodes to
exactly zero (nothing spurious where nothing moves, without decoding against a reference).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..device import resolve_device
from ..errors import ExpDiffInputError
from ..fileio import atomic_dir
from .vae import MAP_KINDS, _as_batch, map_kind
from .weights import require_safetensors

CLASS_NAME = "PatchBasisAutoencoder"


class PatchBasisAutoencoder(ModelMixin, ConfigMixin):
    """The weights of a :class:`PatchChangeCodec`: per kind a basis (L, C, f, f) and a latent scale (scalar).

    ``basis_<kind>`` rows are orthonormal over the patch's C*f*f values (C the kind's channel count).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, kinds: Sequence[str] = tuple(MAP_KINDS), patch_size: int = 8, latent_channels: int = 64,
                 sample_size: int = 128):
        super().__init__()
        if patch_size < 1 or latent_channels < 1:
            raise ExpDiffInputError(None, "patch_size and latent_channels must be >= 1")
        for kind in kinds:
            spec = map_kind(kind)
            if latent_channels > spec.channels * patch_size ** 2:
                raise ExpDiffInputError(None, f"{latent_channels} latent channels exceed the {kind} patch's "
                                              f"{spec.channels * patch_size ** 2} values")
            self.register_buffer(f"basis_{kind}", torch.zeros(latent_channels, spec.channels, patch_size, patch_size))
            self.register_buffer(f"latent_scale_{kind}", torch.ones(()))

    def basis(self, kind: str) -> torch.Tensor:
        return getattr(self, f"basis_{kind}")

    def latent_scale(self, kind: str) -> torch.Tensor:
        return getattr(self, f"latent_scale_{kind}")


def patch_basis(second_moment: np.ndarray, latent_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``latent_channels`` eigenvectors (rows, (L, D) float64) and eigenvalues (L,) of a (D, D) second moment."""
    values, vectors = np.linalg.eigh(second_moment)
    order = np.argsort(values)[::-1][:latent_channels]
    return vectors[:, order].T, np.clip(values[order], 0.0, None)


def patches(changes: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) maps -> (B * H/f * W/f, C * f * f) non-overlapping patches, in conv-weight order."""
    b, c, h, w = changes.shape
    f = patch_size
    x = changes.reshape(b, c, h // f, f, w // f, f).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c * f * f)


class PatchChangeCodec:
    """Encode expression-relative maps (expression - neutral, map units) to standardised patch-basis latents.

    The same interface as :class:`~expdiff_core.models.vae.LatentCodec` for a change codec (``encodes_change``
    is True): ``encode`` (B, C, H, W) -> (B, L, H/f, W/f), ``decode`` back, ``latent_shape``, ``save_pretrained``.
    """

    encodes_change = True
    change_scales = None  # linear: nothing is companded or clipped
    normalization = None

    def __init__(self, model: PatchBasisAutoencoder, *, device: str | torch.device = "auto", batch_size: int = 64):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, second_moments: Mapping[str, np.ndarray], *, patch_size: int = 8, latent_channels: int = 64, sample_size: int = 128,
            device: str | torch.device = "cpu") -> "PatchChangeCodec":
        """A codec from {kind: (D, D) uncentred second moment of the training change patches}, D = C*f*f.

        Each kind keeps its top ``latent_channels`` principal directions; its latent scale is 1 / the RMS of
        the training coefficients on them (from the eigenvalues), so the latents have unit variance.
        """
        kinds = list(second_moments)
        model = PatchBasisAutoencoder(kinds=kinds, patch_size=patch_size, latent_channels=latent_channels,
                                      sample_size=sample_size)
        for kind, moment in second_moments.items():
            spec = map_kind(kind)
            expected = spec.channels * patch_size ** 2
            if moment.shape != (expected, expected):
                raise ExpDiffInputError(None, f"{kind} second moment must be ({expected}, {expected}), "
                                              f"got {moment.shape}")
            basis, values = patch_basis(moment, latent_channels)
            model.basis(kind).copy_(torch.from_numpy(basis).float().view(latent_channels, spec.channels,
                                                                         patch_size, patch_size))
            model.latent_scale(kind).fill_(1.0 / max(float(np.sqrt(values.mean())), 1e-12))
        return cls(model, device=device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "auto",
                        batch_size: int = 64) -> "PatchChangeCodec":
        """Load a folder written by :meth:`save_pretrained` (safetensors only; nothing is downloaded)."""
        folder = Path(folder)
        require_safetensors(folder)
        try:
            model = PatchBasisAutoencoder.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExpDiffInputError(folder, f"cannot load {CLASS_NAME}: {exc}") from None
        return cls(model, device=device, batch_size=batch_size)

    def save_pretrained(self, folder: str | os.PathLike, *, extra_files: Mapping[str, str] | None = None) -> Path:
        """Write config.json + diffusion_pytorch_model.safetensors (+ ``extra_files``) atomically; never overwrites."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
        return folder

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def kinds(self) -> list[str]:
        return list(self.model.config.kinds)

    @property
    def scaling_factor(self) -> float:
        return 1.0  # each kind is standardised by its own latent_scale

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the bases and scales: tells which codec a latent encoding was made with."""
        digest = hashlib.sha256()
        for kind in sorted(self.kinds):
            for tensor in (self.model.basis(kind), self.model.latent_scale(kind)):
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.downsample_factor
        if height % f or width % f or height < f or width < f:
            raise ExpDiffInputError(None, f"map size {height}x{width} must be a positive multiple of {f} "
                                          f"(the codec's patch size)")
        return self.latent_channels, height // f, width // f

    def value_range(self, kind: str) -> tuple[float, float]:
        spec = map_kind(kind)
        return spec.low - spec.high, spec.high - spec.low

    def to(self, device: str | torch.device) -> "PatchChangeCodec":
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model.to(self.device)
        return self

    def _kind(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        if kind not in self.kinds:
            raise ExpDiffInputError(None, f"this change codec has no basis for {kind!r} maps (it has {self.kinds})")
        return self.model.basis(kind), self.model.latent_scale(kind)

    # ------------------------------------------------------------------ encode / decode
    @torch.no_grad()
    def encode(self, maps: torch.Tensor | np.ndarray, kind: str) -> torch.Tensor:
        """Changes (C, H, W) or (B, C, H, W), C the kind's channels or 3 -> latents (B, L, H/f, W/f) float32."""
        batch, added = _as_batch(maps, f"{kind} changes")
        basis, scale = self._kind(kind)
        spec = map_kind(kind)
        if batch.shape[1] not in (spec.channels, 3):
            raise ExpDiffInputError(None, f"{kind} changes must have {spec.channels} (or 3) channels, "
                                          f"got shape {tuple(batch.shape)}")
        self.latent_shape(*batch.shape[-2:])
        batch = batch.float()
        if not torch.isfinite(batch).all():
            raise ExpDiffInputError(None, f"{kind} changes hold NaN or infinite values")
        low, high = self.value_range(kind)
        lo, hi = float(batch.min()), float(batch.max())
        if lo < low - 1e-3 or hi > high + 1e-3:
            raise ExpDiffInputError(None, f"{kind} change values span [{lo:.4g}, {hi:.4g}], "
                                          f"expected within [{low:g}, {high:g}]")
        if batch.shape[1] != spec.channels:  # one-channel kinds arrive replicated to 3
            batch = batch.mean(dim=1, keepdim=True)
        out_device = batch.device
        chunks = [(F.conv2d(batch[s:s + self.batch_size].to(self.device), basis, stride=self.downsample_factor)
                   * scale).to(out_device) for s in range(0, batch.shape[0], self.batch_size)]
        latents = torch.cat(chunks)
        return latents[0] if added else latents

    def decode_pass(self, latents: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        """One pass: latents (B, L, h, w) on this codec's device -> changes (B, channels, f*h, f*w)."""
        basis, scale = self._kind(kind)
        spec = map_kind(kind)
        channels = spec.channels if channels is None else channels
        if channels not in (spec.channels, 3):
            raise ExpDiffInputError(None, f"decoded {kind} changes have {spec.channels} or 3 channels, not {channels}")
        maps = F.conv_transpose2d(latents.float() / scale, basis, stride=self.downsample_factor)
        return maps.expand(-1, channels, -1, -1).contiguous() if maps.shape[1] != channels else maps

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, kind: str, channels: int | None = None) -> torch.Tensor:
        """Latents (L, h, w) or (B, L, h, w) -> changes (channels, f*h, f*w) in map units, on the input's device."""
        batch, added = _as_batch(latents, "latents")
        if batch.shape[1] != self.latent_channels:
            raise ExpDiffInputError(None, f"latents must have {self.latent_channels} channels, "
                                          f"got shape {tuple(batch.shape)}")
        out_device = batch.device
        maps = torch.cat([self.decode_pass(batch[s:s + self.batch_size].to(self.device), kind, channels).to(out_device)
                          for s in range(0, batch.shape[0], self.batch_size)])
        return maps[0] if added else maps

    def reconstruct(self, maps: torch.Tensor | np.ndarray, kind: str) -> torch.Tensor:
        """decode(encode(maps)) with the input's channel count: what the codec keeps of a change."""
        batch, added = _as_batch(maps, f"{kind} changes")
        out = self.decode(self.encode(batch, kind), kind, channels=batch.shape[1])
        return out[0] if added else out


def is_patch_codec_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder``'s config.json names a :class:`PatchBasisAutoencoder`."""
    config = Path(folder) / "config.json"
    try:
        return json.loads(config.read_text()).get("_class_name") == CLASS_NAME
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_codec(folder: str | os.PathLike, *, device: str | torch.device = "auto") -> Any:
    """The codec in ``folder``: a :class:`PatchChangeCodec`, else an AutoencoderKL ``LatentCodec`` (absolute or
    change codec, by its files)."""
    if is_patch_codec_folder(folder):
        return PatchChangeCodec.from_pretrained(folder, device=device)
    from .vae import LatentCodec

    return LatentCodec.from_pretrained(folder, device=device)
