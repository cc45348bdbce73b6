"""LatentCodec: every map kind in and out of an AutoencoderKL, safetensors only, save/load exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from expdiff_core.errors import ExpDiffInputError, PublishError, UnsafeModelFileError
from expdiff_core.models.vae import (
    MAP_KINDS,
    LatentCodec,
    MapNormalization,
    from_vae_output,
    offline_vae_config,
    to_vae_input,
)

# 8x downsampling like the production VAE, but 16 channels wide: builds and runs in milliseconds.
TINY = offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=4, sample_size=32)


def smooth_map(kind: str, size: int = 32, seed: int = 0, channels: int | None = None) -> torch.Tensor:
    """A smooth random field in ``kind``'s range: bicubic upsampling of a 5x5 grid (like skin-map variation)."""
    spec = MAP_KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(1, channels or spec.channels, 5, 5, generator=g)
    field = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1)
    return field * (spec.high - spec.low) + spec.low


@pytest.fixture(scope="module")
def codec() -> LatentCodec:
    return LatentCodec.from_config(TINY, seed=0, device="cpu", batch_size=8)


@pytest.mark.parametrize("kind", sorted(MAP_KINDS))
def test_round_trip_keeps_shape_dtype_and_range_of_every_kind(codec, kind):
    spec = MAP_KINDS[kind]
    image = smooth_map(kind)
    latents = codec.encode(image, kind)
    assert latents.shape == (4, 4, 4) and latents.dtype == torch.float32
    decoded = codec.decode(latents, kind)
    assert decoded.shape == image.shape and decoded.dtype == torch.float32
    assert decoded.min() >= spec.low and decoded.max() <= spec.high


def test_one_channel_maps_are_replicated_to_three_for_the_vae():
    rough = smooth_map("roughness")
    vae_input = to_vae_input(rough[None], "roughness")[0]
    assert vae_input.shape == (3, 32, 32)
    assert torch.equal(vae_input[0], vae_input[1]) and torch.equal(vae_input[1], vae_input[2])
    assert torch.allclose(vae_input[0], rough[0] * 2 - 1)


def test_one_channel_decode_is_the_mean_of_the_three_decoded_channels(codec):
    latents = codec.encode(smooth_map("specular"), "specular")
    three = codec.decode(latents, "specular", channels=3)
    one = codec.decode(latents, "specular")
    assert three.shape == (3, 32, 32) and one.shape == (1, 32, 32)
    # 1e-6: float32 rounding of a three-term mean
    assert torch.allclose(one[0], three.mean(0), atol=1e-6)


def test_value_ranges_map_onto_the_vae_input_range():
    assert torch.equal(to_vae_input(torch.tensor([[[[-1.0, 0.0, 1.0]]]]).expand(1, 3, 1, 3), "position")[0, 0, 0],
                       torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(to_vae_input(torch.tensor([[[[0.0, 0.5, 1.0]]]]).expand(1, 3, 1, 3), "albedo")[0, 0, 0],
                       torch.tensor([-1.0, 0.0, 1.0]))
    out = from_vae_output(torch.tensor([[[[-2.0, 0.0, 2.0]]]]).expand(1, 3, 1, 3), "normal")
    assert torch.equal(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))


def albedo_normalization() -> MapNormalization:
    return MapNormalization.measure({"albedo": [to_vae_input(smooth_map("albedo", seed=s)[None], "albedo")[0]
                                                for s in range(4)]})


def test_measured_normalization_gives_a_kind_zero_mean_and_std_one_third():
    norm = albedo_normalization()
    x = torch.stack([to_vae_input(smooth_map("albedo", seed=s)[None], "albedo", norm)[0] for s in range(4)])
    # 1e-6: float32 sums over 4 x 3 x 32^2 texels; std pooled over channels around each channel's mean
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6)
    assert (x - x.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean().sqrt().item() == pytest.approx(1 / 3, rel=1e-5)


def test_normalization_is_inverted_on_decode_and_leaves_other_kinds_alone():
    norm = albedo_normalization()
    image = smooth_map("albedo", seed=9)[None]
    back = from_vae_output(to_vae_input(image, "albedo", norm), "albedo", normalization=norm)
    assert torch.allclose(back, image, atol=1e-6)  # float32 affine and its inverse
    rough = smooth_map("roughness")[None]
    assert torch.equal(to_vae_input(rough, "roughness", norm), to_vae_input(rough, "roughness"))


def test_normalization_is_saved_with_the_codec_and_loaded_back(tmp_path):
    norm = albedo_normalization()
    folder = LatentCodec.from_config(TINY, seed=0, device="cpu", normalization=norm).save_pretrained(tmp_path / "c")
    assert json.loads((folder / MapNormalization.FILE).read_text()) == norm.to_dict()
    loaded = LatentCodec.from_pretrained(folder, device="cpu")
    assert loaded.normalization == norm
    image = smooth_map("albedo", seed=3)
    assert torch.equal(loaded.vae_input(image[None], "albedo"), to_vae_input(image[None], "albedo", norm))


def test_a_codec_without_normalization_file_uses_the_plain_range_mapping(tmp_path):
    folder = LatentCodec.from_config(TINY, seed=0, device="cpu").save_pretrained(tmp_path / "c")
    assert not (folder / MapNormalization.FILE).exists()
    assert LatentCodec.from_pretrained(folder, device="cpu").normalization is None


def test_a_bad_normalization_file_is_refused_naming_it(tmp_path):
    folder = LatentCodec.from_config(TINY, seed=0, device="cpu").save_pretrained(tmp_path / "c")
    (folder / MapNormalization.FILE).write_text(json.dumps({"kinds": {"albedo": {"offset": [0, 0], "scale": 1}}}))
    with pytest.raises(ExpDiffInputError, match="map_normalization.json.*offset must be 3"):
        LatentCodec.from_pretrained(folder, device="cpu")
    (folder / MapNormalization.FILE).write_text(json.dumps({"kinds": {"albedo": {"offset": [0, 0, 0], "scale": 0}}}))
    with pytest.raises(ExpDiffInputError, match="scale a positive number"):
        LatentCodec.from_pretrained(folder, device="cpu")


def test_latents_are_the_posterior_mean_times_the_scaling_factor(codec):
    image = smooth_map("albedo")
    with torch.no_grad():
        mean = codec.vae.encode(to_vae_input(image[None], "albedo")).latent_dist.mean[0]
    # 1e-6: the same float32 computation, only the scaling multiply differs in order
    assert torch.allclose(codec.encode(image, "albedo"), mean * codec.scaling_factor, atol=1e-6)


def test_scaling_factor_cancels_between_encode_and_decode():
    a = LatentCodec.from_config({**TINY, "scaling_factor": 1.0}, seed=0, device="cpu")
    b = LatentCodec.from_config({**TINY, "scaling_factor": 0.18215}, seed=0, device="cpu")
    image = smooth_map("albedo")
    za, zb = a.encode(image, "albedo"), b.encode(image, "albedo")
    # 1e-5: float32 multiply/divide by 0.18215 round trip
    assert torch.allclose(zb, za * 0.18215, atol=1e-5)
    assert torch.allclose(a.decode(za, "albedo"), b.decode(zb, "albedo"), atol=1e-5)


def test_encode_is_deterministic_and_independent_of_chunk_size(codec):
    maps = torch.stack([smooth_map("normal", seed=s) for s in range(5)])
    first = codec.encode(maps, "normal")
    assert torch.equal(first, codec.encode(maps, "normal"))
    chunked = LatentCodec(codec.vae, device="cpu", batch_size=2).encode(maps, "normal")
    # 1e-5: CPU convolutions may pick different kernels for different batch sizes
    assert torch.allclose(first, chunked, atol=1e-5)
    assert torch.allclose(first[3], codec.encode(maps[3], "normal"), atol=1e-5)


def test_numpy_maps_are_accepted(codec):
    image = smooth_map("position")
    assert torch.equal(codec.encode(image.numpy(), "position"), codec.encode(image, "position"))


def test_latent_shape_follows_the_downsampling(codec):
    assert codec.downsample_factor == 8
    assert codec.latent_shape(128, 64) == (4, 16, 8)
    assert codec.encode(torch.zeros(2, 3, 64, 16), "albedo").shape == (2, 4, 8, 2)


@pytest.mark.parametrize("bad, kind, problem", [
    (torch.full((3, 32, 32), 1.5), "albedo", "expected within"),
    (torch.full((3, 32, 32), -1.01), "position", "expected within"),
    (torch.zeros(2, 32, 32), "albedo", "(B, 3, H, W)"),
    (torch.zeros(3, 30, 32), "albedo", "multiple of 8"),
    (torch.full((3, 32, 32), float("nan")), "albedo", "NaN"),
    (torch.zeros(3, 32, 32), "displacement", "unknown map kind"),
])
def test_bad_maps_are_refused_with_the_problem_named(codec, bad, kind, problem):
    with pytest.raises(ExpDiffInputError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        codec.encode(bad, kind)


def test_save_and_load_give_identical_outputs(codec, tmp_path):
    folder = codec.save_pretrained(tmp_path / "vae")
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    loaded = LatentCodec.from_pretrained(folder, device="cpu")
    image = smooth_map("roughness")
    z = codec.encode(image, "roughness")
    assert torch.equal(loaded.encode(image, "roughness"), z)
    assert torch.equal(loaded.decode(z, "roughness"), codec.decode(z, "roughness"))


def test_save_never_overwrites_an_existing_folder(codec, tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(PublishError):
        codec.save_pretrained(tmp_path / "vae")


def test_a_stable_diffusion_pipeline_folder_loads_its_vae_unmodified(tmp_path):
    sd_like = LatentCodec.from_config({**TINY, "scaling_factor": 0.18215}, seed=1, device="cpu")
    sd_like.save_pretrained(tmp_path / "sd" / "vae")
    loaded = LatentCodec.from_pretrained(tmp_path / "sd", device="cpu")
    assert loaded.scaling_factor == pytest.approx(0.18215)
    image = smooth_map("albedo")
    assert torch.equal(loaded.encode(image, "albedo"), sd_like.encode(image, "albedo"))


def test_a_folder_with_only_a_pickle_checkpoint_is_refused(codec, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    codec.vae.save_config(folder)
    torch.save(codec.vae.state_dict(), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeModelFileError, match=r"diffusion_pytorch_model\.bin.*safetensors only"):
        LatentCodec.from_pretrained(folder, device="cpu")


def test_a_folder_without_weights_or_of_another_class_is_refused(codec, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    codec.vae.save_config(empty)
    with pytest.raises(ExpDiffInputError, match="no \\*.safetensors"):
        LatentCodec.from_pretrained(empty, device="cpu")
    other = codec.save_pretrained(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderTiny"}))
    with pytest.raises(ExpDiffInputError, match="AutoencoderTiny"):
        LatentCodec.from_pretrained(other, device="cpu")
    with pytest.raises(ExpDiffInputError, match="not found"):
        LatentCodec.from_pretrained(tmp_path / "missing", device="cpu")


def test_offline_config_is_the_stable_diffusion_family():
    config = offline_vae_config()
    assert len(config["down_block_types"]) == 4 and config["latent_channels"] == 4
    assert config["in_channels"] == config["out_channels"] == 3
    with pytest.raises(ExpDiffInputError, match="unknown AutoencoderKL setting"):
        offline_vae_config(block_widths=[8])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_cpu_fp32(codec):
    image = torch.stack([smooth_map("albedo", seed=s) for s in range(3)])
    gpu = LatentCodec(codec.vae, device="cuda")
    try:
        z_gpu = gpu.encode(image.cuda(), "albedo")
        assert z_gpu.device.type == "cuda" and z_gpu.dtype == torch.float32
        z_cpu = LatentCodec(codec.vae, device="cpu").encode(image, "albedo")
        # bf16 keeps 8 mantissa bits (~0.4% relative); 2% of the latent spread leaves room for accumulation
        assert (z_gpu.cpu() - z_cpu).abs().max() <= 0.02 * z_cpu.abs().max()
    finally:
        codec.vae.to("cpu")
