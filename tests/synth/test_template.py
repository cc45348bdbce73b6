"""The procedural template head: size, orientation, openings, UV layout, regions and symmetry."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from expdiff_core.synth import template as T


@pytest.fixture(scope="module")
def layout():
    return T.template()


@pytest.fixture(scope="module")
def mesh(layout):
    return layout.mesh


def boundary_loops(mesh) -> list[list[int]]:
    """Vertex loops along edges used by exactly one polygon."""
    offsets = mesh.face_offsets
    counts = Counter()
    for f in range(mesh.n_faces):
        o, n = int(offsets[f]), int(mesh.face_vertex_counts[f])
        ids = mesh.face_vertex_indices[o:o + n]
        for k in range(n):
            counts[tuple(sorted((int(ids[k]), int(ids[(k + 1) % n]))))] += 1
    nxt: dict[int, list[int]] = {}
    for (i, j), c in counts.items():
        if c == 1:
            nxt.setdefault(i, []).append(j)
            nxt.setdefault(j, []).append(i)
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            step = [n for n in nxt[cur] if n != prev]
            prev, cur = cur, step[0]
            if cur == start:
                break
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def uv_triangles(mesh, group: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, 2) UV and (T, 3, 3) positions of the triangles of one material group."""
    tri = mesh.triangulated()
    keep = mesh.group_face_mask([group])[tri.source_face]
    return mesh.uvs[tri.uv_faces[keep]].astype(np.float64), mesh.vertices[tri.faces[keep]].astype(np.float64)


def test_skin_has_between_5000_and_12000_vertices(mesh):
    assert 5000 <= mesh.n_vertices <= 12000
    assert set(np.unique(mesh.face_vertex_counts)) <= {3, 4}


def test_head_is_about_15_cm_wide_y_up_and_looks_down_plus_z(mesh, layout):
    v = mesh.vertices
    lm = layout.landmarks
    above_ears = v[(v[:, 1] > 4.5) & (v[:, 1] < 6.0)]
    assert 14.5 <= np.ptp(above_ears[:, 0]) <= 16.5  # maximum head breadth of adults: ~14-16.5 cm
    assert 18.0 <= np.ptp(above_ears[:, 2]) <= 21.0  # head length: ~18-21 cm
    assert v[lm["crown"], 1] > v[lm["nasion"], 1] > v[lm["nose_tip"], 1] > v[lm["chin"], 1] > v[lm["menton"], 1]
    assert int(np.argmax(v[:, 2])) == lm["nose_tip"]
    assert mesh.units == "cm"


def test_the_character_left_is_plus_x(mesh, layout):
    lm = layout.landmarks
    for name in ("mouth_corner", "eye_inner_corner", "eye_outer_corner", "jaw_angle"):
        assert mesh.vertices[lm[f"{name}_L"], 0] > 0 > mesh.vertices[lm[f"{name}_R"], 0]


def test_openings_are_two_eyes_a_mouth_and_the_neck(mesh, layout):
    loops = boundary_loops(mesh)
    assert len(loops) == 4
    rims = {name: set(slit.rim.tolist()) for name, slit in layout.slits.items()}
    matched = {name for name, rim in rims.items() for loop in loops if set(loop) == rim}
    assert matched == {"eye_L", "eye_R", "mouth"}
    neck = max(loops, key=len)
    assert np.allclose(mesh.vertices[neck, 1], T.NECK_BOTTOM_Y)


def test_eyes_and_mouth_are_open_slits_with_realistic_size(mesh, layout):
    v = mesh.vertices
    lm = layout.landmarks
    fissure = np.linalg.norm(v[lm["eye_outer_corner_L"]] - v[lm["eye_inner_corner_L"]])
    assert 2.4 <= fissure <= 3.4  # palpebral fissure of adults ~2.8-3.2 cm
    assert 0.6 <= v[lm["upper_lid_L"], 1] - v[lm["lower_lid_L"], 1] <= 1.2  # eye open ~0.8-1.1 cm
    width = np.linalg.norm(v[lm["mouth_corner_L"]] - v[lm["mouth_corner_R"]])
    assert 4.2 <= width <= 5.6  # mouth width ~4.5-5.5 cm
    mouth = layout.slits["mouth"]
    gap = v[mouth.upper] - v[mouth.lower]
    assert (np.linalg.norm(gap, axis=1) > 0).all() and (np.linalg.norm(gap, axis=1) < 0.2).all()


def test_material_groups_and_udim_tiles(mesh):
    assert mesh.group_names == ["M_Face", "M_BackHead"]
    face_uv, _ = uv_triangles(mesh, "M_Face")
    back_uv, _ = uv_triangles(mesh, "M_BackHead")
    assert face_uv.min() >= 0.0 and face_uv.max() <= 1.0  # UDIM 1001
    assert back_uv[..., 0].min() >= 1.0 and back_uv[..., 0].max() <= 2.0  # UDIM 1002
    assert back_uv[..., 1].min() >= 0.0 and back_uv[..., 1].max() <= 1.0


def test_face_island_holds_the_face_and_back_island_the_rest(mesh, layout):
    face_vertices = set(mesh.face_vertex_indices[np.repeat(mesh.group_face_mask(["M_Face"]),
                                                           mesh.face_vertex_counts)].tolist())
    for name in ("nose_tip", "chin", "mouth_corner_L", "eye_outer_corner_R", "nasion"):
        assert layout.landmarks[name] in face_vertices
    assert layout.landmarks["crown"] not in face_vertices


@pytest.mark.parametrize("group", ["M_Face", "M_BackHead"])
def test_uv_islands_do_not_flip_or_overlap(mesh, group):
    uv, _ = uv_triangles(mesh, group)
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    signed = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    assert (signed > 0).all()
    # Rasterise texel centres: with no overlap, no texel lies inside two triangles.
    res = 512
    uv = uv - np.floor(uv[..., :1].min()) * np.array([1.0, 0.0])
    lo = np.clip(np.floor(uv.min(axis=1) * res - 0.5).astype(int), 0, res - 1)
    hi = np.clip(np.ceil(uv.max(axis=1) * res - 0.5).astype(int), 0, res - 1)
    size = hi - lo + 1
    n_pairs = size[:, 0] * size[:, 1]
    tri = np.repeat(np.arange(len(uv)), n_pairs)  # every (triangle, texel in its box) pair
    k = np.arange(n_pairs.sum()) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    tx = lo[tri, 0] + k % size[tri, 0]
    ty = lo[tri, 1] + k // size[tri, 0]
    px, py = (tx + 0.5) / res, (ty + 0.5) / res
    a, b, c = uv[tri, 0], uv[tri, 1], uv[tri, 2]
    d = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    l1 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / d
    l2 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / d
    inside = (l1 > 1e-9) & (l2 > 1e-9) & (1 - l1 - l2 > 1e-9)  # strict: shared edges count once
    cover = np.bincount(ty[inside] * res + tx[inside], minlength=res * res)
    assert cover.max() == 1
    assert (cover > 0).mean() > 0.35  # islands fill a good part of their tile


@pytest.mark.parametrize("group", ["M_Face", "M_BackHead"])
def test_uv_parameterisation_is_near_conformal(mesh, group):
    uv, p = uv_triangles(mesh, group)
    x = p[:, 1] - p[:, 0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    y = np.cross(n / np.linalg.norm(n, axis=1, keepdims=True), x)
    local = np.stack([np.stack([((p[:, k] - p[:, 0]) * x).sum(1), ((p[:, k] - p[:, 0]) * y).sum(1)], 1)
                      for k in (1, 2)], 2)
    jac = np.stack([uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]], 2) @ np.linalg.inv(local)
    sv = np.linalg.svd(jac, compute_uv=False)
    anisotropy = sv[:, 0] / sv[:, 1]
    # LSCM keeps angles: texels stay nearly square on the skin. Measured p99: 1.14 (back), 1.28 (face: the
    # lips are flattened from a parted pose, so they are a little squeezed in the closed neutral).
    assert np.percentile(anisotropy, 99) < 1.35
    assert np.median(anisotropy) < 1.05


def test_template_is_mirror_symmetric(mesh, layout):
    mirrored = mesh.vertices[layout.mirror] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    assert np.abs(mirrored - mesh.vertices).max() < 1e-4  # float32 rounding of an exactly symmetric build
    assert (layout.mirror[layout.mirror] == np.arange(mesh.n_vertices)).all()


def test_regions_exist_are_valid_and_mirror_each_other(layout, mesh):
    expected = {"eye_rim", "upper_eyelid", "lower_eyelid", "brow", "cheek", "nostril", "mouth_corner"}
    for stem in expected:
        left, right = layout.regions[f"{stem}_L"], layout.regions[f"{stem}_R"]
        assert len(left) > 0 and set(layout.mirror[left].tolist()) == set(right.tolist()), stem
    for name in ("lips_upper", "lips_lower", "lip_rim_upper", "lip_rim_lower", "nose", "nose_tip", "chin",
                 "jaw", "forehead", "neck", "scalp", "face"):
        ids = layout.regions[name]
        assert len(ids) > 0 and ids.min() >= 0 and ids.max() < mesh.n_vertices, name
    assert len(np.intersect1d(layout.regions["lips_upper"], layout.regions["lips_lower"])) == 0


def test_public_accessors_return_copies(mesh):
    m = T.template_mesh()
    m.vertices[:] = 0.0
    T.template_regions()["chin"][:] = -1
    assert np.array_equal(T.template_mesh().vertices, mesh.vertices)
    assert (T.template_regions()["chin"] >= 0).all()
    assert T.template_landmarks()["nose_tip"] == T.template().landmarks["nose_tip"]


@pytest.mark.slow
def test_rebuilding_the_template_is_byte_identical(layout):
    again = T._build_layout()
    for a, b in ((again.mesh.vertices, layout.mesh.vertices), (again.mesh.uvs, layout.mesh.uvs),
                 (again.mesh.face_uv_indices, layout.mesh.face_uv_indices)):
        assert a.tobytes() == b.tobytes()
