"""Skin BRDF maps driven by geometry: surface strain in UV space -> wrinkles, pores and blood flow.

Strain. For a triangle with 3D corners ``p`` and UV corners ``t``, the Jacobian ``J = dP/d(u, v)`` (3x2)
maps UV directions to surface directions; its metric tensor ``G = J^T J`` (2x2, cm^2 per UV unit^2) measures
lengths. Between the neutral (``G0``) and an expression (``G1``), a UV direction ``d`` changes surface length
by the factor ``sqrt(d^T G1 d / d^T G0 d)``; its extremes (the generalized eigenvalues of ``(G1, G0)``) are
the principal stretches, and the eigenvector of the smaller one is the compression direction in UV. Metric
tensors are averaged onto UV corners (per UV index, so every UV island keeps its own frame) and interpolated
per texel with the UV rasteriser's barycentric tables.

Maps. All maps are (C, H, W) float32, one per UDIM tile, in the texel convention of ``uv.raster``:

- ``albedo``    3 ch, linear RGB diffuse albedo from melanin and haemoglobin concentrations.
- ``specular``  1 ch, normal-incidence reflectance F0 (skin about 0.03-0.06), as the preview renderer reads it.
- ``roughness`` 1 ch, perceptual roughness (GGX alpha = roughness^2).
- ``normal``    3 ch, tangent space, ``0.5 * n + 0.5``; +X along +U, +Y along +V, +Z out of the surface.

Dynamics: compression (``1 - stretch_min``) raises folds across the compression direction (normal-map
valleys, slightly darker and rougher, less specular), deepens fine lines and pools blood (more haemoglobin:
redder); stretch (area growth) makes pores shallower and paler and drains blood (blanching). Every random
field is seeded from the identity seed and the UDIM tile, so maps are deterministic.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import ExpDiffInputError
from ..io.mesh import FaceMesh
from ..uv.raster import UVRaster

MAP_KINDS = ("albedo", "specular", "roughness", "normal")
MAP_CHANNELS = {"albedo": 3, "specular": 1, "roughness": 1, "normal": 3}
MIN_RESOLUTION = 64
MAX_RESOLUTION = 4096

# Chromophore absorption (per unit concentration, linear R, G, B). Melanin absorbs more toward blue;
# oxy-haemoglobin absorbs green and blue far more than red, which is why blood reads red. Melanin and the
# dermis colour are fitted so that melanin 0.1 gives fair skin (linear ~0.65, 0.42, 0.33) and 0.85 dark
# brown skin (~0.13, 0.055, 0.033) at haemoglobin 0.3.
_MELANIN_ABSORPTION = np.array([2.15, 2.71, 3.07], dtype=np.float32)
_HAEMOGLOBIN_ABSORPTION = np.array([0.12, 0.95, 0.70], dtype=np.float32)
_DERMIS_ALBEDO = np.array([0.835, 0.73, 0.55], dtype=np.float32)
_HAIR_ALBEDO = np.array([0.045, 0.030, 0.022], dtype=np.float32)

_WRINKLE_ORIENTATIONS = 8  # orientation bins of the fold pattern; adjacent bins are 22.5 degrees apart
_MIN_PERIOD_TEXELS = 4.0  # finer patterns alias; they are widened and flattened to this period instead


# ---------------------------------------------------------------------------- strain
def uv_jacobians(vertices: np.ndarray, uvs: np.ndarray, faces: np.ndarray, uv_faces: np.ndarray) -> np.ndarray:
    """Per-triangle Jacobian of 3D position with respect to UV.

    vertices (V, 3), uvs (N, 2), faces (T, 3) and uv_faces (T, 3) int -> (T, 3, 2) float64, columns
    ``dP/du`` and ``dP/dv`` in length units per UV unit. Triangles with zero UV area get a zero Jacobian.
    """
    p = np.asarray(vertices, dtype=np.float64)[faces]
    t = np.asarray(uvs, dtype=np.float64)[uv_faces]
    edges = np.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]], axis=-1)  # (T, 3, 2)
    uv_edges = np.stack([t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]], axis=-1)  # (T, 2, 2)
    det = uv_edges[:, 0, 0] * uv_edges[:, 1, 1] - uv_edges[:, 0, 1] * uv_edges[:, 1, 0]
    ok = np.abs(det) > 1e-14
    safe = np.where(ok, det, 1.0)
    inv = np.stack([np.stack([uv_edges[:, 1, 1], -uv_edges[:, 0, 1]], -1),
                    np.stack([-uv_edges[:, 1, 0], uv_edges[:, 0, 0]], -1)], axis=1) / safe[:, None, None]
    return np.where(ok[:, None, None], edges @ inv, 0.0)


def metric_tensors(jacobians: np.ndarray) -> np.ndarray:
    """(..., 3, 2) Jacobians -> (..., 3) metric tensors ``G = J^T J`` packed as (g_uu, g_uv, g_vv)."""
    ju, jv = jacobians[..., 0], jacobians[..., 1]
    return np.stack([(ju * ju).sum(-1), (ju * jv).sum(-1), (jv * jv).sum(-1)], axis=-1)


@dataclass(frozen=True)
class Strain:
    """Principal stretches of an expression relative to the neutral, over any array shape S.

    stretch_min, stretch_max: S float32 surface length ratios (expression / neutral), min <= max.
    direction: S + (2,) float32 unit UV vector of the most compressed direction (``stretch_min``'s).
    """

    stretch_min: np.ndarray
    stretch_max: np.ndarray
    direction: np.ndarray

    @property
    def compression(self) -> np.ndarray:
        """S float32 in [0, 1]: how much the most compressed direction shortened (``1 - stretch_min``)."""
        return np.clip(1.0 - self.stretch_min, 0.0, 1.0)

    @property
    def area_ratio(self) -> np.ndarray:
        """S float32 surface area ratio (expression / neutral)."""
        return self.stretch_min * self.stretch_max


def principal_stretches(metric_neutral: np.ndarray, metric_expression: np.ndarray) -> Strain:
    """Principal stretches and compression direction from packed metrics (..., 3) of the same UV points.

    Solves the 2x2 generalized eigenproblem ``G1 d = lambda G0 d`` in closed form; stretches are
    ``sqrt(lambda)``. Where the neutral metric is degenerate the result is no strain (stretches 1).
    """
    dtype = np.float64 if np.result_type(metric_neutral, metric_expression) == np.float64 else np.float32
    g0 = np.asarray(metric_neutral, dtype=dtype)
    g1 = np.asarray(metric_expression, dtype=dtype)
    a0, b0, c0 = g0[..., 0], g0[..., 1], g0[..., 2]
    a1, b1, c1 = g1[..., 0], g1[..., 1], g1[..., 2]
    det0 = a0 * c0 - b0 * b0
    ok = det0 > 1e-12 * np.maximum(a0 * c0, 1e-30)
    det0 = np.where(ok, det0, 1.0)
    # trace and determinant of G0^-1 G1
    trace = (c0 * a1 - 2.0 * b0 * b1 + a0 * c1) / det0
    det = (a1 * c1 - b1 * b1) / det0
    disc = np.sqrt(np.maximum(0.25 * trace * trace - det, 0.0))
    lam_min = np.maximum(0.5 * trace - disc, 0.0)
    lam_max = np.maximum(0.5 * trace + disc, 0.0)
    # null vector of the symmetric singular (G1 - lam_min G0): take the better conditioned of two candidates
    pa, pb, pc = a1 - lam_min * a0, b1 - lam_min * b0, c1 - lam_min * c0
    use_first = np.abs(pa) >= np.abs(pc)
    du = np.where(use_first, -pb, pc)
    dv = np.where(use_first, pa, -pb)
    norm = np.hypot(du, dv)
    isotropic = norm < 1e-12
    du = np.where(isotropic, 1.0, du / np.where(isotropic, 1.0, norm))
    dv = np.where(isotropic, 0.0, dv / np.where(isotropic, 1.0, norm))
    s_min = np.where(ok, np.sqrt(lam_min), 1.0).astype(np.float32)
    s_max = np.where(ok, np.sqrt(lam_max), 1.0).astype(np.float32)
    direction = np.stack([np.where(ok, du, 1.0), np.where(ok, dv, 0.0)], axis=-1).astype(np.float32)
    return Strain(s_min, s_max, direction)


def triangle_strain(neutral: FaceMesh, expression_vertices: np.ndarray,
                    triangles: np.ndarray | None = None) -> Strain:
    """Per-triangle strain of ``expression_vertices`` (V, 3) against ``neutral``'s positions.

    triangles: optional (K,) indices into ``neutral.triangulated()`` (default: all). Returns a Strain of
    shape (K,).
    """
    tri = neutral.triangulated()
    sel = slice(None) if triangles is None else np.asarray(triangles)
    faces, uv_faces = tri.faces[sel], tri.uv_faces[sel]
    g0 = metric_tensors(uv_jacobians(neutral.vertices, neutral.uvs, faces, uv_faces))
    g1 = metric_tensors(uv_jacobians(expression_vertices, neutral.uvs, faces, uv_faces))
    return principal_stretches(g0, g1)


# ---------------------------------------------------------------------------- noise
def _rng(seed: int, udim: int, layer: str) -> np.random.Generator:
    """The random stream of one noise layer of one tile of one identity (independent of every other)."""
    tag = zlib.crc32(layer.encode())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, udim, tag])))


def band_noise(rng: np.random.Generator, resolution: int, cycles_low: float, cycles_high: float) -> np.ndarray:
    """(R, R) float32 zero-mean unit-variance noise with energy between two frequencies (cycles per tile).

    White noise filtered in the Fourier domain by a smooth radial band (periodic across the tile). The band
    is clamped below Nyquist; a band entirely above it comes back as the highest representable band.
    """
    r = int(resolution)
    nyquist = r / 2.0
    hi = min(float(cycles_high), nyquist)
    lo = min(float(cycles_low), 0.7 * hi)
    white = rng.standard_normal((r, r), dtype=np.float32)
    fy = np.fft.fftfreq(r).astype(np.float32)[:, None] * r
    fx = np.fft.rfftfreq(r).astype(np.float32)[None, :] * r
    radius = np.sqrt(fx * fx + fy * fy)
    centre, width = 0.5 * (lo + hi), max(0.5 * (hi - lo), 0.5)
    gain = np.exp(-0.5 * ((radius - centre) / width) ** 2).astype(np.float32)
    gain[0, 0] = 0.0
    out = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(r, r)).astype(np.float32)
    std = float(out.std())
    return out / std if std > 0 else out


def _streak_noise(rng: np.random.Generator, resolution: int, across_cycles: float, along_cycles: float) -> np.ndarray:
    """(R, R) float32 unit-variance noise of horizontal streaks: fine across rows (v), coarse along u."""
    r = int(resolution)
    white = rng.standard_normal((r, r), dtype=np.float32)
    fy = np.abs(np.fft.fftfreq(r).astype(np.float32)[:, None] * r)
    fx = np.fft.rfftfreq(r).astype(np.float32)[None, :] * r
    across = min(float(across_cycles), 0.45 * r)
    gain = (np.exp(-0.5 * ((fy - across) / (0.5 * across)) ** 2)
            * np.exp(-0.5 * (fx / max(float(along_cycles), 1.0)) ** 2)).astype(np.float32)
    gain[0, 0] = 0.0
    out = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(r, r)).astype(np.float32)
    std = float(out.std())
    return out / std if std > 0 else out


def _upsample(image: np.ndarray, resolution: int) -> np.ndarray:
    """(h, w) -> (R, R) bilinear with texel-centre alignment (edge clamped)."""
    h, w = image.shape
    if h == resolution and w == resolution:
        return image.astype(np.float32)
    ys = np.clip((np.arange(resolution) + 0.5) * h / resolution - 0.5, 0, h - 1)
    xs = np.clip((np.arange(resolution) + 0.5) * w / resolution - 0.5, 0, w - 1)
    y0 = np.minimum(ys.astype(np.int64), h - 2 if h > 1 else 0)
    x0 = np.minimum(xs.astype(np.int64), w - 2 if w > 1 else 0)
    fy = (ys - y0).astype(np.float32)[:, None]
    fx = (xs - x0).astype(np.float32)[None, :]
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _low_noise(rng: np.random.Generator, resolution: int, cycles_low: float, cycles_high: float) -> np.ndarray:
    """Band noise for smooth fields: made at a small size and upsampled (same look, far cheaper at 4K)."""
    size = int(min(resolution, max(64, 2 ** int(np.ceil(np.log2(8 * cycles_high))))))
    return _upsample(band_noise(rng, size, cycles_low, cycles_high), resolution)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


# ---------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class SkinRegions:
    """Where lips and brows are, in absolute UV coordinates (tile included, e.g. u in [0, 1) for 1001).

    lip_outline: (N, 2) closed polygon of the outer lip border.
    brow_lines: (M, 2) polylines along each eyebrow, medial to lateral.
    brow_width_cm: full eyebrow height across the line.
    freckle_centres: (K, 2) UVs around which freckles concentrate (cheeks, nose bridge).
    """

    lip_outline: np.ndarray
    brow_lines: tuple[np.ndarray, ...]
    freckle_centres: np.ndarray
    brow_width_cm: float = 1.1


def _polyline_distance(points: np.ndarray, polyline: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) points, (N, 2) polyline -> (P,) distance to it and (P,) arc-length parameter in [0, 1]."""
    starts = polyline
    ends = np.roll(polyline, -1, axis=0)
    if not closed:
        starts, ends = starts[:-1], ends[:-1]
    seg = ends - starts
    seg_len = np.maximum(np.hypot(seg[:, 0], seg[:, 1]), 1e-12)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    best = np.full(len(points), np.inf)
    param = np.zeros(len(points))
    for i in range(len(starts)):
        t = np.clip(((points - starts[i]) @ seg[i]) / seg_len[i] ** 2, 0.0, 1.0)
        offset = points - (starts[i] + t[:, None] * seg[i])
        d = np.hypot(offset[:, 0], offset[:, 1])
        closer = d < best
        best = np.where(closer, d, best)
        param = np.where(closer, (cum[i] + t * seg_len[i]) / cum[-1], param)
    return best, param


def _smooth_closed_curve(points: np.ndarray, samples_per_segment: int = 8) -> np.ndarray:
    """Closed Catmull-Rom spline through (N, 2) points -> (N * samples, 2): landmark polygons get round."""
    p0, p1 = np.roll(points, 1, axis=0), points
    p2, p3 = np.roll(points, -1, axis=0), np.roll(points, -2, axis=0)
    t = (np.arange(samples_per_segment) / samples_per_segment)[None, :, None]
    curve = 0.5 * (2 * p1[:, None] + (p2 - p0)[:, None] * t + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t ** 2
                   + (3 * p1 - p0 - 3 * p2 + p3)[:, None] * t ** 3)
    return curve.reshape(-1, 2)


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon, vectorised over points."""
    inside = np.zeros(len(points), dtype=bool)
    x, y = points[:, 0], points[:, 1]
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def group_vertex_uvs(mesh: FaceMesh, group: str) -> np.ndarray:
    """(V, 2) float64 UV of each vertex on material group ``group``'s faces; NaN for vertices not on it
    (a vertex on a UV seam inside the group keeps one of its UVs)."""
    mask = mesh.group_face_mask((group,))
    corners = np.repeat(mask, mesh.face_vertex_counts)
    out = np.full((mesh.n_vertices, 2), np.nan, dtype=np.float64)
    out[mesh.face_vertex_indices[corners]] = mesh.uvs[mesh.face_uv_indices[corners]]
    return out


def region_masks(regions: SkinRegions | None, udim: int, resolution: int, cm_per_uv: float) -> dict[str, np.ndarray]:
    """Soft (R, R) float32 masks in [0, 1] of ``lips``, ``brows`` (with ``brow_param`` 0 medial .. 1 lateral)
    and ``freckles`` (density) for one tile. Computed at <= 256^2 and upsampled: they are smooth."""
    size = min(resolution, 256)
    zeros = np.zeros((resolution, resolution), dtype=np.float32)
    if regions is None:
        return {"lips": zeros, "brows": zeros, "brow_param": zeros, "freckles": zeros}
    u0, v0 = (udim - 1001) % 10, (udim - 1001) // 10
    centres = (np.arange(size) + 0.5) / size
    uu, vv = np.meshgrid(u0 + centres, v0 + 1.0 - centres)
    pts = np.stack([uu.ravel(), vv.ravel()], axis=1)
    cm = float(cm_per_uv)

    def on_tile(poly: np.ndarray) -> bool:
        c = np.asarray(poly, dtype=np.float64).mean(0)
        return int(np.floor(c[0])) == u0 and int(np.floor(c[1])) == v0

    def near(poly: np.ndarray, margin_cm: float) -> np.ndarray:
        """Indices of the points within ``margin_cm`` of the polyline's bounding box (the only ones it touches)."""
        lo, hi = poly.min(0) - margin_cm / cm, poly.max(0) + margin_cm / cm
        return np.flatnonzero(((pts >= lo) & (pts <= hi)).all(1))

    lips = np.zeros(len(pts), dtype=np.float32)
    outline = np.asarray(regions.lip_outline, dtype=np.float64)
    if len(outline) >= 3 and on_tile(outline):
        outline = _smooth_closed_curve(outline)
        sel = near(outline, 0.2)
        dist, _ = _polyline_distance(pts[sel], outline, closed=True)
        signed = np.where(_inside_polygon(pts[sel], outline), -dist, dist) * cm  # cm, negative inside
        lips[sel] = 1.0 - _smoothstep(-0.12, 0.12, signed)
    brows = np.zeros(len(pts), dtype=np.float32)
    brow_param = np.zeros(len(pts), dtype=np.float32)
    for line in regions.brow_lines:
        line = np.asarray(line, dtype=np.float64)
        if len(line) < 2 or not on_tile(line):
            continue
        sel = near(line, 0.7 * regions.brow_width_cm)
        dist, t = _polyline_distance(pts[sel], line, closed=False)
        half = 0.5 * regions.brow_width_cm * (1.0 - 0.55 * t)  # brows taper laterally
        m = 1.0 - _smoothstep(0.6, 1.15, dist * cm / half)
        take = m > brows[sel]
        brows[sel] = np.where(take, m, brows[sel])
        brow_param[sel] = np.where(take, t, brow_param[sel])
    freckles = np.zeros(len(pts), dtype=np.float32)
    for c in np.asarray(regions.freckle_centres, dtype=np.float64).reshape(-1, 2):
        if int(np.floor(c[0])) != u0 or int(np.floor(c[1])) != v0:
            continue
        d2 = ((pts - c) ** 2).sum(1) * cm * cm
        freckles = np.maximum(freckles, np.exp(-d2 / (2 * 2.8 ** 2)).astype(np.float32))
    out = {}
    for name, m in (("lips", lips), ("brows", brows), ("brow_param", brow_param), ("freckles", freckles)):
        out[name] = _upsample(m.reshape(size, size).astype(np.float32), resolution)
    return out


# ---------------------------------------------------------------------------- skin look
@dataclass(frozen=True)
class SkinParams:
    """An identity's skin, all in [0, 1] unless noted.

    melanin: epidermal melanin (0.05 very fair .. 1 very dark). haemoglobin: dermal blood (0.1 pale .. 0.6
    flushed). freckles: freckle amount. pores: pore depth/visibility. fine_lines: fine-line depth.
    oiliness: shine of the T-zone. age: in [0, 1], deepens wrinkles and lines and lengthens their spacing.
    """

    melanin: float = 0.25
    haemoglobin: float = 0.3
    freckles: float = 0.2
    pores: float = 0.5
    fine_lines: float = 0.3
    oiliness: float = 0.4
    age: float = 0.3


def random_skin_params(seed: int) -> SkinParams:
    """Skin parameters drawn from ``seed``: tones from very fair to very dark, freckles mostly on fair skin."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5C1])))
    melanin = 0.05 + 0.9 * rng.beta(1.3, 2.0)
    return SkinParams(
        melanin=float(melanin),
        haemoglobin=float(rng.uniform(0.2, 0.45)),
        freckles=float(rng.beta(0.8, 3.0) * (1.0 - melanin)),
        pores=float(rng.uniform(0.2, 0.9)),
        fine_lines=float(rng.uniform(0.1, 0.7)),
        oiliness=float(rng.uniform(0.1, 0.8)),
        age=float(rng.uniform(0.0, 1.0)),
    )


@dataclass
class SkinTile:
    """Everything about one identity's skin on one UDIM tile that does not depend on the expression.

    Maps are (R, R) float32. Heights are in cm (negative = into the skin). ``g0`` is the neutral metric
    per texel (R, R, 3). ``wrinkle_cycles`` is the fold frequency in cycles per tile along UV.
    """

    udim: int
    resolution: int
    texel_cm: float
    melanin: np.ndarray
    haemoglobin: np.ndarray
    pore: np.ndarray
    pore_height: np.ndarray
    line_height: np.ndarray
    specular: np.ndarray
    roughness: np.ndarray
    hair: np.ndarray
    lips: np.ndarray
    wrinkle_phase: np.ndarray
    wrinkle_gain: np.ndarray
    wrinkle_cycles: float
    wrinkle_depth_cm: float
    bin_phases: np.ndarray
    g0: np.ndarray


def build_skin_tile(params: SkinParams, seed: int, udim: int, resolution: int, cm_per_uv: float,
                    g0: np.ndarray, regions: SkinRegions | None = None) -> SkinTile:
    """Neutral skin layers of one tile for an identity.

    cm_per_uv: typical surface length of one UV unit on this tile (sets physical feature sizes).
    g0: (R, R, 3) packed neutral metric per texel (see ``SkinLayout.texel_metrics``). Tile 1001 is taken
    to be the face (T-zone shine, denser freckles), as in both of our templates.
    """
    res = int(resolution)
    if not MIN_RESOLUTION <= res <= MAX_RESOLUTION:
        raise ExpDiffInputError(None, f"skin map resolution {res} outside {MIN_RESOLUTION}..{MAX_RESOLUTION}")
    cm = float(cm_per_uv)
    texel_cm = cm / res
    masks = region_masks(regions, udim, res, cm)
    lips, brows, freckle_density = masks["lips"], masks["brows"], masks["freckles"]
    face_tile = udim == 1001

    def cycles(wavelength_cm: float) -> float:
        return cm / wavelength_cm

    def relief_amplitude(wavelength_cm: float, slope: float) -> tuple[float, float]:
        """(depth cm, cycles per tile) of a relief of the given wavelength and peak slope. Below 4 texels a
        pattern is widened to 4 texels and its slope reduced, as a filtered (mip-mapped) texture would be."""
        period = max(wavelength_cm, _MIN_PERIOD_TEXELS * texel_cm)
        fidelity = wavelength_cm / period
        return slope * (0.3 + 0.7 * fidelity) * period / (2 * np.pi), cm / period

    # chromophores: gentle blotches and mottling of melanin and blood, freckle spots, redder lips
    mel_var = (0.6 * _low_noise(_rng(seed, udim, "melanin"), res, 2.0, cycles(5.0))
               + 0.4 * _low_noise(_rng(seed, udim, "melanin2"), res, cycles(2.0), cycles(1.0)))
    hb_var = (0.6 * _low_noise(_rng(seed, udim, "haem"), res, 2.0, cycles(4.0))
              + 0.4 * _low_noise(_rng(seed, udim, "haem2"), res, cycles(1.5), cycles(0.8)))
    melanin = params.melanin * (1.0 + 0.07 * mel_var)
    haemoglobin = params.haemoglobin * (1.0 + 0.15 * hb_var)
    if params.freckles > 0:
        spots = band_noise(_rng(seed, udim, "freckle"), res, cycles(0.6), cycles(0.35))
        density = (0.35 + 0.65 * freckle_density) if face_tile else np.full_like(spots, 0.25)
        threshold = 2.6 - 1.2 * params.freckles * density
        freckle = _smoothstep(0.0, 0.6, spots - threshold)
        melanin = melanin + freckle * (0.25 + 0.6 * params.melanin) * params.freckles
    haemoglobin = haemoglobin * (1.0 + 1.6 * lips)
    melanin = melanin * (1.0 + 0.25 * lips)

    # micro relief: pores (pits) and a fine crease network, both band-limited to the resolution
    pore_depth, pore_cycles = relief_amplitude(0.05, 0.25 + 0.45 * params.pores)
    pore_noise = band_noise(_rng(seed, udim, "pores"), res, 0.7 * pore_cycles, 1.2 * pore_cycles)
    pore = _smoothstep(0.7, 1.9, pore_noise) * (1.0 - lips) * (1.0 - brows)
    pore_height = -pore_depth * pore
    line_depth, line_cycles = relief_amplitude(0.25, (0.12 + 0.35 * params.fine_lines) * (0.6 + 0.8 * params.age))
    line_noise = band_noise(_rng(seed, udim, "lines"), res, 0.6 * line_cycles, 1.3 * line_cycles)
    ridges = (1.0 - np.abs(np.tanh(line_noise))) ** 6
    line_height = -line_depth * ridges * (1.0 - 0.7 * lips)

    # brow hair: dark strokes along the brow (noise stretched along u, where brows run in a face UV layout)
    hair_noise = _streak_noise(_rng(seed, udim, "hair"), res, across_cycles=cycles(0.06), along_cycles=cycles(0.5))
    hair = np.clip(brows * (0.85 + 0.35 * np.tanh(hair_noise)), 0.0, 1.0).astype(np.float32)

    # shine: oily T-zone (middle of the face tile), moist lips, matte brows
    spec_noise = _low_noise(_rng(seed, udim, "spec"), res, 2.0, cycles(3.0))
    centres = (np.arange(res, dtype=np.float32) + 0.5) / res
    if face_tile:
        tzone = np.exp(-((centres[None, :] - 0.5) ** 2) / (2 * 0.09 ** 2)) * np.ones((res, 1), np.float32)
    else:
        tzone = np.zeros((res, res), np.float32)
    specular = (0.032 + 0.004 * spec_noise + 0.012 * params.oiliness * tzone + 0.018 * lips
                - 0.022 * hair - 0.006 * pore)
    roughness = (0.55 + 0.04 * spec_noise - 0.15 * params.oiliness * tzone - 0.18 * lips + 0.25 * hair
                 + 0.05 * pore)

    # folds: one pattern per orientation bin, phase-jittered so folds meander and break up
    wavelength = 0.45 + 0.35 * params.age  # cm between folds
    wrinkle_depth, wrinkle_cycles = relief_amplitude(wavelength, 0.35 + 0.3 * params.age)
    wrinkle_phase = 2.2 * _low_noise(_rng(seed, udim, "wphase"), res, 1.0, cycles(3.0))
    wrinkle_gain = 0.65 + 0.35 * np.tanh(_low_noise(_rng(seed, udim, "wgain"), res, 1.0, cycles(2.5)))
    bin_phases = _rng(seed, udim, "wbins").uniform(0, 2 * np.pi, _WRINKLE_ORIENTATIONS).astype(np.float32)

    return SkinTile(
        udim=udim, resolution=res, texel_cm=texel_cm,
        melanin=np.clip(melanin, 0.0, 1.5).astype(np.float32),
        haemoglobin=np.clip(haemoglobin, 0.0, 2.0).astype(np.float32),
        pore=pore.astype(np.float32), pore_height=pore_height.astype(np.float32),
        line_height=line_height.astype(np.float32),
        specular=np.clip(specular, 0.0, 1.0).astype(np.float32),
        roughness=np.clip(roughness, 0.05, 1.0).astype(np.float32),
        hair=hair, lips=lips.astype(np.float32),
        wrinkle_phase=wrinkle_phase.astype(np.float32), wrinkle_gain=wrinkle_gain.astype(np.float32),
        wrinkle_cycles=float(wrinkle_cycles), wrinkle_depth_cm=float(wrinkle_depth), bin_phases=bin_phases,
        g0=np.asarray(g0, dtype=np.float32),
    )


def _albedo(melanin: np.ndarray, haemoglobin: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """(R, R) concentrations -> (3, R, R) linear albedo (Beer-Lambert through two chromophore layers)."""
    optical = (melanin[None] * _MELANIN_ABSORPTION[:, None, None]
               + haemoglobin[None] * _HAEMOGLOBIN_ABSORPTION[:, None, None])
    skin = _DERMIS_ALBEDO[:, None, None] * np.exp(-optical)
    return skin * (1.0 - hair[None]) + _HAIR_ALBEDO[:, None, None] * hair[None]


def _fold_valleys(tile: SkinTile, direction: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(R, R) fold-valley depth in [0, 1] for the local compression ``direction`` (R, R, 2) (unit, UV),
    evaluated on the ``active`` (R, R) texels only (0 elsewhere).

    Folds run across the compression direction: their crests are level lines of a phase whose UV
    gradient is the neutral metric applied to the direction (``G0 d``), i.e. surface-orthogonal to it.
    """
    out = np.zeros(active.shape, dtype=np.float32)
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return out
    g = tile.g0.reshape(-1, 3)[idx]
    d = direction.reshape(-1, 2)[idx]
    ku = g[:, 0] * d[:, 0] + g[:, 1] * d[:, 1]
    kv = g[:, 1] * d[:, 0] + g[:, 2] * d[:, 1]
    angle = np.mod(np.arctan2(kv, ku), np.pi)  # folds are axial: theta and theta + pi are the same folds
    pos = angle / np.float32(np.pi / _WRINKLE_ORIENTATIONS)
    j0 = np.floor(pos).astype(np.int64) % _WRINKLE_ORIENTATIONS
    w1 = (pos - np.floor(pos)).astype(np.float32)
    j1 = (j0 + 1) % _WRINKLE_ORIENTATIONS
    theta = np.arange(_WRINKLE_ORIENTATIONS) * (np.pi / _WRINKLE_ORIENTATIONS)
    cos_t, sin_t = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    res = tile.resolution
    u = ((idx % res) + 0.5).astype(np.float32) / res  # texel centres, tile-local (uv.raster convention)
    v = 1.0 - ((idx // res) + 0.5).astype(np.float32) / res
    jitter = tile.wrinkle_phase.ravel()[idx]
    omega = np.float32(2.0 * np.pi * tile.wrinkle_cycles)

    def pattern(j: np.ndarray) -> np.ndarray:
        phase = omega * (cos_t[j] * u + sin_t[j] * v) + jitter + tile.bin_phases[j]
        return (0.5 + 0.5 * np.cos(phase)) ** 4  # narrow valleys, broad flat ridges

    out.ravel()[idx] = (1.0 - w1) * pattern(j0) + w1 * pattern(j1)
    return out


def _normal_from_height(height: np.ndarray, texel_cm: float) -> np.ndarray:
    """(R, R) height in cm -> (3, R, R) tangent-space normal encoded in [0, 1] (+X = +U, +Y = +V)."""
    dh_dcol = np.gradient(height, axis=1) / texel_cm
    dh_drow = np.gradient(height, axis=0) / texel_cm
    nx, ny = -dh_dcol, dh_drow  # rows run toward -V, so dh/dv = -dh/drow
    inv = 1.0 / np.sqrt(nx * nx + ny * ny + 1.0)
    return (0.5 + 0.5 * np.stack([nx * inv, ny * inv, inv], axis=0)).astype(np.float32)


def skin_maps(tile: SkinTile, strain: Strain | None = None) -> dict[str, np.ndarray]:
    """BRDF maps of one tile: the neutral when ``strain`` is None, else deformed by the per-texel strain.

    strain: a Strain of shape (R, R) (see ``texel_strain``). Returns {kind: (C, R, R) float32}.
    """
    melanin, haemoglobin = tile.melanin, tile.haemoglobin
    height = tile.pore_height + tile.line_height
    specular, roughness = tile.specular, tile.roughness
    darkening = np.zeros_like(height)
    if strain is not None:
        compression = strain.compression
        stretch = np.clip(strain.area_ratio - 1.0, 0.0, None)
        # Post-buckling: fold amplitude grows as the square root of the compressive strain beyond onset
        # (A ~ wavelength / pi * sqrt(strain)); it saturates at 25% compression. Lips fold less deeply.
        folding = (np.sqrt(np.clip((compression - 0.002) / 0.25, 0.0, 1.0))
                   * tile.wrinkle_gain * (1.0 - 0.4 * tile.lips)).astype(np.float32)
        valleys = _fold_valleys(tile, strain.direction, folding > 0) * folding
        # Skin is taut where its area grows and no direction is compressed; stretched one way while
        # squeezed the other (a blinking lid, a pressed lip) it buckles instead.
        taut = _smoothstep(0.0, 0.25, stretch) * (1.0 - _smoothstep(0.0, 0.08, compression))
        pooled = _smoothstep(0.0, 0.30, compression)
        height = (tile.pore_height * (1.0 - 0.7 * taut)
                  + tile.line_height * (1.0 + 3.0 * np.minimum(compression, 0.5)) * (1.0 - 0.4 * taut)
                  - tile.wrinkle_depth_cm * valleys)
        # Blanching drains blood and thins the stretched epidermis: lighter overall, less red (draining
        # haemoglobin alone would tint the skin yellow-green).
        haemoglobin = haemoglobin * (1.0 + 0.9 * pooled - 0.3 * taut)
        melanin = melanin * (1.0 - 0.2 * taut)
        darkening = 0.22 * valleys + 0.05 * tile.pore * (1.0 - taut)
        specular = specular * (1.0 - 0.45 * valleys) * (1.0 + 0.25 * taut)
        roughness = roughness + 0.12 * folding + 0.10 * valleys - 0.08 * taut
    else:
        darkening = 0.05 * tile.pore
    albedo = _albedo(melanin, haemoglobin, tile.hair) * (1.0 - darkening[None])
    return {
        "albedo": np.clip(albedo, 0.0, 1.0).astype(np.float32),
        "specular": np.clip(specular, 0.0, 1.0)[None].astype(np.float32),
        "roughness": np.clip(roughness, 0.0, 1.0)[None].astype(np.float32),
        "normal": _normal_from_height(height.astype(np.float32), tile.texel_cm),
    }


def normal_detail_energy(normal: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """(3, H, W) encoded normal map -> (H, W) local energy of its high frequencies.

    The tangential components minus their Gaussian blur (``sigma`` texels), squared and pooled over the
    same ``sigma``: folds, pores and fine lines raise it, a smooth surface keeps it near 0.
    """
    from scipy.ndimage import gaussian_filter

    tangential = 2.0 * np.asarray(normal[:2], dtype=np.float32) - 1.0
    high = tangential - np.stack([gaussian_filter(c, sigma, mode="nearest") for c in tangential])
    return gaussian_filter((high * high).sum(0), sigma, mode="nearest").astype(np.float32)


# ---------------------------------------------------------------------------- per-texel strain
def texel_strain(metric_neutral: np.ndarray, metric_expression: np.ndarray) -> Strain:
    """Per-texel strain from two (R, R, 3) packed metric maps."""
    return principal_stretches(metric_neutral, metric_expression)


class SkinLayout:
    """What the strain computation needs from a template and its skin rasters, precomputed once.

    Depends only on topology, UVs and rasters, so one layout serves every identity on the template:
    inverse UV edge matrices of the skin triangles, the sparse UV-corner averaging matrix (UV-area
    weights), and per tile the UV corners and barycentrics every texel takes its value from (after
    dilation): 24 bytes per texel, 400 MB per 4096^2 tile.
    """

    def __init__(self, template: FaceMesh, rasters: Mapping[int, UVRaster]):
        from scipy import sparse

        if not rasters:
            raise ExpDiffInputError(template.name, "no skin UV tiles to synthesise maps on")
        self.rasters = dict(sorted(rasters.items()))
        tri = template.triangulated()
        self.n_vertices = template.n_vertices
        self.uvs = template.uvs
        self.tile_triangles = {u: r.tile_triangles for u, r in self.rasters.items()}
        self.skin_triangles = np.unique(np.concatenate(list(self.tile_triangles.values())))
        self.faces = tri.faces[self.skin_triangles]
        self.uv_faces = tri.uv_faces[self.skin_triangles]
        t = template.uvs.astype(np.float64)[self.uv_faces]
        uv_edges = np.stack([t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]], axis=-1)  # (T, 2, 2) columns = edges
        det = uv_edges[:, 0, 0] * uv_edges[:, 1, 1] - uv_edges[:, 0, 1] * uv_edges[:, 1, 0]
        ok = np.abs(det) > 1e-14
        safe = np.where(ok, det, 1.0)
        inv = np.stack([np.stack([uv_edges[:, 1, 1], -uv_edges[:, 0, 1]], -1),
                        np.stack([-uv_edges[:, 1, 0], uv_edges[:, 0, 0]], -1)], axis=1) / safe[:, None, None]
        self.inv_uv_edges = np.where(ok[:, None, None], inv, 0.0)
        area = 0.5 * np.abs(det)
        n_uvs = len(template.uvs)
        rows = self.uv_faces.ravel()
        cols = np.repeat(np.arange(len(self.uv_faces)), 3)
        weights = np.repeat(area, 3)
        total = np.bincount(rows, weights=weights, minlength=n_uvs)
        norm = np.where(total > 0, total, 1.0)
        self.corner_average = sparse.csr_matrix((weights / norm[rows], (rows, cols)),
                                                shape=(n_uvs, len(self.uv_faces)))
        # local triangle index of each skin triangle in self.faces
        local = np.full(len(tri.faces), -1, dtype=np.int64)
        local[self.skin_triangles] = np.arange(len(self.skin_triangles))
        self.texel_corners: dict[int, np.ndarray] = {}
        self.texel_barycentric: dict[int, np.ndarray] = {}
        for udim, r in self.rasters.items():
            if r.resolution[0] != r.resolution[1]:
                raise ExpDiffInputError(template.name, f"tile {udim} raster is {r.resolution}; skin maps need square tiles")
            if r.dilation is not None or (r.fill_source < 0).any():
                raise ExpDiffInputError(template.name, "skin rasters must fill every texel (dilation None)")
            src = r.fill_source.ravel()
            self.texel_corners[udim] = self.uv_faces[local[r.face_index.ravel()[src]]].astype(np.int32)
            self.texel_barycentric[udim] = r.barycentric.reshape(-1, 3)[src]

    def triangle_metrics(self, vertices: np.ndarray) -> np.ndarray:
        """(T, 3) packed metrics of the skin triangles for ``vertices`` (V, 3): ``G = A^T (E^T E) A`` with
        E the 3D edge matrix and A the inverse UV edge matrix (the Jacobian is ``J = E A``)."""
        p = np.asarray(vertices, dtype=np.float64)[self.faces]
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        m11, m12, m22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
        a = self.inv_uv_edges
        a11, a12, a21, a22 = a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]
        g_uu = a11 * (m11 * a11 + m12 * a21) + a21 * (m12 * a11 + m22 * a21)
        g_uv = a11 * (m11 * a12 + m12 * a22) + a21 * (m12 * a12 + m22 * a22)
        g_vv = a12 * (m11 * a12 + m12 * a22) + a22 * (m12 * a12 + m22 * a22)
        return np.stack([g_uu, g_uv, g_vv], axis=1)

    def corner_metrics(self, vertices: np.ndarray) -> np.ndarray:
        """(N_uv, 3) packed metrics averaged onto UV corners (UV-area weighted)."""
        return self.corner_average @ self.triangle_metrics(vertices)

    def texel_metrics(self, udim: int, corner_metrics: np.ndarray) -> np.ndarray:
        """(R, R, 3) float32 packed metric per texel of tile ``udim``, interpolated barycentrically."""
        res = self.rasters[udim].resolution[0]
        corners = self.texel_corners[udim]  # (R*R, 3) UV corner ids
        values = corner_metrics.astype(np.float32)
        bary = self.texel_barycentric[udim]
        out = bary[:, 0:1] * values[corners[:, 0]]
        out += bary[:, 1:2] * values[corners[:, 1]]
        out += bary[:, 2:3] * values[corners[:, 2]]
        return out.reshape(res, res, 3)

    def cm_per_uv(self, udim: int, vertices: np.ndarray) -> float:
        """Median surface length (cm) per UV unit over the tile's triangles (fourth root of det G)."""
        local = np.searchsorted(self.skin_triangles, self.tile_triangles[udim])
        g = self.triangle_metrics(vertices)[local]
        det = g[:, 0] * g[:, 2] - g[:, 1] ** 2
        return float(np.median(np.sqrt(np.sqrt(det[det > 0]))))


class SkinSynthesizer:
    """One identity's skin over the skin tiles of a template: neutral maps, and maps for any expression.

    neutral: the identity's neutral FaceMesh (positions in cm). rasters: {udim: UVRaster} of the skin groups
    (dilation None, so every texel carries a value). layout: a SkinLayout of the same template and rasters
    to share between identities (built here if None). The neutral layers are built once here; an
    expression then costs one metric interpolation per tile and elementwise work.
    """

    def __init__(self, neutral: FaceMesh, rasters: Mapping[int, UVRaster], params: SkinParams, seed: int,
                 regions: SkinRegions | None = None, layout: SkinLayout | None = None):
        self.layout = layout or SkinLayout(neutral, rasters)
        if self.layout.n_vertices != neutral.n_vertices or sorted(self.layout.rasters) != sorted(rasters):
            raise ExpDiffInputError(neutral.name, "skin layout was built for another template or tiles")
        self.neutral = neutral
        self.rasters = self.layout.rasters
        corner_g0 = self.layout.corner_metrics(neutral.vertices)
        self.tiles: dict[int, SkinTile] = {}
        for udim in self.rasters:
            g0 = self.layout.texel_metrics(udim, corner_g0)
            self.tiles[udim] = build_skin_tile(params, seed, udim, self.rasters[udim].resolution[0],
                                               self.cm_per_uv(udim), g0, regions)

    def cm_per_uv(self, udim: int) -> float:
        """Median surface length (cm) per UV unit of the neutral on tile ``udim``."""
        return self.layout.cm_per_uv(udim, self.neutral.vertices)

    def strain(self, vertices: np.ndarray) -> dict[int, Strain]:
        """Per-texel strain {udim: Strain (R, R)} of expression ``vertices`` (V, 3) against the neutral."""
        corner_g1 = self.layout.corner_metrics(vertices)
        return {u: texel_strain(self.tiles[u].g0, self.layout.texel_metrics(u, corner_g1)) for u in self.rasters}

    def maps(self, vertices: np.ndarray | None = None) -> dict[str, dict[int, np.ndarray]]:
        """{kind: {udim: (C, R, R) float32}} for expression ``vertices`` (V, 3), or the neutral if None."""
        corner_g1 = None if vertices is None else self.layout.corner_metrics(vertices)
        out: dict[str, dict[int, np.ndarray]] = {k: {} for k in MAP_KINDS}
        for udim, tile in self.tiles.items():
            # one tile's strain at a time: at 4096^2 each tile's strain alone is ~270 MB
            strain = None if corner_g1 is None else texel_strain(tile.g0, self.layout.texel_metrics(udim, corner_g1))
            maps = skin_maps(tile, strain)
            for kind in MAP_KINDS:
                out[kind][udim] = maps[kind]
        return out
