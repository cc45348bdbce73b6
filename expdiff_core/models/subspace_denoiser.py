"""A denoiser that diffuses in the principal subspace of the change latents (one basis per map kind).

The change codec's latents of one expression are ~1.6e5 numbers, but over a training corpus of identities x
units they span far fewer directions: an expression's geometry change is a unit's motion modulated by who
the face is. :class:`SubspaceDenoiser` fits, per map kind, the leading principal directions of the training
changes (``fit_subspace``) and diffuses the *whitened coefficients* on them: Eq. 1-2 and Eq. 6 unchanged, on
a (K,) vector instead of (M, C, h, w) maps. The neutral's latents enter through their own principal
coefficients (who the face is), the prompt through its pooled text embedding; a residual MLP modulated by
the prompt and the timestep (adaLN-zero) predicts the scheduler's target. The text modulates features of the
noisy sample and of the identity multiplicatively, which is the form of a per-unit linear map from identity
to change (what the ridge baseline fits) and lets the network learn it in minutes of CPU.

``diffusion_target`` / ``latents_from_target`` convert between change latents (B, M, C, h, w) and the
diffused coefficients (B, K); ``diffused_shape`` is (K,). Everything outside the fitted subspace is what
this model cannot make: the model card reports that bound (the change latents projected and decoded).

Map order as in :mod:`expdiff_core.models.denoiser`: ``m = udim_index * len(kinds) + kind_index``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from ..errors import ExpDiffInputError
from .denoiser import conditioning_inputs, local_denoiser_folder, noise_sigmas

CLASS_NAME = "SubspaceDenoiser"


class _ModulatedMLPBlock(nn.Module):
    """x + gate * MLP(modulate(norm(x))), shift/scale/gate from the condition (adaLN-zero).

    ``streams`` (one per map kind): the features are split into streams; the MLP's weights are block-diagonal
    over them and each stream is normalised on its own. ``kind_attention`` (with streams): first, each stream is
    a token and the tokens attend to each other (:class:`_KindAttention`), the only path between map kinds.
    """

    def __init__(self, width: int, hidden: int, streams: int = 1, kind_attention: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))
        self.modulation = _zero_modulation(width)
        width_streams = hidden_mask = None
        if streams > 1:
            width_streams = _stream_matrix(width, streams)
            hidden_mask = _stream_matrix(hidden, streams) @ width_streams.T
        self.register_buffer("width_streams", width_streams, persistent=False)
        self.register_buffer("hidden_mask", hidden_mask, persistent=False)
        self.kind_attention = _KindAttention(width, streams) if kind_attention else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.kind_attention is not None:
            x = self.kind_attention(x, cond)
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)
        h = _stream_norm(x, self.width_streams) * (1 + scale) + shift
        h = F.silu(_masked_linear(self.mlp[0], h, self.hidden_mask))
        mask = None if self.hidden_mask is None else self.hidden_mask.T
        return x + gate * _masked_linear(self.mlp[2], h, mask)


class _KindAttention(nn.Module):
    """Attention across the map kinds: x (B, width) in ``streams`` slices, one token per kind -> (B, width).

    Each stream has its own query/key/value and output weights (block-diagonal over the streams, so streams of
    unequal size work); heads of ``head_dim`` features. Gated by the condition, zero at initialisation (adaLN-zero).
    """

    def __init__(self, width: int, streams: int, head_dim: int = 32, heads: int = 2):
        super().__init__()
        self.streams, self.heads, self.head_dim = streams, heads, head_dim
        inner = streams * heads * head_dim
        self.qkv = nn.Linear(width, 3 * inner)
        self.out = nn.Linear(inner, width)
        self.modulation = _zero_modulation(width)
        width_streams = _stream_matrix(width, streams)
        inner_streams = torch.eye(streams).repeat_interleave(heads * head_dim, dim=0)  # (inner, streams)
        self.register_buffer("width_streams", width_streams, persistent=False)
        self.register_buffer("qkv_mask", (inner_streams @ width_streams.T).repeat(3, 1), persistent=False)
        self.register_buffer("out_mask", width_streams @ inner_streams.T, persistent=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)
        h = _stream_norm(x, self.width_streams) * (1 + scale) + shift
        q, k, v = _masked_linear(self.qkv, h, self.qkv_mask).chunk(3, dim=-1)
        # (B, streams * heads * head_dim) -> (B, heads, streams, head_dim): the streams are the tokens
        q, k, v = (t.view(t.shape[0], self.streams, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape[0], -1)
        return x + gate * _masked_linear(self.out, attended, self.out_mask)


def _zero_modulation(width: int) -> nn.Sequential:
    """condition (B, width) -> shift, scale, gate (B, 3 * width), all zero at initialisation (adaLN-zero)."""
    modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
    nn.init.zeros_(modulation[1].weight)
    nn.init.zeros_(modulation[1].bias)
    return modulation


def _stream_matrix(size: int, streams: int) -> torch.Tensor:
    """(size, streams) one-hot: which of ``streams`` near-equal contiguous slices each feature belongs to."""
    owner = torch.arange(size) * streams // size
    return torch.nn.functional.one_hot(owner, streams).float()


def _stream_norm(x: torch.Tensor, streams: torch.Tensor | None) -> torch.Tensor:
    """Layer normalisation (no affine) of each stream's features on its own: x (B, D), streams (D, S) one-hot;
    None: one stream, plain layer normalisation."""
    if streams is None:
        return F.layer_norm(x, x.shape[-1:], eps=1e-6)
    counts = streams.sum(0)
    mean = (x @ streams / counts) @ streams.T
    var = ((x - mean).pow(2) @ streams / counts) @ streams.T
    return (x - mean) * torch.rsqrt(var + 1e-6)


def _chosen_kinds(option: str, value: bool | Sequence[str], kinds: list[str]) -> list[str]:
    """The kinds a per-kind switch names: True every kind, False none, else the listed ones (checked)."""
    chosen = list(kinds) if value is True else [] if value is False else list(value)
    unknown = sorted(set(chosen) - set(kinds))
    if unknown:
        raise ExpDiffInputError(None, f"{option} {unknown} are not among the kinds {kinds}")
    return chosen


def _masked_linear(layer: nn.Linear, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return layer(x) if mask is None else F.linear(x, layer.weight * mask.to(layer.weight.dtype), layer.bias)


class SubspaceDenoiser(ModelMixin, ConfigMixin):
    """v- or ε-prediction over the whitened principal coefficients of an expression's change latents.

    ``forward(sample (B, K), timestep (B,) | scalar, neutral (B, M, Cn, h, w), text_tokens (B, L, text_dim),
    text_mask (B, L) bool | None) -> (B, K)``, ``K = sum(components)``. An all-False ``text_mask`` row is the
    unconditional branch (classifier-free guidance): its prompt embedding is a learned null vector.

    ``components``: principal directions kept per map kind (in ``kinds`` order); ``neutral_components``: the
    neutral latents' directions the identity is read from -- one count: principal directions of all identity
    kinds together; one count per identity kind: each kind's own (so a few skin-tone directions of the albedo
    stand beside the geometry's, instead of competing with it for one budget). ``whiten`` (True: every kind;
    False: none; or a list of kinds): such a kind's coefficients are each scaled to unit variance on the training
    data; any other kind gets one scale (unit mean variance), so its strong directions stay strong and its weak
    ones -- for textures mostly identity-random detail nothing predicts -- weigh little in the loss and are treated
    by the noise as detail.
    ``identity_noise``: in training, Gaussian noise of this std is added to the (whitened) identity coefficients:
    with 128 training identities the network otherwise memorises each neutral's change (noise on a regression's
    inputs acts as its ridge).
    ``identity_kinds``: the neutral maps the identity is read from (default: all; each kind weighs the same in
    the identity's principal directions, whatever the scale of its latents). ``condition_codec``: what
    encodes the neutral maps into the condition, the pipeline's absolute ``"vae"`` or its ``"change"`` codec
    (linear: it keeps the neutral geometry's detail that an expression's change depends on, which the small VAE's
    4 channels lose; the training latents' neutrals must be encoded the same way). ``mean_skip`` (a v-prediction
    noise schedule, as for ``ExpDiffDenoiser``'s ``sample_skip``): add the path :meth:`expected_change`. The bases
    are buffers saved with the weights; until :meth:`fit_subspace` runs they are empty (zero) and the model
    refuses to run.

    ``unit_directions`` (True: every kind; or a list of kinds): each such kind's basis starts with the span of the
    units' mean changes (so the subspace holds every unit's mean exactly, whatever its variance: the fine texture
    changes, which vary per identity more than per unit, otherwise crowd the units' means out of the leading
    directions), completed by the leading principal directions of the changes around their unit's mean.

    ``kind_loss_weights``: per map kind, the weight of its coefficients in the training loss (normalised to a
    mean of 1 over the coefficients; default: equal): whitened, a kind's many unpredictable texture directions
    otherwise outweigh the geometry in the loss.

    ``identity_routing``: ``"shared"`` (default) lets every identity coefficient inform every kind's change, through
    the network and the :meth:`expected_change` path; ``"per_kind"`` (with ``neutral_components`` per identity kind
    and ``mean_skip``) feeds the network the geometry's identity only and lets a texture kind's identity
    coefficients reach only that kind's change, linearly per prompt (the ridge's form): the neutral albedo's tone
    scales the albedo change and says nothing to the roughness.

    ``kind_tokens``: each map kind's noisy coefficients are denoised in a stream of its own (its share of
    ``width``, block-diagonal weights; all streams see the same identity, prompt and timestep), and the streams
    exchange information only by attention across the kinds (one token per kind) in every block: the paper's
    joint/cross attention between maps, for an MLP. Otherwise (default) one stream holds every kind and the
    MLP mixes them. ``attention=False`` (the paper's "w/o attention" ablation): kind streams that do not
    exchange information at all.
    """

    _supports_gradient_checkpointing = False
    # expressions per sampling forward: a sample is one (K,) vector, so a character's 57 expressions fit in one
    # forward, whose matmuls then have 57 rows (1.8x the throughput of 16 on the dev CPU)
    sampling_batch = 64

    @register_to_config
    def __init__(
        self,
        kinds: Sequence[str] = ("position", "albedo", "normal", "roughness", "specular"),
        n_udims: int = 2,
        latent_channels: int = 64,
        latent_size: int | Sequence[int] = 16,
        condition_channels: int = 4,
        components: Sequence[int] = (128, 32, 32, 32, 32),
        neutral_components: int | Sequence[int] = 48,
        width: int = 512,
        depth: int = 4,
        mlp_ratio: float = 2.0,
        text_dim: int = 384,
        text_len: int = 32,
        text_conditioning: str = "encoder",
        target: str = "change",
        mean_skip: Mapping[str, Any] | None = None,
        whiten: bool | Sequence[str] = True,
        identity_noise: float = 0.0,
        identity_kinds: Sequence[str] | None = None,
        condition_codec: str = "vae",
        attention: bool = True,
        kind_tokens: bool = False,
        unit_directions: bool | Sequence[str] = False,
        kind_loss_weights: Sequence[float] | None = None,
        identity_routing: str = "shared",
    ):
        super().__init__()
        kinds = list(kinds)
        if not kinds or len(set(kinds)) != len(kinds):
            raise ExpDiffInputError(None, f"denoiser kinds {kinds} must be a non-empty list without repeats")
        if len(components) != len(kinds) or not all(int(c) >= 1 for c in components):
            raise ExpDiffInputError(None, f"components {list(components)} must give a positive count for each of "
                                    f"the kinds {kinds}")
        if target != "change":
            raise ExpDiffInputError(None, f"a {CLASS_NAME} diffuses change latents (target 'change'), not {target!r}")
        if text_conditioning not in ("encoder", "one-hot"):
            raise ExpDiffInputError(None, f"text_conditioning {text_conditioning!r} is not 'encoder' or 'one-hot'")
        size = (int(latent_size),) * 2 if isinstance(latent_size, int) else tuple(int(s) for s in latent_size)
        self.latent_hw = size
        self.condition_channels = int(condition_channels)
        per_kind = n_udims * latent_channels * size[0] * size[1]
        n_total = int(sum(components))
        if condition_codec not in ("vae", "change"):
            raise ExpDiffInputError(None, f"condition_codec {condition_codec!r} is not 'vae' or 'change'")
        self.unit_kinds = _chosen_kinds("unit_directions", unit_directions, kinds)
        self.whitened_kinds = _chosen_kinds("whiten", whiten, kinds)
        unknown = sorted(set(identity_kinds or ()) - set(kinds))
        if unknown:
            raise ExpDiffInputError(None, f"identity_kinds {unknown} are not among the kinds {kinds}")
        self.identity_maps = [u * len(kinds) + k for u in range(n_udims) for k, kind in enumerate(kinds)
                              if identity_kinds is None or kind in identity_kinds]
        neutral_dim = len(self.identity_maps) * condition_channels * size[0] * size[1]
        chosen = [kind for kind in kinds if identity_kinds is None or kind in identity_kinds]
        self.identity_kind_components: list[int] | None = None
        if not isinstance(neutral_components, int):  # one count per identity kind: their own principal directions
            counts = [int(c) for c in neutral_components]
            if len(counts) != len(chosen) or not all(1 <= c <= neutral_dim // len(chosen) for c in counts):
                raise ExpDiffInputError(None, f"neutral_components {counts} must give each identity kind {chosen} "
                                        f"a count in [1, {neutral_dim // len(chosen)}]")
            self.identity_kind_components = counts
            neutral_components = sum(counts)
        if not 1 <= neutral_components <= neutral_dim:
            raise ExpDiffInputError(None, f"neutral_components {neutral_components} must be in [1, {neutral_dim}]")
        self.n_identity = int(neutral_components)
        if identity_routing not in ("shared", "per_kind"):
            raise ExpDiffInputError(None, f"identity_routing {identity_routing!r} is not 'shared' or 'per_kind'")
        # identity_routing "per_kind": a texture kind's identity coefficients reach only that kind's change, and only
        # through the per-prompt linear path (mean_skip); the geometry's reach every kind and the network.
        network_identity = list(range(self.n_identity))
        identity_route = None
        if identity_routing == "per_kind":
            if self.identity_kind_components is None or "position" not in chosen or mean_skip is None:
                raise ExpDiffInputError(None, "identity_routing 'per_kind' needs neutral_components per identity kind "
                                        "(the position kind's among them) and mean_skip")
            column_kind = [kind for kind, c in zip(chosen, self.identity_kind_components) for _ in range(c)]
            network_identity = [j for j, kind in enumerate(column_kind) if kind == "position"]
            row_kind = [kind for kind, c in zip(kinds, components) for _ in range(int(c))]
            identity_route = torch.tensor([[float(cj in ("position", ri)) for cj in column_kind] for ri in row_kind])
        self.network_identity = network_identity
        # Persistent buffers: the fitted subspaces travel with the weights.
        self.register_buffer("change_mean", torch.zeros(len(kinds), per_kind))
        self.register_buffer("change_basis", torch.zeros(n_total, per_kind))
        self.register_buffer("change_std", torch.ones(n_total))
        self.register_buffer("neutral_mean", torch.zeros(neutral_dim))
        self.register_buffer("neutral_basis", torch.zeros(neutral_components, neutral_dim))
        self.register_buffer("neutral_std", torch.ones(neutral_components))
        offsets = [0]
        for c in components:
            offsets.append(offsets[-1] + int(c))
        self.offsets = offsets
        weights = [1.0] * len(kinds) if kind_loss_weights is None else [float(w) for w in kind_loss_weights]
        if len(weights) != len(kinds) or not all(w > 0 for w in weights):
            raise ExpDiffInputError(None, f"kind_loss_weights {list(weights)} must give a positive weight for each of "
                                    f"the kinds {kinds}")
        loss_weight = torch.cat([torch.full((int(c),), w) for c, w in zip(components, weights)])
        self.register_buffer("loss_weight", loss_weight / loss_weight.mean(), persistent=False)

        self.input_proj = nn.Linear(n_total, width)
        self.register_buffer("identity_route", identity_route, persistent=False)
        self.identity_proj = nn.Linear(len(network_identity), width)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, width)
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.null_text = nn.Parameter(torch.zeros(width))
        hidden = int(round(width * mlp_ratio))
        streams = len(kinds) if kind_tokens or not attention else 1
        self.blocks = nn.ModuleList(_ModulatedMLPBlock(width, hidden, streams, kind_attention=kind_tokens and attention)
                                    for _ in range(depth))
        input_mask = width_streams = None
        if streams > 1:  # kind k's coefficients enter and leave through stream k only
            coefficient_streams = torch.cat([torch.eye(streams)[k].expand(int(c), streams)
                                             for k, c in enumerate(components)])
            width_streams = _stream_matrix(width, streams)
            input_mask = width_streams @ coefficient_streams.T
        self.register_buffer("input_mask", input_mask, persistent=False)
        self.register_buffer("width_streams", width_streams, persistent=False)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj_out = nn.Linear(width, n_total)
        zero_init = [self.modulation_out[1], self.proj_out]
        if mean_skip is not None:
            self.register_buffer("noise_sigma", noise_sigmas(mean_skip), persistent=False)
            self.mean_head = nn.Linear(width, n_total * (self.n_identity + 1))
            zero_init.append(self.mean_head)
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ layout
    @property
    def n_maps(self) -> int:
        return self.config.n_udims * len(self.config.kinds)

    def diffused_shape(self) -> tuple[int, ...]:
        """Shape of one expression's diffused target: (K,)."""
        return (int(self.change_basis.shape[0]),)

    def _kind_maps(self, kind_index: int) -> list[int]:
        k = len(self.config.kinds)
        return [u * k + kind_index for u in range(self.config.n_udims)]

    def _check(self, name: str, value: torch.Tensor, channels: int, batch: int | None = None) -> None:
        expected = (self.n_maps, channels, *self.latent_hw)
        if value.ndim != 5 or tuple(value.shape[1:]) != expected or (batch is not None and value.shape[0] != batch):
            raise ExpDiffInputError(None, f"denoiser {name} has shape {tuple(value.shape)}; expected "
                                    f"(B, {', '.join(map(str, expected))})")

    @property
    def is_fitted(self) -> bool:
        # A fitted kind's first direction is a unit vector; looking at those rows, not the whole (K, D) basis,
        # keeps this check out of the forward's time (it was half of it).
        first_rows = self.change_basis[list(self.offsets[:-1])]
        return bool(self.change_std.numel()) and bool((first_rows.abs().sum(1) > 0).all())

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ExpDiffInputError(None, f"this {CLASS_NAME} has no fitted subspace (run fit_subspace, or load a "
                                    "trained one)")

    # ------------------------------------------------------------------ the subspaces
    @torch.no_grad()
    def fit_subspace(self, changes: torch.Tensor, neutrals: torch.Tensor, *, units: torch.Tensor | None = None,
                     seed: int = 0) -> dict[str, list[float]]:
        """Fit the bases on training data: ``changes`` (N, M, C, h, w) change latents, ``neutrals`` (S, M, Cn, h, w)
        one neutral per identity, ``units`` (N,) int: each change's expression (required with ``unit_directions``).
        Returns per kind the fraction of the changes' variance kept."""
        self._check("changes", changes, int(self.config.latent_channels))
        if self.unit_kinds and (units is None or len(units) != len(changes)):
            raise ExpDiffInputError(None, "unit_directions: fit_subspace needs every change's unit (units=)")
        self._check("neutrals", neutrals, self.condition_channels)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # svd_lowrank's random start: a fit is reproducible
        try:
            kept = {}
            for i, kind in enumerate(self.config.kinds):
                n = int(self.config.components[i])
                x = changes[:, self._kind_maps(i)].reshape(changes.shape[0], -1).float()
                mean = x.mean(0)
                if kind in self.unit_kinds:
                    basis, std, fraction = _unit_and_principal(x - mean, torch.as_tensor(units), n, f"{kind} changes")
                else:
                    basis, std, fraction = _principal(x - mean, n, f"{kind} changes")
                if kind not in self.whitened_kinds:  # one scale: the directions keep their relative variances
                    std = std.pow(2).mean().sqrt().expand(n)
                lo, hi = self.offsets[i], self.offsets[i + 1]
                self.change_mean[i] = mean
                self.change_basis[lo:hi] = basis
                self.change_std[lo:hi] = std
                kept[kind] = fraction
            x = neutrals[:, self.identity_maps].float()
            mean = x.reshape(len(x), -1).mean(0)
            # Each identity kind weighs the same in the identity's principal directions (as the ridge baseline's
            # blocks): unscaled, the kind with the largest latents would take them all. The scale is folded into
            # the stored basis, so identity_coefficients stays one projection.
            kind_of_map = torch.tensor([m % len(self.config.kinds) for m in self.identity_maps])
            centred = x - mean.view(x.shape[1:])
            self.neutral_mean.copy_(mean)
            if self.identity_kind_components is None:
                scale = torch.ones(len(self.identity_maps))
                for k in kind_of_map.unique():
                    block = kind_of_map == k
                    scale[block] = centred[:, block].pow(2).sum(dim=(1, 2, 3, 4)).mean().clamp(min=1e-12).rsqrt()
                scale = scale.view(-1, 1, 1, 1).expand(x.shape[1:]).reshape(-1)
                basis, std, fraction = _principal(centred.reshape(len(x), -1) * scale, self.n_identity,
                                                  "neutral latents")
                self.neutral_basis.copy_(basis * scale)
                self.neutral_std.copy_(std)
                kept["neutral"] = fraction
            else:  # each identity kind's own directions, zero on the other kinds' values
                self.neutral_basis.zero_()
                row = 0
                for k, count in zip(kind_of_map.unique().tolist(), self.identity_kind_components):
                    block = (kind_of_map == k).view(-1, 1, 1, 1).expand(x.shape[1:]).reshape(-1)
                    basis, std, fraction = _principal(centred.reshape(len(x), -1)[:, block], count,
                                                      f"neutral {self.config.kinds[k]} latents")
                    self.neutral_basis[row:row + count, block] = basis
                    self.neutral_std[row:row + count] = std
                    kept[f"neutral {self.config.kinds[k]}"] = fraction
                    row += count
        finally:
            torch.random.set_rng_state(generator_state)
        return kept

    def diffusion_target(self, latents: torch.Tensor, neutral: torch.Tensor | None = None) -> torch.Tensor:
        """Change latents (B, M, C, h, w) -> whitened coefficients (B, K) (what is diffused)."""
        self._require_fitted()
        self._check("latents", latents, int(self.config.latent_channels))
        parts = []
        for i in range(len(self.config.kinds)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            x = latents[:, self._kind_maps(i)].reshape(latents.shape[0], -1).to(self.change_basis.dtype)
            parts.append((x - self.change_mean[i]) @ self.change_basis[lo:hi].T / self.change_std[lo:hi])
        return torch.cat(parts, dim=1)

    def latents_from_target(self, target: torch.Tensor, neutral: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of :meth:`diffusion_target` on the subspace: coefficients (B, K) -> change latents (B, M, C, h, w)."""
        self._require_fitted()
        b = target.shape[0]
        c, (h, w) = int(self.config.latent_channels), self.latent_hw
        out = target.new_zeros(b, self.n_maps, c, h, w)
        for i in range(len(self.config.kinds)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            x = self.change_mean[i] + (target[:, lo:hi].to(self.change_basis.dtype) * self.change_std[lo:hi]) \
                @ self.change_basis[lo:hi]
            out[:, self._kind_maps(i)] = x.view(b, self.config.n_udims, c, h, w).to(out.dtype)
        return out

    def identity_coefficients(self, neutral: torch.Tensor) -> torch.Tensor:
        """Neutral latents (B, M, Cn, h, w) -> whitened principal coefficients (B, neutral_components)."""
        self._check("neutral", neutral, self.condition_channels)
        x = neutral[:, self.identity_maps].reshape(neutral.shape[0], -1).to(self.neutral_basis.dtype)
        return (x - self.neutral_mean) @ self.neutral_basis.T / self.neutral_std

    # ------------------------------------------------------------------ network
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, neutral: torch.Tensor,
                text_tokens: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise (or v) for ``sample`` at ``timestep``; shapes in the class docstring."""
        self._require_fitted()
        b = sample.shape[0]
        if sample.ndim != 2 or sample.shape[1] != self.change_basis.shape[0]:
            raise ExpDiffInputError(None, f"denoiser sample has shape {tuple(sample.shape)}; expected "
                                    f"(B, {self.change_basis.shape[0]})")
        self._check("neutral", neutral, self.condition_channels, b)
        timestep, text_mask = conditioning_inputs(self.config.text_dim, sample, timestep, text_tokens, text_mask)
        cond = self.time_embed(self.time_proj(timestep).to(self.dtype))
        tokens = self.text_norm(text_tokens.to(self.dtype))
        weights = text_mask.to(tokens.dtype)[..., None]
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        text = self.text_proj(pooled)
        text = torch.where(text_mask.any(1, keepdim=True), text, self.null_text.to(text.dtype))
        cond = cond + text

        identity = self.identity_coefficients(neutral.float()).to(self.dtype)
        if self.training and self.config.identity_noise > 0:
            identity = identity + self.config.identity_noise * torch.randn_like(identity)
        x = _masked_linear(self.input_proj, sample.to(self.dtype), self.input_mask) \
            + self.identity_proj(identity[:, self.network_identity])
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.modulation_out(cond).chunk(2, dim=-1)
        out = _masked_linear(self.proj_out, _stream_norm(x, self.width_streams) * (1 + scale) + shift,
                             None if self.input_mask is None else self.input_mask.T)
        if self.config.mean_skip is not None:
            out = out - self.noise_sigma[timestep.long().clamp(0, len(self.noise_sigma) - 1)].to(out.dtype)[:, None] \
                * self.expected_change(text, identity)
        return out

    def expected_change(self, text: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """The ``mean_skip`` path: a prompt-dependent linear map of the identity, (B, width), (B, Kn) -> (B, K).

        In v-prediction ``v = sqrt(alpha_bar) eps - sigma_t x0``, so ``-sigma_t`` times an estimate of x0 is the
        part of v that does not depend on the noise: at pure noise (sigma = 1) it is the whole prediction. The
        form is the ridge baseline's (per prompt, change = A identity + b), learned by the diffusion loss itself.
        """
        k, kn = self.change_basis.shape[0], self.n_identity
        # A batch holds few distinct prompts (the units, the null): the (K, Kn + 1) map is made once per prompt.
        _, inverse = torch.unique(text.detach(), dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(inverse), device=inverse.device), "amin")
        maps = self.mean_head(text[first]).view(-1, k, kn + 1)[inverse]
        slopes = maps[..., :kn] if self.identity_route is None else maps[..., :kn] * self.identity_route.to(maps.dtype)
        return (slopes @ identity[..., None]).squeeze(-1) + maps[..., kn]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "SubspaceDenoiser":
        """Load from a local folder with config.json + safetensors weights; pickle checkpoints are refused."""
        return super().from_pretrained(local_denoiser_folder(pretrained_model_name_or_path, kwargs), **kwargs)


def _principal(x: torch.Tensor, n: int, what: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Leading ``n`` principal directions of centred rows ``x`` (N, D): (basis (n, D), std (n,), kept variance)."""
    rows, dim = x.shape
    if n > min(rows - 1, dim):
        raise ExpDiffInputError(None, f"cannot keep {n} principal directions of {rows} {what} of {dim} values")
    _, s, v = torch.svd_lowrank(x, q=min(n + 16, rows, dim), niter=4)
    std = (s[:n] / max(rows - 1, 1) ** 0.5).clamp(min=1e-8)
    total = float(x.pow(2).sum())
    kept = float(s[:n].pow(2).sum()) / total if total > 0 else 1.0
    return v[:, :n].T.contiguous(), std, kept


def _unit_and_principal(x: torch.Tensor, units: torch.Tensor, n: int, what: str
                        ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Like :func:`_principal`, the basis led by the span of the per-unit means of ``x`` (N, D) (``units`` (N,))."""
    labels, index = torch.unique(units, return_inverse=True)
    means = torch.zeros(len(labels), x.shape[1], dtype=x.dtype).index_add_(0, index, x)
    means /= torch.bincount(index, minlength=len(labels)).to(x.dtype)[:, None]
    _, s, v = torch.linalg.svd(means, full_matrices=False)
    rank = min(int((s > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0, n)
    unit_basis = v[:rank]
    basis = unit_basis
    if n > rank:
        residual = x - means[index]
        residual = residual - (residual @ unit_basis.T) @ unit_basis
        rest, _, _ = _principal(residual, n - rank, what)
        basis = torch.cat([unit_basis, rest])
    coefficients = x @ basis.T
    std = coefficients.std(0).clamp(min=1e-8)
    total = float(x.pow(2).sum())
    kept = float(coefficients.pow(2).sum()) / total if total > 0 else 1.0
    return basis.contiguous(), std, kept
