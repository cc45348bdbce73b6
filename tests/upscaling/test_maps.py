"""Upscaling maps: tiling is seamless, per-kind encodings, chains, clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.upscaling.maps import MapUpscaler, chain, load_map_upscaler


@pytest.fixture(scope="module")
def skin():
    """Face maps of one synthetic identity at 64^2: neutral and a brow expression (with wrinkles)."""
    from expdiff_core.synth.factory import ProceduralSource, skin_rasters
    from expdiff_core.synth.skin import SkinSynthesizer

    source = ProceduralSource()
    identity = source.identity(11)
    mesh = source.template.with_vertices(identity.neutral, name="t")
    synth = SkinSynthesizer(mesh, skin_rasters(source, 256), identity.skin, identity.seed, identity.regions)
    hi = {"neutral": synth.maps(), "expr": synth.maps(source.expression(identity, "browInnerUp_L"))}
    lo = {k: {kind: torch.nn.functional.interpolate(torch.from_numpy(m[kind][1001])[None], scale_factor=0.25,
                                                     mode="area")[0].numpy() for kind in m} for k, m in hi.items()}
    return hi, lo


@pytest.fixture(scope="module")
def compact():
    return load_map_upscaler(load_settings(), "compact")


def test_tiled_and_untiled_outputs_differ_by_less_than_half_a_grey_level(skin, compact):
    _, lo = skin
    whole = MapUpscaler("compact", compact.net, tile=1024)
    tiled = MapUpscaler("compact", compact.net, tile=24, overlap=8, context=24)
    args = (lo["expr"]["albedo"], lo["neutral"]["albedo"], None, "albedo")
    a, b = whole.upscale(*args), tiled.upscale(*args)
    assert a.shape == b.shape == (3, 256, 256)
    assert np.abs(a - b).max() < 0.5 / 255


def test_single_channel_maps_keep_one_channel_and_normals_come_back_unit_length(skin, compact):
    _, lo = skin
    rough = compact.upscale(lo["expr"]["roughness"], lo["neutral"]["roughness"], None, "roughness")
    normal = compact.upscale(lo["expr"]["normal"], lo["neutral"]["normal"], None, "normal")
    assert rough.shape == (1, 256, 256)
    assert np.allclose(np.linalg.norm(normal * 2 - 1, axis=0), 1.0, atol=1e-4)


def test_chains_reach_x2_and_x8(skin, compact):
    _, lo = skin
    e, n = lo["expr"]["specular"][:, :16, :16], lo["neutral"]["specular"][:, :16, :16]
    assert chain(8) == [4, 2]
    assert compact.upscale(e, n, None, "specular", factor=2).shape == (1, 32, 32)
    assert compact.upscale(e, n, None, "specular", factor=8).shape == (1, 128, 128)


def test_lanczos_is_openimageio_lanczos3_of_the_expression_map(skin):
    _, lo = skin
    up = load_map_upscaler(load_settings(), "lanczos").upscale(lo["expr"]["albedo"], lo["neutral"]["albedo"], None,
                                                               "albedo")
    assert up.shape == (3, 256, 256)
    assert abs(float(up.mean()) - float(lo["expr"]["albedo"].mean())) < 2e-3


def test_mismatched_neutral_and_expression_sizes_are_refused(skin, compact):
    _, lo = skin
    with pytest.raises(ExpDiffInputError, match="differ in shape"):
        compact.upscale(lo["expr"]["albedo"], lo["neutral"]["albedo"][:, :32, :32], None, "albedo")


def test_a_user_neutral_of_another_aspect_ratio_is_refused(skin, compact):
    hi, lo = skin
    with pytest.raises(ExpDiffInputError, match="aspect ratio"):
        compact.upscale(lo["expr"]["albedo"], lo["neutral"]["albedo"], hi["neutral"]["albedo"][1001][:, :, :128],
                        "albedo")


def test_wrong_channel_counts_are_refused(skin, compact):
    _, lo = skin
    with pytest.raises(ExpDiffInputError, match="a normal map has \\[3\\] channel"):
        compact.upscale(lo["expr"]["roughness"], lo["neutral"]["roughness"], None, "normal")


def test_an_upscaler_folder_of_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    other = torch.nn.Sequential(torch.nn.Conv2d(9, 8, 3), torch.nn.Conv2d(8, 3, 3))
    save_file(other.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"format": "expdiff-upscaler/1", "kind": "guided", '
                                          '"architecture": "Compact", "guides": ["w", "neutral"]}')
    with pytest.raises(ExpDiffInputError, match="is not a Compact network"):
        load_map_upscaler(load_settings(), "compact", model=str(tmp_path))


def test_a_per_kind_folder_upscales_each_kind_with_its_own_network(skin, compact, tmp_path):
    import copy

    from expdiff_core.upscaling.guided import GuidedNet, write_per_kind_config

    for kind, shift in (("albedo", 0.0), ("normal", 0.05)):
        net = copy.deepcopy(compact.network("albedo")).to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            net.net.body[0].bias += shift  # two networks that differ
        net.save_pretrained(tmp_path / kind)
    write_per_kind_config(tmp_path, ["albedo", "normal"])
    up = load_map_upscaler(load_settings(), "compact", model=str(tmp_path))
    assert sorted(up.nets) == ["albedo", "normal"] and up.info["per_kind"] == ["albedo", "normal"]
    _, lo = skin
    for kind in ("albedo", "normal"):
        alone = MapUpscaler("compact", GuidedNet.from_pretrained(tmp_path / kind))
        args = (lo["expr"][kind], lo["neutral"][kind], None, kind)
        np.testing.assert_allclose(up.upscale(*args), alone.upscale(*args), atol=1e-5)  # float32, layouts differ
