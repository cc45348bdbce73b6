"""Checks on model folders before anything is loaded: weights must be safetensors, never pickle."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ExpDiffInputError, UnsafeModelFileError

# Suffixes of pickle-based checkpoints (torch.save, Lightning, raw pickle): loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def require_safetensors(folder: str | os.PathLike) -> list[Path]:
    """The ``*.safetensors`` files in ``folder`` (sorted); refuse a folder whose weights are only pickles.

    Raises ExpDiffInputError when the folder is missing or has no weights at all, and
    UnsafeModelFileError (naming the pickle file) when it only has pickle checkpoints.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExpDiffInputError(folder, "model folder not found")
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        return weights
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeModelFileError(
            pickles[0],
            "is a pickle checkpoint and ExpDiff loads safetensors only (pickle files can run code when loaded); "
            "convert it once in a trusted environment, e.g. diffusers/transformers "
            "`save_pretrained(..., safe_serialization=True)`",
        )
    raise ExpDiffInputError(folder, "no *.safetensors weights in this model folder")


def weights_digest(files: list[Path], chunk_size: int = 1 << 20) -> str:
    """SHA-256 (hex) over the bytes of ``files`` in the given order: identifies exactly these weights."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()


def store_float16(folder: str | os.PathLike) -> list[Path]:
    """Rewrite every ``*.safetensors`` file in ``folder`` with its float32 tensors as float16 (half the bytes;
    ``from_pretrained`` casts them back to the model's float32). Returns the files rewritten."""
    import torch
    from safetensors.torch import load_file, save_file

    files = require_safetensors(folder)
    for path in files:
        tensors = load_file(str(path))
        half = {k: (v.half() if v.dtype == torch.float32 else v).contiguous() for k, v in tensors.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(half, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    return files
