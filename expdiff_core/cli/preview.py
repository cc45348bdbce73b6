"""``expdiff preview``: render a contact sheet of a dataset subject's expressions, or one mesh, to PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ExpDiffInputError, PublishError

MESH_SUFFIXES = (".obj", ".ply", ".usd", ".usda", ".usdc")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview", help="render a preview PNG: a subject's expression contact sheet, or a mesh",
                       description="Render previews with the built-in software renderer (no GPU/OpenGL): "
                       "Lambert + GGX shading of the BRDF maps (albedo, specular, roughness, tangent-space "
                       "normal) under a three-light studio rig. PATH is either a dataset folder (holding "
                       "manifest.json; writes a labelled contact sheet of every expression of one subject) or "
                       "a mesh file (.obj/.ply/.usd; writes one render).")
    p.add_argument("path", metavar="PATH", help="dataset folder, or mesh file")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="image to write, .png/.jpg/.tif (default: <subject>_preview.png or <mesh>_preview.png "
                   "in the current folder)")
    p.add_argument("--subject", metavar="NAME", default=None, help="dataset subject (default: the first one)")
    p.add_argument("--expressions", metavar="NAME", nargs="+", default=None,
                   help="dataset expressions to show, in order (default: neutral and every unit)")
    p.add_argument("--maps", metavar="DIR", default=None,
                   help="mesh mode: folder of <kind>.<udim>.<ext> maps (albedo, specular, roughness, normal)")
    p.add_argument("--no-maps", action="store_true", help="ignore texture maps: default skin material everywhere")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="pixels per side of each render (default: 256 per sheet cell, 768 for one mesh)")
    p.add_argument("--columns", type=int, default=None, metavar="N", help="contact sheet columns (default: square-ish)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        return _run_dataset(args, path)
    if path.suffix.lower() in MESH_SUFFIXES:
        return _run_mesh(args, path)
    raise ExpDiffInputError(path, "not found, or neither a dataset folder nor a mesh file "
                                  f"({', '.join(MESH_SUFFIXES)})")


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise PublishError(f"{out}: already exists; pass --overwrite to replace it")
    return out


def _run_dataset(args: argparse.Namespace, root: Path) -> int:
    from ..io.dataset import Dataset
    from ..render.contact_sheet import render_expression_sheet
    from ..render.preview import write_preview

    dataset = Dataset(root)
    subject = args.subject or (dataset.subjects[0] if dataset.subjects else None)
    if subject not in dataset.subjects:
        raise ExpDiffInputError(root, f"subject {subject!r} not in this dataset (has {', '.join(dataset.subjects)})")
    names = args.expressions or dataset.expressions
    unknown = [e for e in names if e not in dataset.expressions]
    if unknown:
        raise ExpDiffInputError(root, f"expression(s) {unknown} not in this dataset")
    out = _check_out(Path(args.out or f"{subject}_preview.png"), args.overwrite)
    template = dataset.template()
    poses = {e: dataset.load_vertices(subject, e) for e in names}
    render_kinds = [k for k in ("albedo", "specular", "roughness", "normal") if k in dataset.map_kinds]
    maps = None if args.no_maps else {e: dataset.load_maps(subject, e, render_kinds) for e in names}
    neutral = template.with_vertices(poses["neutral"]) if "neutral" in poses else template
    sheet = render_expression_sheet(neutral, poses, maps, size=args.size or 256, columns=args.columns,
                                    title=f"{dataset.manifest.get('name', root.name)} / {subject}")
    write_preview(out, sheet, overwrite=args.overwrite)
    print(f"wrote {out} ({len(names)} expressions of {subject}, {sheet.shape[1]}x{sheet.shape[0]})")
    return 0


def _run_mesh(args: argparse.Namespace, mesh_path: Path) -> int:
    from ..io.mesh import read_mesh
    from ..io.textures import TextureSet
    from ..render.preview import render_preview, write_preview

    out = _check_out(Path(args.out or f"{mesh_path.stem}_preview.png"), args.overwrite)
    mesh = read_mesh(mesh_path)
    maps = None
    if args.maps and not args.no_maps:
        textures = TextureSet.from_folder(args.maps, kinds=("albedo", "specular", "roughness", "normal"))
        maps = {kind: textures.read(kind) for kind in textures.kinds}
    size = args.size or 768
    write_preview(out, render_preview(mesh, maps, width=size, height=size), overwrite=args.overwrite)
    print(f"wrote {out} ({mesh.n_vertices} vertices, {size}x{size})")
    return 0
