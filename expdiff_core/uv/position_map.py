"""Position maps: per-vertex displacement from the template mean shape, rasterised per UDIM tile, in [-1, 1].

``P = clip((vertices - reference) / scale, -1, 1)`` interpolated barycentrically inside UV triangles and
dilated outside them; ``sample_displacements`` is the inverse (least squares over the covered texels, see
``raster.VertexSampler``).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import ExpDiffInputError
from ..io.mesh import FaceMesh
from .raster import UVRaster, VertexSampler, rasterize_attribute

_CM_PER_UNIT = {"cm": 1.0, "mm": 0.1, "m": 100.0}


@dataclass(frozen=True)
class PositionMapConfig:
    """How displacements are normalised into position maps; stored in the model config.

    scale_cm: the displacement (cm) that maps to +-1. Measured on ICT-FaceKit skin: the largest offset from
    the mean of identity (40 random identities, N(0, 1) weights) plus any of its 57 expressions is 4.9 cm;
    6 cm keeps a margin without wasting the VAE's precision (one 8-bit step of the map is
    scale / 127.5 = 0.47 mm at 6 cm).
    """

    scale_cm: float = 6.0

    def scale_in(self, units: str) -> float:
        """The scale in a mesh's ``units`` (``"cm"``, ``"mm"`` or ``"m"``)."""
        if units not in _CM_PER_UNIT:
            raise ExpDiffInputError(None, f"unknown mesh units {units!r}; expected one of {sorted(_CM_PER_UNIT)}")
        return self.scale_cm / _CM_PER_UNIT[units]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PositionMapConfig":
        return cls(scale_cm=float(data["scale_cm"]))


def position_maps(vertices: np.ndarray, reference: np.ndarray, rasters: Mapping[int, UVRaster],
                  scale: float) -> dict[int, np.ndarray]:
    """Displacement ``vertices - reference`` as one (3, H, W) float32 map per tile, in [-1, 1].

    vertices, reference: (V, 3) float32 in the same units as ``scale`` (reference: the template mean shape).
    Components beyond +-scale are clipped, with a warning naming how many.
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if vertices.shape != reference.shape or vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ExpDiffInputError(None, f"vertices {vertices.shape} and reference {reference.shape} must both be (V, 3)")
    if not scale > 0:
        raise ExpDiffInputError(None, f"position map scale must be positive, got {scale}")
    normalised = (vertices - reference) / np.float32(scale)
    n_clipped = int((np.abs(normalised) > 1.0).sum())
    if n_clipped:
        warnings.warn(f"{n_clipped} displacement component(s) exceed the position map scale {scale} and were "
                      f"clipped (largest {float(np.abs(normalised).max()) * scale:.3g})", stacklevel=2)
    normalised = np.clip(normalised, -1.0, 1.0)
    return {udim: rasterize_attribute(r, normalised) for udim, r in rasters.items()}


def sample_displacements(maps: Mapping[int, np.ndarray], mesh: FaceMesh, rasters: Mapping[int, UVRaster],
                         scale: float, sampler: VertexSampler | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Position maps -> per-vertex displacement: the inverse of ``position_maps``.

    maps: {udim: (3, H, W)} in [-1, 1]. Returns ``(displacement (V, 3) float32 in scale's units,
    covered (V,) bool)``; vertices on no sampled tile (e.g. eyes and teeth when only skin groups were
    rasterised) get 0 and ``covered`` False. Pass a ``VertexSampler`` built once to sample many maps.
    """
    sampler = sampler or VertexSampler(mesh, rasters)
    values, covered = sampler.sample(maps)
    if values.shape[1] != 3:
        raise ExpDiffInputError(None, f"position maps must have 3 channels, got {values.shape[1]}")
    return values * np.float32(scale), covered
