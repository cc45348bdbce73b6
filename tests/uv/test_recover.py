"""Directional mesh recovery (Eq. 9): identity, reproduction, topology kept, unsampled parts follow skin."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.uv import PositionMapConfig, follow_nearest, position_maps, recover_mesh, uv_raster


def same_topology(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in
               ("face_vertex_counts", "face_vertex_indices", "uvs", "face_uv_indices", "face_groups")) \
        and a.group_names == b.group_names and a.units == b.units


def test_equal_maps_return_the_neutral_bitwise(sheet):
    rasters = uv_raster(sheet, 32, groups=("skin",))
    wobble = np.random.default_rng(1).normal(scale=0.3, size=sheet.vertices.shape).astype(np.float32)
    maps = position_maps(sheet.vertices + wobble, sheet.vertices, rasters, scale=2.0)
    recovered = recover_mesh(sheet, maps, {u: m.copy() for u, m in maps.items()}, rasters, scale=2.0)
    assert np.array_equal(recovered.vertices, sheet.vertices)
    assert same_topology(recovered, sheet)


def test_unsampled_parts_follow_a_uniform_skin_motion_exactly(sheet):
    # The eye patch is not rasterised; when all skin moves by t, inverse-distance weights (summing to 1)
    # move it by t too. 1e-4 cm: least-squares sampling of a constant map in float32.
    rasters = uv_raster(sheet, 32, groups=("skin",))
    t = np.float32([0.2, -0.4, 0.1])
    neutral_maps = position_maps(sheet.vertices, sheet.vertices, rasters, 2.0)
    moved_maps = position_maps(sheet.vertices + t, sheet.vertices, rasters, 2.0)
    recovered = recover_mesh(sheet, moved_maps, neutral_maps, rasters, 2.0)
    np.testing.assert_allclose(recovered.vertices - sheet.vertices, np.broadcast_to(t, sheet.vertices.shape),
                               atol=1e-4)
    static = recover_mesh(sheet, moved_maps, neutral_maps, rasters, 2.0, static_groups=("eye",))
    assert np.array_equal(static.vertices[-9:], sheet.vertices[-9:])


def test_follow_nearest_is_exact_on_coinciding_sources():
    rest = np.float32([[0, 0, 0], [1, 0, 0], [1, 0, 0], [0.5, 0, 0]])
    displacement = np.float32([[1, 0, 0], [3, 0, 0], [0, 0, 0], [0, 0, 0]])
    moved = follow_nearest(displacement, np.array([0, 1]), np.array([2, 3]), rest, k=2)
    np.testing.assert_allclose(moved, [[3, 0, 0], [2, 0, 0]], atol=1e-6)  # coincident; halfway
    with pytest.raises(ExpDiffInputError, match="no source"):
        follow_nearest(displacement, np.array([], int), np.array([2]), rest)


def test_missing_tiles_are_refused(sheet):
    rasters = uv_raster(sheet, 32, groups=("skin",))
    maps = position_maps(sheet.vertices, sheet.vertices, rasters, 2.0)
    with pytest.raises(ExpDiffInputError, match="1002"):
        recover_mesh(sheet, {1001: maps[1001]}, maps, rasters, 2.0)


def test_ict_identity_with_equal_generated_maps_is_bitwise(ict_data, ict_rasters_512, ict_sampler_512):
    mesh = ict_data[0]
    maps = position_maps(mesh.vertices, mesh.vertices, ict_rasters_512, PositionMapConfig().scale_in("cm"))
    recovered = recover_mesh(mesh, maps, maps, ict_rasters_512, PositionMapConfig().scale_in("cm"),
                             sampler=ict_sampler_512)
    assert np.array_equal(recovered.vertices, mesh.vertices) and same_topology(recovered, mesh)


@pytest.mark.parametrize("name", ["jawOpen", "eyeBlink_R"])
def test_ict_expression_is_reproduced_on_another_identity(name, ict_data, ict_rasters_512, ict_sampler_512):
    # Maps made on the template (the "model's" identity), applied to a different user's neutral: the
    # identity difference cancels in P_n - P_neutral, so the user gets their neutral + the expression.
    mesh, names, expressions, identities = ict_data
    scale = PositionMapConfig().scale_in(mesh.units)
    delta = expressions[names.index(name)]
    identity = np.tensordot(np.random.default_rng(7).normal(size=len(identities)), identities, axes=1)
    user = mesh.with_vertices(mesh.vertices + identity.astype(np.float32), name="user")
    sampler = ict_sampler_512
    P_neutral = position_maps(mesh.vertices, mesh.vertices, ict_rasters_512, scale)
    P_n = position_maps(mesh.vertices + delta, mesh.vertices, ict_rasters_512, scale)
    recovered = recover_mesh(user, P_n, P_neutral, ict_rasters_512, scale, sampler=sampler, name=name)
    assert same_topology(recovered, user) and recovered.name == name
    error = np.linalg.norm(recovered.vertices - (user.vertices + delta), axis=1)
    skin = sampler.covered
    moving = skin & (np.linalg.norm(delta, axis=1) > 1e-3)
    # Within the raster round-trip budget (1% of the mean displacement) on the skin.
    assert error[moving].mean() < 0.01 * np.linalg.norm(delta, axis=1)[moving].mean()
    # Off the skin, following it must beat leaving the parts behind, where they move at all (lashes in a
    # blink, teeth and tongue when the jaw opens).
    lid_or_mouth = ~skin & (np.linalg.norm(delta, axis=1) > 0.05)
    assert error[lid_or_mouth].mean() < np.linalg.norm(delta, axis=1)[lid_or_mouth].mean()
