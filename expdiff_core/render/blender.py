"""Blender 4.5 as a consumer of our published asset: import it headless, inspect it, render one Cycles frame.

Uses the ``bpy`` module (PyPI ``bpy`` 4.5, the ``dcc`` extra), imported lazily: nothing here runs without it.
Blender bundles its own USD libraries, so run this in its own process rather than beside ``pxr`` (usd-core)::

    python -m expdiff_core.render.blender hero/v001/hero.usda --out frame.png [--expression jawOpen]
                                          [--report report.json] [--points jawOpen]

What Blender makes of an asset (measured on 4.5.15): the root Xform becomes an empty scaled by the stage's
metersPerUnit and rotated +90 degrees about X for a Y-up stage (Blender is Z-up, metres); the SkelRoot's mesh
becomes a mesh object with one shape key per BlendShape after ``Basis``, animated by one F-curve each from the
SkelAnimation, and an Armature modifier on the imported skeleton; UsdPreviewSurface becomes a Principled BSDF
whose ``<UDIM>`` textures are tiled images, one tile per UDIM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ExpDiffError, ExpDiffInputError

DEFAULT_RESOLUTION = 160  # pixels per side of the test frame
DEFAULT_SAMPLES = 16  # Cycles samples: enough for a recognisable, denoised preview


def load_bpy():
    """The ``bpy`` module, or ExpDiffError saying how to install it."""
    try:
        import bpy
    except ImportError as exc:
        raise ExpDiffError(f"Blender's bpy module is not importable ({exc}); install the dcc extra: "
                           "pip install 'bpy>=4.5,<4.6' (Python 3.11)") from None
    return bpy


def import_usd(path: str | os.PathLike) -> list[Any]:
    """Import a USD asset into an empty scene; returns the imported mesh objects (with shape keys first).

    Options are spelled out (Blender's 4.5 defaults, except that the blendshape, skeleton and preview
    surface imports are the point here): metres via metersPerUnit, Z-up, frame range from the stage.
    """
    bpy = load_bpy()
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ExpDiffInputError(path, "USD file not found")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.wm.usd_import(
        filepath=str(path), import_meshes=True, import_materials=True, import_usd_preview=True,
        import_blendshapes=True, import_skeletons=True, apply_unit_conversion_scale=True, scale=1.0,
        set_frame_range=True, read_mesh_uvs=True, import_subdiv=False, import_cameras=False, import_lights=False,
    )
    if "FINISHED" not in result:
        raise ExpDiffInputError(path, f"Blender's USD import did not finish ({sorted(result)})")
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    if not meshes:
        raise ExpDiffInputError(path, "Blender imported no mesh from it")
    return sorted(meshes, key=lambda o: (o.data.shape_keys is None, o.name))


def _shape_key_fcurves(obj) -> dict[str, Any]:
    """{shape key name: its F-curve} of the object's shape-key animation."""
    keys = obj.data.shape_keys
    if keys is None or keys.animation_data is None or keys.animation_data.action is None:
        return {}
    out = {}
    for fcurve in keys.animation_data.action.fcurves:
        path = fcurve.data_path  # key_blocks["name"].value
        if path.startswith('key_blocks["') and path.endswith('"].value'):
            out[path[len('key_blocks["'):-len('"].value')]] = fcurve
    return out


def peak_frame(obj, shape: str) -> float:
    """The first keyed frame at which ``shape``'s animated weight is largest (1 in our preview animation)."""
    fcurves = _shape_key_fcurves(obj)
    if shape not in fcurves:
        raise ExpDiffInputError(None, f"mesh {obj.name!r} has no animated shape key {shape!r}; "
                                      f"it has {sorted(fcurves)}")
    points = list(fcurves[shape].keyframe_points)
    best = max(points, key=lambda p: (p.co[1], -p.co[0]))
    return float(best.co[0])


def posed_points(obj, frame: float) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 evaluated vertex positions at ``frame``: (object-local, world) after shape keys/armature."""
    bpy = load_bpy()
    scene = bpy.context.scene
    scene.frame_set(int(math.floor(frame)), subframe=float(frame - math.floor(frame)))
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        local = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", local)
    finally:
        evaluated.to_mesh_clear()
    local = local.reshape(-1, 3).astype(np.float64)
    matrix = np.array(evaluated.matrix_world, dtype=np.float64)
    world = local @ matrix[:3, :3].T + matrix[:3, 3]
    return local, world


def describe(obj) -> dict[str, Any]:
    """What the import made of a mesh: shape keys, their animation, armature, materials, images, transform."""
    bpy = load_bpy()
    keys = obj.data.shape_keys
    fcurves = _shape_key_fcurves(obj)
    images = []
    for image in bpy.data.images:
        if image.source not in ("FILE", "TILED"):
            continue
        images.append({"name": image.name, "source": image.source, "filepath": bpy.path.abspath(image.filepath),
                       "tiles": [t.number for t in image.tiles] if image.source == "TILED" else [],
                       "size": list(image.size), "has_data": bool(image.has_data),
                       "channels": int(image.channels)})
    return {
        "object": obj.name,
        "vertices": len(obj.data.vertices),
        "shape_keys": [k.name for k in keys.key_blocks] if keys else [],
        "reference_key": keys.reference_key.name if keys else None,
        "animated_shape_keys": sorted(fcurves),
        "armature": next((m.object.name for m in obj.modifiers if m.type == "ARMATURE" and m.object), None),
        "materials": [m.name for m in obj.data.materials if m],
        "images": images,
        "matrix_world": [list(row) for row in obj.matrix_world],
        "frame_range": [bpy.context.scene.frame_start, bpy.context.scene.frame_end],
    }


def _world_bounds(objects) -> tuple[np.ndarray, np.ndarray]:
    corners = []
    for obj in objects:
        matrix = np.array(obj.matrix_world, dtype=np.float64)
        box = np.array([list(c) for c in obj.bound_box], dtype=np.float64)
        corners.append(box @ matrix[:3, :3].T + matrix[:3, 3])
    pts = np.concatenate(corners)
    return pts.min(axis=0), pts.max(axis=0)


def setup_render(objects, resolution: int = DEFAULT_RESOLUTION, samples: int = DEFAULT_SAMPLES,
                 threads: int = 2, front: Sequence[float] | None = None) -> None:
    """Cycles on the CPU, a camera framing ``objects`` from the front, a key light and a grey world.

    front: world direction the face looks along; default the mesh's +Z axis (USD heads look along +Z),
    which Blender's Y-up -> Z-up import turns into -Y.
    """
    bpy = load_bpy()
    from mathutils import Vector

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = int(samples)
    scene.cycles.use_denoising = True
    scene.cycles.seed = 0
    scene.render.threads_mode = "FIXED"
    scene.render.threads = max(1, int(threads))
    scene.render.resolution_x = scene.render.resolution_y = int(resolution)
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.view_settings.view_transform = "Standard"

    lo, hi = _world_bounds(objects)
    centre = Vector(((lo + hi) / 2).tolist())
    radius = float(np.linalg.norm(hi - lo)) / 2
    if front is None:
        axis = np.array(objects[0].matrix_world, dtype=np.float64)[:3, 2]
        front = axis / np.linalg.norm(axis)
    front = Vector([float(v) for v in front]).normalized()

    cam_data = bpy.data.cameras.new("expdiff_camera")
    cam_data.lens_unit = "FOV"
    cam_data.angle = math.radians(30.0)
    camera = bpy.data.objects.new("expdiff_camera", cam_data)
    scene.collection.objects.link(camera)
    distance = radius / math.tan(cam_data.angle / 2) * 1.05
    camera.location = centre + front * distance
    camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Z" if abs(front.z) < 0.9 else "Y").to_euler()
    cam_data.clip_start, cam_data.clip_end = distance * 0.01, distance * 10
    scene.camera = camera

    up = Vector((0.0, 0.0, 1.0)) if abs(front.z) < 0.9 else Vector((0.0, 1.0, 0.0))
    side = front.cross(up).normalized()
    light_data = bpy.data.lights.new("expdiff_key", type="AREA")
    light_data.size = radius * 2
    light_data.energy = 12.0 * distance * distance  # W: the same irradiance whatever the asset's size
    light = bpy.data.objects.new("expdiff_key", light_data)
    scene.collection.objects.link(light)
    light.location = centre + (front + 0.6 * up + 0.5 * side).normalized() * distance
    light.rotation_euler = (centre - light.location).to_track_quat("-Z", "Z" if abs(front.z) < 0.9 else "Y").to_euler()

    world = bpy.data.worlds.new("expdiff_world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.18, 0.18, 0.2, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.4
    scene.world = world


def render_png(out: str | os.PathLike) -> Path:
    """Render the current frame to ``out`` (PNG)."""
    bpy = load_bpy()
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    bpy.context.scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    if not out.is_file():
        raise ExpDiffError(f"{out}: Blender rendered no file")
    return out


def render_asset(path: str | os.PathLike, out: str | os.PathLike | None = None, expression: str | None = None,
                 frame: float | None = None, resolution: int = DEFAULT_RESOLUTION, samples: int = DEFAULT_SAMPLES,
                 threads: int = 2, points: Sequence[str] = ()) -> dict[str, Any]:
    """Import ``path``, describe it and (with ``out``) render one frame; returns a JSON-ready report.

    expression: pose that shape at its peak frame of the preview animation (weight 1, all others 0); else
    ``frame``, else the first frame (the neutral). points: shape names whose posed vertices (object-local and
    world, at their peak frames) go into the report under ``posed``.
    """
    bpy = load_bpy()
    meshes = import_usd(path)
    obj = meshes[0]
    report = describe(obj)
    report["blender"] = bpy.app.version_string
    report["posed"] = {}
    for shape in points:
        at = peak_frame(obj, shape)
        local, world = posed_points(obj, at)
        report["posed"][shape] = {"frame": at, "local": local.tolist(), "world": world.tolist()}
    if expression is not None:
        frame = peak_frame(obj, expression)
    frame = float(bpy.context.scene.frame_start if frame is None else frame)
    report["frame"] = frame
    if out is not None:
        bpy.context.scene.frame_set(int(math.floor(frame)), subframe=float(frame - math.floor(frame)))
        setup_render(meshes, resolution, samples, threads)
        report["render"] = str(render_png(out))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expdiff_core.render.blender",
                                     description="Import a published ExpDiff USD asset into Blender (bpy 4.5) "
                                     "headless and render one Cycles frame on the CPU.")
    parser.add_argument("asset", metavar="PATH.usda", help="the asset's entry layer, e.g. hero/v001/hero.usda")
    parser.add_argument("--out", metavar="PNG", help="render one frame to this PNG")
    parser.add_argument("--expression", metavar="NAME", help="pose this blendshape at weight 1 (its peak frame)")
    parser.add_argument("--frame", type=float, help="frame to render (default: the first, neutral)")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, help="pixels per side (default %(default)s)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="Cycles samples (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="render threads (default %(default)s)")
    parser.add_argument("--report", metavar="JSON", help="write what the import made of the asset here")
    parser.add_argument("--points", nargs="*", default=[], metavar="NAME",
                        help="with --report: posed vertices of these blendshapes at weight 1")
    args = parser.parse_args(argv)
    try:
        report = render_asset(args.asset, args.out, args.expression, args.frame, args.resolution, args.samples,
                              args.threads, args.points)
    except ExpDiffError as exc:
        print(f"expdiff blender: error: {exc}", file=sys.stderr)
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps(report) + "\n")
    print(f"{report['object']}: {len(report['shape_keys']) - 1 if report['shape_keys'] else 0} shape keys, "
          f"{len(report['images'])} images, Blender {report['blender']}"
          + (f"; rendered frame {report['frame']:g} to {report['render']}" if "render" in report else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
