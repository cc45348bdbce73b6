"""FaceMesh: a polygon mesh with per-corner UVs and material groups, and its OBJ reader/writer.

Topology is stored the USD way (``face_vertex_counts`` + flat ``face_vertex_indices``) so quads, triangles and
n-gons round-trip exactly; UVs are indexed per face corner (``face_uv_indices``) so vertices on UV seams keep
several UVs while the vertex order of the file is kept exactly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExpDiffInputError
from ..fileio import atomic_path


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


# ---------------------------------------------------------------------- OBJ
def read_obj(path: str | os.PathLike, units: str = "cm") -> FaceMesh:
    """Read a Wavefront OBJ keeping the file's vertex order, per-corner UVs and ``usemtl`` groups.

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
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line[0] == "#":
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
    if not np.isfinite(v).all():
        bad = int(np.flatnonzero(~np.isfinite(v).all(axis=1))[0])
        raise ExpDiffInputError(path, f"vertex {bad} has a NaN or infinite coordinate")
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
    return FaceMesh(v, np.asarray(counts), fv_a, t, ft_a, np.asarray(groups), group_names, units, path.stem)


def write_obj(mesh: FaceMesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` as OBJ (positions, UVs, ``usemtl`` groups), atomically. Round-trips exactly."""
    path = Path(path)
    lines = [f"# ExpDiff FaceMesh {mesh.name} units={mesh.units}"]
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
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
