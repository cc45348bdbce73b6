"""Validate a delivered asset: OpenUSD's own validators plus the TD checklist ExpDiff assets must pass.

``validate_asset(path)`` returns every problem as a ``ValidationIssue``; an asset is deliverable when none has
severity ``"error"``. The TD checks (ids in ``TD_CHECKS``) look at what DCC imports rely on: stage metadata,
the component root, the skeleton binding of the blendshape mesh, blendshape arrays, the animation's time
range, raw data maps and UDIM texture tiles, in every variant of the material.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ExpDiffInputError
from ..io.udim import UDIM_FIRST, UDIM_LAST, udim_of
from .schema import FACS_API, PROVENANCE_API

SEVERITIES = ("error", "warning", "info")
# OpenUSD validator groups that apply to a character asset (physics, lights and usdz-only ones do not).
USD_VALIDATOR_KEYWORDS = ("UsdCoreValidators", "UsdGeomValidators", "UsdSkelValidators", "UsdShadeValidators",
                          "UsdUtilsValidators")
TD_CHECKS = {
    "expdiff:StageMetadata": "defaultPrim, upAxis and metersPerUnit are authored on the entry layer",
    "expdiff:RootKind": "the default prim is a model of kind 'component'",
    "expdiff:SkelBinding": "the blendshape mesh sits under a SkelRoot, has SkelBindingAPI, and its skeleton and "
                           "animation source resolve",
    "expdiff:BlendShapeTargets": "skel:blendShapes and skel:blendShapeTargets have the same length and order, "
                                 "and the animation drives every channel",
    "expdiff:BlendShapeOffsets": "pointIndices (sorted, in range) and normalOffsets match offsets in length",
    "expdiff:TimeRange": "startTimeCode/endTimeCode are authored and cover every animation sample",
    "expdiff:RawDataMaps": "textures feeding non-colour inputs (roughness, normal, ...) use sourceColorSpace raw",
    "expdiff:NormalMapEncoding": "normal maps decode [0, 1] to [-1, 1] (scale 2, bias -1)",
    "expdiff:UdimTiles": "every texture path resolves (each <UDIM> to tiles 1001..1100, the same tiles in every "
                         "variant) and mesh UVs stay inside tiles 1001..1100",
    "expdiff:Schemas": "the root carries ExpDiffProvenanceAPI and every blendshape ExpDiffFacsAPI",
    "expdiff:LayerReadable": "every layer of the asset (sublayers, references, payloads) can be read: none is "
                             "missing, truncated or corrupt",
}
COLOR_INPUTS = ("diffuseColor", "emissiveColor", "specularColor")
_UDIM = "<UDIM>"


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found: severity (error / warning / info), the check that found it, where, and what."""

    severity: str
    check: str
    message: str
    site: str = ""

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f" {self.site}:" if self.site else ""
        return f"{self.severity.upper():<7} [{self.check}]{where} {self.message}"


# ------------------------------------------------------------------------------ entry points
def find_entry_layer(path: str | os.PathLike) -> Path:
    """The entry layer for ``path``: a USD file itself, ``<character>.usda`` in a version folder, or the
    latest version's entry layer in a character folder. Raises ExpDiffInputError when there is none."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ExpDiffInputError(path, "no such file or folder")
    versions = sorted((int(p.name[1:]), p) for p in path.iterdir()
                      if p.is_dir() and re.fullmatch(r"v\d{3,}", p.name))
    if versions:
        return find_entry_layer(versions[-1][1])
    entry = path / f"{path.parent.name}.usda"
    if entry.is_file():
        return entry
    raise ExpDiffInputError(path, f"not an asset version folder: no {entry.name} inside, and no v### folders")


def validate_asset(path: str | os.PathLike) -> list[ValidationIssue]:
    """Open the asset at ``path`` (file, version folder or character folder) and run every check on it."""
    from pxr import Tf, Usd

    entry = find_entry_layer(path)
    unreadable = unreadable_layers(entry)
    if unreadable:
        return unreadable
    with Tf.DiagnosticTrap() as trap:
        try:
            stage = Usd.Stage.Open(str(entry), Usd.Stage.LoadAll)
        except Tf.ErrorException as exc:
            trap.Clear()
            raise ExpDiffInputError(entry, f"cannot open as a USD stage: {_usd_error_text(exc)}") from None
        issues = _diagnostics(trap, "usd:open")
    try:
        return _unique(issues + validate_stage(stage))
    except Tf.ErrorException as exc:  # a layer that opened but fails when read further
        return _unique(issues + [ValidationIssue("error", "expdiff:LayerReadable", _usd_error_text(exc), str(entry))])


def _usd_error_text(exc: BaseException) -> str:
    """The message of a ``pxr.Tf.ErrorException`` without USD's source locations: the first quoted reason
    (``Error in '...' at line N in file F : 'reason'`` -> ``reason``), once."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reasons = []
    for line in lines:
        m = re.search(r" : '(.*)'$", line)
        text = m.group(1) if m else line
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons) or type(exc).__name__


def unreadable_layers(entry: str | os.PathLike) -> list[ValidationIssue]:
    """Open every layer of the asset (entry, sublayers, references, payloads; recursively) on its own and
    report each existing one USD cannot read (truncated, corrupt, not USD) as an ``expdiff:LayerReadable``
    error, with the layer's path as its site. Empty when every layer reads (missing layers are left to the
    composition validators)."""
    from pxr import Sdf, Tf

    issues: list[ValidationIssue] = []
    seen: set[str] = set()
    todo = [str(Path(entry).resolve())]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        with Tf.DiagnosticTrap() as trap:
            try:
                layer = Sdf.Layer.FindOrOpen(path)
                problem = None if layer is not None else "cannot be opened as a USD layer"
            except Tf.ErrorException as exc:
                layer, problem = None, _usd_error_text(exc)
            trap.Clear()
        if not os.path.exists(path):
            continue  # a missing layer is a composition error, which OpenUSD's validators report
        if problem:
            issues.append(ValidationIssue("error", "expdiff:LayerReadable", problem, path))
            continue
        for dep in layer.GetCompositionAssetDependencies():
            if dep and "<UDIM>" not in dep:
                todo.append(os.path.normpath(layer.ComputeAbsolutePath(dep)))
    return issues


def validate_stage(stage) -> list[ValidationIssue]:
    """OpenUSD's validators (``USD_VALIDATOR_KEYWORDS``) and the TD checks (``TD_CHECKS``) on an open stage.

    Material variants are visited and ``<UDIM>`` textures resolved through temporary opinions in the stage's
    session layer, which are removed again before returning.
    """
    issues = _run_usd_validators(stage)
    for check in (_check_stage_metadata, _check_root_kind, _check_skel, _check_time_range, _check_materials,
                  _check_mesh_uvs, _check_schemas):
        issues.extend(check(stage))
    return _unique(issues)


def _unique(issues: list[ValidationIssue]) -> list[ValidationIssue]:
    """Issues in order, each reported once (USD repeats some diagnostics per layer visit)."""
    return list(dict.fromkeys(issues))


# ------------------------------------------------------------------------- OpenUSD validators
def _run_usd_validators(stage) -> list[ValidationIssue]:
    from pxr import Tf, UsdValidation

    severity = {UsdValidation.ValidationErrorType.Error: "error", UsdValidation.ValidationErrorType.Warn: "warning",
                UsdValidation.ValidationErrorType.Info: "info"}
    context = UsdValidation.ValidationContext(list(USD_VALIDATOR_KEYWORDS), True)
    issues: list[ValidationIssue] = []
    with Tf.DiagnosticTrap() as trap, _udim_tiles_resolved(stage):
        errors = context.Validate(stage)
        issues.extend(_diagnostics(trap, "usd:validate"))
    for error in errors:
        if error.GetType() not in severity:
            continue
        validator = error.GetValidator()
        name = validator.GetMetadata().name if validator else str(error.GetName())
        issues.append(ValidationIssue(severity[error.GetType()], name, error.GetMessage(),
                                      ", ".join(_site_name(s) for s in error.GetSites())))
    return issues


@contextlib.contextmanager
def _udim_tiles_resolved(stage) -> Iterator[None]:
    """Point each ``<UDIM>`` texture at its first tile in the session layer while OpenUSD's validators run.

    usd-core's NormalMapTextureValidator resolves ``inputs:file`` as a plain path, so a ``<UDIM>`` pattern
    reads as a missing file; given a real tile it checks the texture itself (bit depth, colour space).
    """
    from pxr import Sdf, Usd, UsdShade

    session = stage.GetSessionLayer()
    authored: list = []
    with Usd.EditContext(stage, session):
        for shader, file_input in list(_texture_file_inputs(stage)):
            value = file_input.Get()
            if value is None or _UDIM not in value.path:
                continue
            layer = _value_layer(file_input.GetAttr())
            tiles = UsdShade.UdimUtils.ResolveUdimTilePaths(value.path, layer) if layer else []
            if tiles:
                file_input.Set(Sdf.AssetPath(tiles[0][0]))
                authored.append(file_input.GetAttr().GetPath())
    try:
        yield
    finally:
        for path in authored:
            spec = session.GetPropertyAtPath(path)
            if spec is not None:
                spec.ClearDefaultValue()
        session.RemoveInertSceneDescription()


def _diagnostics(trap, check: str) -> list[ValidationIssue]:
    """Turn USD errors/warnings raised while opening or validating into issues (UDIM lookups excepted)."""
    issues = [ValidationIssue("error", check, str(e.commentary)) for e in trap.GetErrors()]
    for w in trap.GetWarnings():
        text = str(w.commentary)
        # UsdUtils warns about every <UDIM> pattern before expanding it to tiles; expdiff:UdimTiles checks them.
        if _UDIM in text and text.startswith("Failed to resolve reference"):
            continue
        issues.append(ValidationIssue("warning", check, text))
    trap.Clear()
    return issues


def _site_name(site) -> str:
    if site.IsProperty():
        return str(site.GetProperty().GetPath())
    if site.IsPrim():
        return str(site.GetPrim().GetPath())
    layer = site.GetLayer()
    return layer.identifier if layer else ""


# ------------------------------------------------------------------------------- TD checks
def _check_stage_metadata(stage) -> list[ValidationIssue]:
    check = "expdiff:StageMetadata"
    layer = stage.GetRootLayer().identifier
    issues = []
    if not stage.GetRootLayer().HasDefaultPrim():
        issues.append(ValidationIssue("error", check, "defaultPrim is not set", layer))
    elif not stage.GetDefaultPrim():
        issues.append(ValidationIssue("error", check, f"defaultPrim {stage.GetRootLayer().defaultPrim!r} names no "
                                      "prim on the stage", layer))
    for key in ("upAxis", "metersPerUnit"):
        if not stage.HasAuthoredMetadata(key):
            issues.append(ValidationIssue("error", check, f"{key} is not authored", layer))
    return issues


def _check_root_kind(stage) -> list[ValidationIssue]:
    from pxr import Usd

    root = stage.GetDefaultPrim()
    if not root:
        return [ValidationIssue("error", "expdiff:RootKind", "no default prim to carry kind = component")]
    kind = Usd.ModelAPI(root).GetKind()
    if kind != "component":
        return [ValidationIssue("error", "expdiff:RootKind", f"kind is {kind or 'unset'!r}, expected 'component'",
                                str(root.GetPath()))]
    return []


def _check_skel(stage) -> list[ValidationIssue]:
    """SkelBinding, BlendShapeTargets and BlendShapeOffsets on every mesh that carries skinning or shapes."""
    from pxr import UsdGeom, UsdSkel

    issues: list[ValidationIssue] = []
    bind_check, target_check, offset_check = "expdiff:SkelBinding", "expdiff:BlendShapeTargets", "expdiff:BlendShapeOffsets"
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    skinned = [m for m in meshes if m.HasAPI(UsdSkel.BindingAPI)
               or any(n.startswith(("skel:", "primvars:skel:")) for n in m.GetPropertyNames())]
    if not any(m.GetAttribute("skel:blendShapes").HasAuthoredValue() for m in skinned):
        issues.append(ValidationIssue("error", bind_check, "no Mesh carries skel:blendShapes: the asset delivers "
                                      "no blendshapes"))
    for mesh in skinned:
        site = str(mesh.GetPath())
        parent = mesh.GetParent()
        while parent and not parent.IsA(UsdSkel.Root):
            parent = parent.GetParent()
        if not parent:
            issues.append(ValidationIssue("error", bind_check, "skinned mesh is not under a SkelRoot", site))
        if not mesh.HasAPI(UsdSkel.BindingAPI):
            issues.append(ValidationIssue("error", bind_check, "SkelBindingAPI is not applied", site))
        binding = UsdSkel.BindingAPI(mesh)
        skeleton = binding.GetInheritedSkeleton()
        anim_prim = None
        if not skeleton:
            issues.append(ValidationIssue("error", bind_check, "skel:skeleton does not resolve to a Skeleton", site))
        else:
            anim_prim = UsdSkel.BindingAPI(skeleton.GetPrim()).GetInheritedAnimationSource()
            if not anim_prim or not anim_prim.IsA(UsdSkel.Animation):
                issues.append(ValidationIssue("error", bind_check, f"skeleton {skeleton.GetPath()} has no "
                                              "skel:animationSource resolving to a SkelAnimation", site))
                anim_prim = None

        names = list(binding.GetBlendShapesAttr().Get() or [])
        targets = list(binding.GetBlendShapeTargetsRel().GetTargets())
        if not names and not targets:
            continue
        if len(names) != len(targets):
            issues.append(ValidationIssue("error", target_check, f"{len(names)} skel:blendShapes but {len(targets)} "
                                          "skel:blendShapeTargets", site))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            issues.append(ValidationIssue("error", target_check, f"duplicate skel:blendShapes {duplicates}", site))
        n_points = len(UsdGeom.Mesh(mesh).GetPointsAttr().Get() or [])
        for i, (name, target) in enumerate(zip(names, targets)):
            shape_prim = stage.GetPrimAtPath(target)
            if not shape_prim or not shape_prim.IsA(UsdSkel.BlendShape):
                issues.append(ValidationIssue("error", target_check, f"target {i} {target} is not a BlendShape", site))
                continue
            if shape_prim.GetName() != name:
                issues.append(ValidationIssue("error", target_check, f"channel {i} is {name!r} but its target is "
                                              f"{target}: skel:blendShapes and targets are out of order", site))
            issues.extend(_check_offsets(UsdSkel.BlendShape(shape_prim), n_points, offset_check))
        if anim_prim is not None:
            anim = UsdSkel.Animation(anim_prim)
            driven = set(anim.GetBlendShapesAttr().Get() or [])
            undriven = [n for n in names if n not in driven]
            if undriven:
                issues.append(ValidationIssue("error", target_check, f"{len(undriven)} channel(s) not in the "
                                              f"animation's blendShapes, e.g. {undriven[:3]}", str(anim_prim.GetPath())))
    return issues


def _check_offsets(shape, n_points: int, check: str) -> list[ValidationIssue]:
    site = str(shape.GetPath())
    offsets = shape.GetOffsetsAttr().Get()
    n = len(offsets) if offsets is not None else 0
    issues = []
    normal_offsets = shape.GetNormalOffsetsAttr().Get() if shape.GetNormalOffsetsAttr().HasAuthoredValue() else None
    if normal_offsets is not None and len(normal_offsets) != n:
        issues.append(ValidationIssue("error", check, f"{len(normal_offsets)} normalOffsets but {n} offsets", site))
    if shape.GetPointIndicesAttr().HasAuthoredValue():
        indices = np.asarray(shape.GetPointIndicesAttr().Get(), dtype=np.int64)
        if len(indices) != n:
            issues.append(ValidationIssue("error", check, f"{len(indices)} pointIndices but {n} offsets", site))
        if indices.size and (indices.min() < 0 or indices.max() >= n_points):
            issues.append(ValidationIssue("error", check, f"pointIndices outside 0..{n_points - 1}", site))
        if indices.size > 1 and not (np.diff(indices) > 0).all():
            issues.append(ValidationIssue("error", check, "pointIndices are not sorted and unique", site))
    elif n != n_points:
        issues.append(ValidationIssue("error", check, f"{n} offsets without pointIndices, but the mesh has "
                                      f"{n_points} points", site))
    return issues


def _check_time_range(stage) -> list[ValidationIssue]:
    from pxr import UsdSkel

    check = "expdiff:TimeRange"
    issues = []
    anims = [p for p in stage.Traverse() if p.IsA(UsdSkel.Animation)]
    if not stage.GetRootLayer().HasStartTimeCode() or not stage.GetRootLayer().HasEndTimeCode():
        issues.append(ValidationIssue("error", check, "startTimeCode/endTimeCode are not authored on the entry "
                                      "layer (Maya imports only that range)", stage.GetRootLayer().identifier))
        return issues
    start, end = stage.GetStartTimeCode(), stage.GetEndTimeCode()
    for prim in anims:
        anim = UsdSkel.Animation(prim)
        n_channels = len(anim.GetBlendShapesAttr().Get() or [])
        for attr in (anim.GetBlendShapeWeightsAttr(), anim.GetTranslationsAttr(), anim.GetRotationsAttr(),
                     anim.GetScalesAttr()):
            times = attr.GetTimeSamples()
            outside = [t for t in times if t < start or t > end]
            if outside:
                issues.append(ValidationIssue("error", check, f"{len(outside)} sample(s) outside the stage's range "
                                              f"{start:g}..{end:g}, e.g. {outside[0]:g}", str(attr.GetPath())))
        weights = anim.GetBlendShapeWeightsAttr()
        bad = [t for t in weights.GetTimeSamples() if len(weights.Get(t)) != n_channels]
        if bad:
            issues.append(ValidationIssue("error", check, f"weights at time {bad[0]:g} do not have one value per "
                                          f"blendShapes channel ({n_channels})", str(weights.GetPath())))
    return issues


def _check_materials(stage) -> list[ValidationIssue]:
    """RawDataMaps, NormalMapEncoding and UdimTiles on every UsdPreviewSurface, in every material variant."""
    issues: list[ValidationIssue] = []
    tiles_seen: dict[str, tuple[str, frozenset]] = {}
    for variant in _each_material_variant(stage):
        for surface, input_name, texture, output_name in _surface_textures(stage):
            site = str(texture.GetPath()) + (f" ({variant})" if variant else "")
            space = texture.GetInput("sourceColorSpace")
            space = space.Get() if space else None
            if input_name not in COLOR_INPUTS and space != "raw":
                issues.append(ValidationIssue("error", "expdiff:RawDataMaps", f"feeds {input_name} but "
                                              f"sourceColorSpace is {space or 'unset (auto)'!r}, expected 'raw'", site))
            if input_name == "normal":
                scale, bias = texture.GetInput("scale"), texture.GetInput("bias")
                scale = tuple(scale.Get())[:3] if scale and scale.Get() is not None else (1.0, 1.0, 1.0)
                bias = tuple(bias.Get())[:3] if bias and bias.Get() is not None else (0.0, 0.0, 0.0)
                if scale != (2.0, 2.0, 2.0) or bias != (-1.0, -1.0, -1.0):
                    issues.append(ValidationIssue("error", "expdiff:NormalMapEncoding", f"scale {scale} / bias "
                                                  f"{bias}; a [0, 1] normal map needs scale 2 and bias -1", site))
            problem, tiles = _texture_tiles(texture)
            if problem:
                issues.append(ValidationIssue("error", "expdiff:UdimTiles", problem, site))
                continue
            key = str(texture.GetPath())
            if tiles is not None:
                first = tiles_seen.setdefault(key, (variant, tiles))
                if first[1] != tiles:
                    issues.append(ValidationIssue("error", "expdiff:UdimTiles", f"tiles {sorted(tiles)} differ from "
                                                  f"{sorted(first[1])} in {first[0] or 'the default variant'}", site))
    return issues


def _check_mesh_uvs(stage) -> list[ValidationIssue]:
    from pxr import UsdGeom

    issues = []
    for prim in stage.Traverse():
        if not prim.IsA(UsdGeom.Mesh):
            continue
        st = UsdGeom.PrimvarsAPI(prim).GetPrimvar("st")
        if not st or not st.HasValue():
            continue
        uv = np.asarray(st.Get(), dtype=np.float64).reshape(-1, 2)
        with np.errstate(invalid="ignore"):
            outside = ~(((uv >= 0.0) & (uv < 10.0)).all(axis=1))
        if outside.any():
            tiles = sorted({int(t) for t in udim_of(np.nan_to_num(uv[outside]))})[:5]
            issues.append(ValidationIssue("error", "expdiff:UdimTiles", f"{int(outside.sum())} UV(s) outside tiles "
                                          f"{UDIM_FIRST}..{UDIM_LAST} (e.g. tiles {tiles})", str(prim.GetPath())))
    return issues


def _check_schemas(stage) -> list[ValidationIssue]:
    from pxr import UsdSkel

    issues = []
    root = stage.GetDefaultPrim()
    if root and not root.HasAPI(PROVENANCE_API):
        issues.append(ValidationIssue("warning", "expdiff:Schemas", f"{PROVENANCE_API} is not applied: the asset "
                                      "does not say how it was made", str(root.GetPath())))
    for prim in stage.Traverse():
        if prim.IsA(UsdSkel.BlendShape) and not prim.HasAPI(FACS_API):
            issues.append(ValidationIssue("warning", "expdiff:Schemas", f"{FACS_API} is not applied",
                                          str(prim.GetPath())))
    return issues


# ----------------------------------------------------------------------------- material helpers
def _texture_file_inputs(stage):
    """(shader, inputs:file) of every UsdUVTexture on the stage."""
    from pxr import UsdShade

    for prim in stage.Traverse():
        shader = UsdShade.Shader(prim)
        if shader and shader.GetShaderId() == "UsdUVTexture":
            file_input = shader.GetInput("file")
            if file_input:
                yield shader, file_input


def _surface_textures(stage):
    """(surface, input name, UsdUVTexture shader, output name) for every texture wired into a UsdPreviewSurface."""
    from pxr import UsdShade

    for prim in stage.Traverse():
        surface = UsdShade.Shader(prim)
        if not surface or surface.GetShaderId() != "UsdPreviewSurface":
            continue
        for shader_input in surface.GetInputs():
            for source in shader_input.GetConnectedSources()[0]:
                texture = UsdShade.Shader(source.source.GetPrim())
                if texture and texture.GetShaderId() == "UsdUVTexture":
                    yield surface, shader_input.GetBaseName(), texture, source.sourceName


def _each_material_variant(stage) -> Iterator[str]:
    """Yield "" for the stage as authored, then "set=variant" with each variant of each Material selected."""
    from pxr import Usd, UsdShade

    yield ""
    session = stage.GetSessionLayer()
    materials = [p for p in stage.Traverse() if p.IsA(UsdShade.Material) and p.GetVariantSets().GetNames()]
    for material in materials:
        for set_name in material.GetVariantSets().GetNames():
            variant_set = material.GetVariantSet(set_name)
            for name in variant_set.GetVariantNames():
                with Usd.EditContext(stage, session):
                    variant_set.SetVariantSelection(name)
                yield f"{set_name}={name}"
            with Usd.EditContext(stage, session):
                variant_set.ClearVariantSelection()
    session.RemoveInertSceneDescription()


def _value_layer(attr):
    """The layer whose opinion gives ``attr`` its default value (relative asset paths anchor there)."""
    for spec in attr.GetPropertyStack():
        if spec.HasDefaultValue():
            return spec.layer
    return None


def _texture_tiles(texture) -> tuple[str | None, frozenset | None]:
    """(problem or None, UDIM tiles found or None for a plain path) of a UsdUVTexture's inputs:file."""
    file_input = texture.GetInput("file")
    value = file_input.Get() if file_input else None
    if value is None or not value.path:
        return "inputs:file is empty", None
    layer = _value_layer(file_input.GetAttr())
    if _UDIM not in value.path:
        if not value.resolvedPath:
            return f"@{value.path}@ does not resolve to a file", None
        return None, None
    pattern = Path(layer.ComputeAbsolutePath(value.path) if layer else value.path)
    prefix, _, suffix = pattern.name.partition(_UDIM)
    tile_re = re.compile(re.escape(prefix) + r"(\d{4,})" + re.escape(suffix) + "$")
    folder = pattern.parent
    found = [int(m.group(1)) for m in (tile_re.match(f) for f in (os.listdir(folder) if folder.is_dir() else ()))
             if m]
    if not found:
        return f"@{value.path}@ matches no tile file in {folder}", None
    outside = sorted(t for t in found if not UDIM_FIRST <= t <= UDIM_LAST)
    if outside:
        return f"@{value.path}@ has tile(s) {outside} outside {UDIM_FIRST}..{UDIM_LAST}", None
    return None, frozenset(found)
