"""Software preview renderer: a z-buffered triangle rasteriser with per-pixel BRDF shading, no OpenGL.

Meshes are Y-up with the face looking +Z. Textures are the core's maps, ``{kind: {udim: (C, H, W)}}``:

- ``albedo``    3 channels, linear RGB.
- ``specular``  1 or 3 channels, normal-incidence reflectance F0 (skin is about 0.03-0.06).
- ``roughness`` 1 or 3 channels (channels averaged), perceptual roughness; GGX alpha = roughness².
- ``normal``    3 channels, tangent space encoded as ``0.5 * n + 0.5``; OpenGL convention: +X along +U,
  +Y along +V (green points "up" in UV), +Z out of the surface.

Texel rows follow image files (row 0 is the top of the image): within a tile, ``v = 1`` is row 0 and ``v = 0``
the bottom row, as USD's UsdUVTexture reads them. UDIM tile of a triangle = 1001 + floor(u) + 10 * floor(v)
at its UV centroid.

Shading: Lambert diffuse + GGX microfacet specular (height-correlated Smith visibility, Schlick Fresnel) under
a few directional lights given in camera space, plus a sky/ground hemisphere ambient. The result is linear
RGB; ``to_display`` turns it into sRGB uint8 and ``write_preview`` writes it through OpenImageIO.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ExpDiffInputError
from ..io.images import linear_to_srgb, write_image
from ..io.mesh import FaceMesh

MAP_KINDS = ("albedo", "specular", "roughness", "normal")
_MAP_CHANNELS = {"albedo": (3,), "specular": (1, 3), "roughness": (1, 3), "normal": (3,)}

# Thin shells around the eyes (occlusion, blend, tear film) and eyelash cards are designed for a real-time
# engine's alpha blending; drawn opaque they cover the eyes with dark sheets.
DEFAULT_HIDDEN_GROUPS = ("M_EyeOcclusion", "M_EyeBlend", "M_LacrimalFluid", "M_EyeLashes")

# Upper bound on (triangle, pixel) candidate pairs tested at once: bounds memory to ~0.5 GB.
_CANDIDATE_CHUNK = 4_000_000


@dataclass(frozen=True)
class Material:
    """Constant BRDF parameters: albedo linear RGB, specular F0, perceptual roughness.

    iris, iris_radius, pupil_radius: for eyeballs whose UV layout is centred on the cornea (ICT-FaceKit's
    sclera): albedo ``iris`` within ``iris_radius`` (UV units) of the tile centre, black within
    ``pupil_radius``, so gaze direction reads in previews without eye textures.
    occlusion: fraction of the light that reaches the surface; the renderer casts no shadows, so parts inside
    a cavity (teeth, gums, tongue) would otherwise be lit like the face outside.
    """

    albedo: tuple[float, float, float]
    specular: float = 0.04
    roughness: float = 0.5
    iris: tuple[float, float, float] | None = None
    iris_radius: float = 0.0
    pupil_radius: float = 0.0
    occlusion: float = 1.0


DEFAULT_SKIN = Material(albedo=(0.46, 0.36, 0.31), specular=0.04, roughness=0.5)

# Non-skin parts of ICT-FaceKit-like heads share the face's UV tile, so skin maps must not be applied to them.
# ICT's sclera UV radius grows with the angle from the corneal axis (r ~ 0.11 at 30 deg, the iris edge of an
# eyeball of 12 mm radius); its iris meshes sit inside the sclera and are never seen.
_SCLERA = Material((0.70, 0.66, 0.62), 0.03, 0.12, iris=(0.16, 0.085, 0.04), iris_radius=0.105,
                   pupil_radius=0.04)
DEFAULT_GROUP_MATERIALS: dict[str, Material] = {
    "M_ScleraLeft": _SCLERA,
    "M_ScleraRight": _SCLERA,
    "M_IrisLeft": Material((0.10, 0.06, 0.035), 0.03, 0.12),
    "M_IrisRight": Material((0.10, 0.06, 0.035), 0.03, 0.12),
    "M_Teeth": Material((0.72, 0.66, 0.52), 0.05, 0.3, occlusion=0.45),
    "M_GumsTongue": Material((0.42, 0.12, 0.11), 0.03, 0.35, occlusion=0.25),
}


@dataclass(frozen=True)
class Camera:
    """A perspective camera orbiting the framed mesh.

    yaw_deg: rotation about +Y from the front (+Z); positive moves the camera toward +X (the subject's left).
    pitch_deg: elevation above the horizontal. fov_deg: vertical field of view.
    margin: fraction of the frame kept empty on each side when auto-framing.
    target, distance: explicit look-at point (world units) and distance; ``None`` frames the render's
    ``frame_vertices`` automatically (on the neutral ``mesh.vertices``, so a series of expressions shares one
    camera).
    """

    yaw_deg: float = 25.0
    pitch_deg: float = 6.0
    fov_deg: float = 22.0
    margin: float = 0.05
    target: tuple[float, float, float] | None = None
    distance: float | None = None


FRONT_CAMERA = Camera(yaw_deg=0.0, pitch_deg=0.0)


@dataclass(frozen=True)
class Light:
    """A directional light. direction: camera space (x right, y up, z toward the viewer), pointing from the
    surface to the light; radiance: linear RGB irradiance on a surface facing the light."""

    direction: tuple[float, float, float]
    radiance: tuple[float, float, float]


STUDIO_LIGHTS: tuple[Light, ...] = (
    Light((0.55, 0.45, 0.70), (2.9, 2.8, 2.65)),  # key: upper camera-right, warm
    Light((-0.80, 0.05, 0.60), (0.75, 0.8, 0.9)),  # fill: camera-left, cool and soft
    Light((-0.35, 0.55, -0.75), (1.6, 1.6, 1.7)),  # rim: behind, upper left
)


@dataclass(frozen=True)
class View:
    """A pinhole view. rotation: (3, 3) rows are the camera's right, up and backward axes in world space;
    eye: (3,) camera position; focal_px: focal length in pixels; width/height: image size in pixels."""

    rotation: np.ndarray
    eye: np.ndarray
    focal_px: float
    width: int
    height: int

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> (N, 2) float64 pixel coordinates (x right, y down, pixel centres at +0.5)
        and (N,) float64 depth along the viewing axis (positive in front of the camera)."""
        cam = (np.asarray(points, dtype=np.float64) - self.eye) @ self.rotation.T
        depth = -cam[:, 2]
        safe = np.where(np.abs(depth) > 1e-12, depth, 1e-12)
        x = 0.5 * self.width + self.focal_px * cam[:, 0] / safe
        y = 0.5 * self.height - self.focal_px * cam[:, 1] / safe
        return np.stack([x, y], axis=1), depth


@dataclass(frozen=True)
class Fragments:
    """Visible surface per pixel. triangle: (H, W) int32 index into the rasterised faces, -1 for background;
    barycentric: (H, W, 3) float32 perspective-correct weights of the triangle's corners;
    depth: (H, W) float32 distance along the viewing axis, inf for background."""

    triangle: np.ndarray
    barycentric: np.ndarray
    depth: np.ndarray


# ---------------------------------------------------------------------------------------------- camera
def _orbit_rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    back = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross([0.0, 1.0, 0.0], back)
    if np.linalg.norm(right) < 1e-9:  # looking straight down or up
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back])


def frame_view(camera: Camera, frame_points: np.ndarray, width: int, height: int) -> View:
    """The View of ``camera`` for an image of ``width`` x ``height``, framing ``frame_points`` (N, 3).

    Auto-framing puts the camera at the smallest distance where every point projects inside the frame less
    the margin, then recentres the projected bounding box.
    """
    rotation = _orbit_rotation(camera.yaw_deg, camera.pitch_deg)
    focal = 0.5 * height / math.tan(math.radians(camera.fov_deg) / 2)
    points = np.asarray(frame_points, dtype=np.float64).reshape(-1, 3)
    if camera.target is not None:
        target = np.asarray(camera.target, dtype=np.float64)
    elif len(points):
        target = 0.5 * (points.min(axis=0) + points.max(axis=0))
    else:
        target = np.zeros(3)
    if camera.distance is not None:
        return View(rotation, target + camera.distance * rotation[2], focal, width, height)
    if not len(points):
        raise ExpDiffInputError(None, "nothing to frame: the mesh has no visible vertices")
    half_w = 0.5 * width * (1 - 2 * camera.margin)
    half_h = 0.5 * height * (1 - 2 * camera.margin)
    distance = 1.0
    for _ in range(3):  # fit distance, recentre, refit: converges in two rounds for convex-ish shapes
        local = (points - target) @ rotation.T
        distance = float(np.max(np.maximum(local[:, 2] + np.abs(local[:, 0]) * focal / half_w,
                                           local[:, 2] + np.abs(local[:, 1]) * focal / half_h)))
        view = View(rotation, target + distance * rotation[2], focal, width, height)
        if camera.target is not None:
            break
        xy, depth = view.project(points)
        offset = 0.5 * (xy.min(axis=0) + xy.max(axis=0)) - np.array([0.5 * width, 0.5 * height])
        # a pixel at the target's depth spans distance / focal world units
        target = target + (offset[0] * rotation[0] - offset[1] * rotation[1]) * distance / focal
    return View(rotation, target + distance * rotation[2], focal, width, height)


# ------------------------------------------------------------------------------------------- raster
def rasterize(screen_xy: np.ndarray, depth: np.ndarray, faces: np.ndarray, width: int, height: int, *,
              cull_backfaces: bool = True) -> Fragments:
    """Z-buffered scan conversion of triangles sampled at pixel centres.

    screen_xy: (V, 2) pixel coordinates (x right, y down); depth: (V,) distance along the view axis;
    faces: (T, 3) int vertex indices, counter-clockwise seen from the front (right-handed, Y up).
    Triangles with a corner at depth <= 0 are dropped (no near-plane clipping: preview cameras frame the mesh).
    Ties in depth go to the lower triangle index, so the result is deterministic.
    """
    xy = np.asarray(screen_xy, dtype=np.float64)
    z = np.asarray(depth, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    n_pix = width * height
    tri_xy, tri_z = xy[faces], z[faces]
    x0, y0 = tri_xy[:, 0, 0], tri_xy[:, 0, 1]
    x1, y1 = tri_xy[:, 1, 0], tri_xy[:, 1, 1]
    x2, y2 = tri_xy[:, 2, 0], tri_xy[:, 2, 1]
    # twice the signed area in pixel space; y points down, so front-facing (CCW in a Y-up view) is negative
    area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    keep = np.isfinite(tri_xy).all(axis=(1, 2)) & (tri_z > 0).all(axis=1) & (np.abs(area2) > 1e-12)
    if cull_backfaces:
        keep &= area2 < 0
    xmin = np.clip(np.ceil(tri_xy[:, :, 0].min(axis=1) - 0.5), 0, width).astype(np.int64)
    xmax = np.clip(np.floor(tri_xy[:, :, 0].max(axis=1) - 0.5), -1, width - 1).astype(np.int64)
    ymin = np.clip(np.ceil(tri_xy[:, :, 1].min(axis=1) - 0.5), 0, height).astype(np.int64)
    ymax = np.clip(np.floor(tri_xy[:, :, 1].max(axis=1) - 0.5), -1, height - 1).astype(np.int64)
    box_w = np.where(keep, np.maximum(xmax - xmin + 1, 0), 0)
    box_h = np.where(keep, np.maximum(ymax - ymin + 1, 0), 0)
    counts = box_w * box_h
    tris = np.flatnonzero(counts > 0)

    inv_area = np.zeros_like(area2)
    inv_area[keep] = 1.0 / area2[keep]
    # barycentric weights are affine in (x, y): l_i = a_i x + b_i y + c_i
    coef = np.stack([(y1 - y2), (x2 - x1), (x1 * y2 - x2 * y1),
                     (y2 - y0), (x0 - x2), (x2 * y0 - x0 * y2)]) * inv_area  # (6, T)
    inv_z = 1.0 / np.where(tri_z > 0, tri_z, 1.0)
    # 1/depth is affine in screen space too (that is what makes perspective-correct interpolation work)
    coef_iz = (coef[0:3] * (inv_z[:, 0] - inv_z[:, 2]) + coef[3:6] * (inv_z[:, 1] - inv_z[:, 2])
               + np.array([0.0, 0.0, 1.0])[:, None] * inv_z[:, 2])
    # per triangle, the affine forms re-based at its first candidate pixel: candidates then need only small
    # local offsets, which float32 evaluates to ~1e-6 of the triangle's size
    ox, oy = xmin + 0.5, ymin + 0.5
    local = np.stack([coef[0], coef[1], coef[0] * ox + coef[1] * oy + coef[2],
                      coef[3], coef[4], coef[3] * ox + coef[4] * oy + coef[5],
                      coef_iz[0], coef_iz[1], coef_iz[0] * ox + coef_iz[1] * oy + coef_iz[2]], axis=1)
    local = local.astype(np.float32)
    iz_lo = float(inv_z[keep].min()) if keep.any() else 0.0
    iz_hi = float(inv_z[keep].max()) if keep.any() else 1.0
    iz_scale = (2**31 - 2) / max(iz_hi - iz_lo, 1e-30)

    empty = np.iinfo(np.int64).max
    zbuffer = np.full(n_pix, empty, dtype=np.int64)
    cum = np.cumsum(counts[tris])
    start = 0
    while start < len(tris):
        base = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, base + _CANDIDATE_CHUNK, side="right")), start + 1)
        chunk = tris[start:stop]
        start = stop
        n = counts[chunk]
        k = np.arange(int(n.sum()), dtype=np.int32) - np.repeat((np.cumsum(n) - n).astype(np.int32), n)
        dy, dx = np.divmod(k, np.repeat(box_w[chunk].astype(np.int32), n))
        fx, fy = dx.astype(np.float32), dy.astype(np.float32)
        c = np.repeat(local[chunk], n, axis=0)
        l0 = c[:, 0] * fx + c[:, 1] * fy + c[:, 2]
        l1 = c[:, 3] * fx + c[:, 4] * fy + c[:, 5]
        l2 = 1.0 - l0 - l1
        # a small tolerance so a pixel centre exactly on a shared edge is never missed by both neighbours
        inside = np.flatnonzero((l0 >= -1e-5) & (l1 >= -1e-5) & (l2 >= -1e-5))
        iz = c[inside, 6] * fx[inside] + c[inside, 7] * fy[inside] + c[inside, 8]
        t = np.repeat(chunk, n)[inside]
        pix = (ymin[t] + dy[inside]) * width + xmin[t] + dx[inside]
        # nearest = largest 1/depth; quantised so (depth, triangle) packs into one int64 for a min-reduce
        q = np.clip((iz_hi - iz) * iz_scale, 0, 2**31 - 2).astype(np.int64)
        np.minimum.at(zbuffer, pix, (q << 32) | t)

    covered = np.flatnonzero(zbuffer != empty)
    triangle = np.full(n_pix, -1, dtype=np.int32)
    bary = np.zeros((n_pix, 3), dtype=np.float32)
    frag_depth = np.full(n_pix, np.inf, dtype=np.float32)
    t = (zbuffer[covered] & 0xFFFFFFFF).astype(np.int64)
    cx = (covered % width) + 0.5
    cy = (covered // width) + 0.5
    l0, l1 = _barycentric01(coef, t, cx, cy)
    screen_l = np.clip(np.stack([l0, l1, 1.0 - l0 - l1], axis=1), 0.0, 1.0)
    persp = screen_l * inv_z[t]
    total = persp.sum(axis=1, keepdims=True)
    triangle[covered] = t
    bary[covered] = persp / total
    frag_depth[covered] = (1.0 / total[:, 0])
    return Fragments(triangle.reshape(height, width), bary.reshape(height, width, 3),
                     frag_depth.reshape(height, width))


def _barycentric01(coef: np.ndarray, t: np.ndarray, x: np.ndarray, y: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Screen-space weights of corners 0 and 1 of triangles ``t`` at pixel points (x, y)."""
    l0 = coef[0][t] * x + coef[1][t] * y + coef[2][t]
    l1 = coef[3][t] * x + coef[4][t] * y + coef[5][t]
    return l0, l1


# ------------------------------------------------------------------------------------------ geometry
def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (N, 3) arrays -> (N,); explicit terms are much faster than sum(axis=1)."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.sqrt(_dot(v, v))[:, None]
    return v / np.maximum(n, 1e-12)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) float32 unit normals: area-weighted sum of the CCW face normals around each vertex."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    acc = _scatter_add(np.asarray(faces, dtype=np.int64), face_n, len(v))
    return _normalize(acc).astype(np.float32)


def _scatter_add(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sum (T, 3) per-triangle ``values`` onto the (T, 3) corner ``index`` -> (size, 3) float64."""
    flat = index.reshape(-1)
    per_corner = np.repeat(values, 3, axis=0)
    return np.stack([np.bincount(flat, per_corner[:, c], minlength=size) for c in range(3)], axis=1)


def uv_tangents(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, uv_faces: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per UV index (T, 3) float32 tangent (direction of +U) and bitangent (direction of +V) on the surface,
    accumulated over the triangles that use each UV index (so UV islands on either side of a seam keep their
    own frames). Unnormalised; orthonormalise against the shading normal where used."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(uvs, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    uv_faces = np.asarray(uv_faces, dtype=np.int64)
    p0, p1, p2 = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    w0, w1, w2 = t[uv_faces[:, 0]], t[uv_faces[:, 1]], t[uv_faces[:, 2]]
    dp1, dp2 = p1 - p0, p2 - p0
    du1, dv1 = (w1 - w0)[:, 0:1], (w1 - w0)[:, 1:2]
    du2, dv2 = (w2 - w0)[:, 0:1], (w2 - w0)[:, 1:2]
    det = du1 * dv2 - du2 * dv1
    # dividing by |det| would blow up degenerate UV triangles; its sign keeps mirrored islands right
    sign = np.sign(det)
    tangent = (dp1 * dv2 - dp2 * dv1) * sign
    bitangent = (dp2 * du1 - dp1 * du2) * sign
    acc_t = _scatter_add(uv_faces, tangent, len(t))
    acc_b = _scatter_add(uv_faces, bitangent, len(t))
    return acc_t.astype(np.float32), acc_b.astype(np.float32)


# ------------------------------------------------------------------------------------------ textures
def _check_maps(maps: Mapping[str, Mapping[int, np.ndarray]] | None) -> dict[str, dict[int, np.ndarray]]:
    checked: dict[str, dict[int, np.ndarray]] = {}
    for kind, tiles in (maps or {}).items():
        if kind not in _MAP_CHANNELS:
            raise ExpDiffInputError(None, f"unknown map kind {kind!r}; expected one of {list(MAP_KINDS)}")
        checked[kind] = {}
        for udim, image in tiles.items():
            image = np.asarray(image, dtype=np.float32)
            if not (isinstance(udim, (int, np.integer)) and 1001 <= int(udim) <= 1100):
                raise ExpDiffInputError(None, f"{kind} map: UDIM tile {udim!r} is not an integer in 1001-1100")
            if image.ndim != 3 or image.shape[0] not in _MAP_CHANNELS[kind] or min(image.shape[1:]) < 1:
                raise ExpDiffInputError(None, f"{kind} map tile {udim}: shape {image.shape} is not (C, H, W) "
                                        f"with C in {_MAP_CHANNELS[kind]}")
            if not np.isfinite(image).all():
                raise ExpDiffInputError(None, f"{kind} map tile {udim}: holds NaN or infinite values")
            checked[kind][int(udim)] = image
    return checked


def _prefilter(image: np.ndarray, max_texels: int) -> np.ndarray:
    """(C, H, W) -> (H', W', C), box-halved while both sides stay >= max_texels: a one-level mip choice so
    pore-scale detail in 4K maps averages instead of aliasing in a small preview."""
    img = np.moveaxis(image, 0, -1)
    while img.shape[0] // 2 >= max_texels and img.shape[1] // 2 >= max_texels:
        h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
        img = img[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
    return np.ascontiguousarray(img, dtype=np.float32)


def sample_bilinear(image: np.ndarray, uv_local: np.ndarray) -> np.ndarray:
    """Bilinear lookup with clamped edges. image: (H, W, C) float32; uv_local: (N, 2) in [0, 1] with v = 1
    at row 0. Returns (N, C) float32."""
    h, w = image.shape[:2]
    x = uv_local[:, 0] * w - 0.5
    y = (1.0 - uv_local[:, 1]) * h - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None].astype(np.float32)
    fy = (y - y0)[:, None].astype(np.float32)
    xa = np.clip(x0, 0, w - 1).astype(np.int64)
    xb = np.clip(x0 + 1, 0, w - 1).astype(np.int64)
    ya = np.clip(y0, 0, h - 1).astype(np.int64)
    yb = np.clip(y0 + 1, 0, h - 1).astype(np.int64)
    top = image[ya, xa] * (1 - fx) + image[ya, xb] * fx
    bottom = image[yb, xa] * (1 - fx) + image[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


# ----------------------------------------------------------------------------------------- shading
def _ggx_specular(n_dot_l: np.ndarray, n_dot_v: np.ndarray, n_dot_h: np.ndarray, v_dot_h: np.ndarray,
                  f0: np.ndarray, roughness: np.ndarray) -> np.ndarray:
    """GGX D * height-correlated Smith visibility * Schlick F; (N,) cosines, (N, 3) F0 -> (N, 3)."""
    a2 = np.maximum(roughness * roughness, 2e-3) ** 2
    d = a2 / (np.pi * (n_dot_h * n_dot_h * (a2 - 1.0) + 1.0) ** 2)
    vis = 0.5 / (n_dot_l * np.sqrt(n_dot_v * n_dot_v * (1 - a2) + a2)
                 + n_dot_v * np.sqrt(n_dot_l * n_dot_l * (1 - a2) + a2) + 1e-7)
    fresnel = f0 + (1.0 - f0) * ((1.0 - v_dot_h) ** 5)[:, None]
    return (d * vis)[:, None] * fresnel


def _group_ids(mesh: FaceMesh, names: Sequence[str]) -> list[int]:
    wanted = set(names)
    return [i for i, g in enumerate(mesh.group_names) if g in wanted]


def render_preview(mesh: FaceMesh, maps: Mapping[str, Mapping[int, np.ndarray]] | None = None, *,
                   vertices: np.ndarray | None = None, width: int = 512, height: int = 512,
                   camera: Camera = Camera(), lights: Sequence[Light] = STUDIO_LIGHTS,
                   hide_groups: Sequence[str] = DEFAULT_HIDDEN_GROUPS,
                   frame_vertices: np.ndarray | None = None,
                   group_materials: Mapping[str, Material] = DEFAULT_GROUP_MATERIALS,
                   skin: Material = DEFAULT_SKIN,
                   ambient: tuple[tuple[float, float, float], tuple[float, float, float]] = (
                       (0.16, 0.17, 0.19), (0.05, 0.045, 0.04)),
                   background: tuple[float, float, float] = (0.035, 0.035, 0.035),
                   supersample: int = 2, cull_backfaces: bool = True) -> np.ndarray:
    """Render ``mesh`` (optionally posed by ``vertices``) with its BRDF ``maps``; (H, W, 3) float32 linear RGB.

    maps: ``{kind: {udim: (C, H, W) float32}}`` (see the module docstring); missing kinds or tiles fall back
    to ``skin`` (albedo, specular, roughness) and a flat normal.
    vertices: (V, 3) positions replacing ``mesh.vertices`` (an expression); the camera still frames
    ``mesh.vertices`` so a series of expressions shares one view.
    hide_groups: material groups not drawn.
    frame_vertices: (K,) int indices of the vertices the auto-framing camera fits in the frame (default: every
    drawn vertex).
    group_materials: groups drawn with a constant material instead of the maps (eyes, teeth, gums of
    ICT-like heads).
    ambient: (sky, ground) hemisphere radiance.
    supersample: samples per pixel side, box-filtered (2 = 4 samples per pixel: anti-aliased edges).
    cull_backfaces: skip triangles facing away from the camera (faces wound clockwise as seen).
    """
    if width < 1 or height < 1 or supersample < 1:
        raise ExpDiffInputError(None, f"render size {width}x{height} and supersample {supersample} must be >= 1")
    texture_maps = _check_maps(maps)
    positions = mesh.vertices if vertices is None else np.asarray(vertices, dtype=np.float32)
    if positions.shape != mesh.vertices.shape:
        raise ExpDiffInputError(None, f"vertices shape {positions.shape} != mesh {mesh.name!r} "
                                f"{mesh.vertices.shape}")
    if not np.isfinite(positions).all():
        raise ExpDiffInputError(None, f"vertices for mesh {mesh.name!r} hold NaN or infinite values")

    tri_view = mesh.triangulated()
    tri_groups = mesh.face_groups[tri_view.source_face]
    shown = ~np.isin(tri_groups, _group_ids(mesh, hide_groups))
    faces = tri_view.faces[shown].astype(np.int64)
    uv_faces = tri_view.uv_faces[shown].astype(np.int64)
    tri_groups = tri_groups[shown]
    if frame_vertices is None:
        frame_vertices = np.unique(faces)
    frame_vertices = np.asarray(frame_vertices, dtype=np.int64).reshape(-1)
    if len(frame_vertices) and (frame_vertices.min() < 0 or frame_vertices.max() >= mesh.n_vertices):
        raise ExpDiffInputError(None, f"frame_vertices index out of range for mesh {mesh.name!r} "
                                f"with {mesh.n_vertices} vertices")

    ss_w, ss_h = width * supersample, height * supersample
    view = frame_view(camera, mesh.vertices[frame_vertices], ss_w, ss_h)
    screen_xy, depth = view.project(positions)
    frags = rasterize(screen_xy, depth, faces, ss_w, ss_h, cull_backfaces=cull_backfaces)

    pixel, triangle, weight, bary = _pixel_fragments(frags, width, height, supersample)
    image = np.empty((height * width, 3), dtype=np.float32)
    image[:] = np.asarray(background, dtype=np.float32)
    if len(pixel):
        color = _shade(mesh, positions, faces, uv_faces, tri_groups, triangle, bary, view, texture_maps,
                       lights, group_materials, skin, ambient, max(width, height))
        covered = np.bincount(pixel, weights=weight, minlength=height * width)
        image *= (1.0 - covered)[:, None].astype(np.float32)
        for c in range(3):
            image[:, c] += np.bincount(pixel, weights=color[:, c] * weight, minlength=height * width)
    return np.ascontiguousarray(image.reshape(height, width, 3), dtype=np.float32)


def _pixel_fragments(frags: Fragments, width: int, height: int, supersample: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge the supersamples of each output pixel that hit the same triangle (multisample anti-aliasing:
    visibility per sample, shading once per pixel and triangle, about 2.5x fewer shading evaluations on a
    face at 512 px).

    Returns per (pixel, triangle) fragment: pixel (N,) int64 flat output index, triangle (N,) int64,
    weight (N,) float64 fraction of the pixel's samples it covers, bary (N, 3) float32 mean barycentrics.
    """
    s = supersample * supersample
    tri = frags.triangle.reshape(height, supersample, width, supersample).transpose(0, 2, 1, 3).reshape(-1, s)
    bary = frags.barycentric.reshape(height, supersample, width, supersample, 3).transpose(0, 2, 1, 3, 4)
    bary = bary.reshape(-1, s, 3)
    # most pixels see one triangle (or none) in every sample: one fragment each, no sorting needed
    lo, hi = tri.min(axis=1), tri.max(axis=1)
    whole = np.flatnonzero((lo == hi) & (lo >= 0))
    parts = [(whole, tri[whole, 0].astype(np.int64), np.ones(len(whole)), bary[whole].mean(axis=1))]
    mixed = np.flatnonzero(lo != hi)
    if len(mixed):
        mtri, mbary = tri[mixed], bary[mixed]
        order = np.argsort(mtri, axis=1, kind="stable")
        mtri = np.take_along_axis(mtri, order, axis=1)
        mbary = np.take_along_axis(mbary, order[:, :, None], axis=1)
        first = np.ones(mtri.shape, dtype=bool)
        first[:, 1:] = mtri[:, 1:] != mtri[:, :-1]
        hit = (mtri >= 0).reshape(-1)
        first = first.reshape(-1) & hit
        group = (np.cumsum(first) - 1)[hit]
        n_groups = int(first.sum())
        counts = np.bincount(group, minlength=n_groups).astype(np.float64)
        samples = mbary.reshape(-1, 3)[hit]
        sums = np.stack([np.bincount(group, samples[:, c], minlength=n_groups) for c in range(3)], axis=1)
        parts.append((np.repeat(mixed, s)[first], mtri.reshape(-1)[first].astype(np.int64), counts / s,
                      sums / counts[:, None]))
    pixel, triangle, weight, mean_bary = (np.concatenate(p) for p in zip(*parts))
    return pixel.astype(np.int64), triangle, weight, mean_bary.astype(np.float32)


def _shade(mesh: FaceMesh, positions: np.ndarray, faces: np.ndarray, uv_faces: np.ndarray,
           tri_groups: np.ndarray, t: np.ndarray, b: np.ndarray, view: View,
           texture_maps: dict[str, dict[int, np.ndarray]], lights: Sequence[Light],
           group_materials: Mapping[str, Material], skin: Material,
           ambient: tuple[tuple[float, float, float], tuple[float, float, float]], texture_size: int
           ) -> np.ndarray:
    """Linear RGB (N, 3) of N surface points: triangle ``t`` (N,) at barycentrics ``b`` (N, 3)."""
    b0, b1, b2 = b[:, 0:1], b[:, 1:2], b[:, 2:3]
    n = len(t)
    normal_mapped = "normal" in texture_maps

    # one gather of wide rows per corner is several times faster than one gather per attribute
    per_vertex = np.concatenate([positions, vertex_normals(positions, faces)], axis=1)
    per_uv = [mesh.uvs]
    if normal_mapped:
        per_uv += list(uv_tangents(positions, faces, mesh.uvs, uv_faces))
    per_uv_index = np.concatenate(per_uv, axis=1)
    fv, fuv = faces[t], uv_faces[t]
    vert = per_vertex[fv[:, 0]] * b0 + per_vertex[fv[:, 1]] * b1 + per_vertex[fv[:, 2]] * b2
    corner = per_uv_index[fuv[:, 0]] * b0 + per_uv_index[fuv[:, 1]] * b1 + per_uv_index[fuv[:, 2]] * b2
    point, normal = vert[:, 0:3], _normalize(vert[:, 3:6])
    uv = corner[:, 0:2]

    # the UDIM tile is the triangle's, so pixels on a tile border never sample the neighbouring tile
    tri_tile = np.floor((mesh.uvs[uv_faces[:, 0]] + mesh.uvs[uv_faces[:, 1]] + mesh.uvs[uv_faces[:, 2]]) / 3)
    tile_uv = tri_tile[t]
    udim = (1001 + tile_uv[:, 0] + 10 * tile_uv[:, 1]).astype(np.int64)
    uv_local = np.clip(uv - tile_uv, 0.0, 1.0)

    albedo = np.empty((n, 3), dtype=np.float32)
    albedo[:] = skin.albedo
    f0 = np.full((n, 3), skin.specular, dtype=np.float32)
    roughness = np.full(n, skin.roughness, dtype=np.float32)
    normal_ts = None
    if normal_mapped:
        normal_ts = np.zeros((n, 3), dtype=np.float32)
        normal_ts[:, 2] = 1.0
    for kind, tiles in texture_maps.items():
        for tile, tile_image in tiles.items():
            sel = np.flatnonzero(udim == tile)
            if not len(sel):
                continue
            texels = sample_bilinear(_prefilter(tile_image, texture_size), uv_local[sel])
            if kind == "albedo":
                albedo[sel] = texels
            elif kind == "specular":
                f0[sel] = texels if texels.shape[1] == 3 else np.repeat(texels, 3, axis=1)
            elif kind == "roughness":
                roughness[sel] = texels.mean(axis=1)
            else:
                normal_ts[sel] = texels * 2.0 - 1.0

    overridden = [(mesh.group_names.index(g), m) for g, m in group_materials.items() if g in mesh.group_names]
    if overridden:
        lookup = np.full(len(mesh.group_names), -1, dtype=np.int64)
        for k, (group, _) in enumerate(overridden):
            lookup[group] = k
        which = lookup[tri_groups[t]]
        sel = np.flatnonzero(which >= 0)
        which = which[sel]
        albedo[sel] = np.array([m.albedo for _, m in overridden], dtype=np.float32)[which]
        f0[sel] = np.array([m.specular for _, m in overridden], dtype=np.float32)[which, None]
        roughness[sel] = np.array([m.roughness for _, m in overridden], dtype=np.float32)[which]
        occlusion = np.ones(n, dtype=np.float32)
        occlusion[sel] = np.array([m.occlusion for _, m in overridden], dtype=np.float32)[which]
        if normal_ts is not None:
            normal_ts[sel] = (0.0, 0.0, 1.0)
        for k, (_, material) in enumerate(overridden):
            if material.iris is None:
                continue
            eye = sel[which == k]
            radius = np.hypot(uv_local[eye, 0] - 0.5, uv_local[eye, 1] - 0.5)
            albedo[eye[radius < material.iris_radius]] = material.iris
            albedo[eye[radius < material.pupil_radius]] = 0.01
    albedo = np.clip(albedo, 0.0, 1.0)
    f0 = np.clip(f0, 0.0, 1.0)
    roughness = np.clip(roughness, 0.0, 1.0)

    to_eye = _normalize(view.eye.astype(np.float32)[None, :] - point)
    if normal_ts is None:
        shading_n = normal
    else:
        tangent, bitangent = corner[:, 2:5], corner[:, 5:8]
        tangent = _normalize(tangent - normal * _dot(tangent, normal)[:, None])
        across = np.cross(normal, tangent)
        # mirrored UV islands have a left-handed frame; the interpolated +V direction tells which
        across *= np.where(_dot(across, bitangent) < 0, -1.0, 1.0).astype(np.float32)[:, None]
        shading_n = _normalize(normal_ts[:, 0:1] * tangent + normal_ts[:, 1:2] * across
                               + normal_ts[:, 2:3] * normal)
    # silhouette pixels whose interpolated normal turned away from the viewer would shade black and flicker
    n_dot_v = _dot(shading_n, to_eye)
    away = np.flatnonzero(n_dot_v < 1e-3)
    if len(away):
        shading_n = shading_n.copy()
        shading_n[away] = _normalize(shading_n[away] + to_eye[away] * (1e-3 - n_dot_v[away])[:, None])
        n_dot_v = _dot(shading_n, to_eye)
    n_dot_v = np.clip(n_dot_v, 1e-4, 1.0)

    sky, ground = np.asarray(ambient[0], np.float32), np.asarray(ambient[1], np.float32)
    up = 0.5 + 0.5 * shading_n[:, 1:2]
    color = albedo * (ground + (sky - ground) * up)
    diffuse = albedo * np.float32(1.0 / np.pi)
    for light in lights:
        direction = np.asarray(light.direction, dtype=np.float64)
        direction = (direction / max(np.linalg.norm(direction), 1e-12)) @ view.rotation  # camera -> world
        to_light = direction.astype(np.float32)
        n_dot_l = np.maximum(shading_n @ to_light, 0.0)
        half = _normalize(to_light[None, :] + to_eye)
        spec = _ggx_specular(n_dot_l, n_dot_v, np.clip(_dot(shading_n, half), 0, 1),
                             np.clip(_dot(to_eye, half), 0, 1), f0, roughness)
        radiance = np.asarray(light.radiance, dtype=np.float32)
        color += (radiance * n_dot_l[:, None]) * (diffuse + spec)
    if overridden:
        color *= occlusion[:, None]
    return color.astype(np.float32)


# ----------------------------------------------------------------------------------------- display
def to_display(image: np.ndarray, *, exposure: float = 0.0) -> np.ndarray:
    """(H, W, 3) linear float -> (H, W, 3) uint8 sRGB: scaled by 2**exposure, clipped, sRGB-encoded, rounded."""
    scaled = np.asarray(image, dtype=np.float32) * np.float32(2.0 ** exposure)
    return np.round(linear_to_srgb(scaled) * 255.0).astype(np.uint8)


def write_preview(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write an image as an 8-bit sRGB file (PNG/JPEG/TIFF by suffix) through OpenImageIO, atomically.

    image: (H, W, 3) uint8 display values, or float linear RGB (encoded with ``to_display``).
    """
    arr = np.asarray(image)
    display = arr if arr.dtype == np.uint8 else to_display(arr)
    return write_image(path, display.astype(np.float32) / 255.0, pixel_type="uint8", overwrite=overwrite)
