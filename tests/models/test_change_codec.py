"""A change codec: expression-relative maps in, changes read against the decoded zero change out."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.vae import ChangeScales, LatentCodec, offline_vae_config

TINY = offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=4, sample_size=32)
SCALES = {"position": 0.3, "albedo": 0.1, "specular": 0.02, "roughness": 0.2, "normal": 0.08}


@pytest.fixture(scope="module")
def codec():
    return LatentCodec.from_config(TINY, seed=0, device="cpu", change_scales=ChangeScales(SCALES))


def bump(channels: int, amplitude: float, size: int = 32) -> torch.Tensor:
    """(1, channels, size, size): a smooth bump of ``amplitude`` in the middle, zero at the borders."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    field = amplitude * torch.exp(-(x ** 2 + y ** 2) / 0.1)
    return field.expand(1, channels, size, size).clone()


def test_companding_is_inverted_exactly_below_the_scale():
    scales = ChangeScales(SCALES)
    change = bump(3, 0.2)
    back = scales.from_output(scales.to_input(change, "position"), "position", 3)
    assert torch.allclose(back, change, atol=1e-6)  # float32 pow/sign round trip


def test_companding_spends_the_input_range_on_small_changes():
    # power 0.5: a change of 1% of the scale takes 10% of the VAE's input range
    scales = ChangeScales(SCALES)
    x = scales.to_input(torch.full((1, 3, 8, 8), 0.003), "position")
    assert torch.allclose(x, torch.full_like(x, 0.1), atol=1e-6)


def test_no_change_encodes_to_zero_latents_and_zero_latents_decode_to_no_change(codec):
    z = codec.encode(torch.zeros(1, 3, 32, 32), "position")
    # a batch of one, as the zero reference is made: equal up to float32 rounding of the convolutions
    assert z.abs().max() < 1e-5
    decoded = codec.decode(torch.zeros(2, 4, 4, 4), "albedo")
    assert decoded.abs().max() < 1e-6


def test_decoded_changes_have_the_kinds_channels_and_can_be_negative(codec):
    change = -bump(1, 0.01)
    decoded = codec.decode(codec.encode(change, "specular"), "specular")
    assert decoded.shape == (1, 1, 32, 32)
    assert decoded.min() < 0  # untrained, but changes keep their sign range: nothing clamps them to [0, 1]


def test_changes_beyond_the_scale_are_clipped_with_a_warning_counting_them(codec):
    change = bump(3, 0.5)  # above the position scale 0.3 in the middle
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codec.encode(change, "position")
    expected = int((change.abs() > 0.3).sum())
    assert [str(w.message) for w in caught] == [f"{expected} position change value(s) beyond the codec's scale 0.3 "
                                                "were clipped"]


def test_changes_outside_the_kinds_span_are_refused(codec):
    with pytest.raises(ExpDiffInputError, match=r"expected within \[-1, 1\]"):
        codec.encode(torch.full((1, 3, 32, 32), 1.5), "albedo")


def test_change_scales_are_saved_with_the_codec_and_loaded_back(tmp_path):
    codec = LatentCodec.from_config(TINY, seed=0, device="cpu", change_scales=ChangeScales(SCALES))
    folder = codec.save_pretrained(tmp_path / "change_vae")
    assert json.loads((folder / "change_scales.json").read_text())["representation"] == "change"
    loaded = LatentCodec.from_pretrained(folder, device="cpu")
    assert loaded.encodes_change and loaded.change_scales == codec.change_scales
    change = bump(3, 0.05)
    assert torch.equal(loaded.reconstruct(change, "position"), codec.reconstruct(change, "position"))


def test_a_bad_change_scales_file_is_refused_naming_it(codec, tmp_path):
    folder = codec.save_pretrained(tmp_path / "change_vae")
    (folder / "change_scales.json").write_text(json.dumps({"scales": {"albedo": -1}}))
    with pytest.raises(ExpDiffInputError, match="change_scales.json.*scale must be a positive number"):
        LatentCodec.from_pretrained(folder, device="cpu")


def test_measured_scales_cover_the_largest_change_with_a_margin():
    small, large = bump(3, 0.2), bump(3, -0.25)
    scales = ChangeScales.measure({"position": [small, large], "albedo": [bump(3, 0.01)]})
    assert scales.scale("position") == pytest.approx(1.1 * float(large.abs().max()), rel=1e-6)
    assert scales.scale("albedo") == pytest.approx(1.1 * float(bump(3, 0.01).max()), rel=1e-6)
