"""ICT-FaceKit adapter: identities and expressions from the ICT-FaceKit light face model, on its own topology.

Source folder (not bundled; see ``shared/data/ict-facekit``): ``generic_neutral_mesh.obj`` (26,719 vertices,
cm, UDIM tiles 1001-1007), ``ict_facekit_deltas.npz`` (``neutral``, ``identity_deltas`` (100, V, 3),
``expression_deltas`` (57, V, 3), ``expression_names``) and ``vertex_indices.json`` (68 dlib-order landmarks).

- An identity is ``neutral + sum_i w_i * identity_deltas[i]`` with ``w_i ~ N(0, 1) * identity_scale``
  drawn from the identity seed (the modes are PCA directions already scaled per mode, so a unit normal
  weight gives a plausible face; the default scale keeps them a little closer to the mean).
- An expression unit is the identity plus ICT's shape of the same name (``facs.ICT_UNIT_NAMES``); the two
  pupil-dilation shapes are not units and ``tongueOut`` has no ICT shape (``facs.UNITS_MISSING_FROM_ICT``),
  so ICT datasets list it under ``absent_units``. One exception: ICT's ``mouthClose`` is a corrective meant
  to be added to ``jawOpen`` (alone it pushes the lower lip ~4 cm up through the upper one), so the
  ``mouthClose`` unit is ``jawOpen + mouthClose``: the jaw dropped with the lips sealed, as ARKit defines it.
- Skin maps come from the same strain-driven synthesis as the procedural factory, on ICT's UVs, over the
  skin groups only (``M_Face`` in 1001, ``M_BackHead`` in 1002): the eye parts' UV islands overlap the face
  in 1001 and the mouth, teeth, lacrimal and lash tiles are not skin.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import facs
from ..errors import ExpDiffInputError
from ..io.mesh import FaceMesh, read_obj
from .skin import SkinRegions, group_vertex_uvs

ICT_MESH = "generic_neutral_mesh.obj"
ICT_DELTAS = "ict_facekit_deltas.npz"
ICT_LANDMARKS = "vertex_indices.json"
ICT_SKIN_GROUPS = ("M_Face", "M_BackHead")
ICT_SKIN_UDIMS = (1001, 1002)
DEFAULT_IDENTITY_SCALE = 0.6
# units built from several ICT shapes (see the module docstring)
ICT_COMBINED_SHAPES = {"mouthClose": ("jawOpen", "mouthClose")}

# dlib 68-point landmark layout (ICT's ``idx_to_landmark_verts``): outer lip contour, brows medial -> lateral.
_OUTER_LIP = tuple(range(48, 60))
_BROWS = ((21, 20, 19, 18, 17), (22, 23, 24, 25, 26))
# freckle centres: each cheek (between jaw, nose wing and lower eyelid) and the nose bridge
_CHEEKS = ((2, 31, 41), (14, 35, 46))
_NOSE_BRIDGE = 28


@dataclass(frozen=True)
class IctFaceKit:
    """The ICT-FaceKit light model.

    mesh: generic neutral FaceMesh (cm). identity_deltas: (I, V, 3) float32 PCA identity modes.
    unit_deltas: {unit name: (V, 3) float32} for every unit ICT has. landmarks: (68,) int vertex indices.
    source: the folder it came from.
    """

    mesh: FaceMesh
    identity_deltas: np.ndarray
    unit_deltas: dict[str, np.ndarray]
    landmarks: np.ndarray
    source: Path

    @property
    def units(self) -> list[str]:
        """Vocabulary units ICT provides, in vocabulary order."""
        return [u for u in facs.UNIT_NAMES if u in self.unit_deltas]

    @property
    def absent_units(self) -> dict[str, str]:
        """Vocabulary units ICT lacks, with why."""
        return {u: "ICT-FaceKit has no shape for this unit" for u in facs.UNIT_NAMES if u not in self.unit_deltas}


def load_ict_facekit(source: str | os.PathLike) -> IctFaceKit:
    """Read the ICT-FaceKit folder; ExpDiffInputError naming the file for anything missing or inconsistent."""
    source = Path(source)
    if not source.is_dir():
        raise ExpDiffInputError(source, "ICT-FaceKit folder not found")
    mesh = read_obj(source / ICT_MESH, units="cm")
    mesh.name = "ict_facekit"
    missing_groups = [g for g in ICT_SKIN_GROUPS if g not in mesh.group_names]
    if missing_groups:
        raise ExpDiffInputError(source / ICT_MESH, f"lacks the skin material group(s) {missing_groups}")
    deltas_path = source / ICT_DELTAS
    if not deltas_path.is_file():
        raise ExpDiffInputError(deltas_path, "ICT-FaceKit deltas file not found")
    try:
        with np.load(deltas_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("identity_deltas", "expression_deltas", "expression_names")}
    except KeyError as exc:
        raise ExpDiffInputError(deltas_path, f"missing array {exc}") from None
    except Exception as exc:  # noqa: BLE001 - numpy/zip raise several types for damaged archives
        raise ExpDiffInputError(deltas_path, f"cannot read ({exc})") from None
    n = mesh.n_vertices
    for key in ("identity_deltas", "expression_deltas"):
        a = arrays[key]
        if a.ndim != 3 or a.shape[1:] != (n, 3):
            raise ExpDiffInputError(deltas_path, f"{key} has shape {a.shape}, expected (K, {n}, 3)")
    names = [str(x) for x in arrays["expression_names"]]
    if len(names) != len(arrays["expression_deltas"]):
        raise ExpDiffInputError(deltas_path, "expression_names and expression_deltas differ in length")
    shapes = {name: arrays["expression_deltas"][i].astype(np.float32) for i, name in enumerate(names)}
    unit_deltas = {facs.ICT_UNIT_NAMES[name]: delta for name, delta in shapes.items() if name in facs.ICT_UNIT_NAMES}
    for unit, parts in ICT_COMBINED_SHAPES.items():
        if unit in unit_deltas and all(p in shapes for p in parts):
            unit_deltas[unit] = np.sum([shapes[p] for p in parts], axis=0).astype(np.float32)
    lm_path = source / ICT_LANDMARKS
    try:
        landmarks = np.asarray(json.loads(lm_path.read_text(encoding="utf-8"))["idx_to_landmark_verts"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise ExpDiffInputError(lm_path, f"cannot read the 68 landmark vertices ({exc})") from None
    if landmarks.shape != (68,) or landmarks.min() < 0 or landmarks.max() >= n:
        raise ExpDiffInputError(lm_path, f"idx_to_landmark_verts must be 68 vertex indices below {n}")
    return IctFaceKit(mesh, arrays["identity_deltas"].astype(np.float32), unit_deltas, landmarks, source)


def identity_weights(seed: int, n_modes: int, scale: float = DEFAULT_IDENTITY_SCALE) -> np.ndarray:
    """(n_modes,) float32 identity weights ``N(0, 1) * scale`` drawn from ``seed``."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x1C7])))
    return (rng.standard_normal(n_modes) * scale).astype(np.float32)


def identity_vertices(kit: IctFaceKit, seed: int, scale: float = DEFAULT_IDENTITY_SCALE) -> np.ndarray:
    """(V, 3) float32 neutral of the identity drawn from ``seed``."""
    w = identity_weights(seed, len(kit.identity_deltas), scale)
    offset = np.tensordot(w.astype(np.float64), kit.identity_deltas.astype(np.float64), axes=1)
    return (kit.mesh.vertices + offset).astype(np.float32)


def expression_vertices(kit: IctFaceKit, neutral: np.ndarray, unit: str) -> np.ndarray:
    """(V, 3) float32 vertices of ``unit`` on an identity's ``neutral`` (ICT's linear blendshape model)."""
    if unit == facs.NEUTRAL:
        return np.asarray(neutral, dtype=np.float32)
    if unit not in kit.unit_deltas:
        raise ExpDiffInputError(kit.source / ICT_DELTAS, f"ICT-FaceKit has no shape for unit {unit!r}")
    return (np.asarray(neutral, dtype=np.float32) + kit.unit_deltas[unit]).astype(np.float32)


def ict_skin_regions(kit: IctFaceKit) -> SkinRegions:
    """Lips, brows and freckle centres in ICT's face UVs (tile 1001) from its 68 landmarks."""
    uv = group_vertex_uvs(kit.mesh, "M_Face")
    at = uv[kit.landmarks]
    if np.isnan(at).any():
        bad = [int(i) for i in np.flatnonzero(np.isnan(at[:, 0]))]
        raise ExpDiffInputError(kit.source / ICT_LANDMARKS, f"landmarks {bad} are not on the M_Face group")
    return SkinRegions(
        lip_outline=at[list(_OUTER_LIP)],
        brow_lines=tuple(at[list(b)] for b in _BROWS),
        freckle_centres=np.stack([at[list(c)].mean(0) for c in _CHEEKS] + [at[_NOSE_BRIDGE]]),
    )
