"""Encode a dataset into latents for diffusion training: every subject x expression x map kind x UDIM tile.

Position maps are made here from the stored vertices (displacement from the dataset template's shape,
normalised by ``PositionMapConfig``), BRDF maps are read from the dataset's EXR files; both go through the
latent codec (Eq. 5). Output: the ``expdiff-latents/1`` format of :mod:`expdiff_core.training.latents`, one
safetensors shard per subject. Resumable: shards already written are kept, so a killed run continues.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from ..errors import ExpDiffInputError
from ..io.dataset import Dataset, require_valid_dataset
from ..models.vae import LatentCodec
from ..uv.position_map import PositionMapConfig, position_maps
from ..uv.raster import UVRaster, uv_raster
from .latents import NEUTRAL, LatentManifest, expression_prompt, latent_key, read_manifest, write_latent_shard, write_manifest

POSITION = "position"


def dataset_rasters(dataset: Dataset, cache_dir: str | os.PathLike | None = None) -> dict[int, UVRaster]:
    """Texel tables of the dataset template's skin groups at the dataset's resolution."""
    skin = dataset.manifest["template"].get("skin_groups") or None
    return uv_raster(dataset.template(), dataset.resolution, groups=skin, cache_dir=cache_dir, dilation=None)


def subject_maps(dataset: Dataset, subject: str, expression: str, rasters: Mapping[int, UVRaster],
                 position: PositionMapConfig) -> dict[str, dict[int, np.ndarray]]:
    """{kind: {udim: (C, R, R)}} of one sample: ``position`` from its vertices plus the stored BRDF maps."""
    template = dataset.template()
    maps = dataset.load_maps(subject, expression)
    maps[POSITION] = position_maps(dataset.load_vertices(subject, expression), template.vertices, rasters,
                                   position.scale_in(template.units))
    return maps


def encode_subject(codec: LatentCodec, maps_by_expression: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]],
                   kinds: list[str], udims: list[int], change_codec: LatentCodec | None = None,
                   condition: str = "vae") -> dict[str, torch.Tensor]:
    """Latents ``"<expression>/<kind>/<udim>" -> (C, h, w) float32`` of one subject, one codec call per kind.

    With ``change_codec``: the neutral's maps with ``codec``, every other expression's change from the neutral
    (its maps minus the neutral's) with ``change_codec`` (a change encoding, see ``training.latents``);
    ``condition="change"``: the neutral's maps with ``change_codec`` too.
    """
    out: dict[str, torch.Tensor] = {}
    expressions = list(maps_by_expression)
    for kind in kinds:
        groups = [(codec, expressions, False)]
        if change_codec is not None:
            neutral_codec = change_codec if condition == "change" else codec
            groups = [(neutral_codec, [NEUTRAL], False),
                      (change_codec, [e for e in expressions if e != NEUTRAL], True)]
        for group_codec, chosen, change in groups:
            keys = [(e, u) for e in chosen for u in udims]
            if not keys:
                continue
            batch = np.stack([maps_by_expression[e][kind][u] for e, u in keys])
            if change:
                batch = batch - np.stack([maps_by_expression[NEUTRAL][kind][u] for _, u in keys])
            latents = group_codec.encode(torch.from_numpy(batch), kind).float().cpu()
            for (e, u), z in zip(keys, latents):
                out[latent_key(e, kind, u)] = z.clone()
    return out


def encode_dataset(dataset_root: str | os.PathLike, codec: LatentCodec, out: str | os.PathLike,
                   position: PositionMapConfig = PositionMapConfig(), *, cache_dir: str | os.PathLike | None = None,
                   splits: tuple[str, ...] = ("train", "val", "test"), progress: bool = True,
                   change_codec: LatentCodec | None = None, identities: int | None = None,
                   condition: str = "vae") -> Path:
    """Encode every sample of ``splits`` of the dataset at ``dataset_root`` into ``out``; resumes a partial ``out``.

    splits: which identities to encode (training needs only ``train``; evaluation reads the raw dataset).
    change_codec: a change encoding (the neutral with ``codec``, the expressions' changes with this one).
    identities: encode only the first N identities of each split (encoding is the slow step on a CPU).
    condition: what encodes the neutral (the denoiser's condition): ``"vae"`` (``codec``) or ``"change"``
    (``change_codec``, for a ``SubspaceDenoiser`` with ``condition_codec="change"``).

    The manifest is written first (so a resumed run can check it matches) and shards are atomic, so an
    interrupted run leaves only whole shards. Returns ``out``.
    """
    require_valid_dataset(dataset_root)
    dataset = Dataset(dataset_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = [POSITION, *dataset.map_kinds]
    h, w = dataset.resolution // codec.downsample_factor, dataset.resolution // codec.downsample_factor
    if condition not in ("vae", "change") or (condition == "change" and change_codec is None):
        raise ExpDiffInputError(None, f"condition {condition!r} must be 'vae', or 'change' with a change codec")
    if change_codec is not None:
        if not change_codec.encodes_change:
            raise ExpDiffInputError(None, "the change codec given is a codec of absolute maps (no change_scales.json)")
        if change_codec.latent_shape(dataset.resolution, dataset.resolution)[1:] != (h, w):
            raise ExpDiffInputError(None, "the change codec's latent grid is not the neutral codec's")
    codec_info: dict = {"config": {k: v for k, v in dict(codec.config).items() if not k.startswith("_")},
                        "position_map": position.to_dict(), "dataset": str(Path(dataset_root).resolve()),
                        "resolution": dataset.resolution}
    if change_codec is not None:
        codec_info.update(representation="change",
                          change_config={k: v for k, v in dict(change_codec.config).items() if not k.startswith("_")})
        if change_codec.change_scales is not None:
            codec_info.update(change_scales=change_codec.change_scales.to_dict())
        if getattr(change_codec, "fingerprint", None):
            codec_info.update(change_fingerprint=change_codec.fingerprint)
    if condition == "change":
        codec_info.update(condition="change")
    condition_channels = (change_codec if condition == "change" else codec).latent_channels
    target_channels = (change_codec or codec).latent_channels
    manifest = LatentManifest(
        kinds=kinds, udims=list(dataset.udims), latent_shape=[target_channels, h, w],
        condition_channels=condition_channels if target_channels != condition_channels else None,
        scaling_factor=float((change_codec or codec).scaling_factor), expressions=list(dataset.expressions),
        subjects={s: dataset.split(s)[:identities] for s in splits if dataset.split(s)},
        codec=codec_info,
        prompts={e: expression_prompt(e) for e in dataset.expressions},
    )
    if (out / "manifest.json").is_file():
        existing = read_manifest(out)
        if existing.to_json() != manifest.to_json():
            raise ExpDiffInputError(out / "manifest.json", "an encoding with different settings is already "
                                    "here; choose a new --out folder")
    else:
        write_manifest(out, manifest)
    rasters = dataset_rasters(dataset, cache_dir)
    if identities is not None and identities < 1:
        raise ExpDiffInputError(None, f"identities must be at least 1, got {identities}")
    chosen = [s for split in splits for s in dataset.split(split)[:identities]]
    if not chosen:
        raise ExpDiffInputError(Path(dataset_root) / "manifest.json", f"splits {list(splits)} have no subjects")
    todo = [s for s in chosen if not (out / f"{s}.safetensors").is_file()]
    with torch.no_grad(), tqdm(total=len(chosen), initial=len(chosen) - len(todo),
                               desc="encode", unit="subject", disable=not progress) as bar:
        for subject in todo:
            maps = {e: subject_maps(dataset, subject, e, rasters, position) for e in dataset.expressions}
            write_latent_shard(out / f"{subject}.safetensors",
                               encode_subject(codec, maps, kinds, dataset.udims, change_codec, condition))
            bar.update(1)
    return out
