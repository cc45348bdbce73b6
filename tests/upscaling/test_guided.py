"""The guided network starts exactly as the official one and round-trips through its model folder."""

from __future__ import annotations

import pytest
import torch

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.upscaling.guided import GuidedNet, difference_map
from expdiff_core.upscaling.official import load_official, official_folder


@pytest.fixture(scope="module")
def compact_path():
    return official_folder(load_settings(), "compact", register=False) / "model.safetensors"


def test_widened_network_starts_exactly_as_the_official_network_whatever_the_guides(compact_path):
    official = load_official(compact_path).model
    guided = GuidedNet(load_official(compact_path), ("w", "neutral")).eval()
    x, guide = torch.rand(2, 3, 20, 20), torch.rand(2, 6, 20, 20) * 10
    with torch.no_grad():
        assert torch.equal(guided(x, guide), official(x))
    assert guided.net.body[0].weight.shape[1] == 9


def test_guided_folder_round_trips(compact_path, tmp_path):
    guided = GuidedNet(load_official(compact_path), ("w",))
    with torch.no_grad():
        guided.net.body[0].weight[:, 3:] = 0.01
    guided.save_pretrained(tmp_path / "g")
    again = GuidedNet.from_pretrained(tmp_path / "g")
    x, guide = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(again(x, guide), guided.eval()(x, guide))


def test_missing_guide_channels_are_a_clear_error(compact_path):
    guided = GuidedNet(load_official(compact_path), ("w", "neutral"))
    with pytest.raises(ExpDiffInputError, match="needs 6 guide channels"):
        guided(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_difference_map_is_eq8():
    d_n, d_0 = torch.tensor([0.2, 0.5, 0.0]), torch.tensor([0.4, 0.5, 0.0])
    assert torch.allclose(difference_map(d_n, d_0), 1 / (1 + torch.exp(-d_n / (d_0 + 1e-8))))


def test_the_guides_are_eq8_and_the_reduced_user_neutral(compact_path):
    guided = GuidedNet(load_official(compact_path), ("w", "neutral"))
    x, neutral, user = torch.rand(3, 6, 6), torch.rand(3, 6, 6) + 0.1, torch.rand(3, 6, 6)
    guide = guided.guide(x, neutral, user)
    assert torch.equal(guide[:3], difference_map(x, neutral)) and torch.equal(guide[3:], user)
