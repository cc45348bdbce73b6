"""UV rasteriser: texel convention, exact interpolation, no cracks, dilation, groups, disk cache, sampling back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.mesh import FaceMesh
from expdiff_core.uv import (VertexSampler, bilinear_sample, rasterize_attribute, rasterize_triangle_attribute,
                             sample_attribute, uv_raster)
from expdiff_core.uv.raster import build_uv_raster

ICT_SKIN = ("M_Face", "M_BackHead")


def one_triangle(corner_uvs) -> FaceMesh:
    return FaceMesh(np.eye(3), [3], [0, 1, 2], np.asarray(corner_uvs), [0, 1, 2], [0], ["skin"])


def full_square(n: int = 5) -> FaceMesh:
    """n x n vertex quad grid whose UVs cover tile 1001 exactly; the vertex's own UV is its position."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    vid = np.arange(n * n).reshape(n, n)
    quads = np.stack([vid[:-1, :-1], vid[:-1, 1:], vid[1:, 1:], vid[1:, :-1]], axis=-1).reshape(-1)
    return FaceMesh(np.concatenate([uv, np.zeros((n * n, 1))], axis=1), np.full((n - 1) ** 2, 4), quads, uv, quads,
                    np.zeros((n - 1) ** 2), ["skin"])


def test_row_zero_is_the_top_of_the_tile():
    # A triangle in the top-left corner of UV space (v near 1) lands in the first image rows.
    raster = uv_raster(one_triangle([(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)]), 16)[1001]
    assert raster.mask[0, 0] and not raster.mask[15, 0] and not raster.mask[0, 15]
    assert raster.resolution == (16, 16) and raster.face_index.dtype == np.int32


def test_linear_attribute_is_reproduced_at_texel_centres():
    # A linear function of UV is interpolated exactly by barycentric weights: the map of "vertex UV" must
    # equal each texel centre's UV ((x + 0.5) / W, 1 - (y + 0.5) / H). 1e-6: float32 rounding of values < 1.
    mesh = full_square(5)
    raster = uv_raster(mesh, (24, 32))[1001]
    uv_map = rasterize_attribute(raster, mesh.uvs)
    ys, xs = np.mgrid[0:24, 0:32]
    assert np.abs(uv_map[0] - (xs + 0.5) / 32).max() < 1e-6
    assert np.abs(uv_map[1] - (1 - (ys + 0.5) / 24)).max() < 1e-6


def test_an_island_covering_the_tile_leaves_no_cracks():
    # Texel centres on shared edges and quad diagonals belong to some triangle: every texel is inside.
    raster = uv_raster(full_square(9), 64)[1001]
    assert raster.mask.all()


def test_dilation_copies_the_nearest_inside_texel(sheet):
    raster = uv_raster(sheet, 64, groups=("skin",))[1001]
    values = rasterize_attribute(raster, sheet.vertices)
    inside = raster.mask
    assert not inside.all() and raster.filled.all()  # default: fill the whole tile
    # Row 32, column 0 lies in the 5% left margin; its nearest inside texel is in the same row.
    first_inside = int(np.flatnonzero(inside[32])[0])
    assert first_inside > 0
    np.testing.assert_array_equal(values[:, 32, 0], values[:, 32, first_inside])


def test_bounded_dilation_leaves_far_texels_empty():
    raster = uv_raster(one_triangle([(0.0, 1.0), (0.0, 0.9), (0.1, 1.0)]), 256, dilation=16)[1001]
    values = rasterize_attribute(raster, np.ones((3, 1), np.float32))
    assert values[0, 0, 40] == 1.0  # 16 texels right of the island's edge at row 0 (edge at x ~ 25)
    assert values[0, 255, 255] == 0.0
    with pytest.raises(ExpDiffInputError, match="16 px"):
        uv_raster(one_triangle([(0.0, 1.0), (0.0, 0.9), (0.1, 1.0)]), 64, dilation=8)


def test_groups_select_the_rasterised_faces(sheet):
    eye_triangles = np.flatnonzero(sheet.face_groups[sheet.triangulated().source_face] == 1)
    skin_only = uv_raster(sheet, 64, groups=("skin",))
    with pytest.warns(UserWarning, match="overlap"):
        everything = uv_raster(sheet, 64)
    assert not np.isin(skin_only[1001].face_index, eye_triangles).any()
    assert np.isin(everything[1001].face_index, eye_triangles).any()
    assert sorted(skin_only) == [1001, 1002]
    with pytest.raises(ExpDiffInputError, match="M_Nose"):
        uv_raster(sheet, 64, groups=("M_Nose",))


def test_overlapping_uv_islands_are_reported(sheet):
    # The eye patch lies over the sheet on tile 1001 (0.04 of the tile), the skin islands overlap nothing.
    with pytest.warns(UserWarning, match="overlap on tile 1001"):
        uv_raster(sheet, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uv_raster(sheet, 64, groups=("skin",))


def test_uvs_outside_udim_tiles_are_refused():
    with pytest.raises(ExpDiffInputError, match="outside UDIM tiles"):
        uv_raster(one_triangle([(-0.5, 0.2), (-0.4, 0.2), (-0.5, 0.3)]), 16)


def test_triangle_attribute_is_constant_per_triangle(sheet):
    raster = uv_raster(sheet, 64, groups=("skin",))[1002]
    per_triangle = np.arange(len(raster.triangles), dtype=np.float32)
    value = rasterize_triangle_attribute(raster, per_triangle)[0]
    inside = raster.mask
    np.testing.assert_array_equal(value[inside], raster.face_index[inside].astype(np.float32))


def test_cache_is_safetensors_keyed_by_topology_groups_and_resolution(sheet, tmp_path):
    first = uv_raster(sheet, 32, groups=("skin",), cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    tensors = load_file(str(files[0]))
    np.testing.assert_array_equal(tensors["1001.face_index"], first[1001].face_index)
    again = uv_raster(sheet, 32, groups=("skin",), cache_dir=tmp_path)
    np.testing.assert_array_equal(again[1002].barycentric, first[1002].barycentric)
    uv_raster(sheet, 48, groups=("skin",), cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="overlap"):  # the eye patch lies over the sheet
        uv_raster(sheet, 32, groups=("skin", "eye"), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_a_damaged_cache_file_is_rebuilt(sheet, tmp_path):
    reference = uv_raster(sheet, 32, groups=("skin",), cache_dir=tmp_path)
    path = next(tmp_path.glob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    rebuilt = uv_raster(sheet, 32, groups=("skin",), cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt[1001].face_index, reference[1001].face_index)
    assert load_file(str(path))["1001.face_index"].shape == (32, 32)


def test_bilinear_sample_uses_texel_centres():
    ys, xs = np.mgrid[0:8, 0:8].astype(np.float32)
    image = np.stack([xs, ys])  # texel (y, x) holds (x, y)
    # u = (x + 0.5) / 8 at x = 2.25 and v = 1 - (y + 0.5) / 8 at y = 5.5; bilinear reproduces linear ramps.
    sample = bilinear_sample(image, np.array([[2.75 / 8, 1 - 6.0 / 8]]))
    np.testing.assert_allclose(sample[0], [2.25, 5.5], atol=1e-6)


def test_sampling_back_inverts_rasterising_across_a_uv_seam(sheet):
    rasters = uv_raster(sheet, 48, groups=("skin",))
    values = np.random.default_rng(0).normal(size=(sheet.n_vertices, 2)).astype(np.float32)
    maps = {u: rasterize_attribute(r, values) for u, r in rasters.items()}
    sampled, covered = sample_attribute(maps, sheet, rasters)
    assert covered[:-9].all() and not covered[-9:].any()  # the detached eye patch was not rasterised
    assert (sampled[-9:] == 0).all()
    # Random (non-smooth) values are the hardest case; the small pull towards the local mean (lam = 1e-3)
    # costs well under 1% of their unit spread.
    assert np.abs(sampled[:-9] - values[:-9]).mean() < 0.01


def test_sampler_refuses_maps_of_another_resolution(sheet):
    rasters = uv_raster(sheet, 32, groups=("skin",))
    with pytest.raises(ExpDiffInputError, match="1001"):
        VertexSampler(sheet, rasters).sample({1001: np.zeros((3, 16, 16)), 1002: np.zeros((3, 32, 32))})


def test_least_squares_beats_bilinear_on_thin_eyelid_islands(ict_data, ict_rasters_512, ict_sampler_512):
    # The reason for the least-squares sampler: eyelid islands are a few texels wide at 512^2.
    mesh, names, expressions, _ = ict_data
    delta = expressions[names.index("eyeBlink_R")]
    sampler = ict_sampler_512
    maps = {u: rasterize_attribute(r, delta) for u, r in ict_rasters_512.items()}
    moving = sampler.covered & (np.linalg.norm(delta, axis=1) > 1e-3)
    least_squares = np.linalg.norm(sampler.sample(maps)[0] - delta, axis=1)[moving].mean()
    bilinear = np.linalg.norm(sampler.sample_bilinear(maps) - delta, axis=1)[moving].mean()
    assert least_squares < bilinear / 5


@pytest.mark.slow
def test_ict_at_4096_has_the_skin_coverage_of_512(ict_data, ict_rasters_512):
    # ~15 s on 2 cores. Coverage fractions agree to the texels along island borders (< 1% at 512^2).
    rasters = build_uv_raster(ict_data[0], 4096, groups=ICT_SKIN)
    assert sorted(rasters) == sorted(ict_rasters_512)
    for udim, raster in rasters.items():
        assert abs(raster.mask.mean() - ict_rasters_512[udim].mask.mean()) < 0.01
