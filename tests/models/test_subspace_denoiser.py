"""SubspaceDenoiser: fitted per-kind subspaces, whitened coefficients, identity and prompt wiring, round trip."""

from __future__ import annotations

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.denoiser import load_denoiser
from expdiff_core.models.subspace_denoiser import SubspaceDenoiser

KINDS = ("position", "albedo", "normal", "roughness", "specular")
UDIMS, C, H, W, CN = 2, 8, 4, 4, 4
M = UDIMS * len(KINDS)
COMPONENTS = [6, 3, 3, 2, 2]
TEXT_LEN, TEXT_DIM = 5, 24

pytestmark = pytest.mark.usefixtures("one_thread")


def low_rank_data(n: int = 60, subjects: int = 12, seed: int = 0):
    """Changes of ``n`` samples whose every kind lies in an affine subspace of the dimension the model keeps,
    and ``subjects`` neutrals."""
    gen = torch.Generator().manual_seed(seed)
    changes = torch.zeros(n, M, C, H, W)
    for k, rank in enumerate(COMPONENTS):
        directions = torch.randn(rank, UDIMS * C * H * W, generator=gen)
        offset = torch.randn(UDIMS * C * H * W, generator=gen)
        weights = torch.randn(n, rank, generator=gen) * torch.linspace(3, 1, rank)
        values = (offset + weights @ directions).view(n, UDIMS, C, H, W)
        changes[:, [u * len(KINDS) + k for u in range(UDIMS)]] = values
    neutrals = torch.randn(subjects, M, CN, H, W, generator=gen)
    return changes, neutrals


def fitted_model(seed: int = 0, perturb: bool = True, **config) -> SubspaceDenoiser:
    torch.manual_seed(seed)
    config = {"neutral_components": 5, **config}
    model = SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                             components=COMPONENTS, width=32, depth=2, text_dim=TEXT_DIM, text_len=TEXT_LEN,
                             **config).eval()
    model.fit_subspace(*low_rank_data())
    if perturb:  # adaLN-zero starts every gate and the output at zero: perturb to expose the wiring
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def inputs(seed: int = 0, batch: int = 2):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, sum(COMPONENTS), generator=gen)
    neutral = torch.randn(batch, M, CN, H, W, generator=gen)
    tokens = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen)
    return sample, torch.tensor([10, 700][:batch]), neutral, tokens, torch.ones(batch, TEXT_LEN, dtype=torch.bool)


def test_changes_inside_the_fitted_subspace_round_trip_exactly():
    model = fitted_model(perturb=False)
    changes, _ = low_rank_data(n=60)
    coefficients = model.diffusion_target(changes)
    assert coefficients.shape == (60, sum(COMPONENTS)) == (60, *model.diffused_shape())
    # each kind's data has exactly the rank kept, so projecting loses nothing but float32 rounding
    torch.testing.assert_close(model.latents_from_target(coefficients), changes, atol=1e-4, rtol=1e-4)


def test_the_diffused_coefficients_are_whitened_on_the_training_data():
    model = fitted_model(perturb=False)
    coefficients = model.diffusion_target(low_rank_data()[0])
    torch.testing.assert_close(coefficients.mean(0), torch.zeros(sum(COMPONENTS)), atol=1e-4, rtol=0)
    torch.testing.assert_close(coefficients.std(0), torch.ones(sum(COMPONENTS)), atol=1e-4, rtol=0)


def test_without_whitening_each_kind_has_unit_mean_variance_and_keeps_its_directions_ranked():
    model = fitted_model(perturb=False, whiten=False)
    changes = low_rank_data()[0]
    coefficients = model.diffusion_target(changes)
    for i, n in enumerate(COMPONENTS):
        variance = coefficients[:, model.offsets[i]:model.offsets[i + 1]].var(0)
        torch.testing.assert_close(variance.mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
        assert variance[0] > variance[-1]  # the data's directions were drawn with decreasing weights
    torch.testing.assert_close(model.latents_from_target(coefficients), changes, atol=1e-4, rtol=1e-4)


def test_whitening_can_be_chosen_per_kind():
    model = fitted_model(perturb=False, whiten=["position"])
    coefficients = model.diffusion_target(low_rank_data()[0])
    variance = coefficients.var(0)
    position = slice(model.offsets[0], model.offsets[1])
    torch.testing.assert_close(variance[position], torch.ones(COMPONENTS[0]), atol=1e-4, rtol=0)
    for i in range(1, len(COMPONENTS)):
        kind = variance[model.offsets[i]:model.offsets[i + 1]]
        torch.testing.assert_close(kind.mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
        assert kind[0] > kind[-1]  # one scale: the kind's directions keep their ranking


def test_whitening_an_unknown_kind_is_refused():
    with pytest.raises(ExpDiffInputError, match="whiten"):
        SubspaceDenoiser(whiten=["wrinkles"])


def test_every_identity_kind_weighs_the_same_whatever_its_scale():
    model = fitted_model(perturb=False, identity_kinds=["position", "albedo"])
    changes, neutrals = low_rank_data()
    albedo = [u * len(KINDS) + 1 for u in range(UDIMS)]
    neutrals[:, albedo] *= 1000.0  # albedo latents three orders of magnitude larger than position's
    model.fit_subspace(changes, neutrals)  # refit on the rescaled neutrals
    position = [u * len(KINDS) for u in range(UDIMS)]

    def response(maps: list[int]) -> float:  # identity change when those maps move by one std
        moved = neutrals[:1].clone()
        moved[:, maps] += neutrals[:, maps].std(0)
        return float((model.identity_coefficients(moved) - model.identity_coefficients(neutrals[:1])).norm())

    # unbalanced, position would move the identity ~1000x less than albedo; balanced, the same order
    assert 0.2 < response(position) / response(albedo) < 5


def test_identity_components_per_kind_read_each_kind_on_its_own_directions():
    torch.manual_seed(0)
    model = SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                             components=COMPONENTS, neutral_components=[4, 2], identity_kinds=["position", "albedo"],
                             width=32, depth=2, text_dim=TEXT_DIM, text_len=TEXT_LEN).eval()
    kept = model.fit_subspace(*low_rank_data())
    assert set(kept) >= {"neutral position", "neutral albedo"}
    _, neutrals = low_rank_data()
    albedo = [u * len(KINDS) + 1 for u in range(UDIMS)]
    moved = neutrals[:1].clone()
    moved[:, albedo] += neutrals[:, albedo].std(0)
    change = model.identity_coefficients(moved) - model.identity_coefficients(neutrals[:1])
    # the albedo moves its own 2 coefficients only, the geometry's 4 not at all (float32 rounding)
    assert change.shape == (1, 6) and change[0, :4].abs().max() < 1e-5 and change[0, 4:].abs().max() > 0.1
    # and each kind's coefficients are whitened on the training neutrals
    torch.testing.assert_close(model.identity_coefficients(neutrals).std(0), torch.ones(6), atol=1e-4, rtol=1e-4)


MEAN_SKIP = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 rescale_betas_zero_snr=True)


def routed_model(routing: str) -> SubspaceDenoiser:
    model = fitted_model(neutral_components=[4, 2], identity_kinds=["position", "albedo"], mean_skip=MEAN_SKIP,
                         identity_routing=routing)
    assert model.mean_head.weight.abs().sum() > 0  # zero-initialised like every adaLN-zero output; perturbed here
    return model


def test_per_kind_routing_lets_the_albedo_identity_change_only_the_albedo():
    model = routed_model("per_kind")
    sample, t, neutral, tokens, mask = inputs()
    moved = neutral.clone()
    moved[:, [u * len(KINDS) + 1 for u in range(UDIMS)]] += 1.0  # the neutral albedo only
    delta = (model(sample, t, moved, tokens, mask) - model(sample, t, neutral, tokens, mask)).abs()
    albedo = slice(COMPONENTS[0], COMPONENTS[0] + COMPONENTS[1])
    assert delta[:, albedo].max() > 1e-3
    assert delta[:, :albedo.start].max() < 1e-6 and delta[:, albedo.stop:].max() < 1e-6  # float32 rounding


def test_shared_routing_lets_the_albedo_identity_change_every_kind():
    model = routed_model("shared")
    sample, t, neutral, tokens, mask = inputs()
    moved = neutral.clone()
    moved[:, [u * len(KINDS) + 1 for u in range(UDIMS)]] += 1.0
    delta = (model(sample, t, moved, tokens, mask) - model(sample, t, neutral, tokens, mask)).abs()
    assert delta[:, :COMPONENTS[0]].max() > 1e-3


def test_a_routed_model_with_identity_components_per_kind_saves_and_loads(tmp_path):
    model = routed_model("per_kind")
    model.save_pretrained(tmp_path / "denoiser")
    loaded = load_denoiser(tmp_path / "denoiser").eval()
    sample, t, neutral, tokens, mask = inputs()
    torch.testing.assert_close(loaded(sample, t, neutral, tokens, mask), model(sample, t, neutral, tokens, mask))


def test_per_kind_routing_needs_identity_components_per_kind():
    with pytest.raises(ExpDiffInputError, match="identity_routing"):
        SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                         components=COMPONENTS, neutral_components=5, mean_skip=MEAN_SKIP, identity_routing="per_kind")


def test_identity_components_need_one_count_per_identity_kind():
    with pytest.raises(ExpDiffInputError, match="neutral_components"):
        SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                         components=COMPONENTS, neutral_components=[4, 2, 1], identity_kinds=["position", "albedo"])


def test_changes_outside_the_subspace_are_projected_onto_it():
    model = fitted_model(perturb=False)
    outside = torch.randn(3, M, C, H, W)
    projected = model.latents_from_target(model.diffusion_target(outside))
    # a projection: applying it again changes nothing
    torch.testing.assert_close(model.latents_from_target(model.diffusion_target(projected)), projected,
                               atol=1e-4, rtol=1e-4)


def test_the_output_has_the_sample_shape_and_depends_on_the_identity():
    model = fitted_model()
    sample, t, neutral, tokens, mask = inputs()
    out = model(sample, t, neutral, tokens, mask)
    assert out.shape == sample.shape
    assert not torch.allclose(out, model(sample, t, neutral.flip(0), tokens, mask))


def test_an_all_false_mask_is_the_unconditional_branch_whatever_the_tokens():
    model = fitted_model()
    sample, t, neutral, tokens, mask = inputs()
    empty = torch.zeros_like(mask)
    torch.testing.assert_close(model(sample, t, neutral, tokens, empty), model(sample, t, neutral, -tokens, empty))
    assert not torch.allclose(model(sample, t, neutral, tokens, mask), model(sample, t, neutral, tokens, empty))


def test_an_unfitted_model_refuses_to_run():
    model = SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                             components=COMPONENTS, neutral_components=5, width=32, depth=1, text_dim=TEXT_DIM)
    with pytest.raises(ExpDiffInputError, match="no fitted subspace"):
        model.diffusion_target(torch.zeros(1, M, C, H, W))


def test_keeping_more_directions_than_the_data_has_is_refused():
    model = SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                             components=[70, 1, 1, 1, 1], neutral_components=5, width=32, depth=1)
    with pytest.raises(ExpDiffInputError, match="cannot keep 70 principal directions of 60 position changes"):
        model.fit_subspace(*low_rank_data(n=60))


def test_save_and_load_keeps_the_fitted_subspace(tmp_path):
    model = fitted_model()
    model.save_pretrained(tmp_path / "denoiser")
    loaded = load_denoiser(tmp_path / "denoiser").eval()
    assert isinstance(loaded, SubspaceDenoiser)
    torch.testing.assert_close(loaded.change_basis, model.change_basis, atol=0, rtol=0)
    sample, t, neutral, tokens, mask = inputs()
    torch.testing.assert_close(loaded(sample, t, neutral, tokens, mask), model(sample, t, neutral, tokens, mask))


def test_identity_noise_perturbs_the_identity_in_training_only():
    model = fitted_model(identity_noise=0.5)
    sample, t, neutral, tokens, mask = inputs()
    torch.testing.assert_close(model(sample, t, neutral, tokens, mask), model(sample, t, neutral, tokens, mask))
    model.train()
    assert not torch.allclose(model(sample, t, neutral, tokens, mask), model(sample, t, neutral, tokens, mask))


def test_the_identity_is_read_from_the_identity_kinds_only():
    model = fitted_model(identity_kinds=["position"])
    sample, t, neutral, tokens, mask = inputs()
    textures = neutral.clone()
    textures[:, [m for m in range(M) if m % len(KINDS) != 0]] += 1.0  # every non-position map of the neutral
    torch.testing.assert_close(model(sample, t, textures, tokens, mask), model(sample, t, neutral, tokens, mask))
    moved = neutral.clone()
    moved[:, 0] += 1.0
    assert not torch.allclose(model(sample, t, moved, tokens, mask), model(sample, t, neutral, tokens, mask))


def test_without_attention_each_kind_is_denoised_from_its_own_coefficients_only():
    model = fitted_model(attention=False)
    sample, t, neutral, tokens, mask = inputs()
    others = sample.clone()
    others[:, COMPONENTS[0]:] = torch.randn(2, sum(COMPONENTS[1:]))  # every kind but position changes
    out, out_others = model(sample, t, neutral, tokens, mask), model(others, t, neutral, tokens, mask)
    torch.testing.assert_close(out[:, :COMPONENTS[0]], out_others[:, :COMPONENTS[0]])
    assert not torch.allclose(out[:, COMPONENTS[0]:], out_others[:, COMPONENTS[0]:])


def test_with_attention_the_kinds_inform_each_other():
    model = fitted_model()
    sample, t, neutral, tokens, mask = inputs()
    others = sample.clone()
    others[:, COMPONENTS[0]:] = torch.randn(2, sum(COMPONENTS[1:]))
    assert not torch.allclose(model(sample, t, neutral, tokens, mask)[:, :COMPONENTS[0]],
                              model(others, t, neutral, tokens, mask)[:, :COMPONENTS[0]])


def test_with_kind_tokens_the_kinds_inform_each_other_through_attention_only():
    model = fitted_model(kind_tokens=True)
    sample, t, neutral, tokens, mask = inputs()
    others = sample.clone()
    others[:, COMPONENTS[0]:] = torch.randn(2, sum(COMPONENTS[1:]))
    assert not torch.allclose(model(sample, t, neutral, tokens, mask)[:, :COMPONENTS[0]],
                              model(others, t, neutral, tokens, mask)[:, :COMPONENTS[0]])
    with torch.no_grad():  # the attention's gates closed: the streams are separate again
        for block in model.blocks:
            block.kind_attention.modulation[1].weight.zero_()
            block.kind_attention.modulation[1].bias.zero_()
    torch.testing.assert_close(model(sample, t, neutral, tokens, mask)[:, :COMPONENTS[0]],
                               model(others, t, neutral, tokens, mask)[:, :COMPONENTS[0]])


def test_kind_tokens_without_attention_is_the_stream_model_with_the_same_weights():
    with_tokens, without = fitted_model(kind_tokens=True, attention=False), fitted_model(attention=False)
    assert not any(b.kind_attention for b in with_tokens.blocks)
    torch.testing.assert_close(with_tokens(*inputs()), without(*inputs()))


def test_with_unit_directions_every_units_mean_change_lies_in_the_subspace():
    torch.manual_seed(0)
    model = SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                             components=[4] * len(KINDS), neutral_components=5, width=32, depth=2, text_dim=TEXT_DIM,
                             text_len=TEXT_LEN, unit_directions=list(KINDS)).eval()  # = True: every kind
    # 3 units whose means are small next to a rank-6 per-sample spread: plain principal directions would keep
    # the spread and lose the means
    gen = torch.Generator().manual_seed(3)
    units = torch.arange(90) % 3
    means = 0.05 * torch.randn(3, M, C, H, W, generator=gen)
    spread = torch.randn(90, 6, generator=gen) @ torch.randn(6, M * C * H * W, generator=gen)
    changes = means[units] + spread.view(90, M, C, H, W)
    model.fit_subspace(changes, torch.randn(12, M, CN, H, W, generator=gen), units=units)
    unit_means = torch.stack([changes[units == u].mean(0) for u in range(3)])
    # the basis holds the means' span exactly: only float32 rounding is lost
    torch.testing.assert_close(model.latents_from_target(model.diffusion_target(unit_means)), unit_means,
                               atol=1e-4, rtol=1e-4)


def test_unit_directions_need_each_changes_unit():
    model = SubspaceDenoiser(kinds=KINDS, n_udims=UDIMS, latent_channels=C, latent_size=[H, W], condition_channels=CN,
                             components=COMPONENTS, neutral_components=5, width=32, depth=2, text_dim=TEXT_DIM,
                             text_len=TEXT_LEN, unit_directions=True)
    with pytest.raises(ExpDiffInputError, match="units"):
        model.fit_subspace(*low_rank_data())


def test_kind_loss_weights_weight_each_kinds_coefficients_in_the_training_loss():
    from diffusers import DDPMScheduler

    from expdiff_core.training.diffusion import diffusion_loss

    weighted = fitted_model(kind_loss_weights=[3, 1, 1, 1, 1])
    plain = fitted_model()
    sample, t, neutral, tokens, mask = inputs()
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    target = noise  # epsilon prediction
    pred = plain(scheduler.add_noise(sample, noise, t), t, neutral, tokens, mask)
    error = (pred - target).pow(2)
    position = COMPONENTS[0]
    # the same network (same seed) under weights 3:1, normalised to a mean of 1 over the coefficients
    scale = sum(COMPONENTS) / (3 * position + sum(COMPONENTS[1:]))
    expected = (scale * (3 * error[:, :position].sum(1) + error[:, position:].sum(1))) / sum(COMPONENTS)
    loss = diffusion_loss(weighted, scheduler, sample, neutral, tokens, mask, noise, t)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(diffusion_loss(plain, scheduler, sample, neutral, tokens, mask, noise, t),
                               error.mean(1), rtol=1e-5, atol=1e-6)


def test_a_loss_weight_per_kind_is_required():
    with pytest.raises(ExpDiffInputError, match="kind_loss_weights"):
        SubspaceDenoiser(kinds=KINDS, components=COMPONENTS, kind_loss_weights=[1, 2])


def test_weights_stored_as_float16_halve_the_file_and_load_back_as_float32(tmp_path):
    from expdiff_core.models.weights import store_float16

    model = fitted_model()
    model.save_pretrained(tmp_path / "m")
    (path,) = (tmp_path / "m").glob("*.safetensors")
    before = path.stat().st_size
    store_float16(tmp_path / "m")
    assert path.stat().st_size < 0.6 * before
    loaded = load_denoiser(tmp_path / "m").eval()
    assert loaded.dtype == torch.float32 and loaded.change_basis.dtype == torch.float32
    sample, t, neutral, tokens, mask = inputs()
    # float16 keeps ~3 significant digits of every weight
    torch.testing.assert_close(loaded(sample, t, neutral, tokens, mask), model(sample, t, neutral, tokens, mask),
                               rtol=2e-2, atol=2e-2)


def test_unit_directions_name_map_kinds_of_the_model():
    with pytest.raises(ExpDiffInputError, match="unit_directions"):
        SubspaceDenoiser(kinds=KINDS, components=COMPONENTS, unit_directions=["albedo", "displacement"])
