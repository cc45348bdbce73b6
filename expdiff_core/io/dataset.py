"""The ExpDiff dataset format: per identity, the neutral and every expression unit, mesh + BRDF maps.

Layout (see ``docs/dataset.md`` for the full specification)::

    <root>/manifest.json                          format, template, expressions, maps, tiles, splits
    <root>/template/template.obj                  topology, UVs and groups (positions: template shape, cm)
    <root>/template/template.json                 template signature (topology hash, counts, groups, tiles)
    <root>/subjects/<subject>/subject.json        how the identity was made (seed, parameters), its split
    <root>/subjects/<subject>/<expression>/vertices.npy        (V, 3) float32, cm, template vertex order
    <root>/subjects/<subject>/<expression>/<kind>.<udim>.exr   (C, R, R) map, half float, OpenImageIO

Every file is written atomically and the whole dataset appears under its name only when complete
(``DatasetWriter``). ``validate_dataset`` lists every problem with the file it concerns;
``require_valid_dataset`` raises one ExpDiffInputError listing them, which is what trainers call.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ExpDiffInputError
from ..fileio import atomic_dir, atomic_path
from .images import image_pixel_type, read_image, write_image
from .mesh import FaceMesh, read_obj, write_obj

FORMAT = "expdiff-dataset/1"
MANIFEST = "manifest.json"
TEMPLATE_OBJ = "template/template.obj"
TEMPLATE_SIGNATURE = "template/template.json"
SUBJECTS_DIR = "subjects"
SUBJECT_INFO = "subject.json"
VERTICES_FILE = "vertices.npy"
NEUTRAL = "neutral"
SPLITS = ("train", "val", "test")
LENGTH_UNIT = "cm"
PIXEL_TYPE = "half"

# Every map kind a dataset may hold: channels, colour space / encoding, and the value range it must stay in.
MAP_SPECS: dict[str, dict[str, Any]] = {
    "albedo": {"channels": 3, "colour_space": "lin_rec709", "encoding": "diffuse albedo, linear RGB",
               "range": [0.0, 1.0]},
    "specular": {"channels": 1, "colour_space": "data", "encoding": "normal-incidence reflectance F0",
                 "range": [0.0, 1.0]},
    "roughness": {"channels": 1, "colour_space": "data", "encoding": "perceptual roughness (GGX alpha = r^2)",
                  "range": [0.0, 1.0]},
    "normal": {"channels": 3, "colour_space": "data",
               "encoding": "tangent-space unit normal as 0.5 * n + 0.5; +X = +U, +Y = +V (OpenGL)",
               "range": [0.0, 1.0]},
}
BRDF_KINDS = ("albedo", "specular", "roughness", "normal")
_MAP_FILE = re.compile(r"^(?P<kind>[A-Za-z_]+)\.(?P<udim>\d{4})\.exr$")
_SUBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Half floats round [0, 1] values to within 2^-11 of the written value, and the writer clips to the range.
_RANGE_SLACK = 1e-3


def map_filename(kind: str, udim: int) -> str:
    """``<kind>.<udim>.exr``, e.g. ``albedo.1001.exr``."""
    return f"{kind}.{int(udim)}.exr"


def template_signature(template: FaceMesh, skin_groups: Sequence[str], udims: Sequence[int]) -> dict[str, Any]:
    """What identifies a template: topology hash, counts, groups, the skin groups and tiles maps cover."""
    return {
        "topology_hash": template.topology_hash(),
        "vertex_count": template.n_vertices,
        "face_count": template.n_faces,
        "uv_count": int(len(template.uvs)),
        "groups": list(template.group_names),
        "skin_groups": list(skin_groups),
        "udims": [int(u) for u in udims],
        "length_unit": LENGTH_UNIT,
    }


def _dump_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_vertices(path: str | os.PathLike, vertices: np.ndarray) -> Path:
    """Write (V, 3) float32 vertices as a plain .npy (no pickle), atomically."""
    path = Path(path)
    arr = np.ascontiguousarray(vertices, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ExpDiffInputError(path, f"vertices must be (V, 3), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ExpDiffInputError(path, "refusing to write NaN or infinite vertex positions")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
    return path


def read_vertices(path: str | os.PathLike, vertex_count: int | None = None) -> np.ndarray:
    """Read (V, 3) float32 vertices from a .npy file (pickles refused); optionally check V."""
    path = Path(path)
    if not path.is_file():
        raise ExpDiffInputError(path, "vertices file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for damaged files
        raise ExpDiffInputError(path, f"not a readable .npy array ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ExpDiffInputError(path, f"vertices must be (V, 3), got shape {arr.shape}")
    if arr.dtype != np.float32:
        raise ExpDiffInputError(path, f"vertices must be float32, got {arr.dtype}")
    if vertex_count is not None and arr.shape[0] != vertex_count:
        raise ExpDiffInputError(path, f"has {arr.shape[0]} vertices, the template has {vertex_count}")
    if not np.isfinite(arr).all():
        raise ExpDiffInputError(path, "holds NaN or infinite vertex positions")
    return arr


# ------------------------------------------------------------------------- writer
@dataclass
class DatasetSpec:
    """What a dataset holds, fixed before the first subject is written.

    units: expression unit names in order (``neutral`` is always added first). absent_units: vocabulary
    units this source cannot provide, with why (e.g. ICT-FaceKit has no tongueOut). map_kinds: subset of
    MAP_SPECS. resolution: texels per tile side. udims: tiles every map kind is written for.
    generator: how the data was made (name, version, seed, source); stored verbatim in the manifest.
    """

    units: Sequence[str]
    map_kinds: Sequence[str]
    resolution: int
    udims: Sequence[int]
    skin_groups: Sequence[str]
    generator: Mapping[str, Any]
    absent_units: Mapping[str, str] = field(default_factory=dict)

    def expressions(self) -> list[str]:
        """``neutral`` followed by the units."""
        return [NEUTRAL] + [u for u in self.units if u != NEUTRAL]


class DatasetWriter:
    """Writes a dataset into a hidden folder beside ``root`` and renames it to ``root`` when closed.

    Use as a context manager::

        with DatasetWriter(root, template, spec) as writer:
            writer.write_expression("s0000", "neutral", vertices, maps)
            ...
            writer.add_subject("s0000", "train", {"seed": 7})

    An exception inside the block removes the partial folder; ``root`` must not exist (published data is
    never overwritten). ``staging`` is the folder being written, for worker processes that call the
    module-level ``write_expression_files`` themselves.
    """

    def __init__(self, root: str | os.PathLike, template: FaceMesh, spec: DatasetSpec):
        self.root = Path(root)
        self.template = template
        self.spec = spec
        unknown = sorted(set(spec.map_kinds) - set(MAP_SPECS))
        if unknown:
            raise ExpDiffInputError(self.root, f"unknown map kind(s) {unknown}; known: {sorted(MAP_SPECS)}")
        self.subjects: dict[str, dict[str, Any]] = {}
        self._cm = None
        self.staging: Path | None = None

    def __enter__(self) -> "DatasetWriter":
        self._cm = atomic_dir(self.root)
        self.staging = self._cm.__enter__()
        write_obj(self.template, self.staging / TEMPLATE_OBJ)
        _dump_json(self.staging / TEMPLATE_SIGNATURE,
                   template_signature(self.template, self.spec.skin_groups, self.spec.udims))
        return self

    def write_expression(self, subject: str, expression: str, vertices: np.ndarray,
                         maps: Mapping[str, Mapping[int, np.ndarray]]) -> None:
        """Write one expression's vertices and maps ({kind: {udim: (C, R, R)}}) under ``subject``."""
        if self.staging is None:
            raise ExpDiffInputError(self.root, "DatasetWriter used outside its 'with' block")
        write_expression_files(self.staging, self.spec, subject, expression, vertices, maps)

    def add_subject(self, subject: str, split: str, info: Mapping[str, Any]) -> None:
        """Record a finished subject: its split and how it was made (written to subject.json)."""
        if split not in SPLITS:
            raise ExpDiffInputError(self.root, f"subject {subject}: unknown split {split!r}; use {SPLITS}")
        self.subjects[subject] = {"split": split}
        _dump_json(self.staging / SUBJECTS_DIR / subject / SUBJECT_INFO, {"subject": subject, "split": split, **info})

    def manifest(self) -> dict[str, Any]:
        """The manifest as it will be written (deterministic: no dates, no paths, sorted keys)."""
        spec = self.spec
        return {
            "format": FORMAT,
            "generator": dict(spec.generator),
            "length_unit": LENGTH_UNIT,
            "template": {"obj": TEMPLATE_OBJ, "signature": TEMPLATE_SIGNATURE,
                         "topology_hash": self.template.topology_hash(),
                         "vertex_count": self.template.n_vertices, "skin_groups": list(spec.skin_groups)},
            "expressions": {"neutral": NEUTRAL, "units": [u for u in spec.units if u != NEUTRAL],
                            "absent_units": dict(spec.absent_units)},
            "vertices": {"file": VERTICES_FILE, "dtype": "float32", "shape": [self.template.n_vertices, 3],
                         "unit": LENGTH_UNIT},
            "maps": {k: {**MAP_SPECS[k], "pixel_type": PIXEL_TYPE, "file": "<kind>.<udim>.exr"}
                     for k in spec.map_kinds},
            "resolution": int(spec.resolution),
            "udims": [int(u) for u in spec.udims],
            "subjects": sorted(self.subjects),
            "splits": {s: sorted(n for n, v in self.subjects.items() if v["split"] == s) for s in SPLITS},
        }

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                if not self.subjects:
                    raise ExpDiffInputError(self.root, "no subject was written; refusing to publish an empty dataset")
                _dump_json(self.staging / MANIFEST, self.manifest())
            except BaseException as err:
                self._cm.__exit__(type(err), err, err.__traceback__)  # removes the partial folder
                raise
        return bool(self._cm.__exit__(exc_type, exc, tb))


def write_expression_files(staging: str | os.PathLike, spec: DatasetSpec, subject: str, expression: str,
                           vertices: np.ndarray, maps: Mapping[str, Mapping[int, np.ndarray]]) -> Path:
    """Write ``vertices.npy`` and every ``<kind>.<udim>.exr`` of one expression; returns its folder.

    maps: {kind: {udim: (C, R, R) float32}} for exactly the spec's kinds and tiles at its resolution.
    """
    if not _SUBJECT_NAME.match(subject):
        raise ExpDiffInputError(staging, f"subject name {subject!r} is not a plain folder name")
    if expression not in spec.expressions():
        raise ExpDiffInputError(staging, f"expression {expression!r} is not in this dataset's units")
    folder = Path(staging) / SUBJECTS_DIR / subject / expression
    folder.mkdir(parents=True, exist_ok=True)
    write_vertices(folder / VERTICES_FILE, vertices)
    for kind in spec.map_kinds:
        tiles = maps.get(kind, {})
        for udim in spec.udims:
            if udim not in tiles:
                raise ExpDiffInputError(folder / map_filename(kind, udim), "map missing from the synthesised data")
            image = np.asarray(tiles[udim], dtype=np.float32)
            want = (MAP_SPECS[kind]["channels"], spec.resolution, spec.resolution)
            if image.shape != want:
                raise ExpDiffInputError(folder / map_filename(kind, udim), f"map shape {image.shape}, expected {want}")
            write_image(folder / map_filename(kind, udim), image.transpose(1, 2, 0), pixel_type=PIXEL_TYPE)
    return folder


# ------------------------------------------------------------------------- reader
def _load_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise ExpDiffInputError(root, "dataset folder not found")
    if not path.is_file():
        raise ExpDiffInputError(path, "manifest missing; not an ExpDiff dataset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExpDiffInputError(path, f"manifest is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExpDiffInputError(path, "manifest must be a JSON object")
    return data


class Dataset:
    """Read access to a dataset folder. Construction checks the manifest only; see ``validate_dataset``.

    subjects: subject names; expressions: ``neutral`` + units; map_kinds, udims, resolution as declared.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = _load_manifest(self.root)
        problems = _manifest_problems(self.root / MANIFEST, self.manifest)
        if problems:
            raise ExpDiffInputError(self.root / MANIFEST, "; ".join(problems))
        m = self.manifest
        self.subjects: list[str] = list(m["subjects"])
        self.units: list[str] = list(m["expressions"]["units"])
        self.expressions: list[str] = [NEUTRAL] + self.units
        self.absent_units: dict[str, str] = dict(m["expressions"].get("absent_units", {}))
        self.map_kinds: list[str] = list(m["maps"])
        self.udims: list[int] = [int(u) for u in m["udims"]]
        self.resolution: int = int(m["resolution"])
        self.vertex_count: int = int(m["template"]["vertex_count"])
        self.splits: dict[str, list[str]] = {s: list(m["splits"].get(s, [])) for s in SPLITS}
        self._template: FaceMesh | None = None

    def __repr__(self) -> str:
        return (f"Dataset({str(self.root)!r}, {len(self.subjects)} subjects x {len(self.expressions)} expressions, "
                f"{self.map_kinds} at {self.resolution}^2 on tiles {self.udims})")

    def template(self) -> FaceMesh:
        """The template FaceMesh (topology, UVs, groups; positions = template shape, cm)."""
        if self._template is None:
            self._template = read_obj(self.root / TEMPLATE_OBJ, units=LENGTH_UNIT)
        return self._template

    def split(self, name: str) -> list[str]:
        """Subject names of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ExpDiffInputError(self.root / MANIFEST, f"unknown split {name!r}; use one of {SPLITS}")
        return list(self.splits[name])

    def expression_dir(self, subject: str, expression: str) -> Path:
        return self.root / SUBJECTS_DIR / subject / expression

    def subject_info(self, subject: str) -> dict[str, Any]:
        """Contents of the subject's ``subject.json``."""
        path = self.root / SUBJECTS_DIR / subject / SUBJECT_INFO
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExpDiffInputError(path, f"cannot read subject info ({exc})") from None

    def load_vertices(self, subject: str, expression: str) -> np.ndarray:
        """(V, 3) float32 vertices in cm."""
        return read_vertices(self.expression_dir(subject, expression) / VERTICES_FILE, self.vertex_count)

    def load_mesh(self, subject: str, expression: str) -> FaceMesh:
        """The template with this expression's vertices."""
        return self.template().with_vertices(self.load_vertices(subject, expression), name=f"{subject}/{expression}")

    def load_map(self, subject: str, expression: str, kind: str, udim: int) -> np.ndarray:
        """One (C, R, R) float32 map tile."""
        if kind not in self.map_kinds:
            raise ExpDiffInputError(self.root / MANIFEST, f"map kind {kind!r} not in this dataset {self.map_kinds}")
        path = self.expression_dir(subject, expression) / map_filename(kind, udim)
        image = read_image(path, channels=MAP_SPECS[kind]["channels"])
        if image.shape[:2] != (self.resolution, self.resolution):
            raise ExpDiffInputError(path, f"is {image.shape[1]}x{image.shape[0]}, the dataset is "
                                          f"{self.resolution}x{self.resolution}")
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def load_maps(self, subject: str, expression: str,
                  kinds: Sequence[str] | None = None) -> dict[str, dict[int, np.ndarray]]:
        """{kind: {udim: (C, R, R) float32}} for the given kinds (default: all)."""
        return {k: {u: self.load_map(subject, expression, k, u) for u in self.udims}
                for k in (kinds or self.map_kinds)}

    def samples(self, split: str | None = None, expressions: Sequence[str] | None = None
                ) -> Iterator[tuple[str, str]]:
        """(subject, expression) pairs, subject-major, optionally one split / some expressions only."""
        subjects = self.subjects if split is None else self.split(split)
        for s in subjects:
            for e in expressions or self.expressions:
                yield s, e


# ----------------------------------------------------------------------- validator
def _manifest_problems(path: Path, m: Mapping[str, Any]) -> list[str]:
    """Structural problems of a manifest (types and required keys), as 'path: problem' strings."""
    out: list[str] = []

    def need(key: str, typ: type | tuple[type, ...], where: Mapping[str, Any] = m, label: str = "") -> bool:
        if key not in where:
            out.append(f"{path}: missing key '{label}{key}'")
            return False
        if not isinstance(where[key], typ):
            out.append(f"{path}: '{label}{key}' must be {getattr(typ, '__name__', typ)}, "
                       f"got {type(where[key]).__name__}")
            return False
        return True

    if need("format", str) and m["format"] != FORMAT:
        out.append(f"{path}: format {m['format']!r} is not {FORMAT!r}")
    if need("length_unit", str) and m["length_unit"] != LENGTH_UNIT:
        out.append(f"{path}: length_unit {m['length_unit']!r}; this format stores {LENGTH_UNIT}")
    need("generator", dict)
    if need("template", dict):
        need("vertex_count", int, m["template"], "template.")
        need("topology_hash", str, m["template"], "template.")
    if need("expressions", dict):
        if need("units", list, m["expressions"], "expressions."):
            units = m["expressions"]["units"]
            if not all(isinstance(u, str) for u in units):
                out.append(f"{path}: 'expressions.units' must be a list of names")
            elif len(set(units)) != len(units):
                out.append(f"{path}: 'expressions.units' lists a unit twice")
    if need("maps", dict):
        unknown = sorted(set(m["maps"]) - set(MAP_SPECS))
        if unknown:
            out.append(f"{path}: unknown map kind(s) {unknown}; known: {sorted(MAP_SPECS)}")
        if not m["maps"]:
            out.append(f"{path}: 'maps' lists no map kind")
    if need("resolution", int):
        if not 1 <= m["resolution"] <= 16384:
            out.append(f"{path}: resolution {m['resolution']} out of range")
    if need("udims", list):
        if not m["udims"] or not all(isinstance(u, int) and 1001 <= u <= 1100 for u in m["udims"]):
            out.append(f"{path}: 'udims' must be a non-empty list of UDIM tiles 1001..1100")
    if need("subjects", list):
        bad = [s for s in m["subjects"] if not isinstance(s, str) or not _SUBJECT_NAME.match(s)]
        if bad:
            out.append(f"{path}: subject names {bad[:5]} are not plain folder names")
    if need("splits", dict):
        unknown = sorted(set(m["splits"]) - set(SPLITS))
        if unknown:
            out.append(f"{path}: unknown split(s) {unknown}; use {list(SPLITS)}")
        if isinstance(m.get("subjects"), list):
            seen: dict[str, str] = {}
            for split, names in m["splits"].items():
                if not isinstance(names, list):
                    out.append(f"{path}: split '{split}' must be a list of subject names")
                    continue
                for n in names:
                    if n in seen:
                        out.append(f"{path}: subject {n!r} is in both '{seen[n]}' and '{split}' splits")
                    seen[n] = split
                    if n not in m["subjects"]:
                        out.append(f"{path}: split '{split}' names unknown subject {n!r}")
            for n in m["subjects"]:
                if n not in seen:
                    out.append(f"{path}: subject {n!r} is in no split")
    return out


def _vocabulary_problems(path: Path, m: Mapping[str, Any]) -> list[str]:
    from .. import facs

    known = set(facs.UNIT_NAMES)
    units = m["expressions"]["units"]
    absent = m["expressions"].get("absent_units", {})
    out = [f"{path}: unknown expression unit {u!r} (not in the FACS vocabulary)" for u in units if u not in known]
    missing = sorted(known - set(units) - set(absent))
    if missing:
        out.append(f"{path}: vocabulary unit(s) {missing} neither provided nor listed in 'absent_units'")
    return out


def _map_problems(path: Path, kind: str, resolution: int, check_pixels: bool) -> list[str]:
    """Problems of one map file: existence, format, size, channels, pixel type, pixels, value range."""
    if not path.is_file():
        return [f"{path}: missing {kind} map"]
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        return [f"{path}: not a readable image ({oiio.geterror() or 'unknown format'})"]
    try:
        spec = inp.spec()
        fmt = inp.format_name()
        width, height, channels = spec.width, spec.height, spec.nchannels
    finally:
        inp.close()
    out = []
    if fmt != "openexr":
        out.append(f"{path}: is {fmt}, expected OpenEXR")
    if (width, height) != (resolution, resolution):
        out.append(f"{path}: wrong resolution {width}x{height}, the manifest says {resolution}x{resolution}")
    want = MAP_SPECS[kind]["channels"]
    if channels != want:
        out.append(f"{path}: {kind} map has {channels} channel(s), expected {want}")
    if out or not check_pixels:
        return out
    try:
        pixels = read_image(path)
    except ExpDiffInputError as exc:
        return [str(exc)]
    lo, hi = MAP_SPECS[kind]["range"]
    if pixels.min() < lo - _RANGE_SLACK or pixels.max() > hi + _RANGE_SLACK:
        out.append(f"{path}: values [{pixels.min():.4g}, {pixels.max():.4g}] outside the {kind} range [{lo}, {hi}]")
    if image_pixel_type(path) != PIXEL_TYPE:
        out.append(f"{path}: pixel type {image_pixel_type(path)}, expected {PIXEL_TYPE}")
    return out


def validate_dataset(root: str | os.PathLike, check_pixels: bool = True, progress: bool = False) -> list[str]:
    """Every problem of a dataset folder, each ``'<file>: <problem>'``; empty when the dataset is valid.

    Checks the manifest (structure, vocabulary, splits), the template (readable, vertex count and topology
    hash as declared), that each subject has every expression and nothing else, vertices (readable .npy,
    (V, 3) float32, finite), and every declared map on every tile (present, OpenEXR, resolution, channels;
    with ``check_pixels`` also readable pixels, half floats and value range), and files that do not belong.
    """
    root = Path(root)
    try:
        manifest = _load_manifest(root)
    except ExpDiffInputError as exc:
        return [str(exc)]
    mpath = root / MANIFEST
    problems = _manifest_problems(mpath, manifest)
    if problems:
        return problems  # the rest of the checks need a well-formed manifest
    problems += _vocabulary_problems(mpath, manifest)

    vertex_count = manifest["template"]["vertex_count"]
    obj = root / TEMPLATE_OBJ
    try:
        template = read_obj(obj)
        if template.n_vertices != vertex_count:
            problems.append(f"{obj}: template has {template.n_vertices} vertices, manifest says {vertex_count}")
        if template.topology_hash() != manifest["template"]["topology_hash"]:
            problems.append(f"{obj}: topology hash differs from the manifest's (template was changed)")
    except ExpDiffInputError as exc:
        problems.append(str(exc))
    if not (root / TEMPLATE_SIGNATURE).is_file():
        problems.append(f"{root / TEMPLATE_SIGNATURE}: template signature missing")

    expressions = [NEUTRAL] + list(manifest["expressions"]["units"])
    kinds = list(manifest["maps"])
    udims = [int(u) for u in manifest["udims"]]
    resolution = int(manifest["resolution"])
    expected_files = {VERTICES_FILE} | {map_filename(k, u) for k in kinds for u in udims}
    subjects_dir = root / SUBJECTS_DIR
    on_disk = sorted(p.name for p in subjects_dir.iterdir() if p.is_dir()) if subjects_dir.is_dir() else []
    for extra in sorted(set(on_disk) - set(manifest["subjects"])):
        problems.append(f"{subjects_dir / extra}: subject folder not listed in the manifest")

    from tqdm.auto import tqdm

    for subject in tqdm(manifest["subjects"], desc="validate", unit="subject", disable=not progress):
        sdir = subjects_dir / subject
        if not sdir.is_dir():
            problems.append(f"{sdir}: subject folder missing")
            continue
        if not (sdir / SUBJECT_INFO).is_file():
            problems.append(f"{sdir / SUBJECT_INFO}: subject info missing")
        present = {p.name for p in sdir.iterdir() if p.is_dir()}
        for name in sorted(present - set(expressions)):
            problems.append(f"{sdir / name}: unknown expression folder (not in the manifest's units)")
        for expression in expressions:
            edir = sdir / expression
            if expression not in present:
                problems.append(f"{edir}: missing expression unit '{expression}'")
                continue
            try:
                read_vertices(edir / VERTICES_FILE, vertex_count)
            except ExpDiffInputError as exc:
                problems.append(str(exc))
            for kind in kinds:
                for udim in udims:
                    problems += _map_problems(edir / map_filename(kind, udim), kind, resolution, check_pixels)
            for f in sorted(p.name for p in edir.iterdir()):
                if f in expected_files:
                    continue
                match = _MAP_FILE.match(f)
                if match and match["kind"] not in MAP_SPECS:
                    problems.append(f"{edir / f}: unknown map kind '{match['kind']}'")
                elif match and match["kind"] not in kinds:
                    problems.append(f"{edir / f}: map kind '{match['kind']}' not declared in the manifest")
                elif match:
                    problems.append(f"{edir / f}: UDIM tile {match['udim']} not declared in the manifest")
                else:
                    problems.append(f"{edir / f}: unexpected file")
    return problems


def require_valid_dataset(root: str | os.PathLike, check_pixels: bool = True) -> Dataset:
    """The Dataset at ``root`` if it validates; otherwise ExpDiffInputError listing every problem."""
    problems = validate_dataset(root, check_pixels=check_pixels)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ExpDiffInputError(root, f"invalid dataset, {len(problems)} problem(s):\n  {shown}{more}")
    return Dataset(root)
