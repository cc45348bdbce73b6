"""Latent dataset format and diffusion training: learning, exact resume, safe checkpoints, 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.models.denoiser import ALL_KINDS, ExpDiffDenoiser
from expdiff_core.training.diffusion import (
    DiffusionTrainConfig,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint_model,
    residual_scale,
    train_diffusion,
)
from expdiff_core.training.latents import (
    NEUTRAL_PROMPT,
    LatentDataset,
    LatentManifest,
    expression_prompt,
    latent_key,
    read_latent_shard,
    read_manifest,
    write_latent_shard,
    write_manifest,
)

SHAPE = (4, 8, 8)
UDIMS = (1001, 1002)
EXPRESSIONS = ("jawOpen", "mouthSmile_L", "browInnerUp_R")
TINY_MODEL = dict(width=32, depth=2, heads=4, text_conditioning="one-hot", text_dim=16, text_len=4)
REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_latent_dataset(root: Path, subjects=None, *, albedo_only_neutral: bool = False, seed: int = 0) -> Path:
    """A synthetic encoded dataset: each subject has random neutral latents; every expression adds its own
    fixed offset (shared by all subjects), so a denoiser can learn expression = neutral + f(prompt)."""
    subjects = subjects or {"train": ["s0", "s1", "s2"], "val": ["s3"], "test": ["s4"]}
    gen = torch.Generator().manual_seed(seed)
    n_maps = len(UDIMS) * len(ALL_KINDS)
    offsets = {e: torch.randn(n_maps, *SHAPE, generator=gen) for e in EXPRESSIONS}
    for names in subjects.values():
        for subject in names:
            neutral = torch.randn(n_maps, *SHAPE, generator=gen)
            latents = {}
            for expression in ("neutral", *EXPRESSIONS):
                stack = neutral if expression == "neutral" else neutral + offsets[expression]
                for u, udim in enumerate(UDIMS):
                    for k, kind in enumerate(ALL_KINDS):
                        if albedo_only_neutral and expression == "neutral" and kind in ("specular", "roughness", "normal"):
                            continue
                        latents[latent_key(expression, kind, udim)] = stack[u * len(ALL_KINDS) + k].half()
            write_latent_shard(root / f"{subject}.safetensors", latents)
    write_manifest(root, LatentManifest(kinds=list(ALL_KINDS), udims=list(UDIMS), latent_shape=list(SHAPE),
                                        scaling_factor=0.5, expressions=["neutral", *EXPRESSIONS],
                                        subjects={k: list(v) for k, v in subjects.items()},
                                        codec={"kind": "synthetic test latents"}))
    return root


@pytest.fixture
def latents(tmp_path) -> Path:
    return make_latent_dataset(tmp_path / "latents")


def config(**overrides) -> DiffusionTrainConfig:
    values = dict(steps=12, batch_size=4, learning_rate=2e-3, warmup_steps=2, checkpoint_every=4, seed=7,
                  lr_schedule="constant_with_warmup", device="cpu")
    values.update(overrides)
    return DiffusionTrainConfig(**values)


# ---------------------------------------------------------------------------------------- data format
def test_latent_shard_round_trip_keeps_dtype_and_refuses_silent_overwrite(tmp_path):
    latents = {"neutral/albedo/1001": torch.randn(*SHAPE).half(), "jawOpen/position/1002": torch.randn(*SHAPE)}
    path = write_latent_shard(tmp_path / "a.safetensors", latents)
    back = read_latent_shard(path)
    assert back.keys() == latents.keys()
    assert back["neutral/albedo/1001"].dtype == torch.float16
    assert torch.equal(back["jawOpen/position/1002"], latents["jawOpen/position/1002"])
    with pytest.raises(PublishError, match="already exists"):
        write_latent_shard(path, latents)
    write_latent_shard(path, {"neutral/albedo/1001": torch.zeros(*SHAPE)}, overwrite=True)
    assert list(read_latent_shard(path)) == ["neutral/albedo/1001"]


def test_malformed_latent_keys_are_refused(tmp_path):
    with pytest.raises(ExpDiffInputError, match="'<expression>/<kind>/<udim>'"):
        write_latent_shard(tmp_path / "a.safetensors", {"neutral/albedo": torch.zeros(*SHAPE)})


def test_dataset_stacks_maps_tile_major_and_pairs_them_with_the_neutral(latents):
    data = LatentDataset(latents, "train")
    assert len(data) == 3 * 4  # 3 subjects x (3 expressions + neutral)
    assert data.prompts[-1] == NEUTRAL_PROMPT
    item = data[1]
    shard = read_latent_shard(latents / f"{item['subject']}.safetensors")
    assert item["expression"] == EXPRESSIONS[1] and item["target"].shape == (10, *SHAPE)
    m = 1 * len(ALL_KINDS) + ALL_KINDS.index("roughness")  # second tile, roughness
    assert torch.equal(item["target"][m], shard[latent_key(EXPRESSIONS[1], "roughness", 1002)].float())
    assert torch.equal(item["neutral"][m], shard[latent_key("neutral", "roughness", 1002)].float())
    assert item["target"].dtype == torch.float32


def test_albedo_only_neutral_fills_the_other_texture_slots_with_albedo(tmp_path):
    root = make_latent_dataset(tmp_path / "latents", albedo_only_neutral=True)
    with pytest.raises(ExpDiffInputError, match=r"s0\.safetensors: missing latents \['neutral/normal/1001'"):
        LatentDataset(root, "train")
    data = LatentDataset(root, "train", repeat_albedo=True)
    neutral = data.neutral("s0")
    for tile in range(len(UDIMS)):
        albedo = neutral[tile * 5 + ALL_KINDS.index("albedo")]
        for kind in ("specular", "roughness", "normal"):
            assert torch.equal(neutral[tile * 5 + ALL_KINDS.index(kind)], albedo)
        assert not torch.equal(neutral[tile * 5 + ALL_KINDS.index("position")], albedo)


def test_prompts_come_from_overrides_facs_units_or_the_free_text_itself():
    facs = pytest.importorskip("expdiff_core.facs")
    assert expression_prompt("jawOpen") == facs.unit("jawOpen").prompt != "jawOpen"
    assert expression_prompt("nose right") == "nose right"
    assert expression_prompt("jawOpen", {"jawOpen": "drop the jaw"}) == "drop the jaw"
    assert expression_prompt("neutral") == NEUTRAL_PROMPT


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ExpDiffInputError, match="manifest.json: latent dataset manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ExpDiffInputError, match="manifest.json: format"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------------------------------- training
def test_loss_decreases_on_a_tiny_dataset(latents, tmp_path):
    result = train_diffusion(latents, tmp_path / "run", TINY_MODEL,
                             config(steps=50, batch_size=8, checkpoint_every=50, text_dropout=0.0), progress=False)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    # Untrained ε-prediction outputs 0 (loss ≈ E[ε²] = 1); the expression offsets are learnable from the
    # prompt, so 50 steps must remove a clear share of it (measured: 0.96 -> 0.43; 0.7x leaves room for noise).
    assert first > 0.85 and last < 0.7 * first
    model = ExpDiffDenoiser.from_pretrained(result.model_dir)
    assert model.config.text_conditioning == "one-hot" and model.config.width == 32
    assert (result.scheduler_dir / "scheduler_config.json").is_file()
    assert json.loads((tmp_path / "run" / "latents_manifest.json").read_text())["scaling_factor"] == 0.5


def test_residual_scale_gives_every_maps_residual_unit_rms(latents):
    dataset = LatentDataset(latents)
    model = ExpDiffDenoiser(**{**TINY_MODEL, "kinds": list(ALL_KINDS), "n_udims": len(UDIMS), "latent_channels": 4,
                               "latent_size": list(SHAPE[1:]), "target": "residual",
                               "residual_scale": residual_scale(dataset)})
    items = [dataset[i] for i in range(len(dataset)) if dataset[i]["expression"] != "neutral"]
    residual = model.diffusion_target(torch.stack([it["target"] for it in items]),
                                      torch.stack([it["neutral"] for it in items]))
    rms = residual.pow(2).transpose(0, 1).flatten(1).mean(1).sqrt()
    # The factors are rounded to 6 significant digits.
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-5, atol=1e-5)


def test_residual_training_learns_and_publishes_its_scale(latents, tmp_path):
    result = train_diffusion(latents, tmp_path / "run", {**TINY_MODEL, "target": "residual"},
                             config(steps=50, batch_size=8, checkpoint_every=50, text_dropout=0.0), progress=False)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    # As in the absolute test: the residual is the prompt's fixed offset, learnable within 50 steps.
    assert first > 0.85 and last < 0.7 * first
    model = ExpDiffDenoiser.from_pretrained(result.model_dir)
    assert model.config.target == "residual"
    assert model.config.residual_scale == residual_scale(LatentDataset(latents))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_a_crashed_run_resumes_from_its_checkpoint_and_continues_the_same_loss_curve(latents, tmp_path):
    reference = train_diffusion(latents, tmp_path / "reference", TINY_MODEL, config(), progress=False)

    def crash_at_step_10(entry):
        if entry.step == 10:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(latents, tmp_path / "crashed", TINY_MODEL, config(), on_step=crash_at_step_10, progress=False)
    assert latest_checkpoint(tmp_path / "crashed").name == "step-0000008"
    assert len(_log(tmp_path / "crashed")) == 10

    resumed = train_diffusion(latents, tmp_path / "crashed", TINY_MODEL, config(), progress=False)
    assert resumed.start_step == 8 and resumed.step == 12 and len(resumed.losses) == 4
    # Every random draw is seeded by (seed, step) and optimizer/EMA/LR state is restored exactly, so the
    # resumed curve is bit-identical to the uninterrupted one.
    assert resumed.losses == reference.losses[8:]
    assert [e["step"] for e in _log(tmp_path / "crashed")] == list(range(1, 13))
    assert [e["loss"] for e in _log(tmp_path / "crashed")] == [e["loss"] for e in _log(tmp_path / "reference")]
    final = ExpDiffDenoiser.from_pretrained(resumed.model_dir).state_dict()
    expected = ExpDiffDenoiser.from_pretrained(reference.model_dir).state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_checkpoints_hold_only_safetensors_and_json_and_are_pruned(latents, tmp_path):
    run = tmp_path / "run"
    train_diffusion(latents, run, TINY_MODEL, config(keep_checkpoints=2), progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step-0000008", "step-0000012"]
    suffixes = {p.suffix for p in run.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".jsonl", ".safetensors"}
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] == 12 and len(state["rng"]) == 1
    ema, raw = load_checkpoint_model(latest_checkpoint(run)), load_checkpoint_model(latest_checkpoint(run), ema=False)
    published = ExpDiffDenoiser.from_pretrained(run / "model")
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), published.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters()))


def test_a_finished_run_is_returned_as_is_and_never_overwritten(latents, tmp_path):
    run = tmp_path / "run"
    train_diffusion(latents, run, TINY_MODEL, config(steps=4), progress=False)
    weights = (run / "model" / "diffusion_pytorch_model.safetensors").read_bytes()
    again = train_diffusion(latents, run, TINY_MODEL, config(steps=4), progress=False)
    assert again.start_step == 4 and again.losses == []
    with pytest.raises(PublishError, match="not overwritten"):
        train_diffusion(latents, run, TINY_MODEL, config(steps=8), progress=False)
    assert (run / "model" / "diffusion_pytorch_model.safetensors").read_bytes() == weights


def test_resuming_with_another_model_config_is_refused(latents, tmp_path):
    run = tmp_path / "run"

    def stop(entry):
        if entry.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(latents, run, TINY_MODEL, config(), on_step=stop, progress=False)
    with pytest.raises(ExpDiffInputError, match="another model config"):
        train_diffusion(latents, run, {**TINY_MODEL, "attention": False}, config(), progress=False)


def test_model_config_must_match_the_dataset_layout(latents, tmp_path):
    with pytest.raises(ExpDiffInputError, match="latent_size"):
        train_diffusion(latents, tmp_path / "run", {**TINY_MODEL, "latent_size": 16}, config(), progress=False)


def test_text_encoder_tokens_v_prediction_and_min_snr_train(latents, tmp_path):
    class CharacterEncoder:
        """A deterministic stand-in text encoder: one fixed vector per character."""

        table = torch.randn(256, 16, generator=torch.Generator().manual_seed(3))

        def encode(self, prompts):
            length = max(len(p) for p in prompts)
            tokens, mask = torch.zeros(len(prompts), length, 16), torch.zeros(len(prompts), length, dtype=torch.bool)
            for i, p in enumerate(prompts):
                tokens[i, :len(p)] = self.table[[ord(ch) % 256 for ch in p]]
                mask[i, :len(p)] = True
            return type("Embedding", (), {"tokens": tokens, "mask": mask})()

    seen = []
    result = train_diffusion(latents, tmp_path / "run", {**TINY_MODEL, "text_conditioning": "encoder"},
                             config(steps=3, prediction_type="v_prediction", snr_gamma=5.0),
                             text_encoder=CharacterEncoder(), on_step=seen.append, progress=False)
    assert [e.step for e in seen] == [1, 2, 3] and seen[-1].checkpoint == latest_checkpoint(tmp_path / "run")
    assert all(0 < loss < 10 for loss in result.losses)
    assert json.loads((result.scheduler_dir / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"


def test_a_sample_skip_denoiser_trains_with_the_runs_noise_schedule_and_v_prediction_only(latents, tmp_path):
    skip = {**TINY_MODEL, "sample_skip": True, "prompt_token_embedding": True}
    with pytest.raises(ExpDiffInputError, match="v_prediction"):
        train_diffusion(latents, tmp_path / "eps", skip, config(steps=1), progress=False)
    result = train_diffusion(latents, tmp_path / "run", skip,
                             config(steps=2, prediction_type="v_prediction", zero_terminal_snr=True), progress=False)
    model = ExpDiffDenoiser.from_pretrained(result.model_dir)
    assert model.config.sample_skip == dict(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    assert float(model.noise_sigma[-1]) == pytest.approx(1.0)  # the gate divides by the run's own sigma_t
    assert model.config.prompt_token_embedding


@pytest.mark.slow
def test_two_process_data_parallel_training_matches_one_process(latents, tmp_path):
    model_config = tmp_path / "tiny.json"
    model_config.write_text(json.dumps(TINY_MODEL))
    flags = ["--latents", str(latents), "--model-config", str(model_config), "--steps", "6", "--batch-size", "4",
             "--checkpoint-every", "3", "--warmup-steps", "2", "--learning-rate", "0.002", "--seed", "7",
             "--lr-schedule", "constant_with_warmup", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
              "-m", "expdiff_core.training.diffusion"]
    done = subprocess.run(launch + flags + ["--out", str(tmp_path / "ddp")], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "expdiff_core.training.diffusion", *flags,
                             "--out", str(tmp_path / "single")], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    info = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert info["num_processes"] == 2
    state = json.loads((latest_checkpoint(tmp_path / "ddp") / "state.json").read_text())
    assert state["step"] == 6 and len(state["rng"]) == 2  # both ranks' RNG states
    assert [p.name for p in list_checkpoints(tmp_path / "ddp")] == ["step-0000003", "step-0000006"]
    ExpDiffDenoiser.from_pretrained(tmp_path / "ddp" / "model")
    # The global batch, noise and timesteps do not depend on the process count and DDP averages gradients,
    # so the two runs agree up to fp32 reduction order (1e-4 relative after 6 steps).
    ddp = [e["loss"] for e in _log(tmp_path / "ddp")]
    one = [e["loss"] for e in _log(tmp_path / "single")]
    assert len(ddp) == 6
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(one), rtol=1e-4, atol=1e-6)


def test_a_change_denoiser_trains_only_on_a_change_encoding(latents, tmp_path):
    with pytest.raises(ExpDiffInputError, match="target 'change' trains on a change encoding"):
        train_diffusion(latents, tmp_path / "run", {**TINY_MODEL, "target": "change"}, config(), progress=False)


def test_in_a_change_encoding_the_neutral_target_is_no_change(latents):
    manifest = read_manifest(latents)
    manifest.codec = {**manifest.codec, "representation": "change"}
    write_manifest(latents, manifest, overwrite=True)
    data = LatentDataset(latents)
    assert not data.target("s0", "neutral").any()
    # the scale a change denoiser gets: each map's RMS of the stored changes themselves, not minus the neutral
    squares = [data.target(s, e).double().pow(2).flatten(1).mean(1) for s in data.subjects for e in EXPRESSIONS]
    assert torch.allclose(data.residual_rms(), torch.stack(squares).mean(0).sqrt())


SUBSPACE_MODEL = dict(_class_name="SubspaceDenoiser", components=[3, 2, 2, 2, 2], neutral_components=2, width=32,
                      depth=2, text_conditioning="one-hot", text_dim=16, text_len=4)


@pytest.fixture
def change_latents(latents) -> Path:
    manifest = read_manifest(latents)
    manifest.codec = {**manifest.codec, "representation": "change"}
    write_manifest(latents, manifest, overwrite=True)
    return latents


def test_a_subspace_denoiser_trains_on_its_fitted_coefficients_and_resumes_exactly(change_latents, tmp_path):
    from expdiff_core.models.denoiser import load_denoiser
    from expdiff_core.models.subspace_denoiser import SubspaceDenoiser

    reference = train_diffusion(change_latents, tmp_path / "reference", SUBSPACE_MODEL, config(), progress=False)

    def crash_at_step_10(entry):
        if entry.step == 10:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(change_latents, tmp_path / "crashed", SUBSPACE_MODEL, config(), on_step=crash_at_step_10,
                        progress=False)
    resumed = train_diffusion(change_latents, tmp_path / "crashed", SUBSPACE_MODEL, config(), progress=False)
    # the resumed run reads its subspace from the checkpoint, so its curve is the uninterrupted one
    assert resumed.start_step == 8 and resumed.losses == reference.losses[8:]
    model = load_denoiser(reference.model_dir)
    assert isinstance(model, SubspaceDenoiser) and model.is_fitted
    # the published (EMA) model keeps the fitted bases, which the EMA does not average
    data = LatentDataset(change_latents)
    changes = torch.stack([data.target(s, e) for s in data.subjects for e in data.expressions])
    coefficients = model.diffusion_target(changes)
    torch.testing.assert_close(coefficients.std(0), torch.ones(coefficients.shape[1]), atol=1e-3, rtol=0)


def test_a_subspace_denoiser_with_unit_directions_holds_each_trained_units_mean_change(change_latents, tmp_path):
    from expdiff_core.models.denoiser import load_denoiser

    data = LatentDataset(change_latents)
    units = len(data.expressions)  # their means, centred, span units - 1 directions: all of them are kept
    model_config = {**SUBSPACE_MODEL, "unit_directions": True, "components": [units - 1] * len(data.manifest.kinds)}
    result = train_diffusion(change_latents, tmp_path / "run", model_config, config(), progress=False)
    model = load_denoiser(result.model_dir)
    means = torch.stack([torch.stack([data.target(s, e) for s in data.subjects]).mean(0) for e in data.expressions])
    # the trainer told the fit which unit each change is, so the units' means survive the projection
    torch.testing.assert_close(model.latents_from_target(model.diffusion_target(means)), means, atol=1e-4, rtol=1e-4)
