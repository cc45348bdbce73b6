"""Synthetic face factory: one identity -> neutral + every expression unit, meshes and BRDF maps.

A *face source* says what a subject is made of: the template topology, which material groups are skin,
which units it provides, how to draw an identity from a seed and how to pose it. ``IctSource`` adapts
ICT-FaceKit (``synth.ict``); ``ProceduralSource`` uses our own template, identities and expressions. Skin
maps for every expression come from ``synth.skin`` (strain-driven) on the source's skin UV tiles.

``synthesize_subject`` returns one identity in memory (all expressions; position maps too).
``write_dataset`` streams N identities into the dataset format (``io.dataset``), one expression at a time,
optionally over several worker processes; identity ``k`` of a dataset with seed ``S`` is always drawn from
``identity_seed(S, k)``, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import numpy as np
from tqdm.auto import tqdm

from .. import __version__, facs
from ..errors import ExpDiffInputError
from ..io.dataset import BRDF_KINDS, DatasetSpec, DatasetWriter, write_expression_files
from ..io.mesh import FaceMesh
from ..uv.position_map import PositionMapConfig, position_maps
from ..uv.raster import UVRaster, uv_raster
from . import ict
from .skin import (MAX_RESOLUTION, MIN_RESOLUTION, SkinLayout, SkinParams, SkinRegions, SkinSynthesizer,
                   group_vertex_uvs, random_skin_params)


@dataclass
class SourceIdentity:
    """An identity drawn from a face source, ready to be posed and textured.

    seed: what it was drawn from. neutral: (V, 3) float32 cm. skin: its skin parameters. regions: lips,
    brows and freckle centres in UV (None: plain skin). info: JSON-able description (parameters, weights).
    model: the source's own identity object, if it has one (passed back to ``expression``).
    """

    seed: int
    neutral: np.ndarray
    skin: SkinParams
    regions: SkinRegions | None
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None


class FaceSource(Protocol):
    """What the factory needs from a source of faces."""

    name: str
    template: FaceMesh
    skin_groups: tuple[str, ...]
    units: list[str]
    absent_units: dict[str, str]

    def identity(self, seed: int) -> SourceIdentity: ...

    def expression(self, identity: SourceIdentity, unit: str) -> np.ndarray: ...


class IctSource:
    """ICT-FaceKit identities (PCA weights from the seed) and its ARKit-style shapes, on ICT's topology."""

    def __init__(self, source: str | os.PathLike, identity_scale: float | None = None):
        self.kit = ict.load_ict_facekit(source)
        self.name = "ICT-FaceKit"
        self.template = self.kit.mesh
        self.skin_groups = tuple(ict.ICT_SKIN_GROUPS)
        self.units = self.kit.units
        self.absent_units = {u: "ICT-FaceKit has no shape for this unit" for u in self.kit.absent_units}
        self.identity_scale = ict.DEFAULT_IDENTITY_SCALE if identity_scale is None else float(identity_scale)
        self._regions = ict.ict_skin_regions(self.kit)

    def identity(self, seed: int) -> SourceIdentity:
        skin = random_skin_params(seed)
        weights = ict.identity_weights(seed, len(self.kit.identity_deltas), self.identity_scale)
        return SourceIdentity(seed, ict.identity_vertices(self.kit, seed, self.identity_scale), skin,
                        self._regions, {"skin": _plain(skin), "identity_weights": [round(float(w), 6) for w in weights],
                                        "identity_scale": self.identity_scale})

    def expression(self, identity: SourceIdentity, unit: str) -> np.ndarray:
        return ict.expression_vertices(self.kit, identity.neutral, unit)

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "identity_model": "neutral + sum_i w_i identity_deltas[i], w ~ N(0, 1) * scale",
                "identity_scale": self.identity_scale, "combined_shapes": {k: list(v) for k, v in
                                                                         ict.ICT_COMBINED_SHAPES.items()}}


class ProceduralSource:
    """Our procedural faces: template head, identities from ``synth.identity``, the 56 units from
    ``synth.expressions``; skin from each identity's own skin parameters (``skin_params_of``)."""

    def __init__(self):
        from .template import template_landmarks, template_mesh, template_regions

        self.name = "procedural"
        self.template = template_mesh()
        self.skin_groups = ("M_Face", "M_BackHead")
        self.units = list(facs.UNIT_NAMES)
        self.absent_units: dict[str, str] = {}
        self._regions = template_regions()
        self._landmarks = template_landmarks()

    def identity(self, seed: int) -> SourceIdentity:
        from .identity import identity_vertices, sample_identity

        person = sample_identity(seed)
        neutral = identity_vertices(person)
        skin = skin_params_of(person)
        regions = template_skin_regions(self.template.with_vertices(neutral), self._regions, self._landmarks)
        return SourceIdentity(seed, neutral, skin, regions,
                              {"identity": person.to_dict(), "skin": _plain(skin)}, model=person)

    def expression(self, identity: SourceIdentity, unit: str) -> np.ndarray:
        from .expressions import expression_vertices

        return expression_vertices(identity.model, unit)

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "template": "expdiff_core.synth.template (procedural head)",
                "identities": "expdiff_core.synth.identity.sample_identity(identity seed)",
                "expressions": "expdiff_core.synth.expressions"}


def skin_params_of(person: Any) -> SkinParams:
    """Skin synthesis parameters of a ``synth.identity.Identity``.

    Its melanin / haemoglobin volume fractions (0.02-0.45 / 0.02-0.10) map linearly onto the skin model's
    concentrations (0.09-0.95 / 0.21-0.45, fair to very dark, pale to flushed); pore size (0.7-1.4) onto
    pore visibility; age in years (20-75) onto [0, 1].
    """
    return SkinParams(
        melanin=float(np.clip(0.05 + 2.0 * person.melanin, 0.0, 1.0)),
        haemoglobin=float(np.clip(0.15 + 3.0 * person.haemoglobin, 0.0, 1.0)),
        freckles=float(np.clip(person.freckle_density, 0.0, 1.0)),
        pores=float(np.clip(person.pore_scale - 0.5, 0.0, 1.0)),
        fine_lines=float(np.clip(person.fine_lines, 0.0, 1.0)),
        oiliness=float(np.clip(person.oiliness, 0.0, 1.0)),
        age=float(np.clip((person.age - 20.0) / 55.0, 0.0, 1.0)),
    )


def template_skin_regions(mesh: FaceMesh, regions: Mapping[str, np.ndarray], landmarks: Mapping[str, int]
                          ) -> SkinRegions:
    """Lips, brows and freckle centres in UV for our template head (or an identity on it).

    regions / landmarks: the template's named vertex sets and vertices (``synth.template``). The lip outline
    is the upper/lower lip bands' outer edge, tapered into the mouth corners with a slight Cupid's bow; each
    brow is the centre line of its band, medial to lateral, given an arch (peak ~2/3 out, 3.5 mm high).
    """
    uv = group_vertex_uvs(mesh, "M_Face")
    v3 = mesh.vertices.astype(np.float64)
    corner_r, corner_l = uv[landmarks["mouth_corner_R"]], uv[landmarks["mouth_corner_L"]]
    upper, lower = uv[regions["lips_upper"]], uv[regions["lips_lower"]]
    n_bins = 12
    edges = np.linspace(corner_r[0], corner_l[0], n_bins + 1)
    top, bottom = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        centre = 0.5 * (lo + hi)
        s = 2.0 * (centre - corner_r[0]) / (corner_l[0] - corner_r[0]) - 1.0  # -1 at the right corner .. 1
        rim = corner_r[1] + (corner_l[1] - corner_r[1]) * 0.5 * (s + 1.0)
        taper = np.sqrt(max(1.0 - abs(s) ** 3, 0.0))
        up = upper[(upper[:, 0] >= lo) & (upper[:, 0] <= hi), 1]
        down = lower[(lower[:, 0] >= lo) & (lower[:, 0] <= hi), 1]
        height_up = (up.max() - rim) if up.size else 0.0
        height_down = (rim - down.min()) if down.size else 0.0
        bow = 1.0 - 0.18 * np.exp(-(s / 0.15) ** 2)  # the philtrum notch of the upper lip
        top.append((centre, rim + height_up * taper * bow))
        bottom.append((centre, rim - height_down * taper))
    lip_outline = np.array([corner_r] + top + [corner_l] + bottom[::-1], dtype=np.float64)

    brow_lines = []
    for side in ("R", "L"):
        ids = regions[f"brow_{side}"]
        lateral = np.abs(v3[ids, 0])
        order = np.argsort(lateral, kind="stable")
        chunks = np.array_split(order, 6)
        line_uv = np.array([uv[ids[c]].mean(0) for c in chunks])
        line_3d = np.array([v3[ids[c]].mean(0) for c in chunks])
        cm_per_uv = (np.linalg.norm(np.diff(line_3d, axis=0), axis=1).sum()
                     / max(np.linalg.norm(np.diff(line_uv, axis=0), axis=1).sum(), 1e-9))
        t = np.linspace(0.0, 1.0, len(line_uv))
        line_uv[:, 1] += 0.35 * np.sin(np.pi * t ** 0.75) / cm_per_uv
        brow_lines.append(line_uv)

    cheeks = [uv[regions[f"cheek_{side}"]].mean(0) for side in ("R", "L")]
    bridge = 0.5 * (uv[landmarks["nasion"]] + uv[landmarks["nose_tip"]])
    return SkinRegions(lip_outline=lip_outline, brow_lines=tuple(brow_lines),
                       freckle_centres=np.stack(cheeks + [bridge]))


def _plain(params: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(params).items()}


# ------------------------------------------------------------------------------------- one subject
@dataclass
class Subject:
    """One identity with every expression.

    template: the source's template FaceMesh (topology, UVs). vertices: {expression: (V, 3) float32 cm},
    ``neutral`` first. maps: {expression: {kind: {udim: (C, R, R) float32}}}, kinds albedo, specular,
    roughness, normal, and ``position`` ((3, R, R) in [-1, 1], see ``uv.position_map``).
    """

    name: str
    seed: int
    template: FaceMesh
    vertices: dict[str, np.ndarray]
    maps: dict[str, dict[str, dict[int, np.ndarray]]]
    info: dict[str, Any]

    @property
    def expressions(self) -> list[str]:
        return list(self.vertices)


def check_resolution(resolution: int) -> int:
    """``resolution`` as int if it is in MIN_RESOLUTION..MAX_RESOLUTION, else ExpDiffInputError."""
    if not isinstance(resolution, (int, np.integer)) or not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
        raise ExpDiffInputError(None, f"resolution {resolution} must be an integer in {MIN_RESOLUTION}..{MAX_RESOLUTION}")
    return int(resolution)


def skin_rasters(source: FaceSource, resolution: int, cache_dir: str | os.PathLike | None = None
                 ) -> dict[int, UVRaster]:
    """Texel tables of the source's skin groups at ``resolution``, every texel filled (cached when asked)."""
    return uv_raster(source.template, check_resolution(resolution), groups=source.skin_groups,
                     cache_dir=cache_dir, dilation=None)


def expression_names(source: FaceSource) -> list[str]:
    """``neutral`` followed by the source's units in vocabulary order."""
    return [facs.NEUTRAL] + list(source.units)


def iter_expressions(source: FaceSource, identity: SourceIdentity, rasters: Mapping[int, UVRaster],
                     layout: SkinLayout | None = None
                     ) -> Iterator[tuple[str, np.ndarray, dict[str, dict[int, np.ndarray]]]]:
    """(expression, vertices (V, 3), {kind: {udim: (C, R, R)}}) for the neutral and every unit, in order.

    One expression at a time, so a 4K subject never holds more than one expression's maps. layout: the
    SkinLayout of ``source.template`` and ``rasters``, to share between identities.
    """
    neutral_mesh = source.template.with_vertices(identity.neutral, name=f"identity_{identity.seed}")
    synth = SkinSynthesizer(neutral_mesh, rasters, identity.skin, identity.seed, identity.regions, layout)
    for name in expression_names(source):
        if name == facs.NEUTRAL:
            yield name, identity.neutral, synth.maps()
        else:
            vertices = source.expression(identity, name)
            yield name, vertices, synth.maps(vertices)


def synthesize_subject(seed: int, resolution: int, source: FaceSource | None = None,
                       cache_dir: str | os.PathLike | None = None, name: str | None = None,
                       position: PositionMapConfig | None = PositionMapConfig()) -> Subject:
    """One identity drawn from ``seed`` with the neutral and all units: vertices and maps in memory.

    source: default the procedural ``ProceduralSource``. position: how to normalise position maps (None
    leaves them out). Memory: ~57 x 11 channels x R^2 x 4 bytes per UDIM tile (330 MB at 256^2, 2 tiles).
    """
    source = source or ProceduralSource()
    rasters = skin_rasters(source, resolution, cache_dir)
    identity = source.identity(seed)
    vertices: dict[str, np.ndarray] = {}
    maps: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for expression, verts, expr_maps in iter_expressions(source, identity, rasters):
        vertices[expression] = verts
        if position is not None:
            expr_maps["position"] = position_maps(verts, source.template.vertices, rasters,
                                                  position.scale_in(source.template.units))
        maps[expression] = expr_maps
    return Subject(name or f"s{seed}", seed, source.template, vertices, maps, {"seed": seed, **identity.info})


# ------------------------------------------------------------------------------------- datasets
def identity_seed(dataset_seed: int, index: int) -> int:
    """The seed of identity ``index`` in a dataset made with ``dataset_seed`` (a 31-bit integer)."""
    state = np.random.SeedSequence([int(dataset_seed) & 0xFFFFFFFF, int(index), 0x1D]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def assign_splits(count: int, dataset_seed: int) -> list[str]:
    """Split per identity: ~10% test and ~10% validation (at least one each from 3 identities on; with 2,
    one train and one test), the rest train; which identities go where is shuffled by the seed."""
    if count < 1:
        raise ExpDiffInputError(None, f"need at least one identity, got {count}")
    n_test = 0 if count < 2 else max(1, round(0.1 * count))
    n_val = 0 if count < 3 else max(1, round(0.1 * count))
    labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (count - n_test - n_val)
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(dataset_seed) & 0xFFFFFFFF, 0x5B]))
                                ).permutation(count)
    out = [""] * count
    for label, index in zip(labels, order):
        out[int(index)] = label
    return out


def subject_name(index: int) -> str:
    return f"s{index:04d}"


# Worker state: set once per process by the pool initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(source: FaceSource, resolution: int, cache_dir: str | os.PathLike | None, spec: DatasetSpec,
                 staging: Path, dataset_seed: int, ticks: Any, rasters: Mapping[int, UVRaster] | None = None,
                 layout: SkinLayout | None = None) -> None:
    """Make this process ready to write identities: rasters (from the cache when given) and skin layout."""
    if rasters is None:
        rasters = skin_rasters(source, resolution, cache_dir)
        layout = SkinLayout(source.template, rasters)
    _WORKER.update(source=source, rasters=rasters, layout=layout, spec=spec, staging=staging, seed=dataset_seed,
                   ticks=ticks)


def _write_identity(index: int) -> dict[str, Any]:
    """Write every expression of identity ``index`` into the staging folder; returns its subject info."""
    w = _WORKER
    seed = identity_seed(w["seed"], index)
    identity = w["source"].identity(seed)
    for expression, vertices, maps in iter_expressions(w["source"], identity, w["rasters"], w["layout"]):
        write_expression_files(w["staging"], w["spec"], subject_name(index), expression, vertices, maps)
        if w["ticks"] is not None:
            w["ticks"].put(1)
    return {"seed": seed, "index": index, **identity.info}


def write_dataset(out: str | os.PathLike, source: FaceSource, identities: int, resolution: int, seed: int = 0,
                  workers: int = 1, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  generator: str = "expdiff_core.synth.factory") -> Path:
    """Synthesise ``identities`` subjects into a new dataset folder ``out`` (which must not exist).

    Deterministic: the same source, seed, count and resolution give byte-identical files whatever
    ``workers`` is. The folder appears only when complete. Returns ``out``. With ``workers > 1`` the
    workers start from a fork server, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard; pass ``cache_dir`` so they load the rasters instead of rebuilding.
    """
    resolution = check_resolution(resolution)
    if identities < 1:
        raise ExpDiffInputError(out, f"--identities must be at least 1, got {identities}")
    workers = max(1, int(workers))
    rasters = skin_rasters(source, resolution, cache_dir)
    layout = SkinLayout(source.template, rasters)
    spec = DatasetSpec(
        units=list(source.units), map_kinds=BRDF_KINDS, resolution=resolution, udims=sorted(rasters),
        skin_groups=source.skin_groups, absent_units=dict(source.absent_units),
        generator={"name": generator, "version": __version__, "seed": int(seed), "identities": int(identities),
                   **(source.describe() if hasattr(source, "describe") else {"source": source.name})},
    )
    splits = assign_splits(identities, seed)
    total = identities * len(expression_names(source))
    with DatasetWriter(out, source.template, spec) as writer, \
            tqdm(total=total, desc="synthesise", unit="expr", disable=not progress) as bar:
        if workers == 1:
            _init_worker(source, resolution, cache_dir, spec, writer.staging, seed, _BarTicks(bar), rasters, layout)
            infos = [_write_identity(k) for k in range(identities)]
        else:
            infos = _write_parallel((source, resolution, cache_dir, spec, writer.staging, seed), identities,
                                    workers, bar)
        for k, info in enumerate(infos):
            writer.add_subject(subject_name(k), splits[k], info)
    return Path(out)


class _BarTicks:
    """The queue interface of the worker ticks, straight onto a progress bar (single process)."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)


def _write_parallel(state: tuple, identities: int, workers: int, bar: tqdm) -> list[dict[str, Any]]:
    """Identities over a pool of worker processes; progress ticks come back one per expression.

    Workers start from a fork server, not by forking this process: a fork inherits locks held by this
    process's threads (OpenImageIO's and OpenEXR's thread pools once an image was written here), and the
    first image write in the child then hangs. Each worker loads the rasters from the cache (or rebuilds
    them) and its own skin layout.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["expdiff_core.synth.factory"])
    ticks = ctx.Queue()
    with ProcessPoolExecutor(max_workers=min(workers, identities), mp_context=ctx, initializer=_init_worker,
                             initargs=(*state, ticks)) as pool:
        futures = [pool.submit(_write_identity, k) for k in range(identities)]
        while not all(f.done() for f in futures):
            try:
                bar.update(ticks.get(timeout=0.2))
            except queue.Empty:
                pass
            if any(f.done() and f.exception() is not None for f in futures):
                break
        infos = [f.result() for f in futures]  # re-raises a worker's exception here
    while True:
        try:
            bar.update(ticks.get_nowait())
        except queue.Empty:
            break
    return infos


def wrinkle_correlations(source: FaceSource, resolution: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per unit, over skin texels of one identity: correlation between surface compression and the rise of
    normal-map detail energy (wrinkles must follow geometry), plus the largest compression and the fraction
    of texels compressed by more than 5%."""
    from .skin import SkinSynthesizer, normal_detail_energy

    rasters = skin_rasters(source, resolution)
    identity = source.identity(identity_seed(seed, 0))
    synth = SkinSynthesizer(source.template.with_vertices(identity.neutral), rasters, identity.skin,
                            identity.seed, identity.regions)
    neutral = {u: normal_detail_energy(m) for u, m in synth.maps()["normal"].items()}
    out = {}
    for unit in source.units:
        vertices = source.expression(identity, unit)
        strain, maps = synth.strain(vertices), synth.maps(vertices)
        c = np.concatenate([strain[u].compression[r.mask] for u, r in rasters.items()])
        d = np.concatenate([(normal_detail_energy(maps["normal"][u]) - neutral[u])[r.mask]
                            for u, r in rasters.items()])
        corr = float(np.corrcoef(c, d)[0, 1]) if c.std() > 0 and d.std() > 0 else float("nan")
        out[unit] = {"correlation": corr, "max_compression": float(c.max()),
                     "compressed_fraction": float((c > 0.05).mean())}
    return out
