"""One character build, stage by stage: ingest -> encode -> diffuse -> decode -> recover -> textures -> USD.

Every stage is a plain function taking and returning small JSON-able dicts (paths, hashes, figures) and
exchanging arrays through files in a work folder, so an orchestrator can run, cache and retry each stage
alone (``tasks/`` wraps one function each). ``build_character`` chains them for plain-Python use.
Models are loaded once per process (``load_pipeline``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .device import resolve_device
from .errors import ExpDiffInputError
from .fileio import atomic_path, file_sha256
from .io.images import read_image, write_image
from .io.mesh import FaceMesh, read_mesh
from .io.textures import discover_udim_set, read_texture_set
from .pipelines.expdiff import NEUTRAL, POSITION, Expression, ExpDiffPipeline, own_channels, transfer_map

BRDF_KINDS = ("albedo", "specular", "roughness", "normal")


def load_pipeline(model_dir: str | os.PathLike, device: str = "auto",
                  text_encoder_path: str | None = None) -> ExpDiffPipeline:
    """The pipeline of ``model_dir``, loaded once per process and device and shared by every task of every
    flow run in the process: the key is the resolved folder and the resolved device, so ``auto`` and ``cpu``
    (or ``cuda`` and ``cuda:0``) and two spellings of one folder share one copy."""
    return _cached_pipeline(str(Path(model_dir).resolve()), str(resolve_device(device)), text_encoder_path)


@functools.lru_cache(maxsize=4)
def _cached_pipeline(model_dir: str, device: str, text_encoder_path: str | None) -> ExpDiffPipeline:
    return ExpDiffPipeline.from_pretrained(model_dir, device=device, text_encoder_path=text_encoder_path)


def _json(path: Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor | np.ndarray]) -> Path:
    with atomic_path(path) as tmp:
        save_file({k: torch.as_tensor(np.asarray(v)).contiguous() for k, v in tensors.items()}, str(tmp))
    return path


# ---------------------------------------------------------------------- 1. ingest
def ingest(mesh_path: str | os.PathLike, textures: Mapping[str, str | os.PathLike], model_dir: str | os.PathLike,
           device: str = "cpu") -> dict[str, Any]:
    """Load and check the neutral asset: mesh on the model's template, texture tiles readable and consistent.

    textures: kind -> a UDIM pattern (``albedo.<UDIM>.exr``), one tile's path, or a folder. albedo is required.
    Returns {"mesh", "units", "n_vertices", "textures": {kind: {udim: path}}, "hashes": {path: sha256}}.
    """
    mesh_path = Path(mesh_path)
    mesh = read_mesh(mesh_path)
    pipe = load_pipeline(str(model_dir), device)
    pipe.check_mesh(mesh, mesh_path)
    if "albedo" not in textures:
        raise ExpDiffInputError(mesh_path, "no albedo texture given; the build needs at least albedo")
    unknown = sorted(set(textures) - set(BRDF_KINDS))
    if unknown:
        raise ExpDiffInputError(None, f"unknown texture kind(s) {unknown}; use {list(BRDF_KINDS)}")
    tiles: dict[str, dict[int, str]] = {}
    for kind, where in textures.items():
        found = discover_udim_set(where, kind)
        missing = sorted(set(pipe.config.udims) - set(found))
        if missing:
            raise ExpDiffInputError(where, f"{kind} texture lacks UDIM tile(s) {missing} of the face")
        read_texture_set(found, kind)  # every tile readable, one resolution, right channels
        tiles[kind] = {int(u): str(p) for u, p in sorted(found.items())}
    files = [str(mesh_path)] + [p for t in tiles.values() for p in t.values()]
    return {"mesh": str(mesh_path.resolve()), "units": mesh.units, "n_vertices": mesh.n_vertices,
            "textures": tiles, "hashes": {p: file_sha256(p) for p in files}}


def _load_textures(ingested: Mapping[str, Any]) -> dict[str, dict[int, np.ndarray]]:
    return {kind: read_texture_set({int(u): p for u, p in tiles.items()}, kind)
            for kind, tiles in ingested["textures"].items()}


# ---------------------------------------------------------------------- 2. encode
def encode_neutral(ingested: Mapping[str, Any], model_dir: str | os.PathLike, work_dir: str | os.PathLike,
                   device: str = "auto") -> dict[str, Any]:
    """Neutral maps at model resolution -> latents (M, C, h, w) in ``<work>/neutral_latents.safetensors``
    (with the neutral's identity scores ``prior_scores`` (K,) when the model has an expression prior, and, for
    a change model or a prior with a map part, the neutral maps themselves ``maps/<kind>/<udim>``: what the
    decoded changes and the prior's map changes are added to)."""
    pipe = load_pipeline(str(model_dir), device)
    mesh = read_mesh(ingested["mesh"])
    textures = _load_textures(ingested)
    maps = pipe.neutral_maps(mesh, textures)
    tensors = {"latents": pipe.encode(maps)}
    if pipe.change_codec is not None or (pipe.prior is not None and pipe.prior.map_parts):
        tensors.update({f"maps/{kind}/{udim}": np.asarray(image, np.float32)
                        for kind, tiles in maps.items() for udim, image in tiles.items()})
    if pipe.prior is not None:
        tensors["prior_scores"] = torch.from_numpy(pipe.prior_scores(mesh, textures).astype(np.float32))
    path = _save_tensors(Path(work_dir) / "neutral_latents.safetensors", tensors)
    return {"latents": str(path), "shape": list(tensors["latents"].shape), "units": mesh.units}


# ---------------------------------------------------------------------- 3. diffuse
def expression_list(expressions: Sequence[str]) -> list[Expression]:
    """Parsed expressions with the generated neutral first (Eq. 9 needs it); duplicates refused."""
    parsed = [Expression.parse(e) for e in expressions]
    labels = [e.label for e in parsed]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ExpDiffInputError(None, f"expression(s) {dupes} requested more than once")
    if NEUTRAL not in labels:
        parsed.insert(0, Expression.parse(NEUTRAL))
    return parsed


def diffuse(encoded: Mapping[str, Any], model_dir: str | os.PathLike, expressions: Sequence[str],
            work_dir: str | os.PathLike, *, seed: int = 0, steps: int | None = None, sampler: str | None = None,
            strength: float | None = None, device: str = "auto", batch_size: int | None = None,
            on_progress: Callable[[int, int], None] | None = None, compile_denoiser: bool = False) -> dict[str, Any]:
    """Sample every expression's latents in one (chunked) batch -> ``<work>/expression_latents.safetensors``.

    With an expression prior, each expression starts from the prior's latents (``start``, saved too, with the
    prior's vertex change ``prior_vertices`` (N, V, 3) in the mesh's units and its units' weights
    ``prior_mix`` (N, E)) at the model's prior strength. compile_denoiser: ``torch.compile`` the (cached)
    pipeline's denoiser first (the ``compile_denoiser`` setting).
    """
    pipe = load_pipeline(str(model_dir), device)
    if compile_denoiser:
        pipe.compile_denoiser()
    exprs = expression_list(expressions)
    neutral = load_file(encoded["latents"])
    z0 = neutral["latents"]
    t0 = time.perf_counter()
    tensors = {}
    if pipe.use_prior and "prior_scores" in neutral:
        mix = pipe.prior_mix(exprs)
        prior_vertices, prior_latents = pipe.prior_changes(neutral["prior_scores"].numpy(), mix, encoded["units"])
        tensors = {"start": pipe.unchanged_latents(z0)[None] + prior_latents,
                   "prior_vertices": torch.from_numpy(prior_vertices), "prior_mix": torch.from_numpy(mix)}
        strength = pipe.config.prior_strength if strength is None else strength
    latents = pipe.sample(z0, exprs, seed=seed, steps=steps, sampler=sampler, strength=strength,
                          batch_size=batch_size, on_progress=on_progress, start_latents=tensors.get("start"))
    labels = [e.label for e in exprs]
    if pipe.change_codec is not None and not tensors:  # the generated neutral is no change, exactly
        latents[labels.index(NEUTRAL)] = pipe.unchanged_latents(z0)
    support_mix = pipe.support_mix(exprs)
    extra = {} if support_mix is None else {"support_mix": torch.from_numpy(support_mix)}
    path = _save_tensors(Path(work_dir) / "expression_latents.safetensors", {"latents": latents, **tensors, **extra})
    cfg = pipe.config
    return {"latents": str(path), "neutral_latents": encoded["latents"], "labels": labels,
            "prompts": [e.prompt for e in exprs],
            "seed": seed, "steps": int(steps or cfg.steps), "sampler": sampler or cfg.sampler,
            "strength": float(cfg.strength if strength is None else strength), "prior": bool(tensors),
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------- 4. decode
def decode(diffused: Mapping[str, Any], model_dir: str | os.PathLike, work_dir: str | os.PathLike,
           device: str = "auto", expressions_per_pass: int = 16) -> dict[str, Any]:
    """Latents -> model-resolution maps ``<work>/decoded/<label>/<kind>.<udim>.exr`` (float EXR).

    With an expression support, each expression's BRDF change is kept where its units act
    (``ExpDiffPipeline.restrict_to_support``). With a prior, also what each expression is read against (see
    ``pipelines.expdiff``): for ``position`` its
    decoded prior latents (``<work>/references/<label>/``; at strength 0 those are its decoded maps), for the
    BRDF kinds the decoded neutral latents, one set for all (``<work>/references/<kind>.<udim>.exr``; with the
    prior's map part, the character's neutral maps, which its BRDF maps are built on). Without a prior, every
    expression is read against the decoded generated neutral. Decoded
    ``expressions_per_pass`` expressions at a time (batched decoder passes, ``ExpDiffPipeline.decode``) and
    written before the next, so memory does not grow with the number of expressions.
    """
    pipe = load_pipeline(str(model_dir), device)
    tensors = load_file(diffused["latents"])
    labels = list(diffused["labels"])
    kinds = list(pipe.config.kinds)
    root = Path(work_dir) / "decoded"
    neutral_maps = None
    map_prior = "prior_mix" in tensors and pipe.prior is not None and bool(pipe.prior.map_parts)
    if pipe.change_codec is not None or map_prior:  # what decoded changes and the map prior's go onto
        saved = load_file(diffused["neutral_latents"])
        character = {kind: {udim: saved[f"maps/{kind}/{udim}"].numpy() for udim in pipe.config.udims}
                     for kind in kinds}
        neutral_maps = character if pipe.change_codec is not None else None
        own_character = own_channels(character)  # each kind at its channel count, as its decoded maps
    kept = "start" not in tensors or torch.equal(tensors["start"], tensors["latents"])
    wanted = pipe.kinds_to_decode(kept) if map_prior else None

    def write(folder: Path, label: str, maps: Mapping[str, Mapping[int, np.ndarray]], which: Sequence[str]) -> None:
        for kind in which:
            for udim, image in maps[kind].items():
                write_image(folder / label / f"{kind}.{udim}.exr", image.transpose(1, 2, 0), pixel_type="float")

    for start in range(0, len(labels), expressions_per_pass):
        part = slice(start, start + expressions_per_pass)
        chunk = pipe.decode(tensors["latents"][part], neutral_maps=neutral_maps, kinds=wanted)
        if map_prior:
            starts = None if kept else pipe.decode(tensors["start"][part], neutral_maps=neutral_maps)
            chunk = pipe.apply_map_prior(chunk, starts, own_character, saved["prior_scores"].numpy(),
                                         tensors["prior_mix"][part].numpy())
        if "support_mix" in tensors:  # a change model's: its BRDF maps are read against the character's own
            chunk = pipe.support.restrict_maps(chunk, [own_character] * len(chunk),
                                               tensors["support_mix"][part].numpy())
        for label, maps in zip(labels[part], chunk):
            write(root, label, maps, kinds)
        del chunk
    out = {"decoded": str(root), "labels": labels, "kinds": kinds, "udims": list(pipe.config.udims)}
    if "support_mix" in tensors:
        out["support_mix"] = diffused["latents"]
    if "start" in tensors:
        references = Path(work_dir) / "references"
        # the neutral's prior change is zero, so its start is the neutral latents z0
        neutral = (own_character if map_prior else
                   pipe.decode(tensors["start"][labels.index(NEUTRAL)][None], neutral_maps=neutral_maps)[0])
        for kind in [k for k in kinds if k != POSITION]:
            for udim, image in neutral[kind].items():
                write_image(references / f"{kind}.{udim}.exr", image.transpose(1, 2, 0), pixel_type="float")
        position_references = root  # strength 0: each expression's latents are its prior's
        if not kept:
            position_references = references
            for start in range(0, len(labels), expressions_per_pass):
                chunk = pipe.decode(tensors["start"][start:start + expressions_per_pass], neutral_maps=neutral_maps)
                for label, maps in zip(labels[start:start + expressions_per_pass], chunk):
                    write(references, label, maps, [POSITION])
        out.update(references=str(references), position_references=str(position_references),
                   prior_vertices=diffused["latents"])
    return out


def _decoded_map(decoded: Mapping[str, Any], label: str, kind: str, udim: int) -> np.ndarray:
    return read_image(Path(decoded["decoded"]) / label / f"{kind}.{udim}.exr").transpose(2, 0, 1)


def _reference_map(decoded: Mapping[str, Any], label: str, kind: str, udim: int) -> np.ndarray:
    """What ``label``'s map is read against: with a prior its position reference or the shared BRDF one (see
    ``decode``), without one the generated neutral."""
    if "references" not in decoded:
        return _decoded_map(decoded, NEUTRAL, kind, udim)
    if kind == POSITION:
        path = Path(decoded["position_references"]) / label / f"{kind}.{udim}.exr"
    else:
        path = Path(decoded["references"]) / f"{kind}.{udim}.exr"
    return read_image(path).transpose(2, 0, 1)


# ---------------------------------------------------------------------- 5. recover
def recover(decoded: Mapping[str, Any], ingested: Mapping[str, Any], model_dir: str | os.PathLike,
            work_dir: str | os.PathLike) -> dict[str, Any]:
    """Eq. 9 for every expression on the user's mesh -> ``<work>/vertices.safetensors`` + per-expression figures.

    figures: mean and max vertex displacement from the neutral, in mm. With an expression support, each
    expression's vertex change is kept where its units act.
    """
    pipe = load_pipeline(str(model_dir), "cpu")
    mesh = read_mesh(ingested["mesh"])
    udims = decoded["udims"]
    sampler = pipe.vertex_sampler(mesh)
    to_mm = {"cm": 10.0, "mm": 1.0, "m": 1000.0}[mesh.units]
    prior = load_file(decoded["prior_vertices"])["prior_vertices"].numpy() if "prior_vertices" in decoded else None
    vertices, figures = {}, {}
    for i, label in enumerate(decoded["labels"]):
        base = mesh if prior is None else mesh.with_vertices(mesh.vertices + prior[i])
        v = pipe.recover(base, {u: _decoded_map(decoded, label, POSITION, u) for u in udims},
                         {u: _reference_map(decoded, label, POSITION, u) for u in udims}, sampler).vertices
        vertices[label] = v
    if "support_mix" in decoded:
        mix = load_file(decoded["support_mix"])["support_mix"].numpy()
        labels = list(decoded["labels"])
        kept, _ = pipe.restrict_to_support(mix, mesh, [vertices[label] for label in labels], [], [])
        vertices = dict(zip(labels, kept))
    for label, v in vertices.items():
        d = np.linalg.norm(v - mesh.vertices, axis=1) * to_mm
        figures[label] = {"mean_displacement_mm": float(d.mean()), "max_displacement_mm": float(d.max())}
    path = _save_tensors(Path(work_dir) / "vertices.safetensors", vertices)
    return {"vertices": str(path), "labels": list(decoded["labels"]), "figures": figures}


# ---------------------------------------------------------------------- 5b. upscale
def upscale_factor(model_resolution: int, user_resolution: int | None) -> int:
    """The power of 2 that takes model-resolution maps to the user's texture resolution (at least 1)."""
    if not user_resolution or user_resolution <= model_resolution:
        return 1
    factor = 1
    while model_resolution * factor < user_resolution:
        factor *= 2
    return factor


def upscale(decoded: Mapping[str, Any], ingested: Mapping[str, Any], work_dir: str | os.PathLike, *,
            upscaler: str | None = None, upscaler_model: str | None = None, settings: Any = None,
            device: str = "cpu") -> dict[str, Any]:
    """The guided upscaling stage (Eq. 8): every expression's BRDF maps and the generated neutral, from model
    resolution to the user's texture resolution -> ``<work>/upscaled/<label>/<kind>.<udim>.exr``.

    The factor is the power of 2 reaching the user's albedo resolution (the same for every kind). Returns a
    dict shaped like ``decode``'s (``decoded`` = the upscaled folder) so ``transfer_textures`` adds the
    upscaled change ``G(E) - G(N)`` to the user's neutral unchanged; with upscaler ``none`` (or a factor of 1)
    it returns ``decoded`` itself. upscaler: compact | x4plus | lanczos | none (default: the setting).
    """
    from .config import load_settings
    from .upscaling.maps import load_map_upscaler

    settings = settings or load_settings()
    method = upscaler or settings.upscaler
    kinds = [k for k in decoded["kinds"] if k in BRDF_KINDS]
    udims = list(decoded["udims"])
    model_res = _decoded_map(decoded, NEUTRAL, kinds[0], udims[0]).shape[-1]
    from .io.images import image_shape

    user_res = max(image_shape(next(iter(ingested["textures"]["albedo"].values())))[:2])
    factor = upscale_factor(model_res, user_res)
    if method == "none" or factor == 1:
        return {**decoded, "upscaler": "none", "factor": 1, "seconds": 0.0}
    t0 = time.perf_counter()
    up = load_map_upscaler(settings, method, upscaler_model, device=device)
    root = Path(work_dir) / "upscaled"
    for kind in kinds:
        user = ingested["textures"].get(kind)
        user_maps = read_texture_set({int(u): p for u, p in user.items()}, kind) if user else None
        for udim in udims:
            # what every expression is read against: the generated neutral, or with a prior the decoded neutral
            # latents (the same for every expression); upscaled under the neutral's label, where
            # transfer_textures then reads it
            neutral = _reference_map(decoded, NEUTRAL, kind, udim)
            ref = None if user_maps is None else user_maps[int(udim)][:neutral.shape[0]]
            expressions = {label: _decoded_map(decoded, label, kind, udim) for label in decoded["labels"]}
            expressions[NEUTRAL] = neutral
            for label, image in up.upscale_set(expressions, neutral, ref, kind, factor).items():
                write_image(root / label / f"{kind}.{udim}.exr", image.transpose(1, 2, 0), pixel_type="float")
    return {"decoded": str(root), "labels": list(decoded["labels"]), "kinds": kinds, "udims": udims,
            "upscaler": up.info, "factor": factor, "resolution": model_res * factor,
            "maps_skipped": up.skipped, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------- 6. textures
class TexelBudget:
    """At most ``texels`` texels in flight at once across the threads of a process (a tile larger than the
    budget runs alone). ``with budget.hold(h * w): ...`` waits until the tile fits."""

    def __init__(self, texels: int):
        self.texels, self._in_flight, self._ready = int(texels), 0, threading.Condition()

    @contextlib.contextmanager
    def hold(self, texels: int):
        with self._ready:
            self._ready.wait_for(lambda: self._in_flight == 0 or self._in_flight + texels <= self.texels)
            self._in_flight += texels
        try:
            yield
        finally:
            with self._ready:
                self._in_flight -= texels
                self._ready.notify_all()


# The flow transfers the four map kinds at once (one mapped task each, on threads). A 4096^2 tile's transfer
# holds ~7 float32 copies of the tile while it runs (~1.4 GB for a normal map), so the tiles being transferred
# in one process share this budget: one 4096^2 tile (or four 2048^2 ones) at a time, whatever the number of
# kinds, expressions or threads.
TRANSFER_BUDGET = TexelBudget(4096 * 4096)


def transfer_textures(decoded: Mapping[str, Any], ingested: Mapping[str, Any], kind: str,
                      work_dir: str | os.PathLike) -> dict[str, Any]:
    """One map kind for every expression at the user's texture resolution (directional transfer, see
    ``pipelines.expdiff.transfer_map``) -> ``<work>/maps/<label>/<kind>.<udim>.exr``.

    Kinds the user did not supply are the generated maps at model resolution.
    """
    root = Path(work_dir) / "maps"
    user = ingested["textures"].get(kind)
    user_maps = read_texture_set({int(u): p for u, p in user.items()}, kind) if user else None
    for label in decoded["labels"]:
        for udim in decoded["udims"]:
            gen = _decoded_map(decoded, label, kind, udim)
            target = root / label / f"{kind}.{udim}.exr"
            if user_maps is None:
                write_image(target, gen.transpose(1, 2, 0), pixel_type="half")
                continue
            ref = user_maps[udim] if kind not in ("specular", "roughness") else user_maps[udim][:1]
            reference = _reference_map(decoded, label, kind, udim)
            with TRANSFER_BUDGET.hold(ref.shape[1] * ref.shape[2]):  # one tile's work at a time, then freed
                write_image(target, transfer_map(ref, gen, reference, kind).transpose(1, 2, 0), pixel_type="half")
    return {"maps": str(root), "kind": kind, "labels": list(decoded["labels"]), "udims": list(decoded["udims"])}


class LazyTiles(Mapping[int, np.ndarray]):
    """{udim: (C, H, W) float32} of one expression's map kind, read from ``<root>/<label>/<kind>.<udim>.exr``
    each time a tile is looked up and never kept: a consumer that walks every expression's tiles one by one
    (the USD writer) holds one tile at a time, whatever the number of expressions or the texture size."""

    def __init__(self, root: Path, label: str, kind: str, udims: Sequence[int]):
        self.root, self.label, self.kind, self.udims = Path(root), label, kind, [int(u) for u in udims]

    def path(self, udim: int) -> Path:
        return self.root / self.label / f"{self.kind}.{int(udim)}.exr"

    def __getitem__(self, udim: int) -> np.ndarray:
        if int(udim) not in self.udims:
            raise KeyError(udim)
        return read_image(self.path(udim)).transpose(2, 0, 1)

    def __iter__(self):
        return iter(self.udims)

    def __len__(self) -> int:
        return len(self.udims)


def _read_maps(maps_root: str, labels: Sequence[str], kinds: Sequence[str], udims: Sequence[int]
               ) -> dict[str, dict[str, LazyTiles]]:
    """{label: {kind: LazyTiles}}: every transferred map, read only when a tile is looked up."""
    return {label: {k: LazyTiles(Path(maps_root), label, k, udims) for k in kinds} for label in labels}


# ---------------------------------------------------------------------- 7. publish
def export_usd(ingested: Mapping[str, Any], recovered: Mapping[str, Any], textured: Sequence[Mapping[str, Any]],
               character: str, output_root: str | os.PathLike, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Publish ``<output_root>/<character>/v###/`` (never overwriting a published version)."""
    from .usd.schema import Provenance
    from .usd.writer import publish_character

    mesh = read_mesh(ingested["mesh"])
    labels = list(recovered["labels"])
    vertices = load_file(recovered["vertices"])
    kinds = [t["kind"] for t in textured]
    maps = _read_maps(textured[0]["maps"], labels, kinds, textured[0]["udims"])
    prov = Provenance(input_hashes=dict(ingested["hashes"]), package_version=__version__, **provenance)
    asset = publish_character(output_root, character, mesh, {k: vertices[k].numpy() for k in labels}, maps, prov)
    return {"version_dir": str(asset.version_dir), "root_layer": str(asset.root_layer), "version": asset.version,
            "blendshapes": list(asset.blendshapes)}


def validate_usd(exported: Mapping[str, Any]) -> dict[str, Any]:
    """Run OpenUSD's validators + our TD checklist; raises ExpDiffInputError listing any error."""
    from .usd.validate import validate_asset

    issues = validate_asset(exported["root_layer"])
    errors = [i for i in issues if i.severity == "error"]
    report = [f"{i.severity}: {i.check}: {i.message}" for i in issues]
    if errors:
        raise ExpDiffInputError(exported["root_layer"], "USD validation failed:\n" + "\n".join(report))
    return {"root_layer": exported["root_layer"], "issues": report}


# ---------------------------------------------------------------------- 8. preview
def contact_sheet(ingested: Mapping[str, Any], recovered: Mapping[str, Any], textured: Sequence[Mapping[str, Any]],
                  out_path: str | os.PathLike, size: int = 192) -> dict[str, Any]:
    """A PNG contact sheet of every expression rendered with its own maps."""
    from .render.contact_sheet import write_contact_sheet
    from .render.preview import render_preview, to_display

    mesh = read_mesh(ingested["mesh"])
    vertices = load_file(recovered["vertices"])
    labels = list(recovered["labels"])
    kinds = [t["kind"] for t in textured]
    images = []
    for label in labels:
        maps = _read_maps(textured[0]["maps"], [label], kinds, textured[0]["udims"])[label]
        images.append(to_display(render_preview(mesh, maps, vertices=vertices[label].numpy(), width=size, height=size)))
    path = write_contact_sheet(out_path, images, labels, title=f"{Path(ingested['mesh']).stem}: {len(labels)} expressions")
    return {"contact_sheet": str(path)}
