"""``expdiff train sr``: a resumed run continues exactly where it stopped; the output is a loadable model folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from expdiff_core.config import load_settings
from expdiff_core.upscaling.guided import GuidedNet
from expdiff_core.upscaling.official import official_folder
from expdiff_core.upscaling.train import SRTrainConfig, train_sr

pytestmark = pytest.mark.slow

TINY = dict(model_resolution=32, identities=1, expressions=1, patch=8, context=2, batch=1, save_every=1,
            kinds=("albedo", "normal"))


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    official = official_folder(load_settings(), "compact", register=False) / "model.safetensors"
    train_sr(tmp_path / "whole", SRTrainConfig(steps=3, **TINY), official_path=official)
    train_sr(tmp_path / "parts", SRTrainConfig(steps=2, **TINY), official_path=official)
    train_sr(tmp_path / "parts", SRTrainConfig(steps=3, **TINY), official_path=official)
    whole, parts = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "parts" / "model.safetensors"))
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    assert [h["step"] for h in json.loads((tmp_path / "parts" / "history.json").read_text())] == [1, 2, 3]
    net = GuidedNet.from_pretrained(tmp_path / "parts")
    assert net.guides == ("w", "neutral") and (tmp_path / "parts" / "README.md").is_file()


def test_a_per_kind_run_writes_one_network_per_kind_that_the_build_loads(tmp_path):
    from expdiff_core.upscaling.maps import load_map_upscaler
    from expdiff_core.upscaling.train import train_sr_per_kind

    official = official_folder(load_settings(), "compact", register=False) / "model.safetensors"
    train_sr_per_kind(tmp_path / "up", SRTrainConfig(steps=2, **TINY), official_path=official)
    up = load_map_upscaler(load_settings(), "compact", model=str(tmp_path / "up"))
    assert sorted(up.nets) == ["albedo", "normal"]
    # each kind's network saw only its own kind
    assert json.loads((tmp_path / "up" / "normal" / "config.json").read_text())["train"]["kinds"] == ["normal"]
    assert [h["kind"] for h in json.loads((tmp_path / "up" / "history.json").read_text())] == ["albedo", "normal"]
