"""Template check: does a mesh share the model's template topology (vertex order, faces, UV layout)?

The model only works on meshes registered to its template, so ingest compares every input with the
template's ``TemplateSignature`` (small enough to live in a model's config) and refuses a mismatch with a
message that says what differs. Hashes are exact: connectivity is integer data, and the UV layout is hashed
from the per-corner UV values as float32 (independent of how the file indexes its UVs, so the same layout
read from OBJ, PLY or USD hashes the same). Per-block digests (``block_size`` faces each) locate the first
differing faces without storing the template. Given the template FaceMesh instead, ``check_template``
names the exact face and compares UVs within a tolerance, for meshes re-exported by tools that round UVs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ExpDiffInputError, TemplateMismatchError
from .mesh import FaceMesh
from .udim import format_udims

SIGNATURE_FORMAT = "expdiff.template_signature.v1"
DEFAULT_BLOCK_SIZE = 256
# Half a texel at 4K (1 / 4096 / 2 ~ 1.2e-4 tile units): re-exported UVs that round to 6 significant
# digits move by < 1e-5, while a moved UV island moves by far more than a texel.
DEFAULT_UV_TOLERANCE = 1.2e-4


@dataclass(frozen=True)
class TemplateSignature:
    """What identifies a template topology.

    n_vertices, n_faces: counts. connectivity_hash: sha256 of face corner counts + vertex indices.
    uv_layout_hash: sha256 of the per-corner UVs (float32). udims: sorted UDIM tiles used.
    block_size: faces per block; connectivity_blocks / uv_layout_blocks: 16-hex-digit digests per block.
    """

    n_vertices: int
    n_faces: int
    connectivity_hash: str
    uv_layout_hash: str
    udims: tuple[int, ...]
    block_size: int = DEFAULT_BLOCK_SIZE
    connectivity_blocks: tuple[str, ...] = ()
    uv_layout_blocks: tuple[str, ...] = ()

    def to_json(self) -> str:
        """JSON text (one object, keys sorted) that ``from_json`` reads back."""
        return json.dumps({"format": SIGNATURE_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike | None = None) -> "TemplateSignature":
        """Parse ``to_json`` output; ``source`` names where the text came from in error messages."""
        try:
            data = json.loads(text)
            if data.pop("format", None) != SIGNATURE_FORMAT:
                raise ValueError(f"not a {SIGNATURE_FORMAT} object")
            return cls(
                n_vertices=int(data["n_vertices"]), n_faces=int(data["n_faces"]),
                connectivity_hash=str(data["connectivity_hash"]), uv_layout_hash=str(data["uv_layout_hash"]),
                udims=tuple(int(t) for t in data["udims"]), block_size=int(data["block_size"]),
                connectivity_blocks=tuple(str(b) for b in data["connectivity_blocks"]),
                uv_layout_blocks=tuple(str(b) for b in data["uv_layout_blocks"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ExpDiffInputError(source, f"not a valid template signature ({exc})") from None


def template_signature(mesh: FaceMesh, block_size: int = DEFAULT_BLOCK_SIZE) -> TemplateSignature:
    """The TemplateSignature of ``mesh`` (positions do not enter it; only counts, faces and UV layout)."""
    connectivity, uv_layout = _hash_inputs(mesh)
    return TemplateSignature(
        n_vertices=mesh.n_vertices,
        n_faces=mesh.n_faces,
        connectivity_hash=connectivity.digest(),
        uv_layout_hash=uv_layout.digest(),
        udims=tuple(mesh.udims),
        block_size=block_size,
        connectivity_blocks=connectivity.block_digests(block_size),
        uv_layout_blocks=uv_layout.block_digests(block_size),
    )


def check_template(mesh: FaceMesh, template: TemplateSignature | FaceMesh, path: str | os.PathLike | None = None,
                   *, uv_tolerance: float = DEFAULT_UV_TOLERANCE) -> None:
    """Raise TemplateMismatchError (naming ``path``) listing every way ``mesh`` differs from the template.

    template: a TemplateSignature (exact hash comparison, first differing block of faces), or the template
    FaceMesh itself (exact face comparison naming the first differing face; UVs equal within
    ``uv_tolerance`` tile units).
    """
    if isinstance(template, FaceMesh):
        problems = _compare_meshes(mesh, template, uv_tolerance)
    else:
        problems = _compare_signature(mesh, template)
    if problems:
        raise TemplateMismatchError(path, "does not match the model's template: " + "; ".join(problems))


# ---------------------------------------------------------------- internals
class _HashInput:
    """Per-corner data to hash, sliceable by face: counts (F,) <i4, per_corner (N, k), bounds (F+1,)."""

    def __init__(self, mesh: FaceMesh, per_corner: np.ndarray):
        self.counts = mesh.face_vertex_counts.astype("<i4")
        self.per_corner = np.ascontiguousarray(per_corner)
        self.bounds = np.append(mesh.face_offsets, per_corner.shape[0])

    def digest(self, start: int = 0, stop: int | None = None) -> str:
        stop = len(self.counts) if stop is None else stop
        h = hashlib.sha256()
        h.update(self.counts[start:stop].tobytes())
        h.update(self.per_corner[self.bounds[start]:self.bounds[stop]].tobytes())
        return h.hexdigest()

    def block_digests(self, block_size: int) -> tuple[str, ...]:
        n = len(self.counts)
        return tuple(self.digest(s, min(s + block_size, n))[:16] for s in range(0, n, block_size))


def _hash_inputs(mesh: FaceMesh) -> tuple[_HashInput, _HashInput]:
    """(connectivity, UV layout) hash inputs of ``mesh``."""
    connectivity = _HashInput(mesh, mesh.face_vertex_indices.astype("<i4"))
    # +0.0 turns -0.0 into 0.0 so the two spellings of zero hash alike.
    uv_layout = _HashInput(mesh, mesh.uvs[mesh.face_uv_indices].astype("<f4") + np.float32(0.0))
    return connectivity, uv_layout


def _first_differing_block(mine: tuple[str, ...], theirs: tuple[str, ...]) -> int | None:
    for b, (x, y) in enumerate(zip(mine, theirs)):
        if x != y:
            return b
    return None if len(mine) == len(theirs) else min(len(mine), len(theirs))


def _block_range(block: int, block_size: int, n_faces: int) -> str:
    start = block * block_size
    stop = max(start, min(start + block_size, n_faces) - 1)
    return f"{start}–{stop}"


def _compare_signature(mesh: FaceMesh, sig: TemplateSignature) -> list[str]:
    problems = _count_problems(mesh, sig.n_vertices, sig.n_faces)
    connectivity, uv_layout = _hash_inputs(mesh)
    if connectivity.digest() != sig.connectivity_hash:
        where = ""
        if sig.connectivity_blocks:
            b = _first_differing_block(connectivity.block_digests(sig.block_size), sig.connectivity_blocks)
            if b is not None:
                where = f" (first difference in faces {_block_range(b, sig.block_size, mesh.n_faces)})"
        problems.append(f"face connectivity differs from the template{where}")
    elif uv_layout.digest() != sig.uv_layout_hash:
        where = ""
        if sig.uv_layout_blocks:
            b = _first_differing_block(uv_layout.block_digests(sig.block_size), sig.uv_layout_blocks)
            if b is not None:
                where = f" (first difference in the UVs of faces {_block_range(b, sig.block_size, mesh.n_faces)})"
        problems.append(f"UV layout differs from the template{where}")
    if tuple(mesh.udims) != tuple(sig.udims):
        problems.append(f"uses UDIM tiles {format_udims(mesh.udims)}, template uses {format_udims(sig.udims)}")
    return problems


def _compare_meshes(mesh: FaceMesh, template: FaceMesh, uv_tolerance: float) -> list[str]:
    problems = _count_problems(mesh, template.n_vertices, template.n_faces)
    n = min(mesh.n_faces, template.n_faces)
    same_counts = mesh.face_vertex_counts[:n] == template.face_vertex_counts[:n]
    first_face = None if same_counts.all() else int(np.flatnonzero(~same_counts)[0])
    # Corners can only be compared index for index up to the first face whose corner count differs.
    n_faces_aligned = n if first_face is None else first_face
    n_corners = int(template.face_vertex_counts[:n_faces_aligned].sum(dtype=np.int64))
    corner_face = np.repeat(np.arange(n_faces_aligned), template.face_vertex_counts[:n_faces_aligned])
    differ = mesh.face_vertex_indices[:n_corners] != template.face_vertex_indices[:n_corners]
    if differ.any():
        first_face = int(corner_face[np.flatnonzero(differ)[0]])
    elif first_face is None and mesh.n_faces != template.n_faces:
        first_face = n
    if first_face is not None:
        problems.append(f"face connectivity differs from the template (first differing face {first_face})")
        return problems
    uv_mine = mesh.uvs[mesh.face_uv_indices].astype(np.float64)
    uv_tmpl = template.uvs[template.face_uv_indices].astype(np.float64)
    deviation = np.abs(uv_mine - uv_tmpl).max(axis=1)
    if (deviation > uv_tolerance).any():
        corner = int(np.flatnonzero(deviation > uv_tolerance)[0])
        problems.append(f"UV layout differs from the template (first at face {int(corner_face[corner])}: "
                        f"({uv_mine[corner, 0]:.6g}, {uv_mine[corner, 1]:.6g}) vs "
                        f"({uv_tmpl[corner, 0]:.6g}, {uv_tmpl[corner, 1]:.6g}), "
                        f"max deviation {deviation.max():.3g} > tolerance {uv_tolerance:.3g})")
    return problems


def _count_problems(mesh: FaceMesh, n_vertices: int, n_faces: int) -> list[str]:
    problems = []
    if mesh.n_vertices != n_vertices:
        problems.append(f"has {mesh.n_vertices:,} vertices, template has {n_vertices:,}")
    if mesh.n_faces != n_faces:
        problems.append(f"has {mesh.n_faces:,} faces, template has {n_faces:,}")
    return problems
