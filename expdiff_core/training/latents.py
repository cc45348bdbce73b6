"""The encoded dataset: per-subject safetensors shards of VAE latents, and a torch Dataset over them.

Layout (format ``expdiff-latents/1``, written by the latent encoder, read by the diffusion trainer)::

    <root>/manifest.json              kinds, udims, latent_shape [C, h, w], scaling_factor, expressions
                                      (["neutral", ...units]), subjects {"train"|"val"|"test": [...]}, codec {...},
                                      optional prompts {expression: prompt} for expressions that are free prompts
    <root>/<subject>.safetensors      "<expression>/<kind>/<udim>" -> (C, h, w) float32 or float16

A sample is one (subject, expression): ``target`` (M, C, h, w) = the expression's latents stacked tile-major
(``m = udim_index * len(kinds) + kind_index``), ``neutral`` (M, C, h, w) = the same subject's neutral latents
(the condition), and the index of the expression's prompt in ``dataset.prompts``.

A *change* encoding (``codec["representation"] == "change"``) stores each expression's latents from a change
codec (its maps minus the neutral's, relative to no change) while the neutral's stay absolute (the condition);
the neutral's own target is then zero (no change).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ExpDiffInputError
from ..fileio import atomic_path

LATENT_FORMAT = "expdiff-latents/1"
MANIFEST_NAME = "manifest.json"
NEUTRAL = "neutral"
NEUTRAL_PROMPT = "a neutral face, relaxed, no expression"
SPLITS = ("train", "val", "test")
ALBEDO = "albedo"
ALBEDO_FILLED_KINDS = ("specular", "roughness", "normal")


def latent_key(expression: str, kind: str, udim: int) -> str:
    """The shard key of one latent map: ``"<expression>/<kind>/<udim>"``."""
    return f"{expression}/{kind}/{int(udim)}"


def expression_prompt(expression: str, prompts: Mapping[str, str] | None = None) -> str:
    """The text prompt of ``expression``: an explicit override, the neutral prompt, the FACS unit's prompt,
    or (a free prompt) the expression string itself."""
    if prompts and expression in prompts:
        return prompts[expression]
    if expression == NEUTRAL:
        return NEUTRAL_PROMPT
    try:
        from ..facs import unit
    except ImportError:  # facs.py not available: every expression is its own prompt
        return expression
    try:
        return unit(expression).prompt
    except (KeyError, LookupError, ValueError):
        return expression


@dataclass
class LatentManifest:
    """``<root>/manifest.json`` of an encoded dataset."""

    kinds: list[str]
    udims: list[int]
    latent_shape: list[int]
    scaling_factor: float
    expressions: list[str]
    subjects: dict[str, list[str]]
    codec: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    condition_channels: int | None = None
    format: str = LATENT_FORMAT

    @property
    def n_maps(self) -> int:
        return len(self.kinds) * len(self.udims)

    @property
    def condition_shape(self) -> list[int]:
        """[C, h, w] of the neutral's latents (the condition): ``latent_shape`` unless a change codec with
        another channel count encoded the expressions (``condition_channels``)."""
        return [self.condition_channels or self.latent_shape[0], *self.latent_shape[1:]]

    @property
    def encodes_change(self) -> bool:
        """True when the expressions' latents are a change codec's (see the module docstring)."""
        return self.codec.get("representation") == "change"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["prompts"]:
            del data["prompts"]
        if data["condition_channels"] is None:
            del data["condition_channels"]
        return {"format": data.pop("format"), **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | os.PathLike | None = None) -> "LatentManifest":
        """Validate and build; errors name ``path`` and the bad field."""
        if data.get("format") != LATENT_FORMAT:
            raise ExpDiffInputError(path, f"format is {data.get('format')!r}, expected {LATENT_FORMAT!r}")
        missing = [k for k in ("kinds", "udims", "latent_shape", "scaling_factor", "expressions", "subjects")
                   if k not in data]
        if missing:
            raise ExpDiffInputError(path, f"manifest lacks {missing}")
        manifest = cls(kinds=[str(k) for k in data["kinds"]], udims=[int(u) for u in data["udims"]],
                       latent_shape=[int(s) for s in data["latent_shape"]],
                       scaling_factor=float(data["scaling_factor"]), expressions=[str(e) for e in data["expressions"]],
                       subjects={str(k): [str(s) for s in v] for k, v in dict(data["subjects"]).items()},
                       codec=dict(data.get("codec") or {}), prompts=dict(data.get("prompts") or {}),
                       condition_channels=(None if data.get("condition_channels") is None
                                           else int(data["condition_channels"])))
        if not manifest.kinds or len(set(manifest.kinds)) != len(manifest.kinds):
            raise ExpDiffInputError(path, f"kinds {manifest.kinds} must be a non-empty list without repeats")
        if not manifest.udims or len(set(manifest.udims)) != len(manifest.udims):
            raise ExpDiffInputError(path, f"udims {manifest.udims} must be a non-empty list without repeats")
        if len(manifest.latent_shape) != 3 or min(manifest.latent_shape) < 1:
            raise ExpDiffInputError(path, f"latent_shape {manifest.latent_shape} must be [C, h, w]")
        if manifest.condition_channels is not None and (manifest.condition_channels < 1
                                                        or not manifest.encodes_change):
            raise ExpDiffInputError(path, "condition_channels must be >= 1, and only a change encoding has them")
        if NEUTRAL not in manifest.expressions:
            raise ExpDiffInputError(path, f"expressions must include {NEUTRAL!r} (the condition)")
        unknown = sorted(set(manifest.subjects) - set(SPLITS))
        if unknown:
            raise ExpDiffInputError(path, f"subjects has unknown split(s) {unknown}; splits are {list(SPLITS)}")
        return manifest


def read_manifest(root: str | os.PathLike) -> LatentManifest:
    """The manifest of the encoded dataset at ``root``."""
    path = Path(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExpDiffInputError(path, "latent dataset manifest not found") from None
    except json.JSONDecodeError as exc:
        raise ExpDiffInputError(path, f"invalid JSON: {exc}") from None
    return LatentManifest.from_json(data, path)


def write_manifest(root: str | os.PathLike, manifest: LatentManifest, *, overwrite: bool = False) -> Path:
    """Write ``<root>/manifest.json`` atomically; refuses to replace an existing one unless ``overwrite``."""
    path = Path(root) / MANIFEST_NAME
    LatentManifest.from_json(manifest.to_json(), path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def write_latent_shard(path: str | os.PathLike, latents: Mapping[str, torch.Tensor], *,
                       overwrite: bool = False) -> Path:
    """Write one subject's latents (``"<expression>/<kind>/<udim>"`` -> (C, h, w) float32|float16) as safetensors.

    Atomic; refuses to replace an existing shard unless ``overwrite``.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in latents.items():
        parts = key.split("/")
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
            raise ExpDiffInputError(path, f"latent key {key!r} is not '<expression>/<kind>/<udim>'")
        if not isinstance(value, torch.Tensor) or value.ndim != 3:
            raise ExpDiffInputError(path, f"latent {key!r} must be a (C, h, w) tensor")
        if value.dtype not in (torch.float32, torch.float16):
            raise ExpDiffInputError(path, f"latent {key!r} is {value.dtype}; float32 or float16 expected")
        tensors[key] = value.detach().cpu().contiguous()
    if not tensors:
        raise ExpDiffInputError(path, "no latents to write")
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"format": LATENT_FORMAT})
    return path


def read_latent_shard(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All latents of one shard, as stored (float32 or float16)."""
    path = Path(path)
    if not path.is_file():
        raise ExpDiffInputError(path, "latent shard not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as exc:
        raise ExpDiffInputError(path, f"not a readable safetensors file: {exc}") from None


class LatentDataset(torch.utils.data.Dataset):
    """(subject, expression) training samples of one split of an encoded dataset.

    ``include_neutral``: neutral is also a target (prompt :data:`NEUTRAL_PROMPT`), since mesh recovery
    (Eq. 9) needs the generated neutral. ``repeat_albedo``: the neutral condition's specular, roughness and
    normal slots hold the neutral albedo latent (the paper's fill when a studio only has albedo); shards then
    need only neutral position and albedo latents, and the neutral target is that same filled stack.
    ``expressions``: restrict to these (default: all of the manifest's).

    Item: ``{"target": (M, C, h, w) float32, "neutral": (M, Cn, h, w) float32 (Cn: ``condition_shape``),
    "prompt_index": int, "subject": str, "expression": str}``. Shards are memory-mapped on first use, not loaded whole.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, include_neutral: bool = True,
                 repeat_albedo: bool = False, expressions: Sequence[str] | None = None):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if split not in SPLITS:
            raise ExpDiffInputError(self.root / MANIFEST_NAME, f"split {split!r} is not one of {list(SPLITS)}")
        self.split = split
        self.subjects = list(self.manifest.subjects.get(split, []))
        if not self.subjects:
            raise ExpDiffInputError(self.root / MANIFEST_NAME, f"split {split!r} has no subjects")
        self.repeat_albedo = repeat_albedo
        if repeat_albedo and ALBEDO not in self.manifest.kinds:
            raise ExpDiffInputError(self.root / MANIFEST_NAME, f"repeat_albedo needs an {ALBEDO!r} kind; kinds "
                                    f"are {self.manifest.kinds}")
        chosen = list(self.manifest.expressions if expressions is None else expressions)
        unknown = [e for e in chosen if e not in self.manifest.expressions]
        if unknown:
            raise ExpDiffInputError(self.root / MANIFEST_NAME, f"expressions {unknown} are not in the manifest")
        self.expressions = [e for e in chosen if e != NEUTRAL] + ([NEUTRAL] if include_neutral else [])
        if not self.expressions:
            raise ExpDiffInputError(self.root / MANIFEST_NAME, "no expressions to train on")
        self.prompts = [expression_prompt(e, self.manifest.prompts) for e in self.expressions]
        self.samples = [(s, e) for s in self.subjects for e in range(len(self.expressions))]
        self._handles: dict[str, Any] = {}
        for subject in self.subjects:
            self._check_shard(subject)

    # ------------------------------------------------------------------ layout
    def _neutral_sources(self) -> list[tuple[str, int]]:
        """(kind, udim) read for each neutral slot, tile-major."""
        filled = self.repeat_albedo
        return [(ALBEDO if filled and kind in ALBEDO_FILLED_KINDS else kind, udim)
                for udim in self.manifest.udims for kind in self.manifest.kinds]

    def _required_keys(self) -> set[str]:
        keys = {latent_key(NEUTRAL, kind, udim) for kind, udim in self._neutral_sources()}
        for expression in self.expressions:
            if expression != NEUTRAL:
                keys |= {latent_key(expression, k, u) for u in self.manifest.udims for k in self.manifest.kinds}
        return keys

    def shard_path(self, subject: str) -> Path:
        return self.root / f"{subject}.safetensors"

    def _handle(self, subject: str):
        handle = self._handles.get(subject)
        if handle is None:
            path = self.shard_path(subject)
            if not path.is_file():
                raise ExpDiffInputError(path, f"latent shard of subject {subject!r} ({self.split}) not found")
            try:
                handle = safe_open(str(path), framework="pt")
            except SafetensorError as exc:
                raise ExpDiffInputError(path, f"not a readable safetensors file: {exc}") from None
            self._handles[subject] = handle
        return handle

    def _check_shard(self, subject: str) -> None:
        handle = self._handle(subject)
        missing = sorted(self._required_keys() - set(handle.keys()))
        if missing:
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            raise ExpDiffInputError(self.shard_path(subject), f"missing latents {missing[:3]}{more}")
        neutral_key = latent_key(NEUTRAL, *self._neutral_sources()[0])
        checks = [(neutral_key, self.manifest.condition_shape)]
        checks += [(latent_key(e, self.manifest.kinds[0], self.manifest.udims[0]), self.manifest.latent_shape)
                   for e in self.expressions[:1] if e != NEUTRAL]
        for key, expected in checks:
            shape = list(handle.get_slice(key).get_shape())
            if shape != expected:
                raise ExpDiffInputError(self.shard_path(subject), f"latent {key} is {shape}, manifest says {expected}")

    def _stack(self, subject: str, sources: Sequence[tuple[str, str, int]]) -> torch.Tensor:
        handle = self._handle(subject)
        return torch.stack([handle.get_tensor(latent_key(e, k, u)).float() for e, k, u in sources])

    def neutral(self, subject: str) -> torch.Tensor:
        """(M, Cn, h, w) float32 neutral condition of ``subject``."""
        return self._stack(subject, [(NEUTRAL, k, u) for k, u in self._neutral_sources()])

    def target(self, subject: str, expression: str) -> torch.Tensor:
        """(M, C, h, w) float32 latents of ``subject`` making ``expression``."""
        if expression == NEUTRAL:
            return self.unchanged(subject)
        return self._stack(subject, [(expression, k, u) for u in self.manifest.udims for k in self.manifest.kinds])

    def unchanged(self, subject: str) -> torch.Tensor:
        """(M, C, h, w) float32 latents of ``subject`` changing nothing: its neutral's, or zero in a change encoding."""
        if self.manifest.encodes_change:
            return torch.zeros(self.manifest.n_maps, *self.manifest.latent_shape)
        return self.neutral(subject)

    def residual_rms(self) -> torch.Tensor:
        """(M,) float64 RMS over every (subject, non-neutral expression) of each map's latent residual
        ``target - unchanged`` (what a ``target="residual"`` or ``"change"`` denoiser diffuses, before scaling)."""
        total = torch.zeros(self.manifest.n_maps, dtype=torch.float64)
        count = 0
        for subject in self.subjects:
            neutral = self.unchanged(subject).double()
            for expression in self.expressions:
                if expression == NEUTRAL:
                    continue
                residual = self.target(subject, expression).double() - neutral
                total += residual.pow(2).flatten(1).mean(1)
                count += 1
        if count == 0:
            raise ExpDiffInputError(self.root / MANIFEST_NAME, "no expression besides neutral to measure residuals on")
        return (total / count).sqrt()

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        subject, expression_index = self.samples[index]
        expression = self.expressions[expression_index]
        return {"target": self.target(subject, expression), "neutral": self.neutral(subject),
                "prompt_index": expression_index, "subject": subject, "expression": expression}

    def __getstate__(self) -> dict[str, Any]:
        # safetensors handles do not cross process boundaries (DataLoader workers); they reopen lazily.
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
