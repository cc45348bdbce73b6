"""The demo character: a held-out synthetic head written as an ordinary studio asset (OBJ + UDIM EXR maps).

``expdiff build --demo`` builds it with the bundled model, so the main job runs on a fresh clone with no
data of the studio's own. The identity seed is outside every seed the bundled model's corpus used.
"""

from __future__ import annotations

import os
from pathlib import Path

from .io.mesh import write_obj
from .io.textures import write_texture_set

DEMO_SEED = 770_001  # not an identity_seed() of the training corpus (those come from a SeedSequence)
DEMO_CHARACTER = "demo_head"
BRDF_KINDS = ("albedo", "specular", "roughness", "normal")


def write_demo_asset(folder: str | os.PathLike, resolution: int = 512, seed: int = DEMO_SEED) -> dict[str, object]:
    """Write ``<folder>/demo_head.obj`` and ``<folder>/textures/<kind>.<UDIM>.exr``; returns build inputs.

    Returns {"mesh": path, "textures": {kind: "<folder>/textures/<kind>.<UDIM>.exr"}}. Reuses files already
    there (the asset is deterministic in ``seed`` and ``resolution``).
    """
    from .synth.factory import ProceduralSource, iter_expressions, skin_rasters

    folder = Path(folder)
    mesh_path = folder / f"{DEMO_CHARACTER}.obj"
    textures = {k: str(folder / "textures" / f"{k}.<UDIM>.exr") for k in BRDF_KINDS}
    if not (mesh_path.is_file() and all((folder / "textures" / f"{k}.1001.exr").is_file() for k in BRDF_KINDS)):
        source = ProceduralSource()
        identity = source.identity(seed)
        _, vertices, maps = next(iter_expressions(source, identity, skin_rasters(source, resolution)))
        for kind in BRDF_KINDS:
            write_texture_set(maps[kind], folder / "textures", kind)
        write_obj(source.template.with_vertices(vertices, name=DEMO_CHARACTER), mesh_path)
    return {"mesh": str(mesh_path), "textures": textures}
