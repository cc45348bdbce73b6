"""Our procedural template head: topology, UV layout, chart coordinates, regions and landmarks.

The head is one structured quad grid over a spherical chart seen from a point inside the skull, the ray
origin ``RAY_ORIGIN``: column ``j`` is an azimuth ``theta`` around the vertical axis (0 looks down +Z, the
face; +pi/2 is +X, the character's left), row ``i`` an elevation ``phi``. A smooth base solid (skull and
face ellipsoids and a neck cylinder, blended) is hit by a ray per vertex; facial features (orbits, lids over
the eyeball, brow ridge, nose, cheekbones, lips, chin, ...) are displacements along the base normal, written
as functions of the *chart coordinates* ``a = K * theta``, ``b = K * phi`` (cm-like, ``K = CHART_SCALE``).
The neck below ``PHI_NECK`` is extruded straight down to ``NECK_BOTTOM_Y``; the crown ends in one pole
vertex (a fan of triangles).

Eyes and mouth are *slits* in the grid: along one row between two corner columns the vertices are doubled
(upper copy for the quads above, lower copy for the quads below; the corners stay shared) and the two copies
are pushed apart in the chart, which opens an almond-shaped hole with single-vertex canthi and mouth corners.

Rows and columns are spaced by arc length (denser on the face, sparser on the scalp and neck), so quads are
near-square. Units: cm, Y up, the face looks down +Z, the character's left is +X, head ~15.5 cm wide.

UV layout: the face (front, from the hairline to under the jaw and to just in front of the ears, plus the
front of the neck) is UDIM 1001 (``u, v`` in [0, 1]); the rest (scalp, back and sides of the head, ears, back
of the neck) is UDIM 1002 (``u`` in [1, 2]). Both islands are topological discs (the face one with eye and
mouth holes), so the only seam is the border between them; each is a least-squares conformal map (LSCM) of
the template surface (angles kept, no flipped triangles, left/right symmetric), scaled uniformly into its
tile with a 2% margin. ``u`` runs along +X on the face; ``v`` runs up. Material groups: ``M_Face`` (1001)
and ``M_BackHead`` (1002).

Everything is deterministic and built once per process (``template()`` is cached).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..io.mesh import FaceMesh

# ----------------------------------------------------------------------------------------- chart constants
RAY_ORIGIN = np.array([0.0, 1.0, -1.5])  # inside the skull, above the neck axis: every ray hits the skin once
CHART_SCALE = 10.5  # cm per radian: a and b are close to x and y - 1 on the front of the face
PHI_NECK = np.deg2rad(-70.0)  # below this elevation the neck is a vertical extrusion
PHI_NECK_END = np.deg2rad(-90.0)  # virtual elevation of the neck's bottom row
NECK_BOTTOM_Y = -17.5
PHI_CROWN = np.deg2rad(85.0)  # last ring before the pole

N_COLUMNS = 116  # around the head (even, mirror-symmetric)
N_HEAD_ROWS = 74  # rows hit by rays, PHI_NECK .. PHI_CROWN
N_NECK_ROWS = 6  # extruded rows below PHI_NECK

# Face island bounds in the chart; the face group is every quad inside.
FACE_THETA = np.deg2rad(76.0)
FACE_PHI_TOP = np.deg2rad(40.0)  # hairline
FACE_PHI_BOTTOM = np.deg2rad(-56.0)  # under the jaw; below it the face island keeps the throat
THROAT_THETA = np.deg2rad(50.0)

# Features in chart coordinates (a, b); a > 0 is the character's left.
EYE_A = 3.5  # centre of the palpebral fissure
EYE_HALF_WIDTH = 1.6
EYE_B = 1.45  # row of the eye slit
EYE_TILT = 0.14  # lateral canthus this much above the slit row, medial this much below
EYE_OPEN_UPPER = 0.58  # how far the upper lid rim sits above the eye line at its peak
EYE_OPEN_LOWER = 0.34
MOUTH_B = -5.75  # row of the mouth slit (stomion)
MOUTH_HALF_WIDTH = 2.5
MOUTH_CURVE = 0.22  # the mouth corners sit this much below the slit row
MOUTH_OPEN = 0.02  # each lip rim's distance from the mouth line at the centre: lips just apart
MOUTH_OPEN_UV = 0.3  # the same in the pose the UV layout is flattened from
NASION_B = 2.0
NOSE_TIP_B = -2.35
SUBNASALE_B = -3.7
EAR_THETA = np.deg2rad(97.0)  # centre of the auricle
EAR_PHI = np.deg2rad(1.0)

# --------------------------------------------------------------------------------------------- shape
@dataclass(frozen=True)
class HeadShape:
    """Geometric parameters of the head generator (cm unless stated); the defaults are the template.

    Identities (``expdiff_core.synth.identity``) are other values of these, on the same topology.
    """

    cranium_radii: tuple[float, float, float] = (7.5, 9.3, 9.7)
    cranium_center: tuple[float, float, float] = (0.0, 3.0, -1.2)
    face_radii: tuple[float, float, float] = (6.3, 8.0, 7.6)
    face_center: tuple[float, float, float] = (0.0, -2.75, 1.8)
    jaw_taper: float = 0.80  # x scale of the face solid at the jaw line relative to the cheeks
    neck_radii: tuple[float, float] = (5.3, 5.7)
    neck_center_z: float = -1.8
    blend: float = 2.0  # smooth-union radius between skull, face and neck
    nose_projection: float = 1.6  # dorsum height above the face at the tip region
    nose_width: float = 1.0  # scale of nose and alae width
    nose_length: float = 0.0  # cm the tip and columella move down (+) or up (-)
    brow_ridge: float = 0.5
    cheekbone: float = 0.5
    cheek_fullness: float = 0.0  # fat-pad bulge of the lower cheeks (0 lean .. 1 full)
    lip_fullness: float = 1.0
    chin: float = 0.55  # chin boss height
    chin_forward: float = 0.0  # cm the chin and jaw front move forward
    eye_depth: float = 1.0  # scale of the orbit depression
    laxity: float = 0.0  # age-related soft-tissue sag (0 young .. 1 old)
    face_width: float = 1.0  # x scale of the whole head


# ------------------------------------------------------------------------------------------- helpers
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (x / sigma) ** 2)


def _gauss2(a: np.ndarray, b: np.ndarray, ca: float, cb: float, sa: float, sb: float) -> np.ndarray:
    return np.exp(-0.5 * (((a - ca) / sa) ** 2 + ((b - cb) / sb) ** 2))


def _smin(d1: np.ndarray, d2: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (d2 - d1) / k, 0.0, 1.0)
    return d2 * (1 - h) + d1 * h - k * h * (1 - h)


def _sd_ellipsoid(q: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid at the origin; q (..., 3)."""
    x, y, z = q[..., 0] / radii[0], q[..., 1] / radii[1], q[..., 2] / radii[2]
    k0 = np.sqrt(x * x + y * y + z * z)
    k1 = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _base_sdf(p: np.ndarray, shape: HeadShape) -> np.ndarray:
    """Signed distance (approx.) to the smooth base solid (skull + face + neck); p (..., 3)."""
    w = shape.face_width
    cran = _sd_ellipsoid(p - np.asarray(shape.cranium_center),
                         np.asarray(shape.cranium_radii) * np.array([w, 1.0, 1.0]))
    fr = np.asarray(shape.face_radii) * np.array([w, 1.0, 1.0])
    q = p - np.asarray(shape.face_center)
    # The mandible narrows toward the chin: shrink x with depth below the cheekbones.
    taper = 1.0 - (1.0 - shape.jaw_taper) * _smoothstep(-1.0, -7.0, q[..., 1])
    qx, qy, qz = q[..., 0] / (fr[0] * taper), q[..., 1] / fr[1], q[..., 2] / fr[2]
    # Squarer than an ellipsoid in the frontal plane: a jaw with corners and a flatter underside.
    k = np.sqrt((np.abs(qx) ** 2.6 + np.abs(qy) ** 2.6) ** (2.0 / 2.6) + qz**2)
    face = (k - 1.0) * fr.mean()
    nx, nz = p[..., 0] / (shape.neck_radii[0] * w), (p[..., 2] - shape.neck_center_z) / shape.neck_radii[1]
    k0 = np.sqrt(nx * nx + nz * nz)
    k1 = np.sqrt((nx / (shape.neck_radii[0] * w)) ** 2 + (nz / shape.neck_radii[1]) ** 2)
    neck = np.maximum(k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), p[..., 1] + 3.0)  # capped inside the head
    # A crisp angle under the jaw at the front, a long smooth nape at the back.
    k_neck = 0.8 + 2.7 * _smoothstep(1.0, -5.0, p[..., 2])
    return _smin(_smin(cran, face, shape.blend), neck, k_neck)


def _ray_hit(directions: np.ndarray, shape: HeadShape) -> tuple[np.ndarray, np.ndarray]:
    """First exit of each ray from RAY_ORIGIN through the base solid: points (N, 3) and unit normals (N, 3)."""
    n = directions.shape[0]
    # The base solid is star-shaped from RAY_ORIGIN and has no thin parts (features are added after), so
    # 0.75 cm steps find the one crossing; bisection then pins it to ~3e-6 cm.
    ts = np.linspace(3.0, 30.0, 37)
    lo = np.full(n, ts[0])
    hi = np.full(n, ts[-1])
    found = np.zeros(n, dtype=bool)
    prev = _base_sdf(RAY_ORIGIN + ts[0] * directions, shape)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        cur = _base_sdf(RAY_ORIGIN + t1 * directions, shape)
        hit = (~found) & (prev < 0) & (cur >= 0)
        lo[hit], hi[hit] = t0, t1
        found |= hit
        prev = cur
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        inside = _base_sdf(RAY_ORIGIN + mid[:, None] * directions, shape) < 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    points = RAY_ORIGIN + (0.5 * (lo + hi))[:, None] * directions
    eps = 1e-3
    grad = np.stack([
        _base_sdf(points + eps * e, shape) - _base_sdf(points - eps * e, shape) for e in np.eye(3)
    ], axis=-1)
    normals = grad / np.linalg.norm(grad, axis=-1, keepdims=True)
    return points, normals


def _directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    c = np.cos(phi)
    return np.stack([c * np.sin(theta), np.sin(phi), c * np.cos(theta)], axis=-1)


def mouth_line(a: np.ndarray) -> np.ndarray:
    """Chart b of the line between the lips at chart a: the slit row, curving down toward the corners."""
    t = np.asarray(a) / MOUTH_HALF_WIDTH
    return MOUTH_B - MOUTH_CURVE * t**2 * np.exp(-0.25 * t**4)


def eye_line(a: np.ndarray) -> np.ndarray:
    """Chart b of the line between the lids at chart a: tilted up toward the lateral canthus."""
    t = (np.abs(a) - EYE_A) / EYE_HALF_WIDTH
    return EYE_B + EYE_TILT * t * np.exp(-((t / 1.6) ** 4))


def _features(a: np.ndarray, b: np.ndarray, shape: HeadShape) -> np.ndarray:
    """Displacement (cm) along the base normal at chart points (a, b): every facial feature."""
    ax = np.abs(a)
    h = np.zeros_like(a)
    nw = shape.nose_width
    el = eye_line(a)
    ml = mouth_line(a)
    # Orbits: the socket around the globe, the lids draped over the eyeball cap, the lid crease.
    h -= 1.2 * shape.eye_depth * _gauss2(ax, b, EYE_A - 0.1, EYE_B + 0.2, 1.75, 1.3)
    rho = np.hypot(ax - EYE_A, (b - EYE_B - 0.05) * 1.05) / 1.5
    h += 0.9 * shape.eye_depth * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0)) * _smoothstep(1.0, 0.6, rho) ** 0.5
    h -= 0.12 * np.exp(-0.5 * ((ax - EYE_A - 0.1) / 1.2) ** 2) * _gauss(b - el - 0.95, 0.15)
    h -= 0.10 * _gauss2(ax, b, EYE_A - 0.6, EYE_B - 1.1, 0.9, 0.3)  # tear trough
    # Brow ridge (arched) and glabella, forehead, temples.
    brow_b = EYE_B + 1.85 + 0.25 * np.exp(-0.5 * ((ax - EYE_A) / 1.6) ** 2)
    h += shape.brow_ridge * np.exp(-0.5 * ((ax - EYE_A + 0.2) / 2.1) ** 2) * _gauss(b - brow_b, 0.6)
    h += 0.6 * shape.brow_ridge * _gauss2(a, b, 0.0, EYE_B + 1.75, 0.9, 0.7)
    h += 0.25 * _gauss2(a, b, 0.0, EYE_B + 4.3, 3.5, 2.0)
    h -= 0.35 * _gauss2(ax, b, 6.8, EYE_B + 1.7, 0.9, 1.5)
    # Nose: dorsum from nasion to tip, widening; tip lobule; alae; nostrils; columella fall-off.
    tip_b = NOSE_TIP_B - shape.nose_length
    sub_b = SUBNASALE_B - 0.8 * shape.nose_length
    r = np.clip((NASION_B - b) / (NASION_B - tip_b), 0.0, 1.4)
    dorsum = (0.4 + shape.nose_projection * r**1.15) * _smoothstep(NASION_B + 1.2, NASION_B - 0.2, b)
    dorsum *= _smoothstep(sub_b - 0.05, tip_b - 0.15, b)
    sigma = nw * (0.5 + 0.4 * np.clip(r, 0.0, 1.0))
    h += dorsum * np.exp(-0.5 * np.abs(a / sigma) ** 2.4)
    h += 0.45 * _gauss2(a, b, 0.0, tip_b + 0.1, 0.7 * nw, 0.6) * _smoothstep(sub_b - 0.1, tip_b - 0.3, b)
    h += 0.85 * _gauss2(ax, b, 1.3 * nw, tip_b - 0.5, 0.5 * nw, 0.45)
    h -= 0.15 * _gauss2(ax, b, 1.9 * nw, tip_b - 0.4, 0.15, 0.5)  # alar crease
    h -= 0.30 * _gauss2(ax, b, 0.62 * nw, sub_b + 0.32, 0.28 * nw, 0.18)  # nostrils
    # Cheekbones, cheek fat pads, infraorbital and nasolabial folds.
    h += shape.cheekbone * _gauss2(ax, b, 4.9, EYE_B - 1.9, 1.4, 1.0)
    h += 0.25 * _gauss2(ax, b, 3.6, EYE_B - 2.6, 1.3, 1.1)
    h += 0.7 * shape.cheek_fullness * _gauss2(ax, b, 4.0, MOUTH_B + 1.8, 1.5, 1.5)
    seg0, seg1 = np.array([2.0 * nw, tip_b - 0.55]), np.array([3.1, MOUTH_B - 0.8])
    d = seg1 - seg0
    t = np.clip(((ax - seg0[0]) * d[0] + (b - seg0[1]) * d[1]) / (d @ d), 0.0, 1.0)
    dist = np.hypot(ax - seg0[0] - t * d[0], b - seg0[1] - t * d[1])
    side = np.sign((ax - seg0[0]) * d[1] - (b - seg0[1]) * d[0])  # + lateral (cheek) side of the fold
    fold = (0.12 + 0.25 * shape.laxity + 0.1 * shape.cheek_fullness) * np.sin(np.pi * t) ** 0.5
    h += fold * (0.9 * np.exp(-0.5 * ((dist - 0.35) / 0.3) ** 2) * (side > 0) - _gauss(dist, 0.18))
    # Upper lip, philtrum, lips, mouth corners, mentolabial sulcus, chin.
    lip = 1.0 - _smoothstep(0.45 * MOUTH_HALF_WIDTH, 1.1 * MOUTH_HALF_WIDTH, ax)
    h += 0.45 * _gauss2(a, b, 0.0, MOUTH_B + 1.0, 3.0, 1.3)
    h -= 0.08 * _gauss2(a, b, 0.0, MOUTH_B + 1.05, 0.22, 0.55)
    # The vermilion thins toward the corners: its height and its distance from the mouth line shrink.
    taper = 0.35 + 0.65 * lip
    bow = ml + 0.42 * taper - 0.07 * _gauss(a, 0.3)
    h += 0.42 * shape.lip_fullness * lip * _gauss(b - bow, 0.22 * taper)
    h += 0.55 * shape.lip_fullness * lip * _gauss(b - (ml - 0.45 * taper), 0.30 * taper)
    h -= 0.08 * lip**0.5 * _gauss(b - ml, 0.1)
    h -= 0.25 * _gauss2(ax, b, MOUTH_HALF_WIDTH + 0.1, MOUTH_B - MOUTH_CURVE, 0.7, 0.6)
    h -= 0.28 * _gauss2(a, b, 0.0, MOUTH_B - 1.45, 1.7, 0.4)
    h += shape.chin * _gauss2(a, b, 0.0, MOUTH_B - 2.6, 1.5, 0.95)
    return h


def _ear(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Auricle as a raised relief (cm along the normal): helix rim, antihelix, concha bowl, lobe."""
    u = 7.6 * (np.abs(theta) - EAR_THETA)  # + toward the back of the head
    v = 7.6 * (phi - EAR_PHI)  # + up
    width = 1.55 - 0.45 * _smoothstep(-1.0, -3.0, v)  # the lobe is narrower
    er = np.hypot((u - 0.1) / width, v / 3.0)
    body = _smoothstep(1.2, 0.8, er)
    h = body * (0.3 + 0.8 * _smoothstep(-1.6, 1.3, u)) * (1.0 - 0.5 * _smoothstep(-1.8, -3.0, v))
    h += 0.3 * np.exp(-(((er - 0.85) / 0.13) ** 2)) * _smoothstep(-1.5, 0.0, u + v)
    h += 0.15 * np.exp(-(((er - 0.55) / 0.13) ** 2)) * _smoothstep(-0.5, 0.5, v + 0.5 * u)
    h -= 0.5 * body * _gauss2(u, v, -0.2, -0.35, 0.75, 0.9)
    return h


def head_surface(theta: np.ndarray, phi: np.ndarray, shape: HeadShape) -> np.ndarray:
    """Skin points (N, 3) float64 at chart angles theta, phi (N,) radians; phi < PHI_NECK is the neck."""
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    points, normals = _ray_hit(_directions(theta, np.maximum(phi, PHI_NECK)), shape)
    neck = phi < PHI_NECK
    if neck.any():
        f = (PHI_NECK - phi[neck]) / (PHI_NECK - PHI_NECK_END)
        points[neck, 1] += f * (NECK_BOTTOM_Y - points[neck, 1])
    a, b = CHART_SCALE * theta, CHART_SCALE * phi
    front = _smoothstep(np.deg2rad(100.0), np.deg2rad(80.0), np.abs(theta)) * (~neck)
    relief = front * _features(a, b, shape) + (~neck) * _ear(theta, phi)
    points += relief[:, None] * normals
    # The chin and jaw front move forward with the lower face.
    jaw = _smoothstep(-2.0, -4.5, b) * _smoothstep(np.deg2rad(70.0), np.deg2rad(20.0), np.abs(theta))
    jaw *= _smoothstep(PHI_NECK, np.deg2rad(-50.0), phi)
    points[:, 2] += shape.chin_forward * jaw
    if shape.laxity > 0:
        points += _laxity_sag(a, b, normals, shape.laxity) * front[:, None]
    return points


def _laxity_sag(a: np.ndarray, b: np.ndarray, normals: np.ndarray, laxity: float) -> np.ndarray:
    """Age sag (N, 3): cheeks and jowls slide down and bulge, lower lids bag, lateral brows droop."""
    ax = np.abs(a)
    cheek = _gauss2(ax, b, 3.8, -3.0, 1.8, 2.0)
    jowl = _gauss2(ax, b, 3.9, MOUTH_B - 2.4, 1.2, 0.9)
    bag = _gauss2(ax, b, EYE_A, EYE_B - 0.8, 1.0, 0.35)
    brow = _gauss2(ax, b, 4.2, 3.6, 1.2, 0.8)
    out = np.zeros(a.shape + (3,))
    out[:, 1] -= laxity * (0.45 * cheek + 0.35 * jowl + 0.25 * brow)
    out += (laxity * (0.35 * jowl + 0.12 * bag))[:, None] * normals
    return out


# ---------------------------------------------------------------------------------- grid spacing
def _equalized(samples: np.ndarray, density: np.ndarray, count: int) -> np.ndarray:
    """``count`` values from sorted ``samples`` spaced evenly in the integral of ``density``."""
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(samples))])
    return np.interp(np.linspace(0.0, cum[-1], count), cum, samples)


def _column_angles(shape: HeadShape) -> np.ndarray:
    """(N_COLUMNS,) ascending azimuths in (-pi, pi], mirror-symmetric, 0 and pi included."""
    half = np.linspace(0.0, np.pi, 721)
    ref = np.deg2rad([-40.0, -28.0, -15.0, -5.0, 10.0, 25.0])
    p = head_surface(np.tile(half, len(ref)), np.repeat(ref, len(half)), shape).reshape(len(ref), -1, 3)
    seg = np.linalg.norm(np.diff(p, axis=1), axis=2) / np.diff(half)
    speed = np.concatenate([seg[:, :1], 0.5 * (seg[:, 1:] + seg[:, :-1]), seg[:, -1:]], axis=1).sum(0)
    face = _smoothstep(np.deg2rad(100.0), np.deg2rad(70.0), half)
    ear = np.exp(-(((half - EAR_THETA) / np.deg2rad(12.0)) ** 4))
    weight = 0.45 + 0.55 * np.maximum(face, 0.85 * ear)
    pos = _equalized(half, speed * weight, N_COLUMNS // 2 + 1)
    for target in (EYE_A - EYE_HALF_WIDTH, EYE_A + EYE_HALF_WIDTH, MOUTH_HALF_WIDTH):
        k = int(np.argmin(np.abs(pos - target / CHART_SCALE)))
        pos[k] = target / CHART_SCALE
    pos[0], pos[-1] = 0.0, np.pi
    return np.concatenate([-pos[1:-1][::-1], pos])


def _row_angles(shape: HeadShape) -> np.ndarray:
    """(N_NECK_ROWS + N_HEAD_ROWS,) ascending elevations, neck (virtual) rows first."""
    phis = np.linspace(PHI_NECK, PHI_CROWN, 961)
    ref = np.deg2rad([0.0, 12.0, 30.0, 55.0, 110.0, 180.0])
    ref_weight = np.array([2.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    p = head_surface(np.repeat(ref, len(phis)), np.tile(phis, len(ref)), shape).reshape(len(ref), -1, 3)
    seg = np.linalg.norm(np.diff(p, axis=1), axis=2) / np.diff(phis)
    speed = ref_weight @ np.concatenate([seg[:, :1], 0.5 * (seg[:, 1:] + seg[:, :-1]), seg[:, -1:]], axis=1)
    weight = 0.4 + 0.6 * _smoothstep(np.deg2rad(-64.0), np.deg2rad(-54.0), phis) * \
        _smoothstep(np.deg2rad(52.0), np.deg2rad(40.0), phis)
    head = _equalized(phis, speed * weight, N_HEAD_ROWS)
    for target in (EYE_B, MOUTH_B):
        k = int(np.argmin(np.abs(head - target / CHART_SCALE)))
        head[k] = target / CHART_SCALE
    neck = np.linspace(PHI_NECK_END, PHI_NECK, N_NECK_ROWS + 1)[:-1]
    return np.concatenate([neck, head])


# ------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Slit:
    """An eye or mouth opening: vertex ids along its rim, ordered by column from corner to corner.

    corners: (2,) ids (medial/lateral for eyes, right/left for the mouth, by ascending column);
    upper, lower: (K,) ids of the rim vertices between the corners, same columns, upper and lower rim.
    """

    corners: np.ndarray
    upper: np.ndarray
    lower: np.ndarray

    @property
    def rim(self) -> np.ndarray:
        """All rim vertex ids: corners, upper and lower rims."""
        return np.concatenate([self.corners, self.upper, self.lower])


@dataclass(frozen=True)
class TemplateLayout:
    """Everything about the template beyond its mesh.

    chart_angles: (V, 2) float64 (theta, phi) of each vertex, after the eye/mouth openings (phi below
    PHI_NECK is the virtual neck coordinate). chart: (V, 2) float32 (a, b) = CHART_SCALE * angles, cm-like.
    grid_row, grid_column: (V,) int32 structured-grid indices (pole: row N_ROWS, column -1).
    mirror: (V,) int32 index of each vertex's mirror image across x = 0.
    slits: ``eye_L``, ``eye_R``, ``mouth``. regions: named vertex index sets; landmarks: named vertex ids.
    """

    mesh: FaceMesh
    chart_angles: np.ndarray
    chart: np.ndarray
    grid_row: np.ndarray
    grid_column: np.ndarray
    mirror: np.ndarray
    slits: dict[str, Slit]
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    landmarks: dict[str, int] = field(default_factory=dict)
    shape: HeadShape = HeadShape()


def _slit_opening(s: np.ndarray, peak: float, skew: float) -> np.ndarray:
    """Almond profile over s in [-1, 1] (corner to corner): 0 at the corners, ``peak`` near the middle."""
    s = np.clip(s + skew * (1.0 - s**2), -1.0, 1.0)
    return peak * np.clip(1.0 - s**2, 0.0, 1.0) ** 0.75


def _open_slits(th: np.ndarray, ph: np.ndarray, rows: np.ndarray, is_upper: np.ndarray, thetas: np.ndarray,
                slit_cols: dict[str, tuple[int, int, int]], mouth_open: float) -> np.ndarray:
    """Chart elevations (V,) with the eye and mouth slits pushed open (upper copies up, lower copies down)."""
    a_v = CHART_SCALE * th
    for name, (i, j0, j1) in slit_cols.items():
        eye = name.startswith("eye")
        ta, tb = thetas[j0], thetas[j1]
        s = (2.0 * th - (ta + tb)) / (tb - ta)
        inside = (s > -1.0) & (s < 1.0)
        lateral = s if name != "eye_R" else -s  # +1 at the lateral canthus
        if eye:
            up = _slit_opening(lateral, EYE_OPEN_UPPER, -0.12)
            low = _slit_opening(lateral, EYE_OPEN_LOWER, 0.15)
            reach = 1.3
        else:
            up = low = _slit_opening(s, mouth_open, 0.0)
            reach = 0.6 + 2.0 * mouth_open
        db = CHART_SCALE * ph - (eye_line(a_v) if eye else mouth_line(a_v))
        above = (rows > i) | ((rows == i) & is_upper)
        below = (rows < i) | ((rows == i) & ~is_upper)
        fall = np.exp(-((db / reach) ** 2))
        shift = np.where(above, up * fall, 0.0) - np.where(below, low * fall, 0.0)
        ph = ph + np.where(inside, shift, 0.0) / CHART_SCALE
    return ph


def _build_layout() -> TemplateLayout:
    shape = HeadShape()
    thetas = _column_angles(shape)
    phis = _row_angles(shape)
    n_cols, n_rows = len(thetas), len(phis)
    j_front = int(np.argmin(np.abs(thetas)))
    j_back = n_cols - 1
    col_mirror = np.where(np.arange(n_cols) == j_back, j_back, 2 * j_front - np.arange(n_cols))

    grid = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    th = np.tile(thetas, n_rows).astype(np.float64)
    ph = np.repeat(phis, n_cols).astype(np.float64)
    rows = np.repeat(np.arange(n_rows), n_cols)
    cols = np.tile(np.arange(n_cols), n_rows)
    upper_of: dict[tuple[int, int], int] = {}
    mirror_list = list((np.repeat(np.arange(n_rows), n_cols) * n_cols + col_mirror[cols]).tolist())
    extra_th, extra_ph, extra_rows, extra_cols = [], [], [], []
    slit_specs = {
        "eye_R": (EYE_B, -(EYE_A + EYE_HALF_WIDTH), -(EYE_A - EYE_HALF_WIDTH)),
        "eye_L": (EYE_B, EYE_A - EYE_HALF_WIDTH, EYE_A + EYE_HALF_WIDTH),
        "mouth": (MOUTH_B, -MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH),
    }
    slit_cols: dict[str, tuple[int, int, int]] = {}
    for name, (b_row, a0, a1) in slit_specs.items():
        i = int(np.argmin(np.abs(phis - b_row / CHART_SCALE)))
        j0 = int(np.argmin(np.abs(thetas - a0 / CHART_SCALE)))
        j1 = int(np.argmin(np.abs(thetas - a1 / CHART_SCALE)))
        slit_cols[name] = (i, j0, j1)
        for j in range(j0 + 1, j1):
            upper_of[(i, j)] = n_rows * n_cols + len(extra_th)
            extra_th.append(thetas[j])
            extra_ph.append(phis[i])
            extra_rows.append(i)
            extra_cols.append(j)
    for i, j in upper_of:
        mirror_list.append(upper_of[(i, int(col_mirror[j]))])
    pole = n_rows * n_cols + len(extra_th)
    mirror_list.append(pole)
    th = np.concatenate([th, extra_th, [0.0]])
    ph = np.concatenate([ph, extra_ph, [np.pi / 2]])
    rows = np.concatenate([rows, extra_rows, [n_rows]]).astype(np.int32)
    cols = np.concatenate([cols, extra_cols, [-1]]).astype(np.int32)
    is_upper = np.zeros(len(th), dtype=bool)
    is_upper[n_rows * n_cols:pole] = True

    # Bend the slit rows onto the curved mouth line and the tilted eye lines (smooth, keeps the grid valid).
    a_v = CHART_SCALE * th
    for line, row_b in ((mouth_line, MOUTH_B), (eye_line, EYE_B)):
        b_v = CHART_SCALE * ph
        ph = ph + (line(a_v) - row_b) * np.exp(-(((b_v - row_b) / 1.2) ** 2)) / CHART_SCALE

    # Open the slits: push the chart apart above and below each slit line, more near the rim. The UV layout
    # is flattened from a pose with parted lips: nearly closed lips curl toward each other, and flattening
    # that fold would overlap the two lips in UV.
    phi_uv = _open_slits(th, ph, rows, is_upper, thetas, slit_cols, MOUTH_OPEN_UV)
    ph = _open_slits(th, ph, rows, is_upper, thetas, slit_cols, MOUTH_OPEN)
    slits: dict[str, Slit] = {}
    for name, (i, j0, j1) in slit_cols.items():
        interior = np.arange(j0 + 1, j1)
        slits[name] = Slit(corners=np.array([grid[i, j0], grid[i, j1]], dtype=np.int64),
                           upper=np.array([upper_of[(i, j)] for j in interior], dtype=np.int64),
                           lower=grid[i, interior].astype(np.int64))

    # Faces: quads between rows/columns (outward: +theta then +phi), a fan to the pole.
    counts, corners, groups = [], [], []
    i_face0 = int(np.searchsorted(phis, FACE_PHI_BOTTOM))
    i_face1 = int(np.searchsorted(phis, FACE_PHI_TOP))
    j_face0 = int(np.searchsorted(thetas, -FACE_THETA))
    j_face1 = int(np.searchsorted(thetas, FACE_THETA))
    j_throat0 = int(np.searchsorted(thetas, -THROAT_THETA))
    j_throat1 = int(np.searchsorted(thetas, THROAT_THETA))
    for i in range(n_rows - 1):
        for j in range(n_cols):
            jn = (j + 1) % n_cols
            quad = [grid[i, j], grid[i, jn], grid[i + 1, jn], grid[i + 1, j]]
            quad[0] = upper_of.get((i, j), quad[0])
            quad[1] = upper_of.get((i, jn), quad[1])
            counts.append(4)
            corners.extend(quad)
            face = (i_face0 <= i < i_face1 and j_face0 <= j < j_face1) or \
                (i < i_face0 and j_throat0 <= j < j_throat1)
            groups.append(0 if face else 1)
    for j in range(n_cols):
        counts.append(3)
        corners.extend([grid[n_rows - 1, j], grid[n_rows - 1, (j + 1) % n_cols], pole])
        groups.append(1)
    counts_a = np.asarray(counts, dtype=np.int32)
    corners_a = np.asarray(corners, dtype=np.int64)
    groups_a = np.asarray(groups, dtype=np.int32)

    vertices = head_surface(th, ph, shape).astype(np.float32)
    uv_pose = head_surface(th, phi_uv, shape).astype(np.float32)
    eye_row = slit_cols["eye_L"][0]
    face_pins = (int(grid[eye_row, j_face0]), int(grid[eye_row, j_face1]))
    face_uv_indices, uvs = _uv_layout(uv_pose, counts_a, corners_a, groups_a, face_pins,
                                      (int(grid[0, j_back]), pole))
    mesh = FaceMesh(vertices, counts_a, corners_a, uvs, face_uv_indices, groups_a,
                    ["M_Face", "M_BackHead"], "cm", "expdiff_template_head")
    angles = np.stack([th, ph], axis=1)
    layout = TemplateLayout(mesh=mesh, chart_angles=angles,
                            chart=(CHART_SCALE * angles).astype(np.float32), grid_row=rows, grid_column=cols,
                            mirror=np.asarray(mirror_list, dtype=np.int32), slits=slits, shape=shape)
    regions, landmarks = _regions(layout)
    return replace(layout, regions=regions, landmarks=landmarks)


# ------------------------------------------------------------------------------------------- UVs
def _triangles(counts: np.ndarray, corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fan triangles (T, 3) of corner positions in the flat index arrays, and their source face (T,)."""
    offsets = np.concatenate([[0], np.cumsum(counts[:-1])])
    n_tris = counts - 2
    face = np.repeat(np.arange(len(counts)), n_tris)
    k = np.arange(n_tris.sum()) - np.repeat(np.cumsum(n_tris) - n_tris, n_tris)
    base = offsets[face]
    return np.stack([base, base + k + 1, base + k + 2], axis=1), face


def lscm(vertices: np.ndarray, triangles: np.ndarray, pins: tuple[int, int]) -> np.ndarray:
    """Least-squares conformal map of a disc-like triangle mesh.

    vertices: (V, 3); triangles: (T, 3) int; pins: two vertex ids fixed at (0, 0) and (1, 0).
    Returns (V, 2) float64 UVs. Vertices not used by any triangle get (0, 0).
    """
    v = np.asarray(vertices, dtype=np.float64)
    p0, p1, p2 = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    x_axis = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
    normal = np.cross(e1, e2)
    area2 = np.linalg.norm(normal, axis=1)
    y_axis = np.cross(normal / area2[:, None], x_axis)
    # Local 2D corner coordinates: (0,0), (x1,0), (x2,y2).
    x1 = np.linalg.norm(e1, axis=1)
    x2 = np.einsum("ij,ij->i", e2, x_axis)
    y2 = np.einsum("ij,ij->i", e2, y_axis)
    # Gradient of a linear function: sum_k f_k rot90(e_k) / 2A, e_k the edge opposite corner k (CCW).
    zero = np.zeros_like(x1)
    ex = np.stack([x2 - x1, -x2, x1], axis=1)
    ey = np.stack([y2, -y2, zero], axis=1)
    gx = -ey / area2[:, None]
    gy = ex / area2[:, None]
    w = np.sqrt(0.5 * area2)[:, None]
    n_v = v.shape[0]
    n_t = triangles.shape[0]
    rows_idx = np.repeat(np.arange(n_t), 3)
    cols_idx = triangles.reshape(-1)
    # Cauchy-Riemann: du/dx - dv/dy = 0 and du/dy + dv/dx = 0 (orientation-preserving).
    gxw, gyw = (gx * w).reshape(-1), (gy * w).reshape(-1)
    rows_all = np.concatenate([rows_idx, rows_idx, rows_idx + n_t, rows_idx + n_t])
    cols_all = np.concatenate([cols_idx, cols_idx + n_v, cols_idx, cols_idx + n_v])
    vals = np.concatenate([gxw, -gyw, gyw, gxw])
    a_mat = sp.csr_matrix((vals, (rows_all, cols_all)), shape=(2 * n_t, 2 * n_v))
    pinned = np.array([pins[0], pins[1], pins[0] + n_v, pins[1] + n_v])
    pin_val = np.array([0.0, 1.0, 0.0, 0.0])
    free = np.setdiff1d(np.arange(2 * n_v), pinned)
    used = np.zeros(n_v, dtype=bool)
    used[triangles.reshape(-1)] = True
    free = free[np.concatenate([used, used])[free]]
    a_free = a_mat[:, free]
    rhs = -a_mat[:, pinned] @ pin_val
    x = spla.spsolve((a_free.T @ a_free).tocsc(), a_free.T @ rhs)
    sol = np.zeros(2 * n_v)
    sol[pinned] = pin_val
    sol[free] = x
    return np.stack([sol[:n_v], sol[n_v:]], axis=1)


def _fit_tile(uv: np.ndarray, tile_u: int, margin: float = 0.02) -> np.ndarray:
    """Scale uniformly and centre ``uv`` (N, 2) into UDIM tile column ``tile_u`` with a margin."""
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    scale = (1.0 - 2.0 * margin) / (hi - lo).max()
    out = (uv - 0.5 * (lo + hi)) * scale + 0.5
    out[:, 0] += tile_u
    return out


def _uv_layout(vertices: np.ndarray, counts: np.ndarray, corners: np.ndarray, groups: np.ndarray,
               face_pins: tuple[int, int], back_pins: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-corner UV indices and the UV array of the two islands (face: 1001, back: 1002).

    Both islands are discs (the face with eye and mouth holes), so each is one LSCM solve; pins lie on the
    symmetry plane or mirror each other, which keeps the layout left/right symmetric.
    """
    n_v = len(vertices)
    corner_face = np.repeat(np.arange(len(counts)), counts)
    back_corner = groups[corner_face] == 1
    island_vertex = np.where(back_corner, corners + n_v, corners)  # boundary vertices get one UV per island
    tri_corners, _ = _triangles(counts, corners)
    tri_group = groups[corner_face[tri_corners[:, 0]]]
    verts2 = np.concatenate([vertices, vertices]).astype(np.float64)
    uv_all = np.zeros((2 * n_v, 2))
    # Face: pinned at its two edge vertices on the eye row, so u runs along +X and v up.
    face_tris = island_vertex[tri_corners[tri_group == 0]]
    used = np.unique(face_tris)
    uv_all[used] = _fit_tile(lscm(verts2, face_tris, face_pins)[used], 0)
    # Back: pinned at the nape (bottom) and the crown, rotated so the crown is up.
    back_tris = island_vertex[tri_corners[tri_group == 1]]
    used_b = np.unique(back_tris)
    pins = (back_pins[0] + n_v, back_pins[1] + n_v)
    uv_back = lscm(verts2, back_tris, pins)
    d = uv_back[pins[1]] - uv_back[pins[0]]
    turn = np.pi / 2 - np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    uv_all[used_b] = _fit_tile(uv_back[used_b] @ rot.T, 1)
    all_used = np.union1d(used, used_b)
    remap = np.full(2 * n_v, -1, dtype=np.int64)
    remap[all_used] = np.arange(len(all_used))
    return remap[island_vertex].astype(np.int32), uv_all[all_used].astype(np.float32)


# ------------------------------------------------------------------------------------ regions
def _regions(layout: TemplateLayout) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    v = layout.mesh.vertices
    a, b = layout.chart[:, 0].astype(np.float64), layout.chart[:, 1].astype(np.float64)
    ax = np.abs(a)
    n_face = layout.mesh.face_groups
    face_vertices = np.zeros(len(v), dtype=bool)
    fv = layout.mesh.face_vertex_indices
    face_vertices[fv[np.repeat(n_face == 0, layout.mesh.face_vertex_counts)]] = True
    regions: dict[str, np.ndarray] = {}
    landmarks: dict[str, int] = {}

    def ids(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask).astype(np.int64)

    for side, sgn in (("L", 1.0), ("R", -1.0)):
        slit = layout.slits[f"eye_{side}"]
        on_side = sgn * a > 0
        regions[f"eye_rim_{side}"] = np.sort(slit.rim)
        regions[f"upper_eyelid_{side}"] = ids(on_side & (np.abs(ax - EYE_A) < EYE_HALF_WIDTH) &
                                              (b > EYE_B) & (b < EYE_B + 1.25) & face_vertices)
        regions[f"lower_eyelid_{side}"] = ids(on_side & (np.abs(ax - EYE_A) < EYE_HALF_WIDTH) &
                                              (b <= EYE_B) & (b > EYE_B - 1.0) & face_vertices)
        regions[f"brow_{side}"] = ids(on_side & (np.abs(ax - 3.1) < 2.3) & (np.abs(b - 3.7) < 0.6))
        regions[f"cheek_{side}"] = ids(on_side & (np.hypot(ax - 4.3, (b + 1.8) / 1.2) < 1.6))
        regions[f"nostril_{side}"] = ids(on_side & (np.hypot((ax - 0.7) / 0.45, (b - SUBNASALE_B - 0.3) / 0.3) < 1))

    # Landmarks of the left eye, then mirrored for the right.
    eye = layout.slits["eye_L"]
    landmarks["eye_inner_corner_L"], landmarks["eye_outer_corner_L"] = (int(c) for c in eye.corners)
    peak = int(np.argmax(v[eye.upper, 1] - v[eye.lower, 1]))
    landmarks["upper_lid_L"] = int(eye.upper[peak])
    landmarks["lower_lid_L"] = int(eye.lower[peak])
    for name in ("eye_inner_corner", "eye_outer_corner", "upper_lid", "lower_lid"):
        landmarks[f"{name}_R"] = int(layout.mirror[landmarks[f"{name}_L"]])
    mouth = layout.slits["mouth"]
    landmarks["mouth_corner_R"], landmarks["mouth_corner_L"] = (int(c) for c in mouth.corners)
    mid = len(mouth.upper) // 2
    landmarks["lip_upper_center"] = int(mouth.upper[mid])
    landmarks["lip_lower_center"] = int(mouth.lower[mid])
    regions["mouth_corner_L"] = np.array([landmarks["mouth_corner_L"]], dtype=np.int64)
    regions["mouth_corner_R"] = np.array([landmarks["mouth_corner_R"]], dtype=np.int64)
    regions["lip_rim_upper"] = np.sort(np.concatenate([mouth.upper, mouth.corners]))
    regions["lip_rim_lower"] = np.sort(np.concatenate([mouth.lower, mouth.corners]))
    regions["lips_upper"] = ids((ax < MOUTH_HALF_WIDTH) & (b >= MOUTH_B) & (b < MOUTH_B + 0.8))
    regions["lips_upper"] = np.union1d(regions["lips_upper"], mouth.upper)
    regions["lips_lower"] = ids((ax < MOUTH_HALF_WIDTH) & (b < MOUTH_B) & (b > MOUTH_B - 1.0))
    regions["lips_lower"] = np.setdiff1d(regions["lips_lower"], mouth.upper)
    nose = (ax < 2.2) & (b < NASION_B) & (b > SUBNASALE_B)
    regions["nose"] = ids(nose)
    landmarks["nose_tip"] = int(np.flatnonzero(nose)[np.argmax(v[nose, 2])])
    regions["nose_tip"] = np.array([landmarks["nose_tip"]], dtype=np.int64)
    regions["chin"] = ids((ax < 2.0) & (np.abs(b - (MOUTH_B - 2.9)) < 1.1))
    midline = np.flatnonzero((a == 0.0) & (layout.grid_column >= 0))

    def on_midline(b_target: float) -> int:
        return int(midline[np.argmin(np.abs(b[midline] - b_target))])

    landmarks["nasion"] = on_midline(NASION_B)
    landmarks["subnasale"] = on_midline(SUBNASALE_B)
    landmarks["chin"] = on_midline(MOUTH_B - 2.6)
    chin_line = midline[(b[midline] < MOUTH_B - 1.0) & (b[midline] > MOUTH_B - 5.0)]
    landmarks["menton"] = int(chin_line[np.argmin(v[chin_line, 1] - 0.5 * v[chin_line, 2])])
    regions["forehead"] = ids((ax < 5.0) & (b > 4.2) & face_vertices)
    regions["jaw"] = ids((b < MOUTH_B - 0.6) & face_vertices)
    regions["neck"] = ids(layout.chart_angles[:, 1] < np.deg2rad(-62.0))
    regions["scalp"] = ids(layout.chart_angles[:, 1] > FACE_PHI_TOP)
    regions["face"] = ids(face_vertices)
    landmarks["crown"] = int(len(v) - 1)
    jaw_angle = (np.abs(layout.chart_angles[:, 0] - np.deg2rad(62.0)) < 0.05) & (b < MOUTH_B - 1.0) & \
        (layout.chart_angles[:, 1] > np.deg2rad(-58))
    landmarks["jaw_angle_L"] = int(np.flatnonzero(jaw_angle)[np.argmin(v[jaw_angle, 1])])
    landmarks["jaw_angle_R"] = int(layout.mirror[landmarks["jaw_angle_L"]])
    return regions, landmarks


# ------------------------------------------------------------------------------------------- API
@functools.lru_cache(maxsize=1)
def template() -> TemplateLayout:
    """The template layout (mesh, chart, regions, landmarks, mirror map); built once per process."""
    return _build_layout()


def template_mesh() -> FaceMesh:
    """The template head as a FaceMesh (cm, Y up, face +Z; groups M_Face / M_BackHead; UDIMs 1001/1002).

    Returns a fresh copy each call, so callers may modify it.
    """
    m = template().mesh
    return FaceMesh(m.vertices.copy(), m.face_vertex_counts, m.face_vertex_indices, m.uvs.copy(),
                    m.face_uv_indices, m.face_groups, list(m.group_names), m.units, m.name)


def template_regions() -> dict[str, np.ndarray]:
    """Named vertex index sets of the template (int64 arrays), e.g. ``eye_rim_L``, ``lips_upper``, ``chin``."""
    return {k: v.copy() for k, v in template().regions.items()}


def template_landmarks() -> dict[str, int]:
    """Named single vertices of the template, e.g. ``nose_tip``, ``mouth_corner_L``, ``eye_inner_corner_R``."""
    return dict(template().landmarks)
