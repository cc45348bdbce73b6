"""The linear change codec: a patch basis fitted to the changes, no change <-> zero latents, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.models.patch_codec import PatchChangeCodec, load_codec, patches
from expdiff_core.training.patch_codec import fit_change_codec


def bumps(count: int, channels: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(count, channels, size, size): smooth Gaussian bumps of random centre and amplitude (a change family)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(count, 2, generator=g) * 1.2 - 0.6
    amplitude = torch.rand(count, channels, generator=g) * 0.04 - 0.02
    field = torch.exp(-((x - centres[:, 0, None, None]) ** 2 + (y - centres[:, 1, None, None]) ** 2) / 0.15)
    return amplitude[:, :, None, None] * field[:, None]


def fitted(channels: int = 12, kinds=("position", "specular")) -> PatchChangeCodec:
    moments = {}
    for kind in kinds:
        c = 3 if kind == "position" else 1
        x = patches(bumps(64, c).double(), 8)
        moments[kind] = (x.T @ x / x.shape[0]).numpy()
    return PatchChangeCodec.fit(moments, patch_size=8, latent_channels=channels, sample_size=32)


def test_no_change_is_zero_latents_and_back():
    codec = fitted()
    assert codec.encode(torch.zeros(2, 3, 32, 32), "position").abs().max() == 0
    assert codec.decode(torch.zeros(1, 12, 4, 4), "specular").abs().max() == 0


def test_latents_sit_on_the_patch_grid_with_the_chosen_channels():
    codec = fitted()
    assert codec.latent_shape(32, 32) == (12, 4, 4)
    assert codec.encode(bumps(3, 3), "position").shape == (3, 12, 4, 4)
    assert codec.decode(torch.zeros(3, 12, 4, 4), "specular", channels=3).shape == (3, 3, 32, 32)


def test_a_held_out_change_of_the_fitted_family_is_kept_better_than_by_pooling_to_as_many_values():
    codec = fitted()
    held_out = bumps(16, 3, seed=99)
    error = (codec.reconstruct(held_out, "position") - held_out).pow(2).mean().sqrt()
    # the same number of values per 8x8 patch as 12 channels: 2x2 pooled x 3 channels, upsampled bilinearly
    pooled = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(held_out, 4), scale_factor=4,
                                             mode="bilinear", align_corners=False)
    pooled_error = (pooled - held_out).pow(2).mean().sqrt()
    # measured 0.75x: the fitted basis places its 4 spatial functions per channel where the bumps need them
    assert error < 0.85 * pooled_error


def test_latents_are_standardised_per_kind():
    codec = fitted()
    z = codec.encode(bumps(64, 1), "specular")  # the fitting set itself
    rms = float(z.pow(2).mean().sqrt())
    assert 0.9 < rms < 1.1  # exactly 1 on the fitting patches up to the float32 convolution


def test_one_channel_kinds_take_replicated_input():
    codec = fitted()
    change = bumps(2, 1)
    assert torch.allclose(codec.encode(change.expand(-1, 3, -1, -1), "specular"), codec.encode(change, "specular"),
                          atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    codec = fitted()
    codec.save_pretrained(tmp_path / "codec")
    again = load_codec(tmp_path / "codec", device="cpu")
    assert isinstance(again, PatchChangeCodec)
    change = bumps(2, 3)
    assert torch.equal(again.encode(change, "position"), codec.encode(change, "position"))
    with pytest.raises(PublishError):
        codec.save_pretrained(tmp_path / "codec")


def test_bad_inputs_are_refused_with_the_problem_named():
    codec = fitted()
    with pytest.raises(ExpDiffInputError, match="no basis for 'albedo'"):
        codec.encode(bumps(1, 3), "albedo")
    with pytest.raises(ExpDiffInputError, match="multiple of 8"):
        codec.encode(torch.zeros(1, 3, 30, 30), "position")
    with pytest.raises(ExpDiffInputError, match="12 channels"):
        codec.decode(torch.zeros(1, 4, 4, 4), "position")
    with pytest.raises(ExpDiffInputError, match="span"):
        codec.encode(torch.full((1, 3, 32, 32), 3.0), "position")


def test_fitting_on_a_dataset_reads_only_its_train_split(tmp_path, make_tiny_dataset):
    root = make_tiny_dataset(tmp_path / "data", {"a": "train", "b": "train", "c": "val"}, resolution=32)
    codec = fit_change_codec(root, latent_channels=8, progress=False)
    assert sorted(codec.kinds) == ["albedo", "normal", "position", "roughness", "specular"]
    basis = codec.model.basis("albedo").reshape(8, -1)
    assert np.allclose((basis @ basis.T).numpy(), np.eye(8), atol=1e-5)  # orthonormal rows
