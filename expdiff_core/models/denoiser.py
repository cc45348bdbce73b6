"""The ExpDiff denoiser: a dual-attention transformer over the latents of every UV map (paper III-C).

Every latent map (position, albedo, specular, roughness, normal; per UDIM tile) is patchified into tokens
that carry a learned map-type embedding, a learned tile embedding and a fixed 2D sin-cos UV position.
Per block: self-attention, jointly over all geometry tokens and jointly over all texture (BRDF) tokens;
bidirectional cross-attention between geometry and texture tokens; cross-attention to the prompt's
per-token embeddings; an MLP; every sublayer timestep-conditioned with adaLN-zero.

Map order: a sample's ``M = n_udims * len(kinds)`` maps are stacked tile-major, ``m = udim_index *
len(kinds) + kind_index``, the same order :mod:`expdiff_core.training.latents` produces.

The neutral latents enter by channel concatenation with their targets, not as extra tokens: every target
texel has exactly one aligned neutral texel, so concatenation hands over the identity at full resolution
for no extra attention cost (extra tokens would double the sequence and quadruple attention).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import ExpDiffInputError
from .weights import require_safetensors

ALL_KINDS = ("position", "albedo", "specular", "roughness", "normal")
GEOMETRY_KINDS = ("position",)
TEXT_CONDITIONINGS = ("encoder", "one-hot")
TARGETS = ("absolute", "residual", "change")

# Offline default: 16x16 latents (128^2 maps through the 8x VAE) -> 640 tokens; 2.8M params,
# ~73 GFLOP per training step at batch 16, so thousands of steps fit in hours on a 2-core CPU.
OFFLINE_DEFAULT: dict[str, Any] = dict(patch_size=2, width=128, depth=4, heads=4, mlp_ratio=4.0,
                                       text_dim=384, text_len=32)
# Production: 64x64 latents (512^2 maps through the SD VAE) -> 2560 tokens, CLIP ViT-L/14 tokens, 287M params.
PRODUCTION: dict[str, Any] = dict(patch_size=4, width=768, depth=12, heads=12, mlp_ratio=4.0,
                                  text_dim=768, text_len=77)
PRESETS = {"offline": OFFLINE_DEFAULT, "production": PRODUCTION}


def denoiser_config(kinds: Sequence[str], n_udims: int, latent_channels: int, latent_size: int | Sequence[int],
                    preset: str = "offline", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for :class:`ExpDiffDenoiser`: the data's layout + a named size preset + overrides."""
    if preset not in PRESETS:
        raise ExpDiffInputError(None, f"denoiser preset {preset!r} is not one of {sorted(PRESETS)}")
    size = [int(latent_size)] * 2 if isinstance(latent_size, int) else [int(s) for s in latent_size]
    config = dict(kinds=list(kinds), n_udims=int(n_udims), latent_channels=int(latent_channels), latent_size=size)
    config.update(PRESETS[preset])
    config.update(overrides)
    return config


# --------------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class PromptTokens:
    """Per-token prompt embeddings for a list of prompts: ``tokens`` (P, L, D) float32, ``mask`` (P, L) bool."""

    prompts: list[str]
    tokens: torch.Tensor
    mask: torch.Tensor

    def index(self, rows: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, mask)`` for the prompts at ``rows`` (a batch)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self.tokens[rows], self.mask[rows]


def fixed_random_prompt_tokens(prompts: Sequence[str], text_len: int, text_dim: int) -> PromptTokens:
    """The "one-hot" ablation's text: each prompt gets a fixed N(0, 1) (text_len, text_dim) matrix.

    The matrix is seeded from a SHA-256 of the prompt (not Python's salted ``hash``), so it is the same in
    every process and every run, and unrelated prompts are as far apart as random vectors get.
    """
    tokens = torch.empty(len(prompts), text_len, text_dim)
    for row, prompt in enumerate(prompts):
        seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little")
        gen = torch.Generator().manual_seed(seed)
        tokens[row] = torch.randn(text_len, text_dim, generator=gen)
    return PromptTokens(list(prompts), tokens, torch.ones(len(prompts), text_len, dtype=torch.bool))


def fit_prompt_tokens(tokens: torch.Tensor, mask: torch.Tensor, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (masked-out zeros) or truncate (P, L, D) tokens and (P, L) mask to length ``text_len``."""
    length = tokens.shape[1]
    if length >= text_len:
        return tokens[:, :text_len].contiguous(), mask[:, :text_len].contiguous()
    pad = text_len - length
    return (torch.cat([tokens, tokens.new_zeros(tokens.shape[0], pad, tokens.shape[2])], dim=1),
            torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1))


def encode_prompts(config: Any, prompts: Sequence[str], text_encoder: Any = None) -> PromptTokens:
    """Prompt tokens the way a denoiser with ``config`` (its ``.config`` or a dict) expects them.

    ``text_conditioning="one-hot"``: :func:`fixed_random_prompt_tokens`. ``"encoder"``: ``text_encoder``'s
    ``encode(prompts)`` (anything returning ``.tokens`` (P, L, D) and ``.mask`` (P, L)); when None the offline
    default :class:`expdiff_core.models.text_encoder.TextEncoder` is loaded. Tokens are padded or truncated to
    the config's ``text_len``.
    """
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k))
    text_len, text_dim, mode = int(get("text_len")), int(get("text_dim")), get("text_conditioning")
    prompts = [str(p) for p in prompts]
    if mode == "one-hot":
        return fixed_random_prompt_tokens(prompts, text_len, text_dim)
    if text_encoder is None:
        from .text_encoder import TextEncoder

        # Prompts are embedded once, up front; the small offline encoder needs no accelerator for that.
        text_encoder = TextEncoder.from_pretrained(None, device="cpu")
    with torch.no_grad():
        embedded = text_encoder.encode(prompts)
    tokens = embedded.tokens.detach().float().cpu()
    mask = embedded.mask.detach().bool().cpu()
    if tokens.ndim != 3 or tokens.shape[-1] != text_dim:
        raise ExpDiffInputError(None, f"text encoder gives tokens of shape {tuple(tokens.shape)}; the denoiser "
                                f"expects (P, L, {text_dim}) (text_dim)")
    tokens, mask = fit_prompt_tokens(tokens, mask, text_len)
    return PromptTokens(prompts, tokens * mask[..., None], mask)


# --------------------------------------------------------------------------------------------- layers
def _sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height*width, dim) float32 fixed 2D position code, rows then columns, row-major token order."""
    if dim % 4:
        raise ExpDiffInputError(None, f"denoiser width {dim} must be divisible by 4 for the 2D sin-cos code")
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    return torch.cat([get_1d_sincos_pos_embed_from_grid(dim // 2, rows),
                      get_1d_sincos_pos_embed_from_grid(dim // 2, cols)], dim=1).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, ..., D) with per-sample shift/scale (B, D)."""
    view = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return x * (1 + scale.view(view)) + shift.view(view)


def _gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x * gate.view((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))


class Attention(nn.Module):
    """Multi-head attention via ``F.scaled_dot_product_attention``, with RMS-normalised queries and keys.

    ``forward(x (B, N, D), context (B, S, D) | None, key_mask (B, S) bool | None) -> (B, N, D)``;
    ``key_mask`` True = attend. Self-attention when ``context`` is None.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ExpDiffInputError(None, f"denoiser width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        # qk-norm keeps attention logits bounded under bf16 autocast.
        self.norm_q = nn.RMSNorm(width // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(width // heads, eps=1e-6)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        s, h = context.shape[1], self.heads
        q = self.norm_q(self.to_q(x).view(b, n, h, d // h)).transpose(1, 2)
        k, v = self.to_kv(context).view(b, s, 2, h, d // h).unbind(2)
        k, v = self.norm_k(k).transpose(1, 2), v.transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class DualAttentionBlock(nn.Module):
    """One denoiser block over geometry tokens (B, Mg, n, D) and texture tokens (B, Mt, n, D).

    Sublayers, each pre-norm + adaLN-zero (shift, scale, gate from the conditioning vector):
    map self-attention (joint over a group's maps; per map when ``joint=False``), geometry<->texture
    cross-attention (only when ``joint`` and both groups exist), prompt cross-attention, MLP.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, joint: bool, cross: bool):
        super().__init__()
        self.joint, self.cross = joint, cross
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attn_geometry = Attention(width, heads)
        self.self_attn_texture = Attention(width, heads)
        if cross:
            self.cross_attn_geometry = Attention(width, heads)  # geometry queries texture
            self.cross_attn_texture = Attention(width, heads)  # texture queries geometry
        self.text_attn = Attention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.n_sublayers = 4 if cross else 3
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * self.n_sublayers * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def _map_self_attention(self, attn: Attention, x: torch.Tensor) -> torch.Tensor:
        b, m, n, d = x.shape
        if m == 0:
            return x
        if self.joint:
            return attn(x.reshape(b, m * n, d)).view(b, m, n, d)
        return attn(x.reshape(b * m, n, d)).view(b, m, n, d)

    def forward(self, x: torch.Tensor, n_geometry: int, text: torch.Tensor, text_mask: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        """x (B, M, n, D), geometry maps first; text (B, S, D); text_mask (B, S) bool; cond (B, D)."""
        b, m, n, d = x.shape
        mods = list(self.modulation(cond).chunk(3 * self.n_sublayers, dim=-1))

        shift, scale, gate = mods.pop(0), mods.pop(0), mods.pop(0)
        h = _modulate(self.norm(x), shift, scale)
        h = torch.cat([self._map_self_attention(self.self_attn_geometry, h[:, :n_geometry]),
                       self._map_self_attention(self.self_attn_texture, h[:, n_geometry:])], dim=1)
        x = x + _gate(h, gate)

        if self.cross:
            shift, scale, gate = mods.pop(0), mods.pop(0), mods.pop(0)
            h = _modulate(self.norm(x), shift, scale)
            geometry = h[:, :n_geometry].reshape(b, -1, d)
            texture = h[:, n_geometry:].reshape(b, -1, d)
            h = torch.cat([self.cross_attn_geometry(geometry, texture),
                           self.cross_attn_texture(texture, geometry)], dim=1).view(b, m, n, d)
            x = x + _gate(h, gate)

        shift, scale, gate = mods.pop(0), mods.pop(0), mods.pop(0)
        h = _modulate(self.norm(x), shift, scale)
        h = self.text_attn(h.reshape(b, m * n, d), text, text_mask).view(b, m, n, d)
        x = x + _gate(h, gate)

        shift, scale, gate = mods.pop(0), mods.pop(0), mods.pop(0)
        return x + _gate(self.mlp(_modulate(self.norm(x), shift, scale)), gate)


# --------------------------------------------------------------------------------------------- model
class ExpDiffDenoiser(ModelMixin, ConfigMixin):
    """ε-prediction (or v-prediction) network over all UV-map latents of one face (ExpDiff Eq. 6).

    ``forward(sample (B, M, C, h, w), timestep (B,) | scalar, neutral (B, M, Cn, h, w), text_tokens (B, L, text_dim),
    text_mask (B, L) bool | None) -> (B, M, C, h, w)``. ``M = n_udims * len(kinds)``, maps tile-major.
    An all-False ``text_mask`` row is the unconditional branch (classifier-free guidance): those tokens then
    attend only to a learned null token.

    ``target``: what is diffused. ``"absolute"`` (the paper's Eq. 6): the expression latents themselves.
    ``"residual"``: the expression latents minus the neutral latents, times ``residual_scale`` (one factor
    per map, so every map's residual has unit RMS on the training set). An expression differs from its
    neutral by a few percent of the latent's range; as an absolute target that difference drowns in the
    identity, which the network then mostly copies from its condition. ``"change"``: the latents of a change
    codec (``models.vae.ChangeScales``: the expression's maps minus the neutral's, encoded relative to no
    change), times ``residual_scale``; the neutral's absolute latents stay the condition. A change codec may
    have more latent channels than the neutral's codec (the linear change codec's 64 against the VAE's 4):
    ``condition_channels`` is then the neutral latents' count (default: ``latent_channels``).
    :meth:`diffusion_target` and :meth:`latents_from_target` convert; training and sampling go through them.

    ``prompt_token_embedding``: a learned map from the pooled prompt to one feature per output token (map x
    patch), added before the output projection. What an expression does where is mostly a function of the
    prompt alone, and this path gives the prompt a direct, regression-like route to it. Measured on the linear
    change codec's latents it did not by itself teach the pure-noise regime; training's timestep draw was what
    held that back (``DiffusionTrainConfig.timestep_shift``; the model card has the figures).

    Ablations (paper Table III): ``attention=False`` attends within each map only (no joint BRDF attention, no
    geometry<->texture cross-attention); ``text_conditioning="one-hot"`` means prompts are fed as
    :func:`fixed_random_prompt_tokens` instead of text-encoder tokens (see :func:`encode_prompts`).
    """

    _supports_gradient_checkpointing = True
    # expressions per sampling forward: each holds M latent maps and their attention (memory grows with it)
    sampling_batch = 16

    @register_to_config
    def __init__(
        self,
        kinds: Sequence[str] = ALL_KINDS,
        n_udims: int = 2,
        latent_channels: int = 4,
        latent_size: int | Sequence[int] = 16,
        patch_size: int = 2,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        text_dim: int = 384,
        text_len: int = 32,
        attention: bool = True,
        text_conditioning: str = "encoder",
        target: str = "absolute",
        residual_scale: Sequence[float] | None = None,
        condition_channels: int | None = None,
        prompt_token_embedding: bool = False,
        sample_skip: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        kinds = list(kinds)
        if not kinds or len(set(kinds)) != len(kinds):
            raise ExpDiffInputError(None, f"denoiser kinds {kinds} must be a non-empty list without repeats")
        if text_conditioning not in TEXT_CONDITIONINGS:
            raise ExpDiffInputError(None, f"text_conditioning {text_conditioning!r} is not one of {TEXT_CONDITIONINGS}")
        if target not in TARGETS:
            raise ExpDiffInputError(None, f"denoiser target {target!r} is not one of {TARGETS}")
        n_maps = n_udims * len(kinds)
        if target != "absolute" and (residual_scale is None or len(residual_scale) != n_maps
                                     or not all(float(v) > 0 for v in residual_scale)):
            raise ExpDiffInputError(None, f"a {target} denoiser needs residual_scale: {n_maps} positive factors "
                                    f"(one per map), got {residual_scale!r}")
        condition_channels = latent_channels if condition_channels is None else int(condition_channels)
        if condition_channels < 1 or (target == "residual" and condition_channels != latent_channels):
            raise ExpDiffInputError(None, f"condition_channels {condition_channels} must be >= 1 (and equal "
                                    f"latent_channels {latent_channels} for a residual target)")
        self.condition_channels = condition_channels
        size = (int(latent_size),) * 2 if isinstance(latent_size, int) else tuple(int(s) for s in latent_size)
        if len(size) != 2 or size[0] % patch_size or size[1] % patch_size:
            raise ExpDiffInputError(None, f"latent_size {latent_size} must be (h, w) divisible by patch_size {patch_size}")
        self.latent_hw = size
        self.grid = (size[0] // patch_size, size[1] // patch_size)

        # Geometry maps first inside the network; `order` gathers them from the tile-major input layout.
        kind_of = [m % len(kinds) for m in range(n_maps)]
        is_geometry = [kinds[k] in GEOMETRY_KINDS for k in kind_of]
        order = [m for m in range(n_maps) if is_geometry[m]] + [m for m in range(n_maps) if not is_geometry[m]]
        self.n_geometry_maps = sum(is_geometry)
        self.register_buffer("map_order", torch.tensor(order), persistent=False)
        self.register_buffer("map_unorder", torch.argsort(torch.tensor(order)), persistent=False)
        self.register_buffer("map_kind", torch.tensor([kind_of[m] for m in order]), persistent=False)
        self.register_buffer("map_tile", torch.tensor([m // len(kinds) for m in order]), persistent=False)
        self.register_buffer("uv_position", _sincos_2d(*self.grid, width), persistent=False)

        self.patch_embed = nn.Conv2d(latent_channels + condition_channels, width, kernel_size=patch_size,
                                     stride=patch_size)
        self.kind_embed = nn.Parameter(torch.randn(len(kinds), width) * 0.02)
        self.tile_embed = nn.Parameter(torch.randn(n_udims, width) * 0.02)

        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, width)
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_proj = nn.Linear(text_dim, width)
        self.null_text = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pooled_text_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

        cross = attention and 0 < self.n_geometry_maps < n_maps
        self.blocks = nn.ModuleList(DualAttentionBlock(width, heads, mlp_ratio, joint=attention, cross=cross)
                                    for _ in range(depth))
        self.gradient_checkpointing = False

        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj_out = nn.Linear(width, patch_size * patch_size * latent_channels)
        zero_init = [self.modulation_out[1], self.proj_out]
        if prompt_token_embedding:
            n_tokens = n_maps * self.grid[0] * self.grid[1]
            self.prompt_token_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(),
                                                    nn.Linear(width, n_tokens * width))
            zero_init.append(self.prompt_token_embed[2])
        if sample_skip is not None:
            self.register_buffer("noise_sigma", noise_sigmas(sample_skip), persistent=False)
            self.skip_gate = nn.Linear(width, patch_size * patch_size * latent_channels)
            zero_init.append(self.skip_gate)
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def n_maps(self) -> int:
        return self.config.n_udims * len(self.config.kinds)

    def diffused_shape(self) -> tuple[int, ...]:
        """Shape of one expression's diffused target: its latents' (M, C, h, w)."""
        return (self.n_maps, int(self.config.latent_channels), *self.latent_hw)

    def _residual_scale(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.config.residual_scale, dtype=like.dtype, device=like.device)[:, None, None, None]

    def diffusion_target(self, latents: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
        """What the network diffuses for expression ``latents`` of a face with ``neutral`` latents; both and the
        result (B, M, C, h, w)."""
        if self.config.target == "absolute":
            return latents
        if self.config.target == "change":
            return latents * self._residual_scale(latents)
        return (latents - neutral) * self._residual_scale(latents)

    def latents_from_target(self, target: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`diffusion_target`: denoised ``target`` -> expression latents (B, M, C, h, w)."""
        if self.config.target == "absolute":
            return target
        if self.config.target == "change":
            return target / self._residual_scale(target)
        return neutral + target / self._residual_scale(target)

    def _check(self, name: str, value: torch.Tensor, batch: int | None, channels: int | None = None) -> None:
        expected = (self.n_maps, channels or self.config.latent_channels, *self.latent_hw)
        if value.ndim != 5 or tuple(value.shape[1:]) != expected or (batch is not None and value.shape[0] != batch):
            raise ExpDiffInputError(None, f"denoiser {name} has shape {tuple(value.shape)}; expected (B, {', '.join(map(str, expected))})")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, neutral: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise (or v) for ``sample`` at ``timestep``; shapes in the class docstring."""
        b = sample.shape[0]
        self._check("sample", sample, None)
        self._check("neutral", neutral, b, self.condition_channels)
        timestep, text_mask = conditioning_inputs(self.config.text_dim, sample, timestep, text_tokens, text_mask)
        cond = self.time_embed(self.time_proj(timestep).to(self.dtype))

        text = self.text_proj(self.text_norm(text_tokens.to(self.dtype)))
        weights = text_mask.to(text.dtype)[..., None]
        pooled = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        cond = cond + self.pooled_text_embed(pooled)
        text = torch.cat([self.null_text.to(text.dtype).expand(b, 1, -1), text], dim=1)
        text_mask = torch.cat([text_mask.new_ones(b, 1), text_mask], dim=1)

        m, c, (h, w) = self.n_maps, self.config.latent_channels, self.latent_hw
        x = torch.cat([sample, neutral], dim=2)[:, self.map_order].to(self.dtype)
        x = self.patch_embed(x.reshape(b * m, c + self.condition_channels, h, w))
        x = x.flatten(2).transpose(1, 2)  # (B*M, n, D)
        x = x.reshape(b, m, -1, x.shape[-1])
        x = x + (self.kind_embed[self.map_kind] + self.tile_embed[self.map_tile])[None, :, None, :]
        x = x + self.uv_position[None, None].to(x.dtype)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, self.n_geometry_maps, text, text_mask, cond)
            else:
                x = block(x, self.n_geometry_maps, text, text_mask, cond)

        shift, scale = self.modulation_out(cond).chunk(2, dim=-1)
        x = _modulate(self.norm_out(x), shift, scale)
        if self.config.prompt_token_embedding:
            x = x + self.prompt_token_embed(pooled).view(b, m, -1, x.shape[-1])
        out = self._unpatchify(self.proj_out(x))
        if self.config.sample_skip is not None:
            sigma = self.noise_sigma[timestep.long().clamp(0, len(self.noise_sigma) - 1)].to(out.dtype)
            gate = self._unpatchify(self.skip_gate(x))
            out = out + gate * sample[:, self.map_order].to(out.dtype) / sigma.view(b, 1, 1, 1, 1)
        return out[:, self.map_unorder]

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, M, n, p*p*C) token outputs -> (B, M, C, h, w) latents, maps in the network's order."""
        b, m = tokens.shape[:2]
        (gh, gw), p, c = self.grid, self.config.patch_size, self.config.latent_channels
        return tokens.reshape(b, m, gh, gw, p, p, c).permute(0, 1, 6, 2, 4, 3, 5).reshape(b, m, c, *self.latent_hw)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "ExpDiffDenoiser":
        """Load from a local folder with config.json + safetensors weights; pickle checkpoints are refused."""
        return super().from_pretrained(local_denoiser_folder(pretrained_model_name_or_path, kwargs), **kwargs)


def noise_sigmas(schedule: Mapping[str, Any]) -> torch.Tensor:
    """(T,) float32 noise level sqrt(1 - alpha_bar_t) of the DDPM schedule given as scheduler config values."""
    from diffusers import DDPMScheduler

    return (1.0 - DDPMScheduler(**dict(schedule)).alphas_cumprod).sqrt().float()


def conditioning_inputs(text_dim: int, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                        text_tokens: torch.Tensor, text_mask: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A denoiser's checked prompt and timestep inputs: (timesteps (B,), text mask (B, L) bool), on the sample's
    device; ``text_tokens`` must be (B, L, text_dim), a missing mask means every token counts."""
    b = sample.shape[0]
    if text_tokens.ndim != 3 or text_tokens.shape[0] != b or text_tokens.shape[2] != text_dim:
        raise ExpDiffInputError(None, f"denoiser text_tokens has shape {tuple(text_tokens.shape)}; expected "
                                f"({b}, L, {text_dim})")
    if text_mask is None:
        text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
    timestep = torch.as_tensor(timestep, device=sample.device)
    return (timestep.expand(b) if timestep.ndim == 0 else timestep), text_mask.to(device=sample.device, dtype=torch.bool)


def local_denoiser_folder(path: str | Path, kwargs: dict[str, Any]) -> Path:
    """``path`` checked as a local denoiser folder with safetensors weights; sets ``from_pretrained``'s loading
    ``kwargs`` (safetensors only, local files only). Pickle checkpoints and hub names are refused."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ExpDiffInputError(folder, "not a denoiser folder (config.json missing); models load from local "
                                "folders only, never from a hub")
    require_safetensors(folder)
    kwargs["use_safetensors"] = True
    kwargs.setdefault("local_files_only", True)
    return folder


def denoiser_class(class_name: str | None) -> type:
    """The denoiser class a config's ``_class_name`` names (None: :class:`ExpDiffDenoiser`)."""
    from .subspace_denoiser import CLASS_NAME, SubspaceDenoiser

    classes = {"ExpDiffDenoiser": ExpDiffDenoiser, CLASS_NAME: SubspaceDenoiser}
    if class_name is None:
        return ExpDiffDenoiser
    if class_name not in classes:
        raise ExpDiffInputError(None, f"denoiser class {class_name!r} is not one of {sorted(classes)}")
    return classes[class_name]


def load_denoiser(folder: str | Path) -> Any:
    """The denoiser saved in ``folder`` (an :class:`ExpDiffDenoiser` or a ``SubspaceDenoiser``, by its config)."""
    import json

    folder = Path(folder)
    try:
        class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except FileNotFoundError:
        raise ExpDiffInputError(folder, "not a denoiser folder (config.json missing); models load from local "
                                "folders only, never from a hub") from None
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ExpDiffInputError(folder / "config.json", f"unreadable denoiser config: {exc}") from None
    return denoiser_class(class_name).from_pretrained(folder)
