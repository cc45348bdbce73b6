"""Where each expression unit changes a face: per unit, the vertices and map texels its training changes touch.

A generator that makes whole-face changes also leaves small changes where an expression does nothing (a
diffused subspace mixes every unit's regions; measured on N: RMS 1e-4..1e-3 of the map range, peaks 0.02 in
albedo, sub-millimetre vertex drift on the back of the head). The training corpus says where a unit acts.
:class:`ExpressionSupport` keeps, per unit, the vertices some training identity moves by more than
``vertex_threshold`` and the map texels some identity changes by more than ``map_threshold``; the pipeline
keeps a generated expression's change only there. A free prompt or a blend gets the units' supports weighted
by its mix of units (as the prior's), clipped to 1; an expression with no unit in its mix (or ``neutral``) is
left as it is.

Stored as ``config.json`` + ``expression_support.safetensors`` (bit-packed uint8 masks).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import ExpDiffInputError
from ..fileio import atomic_dir
from .prior import MAP_CHANGING, MOVING, flatten_maps, map_size, unflatten_maps, unit_weights
from .weights import require_safetensors

Maps = dict[str, dict[int, np.ndarray]]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "expression_support.safetensors"
# The prior's own thresholds: a support never cuts what the prior's sparse parts store (it contains them).
VERTEX_THRESHOLD_CM = MOVING  # 0.1 um
MAP_THRESHOLD = MAP_CHANGING  # map units: 1/20 of an 8-bit level


@dataclass
class ExpressionSupportConfig:
    """expressions: the units, in mask order; map_layout: [[kind, udim, channels], ...] (flattening order of
    :func:`~expdiff_core.models.prior.flatten_maps`); thresholds in cm and map units."""

    expressions: list[str]
    vertex_count: int
    map_layout: list = field(default_factory=list)
    map_resolution: int = 0
    vertex_threshold: float = VERTEX_THRESHOLD_CM
    map_threshold: float = MAP_THRESHOLD
    units: str = "cm"
    fitted_on: dict = field(default_factory=dict)


class ExpressionSupport:
    """vertices (E, V) bool: unit e moves vertex v; maps (E, D) bool: unit e changes flattened map entry d."""

    def __init__(self, config: ExpressionSupportConfig, vertices: np.ndarray, maps: np.ndarray):
        e, d = len(config.expressions), map_size(config.map_layout, config.map_resolution)
        if vertices.shape != (e, config.vertex_count) or maps.shape != (e, d):
            raise ExpDiffInputError(None, f"support masks {vertices.shape} / {maps.shape} do not match the config's "
                                    f"{e} units, {config.vertex_count} vertices and {d} map entries")
        self.config = config
        self.vertices = vertices.astype(bool)
        self.maps = maps.astype(bool)
        self.index = {u: i for i, u in enumerate(config.expressions)}

    @property
    def expressions(self) -> list[str]:
        return list(self.config.expressions)

    def weights_for(self, expressions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """(N_expr, E) mixing weights from ``{unit: weight}`` dicts (units it does not know weigh 0)."""
        return unit_weights(expressions, self.index)

    def _weights(self, masks: np.ndarray, mix: np.ndarray) -> np.ndarray:
        """(N, X) float32 in [0, 1]: each row's mixed support; rows with no unit in their mix keep everything."""
        w = np.clip(np.abs(mix) @ masks.astype(np.float32), 0.0, 1.0)
        w[np.abs(mix).sum(axis=1) == 0] = 1.0
        return w

    def restrict_vertices(self, changes: np.ndarray, mix: np.ndarray) -> np.ndarray:
        """Vertex changes (N, V, 3) kept where each row's units move vertices -> (N, V, 3)."""
        return changes * self._weights(self.vertices, mix)[:, :, None].astype(changes.dtype)

    def restrict_maps(self, maps: Sequence[Maps], references: Sequence[Maps], mix: np.ndarray) -> list[Maps]:
        """Each row's maps (the layout's kinds and tiles, at the support's resolution) read against its reference:
        ``reference + support * (maps - reference)``; kinds outside the layout are returned as they are."""
        layout = self.config.map_layout
        weights = self._weights(self.maps, mix)
        out = []
        for row, (m, ref) in enumerate(zip(maps, references)):
            part = {k: {u: m[k][u][:c] for k2, u, c in layout if k2 == k} for k in {k for k, _, _ in layout}}
            base = {k: {u: ref[k][u][:c] for k2, u, c in layout if k2 == k} for k in part}
            flat, flat_ref = flatten_maps(part, layout), flatten_maps(base, layout)
            kept = unflatten_maps(flat_ref + weights[row] * (flat - flat_ref), layout, self.config.map_resolution)
            out.append({k: ({u: kept[k][u] for u in tiles} if k in kept else tiles) for k, tiles in m.items()})
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write a new folder (must not exist): config.json + bit-packed masks."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            save_file({"vertices": np.packbits(self.vertices, axis=1), "maps": np.packbits(self.maps, axis=1)},
                      str(tmp / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "ExpressionSupport":
        folder = Path(folder)
        try:
            data = json.loads((folder / CONFIG_NAME).read_text())
        except FileNotFoundError:
            raise ExpDiffInputError(folder, "expression support config.json not found") from None
        except json.JSONDecodeError as exc:
            raise ExpDiffInputError(folder / CONFIG_NAME, f"invalid JSON: {exc}") from None
        unknown = sorted(set(data) - set(ExpressionSupportConfig.__dataclass_fields__))
        if unknown:
            raise ExpDiffInputError(folder / CONFIG_NAME, f"unknown expression support key(s) {unknown}")
        config = ExpressionSupportConfig(**data)
        require_safetensors(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise ExpDiffInputError(weights, "expression support masks not found")
        t = load_file(str(weights))
        try:
            d = map_size(config.map_layout, config.map_resolution)
            vertices = np.unpackbits(t["vertices"], axis=1, count=config.vertex_count)
            maps = np.unpackbits(t["maps"], axis=1, count=d)
        except (KeyError, ValueError) as exc:
            raise ExpDiffInputError(weights, f"not expression support masks: {exc}") from None
        return cls(config, vertices, maps)


def fit_expression_support(largest_vertex_changes: Mapping[str, np.ndarray],
                           largest_map_changes: Mapping[str, np.ndarray], layout: Sequence[Sequence],
                           resolution: int, *, vertex_threshold: float = VERTEX_THRESHOLD_CM,
                           map_threshold: float = MAP_THRESHOLD, fitted_on: Mapping | None = None) -> ExpressionSupport:
    """The support from each unit's largest training change over identities: ``largest_vertex_changes``
    {unit: (V,) displacement length, cm}, ``largest_map_changes`` {unit: (D,) absolute change, ``layout`` order}."""
    expressions = list(largest_vertex_changes)
    if sorted(expressions) != sorted(largest_map_changes):
        raise ExpDiffInputError(None, "vertex and map changes must cover the same units")
    v = np.stack([np.asarray(largest_vertex_changes[e], np.float32) for e in expressions])
    m = np.stack([np.asarray(largest_map_changes[e], np.float32) for e in expressions])
    config = ExpressionSupportConfig(expressions, int(v.shape[1]), [list(x) for x in layout], int(resolution),
                                     float(vertex_threshold), float(map_threshold), "cm", dict(fitted_on or {}))
    return ExpressionSupport(config, v > vertex_threshold, m > map_threshold)
