"""The build's upscaling stage: decoded maps at model resolution -> the user's resolution, used by the transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expdiff_core import build
from expdiff_core.io.images import read_image, write_image

LABELS = ("neutral", "browInnerUp_L")
KINDS = ("albedo", "roughness", "normal")


@pytest.fixture(scope="module")
def build_inputs(tmp_path_factory):
    """A decoded folder (32^2, the truth area-reduced) and the user's neutral textures at 128^2."""
    from expdiff_core.synth.factory import ProceduralSource, skin_rasters
    from expdiff_core.synth.skin import SkinSynthesizer

    root = tmp_path_factory.mktemp("stage")
    source = ProceduralSource()
    identity = source.identity(5)
    mesh = source.template.with_vertices(identity.neutral, name="t")
    synth = SkinSynthesizer(mesh, skin_rasters(source, 128), identity.skin, identity.seed, identity.regions)
    maps = {"neutral": synth.maps(), "browInnerUp_L": synth.maps(source.expression(identity, "browInnerUp_L"))}
    textures = {}
    for kind in KINDS:
        textures[kind] = {}
        for udim in (1001, 1002):
            user = maps["neutral"][kind][udim]
            path = root / "user" / f"{kind}.{udim}.exr"
            write_image(path, user.transpose(1, 2, 0), pixel_type="float")
            textures[kind][udim] = str(path)
            for label in LABELS:
                lo = torch.nn.functional.avg_pool2d(torch.from_numpy(maps[label][kind][udim])[None], 4)[0].numpy()
                write_image(root / "decoded" / label / f"{kind}.{udim}.exr", lo.transpose(1, 2, 0), pixel_type="float")
    decoded = {"decoded": str(root / "decoded"), "labels": list(LABELS), "kinds": ["position", *KINDS],
               "udims": [1001, 1002]}
    return decoded, {"textures": textures}, root


def test_stage_writes_every_expression_at_the_user_resolution(build_inputs):
    decoded, ingested, root = build_inputs
    up = build.upscale(decoded, ingested, root / "work", upscaler="compact")
    assert (up["factor"], up["resolution"], up["kinds"]) == (4, 128, list(KINDS))
    for label in LABELS:
        for kind in KINDS:
            assert read_image(root / "work" / "upscaled" / label / f"{kind}.1001.exr").shape[:2] == (128, 128)


def test_transfer_of_the_upscaled_neutral_returns_the_users_neutral(build_inputs):
    decoded, ingested, root = build_inputs
    up = build.upscale(decoded, ingested, root / "work2", upscaler="compact")
    out = build.transfer_textures(up, ingested, "albedo", root / "work2")
    mine = read_image(root / "work2" / "maps" / "neutral" / "albedo.1001.exr")
    user = read_image(ingested["textures"]["albedo"][1001])
    assert np.abs(mine - user).max() < 1e-3  # half-float output
    assert out["kind"] == "albedo"


def test_upscaler_none_leaves_the_decoded_maps_to_the_transfer(build_inputs):
    decoded, ingested, root = build_inputs
    up = build.upscale(decoded, ingested, root / "work3", upscaler="none")
    assert up["decoded"] == decoded["decoded"] and up["factor"] == 1


def test_upscale_factor_reaches_the_user_resolution_in_powers_of_two():
    assert [build.upscale_factor(128, r) for r in (None, 128, 256, 512, 600, 4096)] == [1, 1, 2, 4, 8, 32]
