"""Synthetic identities: shape and skin parameters drawn deterministically from a seed.

Shape parameters are dimensionless (0 is the template; most span [-1, 1]) and map onto the head
generator's ``HeadShape`` (``head_shape``); the neutral of an identity is the generator evaluated with those
values on the template's vertex chart, so every identity shares the template topology and UVs.

Every shape parameter is visible in the neutral geometry (age laxity, for example, sags the cheeks, jowls and
lateral brows), so a model that sees the neutral can in principle predict how that face moves.

Skin parameters drive the BRDF synthesis elsewhere: ``melanin`` and ``haemoglobin`` are volume fractions
(chromophore concentrations of a two-layer skin model), ``freckle_density``/``fine_lines`` in [0, 1],
``pore_scale`` a size multiplier, ``oiliness`` in [0, 1] scales specular, ``age`` in years.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from ..errors import ExpDiffInputError
from .template import HeadShape, head_surface, template


@dataclass(frozen=True)
class Identity:
    """One synthetic person. ``seed`` is where it came from (-1 for hand-made identities)."""

    seed: int = -1
    # shape, 0 = template
    face_width: float = 0.0  # [-1, 1] -> +-6% head width
    jaw_width: float = 0.0  # [-1, 1] narrow .. square jaw
    jaw_length: float = 0.0  # [-1, 1] short .. long lower face, chin further from the jaw hinge
    chin: float = 0.0  # [-1, 1] chin boss
    nose_length: float = 0.0  # [-1, 1] -> tip +-0.35 cm
    nose_width: float = 0.0  # [-1, 1] -> +-13%
    nose_projection: float = 0.0  # [-1, 1] -> +-0.35 cm
    cheekbone: float = 0.0  # [-1, 1]
    cheek_fullness: float = 0.0  # [0, 1] buccal/malar fat
    brow_ridge: float = 0.0  # [-1, 1]
    lip_fullness: float = 0.0  # [-1, 1]
    eye_depth: float = 0.0  # [-1, 1] shallow .. deep-set eyes
    laxity: float = 0.0  # [0, 1] age-related soft-tissue sag
    # skin
    age: float = 30.0  # years
    melanin: float = 0.08
    haemoglobin: float = 0.05
    freckle_density: float = 0.0
    pore_scale: float = 1.0
    fine_lines: float = 0.0
    oiliness: float = 0.5

    def to_dict(self) -> dict[str, float]:
        """Plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Identity":
        """Inverse of ``to_dict``; unknown keys raise ExpDiffInputError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ExpDiffInputError(None, f"unknown identity parameter(s): {', '.join(unknown)}")
        return cls(**{k: (int(v) if k == "seed" else float(v)) for k, v in values.items()})


def head_shape(identity: Identity) -> HeadShape:
    """The head-generator parameters of ``identity``."""
    base = HeadShape()
    fr = base.face_radii
    fc = base.face_center
    return dataclasses.replace(
        base,
        face_width=1.0 + 0.06 * identity.face_width,
        jaw_taper=base.jaw_taper + 0.07 * identity.jaw_width,
        face_radii=(fr[0], fr[1] + 0.8 * identity.jaw_length, fr[2]),
        face_center=(fc[0], fc[1] - 0.45 * identity.jaw_length, fc[2]),
        chin_forward=0.4 * identity.jaw_length + 0.15 * identity.chin,
        chin=base.chin + 0.25 * identity.chin,
        nose_length=0.35 * identity.nose_length,
        nose_width=1.0 + 0.13 * identity.nose_width,
        nose_projection=base.nose_projection + 0.35 * identity.nose_projection,
        cheekbone=base.cheekbone + 0.2 * identity.cheekbone,
        cheek_fullness=identity.cheek_fullness,
        brow_ridge=base.brow_ridge + 0.2 * identity.brow_ridge,
        lip_fullness=base.lip_fullness + 0.3 * identity.lip_fullness,
        eye_depth=base.eye_depth + 0.2 * identity.eye_depth,
        laxity=identity.laxity,
    )


def sample_identity(seed: int) -> Identity:
    """A random plausible identity; the same seed always gives the same identity (NumPy PCG64)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1D3E]))

    def shape_value() -> float:
        return float(np.clip(rng.normal(0.0, 0.45), -1.0, 1.0))

    age = float(rng.uniform(18.0, 78.0))
    laxity = float(np.clip((age - 28.0) / 45.0 + rng.normal(0.0, 0.08), 0.0, 1.0))
    melanin = float(np.exp(rng.uniform(np.log(0.02), np.log(0.45))))
    return Identity(
        seed=int(seed),
        face_width=shape_value(),
        jaw_width=shape_value(),
        jaw_length=shape_value(),
        chin=shape_value(),
        nose_length=shape_value(),
        nose_width=shape_value(),
        nose_projection=shape_value(),
        cheekbone=shape_value(),
        cheek_fullness=float(rng.beta(2.0, 2.5)),
        brow_ridge=shape_value(),
        lip_fullness=shape_value(),
        eye_depth=shape_value(),
        laxity=laxity,
        age=age,
        melanin=melanin,
        haemoglobin=float(rng.uniform(0.02, 0.10)),
        # Freckles are mostly a trait of light skin.
        freckle_density=float(rng.beta(0.6, 3.0) * np.clip(1.2 - melanin / 0.3, 0.0, 1.0)),
        pore_scale=float(rng.uniform(0.7, 1.4)),
        fine_lines=float(np.clip((age - 25.0) / 50.0 + rng.normal(0.0, 0.08), 0.0, 1.0)),
        oiliness=float(rng.uniform(0.2, 0.8)),
    )


@functools.lru_cache(maxsize=32)
def _neutral(identity: Identity) -> np.ndarray:
    layout = template()
    v = head_surface(layout.chart_angles[:, 0], layout.chart_angles[:, 1], head_shape(identity))
    v = v.astype(np.float32)
    v.flags.writeable = False
    return v


def identity_vertices(identity: Identity) -> np.ndarray:
    """(V, 3) float32 neutral vertices of ``identity`` on the template topology (cm)."""
    return _neutral(identity).copy()
