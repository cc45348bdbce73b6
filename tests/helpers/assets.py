"""Build inputs made by our own code: a neutral asset on our template, a model folder as pre-flight sees it, and
a small published version to guard while bad inputs are tried."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

MODEL_RESOLUTION = 32
KINDS = ["position", "albedo", "specular", "roughness", "normal"]


def write_neutral_asset(root, resolution: int = 64):
    """Our template head (OBJ) and smooth albedo/specular/roughness/normal tiles 1001-1002 under ``root``.

    Returns (mesh path, {kind: "<root>/tex/<kind>.<UDIM>.exr"}).
    """
    from expdiff_core.io.mesh import write_obj
    from expdiff_core.io.textures import write_texture_set
    from expdiff_core.synth.template import template_mesh

    root = Path(root)
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    maps = {"albedo": np.stack([0.6 + 0.2 * x, 0.4 + 0.1 * y, 0.35 + 0.0 * x]), "specular": (0.3 + 0.1 * x)[None],
            "roughness": (0.5 + 0.2 * y)[None], "normal": np.stack([0.5 + 0.0 * x, 0.5 + 0.0 * x, 1.0 + 0.0 * x])}
    root.mkdir(parents=True, exist_ok=True)
    write_obj(template_mesh(), root / "head.obj")
    for kind, image in maps.items():
        write_texture_set({1001: image, 1002: image[:, ::-1].copy()}, root / "tex", kind)
    return root / "head.obj", {kind: str(root / "tex" / f"{kind}.<UDIM>.exr") for kind in maps}


def write_albedo_tiles(folder, height: int, width: int) -> str:
    """Albedo tiles 1001-1002 of ``height`` x ``width`` texels; returns their ``<UDIM>`` pattern."""
    from expdiff_core.io.images import write_image

    folder = Path(folder)
    for udim in (1001, 1002):
        write_image(folder / f"albedo.{udim}.exr", np.full((height, width, 3), 0.5, np.float32))
    return str(folder / "albedo.<UDIM>.exr")


def preflight_model_folder(root) -> Path:
    """A pipeline folder as pre-flight reads it: ``pipeline_config.json`` (R = 32, tiles 1001-1002) and our
    template; the weights are not read before the build starts, so none are written."""
    from expdiff_core.io.mesh import write_obj
    from expdiff_core.synth.template import template_mesh

    folder = Path(root) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline_config.json").write_text(json.dumps(
        {"kinds": KINDS, "udims": [1001, 1002], "resolution": MODEL_RESOLUTION, "skin_groups": ["M_Face"]}))
    write_obj(template_mesh(), folder / "template.obj")
    return folder


def publish_guard_version(output_root, character: str = "hero"):
    """Publish ``<output_root>/<character>/v001`` (a 9x9 sheet face, one blendshape, 8x8 maps)."""
    from expdiff_core.usd import Provenance, publish_character

    from .meshes import sheet_face

    face = sheet_face()
    moved = face.vertices + np.array([0.0, -0.1, 0.0], np.float32)
    rng = np.random.default_rng(0)
    maps = {name: {kind: {1001: rng.random((c, 8, 8), dtype=np.float32)}
                   for kind, c in {"albedo": 3, "specular": 1, "roughness": 1, "normal": 3}.items()}
            for name in ("neutral", "jawOpen")}
    prov = Provenance(model_name="tiny", model_version="1", seed=0, scheduler="ddim", steps=2,
                      input_hashes={"/build/machine/in/head.obj": "a" * 64})
    return publish_character(output_root, character, face, {"jawOpen": moved}, maps, prov)


def tree_digest(root) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (empty when it does not exist)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
