"""Decoding in batches and streaming the texture stages: the same maps whatever the chunking, and no map held
in memory before it is needed (tiny model)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from expdiff_core import build
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.images import read_image, write_image


def _latents(pipe, n: int) -> torch.Tensor:
    m = len(pipe.config.kinds) * len(pipe.config.udims)
    r = pipe.config.resolution // pipe.codec.downsample_factor
    return torch.randn(n, m, pipe.codec.latent_channels, r, r, generator=torch.Generator().manual_seed(3))


def test_batched_decode_gives_each_maps_own_decoding(tiny_pipeline):
    latents = _latents(tiny_pipeline, 3)
    batched = tiny_pipeline.decode(latents)
    k = len(tiny_pipeline.config.kinds)
    for m in range(latents.shape[1]):
        kind, udim = tiny_pipeline.config.kinds[m % k], tiny_pipeline.config.udims[m // k]
        alone = tiny_pipeline.codec.decode(latents[:, m], kind).numpy()
        for i in range(latents.shape[0]):
            assert batched[i][kind][udim].shape == alone[i].shape
            np.testing.assert_allclose(batched[i][kind][udim], alone[i], atol=1e-5)


def test_decode_does_not_depend_on_how_many_maps_share_a_pass(tiny_pipeline):
    latents = _latents(tiny_pipeline, 3)
    r = tiny_pipeline.config.resolution
    one_per_pass = tiny_pipeline.decode(latents, texels_per_pass=r * r)
    all_at_once = tiny_pipeline.decode(latents, texels_per_pass=10**9)
    for a, b in zip(one_per_pass, all_at_once):
        for kind in a:
            for udim in a[kind]:
                np.testing.assert_allclose(a[kind][udim], b[kind][udim], atol=1e-5)


def test_decoding_some_kinds_gives_exactly_those_kinds_of_the_full_decode(tiny_pipeline):
    latents = _latents(tiny_pipeline, 2)
    full = tiny_pipeline.decode(latents)
    some = tiny_pipeline.decode(latents, kinds=["position", "roughness"])
    for a, b in zip(some, full):
        assert sorted(a) == ["position", "roughness"]
        for kind in a:
            for udim in a[kind]:
                np.testing.assert_array_equal(a[kind][udim], b[kind][udim])


def test_decoding_a_kind_the_model_lacks_is_refused(tiny_pipeline):
    with pytest.raises(ExpDiffInputError, match="cannot decode map kind"):
        tiny_pipeline.decode(_latents(tiny_pipeline, 1), kinds=["displacement"])


def test_decode_stage_writes_every_expression_whatever_the_chunk_size(tiny_pipeline, tiny_model, tmp_path):
    latents = _latents(tiny_pipeline, 5)
    save_file({"latents": latents}, str(tmp_path / "latents.safetensors"))
    labels = ["neutral", "a", "b", "c", "d"]
    diffused = {"latents": str(tmp_path / "latents.safetensors"), "labels": labels}
    whole = build.decode(diffused, str(tiny_model), tmp_path / "whole", device="cpu")
    chunked = build.decode(diffused, str(tiny_model), tmp_path / "chunked", device="cpu", expressions_per_pass=2)
    assert chunked["labels"] == labels
    for label in labels:
        for kind in whole["kinds"]:
            for udim in whole["udims"]:
                a = read_image(tmp_path / "whole" / "decoded" / label / f"{kind}.{udim}.exr")
                b = read_image(tmp_path / "chunked" / "decoded" / label / f"{kind}.{udim}.exr")
                np.testing.assert_allclose(a, b, atol=1e-5)


def test_transferred_maps_are_read_only_when_a_tile_is_looked_up(tmp_path):
    write_image(tmp_path / "jawOpen" / "albedo.1001.exr", np.full((4, 4, 3), 0.25, np.float32))
    maps = build._read_maps(str(tmp_path), ["jawOpen"], ["albedo"], [1001])
    tiles = maps["jawOpen"]["albedo"]
    assert list(tiles) == [1001] and len(tiles) == 1
    write_image(tmp_path / "jawOpen" / "albedo.1001.exr", np.full((4, 4, 3), 0.75, np.float32))  # after the lookup table
    assert tiles[1001].shape == (3, 4, 4) and np.allclose(tiles[1001], 0.75)  # read now, not when listed
    assert 1002 not in tiles


def test_the_model_is_loaded_once_per_process_whatever_the_spelling(tiny_model):
    here = build.load_pipeline(str(tiny_model), "cpu")
    assert build.load_pipeline(tiny_model, "auto" if not torch.cuda.is_available() else "cpu") is here
    assert build.load_pipeline(f"{tiny_model}/../{tiny_model.name}", "cpu") is here


def test_tiles_beyond_the_texel_budget_are_transferred_one_after_another():
    import threading
    import time

    budget = build.TexelBudget(100)
    spans, lock = [], threading.Lock()

    def tile(texels: int) -> None:
        with budget.hold(texels):
            start = time.monotonic()
            time.sleep(0.05)
            with lock:
                spans.append((start, time.monotonic(), texels))

    threads = [threading.Thread(target=tile, args=(t,)) for t in (80, 80, 30, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a in spans:  # whenever two tiles overlapped, together they fitted the budget
        for b in spans:
            if a is not b and a[0] < b[1] and b[0] < a[1]:
                assert a[2] + b[2] <= 100, spans
    assert len(spans) == 4  # the tile larger than the whole budget still ran (alone)
