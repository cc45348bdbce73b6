"""Write a character's expressions as a versioned USD asset: blendshapes, UDIM BRDF materials, provenance.

Layout of one published version (ASWF asset structure: an entry layer, a payload holding the heavy layers,
``geo`` and ``mtl`` scopes under one component root)::

    <output_root>/<character>/v###/
        <character>.usda     entry: root Xform (kind component, assetInfo, provenance) with a payload
        payload.usda         sublayers mtl + geo
        geo.usdc             /<character>/geo/skel: SkelRoot > Skeleton, SkelAnimation, Mesh > BlendShapes
        mtl.usda             /<character>/mtl/skin: UsdPreviewSurface, variant set ``expression``
        textures/<expression>/<kind>.<UDIM>.exr
        shapes.usdc          (optional) every expression as a full Mesh, for tools that want shapes

Every version is built in a temp folder and renamed into place; a published version is never rewritten.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import ExpDiffEnvironmentError, ExpDiffInputError, PublishError
from ..fileio import atomic_dir, diagnose_write_failure, environment_error, is_unhealable
from ..io.mesh import METERS_PER_UNIT, FaceMesh, validate_mesh
from ..io.textures import write_texture_set
from ..io.udim import UDIM_FIRST, UDIM_LAST
from .schema import FacsInfo, Provenance, apply_facs_api, apply_provenance_api, facs_info_for

MAP_KINDS = ("albedo", "specular", "roughness", "normal")
MAP_CHANNELS = {"albedo": (3,), "specular": (1, 3), "roughness": (1, 3), "normal": (3,)}
NEUTRAL = "neutral"
VERSION_RE = re.compile(r"^v(\d{3,})$")

GEO_LAYER = "geo.usdc"
MTL_LAYER = "mtl.usda"
PAYLOAD_LAYER = "payload.usda"
SHAPES_LAYER = "shapes.usdc"
TEXTURE_DIR = "textures"

# Where each map kind plugs into UsdPreviewSurface, and through which UsdUVTexture output.
SURFACE_INPUTS = {
    "albedo": ("diffuseColor", "rgb"),
    "specular": ("specularColor", "rgb"),
    "roughness": ("roughness", "r"),
    "normal": ("normal", "rgb"),
}
TEXTURE_FORMATS = {"exr": "half", "png": "uint8"}


@dataclass(frozen=True)
class ExportOptions:
    """How an asset is written.

    fps: frames per second of the preview animation; frames_per_expression: frames each expression's
    0 -> 1 -> 0 ramp takes (even, >= 2); start_frame: first frame (Maya's default is 1).
    texture_format: ``"exr"`` (half float, linear albedo) or ``"png"`` (8-bit, sRGB-encoded albedo).
    up_axis: ``"Y"`` or ``"Z"``, the stage's up axis (OBJ and ICT-FaceKit heads are Y-up).
    textured_groups: material groups (``FaceMesh.group_names``) the ExpDiff material is bound to; None binds
    it to the whole mesh. Give the skin groups when the mesh also holds eyes, teeth or lashes.
    static_tolerance: a vertex moves in a blendshape when its offset exceeds this (mesh units);
    None = 1e-7 x the neutral's bounding-box diagonal, far below what a deformer or a render can show.
    write_shapes: also write ``shapes.usdc`` with every expression as a full mesh.
    """

    fps: float = 24.0
    frames_per_expression: int = 12
    start_frame: float = 1.0
    texture_format: str = "exr"
    up_axis: str = "Y"
    textured_groups: tuple[str, ...] | None = None
    static_tolerance: float | None = None
    write_shapes: bool = False


@dataclass(frozen=True)
class PublishedAsset:
    """One published version: its folder, entry layer, version number and blendshape names in order."""

    version_dir: Path
    root_layer: Path
    version: int
    blendshapes: tuple[str, ...] = field(default_factory=tuple)


# -------------------------------------------------------------------- public entry points
def next_version(character_dir: str | os.PathLike) -> int:
    """The version number after the highest ``v###`` folder (or temp build of one) under ``character_dir``."""
    character_dir = Path(character_dir)
    taken = [0]
    if character_dir.is_dir():
        for entry in character_dir.iterdir():
            match = VERSION_RE.match(entry.name)
            if match:
                taken.append(int(match.group(1)))
    return max(taken) + 1


def publish_character(
    output_root: str | os.PathLike,
    character: str,
    neutral: FaceMesh,
    expression_vertices: Mapping[str, np.ndarray],
    maps: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]],
    provenance: Provenance,
    options: ExportOptions = ExportOptions(),
    facs_lookup: Callable[[str], Any] | None = None,
) -> PublishedAsset:
    """Publish a new version ``<output_root>/<character>/v###/`` of a character's expression asset.

    neutral: the user's neutral mesh; its vertices are the rest shape.
    expression_vertices: expression name -> (V, 3) float32 recovered vertices; one BlendShape each, in this
    order (a ``"neutral"`` entry, if present, is the rest shape and gets no BlendShape).
    maps: expression name -> kind (albedo / specular / roughness / normal) -> UDIM tile -> (C, H, W) float32
    in [0, 1]; must hold ``"neutral"`` and every expression, each with the same kinds and tiles.
    provenance: authored on the root prim through ``ExpDiffProvenanceAPI``.
    facs_lookup: name -> unit with action_units/side/region/prompt (default ``expdiff_core.facs.unit``).

    The version is the next free number; it is built in a temp folder and renamed into place, so a failed
    export leaves nothing under a ``v###`` name and an existing version is never overwritten.
    Raises ExpDiffInputError for inconsistent inputs (before anything is written).
    """
    shapes = _checked_expressions(neutral, expression_vertices)
    _check_character(character)
    _check_options(options, neutral)
    _check_maps(maps, shapes)
    facs = {name: facs_info_for(name, facs_lookup) for name in shapes}
    character_dir = Path(output_root) / character
    version = next_version(character_dir)
    target = character_dir / f"v{version:03d}"
    from pxr import Tf

    try:
        with atomic_dir(target) as tmp:
            write_asset(tmp, character, neutral, shapes, maps, provenance, facs, options, version=version)
    except Tf.ErrorException as exc:  # USD reports a failed write (e.g. a full disk) as a pile of errors
        raise _write_failure(target, exc) from None
    except OSError as exc:
        if target.exists():
            raise PublishError(f"{target}: another export published this version first; nothing was "
                               f"overwritten, run the export again to take the next version") from exc
        if is_unhealable(exc):
            raise environment_error(exc, exc.filename or target) from None
        raise
    return PublishedAsset(target, target / f"{character}.usda", version, tuple(_prim_names(shapes)))


def write_asset(
    folder: str | os.PathLike,
    character: str,
    neutral: FaceMesh,
    shapes: Mapping[str, np.ndarray],
    maps: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]],
    provenance: Provenance,
    facs: Mapping[str, FacsInfo],
    options: ExportOptions = ExportOptions(),
    version: int = 1,
) -> Path:
    """Write every file of one asset version into ``folder`` (empty); returns the entry layer's path.

    Lower level than ``publish_character``: no versioning or atomic rename. ``shapes`` excludes neutral.
    """
    from pxr import Sdf, Usd, UsdGeom

    folder = Path(folder)
    _check_options(options, neutral)
    names = _prim_names(shapes)
    n_frames = options.frames_per_expression * max(len(names), 1)
    time_range = (options.start_frame, options.start_frame + n_frames)

    texture_paths = _write_textures(folder, maps, options)
    _write_geo_layer(folder / GEO_LAYER, character, neutral, shapes, names, facs, options, time_range)
    _write_mtl_layer(folder / MTL_LAYER, character, neutral.units, texture_paths, options)

    payload = _new_stage(folder / PAYLOAD_LAYER, character, neutral.units, options, time_range)
    payload.GetRootLayer().subLayerPaths = [f"./{MTL_LAYER}", f"./{GEO_LAYER}"]
    payload.GetRootLayer().Save()

    root_path = folder / f"{character}.usda"
    stage = _new_stage(root_path, character, neutral.units, options, time_range)
    root = UsdGeom.Xform.Define(stage, f"/{character}").GetPrim()
    stage.SetDefaultPrim(root)
    model = Usd.ModelAPI(root)
    model.SetKind("component")
    model.SetAssetName(character)
    model.SetAssetVersion(f"v{version:03d}")
    model.SetAssetIdentifier(Sdf.AssetPath(f"./{character}.usda"))
    root.GetPayloads().AddPayload(f"./{PAYLOAD_LAYER}")
    apply_provenance_api(root, provenance)
    stage.GetRootLayer().documentation = (
        f"ExpDiff expression asset '{character}' v{version:03d}: {len(names)} blendshapes with UDIM BRDF "
        "materials; material variant set 'expression' switches the maps.")
    stage.GetRootLayer().Save()

    if options.write_shapes:
        _write_shapes_layer(folder / SHAPES_LAYER, character, neutral, shapes, names, options)
    return root_path


# ------------------------------------------------------------------------ geometry helpers
def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) unit vertex normals, area-weighted over (T, 3) int triangles; (0, 0, 0) for unused vertices."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    face_n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # length = 2 x area: the weight
    normals = np.zeros_like(v)
    for corner in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(t[:, corner], weights=face_n[:, axis], minlength=len(v))
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0).astype(np.float32)


def sparse_offsets(offsets: np.ndarray, normal_offsets: np.ndarray, tolerance: float,
                   normal_tolerance: float = 1e-5) -> np.ndarray:
    """Sorted int32 indices of the vertices whose (V, 3) offset or normal offset exceeds its tolerance.

    Never empty: a shape that moves nothing keeps vertex 0 (with a zero offset), because an empty
    ``pointIndices`` array would read as "no sparse indices" and make the offsets dense.
    """
    moving = (np.abs(offsets).max(axis=1) > tolerance) | (np.abs(normal_offsets).max(axis=1) > normal_tolerance)
    indices = np.flatnonzero(moving).astype(np.int32)
    return indices if indices.size else np.zeros(1, dtype=np.int32)


def preview_weights(n_shapes: int, frames_per_expression: int, start_frame: float) -> dict[float, np.ndarray]:
    """Time code -> (n_shapes,) float32 weights of the preview animation: each shape ramps 0 -> 1 -> 0 in turn.

    Shape k is 1 (and all others 0) at ``start + k * F + F / 2``; every shape is 0 at ``start + k * F``.
    """
    samples: dict[float, np.ndarray] = {}
    f = frames_per_expression
    for k in range(n_shapes + 1):
        samples[float(start_frame + k * f)] = np.zeros(n_shapes, dtype=np.float32)
    for k in range(n_shapes):
        one_hot = np.zeros(n_shapes, dtype=np.float32)
        one_hot[k] = 1.0
        samples[float(start_frame + k * f + f / 2)] = one_hot
    return dict(sorted(samples.items()))


def _write_failure(target: Path, exc: BaseException) -> Exception:
    """One error for a failed USD write into ``target``: the environment's cause when there is one (no
    space left, read-only, no permission), else the first reason USD gave."""
    from .validate import _usd_error_text

    text = _usd_error_text(exc)
    cause = diagnose_write_failure(target, message=text)
    if cause is not None:
        return ExpDiffEnvironmentError(target, f"cannot write the USD asset: {cause.problem}", cause.errno)
    return PublishError(f"{target}: cannot write the USD asset: {text.split('; ')[0]}")


# --------------------------------------------------------------------------- validation
def _check_character(character: str) -> None:
    from pxr import Tf

    if not Tf.IsValidIdentifier(character):
        raise ExpDiffInputError(None, f"character name {character!r} is not a valid USD prim name "
                                "(letters, digits and '_', not starting with a digit)")


def _check_options(options: ExportOptions, neutral: FaceMesh) -> None:
    if options.textured_groups is not None:
        unknown = sorted(set(options.textured_groups) - set(neutral.group_names))
        if unknown:
            raise ExpDiffInputError(None, f"textured_groups {unknown} are not material groups of the mesh "
                                    f"(groups: {neutral.group_names})")
    if options.texture_format not in TEXTURE_FORMATS:
        raise ExpDiffInputError(None, f"texture_format {options.texture_format!r}: use one of {list(TEXTURE_FORMATS)}")
    if options.up_axis not in ("Y", "Z"):
        raise ExpDiffInputError(None, f"up_axis {options.up_axis!r}: use 'Y' or 'Z'")
    f = options.frames_per_expression
    if f < 2 or f % 2:
        raise ExpDiffInputError(None, f"frames_per_expression must be even and >= 2, got {f}")
    if options.fps <= 0:
        raise ExpDiffInputError(None, f"fps must be positive, got {options.fps}")


def _checked_expressions(neutral: FaceMesh, expression_vertices: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    validate_mesh(neutral)
    shapes: dict[str, np.ndarray] = {}
    for name, verts in expression_vertices.items():
        if name == NEUTRAL:
            continue
        verts = np.asarray(verts, dtype=np.float32)
        if verts.shape != neutral.vertices.shape:
            raise ExpDiffInputError(None, f"expression {name!r}: vertices shape {verts.shape} != neutral "
                                    f"{neutral.vertices.shape}")
        if not np.isfinite(verts).all():
            raise ExpDiffInputError(None, f"expression {name!r}: vertices hold NaN or infinite values")
        shapes[name] = verts
    if not shapes:
        raise ExpDiffInputError(None, "no expressions to export (only 'neutral' or nothing was given)")
    _prim_names(shapes)
    return shapes


def _prim_names(shapes: Mapping[str, Any]) -> list[str]:
    """Valid, unique prim names for the expressions, in order (``"jawOpen"`` stays ``"jawOpen"``)."""
    from pxr import Tf

    names = [Tf.MakeValidIdentifier(n) for n in shapes]
    seen: dict[str, str] = {}
    for original, name in zip(shapes, names):
        if name == NEUTRAL or name in seen:
            other = seen.get(name, NEUTRAL)
            raise ExpDiffInputError(None, f"expressions {other!r} and {original!r} both become prim name {name!r}")
        seen[name] = original
    return names


def _check_maps(maps: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]], shapes: Mapping[str, Any]) -> None:
    expected = {NEUTRAL, *shapes}
    missing, extra = sorted(expected - set(maps)), sorted(set(maps) - expected)
    if missing or extra:
        raise ExpDiffInputError(None, f"maps must cover neutral and every expression: missing {missing}, "
                                f"unexpected {extra}")
    reference = maps[NEUTRAL]
    if not reference:
        raise ExpDiffInputError(None, "maps['neutral'] holds no map kinds")
    unknown = sorted(set(reference) - set(MAP_KINDS))
    if unknown:
        raise ExpDiffInputError(None, f"unknown map kind(s) {unknown}; known: {list(MAP_KINDS)}")
    for expr, kinds in maps.items():
        if set(kinds) != set(reference):
            raise ExpDiffInputError(None, f"maps[{expr!r}] has kinds {sorted(kinds)}, neutral has {sorted(reference)}")
        for kind, tiles in kinds.items():
            if set(tiles) != set(reference[kind]):
                raise ExpDiffInputError(None, f"maps[{expr!r}][{kind!r}] has tiles {sorted(tiles)}, neutral has "
                                        f"{sorted(reference[kind])}")
            for udim, image in tiles.items():
                where = f"maps[{expr!r}][{kind!r}][{udim}]"
                if not UDIM_FIRST <= int(udim) <= UDIM_LAST:
                    raise ExpDiffInputError(None, f"{where}: UDIM tile outside {UDIM_FIRST}..{UDIM_LAST}")
                shape = np.shape(image)
                if len(shape) != 3 or shape[0] not in MAP_CHANNELS[kind] or min(shape[1:]) < 1:
                    raise ExpDiffInputError(None, f"{where}: expected (C, H, W) with C in {MAP_CHANNELS[kind]}, "
                                            f"got shape {shape}")
                if not np.isfinite(image).all():
                    raise ExpDiffInputError(None, f"{where}: map holds NaN or infinite values")


# ----------------------------------------------------------------------------- textures
def texture_file_name(kind: str, udim: int | str, texture_format: str) -> str:
    """``albedo.1001.exr``, or with ``udim="<UDIM>"`` the pattern USD references."""
    return f"{kind}.{udim}.{texture_format}"


def _write_textures(folder: Path, maps, options: ExportOptions) -> dict[str, dict[str, str]]:
    """Write every tile; returns expression prim name -> kind -> ``./textures/<expr>/<kind>.<UDIM>.<ext>``."""
    from pxr import Tf

    ext = options.texture_format
    paths: dict[str, dict[str, str]] = {}
    order = [NEUTRAL] + [e for e in maps if e != NEUTRAL]
    for expr in tqdm(order, desc="USD textures", unit="expression", leave=False):
        name = Tf.MakeValidIdentifier(expr)
        paths[name] = {}
        for kind in MAP_KINDS:
            if kind not in maps[expr]:
                continue
            tiles = {}
            for udim, image in maps[expr][kind].items():
                image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
                if kind == "roughness" and image.shape[0] > 1:
                    image = image.mean(axis=0, keepdims=True)  # replicated for the VAE; one channel is the map
                if kind == "specular" and image.shape[0] == 1:
                    image = np.repeat(image, 3, axis=0)  # specularColor is a colour: keep DCCs from guessing
                tiles[int(udim)] = image
            write_texture_set(tiles, folder / TEXTURE_DIR / name, kind, ext=ext,
                              pixel_type=TEXTURE_FORMATS[ext], overwrite=False)
            paths[name][kind] = f"./{TEXTURE_DIR}/{name}/{texture_file_name(kind, '<UDIM>', ext)}"
    return paths


# -------------------------------------------------------------------------------- layers
def _new_stage(path: Path, character: str, units: str, options: ExportOptions, time_range):
    """A new stage with the metadata every layer of the asset carries (so each layer also opens alone)."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y if options.up_axis == "Y" else UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, METERS_PER_UNIT[units])
    if time_range is not None:
        stage.SetStartTimeCode(time_range[0])
        stage.SetEndTimeCode(time_range[1])
        stage.SetTimeCodesPerSecond(options.fps)
        stage.SetFramesPerSecond(options.fps)
    stage.GetRootLayer().defaultPrim = character
    return stage


def _write_geo_layer(path: Path, character: str, neutral: FaceMesh, shapes: Mapping[str, np.ndarray],
                     names: Sequence[str], facs: Mapping[str, FacsInfo], options: ExportOptions, time_range) -> None:
    from pxr import Gf, Sdf, UsdGeom, UsdSkel, Vt

    stage = _new_stage(path, character, neutral.units, options, time_range)
    UsdGeom.Xform.Define(stage, f"/{character}")
    UsdGeom.Scope.Define(stage, f"/{character}/geo")
    skel_root = UsdSkel.Root.Define(stage, f"/{character}/geo/skel")
    skeleton = UsdSkel.Skeleton.Define(stage, skel_root.GetPath().AppendChild("skeleton"))
    anim = UsdSkel.Animation.Define(stage, skel_root.GetPath().AppendChild("preview"))
    mesh = UsdGeom.Mesh.Define(stage, skel_root.GetPath().AppendChild("face"))

    identity = Gf.Matrix4d(1.0)
    skeleton.CreateJointsAttr(["root"])
    skeleton.CreateJointNamesAttr(["root"])
    skeleton.CreateBindTransformsAttr(Vt.Matrix4dArray([identity]))
    skeleton.CreateRestTransformsAttr(Vt.Matrix4dArray([identity]))
    UsdSkel.BindingAPI.Apply(skeleton.GetPrim()).CreateAnimationSourceRel().SetTargets([anim.GetPath()])

    anim.CreateJointsAttr(["root"])
    anim.CreateTranslationsAttr(Vt.Vec3fArray([Gf.Vec3f(0.0)]))
    anim.CreateRotationsAttr(Vt.QuatfArray([Gf.Quatf(1.0)]))
    anim.CreateScalesAttr(Vt.Vec3hArray([Gf.Vec3h(1.0)]))
    anim.CreateBlendShapesAttr(list(names))
    weights_attr = anim.CreateBlendShapeWeightsAttr()
    for time, weights in preview_weights(len(names), options.frames_per_expression, options.start_frame).items():
        weights_attr.Set(Vt.FloatArray.FromNumpy(weights), time)

    rest = neutral.vertices
    triangles = neutral.triangulated().faces
    rest_normals = vertex_normals(rest, triangles)
    mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(rest))
    mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(rest_normals))
    mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(neutral.face_vertex_counts))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(neutral.face_vertex_indices))
    # Authored normals are what normalOffsets deform; subdivision would discard both.
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*rest.min(axis=0).tolist()), Gf.Vec3f(*rest.max(axis=0).tolist())]))
    st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                  UsdGeom.Tokens.faceVarying)
    st.Set(Vt.Vec2fArray.FromNumpy(neutral.uvs))
    st.SetIndices(Vt.IntArray.FromNumpy(neutral.face_uv_indices))

    binding = UsdSkel.BindingAPI.Apply(mesh.GetPrim())
    binding.CreateSkeletonRel().SetTargets([skeleton.GetPath()])
    binding.CreateJointIndicesPrimvar(constant=True, elementSize=1).Set(Vt.IntArray([0]))
    binding.CreateJointWeightsPrimvar(constant=True, elementSize=1).Set(Vt.FloatArray([1.0]))
    binding.CreateGeomBindTransformAttr(identity)

    tolerance = options.static_tolerance
    if tolerance is None:
        tolerance = 1e-7 * float(np.linalg.norm(rest.max(axis=0) - rest.min(axis=0)))
    targets = []
    for (expr, verts), name in tqdm(list(zip(shapes.items(), names)), desc="USD blendshapes",
                                    unit="shape", leave=False):
        offsets = verts - rest
        normal_offsets = vertex_normals(verts, triangles) - rest_normals
        indices = sparse_offsets(offsets, normal_offsets, tolerance)
        shape = UsdSkel.BlendShape.Define(stage, mesh.GetPath().AppendChild(name))
        shape.CreateOffsetsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(offsets[indices])))
        shape.CreateNormalOffsetsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(normal_offsets[indices])))
        if indices.size < len(rest):
            shape.CreatePointIndicesAttr(Vt.IntArray.FromNumpy(indices))
        apply_facs_api(shape.GetPrim(), facs[expr])
        targets.append(shape.GetPath())
    binding.CreateBlendShapesAttr(list(names))
    binding.CreateBlendShapeTargetsRel().SetTargets(targets)

    material_path = Sdf.Path(f"/{character}/mtl/skin")
    _bind_material(stage, mesh, neutral, material_path, options.textured_groups)
    stage.GetRootLayer().Save()


def _bind_material(stage, mesh, neutral: FaceMesh, material_path, textured_groups) -> None:
    """Bind the skin material to the mesh, or (with ``textured_groups``) to those groups' GeomSubsets.

    A mesh with several material groups gets one ``materialBind`` subset per group either way, so DCCs keep
    the groups as shading groups; together they partition the faces.
    """
    from pxr import Tf, UsdGeom, UsdShade, Vt

    groups = [(g, np.flatnonzero(neutral.face_groups == i)) for i, g in enumerate(neutral.group_names)]
    groups = [(g, faces) for g, faces in groups if faces.size]

    def bind(prim) -> None:
        # The material lives in the mtl layer: target its path rather than author an over for it here.
        UsdShade.MaterialBindingAPI.Apply(prim)
        prim.CreateRelationship(UsdShade.Tokens.materialBinding, False).SetTargets([material_path])

    if len(groups) > 1:
        used: set[str] = set()
        for group, faces in groups:
            name = Tf.MakeValidIdentifier(group)
            while name in used:
                name += "_"
            used.add(name)
            subset = UsdGeom.Subset.CreateGeomSubset(mesh, name, UsdGeom.Tokens.face,
                                                     Vt.IntArray.FromNumpy(faces.astype(np.int32)),
                                                     UsdShade.Tokens.materialBind, UsdGeom.Tokens.partition)
            if textured_groups is None or group in textured_groups:
                bind(subset.GetPrim())
        return
    bind(mesh.GetPrim())


def _write_mtl_layer(path: Path, character: str, units: str, texture_paths: Mapping[str, Mapping[str, str]],
                     options: ExportOptions) -> None:
    from pxr import Gf, Sdf, UsdGeom, UsdShade

    stage = _new_stage(path, character, units, options, None)
    UsdGeom.Xform.Define(stage, f"/{character}")
    UsdGeom.Scope.Define(stage, f"/{character}/mtl")
    material = UsdShade.Material.Define(stage, f"/{character}/mtl/skin")
    surface = UsdShade.Shader.Define(stage, material.GetPath().AppendChild("previewSurface"))
    surface.CreateIdAttr("UsdPreviewSurface")
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")

    reader = UsdShade.Shader.Define(stage, material.GetPath().AppendChild("stReader"))
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)

    kinds = [k for k in MAP_KINDS if k in texture_paths[NEUTRAL]]
    file_inputs = {}
    for kind in kinds:
        surface_input, output = SURFACE_INPUTS[kind]
        tex = UsdShade.Shader.Define(stage, material.GetPath().AppendChild(f"{kind}Texture"))
        tex.CreateIdAttr("UsdUVTexture")
        file_inputs[kind] = tex.CreateInput("file", Sdf.ValueTypeNames.Asset)
        tex.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
        color_space = "sRGB" if kind == "albedo" and options.texture_format == "png" else "raw"
        tex.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(color_space)
        out_type = Sdf.ValueTypeNames.Float if output == "r" else Sdf.ValueTypeNames.Float3
        tex.CreateOutput(output, out_type)
        if kind == "normal":
            tex.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2.0, 2.0, 2.0, 1.0))
            tex.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1.0, -1.0, -1.0, 0.0))
        in_type = {"diffuseColor": Sdf.ValueTypeNames.Color3f, "specularColor": Sdf.ValueTypeNames.Color3f,
                   "roughness": Sdf.ValueTypeNames.Float, "normal": Sdf.ValueTypeNames.Normal3f}[surface_input]
        surface.CreateInput(surface_input, in_type).ConnectToSource(tex.ConnectableAPI(), output)
    if "specular" in kinds:
        surface.CreateInput("useSpecularWorkflow", Sdf.ValueTypeNames.Int).Set(1)

    variant_set = material.GetPrim().GetVariantSets().AddVariantSet("expression")
    for expr, per_kind in texture_paths.items():
        variant_set.AddVariant(expr)
        variant_set.SetVariantSelection(expr)
        with variant_set.GetVariantEditContext():
            for kind in kinds:
                file_inputs[kind].Set(Sdf.AssetPath(per_kind[kind]))
    variant_set.SetVariantSelection(NEUTRAL)
    stage.GetRootLayer().Save()


def _write_shapes_layer(path: Path, character: str, neutral: FaceMesh, shapes: Mapping[str, np.ndarray],
                        names: Sequence[str], options: ExportOptions) -> None:
    """Every expression as a full Mesh under ``/<character>/shapes``, sharing topology through a class."""
    from pxr import Sdf, UsdGeom, Vt

    stage = _new_stage(path, character, neutral.units, options, None)
    topology = UsdGeom.Mesh(stage.CreateClassPrim("/_faceTopology"))
    topology.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(neutral.face_vertex_counts))
    topology.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(neutral.face_vertex_indices))
    topology.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    st = UsdGeom.PrimvarsAPI(topology).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                      UsdGeom.Tokens.faceVarying)
    st.Set(Vt.Vec2fArray.FromNumpy(neutral.uvs))
    st.SetIndices(Vt.IntArray.FromNumpy(neutral.face_uv_indices))
    UsdGeom.Xform.Define(stage, f"/{character}")
    UsdGeom.Scope.Define(stage, f"/{character}/shapes")
    triangles = neutral.triangulated().faces
    for (expr, verts), name in zip([(NEUTRAL, neutral.vertices), *shapes.items()], [NEUTRAL, *names]):
        mesh = UsdGeom.Mesh.Define(stage, f"/{character}/shapes/{name}")
        mesh.GetPrim().GetInherits().AddInherit("/_faceTopology")
        mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(verts)))
        mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(vertex_normals(verts, triangles)))
        mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        mesh.CreateExtentAttr(UsdGeom.Mesh.ComputeExtent(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(verts))))
    stage.GetRootLayer().Save()
