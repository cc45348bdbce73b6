"""The 56 FACS units as anatomically placed deformations of an identity's neutral.

Each unit is a displacement field built from a few muscle-like primitives on the identity's own geometry:

- rigid motion of the mandible: rotation about the identity's jaw hinge (temporomandibular axis) with the
  lower face, lower lip and under-chin skin following through a soft transition band (``jawOpen``,
  ``jawLeft``/``jawRight`` about the opposite condyle, ``jawForward`` translation, part of ``tongueOut``);
- lid motion as rotation about the identity's eyeball centre, so lids slide over the globe; a blink brings
  every upper-rim vertex onto its lower-rim partner, closing the eye exactly;
- linear muscles pulling the mouth corner toward their bony origin (zygomaticus major -> cheekbone for
  ``mouthSmile``, depressor anguli oris -> mandible for ``mouthFrown``, risorius -> parotid for
  ``mouthStretch``, buccinator back along the teeth for ``mouthDimple``), shortening by a fixed fraction of
  the identity's own muscle length;
- sheet muscles sliding skin over the skull (frontalis, corrugator, orbicularis oculi, levators), moved in
  the skin's tangent plane;
- soft-tissue bunching and bulging along the identity's normals (cheeks in a smile, puffed cheeks, chin).

How a face moves depends on who it is, not linearly: laxity widens every falloff and flattens its shape
(the exponent of the fall-off drops), fuller cheeks bunch more in a smile and dimple deeper, a longer
mandible swings the chin along a longer arc, muscle lengths and pull directions come from the face's own
geometry. So adding the mean displacement of other identities to a neutral (the "3DMM" baseline) is
measurably wrong; ``benchmarks/identity_specificity.py`` prints by how much.

Regions are placed with the template's chart coordinates (``a``, ``b``; see ``template``), which are the
same for every identity. Units in cm. ``_L`` acts on +X (the character's left).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..errors import ExpDiffInputError
from ..facs import EXPRESSIONS, NEUTRAL, UNIT_NAMES, unit
from .identity import Identity, identity_vertices
from .template import (EYE_A, EYE_B, EYE_HALF_WIDTH, MOUTH_HALF_WIDTH, NOSE_TIP_B, PHI_NECK,
                       TemplateLayout, eye_line, mouth_line, template)


# ------------------------------------------------------------------------------------------------ rig
@dataclass(frozen=True)
class FaceRig:
    """What the deformations need to know about one identity (all float64, cm).

    neutral, normals: (V, 3); smooth_normals: (V, 3) normals averaged over ~1 cm, for large bulges.
    a, b: (V,) template chart coordinates. theta, phi: (V,) chart angles.
    hinge: (3,) point on the jaw hinge axis (x = 0); condyles: (2, 3) right and left condyle.
    eyeballs: (2, 3) centres of the right and left globe; eye_radius: globe radius.
    laxity, cheek_fullness, lip_fullness: identity tissue parameters. size: face scale (1 = template).
    template_jaw_reach: the template's hinge-to-chin distance. mouth_line: (V,) chart b of the lip line.
    """

    neutral: np.ndarray
    normals: np.ndarray
    smooth_normals: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    hinge: np.ndarray
    condyles: np.ndarray
    eyeballs: np.ndarray
    eye_radius: float
    laxity: float
    cheek_fullness: float
    lip_fullness: float
    size: float
    template_jaw_reach: float
    mouth_line: np.ndarray
    layout: TemplateLayout


def vertex_normals(vertices: np.ndarray, counts: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(V, 3) float64 unit vertex normals: sum of the area vectors (Newell) of the polygons around each vertex.

    vertices (V, 3); counts (F,) corners per polygon; indices (sum(counts),) vertex ids. Polygon area
    vectors do not depend on how a quad would be split into triangles, so mirror-symmetric meshes get
    mirror-symmetric normals.
    """
    v = np.asarray(vertices, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts[:-1])])
    face = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(len(indices)) - starts[face]
    nxt = indices[starts[face] + (pos + 1) % counts[face]]
    corner_area = 0.5 * np.cross(v[indices], v[nxt])
    face_area = np.zeros((len(counts), 3))
    np.add.at(face_area, face, corner_area)
    n = np.zeros_like(v)
    np.add.at(n, indices, face_area[face])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=1)
def _neighbour_average() -> sp.csr_matrix:
    """(V, V) sparse operator averaging each template vertex with its polygon-edge neighbours."""
    mesh = template().mesh
    counts = mesh.face_vertex_counts.astype(np.int64)
    idx = mesh.face_vertex_indices.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts[:-1])])
    face = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(len(idx)) - starts[face]
    nxt = idx[starts[face] + (pos + 1) % counts[face]]
    n = mesh.n_vertices
    rows = np.concatenate([idx, nxt, np.arange(n)])
    cols = np.concatenate([nxt, idx, np.arange(n)])
    adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    adj.data[:] = 1.0  # duplicate edges (shared by two polygons) count once
    return sp.diags(1.0 / np.asarray(adj.sum(axis=1)).ravel()) @ adj


def _relax(weight: np.ndarray, steps: int) -> np.ndarray:
    """Diffuse a per-vertex weight over the skin ``steps`` times: removes creases where fall-offs meet.
    The eye and mouth slits are holes in the mesh, so nothing leaks from one lip or lid to the other.
    Weights below 1e-4 are cut to 0 (a step of at most ~2 micrometres in a displacement), so a unit leaves
    the far side of the head exactly still."""
    op = _neighbour_average()
    for _ in range(steps):
        weight = op @ weight
    return np.where(np.abs(weight) < 1e-4, 0.0, weight)


def _nearest_in_chart(layout: TemplateLayout, a: float, b: float) -> int:
    d = (layout.chart[:, 0] - a) ** 2 + (layout.chart[:, 1] - b) ** 2
    d[layout.grid_column < 0] = np.inf
    return int(np.argmin(d))


@functools.lru_cache(maxsize=16)
def face_rig(identity: Identity) -> FaceRig:
    """The deformation rig of ``identity`` (cached)."""
    layout = template()
    v = identity_vertices(identity).astype(np.float64)
    mesh = layout.mesh
    normals = vertex_normals(v, mesh.face_vertex_counts, mesh.face_vertex_indices)
    a = layout.chart[:, 0].astype(np.float64)
    b = layout.chart[:, 1].astype(np.float64)
    lm = layout.landmarks
    # Condyle: in front of the ear canal, ~1.2 cm under the skin, level with the ear's middle.
    tmj = _nearest_in_chart(layout, 10.5 * np.deg2rad(84.0), 10.5 * np.deg2rad(-2.0))
    condyle_l = v[tmj] - 1.2 * normals[tmj]
    condyles = np.stack([condyle_l * np.array([-1.0, 1.0, 1.0]), condyle_l])
    hinge = np.array([0.0, condyle_l[1], condyle_l[2]])
    # Globe: the lid surface at the fissure's middle lies on it; the centre sits one radius behind.
    eye_radius = 1.2
    eyeballs = []
    for side in ("R", "L"):
        up, low = v[lm[f"upper_lid_{side}"]], v[lm[f"lower_lid_{side}"]]
        inner, outer = v[lm[f"eye_inner_corner_{side}"]], v[lm[f"eye_outer_corner_{side}"]]
        front = 0.5 * (up + low)
        centre = np.array([0.5 * (inner[0] + outer[0]), front[1], front[2] - eye_radius + 0.15])
        eyeballs.append(centre)
    t = layout.mesh.vertices.astype(np.float64)
    size = float(np.linalg.norm(v[lm["mouth_corner_L"]] - v[lm["eye_outer_corner_L"]]) /
                 np.linalg.norm(t[lm["mouth_corner_L"]] - t[lm["eye_outer_corner_L"]]))
    # The template's condyle sits where the identity's would for the template shape (same chart point).
    t_normals = vertex_normals(t, mesh.face_vertex_counts, mesh.face_vertex_indices)
    t_hinge_yz = (t[tmj] - 1.2 * t_normals[tmj])[1:]
    template_jaw_reach = float(np.linalg.norm(t[lm["chin"], 1:] - t_hinge_yz))
    smooth = _relax(normals, 10)
    smooth /= np.linalg.norm(smooth, axis=1, keepdims=True)
    return FaceRig(neutral=v, normals=normals, smooth_normals=smooth, a=a, b=b, theta=layout.chart_angles[:, 0],
                   phi=layout.chart_angles[:, 1], hinge=hinge, condyles=condyles,
                   eyeballs=np.stack(eyeballs), eye_radius=eye_radius, laxity=identity.laxity,
                   cheek_fullness=identity.cheek_fullness, lip_fullness=1.0 + 0.3 * identity.lip_fullness,
                   size=size, template_jaw_reach=template_jaw_reach, mouth_line=mouth_line(a), layout=layout)


# ------------------------------------------------------------------------------------------ helpers
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _half(a: np.ndarray, s: float, start: float = 0.0) -> np.ndarray:
    """Smooth 0 -> 1 across chart a = s * start toward side s (keeps one-sided units free of creases)."""
    return _smoothstep(start - 0.4, start + 0.4, s * a)


def _above_mouth(rig: FaceRig) -> np.ndarray:
    """1 on the upper-lip side of the mouth line, 0 on the lower; the split is sharp between the lips (the
    slit separates them) and widens beyond the corners where the skin is continuous."""
    a = rig.a
    width = 0.005 + 0.6 * _smoothstep(0.8 * MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + 0.6, np.abs(a))
    return _smoothstep(-width, width, rig.b - rig.mouth_line)


def _bump(rig: FaceRig, a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float, rb: float,
          spread: float = 1.0) -> np.ndarray:
    """Compactly supported smooth bump in the chart: 1 at (ca, cb), 0 beyond the (ra, rb) ellipse.

    Laxity widens it (loose skin carries motion further) and lowers its exponent (a flatter, fuller
    profile): a non-linear change of shape, not a rescaling. ``spread`` scales how much laxity widens it.
    """
    grow = 1.0 + 0.35 * spread * rig.laxity
    d2 = ((a - ca) / (ra * grow)) ** 2 + ((b - cb) / (rb * grow)) ** 2
    power = 3.0 - 1.3 * rig.laxity
    return np.clip(1.0 - d2, 0.0, 1.0) ** power


def _rotation(points: np.ndarray, pivot: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Displacements (N, 3) that rotate points (N, 3) about the line through ``pivot`` along ``axis`` by
    per-point ``angle`` (N,) radians; exactly zero where the angle is zero."""
    k = axis / np.linalg.norm(axis)
    p = points - pivot
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return p * (c - 1.0) + np.cross(k, p) * s + k * (p @ k)[:, None] * (1.0 - c)


def _tangential(rig: FaceRig, d: np.ndarray) -> np.ndarray:
    """Keep only the part of displacements (N, 3) in each vertex's tangent plane: skin sliding on bone."""
    return d - np.einsum("ij,ij->i", d, rig.normals)[:, None] * rig.normals


def _toward(rig: FaceRig, target: np.ndarray) -> np.ndarray:
    """(V, 3) unit directions from every vertex toward ``target``."""
    d = target - rig.neutral
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)


def _point(rig: FaceRig, a: float, b: float, depth: float = 0.0) -> np.ndarray:
    """The identity's skin point at chart (a, b), ``depth`` cm under the skin (a muscle's bony origin)."""
    i = _nearest_in_chart(rig.layout, a, b)
    return rig.neutral[i] - depth * rig.normals[i]


def _front(rig: FaceRig) -> np.ndarray:
    """1 on the face, fading out behind the cheeks and into the neck."""
    return _smoothstep(np.deg2rad(95.0), np.deg2rad(75.0), np.abs(rig.theta)) * \
        _smoothstep(PHI_NECK, np.deg2rad(-50.0), rig.phi)


# ------------------------------------------------------------------------------------------- jaw
def _lower_lip_side(rig: FaceRig) -> np.ndarray:
    """1 for vertices on the lower lip's side of the mouth (the slit's lower copies included), 0 on the
    upper side, 0.5 on the mouth corners. The rims decide by topology, not by their tiny chart offset."""
    slit = rig.layout.slits["mouth"]
    side = (rig.b < rig.mouth_line).astype(np.float64)
    side[slit.upper] = 0.0
    side[slit.lower] = 1.0
    side[slit.corners] = 0.5
    return side


def _jaw_weight(rig: FaceRig) -> np.ndarray:
    """How much each vertex follows the mandible: 1 on chin, lower lip and under the jaw, 0 on the upper face."""
    a, b = rig.a, rig.b
    ax = np.abs(a)
    line = rig.mouth_line + 0.46 * np.maximum(ax - MOUTH_HALF_WIDTH, 0.0)
    # A wide band of stretching cheek from the mouth corner toward the ramus (wider when lax) ...
    width = 0.01 + (1.4 + 0.8 * rig.laxity) * _smoothstep(0.3 * MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + 2.5, ax)
    band = _smoothstep(-width, width, line - b)
    # ... and between the lips a clean split: the lower lip goes with the jaw, the upper lip stays; along
    # the rims the split softens into the corners, which go half way.
    into_mouth = _smoothstep(0.0, 0.7, MOUTH_HALF_WIDTH - ax)
    split = 0.5 + (_lower_lip_side(rig) - 0.5) * into_mouth
    near_lips = np.exp(-(((b - rig.mouth_line) / 0.4) ** 2)) * _smoothstep(MOUTH_HALF_WIDTH + 0.6,
                                                                            MOUTH_HALF_WIDTH - 0.2, ax)
    w = near_lips * split + (1.0 - near_lips) * band
    # The lower lip lags toward its corners, so the opening is an oval rather than a box.
    lag = np.minimum(ax / MOUTH_HALF_WIDTH, 1.0) ** 2
    lag *= 1.0 - _smoothstep(MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + 1.5, ax)
    w *= 1.0 - 0.3 * lag * np.exp(-(((line - b) / 0.9) ** 2))
    # Under the chin the skin follows the jaw and hands over to the neck gradually; the neck base stays.
    w *= _smoothstep(np.deg2rad(-84.0), np.deg2rad(-52.0), rig.phi)
    w *= _smoothstep(np.deg2rad(88.0), np.deg2rad(72.0), np.abs(rig.theta))  # behind the ramus stays
    return _relax(w, 16)


def _jaw_rotation(rig: FaceRig, angle: float) -> np.ndarray:
    w = _jaw_weight(rig)
    return _rotation(rig.neutral, rig.hinge, np.array([1.0, 0.0, 0.0]), angle * w)


def _jaw_reach(rig: FaceRig) -> float:
    """Hinge-to-chin distance of this face relative to the template's."""
    chin = rig.layout.landmarks["chin"]
    return float(np.linalg.norm(rig.neutral[chin] - rig.hinge) / rig.template_jaw_reach)


def _jaw_range(rig: FaceRig) -> float:
    """Range of jaw motion relative to the template: larger mandibles open further (maximal opening is
    40-60 mm across adults) and it shrinks with age."""
    return _jaw_reach(rig) ** 2 * (1.0 - 0.2 * rig.laxity)


def jaw_open(rig: FaceRig) -> np.ndarray:
    # ~10 degrees about the hinge for the template; the chin travels along the identity's own arc.
    d = _jaw_rotation(rig, np.deg2rad(10.0) * _jaw_range(rig))
    w = _jaw_weight(rig)
    # Condylar glide forward on wide opening, and lax cheeks/jowls lag and hang.
    d += w[:, None] * np.array([0.0, -0.1, 0.2])
    band = w * (1.0 - w) * 4.0
    d[:, 1] -= 0.35 * rig.laxity * band
    d -= (0.25 * rig.cheek_fullness * band * _front(rig))[:, None] * rig.normals
    return d


def jaw_sideways(rig: FaceRig, s: float) -> np.ndarray:
    # Lateral excursion: rotation about the vertical axis through the condyle of the side it moves to.
    pivot = rig.condyles[1 if s > 0 else 0]
    chin = rig.neutral[rig.layout.landmarks["chin"]]
    reach = np.hypot(chin[0] - pivot[0], chin[2] - pivot[2])
    w = _jaw_weight(rig)
    return _rotation(rig.neutral, pivot, np.array([0.0, 1.0, 0.0]), s * (0.8 * _jaw_range(rig) / reach) * w)


def jaw_forward(rig: FaceRig) -> np.ndarray:
    w = _jaw_weight(rig)
    chin = rig.neutral[rig.layout.landmarks["chin"]]
    # Protrusion slides the condyles down the articular eminence: forward, slightly down, more for a long jaw.
    reach = np.linalg.norm(chin - rig.hinge)
    return w[:, None] * np.array([0.0, -0.12, 0.06 * reach * _jaw_range(rig)])


# ------------------------------------------------------------------------------------------ eyes
def _eye_slit(rig: FaceRig, s: float):
    return rig.layout.slits["eye_L" if s > 0 else "eye_R"]


def _lid_rotation(rig: FaceRig, s: float, upper_angle: np.ndarray | float, lower_angle: np.ndarray | float,
                  reach_up: float = 1.5, reach_low: float = 0.9) -> np.ndarray:
    """Rotate the lids of side s about the globe's horizontal axis.

    upper_angle: how far the upper rim turns *down*, lower_angle: how far the lower rim turns *up* (radians,
    per rim column or one value; negative opens). The rim moves fully, the skin toward the brow and the
    cheek follows less with distance (further in lax, hooded lids); the canthi stay.
    """
    slit = _eye_slit(rig, s)
    centre = rig.eyeballs[1 if s > 0 else 0]
    a, b = rig.a, rig.b
    rim_a = np.concatenate([[a[slit.corners[0]]], a[slit.upper], [a[slit.corners[1]]]])
    order = np.argsort(rim_a)
    n = len(slit.upper)
    up = np.concatenate([[0.0], np.broadcast_to(np.asarray(upper_angle, dtype=np.float64), (n,)), [0.0]])
    low = np.concatenate([[0.0], np.broadcast_to(np.asarray(lower_angle, dtype=np.float64), (n,)), [0.0]])
    up_profile = np.interp(a, rim_a[order], up[order], left=0.0, right=0.0)
    low_profile = np.interp(a, rim_a[order], low[order], left=0.0, right=0.0)
    side = s * a > 0
    db = b - eye_line(a)
    is_upper = np.zeros(len(a), dtype=bool)
    is_upper[slit.upper] = True
    above = ((db > 0) | is_upper) & side
    below = (db < 0) & ~is_upper & side
    grow = 1.0 + 0.4 * rig.laxity
    fall_up = np.clip(1.0 - np.maximum(db - 0.35, 0.0) / (reach_up * grow), 0.0, 1.0) ** (2.0 - rig.laxity)
    fall_low = np.clip(1.0 - np.maximum(-db - 0.1, 0.0) / (reach_low * grow), 0.0, 1.0) ** 2.0
    # Rotation about +X by a positive angle moves points in front of the centre down.
    angle = np.where(above, up_profile * fall_up, 0.0) - np.where(below, low_profile * fall_low, 0.0)
    return _rotation(rig.neutral, centre, np.array([1.0, 0.0, 0.0]), angle)


def _rim_angles(rig: FaceRig, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Elevation angles (about the globe's x axis) of the upper and lower rim vertices, per column."""
    slit = _eye_slit(rig, s)
    c = rig.eyeballs[1 if s > 0 else 0]
    up = rig.neutral[slit.upper] - c
    low = rig.neutral[slit.lower] - c
    return np.arctan2(up[:, 1], up[:, 2]), np.arctan2(low[:, 1], low[:, 2])


def eye_blink(rig: FaceRig, s: float) -> np.ndarray:
    up, low = _rim_angles(rig, s)
    meet = low + 0.25 * (up - low)  # the upper lid does most of the travel
    d = _lid_rotation(rig, s, up - meet, meet - low)
    # Close exactly: each upper-rim vertex lands on its lower-rim partner (the globe is not a perfect
    # sphere under the lids, so rotation alone leaves a sliver).
    slit = _eye_slit(rig, s)
    pu, pl = rig.neutral[slit.upper] + d[slit.upper], rig.neutral[slit.lower] + d[slit.lower]
    mid = 0.5 * (pu + pl)
    d[slit.upper] += mid - pu
    d[slit.lower] += mid - pl
    return d


def eye_wide(rig: FaceRig, s: float) -> np.ndarray:
    up, low = _rim_angles(rig, s)
    return _lid_rotation(rig, s, -0.45 * (up - low), 0.0, reach_up=1.0)


def eye_look_vertical(rig: FaceRig, s: float, direction: float) -> np.ndarray:
    # The lids follow the cornea: looking down lowers both lids (upper more), looking up raises them.
    up, low = _rim_angles(rig, s)
    gap = up - low
    if direction < 0:
        return _lid_rotation(rig, s, 0.35 * gap, -0.15 * gap)
    return _lid_rotation(rig, s, -0.3 * gap, 0.12 * gap, reach_up=1.0)


def eye_look_sideways(rig: FaceRig, s: float, toward_x: float) -> np.ndarray:
    # The lid skin drifts with the cornea: rotation about the globe's vertical axis, fading with distance.
    c = rig.eyeballs[1 if s > 0 else 0]
    a, b = rig.a, rig.b
    w = _bump(rig, s * a, b, EYE_A, EYE_B, EYE_HALF_WIDTH + 0.9, 1.6) * _half(a, s, 0.0)
    return _rotation(rig.neutral, c, np.array([0.0, 1.0, 0.0]), toward_x * np.deg2rad(9.0) * w)


def eye_squint(rig: FaceRig, s: float) -> np.ndarray:
    up, low = _rim_angles(rig, s)
    gap = up - low
    d = _lid_rotation(rig, s, 0.12 * gap, 0.4 * gap, reach_low=1.2)
    # Orbicularis pars palpebralis: the lateral canthus is drawn in and up.
    a, b = rig.a, rig.b
    w = _bump(rig, s * a, b, EYE_A + EYE_HALF_WIDTH, EYE_B, 1.3, 1.0) * _half(a, s, 0.0)
    d += _tangential(rig, w[:, None] * np.array([-0.18 * s, 0.1, 0.0]))
    return d


# ------------------------------------------------------------------------------------------ brows
def brow_down(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    # Corrugator and depressor supercilii: the medial brow goes down and toward the midline.
    w = _bump(rig, s * a, b, 2.4, EYE_B + 2.0, 2.3, 1.6) * _smoothstep(-0.3, 0.3, s * a + 0.3)
    pull = np.array([-0.32 * s, -0.48, 0.0]) * rig.size
    d = _tangential(rig, w[:, None] * pull)
    # Bunching between the brows: the glabella skin bulges forward.
    g = _bump(rig, s * a, b, 0.9, EYE_B + 1.7, 1.0, 0.9)
    d += (0.12 * (1.0 + rig.laxity) * g)[:, None] * rig.normals
    return d


def brow_inner_up(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    w = _bump(rig, s * a, b, 1.9, EYE_B + 2.0, 2.0, 2.2) * _smoothstep(-0.3, 0.3, s * a + 0.3)
    w *= np.where(b > EYE_B + 2.0, 1.0, _smoothstep(EYE_B + 0.3, EYE_B + 2.0, b) ** 0.5)
    return _tangential(rig, w[:, None] * np.array([0.0, 0.62, 0.0]) * rig.size)


def brow_outer_up(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    w = _bump(rig, s * a, b, 4.5, EYE_B + 2.0, 2.2, 2.4) * _half(a, s, 0.0)
    w *= np.where(b > EYE_B + 2.0, 1.0, _smoothstep(EYE_B + 0.4, EYE_B + 2.0, b) ** 0.5)
    return _tangential(rig, w[:, None] * np.array([0.1 * s, 0.7, 0.0]) * rig.size)


# ------------------------------------------------------------------------------------------ cheeks
def cheek_puff(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    w = _bump(rig, s * a, b - ml, 3.9, 1.0, 2.3, 2.6, spread=0.6) * _half(a, s, MOUTH_HALF_WIDTH)
    # Air stretches lean cheeks more than full ones, lax skin balloons further.
    amount = 0.95 * (1.0 + 0.3 * rig.laxity) / (1.0 + 0.4 * rig.cheek_fullness)
    d = (amount * w)[:, None] * rig.smooth_normals
    # The lips seal: squeezed together and pushed slightly forward, mostly on that side.
    side = _side_ramp(a, s)
    d += _lip_squeeze(rig, 0.3, width=0.2) * side[:, None]
    lips = _bump(rig, s * a, b - ml, 1.2, 0.0, 2.0, 0.9) * _half(a, s, -1.0)
    d += (0.15 * lips)[:, None] * np.array([0.0, 0.0, 1.0])
    return d


def cheek_raise(rig: FaceRig, s: float, local: bool) -> np.ndarray:
    a, b = rig.a, rig.b
    if local:  # cheekSquint: the ring under the eye squeezes up and in
        w = _bump(rig, s * a, b, 4.0, EYE_B - 1.3, 1.6, 1.1) * _half(a, s, 0.0)
        move = np.array([-0.1 * s, 0.45, 0.0])
        bulge = 0.1
    else:  # cheekRaiser: the whole malar mass lifts toward the eye
        w = _bump(rig, s * a, b, 4.3, EYE_B - 2.2, 2.2, 1.9) * _half(a, s, 0.0)
        move = np.array([-0.05 * s, 0.55, 0.0])
        bulge = 0.2 + 0.25 * rig.cheek_fullness
    d = _tangential(rig, w[:, None] * move * rig.size)
    d += ((bulge + 0.15 * rig.laxity) * w**1.5)[:, None] * rig.normals
    # The lower lid is pushed up by the cheek.
    up, low = _rim_angles(rig, s)
    d += _lid_rotation(rig, s, 0.0, (0.18 if local else 0.12) * (up - low))
    return d


# ------------------------------------------------------------------------------------------ mouth
def _corner(rig: FaceRig, s: float) -> np.ndarray:
    return rig.neutral[rig.layout.landmarks["mouth_corner_L" if s > 0 else "mouth_corner_R"]]


def _corner_weight(rig: FaceRig, s: float, ra: float = 1.7, rb: float = 1.5) -> np.ndarray:
    """Weight of the mouth-corner muscle knot (modiolus) of side s and the lips that follow it."""
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    wc = _bump(rig, s * a, b - ml, MOUTH_HALF_WIDTH, 0.0, ra, rb)
    # The orbicularis ring carries part of the pull along both lips toward the midline.
    along = np.clip((s * a + MOUTH_HALF_WIDTH) / (2.0 * MOUTH_HALF_WIDTH), 0.0, 1.0) ** 1.6
    lips = np.exp(-0.5 * ((b - ml) / 0.8) ** 2) * \
        (1.0 - _smoothstep(MOUTH_HALF_WIDTH - 0.2, MOUTH_HALF_WIDTH + 0.6, np.abs(a)))
    return _relax(np.maximum(wc, 0.85 * along * lips) * _front(rig), 8)


def _muscle_pull(rig: FaceRig, s: float, origin: np.ndarray, contraction: float,
                 ra: float = 1.7, rb: float = 1.5) -> np.ndarray:
    """Pull the mouth corner toward ``origin`` by ``contraction`` of the muscle's length."""
    corner = _corner(rig, s)
    length = np.linalg.norm(origin - corner)
    w = _corner_weight(rig, s, ra, rb)
    direction = _toward(rig, origin)
    return (contraction * length * w)[:, None] * direction


def mouth_smile(rig: FaceRig, s: float) -> np.ndarray:
    # Zygomaticus major: from the cheekbone down to the modiolus.
    origin = _point(rig, s * 5.6, EYE_B - 2.0, depth=0.9)
    d = _muscle_pull(rig, s, origin, 0.34)
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    # The cheek bunches up and out between corner and cheekbone; fuller and laxer cheeks more, and the
    # bulge grows faster than linearly with the fat pad.
    w = _bump(rig, s * a, b - ml, 3.6, 2.1, 1.7, 1.9) * _half(a, s, 0.0)
    bunch = 0.25 + 0.6 * rig.cheek_fullness**1.5 + 0.25 * rig.laxity
    d += (bunch * w)[:, None] * rig.smooth_normals + _tangential(rig, (0.3 * w)[:, None] * np.array([0.0, 1.0, 0.0]))
    up, low = _rim_angles(rig, s)
    d += _lid_rotation(rig, s, 0.0, 0.08 * (up - low))
    return d


def mouth_frown(rig: FaceRig, s: float) -> np.ndarray:
    origin = _point(rig, s * 3.8, mouth_line(np.array([3.8]))[0] - 3.3, depth=0.6)
    return _muscle_pull(rig, s, origin, 0.2)


def mouth_stretch(rig: FaceRig, s: float) -> np.ndarray:
    origin = _point(rig, s * 8.0, mouth_line(np.array([8.0]))[0] + 0.2, depth=0.8)
    d = _muscle_pull(rig, s, origin, 0.13, ra=2.0)
    # The lips flatten back against the teeth.
    a, b = rig.a, rig.b
    lips = _bump(rig, s * a, b - rig.mouth_line, 1.5, 0.0, 1.8, 0.9)
    return d + (0.18 * lips)[:, None] * np.array([0.0, 0.0, -1.0])


def mouth_dimple(rig: FaceRig, s: float) -> np.ndarray:
    # Buccinator: the corner goes back along the teeth and slightly out; a dimple forms beside it.
    w = _corner_weight(rig, s, 1.4, 1.2)
    d = (0.55 * w)[:, None] * np.array([0.25 * s, 0.12, -0.95]) * rig.size
    a, b = rig.a, rig.b
    dimple = _bump(rig, s * a, b - rig.mouth_line, MOUTH_HALF_WIDTH + 0.8, 0.0, 0.7, 0.8)
    d -= ((0.18 + 0.3 * rig.cheek_fullness) * dimple)[:, None] * rig.normals
    return d


def _lip_band(rig: FaceRig, upper: bool, depth: float = 1.0) -> np.ndarray:
    """Weight of the upper or lower lip (vermilion and the skin just beyond), 1 at the rim."""
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    above = _above_mouth(rig)
    on_side = above if upper else 1.0 - above
    across = 1.0 - _smoothstep(0.6 * MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + 0.6, np.abs(a))
    reach = depth * (1.0 + 0.35 * rig.laxity)
    away = np.clip(1.0 - np.abs(b - ml) / reach, 0.0, 1.0) ** (2.0 - 0.8 * rig.laxity)
    return on_side * across * away


def _side_ramp(a: np.ndarray, s: float) -> np.ndarray:
    """1 on side s's half of the mouth, fading across the midline."""
    return _smoothstep(-1.2, 1.0, s * a)


def _close_rims(rig: FaceRig, weight_upper: np.ndarray, weight_lower: np.ndarray) -> np.ndarray:
    """Bring the lip rims together where weighted, each lip travelling half the gap."""
    slit = rig.layout.slits["mouth"]
    gap = rig.neutral[slit.upper] - rig.neutral[slit.lower]
    d = np.zeros_like(rig.neutral)
    d[slit.upper] -= 0.5 * gap * weight_upper[slit.upper, None]
    d[slit.lower] += 0.5 * gap * weight_lower[slit.lower, None]
    return d


def _lip_squeeze(rig: FaceRig, fraction: float, reach: float = 1.4, width: float = 0.8) -> np.ndarray:
    """Orbicularis oris squeezing the lips toward the mouth line: within ``reach`` (chart cm) of the line the
    lips shorten vertically by ``fraction`` (wider reach when lax); the skin beyond takes up the slack.
    ``width``: how far past the mouth corners (chart cm) the squeeze fades out."""
    db = rig.b - rig.mouth_line
    grow = 1.0 + 0.3 * rig.laxity
    fade = np.clip(1.0 - np.abs(db) / (reach * grow), 0.0, 1.0) ** 2
    across = 1.0 - _smoothstep(0.7 * MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + width, np.abs(rig.a))
    d = np.zeros_like(rig.neutral)
    d[:, 1] = -fraction * db * fade * across * _front(rig)
    return d


def mouth_close(rig: FaceRig) -> np.ndarray:
    up, low = _lip_band(rig, True, 0.9), _lip_band(rig, False, 0.9)
    d = _close_rims(rig, np.ones(len(up)), np.ones(len(low)))
    # Orbicularis: the lips are drawn together (shortened vertically) and pursed a little forward.
    d += _lip_squeeze(rig, 0.22 * rig.lip_fullness)
    d += (0.1 * (up + low))[:, None] * np.array([0.0, 0.0, 1.0])
    return d


def mouth_press(rig: FaceRig, s: float) -> np.ndarray:
    ramp = _side_ramp(rig.a, s)
    d = _close_rims(rig, ramp, ramp)
    # The lips press together (flatten and shorten) and the lower lip is pushed up from below: its body
    # rises more than its rim, which the upper lip stops.
    d += _lip_squeeze(rig, 0.25 * rig.lip_fullness, reach=1.2) * ramp[:, None]
    up = _lip_band(rig, True, 0.9) * ramp
    d += (0.1 * up * rig.lip_fullness)[:, None] * np.array([0.0, 0.0, -1.0])
    below = rig.mouth_line - rig.b
    grow = 1.0 + 0.4 * rig.laxity  # a lax chin bunches over a larger area
    push = _smoothstep(0.0, 1.0, below) * (1.0 - _smoothstep(1.3 * grow, 2.8 * grow, below)) * ramp * _front(rig)
    push *= 1.0 - _smoothstep(MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH + 1.5, np.abs(rig.a))
    d += (0.3 * (0.8 + 0.4 * rig.laxity) * push)[:, None] * np.array([0.0, 1.0, 0.25])
    return d


def mouth_lower_down(rig: FaceRig, s: float) -> np.ndarray:
    ramp = _side_ramp(rig.a, s) * _bump(rig, s * rig.a, 0.0 * rig.b, 1.2, 0.0, 2.6, 1.0)
    low = _lip_band(rig, False, 1.5) * ramp
    return (0.55 * low)[:, None] * np.array([0.2 * s, -1.0, 0.15]) * rig.size


def mouth_upper_up(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    w = _bump(rig, s * a, b - ml, 1.2, 0.5, 1.6, 2.6) * _side_ramp(a, s)
    w *= _above_mouth(rig)
    d = (0.6 * w)[:, None] * np.array([0.1 * s, 1.0, -0.1]) * rig.size
    # The nasolabial fold deepens: the cheek beside it bulges.
    fold = _bump(rig, s * a, b - ml, 3.1, 2.0, 1.2, 1.6) * _half(a, s, 0.0)
    d += ((0.15 + 0.2 * rig.cheek_fullness) * fold)[:, None] * rig.normals
    return d


def mouth_funnel(rig: FaceRig) -> np.ndarray:
    a = rig.a
    up, low = _lip_band(rig, True, 1.1), _lip_band(rig, False, 1.1)
    centre = np.exp(-0.5 * (a / 1.5) ** 2)
    d = ((up + low) * 0.65 * rig.lip_fullness)[:, None] * np.array([0.0, 0.0, 1.0])
    d += (up * 0.3 * centre)[:, None] * np.array([0.0, 1.0, 0.0])
    d += (low * 0.3 * centre)[:, None] * np.array([0.0, -1.0, 0.0])
    for s in (1.0, -1.0):
        w = _corner_weight(rig, s, 1.2, 1.0)
        d += (0.45 * w)[:, None] * np.array([-s, 0.0, 0.3])
    return d


def mouth_pucker(rig: FaceRig) -> np.ndarray:
    up, low = _lip_band(rig, True, 1.2), _lip_band(rig, False, 1.2)
    d = _close_rims(rig, np.ones(len(up)), np.ones(len(low)))
    d += ((up + low) * 0.8 * rig.lip_fullness)[:, None] * np.array([0.0, 0.0, 1.0])
    d += (up * 0.15)[:, None] * np.array([0.0, -1.0, 0.0]) + (low * 0.15)[:, None] * np.array([0.0, 1.0, 0.0])
    for s in (1.0, -1.0):
        w = _corner_weight(rig, s, 1.4, 1.1)
        d += (0.7 * w)[:, None] * np.array([-s, 0.0, 0.4])
    return d


def mouth_sideways(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    w = _bump(rig, a, b - ml, 0.0, 0.0, 4.2, 2.4, spread=0.6) * _front(rig)
    d = (1.0 * w)[:, None] * np.array([s, 0.0, 0.0]) * rig.size
    # The leading corner tucks back around the dental arch, the trailing one comes forward.
    for side, dz in ((s, -0.35), (-s, 0.2)):
        d += (dz * _corner_weight(rig, side, 1.3, 1.2))[:, None] * np.array([0.0, 0.0, 1.0])
    return d


def mouth_roll(rig: FaceRig, upper: bool) -> np.ndarray:
    band = _lip_band(rig, upper, 1.0)
    sign = 1.0 if upper else -1.0
    # The vermilion turns in over the teeth: back, and toward the other lip.
    d = (band * 0.65 * rig.lip_fullness)[:, None] * np.array([0.0, -0.25 * sign, -1.0])
    skin = _lip_band(rig, upper, 2.0) - band
    d += (0.2 * np.clip(skin, 0.0, 1.0))[:, None] * np.array([0.0, -sign, 0.0])
    return d


def mouth_shrug(rig: FaceRig, upper: bool) -> np.ndarray:
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    if upper:
        w = _lip_band(rig, True, 1.4)
        return (0.38 * w)[:, None] * np.array([0.0, 1.0, 0.35]) + \
            (0.25 * _lip_band(rig, False, 1.0))[:, None] * np.array([0.0, 1.0, 0.2])
    # Mentalis: the chin boss rises and bunches, pushing the lower lip up and out.
    chin = _bump(rig, a, b - ml, 0.0, -2.6, 2.0, 2.2)
    d = (0.55 * chin)[:, None] * np.array([0.0, 1.0, 0.25]) * rig.size
    d += ((0.1 + 0.1 * rig.laxity) * chin**2)[:, None] * rig.normals
    d += (0.35 * _lip_band(rig, False, 1.0))[:, None] * np.array([0.0, 0.8, 0.6])
    return d


# ------------------------------------------------------------------------------------------- nose
def nose_sneer(rig: FaceRig, s: float) -> np.ndarray:
    a, b = rig.a, rig.b
    ml = rig.mouth_line
    # Levator labii superioris alaeque nasi: ala and the side of the nose up, upper lip beside it up.
    ala = _bump(rig, s * a, b, 1.3, NOSE_TIP_B - 0.2, 1.3, 1.8) * _side_ramp(a, s)
    d = _tangential(rig, (0.55 * ala)[:, None] * np.array([0.05 * s, 1.0, 0.0]) * rig.size)
    lip = _bump(rig, s * a, b - ml, 1.1, 0.6, 1.2, 1.4) * _side_ramp(a, s)
    d += (0.3 * lip)[:, None] * np.array([0.0, 1.0, 0.0])
    # Skin under the eye bunches up; procerus draws the inner brow down a little.
    under_eye = _bump(rig, s * a, b, 2.2, EYE_B - 1.1, 1.4, 0.9) * _half(a, s, 0.0)
    d += _tangential(rig, (0.25 * under_eye)[:, None] * np.array([0.0, 1.0, 0.0]))
    d += ((0.1 + 0.1 * rig.laxity) * under_eye)[:, None] * rig.normals
    brow = _bump(rig, s * a, b, 1.3, EYE_B + 1.9, 1.3, 1.0) * _half(a, s, -0.2)
    d += _tangential(rig, (0.2 * brow)[:, None] * np.array([0.0, -1.0, 0.0]))
    return d


def tongue_out(rig: FaceRig) -> np.ndarray:
    # The tongue is not part of the skin mesh; the skin shows a slightly dropped jaw and the lower lip
    # pushed forward and down over it.
    d = _jaw_rotation(rig, np.deg2rad(5.0) * _jaw_range(rig))
    low, up = _lip_band(rig, False, 1.1), _lip_band(rig, True, 0.8)
    d += (0.45 * low * rig.lip_fullness)[:, None] * np.array([0.0, -0.5, 1.0])
    d += (0.12 * up)[:, None] * np.array([0.0, 0.6, 0.5])
    return d


# ---------------------------------------------------------------------------------------- registry
def _sided(fn: Callable[[FaceRig, float], np.ndarray]) -> dict[str, Callable[[FaceRig], np.ndarray]]:
    return {"L": lambda rig: fn(rig, 1.0), "R": lambda rig: fn(rig, -1.0)}


_DEFORMERS: dict[str, Callable[[FaceRig], np.ndarray]] = {}
for _stem, _fn in {
    "browDown": brow_down, "browInnerUp": brow_inner_up, "browOuterUp": brow_outer_up,
    "cheekPuff": cheek_puff, "cheekRaiser": lambda r, s: cheek_raise(r, s, local=False),
    "cheekSquint": lambda r, s: cheek_raise(r, s, local=True), "eyeBlink": eye_blink,
    "eyeLookDown": lambda r, s: eye_look_vertical(r, s, -1.0),
    "eyeLookUp": lambda r, s: eye_look_vertical(r, s, 1.0),
    # Looking in turns the cornea toward the nose: -X for the left eye, +X for the right.
    "eyeLookIn": lambda r, s: eye_look_sideways(r, s, -s),
    "eyeLookOut": lambda r, s: eye_look_sideways(r, s, s),
    "eyeSquint": eye_squint, "eyeWide": eye_wide, "mouthDimple": mouth_dimple, "mouthFrown": mouth_frown,
    "mouthLowerDown": mouth_lower_down, "mouthPress": mouth_press, "mouthSmile": mouth_smile,
    "mouthStretch": mouth_stretch, "mouthUpperUp": mouth_upper_up, "noseSneer": nose_sneer,
}.items():
    for _side, _f in _sided(_fn).items():
        _DEFORMERS[f"{_stem}_{_side}"] = _f
_DEFORMERS.update({
    "jawForward": jaw_forward,
    "jawLeft": lambda r: jaw_sideways(r, 1.0),
    "jawRight": lambda r: jaw_sideways(r, -1.0),
    "jawOpen": jaw_open,
    "mouthClose": mouth_close,
    "mouthFunnel": mouth_funnel,
    "mouthLeft": lambda r: mouth_sideways(r, 1.0),
    "mouthRight": lambda r: mouth_sideways(r, -1.0),
    "mouthPucker": mouth_pucker,
    "mouthRollLower": lambda r: mouth_roll(r, upper=False),
    "mouthRollUpper": lambda r: mouth_roll(r, upper=True),
    "mouthShrugLower": lambda r: mouth_shrug(r, upper=False),
    "mouthShrugUpper": lambda r: mouth_shrug(r, upper=True),
    "tongueOut": tongue_out,
})


# --------------------------------------------------------------------------------------------- API
def expression_displacement(identity: Identity, unit_name: str) -> np.ndarray:
    """(V, 3) float32 displacement of ``unit_name`` (a FACS unit or ``"neutral"``) from the identity's neutral."""
    if unit_name == NEUTRAL:
        return np.zeros((template().mesh.n_vertices, 3), dtype=np.float32)
    unit(unit_name)  # unknown names raise with near matches
    rig = face_rig(identity)
    d = _DEFORMERS[unit_name](rig)
    if not np.isfinite(d).all():
        raise ExpDiffInputError(None, f"expression {unit_name!r} of identity seed {identity.seed} is not finite")
    return d.astype(np.float32)


def expression_vertices(identity: Identity, unit_name: str) -> np.ndarray:
    """(V, 3) float32 vertices of ``identity`` making ``unit_name`` (``"neutral"`` gives the neutral)."""
    rig = face_rig(identity)
    return (rig.neutral + expression_displacement(identity, unit_name)).astype(np.float32)


def expression_set(identity: Identity, names: tuple[str, ...] = EXPRESSIONS) -> np.ndarray:
    """(len(names), V, 3) float32 vertices for ``names`` (default: neutral + the 56 units, in facs order)."""
    return np.stack([expression_vertices(identity, n) for n in names])


def mean_delta_transfer_error(train: list[Identity], test: list[Identity],
                              names: tuple[str, ...] = UNIT_NAMES) -> dict[str, float]:
    """How wrong the linear "3DMM" transfer is on held-out identities, per unit.

    The baseline adds the mean displacement of ``train`` to each test neutral. Returned per unit:
    sum over test identities and vertices of |baseline - truth| divided by the sum of |truth displacement|
    (both vertex-wise Euclidean), i.e. mean vertex error as a fraction of mean expression displacement.
    """
    mean = {n: 0.0 for n in names}
    for person in train:
        for n in names:
            mean[n] = mean[n] + expression_displacement(person, n).astype(np.float64) / len(train)
    err = dict.fromkeys(names, 0.0)
    disp = dict.fromkeys(names, 0.0)
    for person in test:
        for n in names:
            truth = expression_displacement(person, n).astype(np.float64)
            err[n] += float(np.linalg.norm(mean[n] - truth, axis=1).sum())
            disp[n] += float(np.linalg.norm(truth, axis=1).sum())
    return {n: err[n] / disp[n] for n in names}
