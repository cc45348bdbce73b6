"""ExpDiffPipeline: neutral face + expressions -> generated UV maps -> recovered meshes (paper III-B..D).

Stages, each callable alone (the Prefect tasks call them one by one):

1. ``neutral_maps``: the user's neutral as model-resolution maps (position map from the mesh, textures
   resampled; missing specular/roughness/normal slots filled with albedo as the paper does).
2. ``encode``: maps -> neutral latents (M, C, h, w), maps tile-major (Eq. 5).
3. ``sample``: every expression of the character in one batch (chunked), SDEdit from the noised neutral
   (strength < 1, the paper's inference) or pure noise (strength 1); deterministic per expression and seed.
4. ``decode``: latents -> position and BRDF maps per expression (Eq. 7).
5. ``recover``: Eq. 9 on the user's own mesh, against the expression's *reference* so the model's identity
   bias cancels; ``transfer_maps`` does the same for textures at the user's texture resolution.

With an identity-aware prior (``prior/``, :class:`~expdiff_core.models.prior.ExpressionPrior`, a ridge
regression from the neutral to each unit's change), each expression starts from the prior instead of the
neutral: its latents ``z_p = z_0 + prior latent change`` are noised to ``prior_strength`` and denoised under
the prompt (SDEdit; 0 keeps the prior). The result is read directionally: vertices are the user's neutral +
the prior's vertex change + ``f(P(z_n) - P(z_p))`` (Eq. 9 against the decoded prior, so the codec's error on
the prior cancels), maps the user's neutral + ``D(z_n) - D(z_0)``; a prior with a map part gives the BRDF maps
in map space instead: the character's neutral + the prior's map change + ``D(z_n) - D(z_p)``, never passing the
codec where sampling changed nothing (:meth:`ExpDiffPipeline.apply_map_prior`). Without a prior (or ``use_prior=False``)
every expression is read against the generated neutral, as in the paper.

With an expression support (``support/``, :class:`~expdiff_core.models.support.ExpressionSupport`), each
expression's vertex and BRDF changes are kept only where its units changed some training identity
(:meth:`ExpDiffPipeline.restrict_to_support`): no drift where an expression does nothing.

A pretrained pipeline is a folder: ``pipeline_config.json``, ``template.obj`` (topology + the reference
shape position maps are measured from), ``vae/``, ``denoiser/`` (+ ``scheduler_config.json``), optionally
``prior/``, ``support/``, ``README.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..device import autocast, resolve_device
from ..errors import ExpDiffInputError
from ..fileio import atomic_dir
from ..io.mesh import FaceMesh, read_obj, write_obj
from ..io.template import check_template
from ..models.denoiser import ExpDiffDenoiser, encode_prompts, fit_prompt_tokens, load_denoiser
from ..models.prior import ExpressionPrior
from ..models.support import ExpressionSupport
from ..models.patch_codec import PatchChangeCodec, load_codec
from ..models.vae import LatentCodec, map_kind
from ..models.weights import store_float16
from ..schedulers import load_noise_scheduler, sampling_scheduler
from ..uv.position_map import PositionMapConfig, position_maps
from ..uv.raster import UVRaster, VertexSampler, uv_raster
from ..uv.recover import recover_mesh
from ..training.latents import NEUTRAL, NEUTRAL_PROMPT, expression_prompt

CONFIG_NAME = "pipeline_config.json"
TEMPLATE_NAME = "template.obj"
POSITION = "position"
BRDF_KINDS = ("albedo", "specular", "roughness", "normal")
ALBEDO_FILLED = ("specular", "roughness", "normal")
Maps = dict[str, dict[int, np.ndarray]]  # {kind: {udim: (C, H, W) float32}}
UNITS_PER_CM = {"cm": 1.0, "mm": 10.0, "m": 0.01}


@dataclass
class PipelineConfig:
    """What a trained ExpDiff model expects; stored as ``pipeline_config.json``.

    kinds: map kinds in the denoiser's order (``position`` + BRDF kinds); udims: generated tiles;
    resolution: map size (texels) the VAE and denoiser were trained at; skin_groups: material groups the
    position maps are rasterised from; text_encoder: ``"minilm"`` (the offline default) or the name of the
    production text encoder the denoiser was trained with. prior_strength: SDEdit strength from the prior
    (0: the prior's expression as it is; used only when the folder has a prior). prompt_temperature: softmax
    temperature over the cosine similarities of a free prompt to the units' prompts (its prior's mix).
    noise_scale: sampling temperature, the start noise's standard deviation relative to the schedule's (1: a
    draw from the model; below 1 trades variety for accuracy, 0 follows the sampler's path from the mean of
    the noise; DDPM's per-step noise is not scaled).
    """

    kinds: list[str]
    udims: list[int]
    resolution: int
    skin_groups: list[str]
    position: dict[str, Any] = field(default_factory=lambda: PositionMapConfig().to_dict())
    text_encoder: str = "minilm"
    neutral_prompt: str = NEUTRAL_PROMPT
    sampler: str = "ddim"
    steps: int = 30
    strength: float = 1.0
    guidance_scale: float = 1.0
    prior_strength: float = 0.0
    prompt_temperature: float = 0.02
    noise_scale: float = 1.0
    format: str = "expdiff-pipeline/1"

    @property
    def position_config(self) -> PositionMapConfig:
        return PositionMapConfig.from_dict(self.position)

    @classmethod
    def load(cls, path: Path) -> "PipelineConfig":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ExpDiffInputError(path, "pipeline config not found; not an ExpDiff model folder") from None
        except json.JSONDecodeError as exc:
            raise ExpDiffInputError(path, f"invalid JSON: {exc}") from None
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExpDiffInputError(path, f"unknown pipeline config key(s) {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class Expression:
    """One requested expression: a FACS unit, ``neutral``, a free prompt, or a blend of two prompts.

    label: the name used for blendshapes and files; prompt_b/weight: blend ``(1-w) * a + w * b``.
    """

    label: str
    prompt: str
    prompt_b: str | None = None
    weight: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Expression":
        """``jawOpen`` | ``neutral`` | ``nose right`` (free prompt) | ``jawOpen->mouthSmile_L@0.25`` (blend)."""
        text = text.strip()
        if not text:
            raise ExpDiffInputError(None, "empty expression")
        if "->" in text:
            a, _, rest = text.partition("->")
            b, _, w = rest.partition("@")
            try:
                weight = float(w) if w else 0.5
            except ValueError:
                raise ExpDiffInputError(None, f"expression {text!r}: blend weight {w!r} is not a number") from None
            return cls(_label(text), expression_prompt(a.strip()), expression_prompt(b.strip()), weight)
        return cls(_label(text), expression_prompt(text))


def _label(text: str) -> str:
    """A USD/file-safe name: unit names stay as they are, free prompts become ``prompt_<words>``."""
    safe = "".join(c if c.isalnum() else "_" for c in text).strip("_")
    while "__" in safe:
        safe = safe.replace("__", "_")
    if safe == text:
        return text
    return f"prompt_{safe}"[:64] if safe else "prompt_" + hashlib.sha1(text.encode()).hexdigest()[:8]


@dataclass
class ExpDiffOutput:
    """labels: expression names in order; vertices: {label: (V, 3)}; maps: {label: Maps} at model resolution;
    references: {label: Maps} what each expression's maps are read against (its prior, or the generated neutral).
    """

    labels: list[str]
    vertices: dict[str, np.ndarray]
    maps: dict[str, Maps]
    latents: torch.Tensor
    references: dict[str, Maps] = field(default_factory=dict)


class ExpDiffPipeline:
    """Load once per flow run; every stage reuses the loaded models."""

    def __init__(self, config: PipelineConfig, codec: LatentCodec, denoiser: ExpDiffDenoiser, noise_scheduler,
                 template: FaceMesh, text_encoder: Any = None, device: str | torch.device = "auto",
                 prior: ExpressionPrior | None = None,
                 change_codec: LatentCodec | PatchChangeCodec | None = None,
                 support: ExpressionSupport | None = None):
        self.config = config
        self.prior = prior
        self.support = support
        self.use_prior = prior is not None
        self.denoiser_compiled = False
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.codec = codec.to(self.device)
        # The denoiser's output codec: a change codec for a target="change" denoiser, else the neutral's own.
        self.change_codec = change_codec.to(self.device) if change_codec is not None else None
        self.denoiser = denoiser.to(self.device).eval().requires_grad_(False)
        self.noise_scheduler = noise_scheduler
        self.template = template
        self.text_encoder = text_encoder
        self._rasters: dict[str, dict[int, UVRaster]] = {}
        expected = list(denoiser.config.kinds)
        if expected != list(config.kinds) or int(denoiser.config.n_udims) != len(config.udims):
            raise ExpDiffInputError(None, f"denoiser expects kinds {expected} on {denoiser.config.n_udims} tile(s); "
                                    f"pipeline config says {config.kinds} on {config.udims}")
        if (denoiser.config.target == "change") != (change_codec is not None):
            raise ExpDiffInputError(None, "a denoiser of target 'change' needs a change codec (change_vae/) and only "
                                    f"it uses one; this one's target is {denoiser.config.target!r}")
        if change_codec is not None and not change_codec.encodes_change:
            raise ExpDiffInputError(None, "change_vae/ is a codec of absolute maps (no change_scales.json)")
        if support is not None and change_codec is None:
            raise ExpDiffInputError(None, "an expression support (support/) restricts the changes of a change model; "
                                    "this model has no change codec (change_vae/)")
        if change_codec is not None and change_codec.latent_channels != int(denoiser.config.latent_channels):
            raise ExpDiffInputError(None, f"change_vae/ makes {change_codec.latent_channels}-channel latents, the "
                                    f"denoiser diffuses {denoiser.config.latent_channels}")

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "auto",
                        text_encoder_path: str | os.PathLike | None = None) -> "ExpDiffPipeline":
        """Load a pipeline folder (safetensors only). ``text_encoder_path``: production text encoder folder."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ExpDiffInputError(folder, "model folder not found")
        config = PipelineConfig.load(folder / CONFIG_NAME)
        device = device if isinstance(device, torch.device) else resolve_device(device)
        codec = LatentCodec.from_pretrained(folder / "vae", device=device)
        denoiser = load_denoiser(folder / "denoiser")
        scheduler = load_noise_scheduler(folder / "denoiser")
        template = read_obj(folder / TEMPLATE_NAME)
        text_encoder = None
        if denoiser.config.text_conditioning == "encoder":
            from ..models.text_encoder import TextEncoder

            if config.text_encoder != "minilm" and text_encoder_path is None:
                raise ExpDiffInputError(folder, f"was trained with text encoder {config.text_encoder!r}; "
                                        "configure clip_text_encoder_path to its local folder")
            text_encoder = TextEncoder.from_pretrained(text_encoder_path if config.text_encoder != "minilm" else None,
                                                       device="cpu")
        prior = ExpressionPrior.from_pretrained(folder / "prior") if (folder / "prior").is_dir() else None
        change_codec = (load_codec(folder / "change_vae", device=device)
                        if (folder / "change_vae").is_dir() else None)
        if prior is not None and prior.config.vertex_count != template.n_vertices:
            raise ExpDiffInputError(folder / "prior", f"is for {prior.config.vertex_count} vertices, the template has "
                                    f"{template.n_vertices}")
        if prior is not None and prior.map_parts:
            c = prior.config
            foreign = sorted({f"{k} {u}" for k, u, _ in c.map_layout if k not in config.kinds or u not in config.udims})
            if c.map_resolution != config.resolution or foreign:
                raise ExpDiffInputError(folder / "prior", f"its map part is for {c.map_resolution}^2 maps"
                                        f"{' with ' + ', '.join(foreign) if foreign else ''}; the model makes "
                                        f"{config.resolution}^2 maps of {config.kinds} on {config.udims}")
        support = None
        if (folder / "support").is_dir():
            support = ExpressionSupport.from_pretrained(folder / "support")
            s = support.config
            tiles = sorted({(k, u) for k, u, _ in s.map_layout})
            if (s.vertex_count != template.n_vertices or s.map_resolution != config.resolution
                    or any(k not in config.kinds or u not in config.udims for k, u in tiles)):
                raise ExpDiffInputError(folder / "support", f"is for {s.vertex_count} vertices and "
                                        f"{s.map_resolution}^2 maps of {tiles}; the model has {template.n_vertices} "
                                        f"vertices and makes {config.resolution}^2 maps of {config.kinds} on "
                                        f"{config.udims}")
        return cls(config, codec, denoiser, scheduler, template, text_encoder, device, prior, change_codec, support)

    @staticmethod
    def assemble(folder: str | os.PathLike, config: PipelineConfig, vae_folder: str | os.PathLike,
                 denoiser_folder: str | os.PathLike, template: FaceMesh, model_card: str,
                 scheduler_folder: str | os.PathLike | None = None,
                 prior_folder: str | os.PathLike | None = None,
                 change_vae_folder: str | os.PathLike | None = None, half_weights: bool = False,
                 support_folder: str | os.PathLike | None = None) -> Path:
        """Write a new pipeline folder from trained parts (copies; ``folder`` must not exist).

        scheduler_folder: where the training noise schedule's ``scheduler_config.json`` is, when it is not
        in ``denoiser_folder`` already. change_vae_folder: the change codec a target="change" denoiser's
        latents decode with. half_weights: store the denoiser's float32 weights as float16 (half the size; it
        still computes in float32). support_folder: an expression support (``expdiff train support``).
        """
        import shutil

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
            write_obj(template, tmp / TEMPLATE_NAME)
            shutil.copytree(vae_folder, tmp / "vae")
            shutil.copytree(denoiser_folder, tmp / "denoiser")
            if half_weights:
                store_float16(tmp / "denoiser")
            if scheduler_folder is not None:
                shutil.copy2(Path(scheduler_folder) / "scheduler_config.json", tmp / "denoiser")
            if prior_folder is not None:
                shutil.copytree(prior_folder, tmp / "prior")
            if change_vae_folder is not None:
                shutil.copytree(change_vae_folder, tmp / "change_vae")
            if support_folder is not None:
                shutil.copytree(support_folder, tmp / "support")
            (tmp / "README.md").write_text(model_card)
        return folder

    # ------------------------------------------------------------------ stage 1: neutral maps
    def rasters(self, mesh: FaceMesh, cache_dir: str | os.PathLike | None = None) -> dict[int, UVRaster]:
        """Texel tables of ``mesh``'s skin groups at the model resolution (cached per topology)."""
        key = mesh.topology_hash()
        if key not in self._rasters:
            rasters = uv_raster(mesh, self.config.resolution, groups=self.config.skin_groups or None,
                                cache_dir=cache_dir, dilation=None)
            missing = sorted(set(self.config.udims) - set(rasters))
            if missing:
                raise ExpDiffInputError(None, f"mesh {mesh.name!r} has no skin UVs on tile(s) {missing} the model generates")
            self._rasters[key] = {u: rasters[u] for u in self.config.udims}
        return self._rasters[key]

    def check_mesh(self, mesh: FaceMesh, path: str | os.PathLike | None = None) -> None:
        """The mesh must be on the model's template topology (vertex order, faces, UVs)."""
        check_template(mesh, self.template, path)

    def neutral_maps(self, mesh: FaceMesh, textures: Mapping[str, Mapping[int, np.ndarray]],
                     cache_dir: str | os.PathLike | None = None) -> Maps:
        """{kind: {udim: (C, R, R)}} at the model resolution R for every kind the model uses.

        textures: the user's maps at any resolution (albedo required; missing specular / roughness / normal
        slots hold the albedo, as in the paper).
        """
        if "albedo" not in textures:
            raise ExpDiffInputError(None, "the neutral needs at least an albedo texture")
        r = self.config.resolution
        scale = self.config.position_config.scale_in(mesh.units)
        maps: Maps = {POSITION: position_maps(mesh.vertices, self._reference(mesh), self.rasters(mesh, cache_dir), scale)}
        for kind in self.config.kinds:
            if kind == POSITION:
                continue
            source = textures.get(kind) or textures["albedo"]
            missing = sorted(set(self.config.udims) - set(source))
            if missing:
                raise ExpDiffInputError(None, f"{kind} texture lacks UDIM tile(s) {missing}")
            maps[kind] = {u: resize_map(source[u], r) for u in self.config.udims}
        return maps

    def _reference(self, mesh: FaceMesh) -> np.ndarray:
        """The template shape in ``mesh``'s units (position maps measure displacement from it)."""
        return self.template.vertices * np.float32(UNITS_PER_CM[mesh.units] / UNITS_PER_CM[self.template.units])

    # ------------------------------------------------------------------ stage 2: encode
    @torch.no_grad()
    def encode(self, maps: Maps) -> torch.Tensor:
        """Maps -> latents (M, C, h, w) float32 on CPU, tile-major in the denoiser's map order."""
        codec = self.condition_codec
        out = []
        for udim in self.config.udims:
            for kind in self.config.kinds:
                out.append(codec.encode(torch.from_numpy(np.asarray(maps[kind][udim])), kind).float().cpu())
        return torch.stack(out)

    @property
    def condition_codec(self) -> LatentCodec | PatchChangeCodec:
        """The codec that encodes the character's neutral maps into the denoiser's condition: the absolute one,
        or the change codec for a denoiser configured with ``condition_codec="change"``."""
        if getattr(self.denoiser.config, "condition_codec", "vae") == "change":
            return self.change_codec
        return self.codec

    # ------------------------------------------------------------------ stage 3: sample
    def prompt_tokens(self, expressions: Sequence[Expression]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (N, L, D), mask (N, L)) for the expressions, blends included."""
        cfg = self.denoiser.config
        tokens, masks = [], []
        for e in expressions:
            if e.prompt_b is not None and cfg.text_conditioning == "encoder":
                emb = self.text_encoder.interpolate(e.prompt, e.prompt_b, e.weight).to("cpu")
                t, m = fit_prompt_tokens(emb.tokens.float(), emb.mask.bool(), int(cfg.text_len))
                tokens.append(t[0] * m[0, :, None])
                masks.append(m[0])
            else:
                pt = encode_prompts(cfg, [e.prompt] if e.prompt_b is None else [e.prompt, e.prompt_b], self.text_encoder)
                if e.prompt_b is None:
                    tokens.append(pt.tokens[0])
                    masks.append(pt.mask[0])
                else:
                    tokens.append((1 - e.weight) * pt.tokens[0] + e.weight * pt.tokens[1])
                    masks.append(pt.mask[0] | pt.mask[1])
        return torch.stack(tokens), torch.stack(masks)

    # ------------------------------------------------------------------ the prior
    def prior_mix(self, expressions: Sequence[Expression]) -> np.ndarray:
        """(N, E) weights of the prior's units for each expression (:meth:`unit_mix`)."""
        if self.prior is None:
            raise ExpDiffInputError(None, "this model has no expression prior")
        return self.prior.weights_for(self.unit_mix(expressions, self.prior.expressions))

    def unit_mix(self, expressions: Sequence[Expression], units: Sequence[str]) -> list[dict[str, float]]:
        """Per expression, {unit: weight} over ``units``.

        A unit's own prompt is that unit; ``neutral`` is no unit; a blend mixes its two sides' weights; a free
        prompt mixes the units whose prompts it resembles (softmax of the text encoder's pooled cosine
        similarity over ``prompt_temperature``, weights under 1% dropped), and gets no unit from a model
        without a text encoder.
        """
        by_prompt = {expression_prompt(u): u for u in units}
        free = sorted({p for e in expressions for p in (e.prompt, e.prompt_b)
                       if p is not None and p not in by_prompt and p != self.config.neutral_prompt})
        similar: dict[str, dict[str, float]] = {}
        if free and self.text_encoder is not None:
            pooled = self.text_encoder.encode(list(by_prompt) + free).pooled.float().cpu()
            pooled = F.normalize(pooled, dim=-1)
            cos = pooled[len(by_prompt):] @ pooled[:len(by_prompt)].T
            weights = torch.softmax(cos / float(self.config.prompt_temperature), dim=-1)
            for prompt, w in zip(free, weights):
                w = torch.where(w >= 0.01, w, torch.zeros_like(w))
                similar[prompt] = {u: float(x) for u, x in zip(by_prompt.values(), w / w.sum()) if x > 0}

        def mix(prompt: str | None) -> dict[str, float]:
            if prompt is None or prompt == self.config.neutral_prompt:
                return {}
            return {by_prompt[prompt]: 1.0} if prompt in by_prompt else similar.get(prompt, {})

        rows = []
        for e in expressions:
            if e.prompt_b is None:
                rows.append(mix(e.prompt))
                continue
            row: dict[str, float] = {}
            for prompt, w in ((e.prompt, 1.0 - e.weight), (e.prompt_b, e.weight)):
                for u, x in mix(prompt).items():
                    row[u] = row.get(u, 0.0) + w * x
            rows.append(row)
        return rows

    def support_mix(self, expressions: Sequence[Expression]) -> np.ndarray | None:
        """(N, E) weights of the support's units for each expression (:meth:`unit_mix`); None without a support."""
        if self.support is None:
            return None
        return self.support.weights_for(self.unit_mix(expressions, self.support.expressions))

    def restrict_to_support(self, mix: np.ndarray | None, mesh: FaceMesh, vertices: Sequence[np.ndarray],
                            maps: Sequence[Maps], references: Sequence[Maps]) -> tuple[list[np.ndarray], list[Maps]]:
        """Each expression's vertex change from ``mesh`` and BRDF change from its reference kept where its units
        change some training identity (``mix``: :meth:`support_mix`); as they are without a support."""
        if self.support is None or mix is None:
            return list(vertices), list(maps)
        changes = np.stack([v - mesh.vertices for v in vertices])
        kept = mesh.vertices[None] + self.support.restrict_vertices(changes, mix)
        return ([k.astype(v.dtype) for k, v in zip(kept, vertices)],
                self.support.restrict_maps(maps, references, mix))

    def prior_scores(self, mesh: FaceMesh, textures: Mapping[str, Mapping[int, np.ndarray]]) -> np.ndarray:
        """(K,) the neutral's identity scores under the prior.

        textures: the user's own maps (kinds they do not have are left out, not albedo-filled), any resolution.
        """
        if self.prior is None or (self.prior.latent_mean is None and not self.encodes_prior_changes):
            raise ExpDiffInputError(None, "this model has no expression prior with latents")
        r = self.config.resolution
        coarse = {k: {u: _channels(resize_map(t, r), 3 if k in ("albedo", "normal") else 1)
                      for u, t in tiles.items() if u in self.config.udims} for k, tiles in textures.items()}
        return self.prior.scores(mesh.vertices * self._to_prior_units(mesh.units), coarse)

    def _to_prior_units(self, units: str) -> np.float32:
        return np.float32(UNITS_PER_CM[self.prior.config.units] / UNITS_PER_CM[units])

    @property
    def encodes_prior_changes(self) -> bool:
        """True when the prior's latents are its changes encoded by the linear change codec (a prior without a
        stored latent part): a linear codec's latents of a change are exactly what its latent part would fit."""
        return isinstance(self.change_codec, PatchChangeCodec)

    def prior_changes(self, scores: np.ndarray, mix: np.ndarray, units: str) -> tuple[np.ndarray, torch.Tensor]:
        """The prior's change for each row of ``mix`` (:meth:`prior_mix`): vertices (N, V, 3) in ``units``,
        latents (N, M, C, h, w): the prior's latent part, or (:attr:`encodes_prior_changes`) its vertex and map
        changes encoded by the change codec."""
        change = self.prior.vertex_change(scores, mix)
        if self.encodes_prior_changes:
            latents = self.encode_changes(change / self._to_prior_units(self.template.units),
                                          self.prior.map_change(scores, mix))
        elif self.prior.latent_mean is not None:
            latents = torch.from_numpy(self.prior.latent_change(scores, mix))
        else:
            raise ExpDiffInputError(None, "the expression prior has no latent part and this model's codec cannot "
                                    "encode its changes")
        return change / self._to_prior_units(units), latents

    def encode_changes(self, vertex_changes: np.ndarray, map_changes: Sequence[Maps] | None = None) -> torch.Tensor:
        """Changes -> change latents (N, M, C, h, w) float32 on CPU, tile-major.

        vertex_changes: (N, V, 3) on the model's template, in its units (rasterised on its UVs into position
        change maps); map_changes: per row {kind: {udim: (C, R, R)}} of the BRDF kinds, or None (no change).
        """
        if self.change_codec is None:
            raise ExpDiffInputError(None, "this model has no change codec to encode changes with")
        rasters = self.rasters(self.template)
        scale = self.config.position_config.scale_in(self.template.units)
        zero = np.zeros_like(self.template.vertices, dtype=np.float32)
        n = len(vertex_changes)
        position = [position_maps(np.asarray(v, np.float32), zero, rasters, scale) for v in vertex_changes]
        r = self.config.resolution
        per_kind = {}
        for kind in self.config.kinds:
            if kind == POSITION:
                tiles = [position[i][u] for i in range(n) for u in self.config.udims]
            elif map_changes is not None and kind in map_changes[0]:
                tiles = [map_changes[i][kind][u] for i in range(n) for u in self.config.udims]
            else:
                tiles = [np.zeros((map_kind(kind).channels, r, r), np.float32)] * (n * len(self.config.udims))
            per_kind[kind] = self.change_codec.encode(torch.from_numpy(np.stack(tiles)), kind).float().cpu()
        u_count = len(self.config.udims)
        latents = torch.stack([per_kind[kind].reshape(n, u_count, *per_kind[kind].shape[1:])
                               for kind in self.config.kinds], dim=2)  # (N, U, K, C, h, w): tile-major
        return latents.reshape(n, u_count * len(self.config.kinds), *latents.shape[3:])

    def compile_denoiser(self) -> None:
        """``torch.compile`` the denoiser in place, once: the same network, sampled faster after a one-off
        compile on first use."""
        if not self.denoiser_compiled:
            self.denoiser.compile()
            self.denoiser_compiled = True

    def kinds_to_decode(self, kept: bool) -> list[str] | None:
        """The map kinds a prior build needs decoded; None = all. At strength 0 (``kept``: sampling changed no
        latent) the prior's map part replaces its kinds' decoded maps outright, so decoding them is wasted."""
        if not kept or not self.use_prior or self.prior is None or not self.prior.map_parts:
            return None
        return [kind for kind in self.config.kinds if kind not in self.prior.map_parts]

    def apply_map_prior(self, decoded: Sequence[Maps], starts: Sequence[Maps] | None, neutral_maps: Maps,
                        scores: np.ndarray, mix: np.ndarray) -> list[Maps]:
        """With the prior's map part: each expression's BRDF maps become the character's ``neutral_maps`` (model
        resolution, each kind at its own channel count: :func:`own_channels`) + the prior's map change + what sampling changed from its start (``decoded - starts``;
        ``starts`` None at strength 0, when nothing did), clipped to the kind's range. Position maps stay as
        decoded. Without a map part, ``decoded`` as it is.
        """
        changes = self.prior.map_change(scores, mix)
        if changes is None:
            return list(decoded)
        out = []
        for i, maps in enumerate(decoded):
            row = dict(maps)
            for kind, tiles in changes[i].items():
                spec = map_kind(kind)
                row[kind] = {}
                for udim, change in tiles.items():
                    image = neutral_maps[kind][udim] + change
                    if starts is not None:
                        image = image + (maps[kind][udim] - starts[i][kind][udim])
                    row[kind][udim] = np.clip(image, spec.low, spec.high)
            out.append(row)
        return out

    @torch.no_grad()
    def sample(self, neutral_latents: torch.Tensor, expressions: Sequence[Expression], *, seed: int = 0,
               steps: int | None = None, sampler: str | None = None, strength: float | None = None,
               guidance_scale: float | None = None, noise_scale: float | None = None, batch_size: int | None = None,
               on_progress: Callable[[int, int], None] | None = None, progress: bool = True,
               start_latents: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise every expression's latents -> (N, M, C, h, w) float32 on CPU.

        strength in (0, 1]: 1 starts from pure noise; below 1 starts from the neutral latents (or
        ``start_latents`` (N, M, C, h, w), e.g. the prior's) noised to that fraction of the schedule (SDEdit,
        the paper's inference); with ``start_latents`` a strength of 0 returns them unchanged. Every expression
        of the character starts from the *same* noise (seeded by ``seed``): with deterministic samplers the expressions then differ
        only through their prompts, so Eq. 9's expression-minus-generated-neutral difference carries the
        expression and not two independent draws (measured on held-out identities: mean vertex error 1.41 ->
        0.58 mm). ``batch_size``: expressions per denoiser forward (default: the denoiser's ``sampling_batch``);
        results do not depend on batch composition or chunking.
        """
        cfg = self.config
        steps = int(steps or cfg.steps)
        batch_size = int(batch_size or self.denoiser.sampling_batch)
        strength = float(cfg.strength if strength is None else strength)
        guidance = float(cfg.guidance_scale if guidance_scale is None else guidance_scale)
        temperature = float(cfg.noise_scale if noise_scale is None else noise_scale)
        if start_latents is not None and strength == 0.0:
            return start_latents.float().cpu().clone()
        if not 0.0 < strength <= 1.0:
            raise ExpDiffInputError(None, f"strength must be in (0, 1], got {strength}")
        if steps < 1:
            raise ExpDiffInputError(None, f"steps must be at least 1, got {steps}")
        if not 0.0 <= temperature <= 1.0:
            raise ExpDiffInputError(None, f"noise_scale must be in [0, 1], got {temperature}")
        tokens, mask = self.prompt_tokens(expressions)
        neutral = neutral_latents.float()
        results = []
        total_chunks = (len(expressions) + batch_size - 1) // batch_size
        done = 0
        bar = tqdm(total=len(expressions) * steps, desc="diffuse", unit="step", disable=not progress)
        for start in range(0, len(expressions), batch_size):
            chunk = list(expressions[start:start + batch_size])
            n = len(chunk)
            scheduler = sampling_scheduler(sampler or cfg.sampler, self.noise_scheduler)
            scheduler.set_timesteps(steps)
            timesteps = scheduler.timesteps
            first = 0
            if strength < 1.0:
                first = steps - max(1, int(round(steps * strength)))
                timesteps = timesteps[first:]
                if hasattr(scheduler, "set_begin_index"):
                    scheduler.set_begin_index(first * getattr(scheduler, "order", 1))
            shape = tuple(self.denoiser.diffused_shape())
            noise = temperature * _seeded_noise(seed, shape)[None].expand(n, *shape)
            cond = neutral[None].expand(n, *neutral.shape).to(self.device)
            noise = noise.to(self.device)
            if strength < 1.0:
                # the neutral (a zero residual), or the given start (the prior's expression)
                begin = (self.unchanged_latents(cond) if start_latents is None
                         else start_latents[start:start + n].float().to(self.device))
                start_target = self.denoiser.diffusion_target(begin, cond)
                x = self.noise_scheduler.add_noise(start_target, noise, timesteps[:1].repeat(n).to(self.device))
            else:
                x = noise * scheduler.init_noise_sigma
            t_tok = tokens[start:start + n].to(self.device)
            t_mask = mask[start:start + n].to(self.device)
            generator = torch.Generator("cpu").manual_seed(seed)
            for t in timesteps:
                model_in = scheduler.scale_model_input(x, t)
                with autocast(self.device):
                    if guidance != 1.0:
                        eps = self.denoiser(torch.cat([model_in, model_in]), t, torch.cat([cond, cond]),
                                            torch.cat([t_tok, torch.zeros_like(t_tok)]),
                                            torch.cat([t_mask, torch.zeros_like(t_mask)])).float()
                        eps_c, eps_u = eps.chunk(2)
                        eps = eps_u + guidance * (eps_c - eps_u)
                    else:
                        eps = self.denoiser(model_in, t, cond, t_tok, t_mask).float()
                x = _step(scheduler, eps, t, x, generator)
                bar.update(n)
            results.append(self.denoiser.latents_from_target(x.float(), cond.float()).cpu())
            done += 1
            if on_progress is not None:
                on_progress(done, total_chunks)
        bar.close()
        return torch.cat(results)

    def target_shape(self, neutral_latents: torch.Tensor) -> tuple[int, ...]:
        """(M, C, h, w) of one expression's latents for a character with ``neutral_latents`` (..., M, Cn, h, w):
        C is the change codec's channel count, which may differ from the neutral codec's Cn."""
        m, _, h, w = neutral_latents.shape[-4:]
        return (m, int(self.denoiser.config.latent_channels), h, w)

    def unchanged_latents(self, neutral_latents: torch.Tensor) -> torch.Tensor:
        """The latents of an expression that changes nothing: the neutral's own, or zero for a change denoiser
        (a change codec encodes no change to zero), with the change codec's channel count."""
        if self.change_codec is None:
            return neutral_latents
        return neutral_latents.new_zeros(*neutral_latents.shape[:-4], *self.target_shape(neutral_latents))

    # ------------------------------------------------------------------ stage 4: decode
    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, texels_per_pass: int = 32 * 128 * 128, *,
               neutral_maps: Maps | None = None, kinds: Sequence[str] | None = None) -> list[Maps]:
        """(N, M, C, h, w) latents -> per expression {kind: {udim: (C, R, R) float32}} (1 channel for spec/rough).

        kinds: decode only these map kinds (default: all); the others are absent from the result.

        With a change codec the latents are changes, and each expression's maps are ``neutral_maps`` (the
        character's own, at model resolution; required then) plus its decoded change, clipped to the kind's
        range: read against ``neutral_maps``, every stage after this one sees the decoded change exactly.
        Batched: the N x M latents are decoded kind by kind in chunks of ``texels_per_pass`` output texels
        (default: 32 maps at 128^2, 2 at 512^2), one decoder pass per chunk whatever the expression or tile
        (``LatentCodec.decode_pass``), in inference mode.
        """
        cfg = self.config
        codec = self.change_codec or self.codec
        if self.change_codec is not None and neutral_maps is None:
            raise ExpDiffInputError(None, "a change model decodes onto the character's neutral maps; none given")
        n, m_count = latents.shape[:2]
        k = len(cfg.kinds)
        unknown = sorted(set(kinds or ()) - set(cfg.kinds))
        if unknown:
            raise ExpDiffInputError(None, f"cannot decode map kind(s) {unknown}; the model's are {list(cfg.kinds)}")
        wanted = [kind for kind in cfg.kinds if kinds is None or kind in kinds]
        out: list[Maps] = [{kind: {} for kind in wanted} for _ in range(n)]
        size = latents.shape[-1] * codec.downsample_factor
        per_pass = max(1, int(texels_per_pass) // (size * size))
        for kind_index, kind in enumerate(cfg.kinds):
            if kind not in wanted:
                continue
            maps = [m for m in range(m_count) if m % k == kind_index]
            rows = [(i, m) for m in maps for i in range(n)]
            z_all = latents[:, maps].transpose(0, 1).reshape(len(rows), *latents.shape[2:])  # map-major rows
            spec = map_kind(kind)
            for start in range(0, len(rows), per_pass):
                decoded = codec.decode_pass(z_all[start:start + per_pass].to(self.device), kind).cpu().numpy()
                for (i, m), image in zip(rows[start:start + per_pass], decoded):
                    udim = cfg.udims[m // k]
                    if self.change_codec is not None:
                        base = _channels(np.asarray(neutral_maps[kind][udim], np.float32), image.shape[0])
                        image = np.clip(base + image, spec.low, spec.high)
                    out[i][kind][udim] = image
        return out

    # ------------------------------------------------------------------ stage 5: recover
    def recover(self, mesh: FaceMesh, position_n: Mapping[int, np.ndarray], position_neutral: Mapping[int, np.ndarray],
                sampler: VertexSampler | None = None, name: str | None = None) -> FaceMesh:
        """Eq. 9 on the user's mesh: its neutral plus the generated (expression - neutral) displacement."""
        rasters = self.rasters(mesh)
        scale = self.config.position_config.scale_in(mesh.units)
        return recover_mesh(mesh, position_n, position_neutral, rasters, scale, sampler=sampler, name=name)

    def vertex_sampler(self, mesh: FaceMesh) -> VertexSampler:
        """Build once per mesh to recover many expressions."""
        return VertexSampler(mesh, self.rasters(mesh))

    # ------------------------------------------------------------------ all stages
    def __call__(self, mesh: FaceMesh, textures: Mapping[str, Mapping[int, np.ndarray]],
                 expressions: Sequence[str | Expression], *, seed: int = 0, steps: int | None = None,
                 sampler: str | None = None, strength: float | None = None, progress: bool = True) -> ExpDiffOutput:
        """Generate every expression for one character (the generated neutral is added when missing)."""
        exprs = [e if isinstance(e, Expression) else Expression.parse(e) for e in expressions]
        if NEUTRAL not in [e.label for e in exprs]:
            exprs = [Expression(NEUTRAL, self.config.neutral_prompt)] + exprs
        self.check_mesh(mesh)
        maps_in = self.neutral_maps(mesh, textures)
        z0 = self.encode(maps_in)
        labels = [e.label for e in exprs]
        sampler_ = self.vertex_sampler(mesh)
        if not self.use_prior:
            latents = self.sample(z0, exprs, seed=seed, steps=steps, sampler=sampler, strength=strength,
                                  progress=progress)
            if self.change_codec is not None:  # the neutral is no change, exactly
                latents[labels.index(NEUTRAL)] = self.unchanged_latents(z0)
            decoded = self.decode(latents, neutral_maps=maps_in)
            neutral_maps = decoded[labels.index(NEUTRAL)]
            vertices = {label: self.recover(mesh, maps[POSITION], neutral_maps[POSITION], sampler_).vertices
                        for label, maps in zip(labels, decoded)}
            kept_vertices, kept_maps = self.restrict_to_support(self.support_mix(exprs), mesh, list(vertices.values()),
                                                                decoded, [neutral_maps] * len(labels))
            return ExpDiffOutput(labels, dict(zip(labels, kept_vertices)), dict(zip(labels, kept_maps)), latents,
                                 {label: neutral_maps for label in labels})
        scores, mix = self.prior_scores(mesh, textures), self.prior_mix(exprs)
        prior_vertices, prior_latents = self.prior_changes(scores, mix, mesh.units)
        start = self.unchanged_latents(z0)[None] + prior_latents
        latents = self.sample(z0, exprs, seed=seed, steps=steps, sampler=sampler, progress=progress,
                              strength=self.config.prior_strength if strength is None else strength,
                              start_latents=start)
        kept = torch.equal(latents, start)  # strength 0 keeps the prior
        starts = self.decode(start, neutral_maps=maps_in, kinds=self.kinds_to_decode(kept))
        decoded = starts if kept else self.decode(latents, neutral_maps=maps_in)
        neutral_maps = starts[labels.index(NEUTRAL)]  # the neutral's prior change is zero: its start is z0
        if self.prior.map_parts:  # BRDF maps in map space, read against the character's own neutral
            neutral_maps = own_channels(maps_in)
            decoded = self.apply_map_prior(decoded, None if kept else starts, neutral_maps, scores, mix)
        references = {label: {POSITION: s[POSITION], **{k: v for k, v in neutral_maps.items() if k != POSITION}}
                      for label, s in zip(labels, starts)}
        vertices = {}
        for i, label in enumerate(labels):
            base = mesh.with_vertices(mesh.vertices + prior_vertices[i])
            vertices[label] = self.recover(base, decoded[i][POSITION], starts[i][POSITION], sampler_).vertices
        kept_vertices, kept_maps = self.restrict_to_support(self.support_mix(exprs), mesh,
                                                            [vertices[label] for label in labels], decoded,
                                                            [references[label] for label in labels])
        return ExpDiffOutput(labels, dict(zip(labels, kept_vertices)), dict(zip(labels, kept_maps)), latents,
                             references)


# ---------------------------------------------------------------------- helpers
def _seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    digest = hashlib.sha256(f"{int(seed)}".encode()).digest()
    gen = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn(shape, generator=gen)


def _step(scheduler, eps: torch.Tensor, t, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One scheduler step; DDPM's variance noise is drawn on CPU from ``generator`` for determinism."""
    try:
        return scheduler.step(eps, t, x, generator=generator).prev_sample
    except TypeError:  # schedulers without a generator argument are deterministic anyway
        return scheduler.step(eps, t, x).prev_sample


def resize_map(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size): area averaging when shrinking, bilinear when growing."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[1:] == (size, size):
        return image
    t = torch.from_numpy(image)[None]
    mode = "area" if image.shape[1] >= size and image.shape[2] >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0].numpy()


def own_channels(maps: Maps) -> Maps:
    """{kind: {udim: (C, R, R)}} with every map at its kind's channel count (a one-channel kind given as RGB --
    e.g. filled with the albedo -- averaged), as the decoded maps it is read against are."""
    return {kind: {u: _channels(np.asarray(img, np.float32), map_kind(kind).channels) for u, img in tiles.items()}
            for kind, tiles in maps.items()}


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return image.mean(axis=0, keepdims=True)
    return np.repeat(image[:1], 3, axis=0) if image.shape[0] == 1 else image[:3]


def transfer_map(user_neutral: np.ndarray, generated: np.ndarray, generated_neutral: np.ndarray, kind: str) -> np.ndarray:
    """Directional texture transfer at the user's resolution (the texture analogue of Eq. 9).

    ``user_neutral + upsample(generated - generated_neutral)``, clipped to [0, 1]; normal vectors are
    rescaled to the length of the user's. Keeps every detail of the user's own texture and adds only what
    the expression changes.
    user_neutral: (C, H, W); generated, generated_neutral: (C', R, R) at the model resolution.
    """
    c, h, w = user_neutral.shape
    delta = generated.astype(np.float32) - generated_neutral.astype(np.float32)
    if delta.shape[0] != c:
        delta = _channels(delta, c)
    if delta.shape[1:] != (h, w):
        delta = F.interpolate(torch.from_numpy(delta)[None], size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
    out = user_neutral.astype(np.float32) + delta
    if kind == "normal":
        # Back to the user's own vector length (unit up to their file's precision): a zero change then
        # returns their normals exactly instead of re-rounding every texel of a half-float map.
        user = user_neutral.astype(np.float32) * 2.0 - 1.0
        n = out * 2.0 - 1.0
        n *= np.linalg.norm(user, axis=0, keepdims=True) / np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-6)
        out = n * 0.5 + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)
