"""Strain -> BRDF: the strain math on known deformations, and maps whose detail follows the geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.mesh import FaceMesh
from expdiff_core.synth.skin import (
    MAP_KINDS,
    SkinParams,
    SkinRegions,
    SkinSynthesizer,
    build_skin_tile,
    metric_tensors,
    normal_detail_energy,
    principal_stretches,
    triangle_strain,
    uv_jacobians,
)
from expdiff_core.uv.raster import uv_raster

ICT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ict-facekit"


def flat_sheet(n: int = 25, size_cm: float = 12.0) -> FaceMesh:
    """An n x n vertex flat quad sheet in the XY plane (cm), UVs = XY / size inset 5% in tile 1001."""
    t = np.linspace(0.0, 1.0, n)
    uu, vv = np.meshgrid(t, t)
    uvs = np.stack([0.05 + 0.9 * uu.ravel(), 0.05 + 0.9 * vv.ravel()], axis=1)
    vertices = np.concatenate([uvs * size_cm / 0.9, np.zeros((n * n, 1))], axis=1)
    vid = np.arange(n * n).reshape(n, n)
    quads = np.stack([vid[:-1, :-1], vid[:-1, 1:], vid[1:, 1:], vid[1:, :-1]], axis=-1).reshape(-1)
    faces = (n - 1) ** 2
    return FaceMesh(vertices, np.full(faces, 4), quads, uvs, quads, np.zeros(faces), ["skin"], "cm", "sheet")


def squeezed(mesh: FaceMesh, sx: float, sy: float) -> np.ndarray:
    """Vertices scaled about the sheet centre by sx along X (= U) and sy along Y (= V)."""
    centre = mesh.vertices.mean(0)
    return ((mesh.vertices - centre) * np.array([sx, sy, 1.0]) + centre).astype(np.float32)


@pytest.fixture(scope="module")
def sheet_synth():
    mesh = flat_sheet()
    rasters = uv_raster(mesh, 128)
    return mesh, rasters, SkinSynthesizer(mesh, rasters, SkinParams(), seed=5)


# ----------------------------------------------------------------------------------- strain math
def test_jacobian_of_an_affine_map_is_its_linear_part():
    rng = np.random.default_rng(0)
    uvs = rng.random((3, 2))
    linear = rng.standard_normal((3, 2))
    vertices = uvs @ linear.T + np.array([1.0, 2.0, 3.0])
    jac = uv_jacobians(vertices, uvs, np.array([[0, 1, 2]]), np.array([[0, 1, 2]]))
    np.testing.assert_allclose(jac[0], linear, atol=1e-9)  # exact up to float64 round-off


def test_zero_area_uv_triangle_gets_a_zero_jacobian():
    uvs = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    jac = uv_jacobians(np.eye(3), uvs, np.array([[0, 1, 2]]), np.array([[0, 1, 2]]))
    assert np.all(jac == 0)


def test_rigid_motion_is_no_strain():
    mesh = flat_sheet(5)
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    strain = triangle_strain(mesh, mesh.vertices @ rot.T + 3.0)
    np.testing.assert_allclose(strain.stretch_min, 1.0, atol=1e-5)  # float32 output
    np.testing.assert_allclose(strain.stretch_max, 1.0, atol=1e-5)


def test_uniform_scale_gives_equal_stretches():
    mesh = flat_sheet(5)
    strain = triangle_strain(mesh, mesh.vertices * 1.3)
    np.testing.assert_allclose(strain.stretch_min, 1.3, atol=1e-5)
    np.testing.assert_allclose(strain.stretch_max, 1.3, atol=1e-5)
    np.testing.assert_allclose(strain.area_ratio, 1.69, atol=1e-4)


@pytest.mark.parametrize("sx,sy,axis", [(0.7, 1.1, 0), (1.2, 0.6, 1)])
def test_compression_direction_is_the_squeezed_uv_axis(sx, sy, axis):
    mesh = flat_sheet(5)
    strain = triangle_strain(mesh, squeezed(mesh, sx, sy))
    np.testing.assert_allclose(strain.stretch_min, min(sx, sy), atol=1e-5)
    np.testing.assert_allclose(strain.stretch_max, max(sx, sy), atol=1e-5)
    np.testing.assert_allclose(np.abs(strain.direction[:, axis]), 1.0, atol=1e-5)
    np.testing.assert_allclose(strain.compression, 1.0 - min(sx, sy), atol=1e-5)


def test_stretches_follow_the_surface_not_the_uv_layout():
    """The same squeeze measured against an anisotropic UV layout (u scaled 3x) gives the same stretches."""
    mesh = flat_sheet(5)
    strain_a = triangle_strain(mesh, squeezed(mesh, 0.8, 1.0))
    warped = FaceMesh(mesh.vertices, mesh.face_vertex_counts, mesh.face_vertex_indices,
                      mesh.uvs * np.array([0.3, 1.0]), mesh.face_uv_indices, mesh.face_groups, mesh.group_names)
    strain_b = triangle_strain(warped, squeezed(mesh, 0.8, 1.0))
    np.testing.assert_allclose(strain_b.stretch_min, strain_a.stretch_min, atol=1e-5)
    np.testing.assert_allclose(strain_b.stretch_max, strain_a.stretch_max, atol=1e-5)


def test_principal_stretches_match_a_generic_eigensolver():
    rng = np.random.default_rng(3)
    j0, j1 = rng.standard_normal((2, 200, 3, 2))
    g0, g1 = metric_tensors(j0), metric_tensors(j1)
    strain = principal_stretches(g0, g1)
    full = lambda g: np.stack([np.stack([g[:, 0], g[:, 1]], -1), np.stack([g[:, 1], g[:, 2]], -1)], 1)  # noqa: E731
    eig = np.sort(np.linalg.eigvals(np.linalg.solve(full(g0), full(g1))).real, axis=1)
    np.testing.assert_allclose(strain.stretch_min ** 2, eig[:, 0], rtol=1e-4)  # float32 results
    np.testing.assert_allclose(strain.stretch_max ** 2, eig[:, 1], rtol=1e-4)
    d = strain.direction.astype(np.float64)
    residual = np.einsum("kij,kj->ki", full(g1) - eig[:, :1, None] * full(g0), d)
    assert np.abs(residual).max() < 1e-3 * np.abs(full(g1)).max()


# ----------------------------------------------------------------------------------- per-texel maps
def test_texel_strain_of_a_uniform_squeeze_is_uniform(sheet_synth):
    mesh, rasters, synth = sheet_synth
    strain = synth.strain(squeezed(mesh, 0.75, 1.0))[1001]
    inside = rasters[1001].mask
    np.testing.assert_allclose(strain.compression[inside], 0.25, atol=1e-4)
    np.testing.assert_allclose(np.abs(strain.direction[inside][:, 0]), 1.0, atol=1e-4)


def test_maps_have_the_documented_shapes_and_ranges(sheet_synth):
    mesh, _, synth = sheet_synth
    for maps in (synth.maps(), synth.maps(squeezed(mesh, 0.7, 1.0))):
        assert sorted(maps) == sorted(MAP_KINDS)
        for kind, channels in (("albedo", 3), ("specular", 1), ("roughness", 1), ("normal", 3)):
            image = maps[kind][1001]
            assert image.shape == (channels, 128, 128) and image.dtype == np.float32
            assert image.min() >= 0.0 and image.max() <= 1.0
        n = 2.0 * maps["normal"][1001] - 1.0
        np.testing.assert_allclose(np.linalg.norm(n, axis=0), 1.0, atol=1e-5)
        assert (n[2] > 0).all()  # every normal points out of the surface


@pytest.mark.parametrize("sx,sy,across,along", [(0.7, 1.0, 0, 1), (1.0, 0.7, 1, 0)])
def test_folds_run_across_the_compression(sheet_synth, sx, sy, across, along):
    """Squeezing along U folds the skin into ridges running along V: the normal tilts along U (X) only."""
    mesh, rasters, synth = sheet_synth
    neutral = 2.0 * synth.maps()["normal"][1001] - 1.0
    folded = 2.0 * synth.maps(squeezed(mesh, sx, sy))["normal"][1001] - 1.0
    inside = rasters[1001].mask
    added = (folded - neutral)[:2, inside]
    # Orientation-blind detail would give a ratio near 1; folds meander (phase jitter tilts them up to
    # ~25 degrees) and fine lines deepen isotropically, so the measured ratio is ~3.4, not infinite.
    assert np.abs(added[across]).mean() > 2.5 * np.abs(added[along]).mean()


def test_compression_pools_blood_and_stretch_blanches(sheet_synth):
    mesh, rasters, synth = sheet_synth
    inside = rasters[1001].mask
    redness = lambda a: (a[0] / a[1])[inside].mean()  # noqa: E731 - red over green
    lightness = lambda a: a.mean(0)[inside].mean()  # noqa: E731
    neutral = synth.maps()["albedo"][1001]
    compressed = synth.maps(squeezed(mesh, 0.7, 0.9))["albedo"][1001]
    stretched = synth.maps(squeezed(mesh, 1.25, 1.2))["albedo"][1001]
    assert redness(compressed) > 1.05 * redness(neutral)  # 5%: well above the half-float noise of a file
    assert redness(stretched) < 0.97 * redness(neutral)
    assert lightness(stretched) > lightness(neutral)


def test_stretch_flattens_pores(sheet_synth):
    mesh, rasters, synth = sheet_synth
    inside = rasters[1001].mask
    neutral = normal_detail_energy(synth.maps()["normal"][1001])[inside].mean()
    stretched = normal_detail_energy(synth.maps(squeezed(mesh, 1.3, 1.3))["normal"][1001])[inside].mean()
    assert stretched < 0.6 * neutral  # pores lose 70% of their depth at this stretch; lines 40%


def test_same_seed_same_maps_other_seed_other_maps(sheet_synth):
    mesh, rasters, synth = sheet_synth
    again = SkinSynthesizer(mesh, rasters, SkinParams(), seed=5)
    other = SkinSynthesizer(mesh, rasters, SkinParams(), seed=6)
    verts = squeezed(mesh, 0.8, 1.0)
    a, b, c = synth.maps(verts), again.maps(verts), other.maps(verts)
    for kind in MAP_KINDS:
        assert np.array_equal(a[kind][1001], b[kind][1001])
    assert not np.array_equal(a["normal"][1001], c["normal"][1001])


def test_skin_tone_follows_melanin(sheet_synth):
    mesh, rasters, _ = sheet_synth
    fair = SkinSynthesizer(mesh, rasters, SkinParams(melanin=0.1), seed=1).maps()["albedo"][1001]
    dark = SkinSynthesizer(mesh, rasters, SkinParams(melanin=0.9), seed=1).maps()["albedo"][1001]
    assert dark.mean() < 0.4 * fair.mean()


def test_lips_are_redder_and_brows_darker_than_skin():
    mesh = flat_sheet()
    rasters = uv_raster(mesh, 128)
    regions = SkinRegions(lip_outline=np.array([[0.4, 0.2], [0.6, 0.2], [0.6, 0.3], [0.4, 0.3]]),
                          brow_lines=(np.array([[0.3, 0.8], [0.45, 0.82]]),), freckle_centres=np.zeros((0, 2)))
    albedo = SkinSynthesizer(mesh, rasters, SkinParams(freckles=0.0), seed=2, regions=regions).maps()["albedo"][1001]
    row = lambda v: int((1 - v) * 128)  # noqa: E731
    col = lambda u: int(u * 128)  # noqa: E731
    lip = albedo[:, row(0.25), col(0.5)]
    brow = albedo[:, row(0.81), col(0.37)]
    skin = albedo[:, row(0.5), col(0.5)]
    assert lip[0] / lip[1] > 1.3 * skin[0] / skin[1]
    assert brow.mean() < 0.5 * skin.mean()


@pytest.mark.parametrize("resolution", [32, 8192])
def test_resolution_outside_64_to_4096_is_refused(resolution):
    with pytest.raises(ExpDiffInputError, match="outside 64..4096"):
        build_skin_tile(SkinParams(), 0, 1001, resolution, 30.0, np.zeros((resolution, resolution, 3)))


def test_lowest_resolution_still_has_folds():
    mesh = flat_sheet()
    rasters = uv_raster(mesh, 64)
    synth = SkinSynthesizer(mesh, rasters, SkinParams(), seed=0)
    inside = rasters[1001].mask
    e0 = normal_detail_energy(synth.maps()["normal"][1001])[inside].mean()
    e1 = normal_detail_energy(synth.maps(squeezed(mesh, 0.7, 1.0))["normal"][1001])[inside].mean()
    assert e1 > 2.0 * e0


# ----------------------------------------------------------------------------------- real face
@pytest.fixture(scope="module")
def ict_synth():
    if not (ICT_DIR / "generic_neutral_mesh.obj").is_file():
        pytest.skip(f"ICT-FaceKit data not found at {ICT_DIR}")
    from expdiff_core.synth.ict import ICT_SKIN_GROUPS, ict_skin_regions, load_ict_facekit

    kit = load_ict_facekit(ICT_DIR)
    rasters = uv_raster(kit.mesh, 128, groups=ICT_SKIN_GROUPS)
    return kit, rasters, SkinSynthesizer(kit.mesh, rasters, SkinParams(), seed=0, regions=ict_skin_regions(kit))


def test_wrinkles_follow_geometry_for_every_ict_unit(ict_synth, capsys):
    """Per unit: correlation over skin texels between compression and the rise of normal-map detail."""
    from expdiff_core.synth.ict import expression_vertices

    kit, rasters, synth = ict_synth
    neutral = {u: normal_detail_energy(m) for u, m in synth.maps()["normal"].items()}
    correlations = {}
    for unit in kit.units:
        vertices = expression_vertices(kit, kit.mesh.vertices, unit)
        strain, maps = synth.strain(vertices), synth.maps(vertices)
        c = np.concatenate([strain[u].compression[r.mask] for u, r in rasters.items()])
        d = np.concatenate([(normal_detail_energy(maps["normal"][u]) - neutral[u])[r.mask]
                            for u, r in rasters.items()])
        correlations[unit] = float(np.corrcoef(c, d)[0, 1])
    with capsys.disabled():
        print("\ncompression vs normal-detail change, per ICT unit (128^2):")
        for unit, value in correlations.items():
            print(f"  {unit:<18}{value:+.3f}")
    assert all(v > 0 for v in correlations.values()), {u: v for u, v in correlations.items() if v <= 0}
