"""The preview renderer: rasterisation, framing, UDIM texturing, tangent-space normals, GGX, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.images import read_image
from expdiff_core.render.preview import (DEFAULT_HIDDEN_GROUPS, FRONT_CAMERA, Camera, Light, Material,
                                         frame_view, rasterize, render_preview, to_display, write_preview)

NO_AMBIENT = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
SIZE = 128


def luminance(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def sphere_mask(img: np.ndarray, background=(0.035, 0.035, 0.035)) -> np.ndarray:
    return np.any(np.abs(img - np.asarray(background, np.float32)) > 1e-6, axis=2)


# ------------------------------------------------------------------------------------------ camera/raster
def test_auto_framing_fits_and_centres_the_mesh(sphere):
    view = frame_view(Camera(yaw_deg=30, pitch_deg=10, margin=0.1), sphere.vertices, 200, 100)
    xy, depth = view.project(sphere.vertices)
    assert (depth > 0).all()
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    # inside the 10 % margins (half a pixel of slack for float rounding) ...
    assert lo[0] >= 20 - 0.5 and hi[0] <= 180 + 0.5 and lo[1] >= 10 - 0.5 and hi[1] <= 90 + 0.5
    # ... touching them on the tighter (vertical) axis, and centred to within a pixel
    assert hi[1] - lo[1] == pytest.approx(80, abs=1.0)
    assert np.allclose((lo + hi) / 2, [100, 50], atol=1.0)


def test_silhouette_area_matches_the_projected_sphere(sphere):
    view = frame_view(FRONT_CAMERA, sphere.vertices, SIZE, SIZE)
    xy, depth = view.project(sphere.vertices)
    frags = rasterize(xy, depth, sphere.triangulated().faces, SIZE, SIZE)
    distance = float(np.linalg.norm(view.eye))
    radius_px = view.focal_px * math.tan(math.asin(10.0 / distance))
    # the 64-gon silhouette is inscribed in the true circle (area ratio cos(pi/64)-ish, > 0.99) and pixel
    # sampling of a ~57 px radius disc adds well under 1 % noise
    assert (frags.triangle >= 0).sum() == pytest.approx(math.pi * radius_px**2, rel=0.02)


def test_nearer_surface_wins_whatever_the_triangle_order(make_sphere, merge_meshes):
    far = make_sphere(radius=10.0)
    near = make_sphere(radius=3.0, rings=12, segments=24, center=(0.0, 0.0, 12.0))
    materials = {"Near": Material((0.8, 0.05, 0.05)), "Far": Material((0.05, 0.05, 0.8))}
    renders = []
    for parts in ([(far, "Far"), (near, "Near")], [(near, "Near"), (far, "Far")]):
        mesh = merge_meshes(parts)
        renders.append(render_preview(mesh, width=SIZE, height=SIZE, camera=FRONT_CAMERA,
                                      group_materials=materials))
    centre = renders[0][SIZE // 2, SIZE // 2]
    assert centre[0] > 3 * centre[2]  # the small red sphere in front hides the big blue one
    edge = renders[0][SIZE // 2, 12]
    assert edge[2] > 3 * edge[0]  # outside the small sphere the blue one shows
    assert np.array_equal(renders[0], renders[1])


def test_back_faces_are_culled_so_an_inside_out_sphere_shows_its_far_inner_side(sphere):
    faces = sphere.triangulated().faces
    view = frame_view(FRONT_CAMERA, sphere.vertices, 64, 64)
    xy, depth = view.project(sphere.vertices)
    distance = float(np.linalg.norm(view.eye))
    outward = rasterize(xy, depth, faces, 64, 64)
    inward = rasterize(xy, depth, faces[:, ::-1], 64, 64)
    two_sided = rasterize(xy, depth, faces[:, ::-1], 64, 64, cull_backfaces=False)
    # depth at the centre: the near pole (distance - r) for the outward sphere, the far one when inverted;
    # 0.2 cm covers the faceting of the 64-segment sphere (r (1 - cos(pi / 64)) ~ 0.012 cm) with room
    assert outward.depth[32, 32] == pytest.approx(distance - 10.0, abs=0.2)
    assert inward.depth[32, 32] == pytest.approx(distance + 10.0, abs=0.2)
    assert two_sided.depth[32, 32] == pytest.approx(distance - 10.0, abs=0.2)


# ---------------------------------------------------------------------------------------------- textures
def test_each_udim_tile_is_sampled_from_its_own_map(sphere, constant_maps):
    maps = constant_maps(tiles=(1001,), albedo=(0.8, 0.05, 0.05))
    maps["albedo"][1002] = constant_maps(tiles=(1002,), albedo=(0.05, 0.05, 0.8))["albedo"][1002]
    img = render_preview(sphere, maps, width=SIZE, height=SIZE, camera=FRONT_CAMERA)
    left, right = img[SIZE // 2, SIZE // 4], img[SIZE // 2, 3 * SIZE // 4]
    # the sphere's -X half (image left from the front) is in UDIM 1001, its +X half in 1002
    assert left[0] > 3 * left[2] and right[2] > 3 * right[0]


def test_texture_row_zero_is_the_top_of_uv_space(sphere):
    image = np.zeros((3, 8, 8), np.float32)
    image[1, :4] = 0.8  # rows 0-3 (v > 0.5) green
    image[0, 4:] = 0.8  # rows 4-7 (v < 0.5) red
    img = render_preview(sphere, {"albedo": {1001: image, 1002: image}}, width=SIZE, height=SIZE,
                         camera=FRONT_CAMERA)
    top, bottom = img[SIZE // 4, SIZE // 2], img[3 * SIZE // 4, SIZE // 2]
    assert top[1] > 3 * top[0] and bottom[0] > 3 * bottom[1]


def test_missing_maps_fall_back_to_skin_defaults(sphere, constant_maps):
    default = render_preview(sphere, None, width=64, height=64)
    explicit = render_preview(sphere, constant_maps(albedo=(0.46, 0.36, 0.31), specular=0.04, roughness=0.5),
                              width=64, height=64)
    np.testing.assert_allclose(default, explicit, atol=1e-6)


def test_fine_texture_detail_is_prefiltered_not_aliased(sphere):
    checker = ((np.indices((1024, 1024)).sum(axis=0) % 2) * np.float32(1.0))[None].repeat(3, axis=0)
    grey = np.full((3, 4, 4), 0.5, np.float32)
    kw = dict(width=64, height=64, camera=FRONT_CAMERA, supersample=1)
    fine = render_preview(sphere, {"albedo": {1001: checker, 1002: checker}}, **kw)
    flat = render_preview(sphere, {"albedo": {1001: grey, 1002: grey}}, **kw)
    # point-sampling a 1-texel checker would give pixels anywhere between 0 and 1 x the grey result
    np.testing.assert_allclose(fine, flat, atol=2e-3)


# ---------------------------------------------------------------------------------------------- shading
def test_lambert_white_surface_facing_a_light_of_radiance_pi_is_one(sphere, constant_maps):
    maps = constant_maps(albedo=(1.0, 1.0, 1.0), specular=0.0)
    img = render_preview(sphere, maps, width=SIZE, height=SIZE, camera=FRONT_CAMERA, ambient=NO_AMBIENT,
                         lights=[Light((0.0, 0.0, 1.0), (math.pi,) * 3)])
    # albedo / pi * E * cos(theta) with theta < 1 degree at the centre pixel
    np.testing.assert_allclose(img[SIZE // 2, SIZE // 2], 1.0, rtol=0.005)


def test_ggx_peak_matches_the_closed_form(sphere, constant_maps):
    roughness = 0.5
    maps = constant_maps(albedo=(0.0, 0.0, 0.0), specular=0.04, roughness=roughness)
    img = render_preview(sphere, maps, width=SIZE, height=SIZE, camera=FRONT_CAMERA, ambient=NO_AMBIENT,
                         lights=[Light((0.0, 0.0, 1.0), (math.pi,) * 3)])
    # n = l = v: D = 1 / (pi alpha^2), visibility = 1/4, F = F0, so L = E F0 / (4 pi alpha^2), alpha = r^2;
    # 3 % covers the half-pixel offsets of the supersamples from the exact mirror point
    expected = math.pi * 0.04 / (4 * math.pi * roughness**4)
    assert img[SIZE // 2, SIZE // 2, 1] == pytest.approx(expected, rel=0.03)


def test_specular_highlight_sits_at_the_mirror_point_and_widens_with_roughness(sphere, constant_maps):
    peaks, spreads = [], []
    for roughness in (0.25, 0.6):
        maps = constant_maps(albedo=(0.0, 0.0, 0.0), roughness=roughness)
        lum = luminance(render_preview(sphere, maps, width=SIZE, height=SIZE, camera=FRONT_CAMERA,
                                       ambient=NO_AMBIENT, lights=[Light((0.0, 0.0, 1.0), (3.0,) * 3)]))
        row, col = np.unravel_index(np.argmax(lum), lum.shape)
        assert abs(row - (SIZE - 1) / 2) <= 1.5 and abs(col - (SIZE - 1) / 2) <= 1.5
        peaks.append(lum.max())
        spreads.append((lum > 0.5 * lum.max()).sum())
    assert peaks[0] > 2 * peaks[1] and spreads[1] > 2 * spreads[0]


@pytest.mark.parametrize("mirrored", [False, True], ids=["uv", "mirrored-u"])
def test_normal_map_tilts_follow_the_uv_axes(mirrored, make_sphere, constant_maps, tilted_normal_map):
    mesh = make_sphere()
    if mirrored:  # u runs toward -X: a left-handed tangent frame
        mesh.uvs = np.stack([2.0 - mesh.uvs[:, 0], mesh.uvs[:, 1]], axis=1).astype(np.float32)
    u_dir = -1.0 if mirrored else 1.0
    base = constant_maps(specular=0.0)

    def brightness(normal_map, light_dir) -> float:
        maps = dict(base, normal={1001: normal_map, 1002: normal_map}) if normal_map is not None else base
        img = render_preview(mesh, maps, width=64, height=64, camera=FRONT_CAMERA, ambient=NO_AMBIENT,
                             lights=[Light(light_dir, (3.0, 3.0, 3.0))])
        return float(luminance(img).mean())

    from_right, from_above = (1.0, 0.0, 0.6), (0.0, 1.0, 0.6)
    flat = brightness(None, from_right)
    # +U points along +X (image right) on the front of the sphere, or along -X when mirrored
    assert (brightness(tilted_normal_map(0.6, 0.0), from_right) - flat) * u_dir > 0.02
    assert (brightness(tilted_normal_map(-0.6, 0.0), from_right) - flat) * u_dir < -0.02
    flat = brightness(None, from_above)
    # +V is up (+Y) on both, so a +V tilt always brightens under a light from above
    assert brightness(tilted_normal_map(0.0, 0.6), from_above) - flat > 0.02
    assert brightness(tilted_normal_map(0.0, -0.6), from_above) - flat < -0.02


def test_flat_encoded_normal_map_changes_nothing(sphere):
    flat = np.zeros((3, 4, 4), np.float32)
    flat[:] = np.array([0.5, 0.5, 1.0], np.float32)[:, None, None]
    plain = render_preview(sphere, None, width=64, height=64)
    mapped = render_preview(sphere, {"normal": {1001: flat, 1002: flat}}, width=64, height=64)
    np.testing.assert_allclose(plain, mapped, atol=1e-5)


def test_bump_normal_map_adds_detail_but_keeps_mean_brightness(sphere, sine_bump_normal_map):
    plain = luminance(render_preview(sphere, None, width=SIZE, height=SIZE, camera=FRONT_CAMERA))
    nm = sine_bump_normal_map(256, frequency=10.0, amplitude=0.5)
    bumpy = luminance(render_preview(sphere, {"normal": {1001: nm, 1002: nm}}, width=SIZE, height=SIZE,
                                     camera=FRONT_CAMERA))
    mask = plain > 0.05
    inner = mask[:, 1:] & mask[:, :-1]  # pixel pairs both on the sphere: no silhouette steps
    detail = np.abs(np.diff(bumpy, axis=1))[inner].mean()
    smooth = np.abs(np.diff(plain, axis=1))[inner].mean()
    assert detail > 4 * smooth  # measured 5.0x
    # symmetric bumps tilt normals both ways: the average shading moves by a few percent only
    assert bumpy[mask].mean() == pytest.approx(plain[mask].mean(), rel=0.1)


# --------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("maps, problem", [
    ({"glossiness": {1001: np.zeros((1, 4, 4), np.float32)}}, "unknown map kind"),
    ({"albedo": {1001: np.zeros((1, 4, 4), np.float32)}}, "albedo map tile 1001"),
    ({"roughness": {1001: np.zeros((4, 4), np.float32)}}, "roughness map tile 1001"),
    ({"albedo": {999: np.zeros((3, 4, 4), np.float32)}}, "UDIM tile 999"),
    ({"specular": {1001: np.full((1, 4, 4), np.nan, np.float32)}}, "NaN"),
])
def test_bad_maps_are_refused_with_the_problem_named(sphere, maps, problem):
    with pytest.raises(ExpDiffInputError, match=problem):
        render_preview(sphere, maps, width=16, height=16)


def test_vertices_of_the_wrong_shape_are_refused(sphere):
    with pytest.raises(ExpDiffInputError, match="vertices shape"):
        render_preview(sphere, vertices=sphere.vertices[:-1], width=16, height=16)


# -------------------------------------------------------------------------------------------- display
def test_to_display_encodes_srgb_and_clips():
    img = np.array([[[0.0, 0.5, 1.0], [2.0, -1.0, 0.0031308]]], np.float32)
    out = to_display(img)
    assert out.dtype == np.uint8
    # sRGB(0.5) = 1.055 * 0.5 ** (1 / 2.4) - 0.055 = 0.7354 -> 188; 0.0031308 is the linear segment's end
    assert out.tolist() == [[[0, 188, 255], [255, 0, 10]]]


def test_same_inputs_give_byte_identical_png(tmp_path, sphere, sine_bump_normal_map):
    nm = sine_bump_normal_map(64)
    paths = []
    for i in range(2):
        img = render_preview(sphere, {"normal": {1001: nm, 1002: nm}}, width=96, height=96)
        paths.append(write_preview(tmp_path / f"render{i}.png", img))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    back = read_image(paths[0])
    assert back.shape == (96, 96, 3)


# ------------------------------------------------------------------------------------------ ICT-FaceKit
ICT_SIZE = 192


def test_ict_head_faces_the_camera_with_outward_winding(ict_mesh):
    tri = ict_mesh.triangulated()
    view = frame_view(FRONT_CAMERA, ict_mesh.vertices, ICT_SIZE, ICT_SIZE)
    xy, depth = view.project(ict_mesh.vertices)
    two_sided = rasterize(xy, depth, tri.faces, ICT_SIZE, ICT_SIZE, cull_backfaces=False)
    culled = rasterize(xy, depth, tri.faces, ICT_SIZE, ICT_SIZE)
    # an inside-out mesh would lose (nearly) all its pixels to culling; ICT's winding is consistent
    assert (culled.triangle >= 0).sum() == (two_sided.triangle >= 0).sum() > 0.25 * ICT_SIZE**2


def test_ict_expressions_change_the_image_where_the_face_moves(ict_mesh, ict_expressions):
    def render(name: str | None) -> np.ndarray:
        posed = ict_mesh.vertices + (ict_expressions[name] if name else 0)
        return luminance(render_preview(ict_mesh, vertices=posed, width=ICT_SIZE, height=ICT_SIZE,
                                        camera=FRONT_CAMERA))

    neutral = render(None)
    smile = np.abs(render("mouthSmile_L") - neutral)
    # the subject's left is +X, which a front camera shows on the image's right
    assert smile[:, ICT_SIZE // 2:].sum() > 3 * smile[:, :ICT_SIZE // 2].sum()
    rows = np.arange(ICT_SIZE)[:, None]
    jaw = np.abs(render("jawOpen") - neutral)
    brow = np.abs(render("browInnerUp_L") - neutral)
    jaw_row = (jaw * rows).sum() / jaw.sum()
    brow_row = (brow * rows).sum() / brow.sum()
    assert jaw_row > brow_row + 0.15 * ICT_SIZE


def test_ict_default_hides_the_eye_shells_and_lashes(ict_mesh):
    kw = dict(width=ICT_SIZE, height=ICT_SIZE, camera=Camera(yaw_deg=0, pitch_deg=0, target=(3.0, 3.5, 9.0),
                                                             distance=30.0))
    shown = render_preview(ict_mesh, hide_groups=(), **kw)
    hidden = render_preview(ict_mesh, **kw)
    assert set(DEFAULT_HIDDEN_GROUPS) <= set(ict_mesh.group_names)
    # lashes and the occlusion shell cover part of this close-up of the left eye
    changed = np.abs(shown - hidden).max(axis=2) > 0.02
    assert changed.mean() > 0.01


def test_ict_render_is_deterministic(tmp_path, ict_mesh, ict_expressions):
    posed = ict_mesh.vertices + ict_expressions["jawOpen"]
    a = write_preview(tmp_path / "a.png", render_preview(ict_mesh, vertices=posed, width=128, height=128))
    b = write_preview(tmp_path / "b.png", render_preview(ict_mesh, vertices=posed, width=128, height=128))
    assert a.read_bytes() == b.read_bytes()
