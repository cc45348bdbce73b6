"""Dataset -> latents for diffusion training: layout, chosen splits, resumption."""

import json

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.vae import LatentCodec, offline_vae_config
from expdiff_core.training.encode import encode_dataset
from expdiff_core.training.latents import LatentDataset, read_latent_shard, read_manifest


@pytest.fixture
def codec():
    return LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8),
                                   seed=0, device="cpu")


@pytest.fixture
def dataset(tmp_path, make_tiny_dataset):
    return make_tiny_dataset(tmp_path / "data", splits={"s0": "train", "s1": "train", "s2": "test"}, resolution=64)


def test_every_sample_map_and_tile_becomes_one_latent(tmp_path, dataset, codec):
    out = encode_dataset(dataset, codec, tmp_path / "lat", progress=False)
    manifest = read_manifest(out)
    assert manifest.kinds[0] == "position" and set(manifest.kinds[1:]) == {"albedo", "specular", "roughness", "normal"}
    assert manifest.latent_shape == [4, 8, 8]  # 64^2 maps through the 8x VAE
    shard = read_latent_shard(out / "s0.safetensors")
    assert len(shard) == len(manifest.expressions) * len(manifest.kinds) * len(manifest.udims)
    assert all(t.shape == (4, 8, 8) and torch.isfinite(t).all() for t in shard.values())
    assert manifest.codec["position_map"] == {"scale_cm": 6.0}


def test_only_the_chosen_splits_are_encoded_and_listed(tmp_path, dataset, codec):
    out = encode_dataset(dataset, codec, tmp_path / "lat", splits=("train",), progress=False)
    assert read_manifest(out).subjects == {"train": ["s0", "s1"]}
    assert not (out / "s2.safetensors").exists()
    assert len(LatentDataset(out, "train")) > 0


def test_a_rerun_resumes_and_keeps_finished_shards(tmp_path, dataset, codec):
    out = encode_dataset(dataset, codec, tmp_path / "lat", progress=False)
    (out / "s1.safetensors").unlink()
    before = (out / "s0.safetensors").stat().st_mtime_ns
    encode_dataset(dataset, codec, out, progress=False)
    assert (out / "s1.safetensors").is_file()
    assert (out / "s0.safetensors").stat().st_mtime_ns == before


def test_resuming_with_other_settings_is_refused(tmp_path, dataset, codec):
    from expdiff_core.uv.position_map import PositionMapConfig

    out = encode_dataset(dataset, codec, tmp_path / "lat", progress=False)
    with pytest.raises(ExpDiffInputError, match="different settings"):
        encode_dataset(dataset, codec, out, PositionMapConfig(scale_cm=3.0), progress=False)


def test_a_change_encoding_holds_the_neutral_absolute_and_the_expressions_as_changes(tmp_path, dataset, codec):
    from expdiff_core.models.vae import ChangeScales
    from expdiff_core.training.encode import dataset_rasters, subject_maps
    from expdiff_core.io.dataset import Dataset
    from expdiff_core.uv.position_map import PositionMapConfig

    change = LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8), seed=1,
                                     device="cpu", change_scales=ChangeScales({k: 1.0 for k in
                                                                               ("position", "albedo", "specular",
                                                                                "roughness", "normal")}))
    out = encode_dataset(dataset, codec, tmp_path / "lat", splits=("train",), progress=False, change_codec=change)
    manifest = read_manifest(out)
    assert manifest.encodes_change and manifest.scaling_factor == change.scaling_factor
    shard = read_latent_shard(out / "s0.safetensors")
    data = Dataset(dataset)
    maps = {e: subject_maps(data, "s0", e, dataset_rasters(data), PositionMapConfig()) for e in ("neutral", "jawOpen")}
    neutral = torch.from_numpy(maps["neutral"]["albedo"][1001])
    assert torch.equal(shard["neutral/albedo/1001"], codec.encode(neutral[None], "albedo")[0])
    moved = torch.from_numpy(maps["jawOpen"]["albedo"][1001]) - neutral
    assert torch.allclose(shard["jawOpen/albedo/1001"], change.encode(moved[None], "albedo")[0], atol=1e-6)
    samples = LatentDataset(out, "train")
    assert not samples.target("s0", "neutral").any()  # the neutral's change is zero; its latents are the condition
    assert samples.neutral("s0").abs().sum() > 0


def test_a_linear_change_codec_may_give_the_expressions_more_channels_than_the_neutral(tmp_path, dataset, codec):
    from expdiff_core.training.patch_codec import fit_change_codec

    change = fit_change_codec(dataset, latent_channels=12, progress=False)
    out = encode_dataset(dataset, codec, tmp_path / "lat", splits=("train",), progress=False, change_codec=change)
    manifest = read_manifest(out)
    assert manifest.latent_shape == [12, 8, 8] and manifest.condition_shape == [4, 8, 8]
    assert manifest.codec["change_fingerprint"] == change.fingerprint
    samples = LatentDataset(out, "train")
    item = samples[0]
    assert item["target"].shape == (5, 12, 8, 8) and item["neutral"].shape == (5, 4, 8, 8)
    assert samples.target("s0", "neutral").shape == (5, 12, 8, 8)  # no change: zero, in the change's channels


def test_the_neutral_condition_may_be_encoded_with_the_linear_change_codec(tmp_path, dataset, codec):
    from expdiff_core.io.dataset import Dataset
    from expdiff_core.training.encode import dataset_rasters, subject_maps
    from expdiff_core.training.patch_codec import fit_change_codec
    from expdiff_core.uv.position_map import PositionMapConfig

    change = fit_change_codec(dataset, latent_channels=12, progress=False)
    out = encode_dataset(dataset, codec, tmp_path / "lat", splits=("train",), progress=False, change_codec=change,
                         condition="change")
    manifest = read_manifest(out)
    assert manifest.condition_shape == [12, 8, 8] and manifest.codec["condition"] == "change"
    data = Dataset(dataset)
    neutral = subject_maps(data, "s0", "neutral", dataset_rasters(data), PositionMapConfig())["position"][1001]
    shard = read_latent_shard(out / "s0.safetensors")
    assert torch.equal(shard["neutral/position/1001"], change.encode(torch.from_numpy(neutral), "position"))


def test_a_change_condition_needs_a_change_codec(tmp_path, dataset, codec):
    with pytest.raises(ExpDiffInputError, match="'change' with a change codec"):
        encode_dataset(dataset, codec, tmp_path / "lat", progress=False, condition="change")
