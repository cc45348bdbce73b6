"""FaceMesh: a polygon mesh with per-corner UVs and material groups; OBJ, PLY and USD readers, OBJ and USD writers.

Topology is stored the USD way (``face_vertex_counts`` + flat ``face_vertex_indices``) so quads, triangles and
n-gons round-trip exactly; UVs are indexed per face corner (``face_uv_indices``) so vertices on UV seams keep
several UVs while the vertex order of the file is kept exactly. Every reader ends in ``validate_mesh``, so a
FaceMesh that comes out of a file has finite positions, in-range indices and UVs inside UDIM tiles 1001..1100.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExpDiffInputError, PublishError
from ..fileio import atomic_path
from .udim import udim_of, uv_outside_tiles

MESH_SUFFIXES = (".obj", ".ply", ".usd", ".usda", ".usdc")
USD_SUFFIXES = (".usd", ".usda", ".usdc")
METERS_PER_UNIT = {"m": 1.0, "cm": 0.01, "mm": 0.001}


@dataclass
class FaceMesh:
    """A face mesh on a fixed vertex order.

    vertices: (V, 3) float32, in ``units`` (``"cm"``, ``"mm"`` or ``"m"``).
    face_vertex_counts: (F,) int32, corners per face (3 or 4, n-gons allowed).
    face_vertex_indices: (sum(counts),) int32 indices into ``vertices``.
    uvs: (T, 2) float32 texture coordinates; UDIM tile 1001 + u_int + 10 * v_int.
    face_uv_indices: (sum(counts),) int32 indices into ``uvs``, one per face corner.
    face_groups: (F,) int32 index into ``group_names`` (material group of each face).
    group_names: material group names, e.g. ``["M_Face", "M_BackHead"]``.
    """

    vertices: np.ndarray
    face_vertex_counts: np.ndarray
    face_vertex_indices: np.ndarray
    uvs: np.ndarray
    face_uv_indices: np.ndarray
    face_groups: np.ndarray
    group_names: list[str] = field(default_factory=lambda: ["default"])
    units: str = "cm"
    name: str = "face"

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.face_vertex_counts = np.ascontiguousarray(self.face_vertex_counts, dtype=np.int32)
        self.face_vertex_indices = np.ascontiguousarray(self.face_vertex_indices, dtype=np.int32)
        self.uvs = np.ascontiguousarray(self.uvs, dtype=np.float32).reshape(-1, 2)
        self.face_uv_indices = np.ascontiguousarray(self.face_uv_indices, dtype=np.int32)
        self.face_groups = np.ascontiguousarray(self.face_groups, dtype=np.int32)

    # ------------------------------------------------------------------ views
    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.face_vertex_counts.shape[0])

    @property
    def face_offsets(self) -> np.ndarray:
        """(F,) int64 start of each face in the flat index arrays."""
        return np.concatenate([[0], np.cumsum(self.face_vertex_counts[:-1], dtype=np.int64)])

    def face_udims(self) -> np.ndarray:
        """(F,) int64 UDIM tile of each face: the tile holding the centroid of its corner UVs.

        Per face rather than per UV, so a corner lying exactly on a tile's right or top edge (u = 1.0) does
        not drag the neighbouring tile into the set.
        """
        corner_uvs = self.uvs[self.face_uv_indices].astype(np.float64)
        sums = np.add.reduceat(corner_uvs, self.face_offsets, axis=0) if self.n_faces else corner_uvs[:0]
        return udim_of(sums / self.face_vertex_counts[:, None])

    @property
    def udims(self) -> list[int]:
        """Sorted UDIM tiles used by the faces, e.g. ``[1001, 1002, ..., 1007]`` for ICT-FaceKit."""
        return [int(t) for t in np.unique(self.face_udims())]

    def triangulated(self) -> "TriangleView":
        """Fan-triangulate every face (quads split along corner 0-2); cached per mesh."""
        cached = getattr(self, "_tri_cache", None)
        if cached is not None and cached[0] is self.face_vertex_counts:
            return cached[1]
        counts = self.face_vertex_counts.astype(np.int64)
        offsets = self.face_offsets
        n_tris = np.maximum(counts - 2, 0)
        face_of_tri = np.repeat(np.arange(self.n_faces), n_tris)
        k = np.arange(n_tris.sum()) - np.repeat(np.cumsum(n_tris) - n_tris, n_tris)  # fan index in face
        base = offsets[face_of_tri]
        corners = np.stack([base, base + k + 1, base + k + 2], axis=1)
        view = TriangleView(
            faces=self.face_vertex_indices[corners].astype(np.int32),
            uv_faces=self.face_uv_indices[corners].astype(np.int32),
            source_face=face_of_tri.astype(np.int32),
        )
        object.__setattr__(self, "_tri_cache", (self.face_vertex_counts, view))
        return view

    def group_face_mask(self, groups: list[str] | tuple[str, ...]) -> np.ndarray:
        """(F,) bool: faces whose material group is one of ``groups``."""
        ids = [i for i, g in enumerate(self.group_names) if g in set(groups)]
        return np.isin(self.face_groups, ids)

    def with_vertices(self, vertices: np.ndarray, name: str | None = None) -> "FaceMesh":
        """Same topology, UVs and groups, new (V, 3) positions."""
        vertices = np.asarray(vertices, dtype=np.float32)
        if vertices.shape != self.vertices.shape:
            raise ExpDiffInputError(None, f"vertices shape {vertices.shape} != mesh {self.vertices.shape}")
        return FaceMesh(vertices, self.face_vertex_counts, self.face_vertex_indices, self.uvs,
                        self.face_uv_indices, self.face_groups, list(self.group_names), self.units,
                        name or self.name)

    def topology_hash(self) -> str:
        """sha256 over face connectivity and UV layout (not positions): identifies a template."""
        h = hashlib.sha256()
        for a in (self.face_vertex_counts, self.face_vertex_indices, self.face_uv_indices,
                  np.round(self.uvs, 5).astype(np.float32)):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(self.n_vertices).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class TriangleView:
    """Triangulated topology of a FaceMesh.

    faces: (T, 3) int32 vertex indices; uv_faces: (T, 3) int32 UV indices;
    source_face: (T,) int32 index of the polygon each triangle came from.
    """

    faces: np.ndarray
    uv_faces: np.ndarray
    source_face: np.ndarray


# ----------------------------------------------------------------- validate
def validate_mesh(mesh: FaceMesh, path: str | os.PathLike | None = None) -> FaceMesh:
    """Check a FaceMesh is usable by ExpDiff; return it unchanged or raise ExpDiffInputError naming ``path``.

    Checks: array shapes; every face has >= 3 corners and the flat index arrays match the counts; vertex and
    UV indices in range; finite vertex positions; UVs present, finite and inside a UDIM tile
    (0 <= u < 10, 0 <= v < 10, i.e. tiles 1001..1100); face groups in range; a known unit.
    """
    v = mesh.vertices
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise ExpDiffInputError(path, f"vertices must be a non-empty (V, 3) array, got shape {v.shape}")
    counts = mesh.face_vertex_counts
    if counts.ndim != 1 or counts.size == 0:
        raise ExpDiffInputError(path, "mesh has no faces")
    if counts.min() < 3:
        bad = int(np.flatnonzero(counts < 3)[0])
        raise ExpDiffInputError(path, f"face {bad} has {int(counts[bad])} corner(s); a face needs at least 3")
    n_corners = int(counts.sum(dtype=np.int64))
    for name, arr in (("face_vertex_indices", mesh.face_vertex_indices), ("face_uv_indices", mesh.face_uv_indices)):
        if arr.shape != (n_corners,):
            raise ExpDiffInputError(path, f"{name} has {arr.size} entries but the face counts sum to {n_corners}")
    _check_index_range(path, mesh, mesh.face_vertex_indices, mesh.n_vertices, "vertex")
    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ExpDiffInputError(path, f"vertex {bad} has a NaN or infinite coordinate {tuple(v[bad].tolist())} "
                                      f"({int((~finite).sum())} such vertices)")
    if mesh.uvs.shape[0] == 0:
        raise ExpDiffInputError(path, "mesh has no UVs; ExpDiff needs a UV layout")
    _check_index_range(path, mesh, mesh.face_uv_indices, mesh.uvs.shape[0], "UV")
    outside = uv_outside_tiles(mesh.uvs)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        u, w = mesh.uvs[bad].tolist()
        raise ExpDiffInputError(
            path, f"UV {bad} = ({u:.6g}, {w:.6g}) lies outside every UDIM tile ({int(outside.sum())} such UVs); "
                  "UVs must satisfy 0 <= u < 10 and 0 <= v < 10 (tiles 1001..1100)")
    if mesh.face_groups.shape != counts.shape:
        raise ExpDiffInputError(path, f"face_groups has {mesh.face_groups.size} entries for {counts.size} faces")
    if mesh.face_groups.min() < 0 or mesh.face_groups.max() >= len(mesh.group_names):
        bad = int(np.flatnonzero((mesh.face_groups < 0) | (mesh.face_groups >= len(mesh.group_names)))[0])
        raise ExpDiffInputError(path, f"face {bad} is in group {int(mesh.face_groups[bad])} but the mesh has "
                                      f"{len(mesh.group_names)} group name(s)")
    if mesh.units not in METERS_PER_UNIT:
        raise ExpDiffInputError(path, f"unknown unit {mesh.units!r}; use one of {list(METERS_PER_UNIT)}")
    return mesh


def _check_index_range(path, mesh: FaceMesh, indices: np.ndarray, n: int, what: str) -> None:
    bad = (indices < 0) | (indices >= n)
    if bad.any():
        corner = int(np.flatnonzero(bad)[0])
        face = int(np.searchsorted(mesh.face_offsets, corner, side="right") - 1)
        raise ExpDiffInputError(path, f"face {face} references {what} {int(indices[corner])} but the mesh has "
                                      f"{n} {what}s (valid 0..{n - 1})")


# ---------------------------------------------------------------------- OBJ
_OBJ_HEADER = "# ExpDiff FaceMesh "


def read_obj(path: str | os.PathLike, units: str | None = None) -> FaceMesh:
    """Read a Wavefront OBJ keeping the file's vertex order, per-corner UVs and ``usemtl`` groups.

    units: the unit of the positions; ``None`` takes it from an ExpDiff header (``# ExpDiff FaceMesh ...
    units=mm``) and otherwise assumes ``"cm"`` (OBJ has no unit field).

    Raises ExpDiffInputError naming the file for a missing file, unparsable lines, faces that reference
    missing vertices/UVs, meshes without UVs, and NaN/inf positions.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpDiffInputError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, OSError) as exc:
        raise ExpDiffInputError(path, f"cannot read as a text OBJ file ({exc})") from None

    verts: list[str] = []
    uvs: list[str] = []
    counts: list[int] = []
    fv: list[int] = []
    ft: list[int] = []
    groups: list[int] = []
    group_names: list[str] = []
    current = -1
    missing_uv_line = 0
    header_units = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line[0] == "#":
            if lineno == 1 and line.startswith(_OBJ_HEADER):
                header_units = line.rpartition(" units=")[2].strip() or None
            continue
        tag, _, rest = line.partition(" ")
        if tag == "v":
            verts.append(rest)
        elif tag == "vt":
            uvs.append(rest)
        elif tag == "usemtl":
            name = rest.strip()
            if name not in group_names:
                group_names.append(name)
            current = group_names.index(name)
        elif tag == "f":
            corners = rest.split()
            if len(corners) < 3:
                raise ExpDiffInputError(path, f"line {lineno}: face with {len(corners)} corners")
            try:
                for c in corners:
                    parts = c.split("/")
                    fv.append(int(parts[0]))
                    if len(parts) > 1 and parts[1]:
                        ft.append(int(parts[1]))
                    else:
                        ft.append(0)
                        missing_uv_line = missing_uv_line or lineno
            except ValueError:
                raise ExpDiffInputError(path, f"line {lineno}: cannot parse face {rest.strip()!r}") from None
            counts.append(len(corners))
            if current < 0:
                group_names.append("default")
                current = 0
            groups.append(current)
    if not verts:
        raise ExpDiffInputError(path, "no vertices ('v' lines) found; not an OBJ mesh")
    if not counts:
        raise ExpDiffInputError(path, "no faces ('f' lines) found")
    try:
        v = np.array([s.split()[:3] for s in verts], dtype=np.float32)
    except ValueError:
        raise ExpDiffInputError(path, "a 'v' line does not hold three numbers") from None
    if not uvs or missing_uv_line:
        where = f" (first face without one: line {missing_uv_line})" if missing_uv_line else ""
        raise ExpDiffInputError(path, f"mesh has no UVs{where}; ExpDiff needs a UV layout")
    try:
        t = np.array([s.split()[:2] for s in uvs], dtype=np.float32)
    except ValueError:
        raise ExpDiffInputError(path, "a 'vt' line does not hold two numbers") from None
    fv_a = np.asarray(fv, dtype=np.int64)
    ft_a = np.asarray(ft, dtype=np.int64)
    # OBJ indices are 1-based; negative ones count back from the end (relative indexing).
    fv_a = np.where(fv_a < 0, len(v) + fv_a, fv_a - 1)
    ft_a = np.where(ft_a < 0, len(t) + ft_a, ft_a - 1)
    if fv_a.min() < 0 or fv_a.max() >= len(v):
        raise ExpDiffInputError(path, f"a face references vertex {int(fv_a.max()) + 1} but there are {len(v)}")
    if ft_a.min() < 0 or ft_a.max() >= len(t):
        raise ExpDiffInputError(path, f"a face references UV {int(ft_a.max()) + 1} but there are {len(t)}")
    units = units or header_units or "cm"
    mesh = FaceMesh(v, np.asarray(counts), fv_a, t, ft_a, np.asarray(groups), group_names, units, path.stem)
    return validate_mesh(mesh, path)


def write_obj(mesh: FaceMesh, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``mesh`` as OBJ (positions, UVs, ``usemtl`` groups), atomically. Round-trips exactly.

    overwrite=False refuses (PublishError) to replace an existing file.
    """
    path = Path(path)
    validate_mesh(mesh, path)
    lines = [f"{_OBJ_HEADER}{mesh.name} units={mesh.units}"]
    lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in mesh.vertices.astype(float).tolist()]
    lines += [f"vt {u!r} {w!r}" for u, w in mesh.uvs.astype(float).tolist()]
    offsets = mesh.face_offsets
    fv = (mesh.face_vertex_indices + 1).tolist()
    ft = (mesh.face_uv_indices + 1).tolist()
    last = -1
    for f in range(mesh.n_faces):
        g = int(mesh.face_groups[f])
        if g != last:
            lines.append(f"usemtl {mesh.group_names[g]}")
            last = g
        o, n = int(offsets[f]), int(mesh.face_vertex_counts[f])
        lines.append("f " + " ".join(f"{fv[o + k]}/{ft[o + k]}" for k in range(n)))
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:
        raise PublishError(f"{path}: cannot write OBJ ({exc.strerror or exc})") from None
    return path


# ---------------------------------------------------------------------- PLY
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "f4": "f", "f8": "d"}
_PLY_UV_NAMES = (("s", "t"), ("u", "v"), ("texture_u", "texture_v"), ("texture_s", "texture_t"))


@dataclass
class _PlyProperty:
    name: str
    dtype: str  # numpy code without byte order, e.g. "f4"
    count_dtype: str | None = None  # set for list properties


@dataclass
class _PlyElement:
    name: str
    count: int
    properties: list[_PlyProperty]


def read_ply(path: str | os.PathLike, units: str = "cm") -> FaceMesh:
    """Read a PLY mesh (ASCII or binary) keeping the file's vertex order and its polygons (no triangulation).

    UVs come from a per-face ``texcoord`` list (per corner, so seams survive) or else per-vertex
    ``s/t``, ``u/v`` or ``texture_u/texture_v`` properties. PLY carries no material groups: every face is in
    group ``"default"``. units: PLY has no unit field, so the caller says it.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpDiffInputError(path, "file not found")
    data = path.read_bytes()
    fmt, elements, body_start = _parse_ply_header(path, data)
    parsed: dict[str, dict[str, object]] = {}
    body = data[body_start:]
    tokens = body.split() if fmt == "ascii" else []
    endian = ">" if fmt == "binary_big_endian" else "<"
    offset = 0  # token index (ascii) or byte offset (binary)
    for element in elements:
        if "vertex" in parsed and "face" in parsed:
            break  # later elements (edges, materials) are not needed
        if fmt == "ascii":
            parsed[element.name], offset = _read_ply_ascii(path, element, tokens, offset)
        else:
            parsed[element.name], offset = _read_ply_binary(path, element, body, offset, endian)
    if "vertex" not in parsed:
        raise ExpDiffInputError(path, "PLY has no 'vertex' element")
    if "face" not in parsed:
        raise ExpDiffInputError(path, "PLY has no 'face' element (a point cloud is not a mesh)")
    vert, face = parsed["vertex"], parsed["face"]
    if not all(k in vert for k in ("x", "y", "z")):
        raise ExpDiffInputError(path, "PLY vertex element lacks x, y, z properties")
    vertices = np.stack([np.asarray(vert[k], dtype=np.float32) for k in ("x", "y", "z")], axis=1)
    index_name = next((k for k in ("vertex_indices", "vertex_index") if k in face), None)
    if index_name is None or not isinstance(face[index_name], tuple):
        raise ExpDiffInputError(path, "PLY face element lacks a 'vertex_indices' list property")
    fvi, counts = face[index_name]
    if "texcoord" in face and isinstance(face["texcoord"], tuple):
        tc, tc_counts = face["texcoord"]
        if not np.array_equal(tc_counts, 2 * counts):
            bad = int(np.flatnonzero(tc_counts != 2 * counts)[0])
            raise ExpDiffInputError(path, f"face {bad} has {int(counts[bad])} corners but "
                                          f"{int(tc_counts[bad])} texcoord values (needs 2 per corner)")
        uvs, face_uv_indices = np.unique(np.asarray(tc, dtype=np.float32).reshape(-1, 2), axis=0,
                                         return_inverse=True)
    else:
        names = next(((a, b) for a, b in _PLY_UV_NAMES if a in vert and b in vert), None)
        if names is None:
            raise ExpDiffInputError(path, "mesh has no UVs (no per-face 'texcoord' and no per-vertex s/t, u/v or "
                                          "texture_u/texture_v properties); ExpDiff needs a UV layout")
        uvs = np.stack([np.asarray(vert[n], dtype=np.float32) for n in names], axis=1)
        face_uv_indices = fvi
    mesh = FaceMesh(vertices, counts, fvi, uvs, np.asarray(face_uv_indices).reshape(-1),
                    np.zeros(len(counts), np.int32), ["default"], units, path.stem)
    return validate_mesh(mesh, path)


def _parse_ply_header(path: Path, data: bytes) -> tuple[str, list[_PlyElement], int]:
    if not data.startswith(b"ply"):
        raise ExpDiffInputError(path, "not a PLY file (does not start with 'ply')")
    end = data.find(b"end_header")
    if end < 0:
        raise ExpDiffInputError(path, "PLY header has no 'end_header' line (truncated or not a PLY file)")
    body_start = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    try:
        lines = data[:end].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise ExpDiffInputError(path, "PLY header is not ASCII text") from None
    fmt = None
    elements: list[_PlyElement] = []
    for lineno, line in enumerate(lines, 2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
                if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
                    raise ExpDiffInputError(path, f"header line {lineno}: unknown PLY format {fmt!r}")
            elif words[0] == "element":
                elements.append(_PlyElement(words[1], int(words[2]), []))
            elif words[0] == "property":
                if not elements:
                    raise ExpDiffInputError(path, f"header line {lineno}: property before any element")
                if words[1] == "list":
                    prop = _PlyProperty(words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]])
                else:
                    prop = _PlyProperty(words[2], _PLY_TYPES[words[1]])
                elements[-1].properties.append(prop)
            else:
                raise ExpDiffInputError(path, f"header line {lineno}: unexpected {words[0]!r}")
        except (IndexError, KeyError, ValueError):
            raise ExpDiffInputError(path, f"header line {lineno}: cannot parse {line.strip()!r}") from None
    if fmt is None:
        raise ExpDiffInputError(path, "PLY header has no 'format' line")
    return fmt, elements, body_start


def _read_ply_ascii(path: Path, element: _PlyElement, tokens: list[bytes], pos: int):
    """Parse one element from whitespace tokens starting at ``pos``; lists come back as (flat, counts)."""
    props = element.properties
    if element.count == 0:
        return {p.name: (np.zeros(0), np.zeros(0, np.int64)) if p.count_dtype else np.zeros(0) for p in props}, pos
    try:
        if all(p.count_dtype is None for p in props):
            n = element.count * len(props)
            if pos + n > len(tokens):
                raise IndexError
            table = np.array(tokens[pos:pos + n]).astype(np.float64).reshape(element.count, len(props))
            return {p.name: table[:, i] for i, p in enumerate(props)}, pos + n
        values: dict[str, list] = {p.name: [] for p in props}
        counts: dict[str, list[int]] = {p.name: [] for p in props if p.count_dtype}
        for _ in range(element.count):
            for p in props:
                if p.count_dtype:
                    k = int(tokens[pos])
                    if pos + 1 + k > len(tokens):
                        raise IndexError
                    values[p.name].extend(tokens[pos + 1:pos + 1 + k])
                    counts[p.name].append(k)
                    pos += 1 + k
                else:
                    values[p.name].append(tokens[pos])
                    pos += 1
    except IndexError:
        raise ExpDiffInputError(path, f"truncated: the file ends inside the {element.count} "
                                      f"'{element.name}' rows the header declares") from None
    except ValueError:
        raise ExpDiffInputError(path, f"a '{element.name}' row holds a value that is not a number") from None
    out: dict[str, object] = {}
    for p in props:
        try:
            arr = np.array(values[p.name]).astype(np.float64)
        except ValueError:
            raise ExpDiffInputError(path, f"'{element.name}' property {p.name!r} holds a non-number") from None
        if p.count_dtype:
            out[p.name] = (arr.astype(np.int64) if p.dtype[0] in "iu" else arr, np.asarray(counts[p.name]))
        else:
            out[p.name] = arr
    return out, pos


def _read_ply_binary(path: Path, element: _PlyElement, body: bytes, offset: int, endian: str):
    """Parse one binary element at byte ``offset``; lists come back as (flat values, counts)."""
    props = element.properties
    truncated = ExpDiffInputError(path, f"truncated: the file ends inside the {element.count} "
                                        f"'{element.name}' rows the header declares")
    if all(p.count_dtype is None for p in props):
        dtype = np.dtype([(p.name, endian + p.dtype) for p in props])
        if offset + dtype.itemsize * element.count > len(body):
            raise truncated
        table = np.frombuffer(body, dtype, element.count, offset)
        return {p.name: table[p.name] for p in props}, offset + dtype.itemsize * element.count
    if element.count == 0:
        return {p.name: (np.zeros(0), np.zeros(0, np.int64)) if p.count_dtype else np.zeros(0) for p in props}, offset
    # Fast path: most files use one list length for every row (all triangles); verify, else walk the rows.
    fields, first_lengths, pos = [], {}, offset
    for p in props:
        if pos + np.dtype(p.count_dtype or p.dtype).itemsize > len(body):
            raise truncated
        if p.count_dtype:
            k = first_lengths[p.name] = int(np.frombuffer(body, endian + p.count_dtype, 1, pos)[0])
            fields += [(f"{p.name}#n", endian + p.count_dtype), (p.name, endian + p.dtype, (k,))]
            pos += np.dtype(p.count_dtype).itemsize + k * np.dtype(p.dtype).itemsize
        else:
            fields.append((p.name, endian + p.dtype))
            pos += np.dtype(p.dtype).itemsize
    dtype = np.dtype(fields)
    if offset + dtype.itemsize * element.count <= len(body):
        table = np.frombuffer(body, dtype, element.count, offset)
        if all(np.all(table[f"{name}#n"] == k) for name, k in first_lengths.items()):
            out: dict[str, object] = {}
            for p in props:
                if p.count_dtype:
                    lengths = np.full(element.count, first_lengths[p.name], np.int64)
                    out[p.name] = (np.asarray(table[p.name]).reshape(-1), lengths)
                else:
                    out[p.name] = np.asarray(table[p.name])
            return out, offset + dtype.itemsize * element.count
    # Mixed list lengths (quads and triangles): walk the rows; struct is ~5x faster than per-row numpy here.
    values: dict[str, list] = {p.name: [] for p in props}
    counts: dict[str, list[int]] = {p.name: [] for p in props if p.count_dtype}
    pos = offset
    try:
        for _ in range(element.count):
            for p in props:
                if p.count_dtype:
                    (k,) = struct.unpack_from(endian + _STRUCT_CODES[p.count_dtype], body, pos)
                    pos += np.dtype(p.count_dtype).itemsize
                    values[p.name].extend(struct.unpack_from(f"{endian}{k}{_STRUCT_CODES[p.dtype]}", body, pos))
                    counts[p.name].append(k)
                    pos += k * np.dtype(p.dtype).itemsize
                else:
                    values[p.name].append(struct.unpack_from(endian + _STRUCT_CODES[p.dtype], body, pos)[0])
                    pos += np.dtype(p.dtype).itemsize
    except struct.error:
        raise truncated from None
    out = {}
    for p in props:
        column = np.asarray(values[p.name], dtype=p.dtype)
        out[p.name] = (column, np.asarray(counts[p.name], np.int64)) if p.count_dtype else column
    return out, pos


# ---------------------------------------------------------------------- USD
def write_usd_mesh(mesh: FaceMesh, path: str | os.PathLike, *, prim_path: str | None = None,
                   overwrite: bool = True) -> Path:
    """Write ``mesh`` as a ``UsdGeom.Mesh`` (.usd/.usdc crate or .usda text), atomically.

    Points, faceVertexCounts/Indices, ``primvars:st`` faceVarying and indexed (values = ``uvs``, indices =
    ``face_uv_indices``, so seams survive), one ``UsdGeom.Subset`` per material group (family
    ``materialBind``, a partition of the faces), stage metersPerUnit from ``mesh.units``, upAxis Y.
    subdivisionScheme is ``none``: a scan is a polygon mesh, and USD's default (Catmull-Clark) would
    smooth the surface away from its points when rendered.
    prim_path: where the mesh goes (default ``/<mesh.name>``); its root prim is the stage's defaultPrim.
    """
    from pxr import Sdf, Tf, Usd, UsdGeom, UsdShade, Vt

    path = Path(path)
    if path.suffix.lower() not in USD_SUFFIXES:
        raise ExpDiffInputError(path, f"not a USD file name; use one of {list(USD_SUFFIXES)}")
    validate_mesh(mesh, path)
    prim_path = prim_path or f"/{Tf.MakeValidIdentifier(mesh.name or 'face')}"
    if not Sdf.Path.IsValidPathString(prim_path) or not Sdf.Path(prim_path).IsAbsolutePath():
        raise ExpDiffInputError(path, f"invalid prim path {prim_path!r}")
    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, METERS_PER_UNIT[mesh.units])
    sdf_path = Sdf.Path(prim_path)
    for ancestor in reversed(sdf_path.GetParentPath().GetPrefixes()):
        UsdGeom.Xform.Define(stage, ancestor)
    usd_mesh = UsdGeom.Mesh.Define(stage, sdf_path)
    stage.SetDefaultPrim(stage.GetPrimAtPath(sdf_path.GetPrefixes()[0]))
    points = Vt.Vec3fArray.FromNumpy(mesh.vertices)
    usd_mesh.CreatePointsAttr(points)
    usd_mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(mesh.face_vertex_counts))
    usd_mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(mesh.face_vertex_indices))
    usd_mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    usd_mesh.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(points))
    st = UsdGeom.PrimvarsAPI(usd_mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                     UsdGeom.Tokens.faceVarying)
    st.Set(Vt.Vec2fArray.FromNumpy(mesh.uvs))
    st.SetIndices(Vt.IntArray.FromNumpy(mesh.face_uv_indices))
    binding = UsdShade.MaterialBindingAPI.Apply(usd_mesh.GetPrim())
    used: set[str] = set()
    for g, group in enumerate(mesh.group_names):
        faces = np.flatnonzero(mesh.face_groups == g).astype(np.int32)
        if faces.size == 0:
            continue  # an empty subset would be an invalid member of a partition family
        name = Tf.MakeValidIdentifier(group)
        while name in used:
            name += "_"
        used.add(name)
        subset = binding.CreateMaterialBindSubset(name, Vt.IntArray.FromNumpy(faces), UsdGeom.Tokens.face)
        if name != group:
            subset.GetPrim().SetDisplayName(group)  # keeps names USD cannot spell, e.g. "skin.001"
    binding.SetMaterialBindSubsetsFamilyType(UsdGeom.Tokens.partition)
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            if not stage.GetRootLayer().Export(str(tmp)):
                raise PublishError(f"{path}: USD export failed")
    except OSError as exc:
        raise PublishError(f"{path}: cannot write USD ({exc.strerror or exc})") from None
    return path


def read_usd_mesh(path: str | os.PathLike, prim_path: str | None = None) -> FaceMesh:
    """Read one ``UsdGeom.Mesh`` as a FaceMesh, including USD written by other tools.

    prim_path: the mesh prim; by default the defaultPrim if it is a Mesh, else the single Mesh under it
    (or in the stage). Positions are taken at the default time (else the earliest sample), with the prim's
    world transform applied, converted to Y-up, and labelled with the stage's unit (a metersPerUnit other
    than m/cm/mm is converted to cm). UVs: ``primvars:st`` (else the only texCoord2f[] primvar), vertex,
    varying or faceVarying, indexed or not. Groups: ``materialBind`` face subsets; faces in none of them go
    to group ``"default"``.
    """
    from pxr import Tf, Usd, UsdGeom

    path = Path(path)
    if not path.is_file():
        raise ExpDiffInputError(path, "file not found")
    try:
        stage = Usd.Stage.Open(str(path), Usd.Stage.LoadAll)
    except Tf.ErrorException as exc:
        # Tf messages end in " : 'what went wrong'" after the C++ function and source location.
        reason = str(exc).strip().splitlines()[-1].rpartition(" : ")[2].strip("'")
        raise ExpDiffInputError(path, f"cannot open as USD (corrupt, truncated or not USD: {reason})") from None
    if stage is None:
        raise ExpDiffInputError(path, "cannot open as USD")
    prim = _find_mesh_prim(path, stage, prim_path)
    usd_mesh = UsdGeom.Mesh(prim)
    where = f"mesh {prim.GetPath()}"
    time = Usd.TimeCode.EarliestTime()
    points = usd_mesh.GetPointsAttr().Get(time)
    counts = usd_mesh.GetFaceVertexCountsAttr().Get(time)
    indices = usd_mesh.GetFaceVertexIndicesAttr().Get(time)
    if points is None or len(points) == 0:
        raise ExpDiffInputError(path, f"{where} has no points")
    if counts is None or indices is None or len(counts) == 0:
        raise ExpDiffInputError(path, f"{where} has no faces")
    vertices = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(counts, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    world = np.asarray(UsdGeom.Imageable(prim).ComputeLocalToWorldTransform(time), dtype=np.float64)
    if not np.allclose(world, np.eye(4)):
        vertices = vertices @ world[:3, :3] + world[3, :3]  # USD matrices act on row vectors
    if UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z:
        vertices = np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=1)  # -90 deg about X
    units = _units_of(stage)
    if units is None:
        vertices = vertices * (UsdGeom.GetStageMetersPerUnit(stage) / METERS_PER_UNIT["cm"])
        units = "cm"
    if counts.sum() != len(indices):
        raise ExpDiffInputError(path, f"{where}: faceVertexCounts sum to {int(counts.sum())} but there are "
                                      f"{len(indices)} faceVertexIndices")
    uvs, face_uv_indices = _read_usd_st(path, usd_mesh, where, len(vertices), counts, indices, time)
    face_groups, group_names = _read_usd_groups(path, usd_mesh, where, len(counts))
    name = prim.GetName()
    mesh = FaceMesh(vertices, counts, indices, uvs, face_uv_indices, face_groups, group_names, units, name)
    return validate_mesh(mesh, path)


def _find_mesh_prim(path: Path, stage, prim_path: str | None):
    from pxr import Sdf, Usd, UsdGeom

    if prim_path is not None:
        prim = stage.GetPrimAtPath(Sdf.Path(prim_path)) if Sdf.Path.IsValidPathString(prim_path) else None
        if not prim or not prim.IsValid():
            raise ExpDiffInputError(path, f"no prim at {prim_path}")
        if not prim.IsA(UsdGeom.Mesh):
            raise ExpDiffInputError(path, f"prim {prim_path} is a {prim.GetTypeName() or 'typeless prim'}, "
                                          "not a UsdGeom.Mesh")
        return prim
    root = stage.GetDefaultPrim()
    if root and root.IsA(UsdGeom.Mesh):
        return root
    search = Usd.PrimRange(root) if root else stage.Traverse()
    meshes = [p for p in search if p.IsA(UsdGeom.Mesh)]
    if not meshes:
        raise ExpDiffInputError(path, "no UsdGeom.Mesh prim found")
    if len(meshes) > 1:
        listed = ", ".join(str(p.GetPath()) for p in meshes[:5]) + (" ..." if len(meshes) > 5 else "")
        raise ExpDiffInputError(path, f"{len(meshes)} meshes found ({listed}); say which one with prim_path")
    return meshes[0]


def _units_of(stage) -> str | None:
    from pxr import UsdGeom

    mpu = UsdGeom.GetStageMetersPerUnit(stage)
    return next((u for u, m in METERS_PER_UNIT.items() if abs(mpu - m) <= 1e-9 * m), None)


def _read_usd_st(path: Path, usd_mesh, where: str, n_vertices: int, counts: np.ndarray, indices: np.ndarray,
                 time) -> tuple[np.ndarray, np.ndarray]:
    from pxr import Sdf, UsdGeom

    api = UsdGeom.PrimvarsAPI(usd_mesh)
    primvar = api.GetPrimvar("st")
    if not primvar or not primvar.HasAuthoredValue():
        candidates = [p for p in api.GetPrimvarsWithAuthoredValues()
                      if p.GetTypeName() in (Sdf.ValueTypeNames.TexCoord2fArray, Sdf.ValueTypeNames.TexCoord2dArray,
                                             Sdf.ValueTypeNames.Float2Array)]
        if len(candidates) != 1:
            extra = f" ({len(candidates)} candidate primvars; name one 'st')" if candidates else ""
            raise ExpDiffInputError(path, f"{where} has no UVs (no primvars:st){extra}; ExpDiff needs a UV layout")
        primvar = candidates[0]
    values = np.asarray(primvar.Get(time), dtype=np.float32).reshape(-1, 2)
    uv_index = primvar.GetIndices(time) if primvar.IsIndexed() else None
    element = np.asarray(uv_index, dtype=np.int64) if uv_index is not None else np.arange(len(values))
    interp = primvar.GetInterpolation()
    name = primvar.GetPrimvarName()
    if interp == UsdGeom.Tokens.faceVarying:
        expected = len(indices)
        per_corner = element
    elif interp in (UsdGeom.Tokens.vertex, UsdGeom.Tokens.varying):
        expected = n_vertices
        per_corner = None
    else:
        raise ExpDiffInputError(path, f"{where}: primvars:{name} has {interp} interpolation; UVs must be "
                                      "vertex, varying or faceVarying")
    if len(element) != expected:
        raise ExpDiffInputError(path, f"{where}: primvars:{name} ({interp}) has {len(element)} elements, "
                                      f"expected {expected}")
    if len(element) and (element.min() < 0 or element.max() >= len(values)):
        raise ExpDiffInputError(path, f"{where}: primvars:{name} indices reach {int(element.max())} but there "
                                      f"are {len(values)} values")
    if per_corner is None:
        bad = (indices < 0) | (indices >= n_vertices)
        if bad.any():
            raise ExpDiffInputError(path, f"{where}: faceVertexIndices reach {int(indices[bad][0])} but there "
                                          f"are {n_vertices} points")
        per_corner = element[indices]
    return values, per_corner


def _read_usd_groups(path: Path, usd_mesh, where: str, n_faces: int) -> tuple[np.ndarray, list[str]]:
    from pxr import UsdGeom

    subsets = UsdGeom.Subset.GetGeomSubsets(usd_mesh, UsdGeom.Tokens.face, "materialBind")
    face_groups = np.full(n_faces, -1, np.int64)
    names: list[str] = []
    for subset in subsets:
        faces = np.asarray(subset.GetIndicesAttr().Get() or [], dtype=np.int64)
        if faces.size and (faces.min() < 0 or faces.max() >= n_faces):
            raise ExpDiffInputError(path, f"{where}: subset {subset.GetPath().name} lists face "
                                          f"{int(faces.max())} but the mesh has {n_faces} faces")
        prim = subset.GetPrim()
        names.append(prim.GetDisplayName() or prim.GetName())
        free = faces[face_groups[faces] < 0]  # first subset wins where a non-partition family overlaps
        face_groups[free] = len(names) - 1
    if (face_groups < 0).any():
        names.append("default")
        face_groups[face_groups < 0] = len(names) - 1
    return face_groups, names


# ------------------------------------------------------------------ dispatch
def read_mesh(path: str | os.PathLike, *, units: str | None = None, prim_path: str | None = None) -> FaceMesh:
    """Read a mesh by suffix: .obj, .ply, .usd/.usda/.usdc. The result has passed ``validate_mesh``.

    units: for OBJ/PLY, which carry none (default: OBJ's ExpDiff header, else cm); USD uses its metersPerUnit.
    prim_path: USD only, which mesh prim to read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return read_obj(path, units=units)
    if suffix == ".ply":
        return read_ply(path, units=units or "cm")
    if suffix in USD_SUFFIXES:
        return read_usd_mesh(path, prim_path=prim_path)
    raise ExpDiffInputError(path, f"unknown mesh format {path.suffix!r}; use one of {list(MESH_SUFFIXES)}")


def write_mesh(mesh: FaceMesh, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write a mesh by suffix: .obj, or .usd/.usda/.usdc. Atomic; overwrite=False refuses to replace a file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return write_obj(mesh, path, overwrite=overwrite)
    if suffix in USD_SUFFIXES:
        return write_usd_mesh(mesh, path, overwrite=overwrite)
    raise ExpDiffInputError(path, f"cannot write meshes as {path.suffix!r}; use .obj, .usd, .usda or .usdc")
