"""Position maps: normalisation, clipping, and the raster round trip of the acceptance criteria."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.uv import PositionMapConfig, VertexSampler, position_maps, sample_displacements, uv_raster

# "Moving" skin vertices: displacement above 0.01 mm (ICT units are cm), i.e. not numerically still.
MOVING_CM = 1e-3


def vertex_errors(mesh, rasters, sampler, delta, scale):
    """Per moving skin vertex: round-trip error (cm) and displacement length (cm)."""
    maps = position_maps(mesh.vertices + delta, mesh.vertices, rasters, scale)
    sampled, covered = sample_displacements(maps, mesh, rasters, scale, sampler)
    moving = covered & (np.linalg.norm(delta, axis=1) > MOVING_CM)
    return np.linalg.norm(sampled - delta, axis=1)[moving], np.linalg.norm(delta, axis=1)[moving]


def roundtrip_error(mesh, rasters, sampler, delta, scale):
    """Mean vertex error (cm) and mean displacement (cm) over moving skin vertices."""
    errors, lengths = vertex_errors(mesh, rasters, sampler, delta, scale)
    return float(errors.mean()), float(lengths.mean())


def test_maps_are_displacement_over_scale(sheet):
    rasters = uv_raster(sheet, 32, groups=("skin",))
    shift = np.tile(np.float32([0.3, -1.2, 0.0]), (sheet.n_vertices, 1))
    maps = position_maps(sheet.vertices + shift, sheet.vertices, rasters, scale=2.0)
    assert set(maps) == {1001, 1002} and maps[1001].shape == (3, 32, 32) and maps[1001].dtype == np.float32
    # A constant shift gives a constant map everywhere, dilated texels included (float32 rounding: 1e-6).
    np.testing.assert_allclose(maps[1002][:, 5, 7], [0.15, -0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.ptp(maps[1001].reshape(3, -1), axis=1), 0.0, atol=1e-6)


def test_displacements_beyond_the_scale_are_clipped_with_a_warning(sheet):
    rasters = uv_raster(sheet, 32, groups=("skin",))
    far = sheet.vertices + np.float32([10.0, 0.5, 0.0])
    with pytest.warns(UserWarning, match=f"{sheet.n_vertices} displacement component"):
        maps = position_maps(far, sheet.vertices, rasters, scale=2.0)
    for m in maps.values():  # 1e-6: barycentric weights sum to 1 up to float32 rounding
        np.testing.assert_allclose(m[0], 1.0, atol=1e-6)
        np.testing.assert_allclose(m[1], 0.25, atol=1e-6)


def test_reference_must_match_vertices(sheet):
    rasters = uv_raster(sheet, 32, groups=("skin",))
    with pytest.raises(ExpDiffInputError, match="reference"):
        position_maps(sheet.vertices, sheet.vertices[:-1], rasters, scale=1.0)


def test_config_scale_converts_units_and_round_trips():
    config = PositionMapConfig(scale_cm=6.0)
    assert config.scale_in("mm") == 60.0 and config.scale_in("m") == 0.06
    assert PositionMapConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ExpDiffInputError, match="furlong"):
        config.scale_in("furlong")


@pytest.mark.parametrize("name", ["jawOpen", "mouthSmile_L", "browInnerUp_L", "eyeBlink_R"])
def test_ict_expression_round_trip_at_512_is_within_one_percent(name, ict_data, ict_rasters_512, ict_sampler_512):
    mesh, names, expressions, _ = ict_data
    scale = PositionMapConfig().scale_in(mesh.units)
    error, mean = roundtrip_error(mesh, ict_rasters_512, ict_sampler_512, expressions[names.index(name)], scale)
    print(f"{name}: mean error {error * 10:.5f} mm = {100 * error / mean:.3f}% of {mean * 10:.3f} mm")
    assert error < 0.01 * mean


@pytest.mark.slow
def test_every_ict_expression_round_trips_within_one_percent(ict_data, ict_rasters_512, ict_sampler_512):
    mesh, names, expressions, _ = ict_data
    scale = PositionMapConfig().scale_in(mesh.units)
    worst = []
    for name, delta in zip(names, expressions):
        if np.linalg.norm(delta[ict_sampler_512.covered], axis=1).max() < 0.01:
            # PupilDilate_* move the iris; on the skin at most 0.05 mm (data noise), so no 1% figure.
            continue
        error, mean = roundtrip_error(mesh, ict_rasters_512, ict_sampler_512, delta, scale)
        worst.append((error / mean, name))
    assert len(worst) >= 50
    assert max(worst)[0] < 0.01, max(worst)


def test_identity_and_expression_together_round_trip(ict_data, ict_rasters_512, ict_sampler_512):
    # Position maps hold identity + expression offsets from the mean; both must survive together.
    mesh, names, expressions, identities = ict_data
    identity = np.tensordot(np.random.default_rng(3).normal(size=len(identities)), identities, axes=1)
    user = mesh.with_vertices(mesh.vertices + identity.astype(np.float32))
    delta = expressions[names.index("mouthSmile_L")]
    scale = PositionMapConfig().scale_in(mesh.units)
    maps = position_maps(user.vertices + delta, mesh.vertices, ict_rasters_512, scale)
    sampled, covered = sample_displacements(maps, mesh, ict_rasters_512, scale, ict_sampler_512)
    # Error relative to the whole offset (identity + expression, a few cm); 1% as in the acceptance.
    offset = np.linalg.norm(identity + delta, axis=1)[covered].mean()
    error = np.linalg.norm(sampled - (identity + delta), axis=1)[covered].mean()
    assert error < 0.01 * offset


@pytest.fixture(scope="module")
def procedural_source():
    factory = pytest.importorskip("expdiff_core.synth.factory")
    if not hasattr(factory, "ProceduralSource"):
        pytest.skip("synth.factory.ProceduralSource is not available yet")
    return factory.ProceduralSource()


def synthetic_round_trips(source, units):
    """{resolution: (error over all units' moving vertices / their mean displacement, worst unit's ratio)}."""
    identity = source.identity(0)
    neutral = source.template.with_vertices(identity.neutral)
    scale = PositionMapConfig().scale_in(neutral.units)
    deltas = [source.expression(identity, unit) - identity.neutral for unit in units]
    out = {}
    for resolution in (128, 256):
        rasters = uv_raster(source.template, resolution, groups=source.skin_groups)
        sampler = VertexSampler(source.template, rasters)
        per_unit = [vertex_errors(neutral, rasters, sampler, d, scale) for d in deltas]
        pooled = np.concatenate([e for e, _ in per_unit]).mean() / np.concatenate([d for _, d in per_unit]).mean()
        out[resolution] = (float(pooled), float(max(e.mean() / d.mean() for e, d in per_unit)))
    print(f"synthetic template, {len(units)} units: {{resolution: (pooled, worst unit)}} = {out}")
    return out


def test_synthetic_template_round_trip_improves_with_resolution(procedural_source):
    figures = synthetic_round_trips(procedural_source, ["jawOpen", "mouthSmile_L", "browInnerUp_L", "eyeBlink_R"])
    assert figures[128][1] < 0.01 and figures[256][1] < 0.01
    assert figures[256][0] < figures[128][0]


@pytest.mark.slow
def test_every_synthetic_unit_round_trips(procedural_source):
    figures = synthetic_round_trips(procedural_source, procedural_source.units)
    # At 128^2 the template has about one texel per face vertex and the lower lip rim lies ~1 texel from
    # the upper lip in UV, so some mouth units alone exceed 1% (up to ~24%); over all units' moving
    # vertices the error stays under 1%. At 256^2 every unit is under 1%.
    assert figures[128][0] < 0.01
    assert figures[256][1] < 0.01
    assert figures[256][0] < figures[128][0]
