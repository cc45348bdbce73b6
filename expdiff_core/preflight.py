"""Pre-flight checks of a character build: everything that can be refused before any model or Prefect work.

``check_build`` runs in ``expdiff build`` before Prefect starts and again at the top of the ``build-character``
flow (so a deployment parameter cannot skip it). It reads only file headers, the mesh and (when it is on this
machine) the model's ``pipeline_config.json`` and template; it never imports torch. Each problem is one
``PreflightError`` naming the path (or value) and the problem:

- inputs: the mesh is a readable mesh file on the model's template; texture tiles exist, are readable images,
  square, at least ``min_texture_size`` texels, a power of two or a multiple of the model's resolution, one
  resolution per map, and cover the model's UDIM tiles;
- expressions: FACS unit names (a near miss gets "did you mean jawOpen?"), free prompts only when asked for
  (``prompt:TEXT``, what ``--prompt TEXT`` passes), blends ``a->b@w`` with w in [0, 1]; no duplicates;
- sampling: steps >= 1, seed in [0, 2**63 - 1] (what torch and USD's int64 accept), strength in (0, 1];
- character: one safe path component and USD prim name (also when derived from a mesh file name);
- output root and state folder: folders (or creatable), writable, with free space for the estimated output.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ExpDiffInputError
from .fileio import existing_ancestor, format_bytes, free_bytes

SEED_MAX = 2**63 - 1  # torch.manual_seed and USD's int64 provenance seed both hold it
PROMPT_PREFIX = "prompt:"  # marks a free text prompt in an expression list (``--prompt TEXT``)
BLEND_ARROW = "->"
MIN_TEXTURE_SIZE = 64  # texels per side when the model's resolution is not known here
NAME_MAX = 64
SAMPLERS = ("ddim", "dpm++", "ddpm")
TEXTURE_KINDS = ("albedo", "specular", "roughness", "normal")
MESH_SUFFIXES = (".obj", ".ply", ".usd", ".usda", ".usdc", ".usdz")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL_REF_RE = re.compile(r"models:/([A-Za-z0-9_.\-]+)(?:@([A-Za-z0-9_\-]+)|/(\d+))")
# Bytes per texel written per map kind: half-float EXR, 3 channels at most (uncompressed: an upper bound).
_TEXEL_BYTES = 3 * 2
_SLACK_BYTES = 16 << 20


class PreflightError(ExpDiffInputError):
    """A build refused before it started (exit status 2 of ``expdiff build``)."""


@dataclass(frozen=True)
class ModelInfo:
    """What pre-flight knows of the model: its folder on this machine (None when it must first be fetched
    from MLflow), its resolution R, UDIM tiles and template path (None when unknown)."""

    reference: str
    folder: Path | None = None
    resolution: int | None = None
    udims: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ("position", *TEXTURE_KINDS)


@dataclass(frozen=True)
class BuildPlan:
    """A build that passed pre-flight: the checked values, ready for the flow.

    expressions: what the pipeline parses (unit names, blends, free prompts without the ``prompt:`` marker);
    textures: kind -> pattern as given; texture_sizes: kind -> texels per side; estimate: bytes the build
    writes under the output root (``output_bytes``) and the state folder (``work_bytes``).
    """

    character: str
    mesh: str
    textures: dict[str, str]
    expressions: list[str]
    model: ModelInfo
    seed: int
    steps: int | None
    texture_sizes: dict[str, int] = field(default_factory=dict)
    output_bytes: int = 0
    work_bytes: int = 0


# ------------------------------------------------------------------------------------------- values
def check_character(name: str | None, *, mesh: str | os.PathLike | None = None) -> str:
    """``name`` if it is one safe path component and a valid USD prim name (letters, digits, ``_``, not
    starting with a digit, at most 64 characters); with ``name`` None, the mesh file's stem, checked the same
    way (the error then says which ``--character`` to pass)."""
    derived = name is None
    if derived:
        if mesh is None:
            raise PreflightError(None, "no character name: pass --character NAME")
        name = Path(mesh).stem
    if isinstance(name, str) and _NAME_RE.fullmatch(name) and len(name) <= NAME_MAX:
        return name
    suggestion = _safe_name(str(name))
    why = ("letters, digits and '_' only, not starting with a digit, at most "
           f"{NAME_MAX} characters; it is used as a folder name and a USD prim name")
    if derived:
        raise PreflightError(mesh, f"the character name taken from the file name, {name!r}, is not valid ({why}); "
                                   f"pass --character {suggestion}")
    raise PreflightError(None, f"character name {name!r} is not valid ({why}); e.g. --character {suggestion}")


def _safe_name(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "character"
    if safe[0].isdigit():
        safe = "c_" + safe
    return safe[:NAME_MAX]


def check_sampling(seed: Any, steps: Any = None, strength: Any = None, sampler: Any = None) -> tuple[int, int | None]:
    """seed in [0, 2**63 - 1]; steps None or >= 1; strength None or in (0, 1]; sampler None or known."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise PreflightError(None, f"--seed {seed}: must be an integer from 0 to {SEED_MAX} (2**63 - 1)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise PreflightError(None, f"--steps {steps}: must be an integer >= 1 (leave it out for the model's default)")
    if strength is not None:
        try:
            value = float(strength)
        except (TypeError, ValueError):
            value = math.nan
        if not (0.0 < value <= 1.0):
            raise PreflightError(None, f"--strength {strength}: must be in (0, 1]")
    if sampler is not None and sampler not in SAMPLERS:
        raise PreflightError(None, f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    return seed, steps


def check_expressions(expressions: Sequence[str], prompts: Sequence[str] = ()) -> list[str]:
    """The expressions the pipeline parses, from FACS unit names (or ``neutral``), blends ``a->b@w`` of two
    of them (w in [0, 1], default 0.5) and free prompts: ``prompts`` and items written ``prompt:TEXT``.

    Any other text is refused, with the closest unit names when there are some; duplicates are refused.
    Free prompts are returned as their text, blends as ``a->b@w`` with each side a unit name or prompt text.
    """
    from . import facs

    items = [str(e) for e in expressions] + [PROMPT_PREFIX + str(p) for p in prompts]
    if not items:
        raise PreflightError(None, "no expressions to build")
    out: list[str] = []
    for item in items:
        text = item.strip()
        if not text:
            raise PreflightError(None, "an expression is empty")
        if text.startswith(PROMPT_PREFIX):
            out.append(_free_prompt(text[len(PROMPT_PREFIX):], item))
        elif BLEND_ARROW in text:
            out.append(_blend(text))
        else:
            out.append(_unit(text, facs.EXPRESSIONS))
    seen: set[str] = set()
    dupes = sorted({e for e in out if e in seen or seen.add(e)})
    if dupes:
        raise PreflightError(None, f"expression(s) {dupes} requested more than once")
    return out


def _free_prompt(text: str, item: str) -> str:
    text = text.strip()
    if not text:
        raise PreflightError(None, f"expression {item!r}: the free prompt is empty")
    if BLEND_ARROW in text or "@" in text:
        raise PreflightError(None, f"free prompt {text!r}: '->' and '@' are reserved for blends 'a->b@w'")
    return text


def _unit(text: str, names: Sequence[str]) -> str:
    if text in names:
        return text
    lower = {n.lower(): n for n in names}
    near = difflib.get_close_matches(text.lower(), list(lower), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(lower[n] for n in near)}? " if near else ""
    raise PreflightError(None, f"expression {text!r} is not a FACS unit name; {hint}(for a free text prompt use "
                               f"--prompt {text!r})")


def _blend(text: str) -> str:
    from . import facs

    a, _, rest = text.partition(BLEND_ARROW)
    b, at, w = rest.rpartition("@") if "@" in rest else (rest, "", "")
    sides = []
    for side in (a.strip(), b.strip()):
        if not side:
            raise PreflightError(None, f"blend {text!r}: write 'a->b@w' with two expressions and a weight")
        sides.append(_free_prompt(side[len(PROMPT_PREFIX):], text) if side.startswith(PROMPT_PREFIX)
                     else _unit(side, facs.EXPRESSIONS))
    weight = 0.5
    if at:
        try:
            weight = float(w)
        except ValueError:
            raise PreflightError(None, f"blend {text!r}: weight {w!r} is not a number") from None
        if not (0.0 <= weight <= 1.0):  # also refuses nan
            raise PreflightError(None, f"blend {text!r}: weight {w} is outside [0, 1] (0 = {sides[0]}, 1 = {sides[1]})")
    return f"{sides[0]}{BLEND_ARROW}{sides[1]}@{weight:g}"


# ------------------------------------------------------------------------------------------- model
def model_info(settings, reference: str) -> ModelInfo:
    """What can be known of ``reference`` without loading it: a local pipeline folder is read directly; a
    ``models:/NAME@alias`` / ``models:/NAME/N`` reference is checked for form and, when its version is
    already in this machine's model cache (or it is the bundled default not yet registered), that folder is
    used; otherwise the model-dependent checks wait for the ingest stage."""
    if reference.startswith("models:"):
        m = _MODEL_REF_RE.fullmatch(reference)
        if not m:
            raise PreflightError(None, f"--model {reference!r}: write models:/NAME@alias, models:/NAME/VERSION or a "
                                       "pipeline folder")
        name, alias, number = m.groups()
        version = number or _registered_alias(settings, name, alias)
        folder = None
        if version is not None:
            cached = settings.cache_path / "models" / name / str(version)
            folder = cached if (cached / "pipeline_config.json").is_file() else None
        elif not _registry_has(settings, name):
            from .models.store import offline_default_path
            from .registry import BUNDLED_MODEL

            folder = offline_default_path(settings, BUNDLED_MODEL) if name == BUNDLED_MODEL else None
        return _model_from_folder(reference, folder) if folder else ModelInfo(reference)
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        raise PreflightError(folder, "model folder not found (and not a models:/NAME@alias reference)")
    if not (folder / "pipeline_config.json").is_file():
        raise PreflightError(folder, "is not an ExpDiff pipeline folder (pipeline_config.json missing)")
    from .models.weights import PICKLE_SUFFIXES

    pickles = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise PreflightError(pickles[0], "is a pickle checkpoint and ExpDiff loads safetensors only (pickle files "
                                         "can run code when loaded)")
    return _model_from_folder(reference, folder)


def _model_from_folder(reference: str, folder: Path) -> ModelInfo:
    import json

    path = folder / "pipeline_config.json"
    try:
        cfg = json.loads(path.read_text())
        return ModelInfo(reference, folder, int(cfg["resolution"]), tuple(int(u) for u in cfg["udims"]),
                         tuple(cfg.get("kinds", ModelInfo.kinds)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PreflightError(path, f"unreadable pipeline config ({exc})") from None


def _sqlite_registry(settings) -> Path | None:
    uri = settings.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return db if db.is_file() else None


def _query(settings, sql: str, params: tuple) -> list[tuple] | None:
    """Rows of a read-only query on MLflow's SQLite registry; None when there is none or it cannot be read
    (pre-flight then leaves the question to the build)."""
    db = _sqlite_registry(settings)
    if db is None:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
            return con.execute(sql, params).fetchall()
    except sqlite3.Error:
        return None


def _registered_alias(settings, name: str, alias: str) -> str | None:
    rows = _query(settings, "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias))
    return str(rows[0][0]) if rows else None


def _registry_has(settings, name: str) -> bool:
    rows = _query(settings, "SELECT name FROM registered_models WHERE name = ?", (name,))
    return rows is None or bool(rows)  # unknown registry: assume it may hold the model


# ------------------------------------------------------------------------------------------- files
def check_mesh(mesh: str | os.PathLike, model: ModelInfo) -> dict[str, Any]:
    """The mesh file exists, is readable, has a mesh suffix and parses; on the model's template when the
    model folder is here. Returns {"path", "n_vertices", "units"}."""
    from .io.mesh import read_mesh

    path = Path(mesh).expanduser()
    _readable_file(path, "mesh")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise PreflightError(path, f"not a mesh file suffix; use one of {', '.join(MESH_SUFFIXES)}")
    face = read_mesh(path)
    if model.folder is not None and (model.folder / "template.obj").is_file():
        from .io.mesh import read_obj
        from .io.template import check_template

        check_template(face, read_obj(model.folder / "template.obj"), path)
    return {"path": str(path.resolve()), "n_vertices": int(face.n_vertices), "units": face.units}


def _readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise PreflightError(path, f"{what} file not found")
    if path.is_dir():
        raise PreflightError(path, f"is a folder; expected a {what} file")
    if not os.access(path, os.R_OK):
        raise PreflightError(path, f"{what} file is not readable (permission denied)")


def check_textures(textures: Mapping[str, str], model: ModelInfo,
                   min_size: int | None = None) -> dict[str, tuple[dict[int, Path], int]]:
    """Every texture kind's tiles: found, readable images (headers), square, at least ``min_size`` (default:
    the model's resolution, else ``MIN_TEXTURE_SIZE``) texels, a power of two or a multiple of the model's
    resolution, one resolution per map, covering the model's UDIMs. Returns kind -> (tiles, size)."""
    from .io.images import image_shape
    from .io.textures import FILE_CHANNELS, discover_udim_set
    from .io.udim import format_udims

    if "albedo" not in textures:
        raise PreflightError(None, "no albedo texture given (--albedo is required)")
    unknown = sorted(set(textures) - set(TEXTURE_KINDS))
    if unknown:
        raise PreflightError(None, f"unknown texture kind(s) {unknown}; use {list(TEXTURE_KINDS)}")
    r = model.resolution
    floor = min_size or r or MIN_TEXTURE_SIZE
    out = {}
    for kind, where in textures.items():
        tiles = discover_udim_set(str(Path(str(where)).expanduser()), kind)
        missing = sorted(set(model.udims) - set(tiles))
        if missing:
            raise PreflightError(where, f"{kind} texture lacks UDIM tile(s) {format_udims(missing)} the model "
                                        f"generates (found {format_udims(tiles)})")
        size = None
        for udim, path in sorted(tiles.items()):
            _readable_file(path, f"{kind} texture")
            try:
                h, w, c = image_shape(path)
            except ExpDiffInputError as exc:  # OpenImageIO repeats itself over several lines: keep the last
                lines = [re.sub(r"^.*?\): ", "", line).strip() for line in exc.problem.splitlines() if line.strip()]
                raise PreflightError(path, f"unreadable image ({lines[-1] if lines else 'cannot open'})") from None
            if c not in FILE_CHANNELS[kind]:
                allowed = " or ".join(str(n) for n in FILE_CHANNELS[kind])
                raise PreflightError(path, f"has {c} channel(s); {kind} maps need {allowed}")
            if w != h:
                raise PreflightError(path, f"is {w}x{h}; texture tiles must be square")
            if w < floor:
                raise PreflightError(path, f"is {w}x{h}; texture tiles must be at least {floor}x{floor}")
            power_of_two = w & (w - 1) == 0
            if not power_of_two and not (r and w % r == 0):
                multiple = f" or a multiple of the model's resolution {r}" if r else ""
                raise PreflightError(path, f"is {w}x{h}; the side must be a power of two{multiple}")
            if size is not None and w != size:
                raise PreflightError(path, f"is {w}x{h} but other {kind} tiles are {size}x{size}; all tiles of a "
                                           "map must share one resolution")
            size = w
        out[kind] = (tiles, size)
    return out


# ------------------------------------------------------------------------------------------- space
def estimate_bytes(n_expressions: int, n_vertices: int, udims: Sequence[int], texture_sizes: Mapping[str, int],
                   resolution: int) -> tuple[int, int]:
    """(bytes published under the output root, bytes of work files under the state folder), upper bounds.

    n_expressions: including the neutral. Published: every expression's four maps (half EXR, at the user's
    size, or the model's for kinds not given) and its blendshape (offsets + normal offsets, float32) twice
    (geo and shapes layers). Work: the decoded model-resolution maps (float EXR, 5 kinds), the transferred
    maps (as published), latents and vertices.
    """
    tiles = max(1, len(udims))
    sizes = [texture_sizes.get(k, resolution) for k in TEXTURE_KINDS]
    maps = n_expressions * tiles * sum(s * s * _TEXEL_BYTES for s in sizes)
    geometry = n_expressions * n_vertices * 3 * 4 * 4
    decoded = n_expressions * tiles * 5 * resolution * resolution * 3 * 4
    return maps + geometry + _SLACK_BYTES, decoded + maps + geometry + _SLACK_BYTES


def check_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """``folder`` is a folder (or can be made: its nearest existing parent is a writable folder) and
    writable; returns the folder that exists."""
    folder = Path(folder).expanduser()
    base = existing_ancestor(folder)
    if not base.is_dir():
        raise PreflightError(folder, f"{what}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        ro = _read_only(base)
        raise PreflightError(folder, f"{what} is not writable ({'read-only file system' if ro else 'permission denied'}"
                                     + (f" at {base}" if base != folder else "") + ")")
    return base


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_free_space(needs: Mapping[Path, int]) -> None:
    """Each folder's file system has the bytes asked of it (folders on one file system add up)."""
    by_device: dict[int, tuple[Path, int]] = {}
    for folder, need in needs.items():
        dev = os.stat(folder).st_dev
        first, total = by_device.get(dev, (folder, 0))
        by_device[dev] = (first, total + need)
    for folder, need in by_device.values():
        free = free_bytes(folder)
        if free is not None and free < need:
            raise PreflightError(folder, f"not enough free space: the build needs about {format_bytes(need)}, "
                                         f"{format_bytes(free)} free")


# ------------------------------------------------------------------------------------------- all
def check_build(settings, *, mesh: str | os.PathLike, textures: Mapping[str, str], character: str | None,
                expressions: Sequence[str], prompts: Sequence[str] = (), model: str, seed: Any = 0,
                steps: Any = None, sampler: Any = None, strength: Any = None,
                output_root: str | os.PathLike | None = None) -> BuildPlan:
    """Every pre-flight check of one build, cheapest first; raises ``PreflightError`` on the first problem.

    settings: ``expdiff_core.config.Settings`` (state folder, output root, MLflow URI); output_root overrides
    ``settings.output_path``. character None: the mesh file's stem.
    """
    name = check_character(character, mesh=mesh)
    seed, steps = check_sampling(seed, steps, strength, sampler)
    exprs = check_expressions(expressions, prompts)
    out_root = Path(output_root).expanduser() if output_root else settings.output_path
    out_base = check_writable_folder(out_root, "output root")
    char_dir = out_root / name
    if char_dir.exists() and not char_dir.is_dir():
        raise PreflightError(char_dir, "is a file; the character's versions need a folder here")
    state_base = check_writable_folder(settings.state_path, "state folder")
    info = model_info(settings, model)
    meshed = check_mesh(mesh, info)
    found = check_textures(textures, info)
    sizes = {k: s for k, (_, s) in found.items()}
    udims = info.udims or tuple(sorted(found["albedo"][0]))
    n = len(exprs) + (0 if "neutral" in exprs else 1)
    output_bytes, work_bytes = estimate_bytes(n, meshed["n_vertices"], udims, sizes, info.resolution or 256)
    check_free_space({out_base: output_bytes, state_base: work_bytes})
    return BuildPlan(character=name, mesh=meshed["path"], textures={k: str(v) for k, v in textures.items()},
                     expressions=exprs, model=info, seed=seed, steps=steps, texture_sizes=sizes,
                     output_bytes=output_bytes, work_bytes=work_bytes)
