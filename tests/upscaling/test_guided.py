"""The guided network starts exactly as the official one and round-trips through its model folder."""

from __future__ import annotations

import pytest
import torch

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.upscaling.guided import GuidedNet, difference_map, guide_tensor
from expdiff_core.upscaling.official import load_official, official_folder


@pytest.fixture(scope="module")
def compact_path():
    return official_folder(load_settings(), "compact", register=False) / "model.safetensors"


def test_widened_network_starts_exactly_as_the_official_network_whatever_the_guides(compact_path):
    official = load_official(compact_path).model
    guided = GuidedNet(load_official(compact_path), ("w", "neutral")).eval()
    x, guide = torch.rand(2, 3, 20, 20), torch.rand(2, 51, 20, 20) * 10
    with torch.no_grad():
        assert torch.equal(guided(x, guide), official(x))
    assert guided.net.body[0].weight.shape[1] == 3 + 48 + 3  # the map, W_n space-to-depth by 4, the neutral


def test_guided_folder_round_trips(compact_path, tmp_path):
    guided = GuidedNet(load_official(compact_path), ("w",))
    with torch.no_grad():
        guided.net.body[0].weight[:, 3:] = 0.01
    guided.save_pretrained(tmp_path / "g")
    again = GuidedNet.from_pretrained(tmp_path / "g")
    x, guide = torch.rand(1, 3, 12, 12), torch.rand(1, 48, 12, 12)
    with torch.no_grad():
        assert torch.equal(again(x, guide), guided.eval()(x, guide))


def test_missing_guide_channels_are_a_clear_error(compact_path):
    guided = GuidedNet(load_official(compact_path), ("w", "neutral"))
    with pytest.raises(ExpDiffInputError, match="needs 51 guide channels"):
        guided(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_difference_map_is_eq8():
    d_n, d_0 = torch.tensor([0.2, 0.5, 0.0]), torch.tensor([0.4, 0.5, 0.0])
    assert torch.allclose(difference_map(d_n, d_0), 1 / (1 + torch.exp(-d_n / (d_0 + 1e-8))))


def test_the_w_guide_is_eq8_at_the_output_resolution_against_the_users_neutral():
    x = torch.full((3, 4, 4), 0.3)  # a flat low-resolution expression map: upsampled, still 0.3 everywhere
    user = 0.2 + 0.6 * torch.rand(3, 16, 16)  # the user's neutral at the output resolution (x4), with detail
    guide = guide_tensor(("w", "neutral"), x, user, 4)
    assert guide.shape == (48 + 3, 4, 4)
    w = torch.nn.functional.pixel_shuffle(guide[:48][None], 4)[0]  # back to the output grid
    assert torch.allclose(w, difference_map(torch.full_like(user, 0.3), user), atol=1e-6)
    assert torch.allclose(guide[48:], torch.nn.functional.avg_pool2d(user[None], 4)[0], atol=1e-6)


def test_the_w_guide_made_in_bands_equals_the_whole_map_at_once():
    x, user = torch.rand(2, 3, 10, 12), torch.rand(1, 3, 40, 48)
    # bilinear upsampling reads one neighbouring row: bands with that row of context are exact
    assert torch.allclose(guide_tensor(("w",), x, user, 4, rows=3), guide_tensor(("w",), x, user, 4, rows=64),
                          atol=1e-6)
