"""train_vae: publishes a loadable codec with held-out metrics; deterministic; learns; refuses bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.vae import MAP_KINDS, LatentCodec, MapNormalization, offline_vae_config, to_vae_input
from expdiff_core.training.vae import (
    DatasetMaps,
    VAETrainConfig,
    evaluate_codec,
    measure_scaling_factor,
    psnr_db,
    train_vae,
)

TINY = offline_vae_config(block_out_channels=[8, 16, 16, 16], norm_num_groups=8, sample_size=32)


def smooth_map(kind: str, seed: int, size: int = 32) -> torch.Tensor:
    """A smooth random field in ``kind``'s range: bicubic upsampling of a 4x4 grid (like skin-map variation)."""
    spec = MAP_KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(1, spec.channels, 4, 4, generator=g)
    field = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1)
    return field * (spec.high - spec.low) + spec.low


def dataset(count: int, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    kinds = sorted(MAP_KINDS)
    return [(kinds[i % len(kinds)], smooth_map(kinds[i % len(kinds)], seed * 1000 + i)) for i in range(count)]


def tiny_config(**changes) -> VAETrainConfig:
    base = dict(steps=4, batch_size=4, crop_size=None, warmup_steps=2, device="cpu", model=TINY,
                scaling_samples=8)
    return VAETrainConfig(**{**base, **changes})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """60 steps on 40 smooth maps of all kinds, 10 more held out: about 5 s on one core."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vae") / "model"
    steps: list[int] = []
    train_vae(dataset(40), tiny_config(steps=60, learning_rate=3e-3, warmup_steps=5), out,
              held_out=dataset(10, seed=1), progress=lambda step, total, values: steps.append(step),
              show_progress=False)
    return out, steps


def test_training_publishes_a_loadable_codec_with_metrics_and_model_card(trained):
    out, steps = trained
    assert steps == list(range(1, 61))
    assert {p.name for p in out.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors",
                                               "metrics.json", "README.md", "map_normalization.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["held_out"]) == set(MAP_KINDS)
    assert sum(row["maps"] for row in metrics["held_out"].values()) == 10
    codec = LatentCodec.from_pretrained(out, device="cpu")
    assert codec.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert "| position |" in (out / "README.md").read_text()


def test_training_lowers_the_held_out_error_below_the_untrained_codec(trained):
    out, _ = trained
    held_out = dataset(10, seed=1)
    before = evaluate_codec(LatentCodec.from_config(TINY, seed=0, device="cpu"), held_out)
    after = json.loads((out / "metrics.json").read_text())["held_out"]
    print("\nheld-out PSNR (dB) untrained -> 60 steps: " + ", ".join(
        f"{k} {before[k]['psnr_db']:.1f} -> {after[k]['psnr_db']:.1f}" for k in sorted(after)))
    for kind in MAP_KINDS:
        assert after[kind]["mean_abs_error"] < before[kind]["mean_abs_error"]


def test_training_is_deterministic_given_a_seed(tmp_path):
    maps = dataset(12)
    a = train_vae(maps, tiny_config(crop_size=16), tmp_path / "a", show_progress=False)
    b = train_vae(maps, tiny_config(crop_size=16), tmp_path / "b", show_progress=False)
    c = train_vae(maps, tiny_config(crop_size=16, seed=1), tmp_path / "c", show_progress=False)
    wa, wb, wc = (load_file(p / "diffusion_pytorch_model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_the_scaling_factor_gives_unit_variance_latents():
    codec = LatentCodec.from_config({**TINY, "scaling_factor": 0.5}, seed=0, device="cpu")
    maps = dataset(10)
    scale = measure_scaling_factor(codec, maps, range(10))
    codec.vae.register_to_config(scaling_factor=scale)
    latents = torch.cat([codec.encode(image, kind).flatten() for kind, image in maps])
    # 1e-4: float64 accumulation of float32 latents; the factor is exact by construction
    assert latents.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_psnr_of_a_known_error():
    reference = torch.zeros(3, 8, 8)
    assert psnr_db(reference, reference + 0.1, 1.0) == pytest.approx(20.0)
    assert psnr_db(reference, reference + 0.1, 2.0) == pytest.approx(20.0 + 20 * 0.30103, abs=1e-4)


def test_an_existing_output_folder_is_never_overwritten(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ExpDiffInputError, match="already exists"):
        train_vae(dataset(6), tiny_config(), tmp_path / "model", show_progress=False)


@pytest.mark.parametrize("maps, problem", [
    ([("albedo", torch.full((3, 32, 32), 2.0))] * 4, "expected within"),
    ([("albedo", torch.zeros(2, 32, 32))] * 4, r"must be \(3, H, W\)"),
    ([("gloss", torch.zeros(3, 32, 32))] * 4, "unknown map kind"),
    ([("albedo", torch.zeros(3, 32, 32))], "too few"),
])
def test_bad_training_data_is_refused(tmp_path, maps, problem):
    with pytest.raises(ExpDiffInputError, match=problem):
        train_vae(maps, tiny_config(), tmp_path / "model", show_progress=False)
    assert not (tmp_path / "model").exists()


def test_dataset_maps_hold_every_kind_and_tile_of_the_chosen_subjects(make_tiny_dataset, tmp_path):
    from expdiff_core.io.dataset import Dataset

    data = Dataset(make_tiny_dataset(tmp_path / "data"))
    maps = DatasetMaps(data, ["s0", "s2"])
    assert len(maps) == 2 * 3 * 5  # subjects x (neutral + 2 units) x kinds, one tile
    assert maps.kinds == ["position", *data.map_kinds]
    for index in range(len(maps)):
        kind, image = maps[index]
        spec = MAP_KINDS[kind]
        assert kind == maps.kind_of(index)
        assert image.shape == (spec.channels, 64, 64) and image.dtype == torch.float32
        assert spec.low <= image.min() and image.max() <= spec.high
    subject, expression, kind, udim = maps.items[7]
    assert torch.equal(maps[7][1], torch.from_numpy(data.load_map(subject, expression, kind, udim)))
    with pytest.raises(ExpDiffInputError, match="not in this dataset"):
        DatasetMaps(data, ["s9"])


def test_dataset_position_maps_are_the_ones_the_latent_encoder_makes(make_tiny_dataset, tmp_path):
    from expdiff_core.io.dataset import Dataset
    from expdiff_core.training.encode import dataset_rasters, subject_maps
    from expdiff_core.uv.position_map import PositionMapConfig

    data = Dataset(make_tiny_dataset(tmp_path / "data"))
    maps = DatasetMaps(data, ["s1"], PositionMapConfig(scale_cm=2.0))
    index = maps.items.index(("s1", "jawOpen", "position", 1001))
    expected = subject_maps(data, "s1", "jawOpen", dataset_rasters(data), PositionMapConfig(scale_cm=2.0))
    assert torch.equal(maps[index][1], torch.from_numpy(expected["position"][1001]))
    assert maps[index][1].abs().max() > 0.1  # the squeeze really moved the sheet


def test_paired_batches_hold_each_maps_neutral_in_the_same_window(make_tiny_dataset, tmp_path):
    from expdiff_core.io.dataset import Dataset
    from expdiff_core.training.vae import _Batches

    maps = DatasetMaps(Dataset(make_tiny_dataset(tmp_path / "data")), ["s0", "s1"])
    batches = _Batches(maps, list(range(len(maps))), tiny_config(batch_size=3, crop_size=32, pair_weight=1.0), 8,
                       to_vae_input)
    batch = batches.next()
    assert batch.shape == (6, 3, 32, 32)
    # Replay the draws: the second half is each map's own subject's neutral, cut at the same window.
    replay = _Batches(maps, list(range(len(maps))), tiny_config(batch_size=3, crop_size=32, pair_weight=1.0), 8,
                      to_vae_input)
    for row in range(3):
        if not replay.queue:
            perm = torch.randperm(len(replay.indices), generator=replay.generator).tolist()
            replay.queue = [replay.indices[i] for i in perm]
        index = replay.queue.pop()
        kind, image = maps[index]
        top, left, size = replay._window(image, index)
        subject, _, map_kind, udim = maps.items[index]
        assert maps.items[maps.neutral_index(index)] == (subject, "neutral", map_kind, udim)
        _, neutral = maps[maps.neutral_index(index)]
        expected = to_vae_input(neutral[None, :, top:top + size, left:left + size], kind)[0]
        assert torch.equal(batch[3 + row], expected)


def test_pair_loss_needs_maps_that_know_their_neutral(tmp_path):
    with pytest.raises(ExpDiffInputError, match="pair_weight needs"):
        train_vae(dataset(8), tiny_config(pair_weight=1.0), tmp_path / "out", held_out=dataset(2, seed=1),
                  show_progress=False)
    assert not (tmp_path / "out").exists()


def test_fine_tuning_starts_from_the_given_codec(trained, tmp_path):
    folder, _ = trained
    out = tmp_path / "tuned"
    # A vanishing learning rate: the published weights are the starting codec's.
    train_vae(dataset(8), tiny_config(steps=1, learning_rate=1e-12, warmup_steps=0, init_from=str(folder)), out,
              held_out=dataset(2, seed=1), show_progress=False)
    start = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    tuned = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert start.keys() == tuned.keys()
    for name in start:
        torch.testing.assert_close(tuned[name], start[name], rtol=0, atol=1e-6)


def test_a_fresh_codec_is_trained_on_inputs_standardised_per_kind(trained):
    folder, _ = trained
    normalization = LatentCodec.from_pretrained(folder, device="cpu").normalization
    assert normalization is not None and set(normalization.kinds) == set(MAP_KINDS)


def test_standardisation_can_be_turned_off(tmp_path):
    out = train_vae(dataset(8), tiny_config(steps=1, normalize_kinds=False), tmp_path / "plain",
                    held_out=dataset(2, seed=1), show_progress=False)
    assert not (out / MapNormalization.FILE).exists()
    assert LatentCodec.from_pretrained(out, device="cpu").normalization is None


def test_fine_tuning_keeps_the_starting_codecs_standardisation(trained, tmp_path):
    folder, _ = trained
    out = train_vae(dataset(8), tiny_config(steps=1, init_from=str(folder)), tmp_path / "tuned",
                    held_out=dataset(2, seed=1), show_progress=False)
    assert (LatentCodec.from_pretrained(out, device="cpu").normalization
            == LatentCodec.from_pretrained(folder, device="cpu").normalization)


def test_change_maps_are_each_expression_minus_its_subjects_neutral(make_tiny_dataset, tmp_path):
    from expdiff_core.io.dataset import Dataset

    data = Dataset(make_tiny_dataset(tmp_path / "data"))
    plain, change = DatasetMaps(data, ["s0"]), DatasetMaps(data, ["s0"], change=True)
    assert len(change) == 2 * 5  # the two units x kinds: the neutral itself is no change
    for index, (subject, expression, kind, udim) in enumerate(change.items):
        expected = plain[plain.items.index((subject, expression, kind, udim))][1] - \
            plain[plain.items.index((subject, "neutral", kind, udim))][1]
        assert torch.equal(change[index][1], expected)


def test_a_change_codec_trains_on_changes_and_records_its_scales(make_tiny_dataset, tmp_path):
    from expdiff_core.io.dataset import Dataset

    data = Dataset(make_tiny_dataset(tmp_path / "data"))
    maps, held = DatasetMaps(data, ["s0", "s1"], change=True), DatasetMaps(data, ["s2"], change=True)
    out = train_vae(maps, tiny_config(steps=3, change=True), tmp_path / "model", held_out=held, show_progress=False)
    codec = LatentCodec.from_pretrained(out, device="cpu")
    assert codec.encodes_change and codec.normalization is None
    largest = max(float(maps[i][1].abs().max()) for i in range(len(maps)) if maps.kind_of(i) == "position")
    assert codec.change_scales.scale("position") >= largest  # no training change is clipped
    assert "change codec" in (out / "README.md").read_text()


def test_a_change_codec_refuses_absolute_maps(tmp_path):
    with pytest.raises(ExpDiffInputError, match="trains on changes"):
        train_vae(dataset(8), tiny_config(steps=1, change=True), tmp_path / "model", show_progress=False)


def test_change_scales_look_at_every_expression_however_few_maps_are_measured(make_tiny_dataset, tmp_path):
    from expdiff_core.io.dataset import Dataset
    from expdiff_core.training.vae import measure_change_scales

    maps = DatasetMaps(Dataset(make_tiny_dataset(tmp_path / "data")), ["s0", "s1"], change=True)
    scales = measure_change_scales(maps, range(len(maps)), limit=1)
    largest = max(float(maps[i][1].abs().max()) for i in range(len(maps)) if maps.kind_of(i) == "position")
    assert scales.scale("position") == pytest.approx(1.1 * largest, rel=1e-6)
