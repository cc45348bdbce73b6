"""UV raster round trip and mesh recovery figures (issue "Unified representation", acceptance).

    python benchmarks/raster_roundtrip.py [--ict DIR] [--timings 512,1024,2048,4096] [--json OUT.json]

Prints, and optionally writes as JSON:
- raster build / rasterise / sampler timings per tile resolution on the ICT-FaceKit skin (M_Face, M_BackHead);
- for every ICT expression: displacement -> position map at 512^2 per tile -> sampled back, mean vertex error
  over moving skin vertices (|d| > 0.01 mm) in mm and in % of the mean displacement, least squares (the
  shipped sampler) and plain bilinear sampling at the vertex UVs;
- the same on degraded maps (texel noise, 1-texel blur) for jawOpen and eyeBlink_R;
- mesh recovery off the skin (eyes, teeth, mouth socket): mean error per material group over all expressions
  when those vertices follow the skin (shipped) and when they stay at the neutral;
- our synthetic template (``synth.factory.ProceduralSource``) at 128^2 and 256^2: the error must fall as
  the resolution rises.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from expdiff_core.io.mesh import FaceMesh, read_obj
from expdiff_core.uv import (PositionMapConfig, VertexSampler, position_maps, rasterize_maps, recover_mesh,
                             sample_displacements, uv_raster)

DEFAULT_ICT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ict-facekit"
ICT_SKIN = ("M_Face", "M_BackHead")
MOVING_CM = 1e-3  # 0.01 mm
NAMED = ("jawOpen", "mouthSmile_L", "browInnerUp_L", "eyeBlink_R")


def roundtrip(mesh: FaceMesh, rasters, sampler: VertexSampler, delta: np.ndarray, scale: float,
              degrade=None) -> dict[str, float]:
    """Errors (mm, and % of the mean displacement) of sampling back the position map of ``delta`` (cm)."""
    maps = position_maps(mesh.vertices + delta, mesh.vertices, rasters, scale)
    if degrade is not None:
        maps = {u: degrade(m) for u, m in maps.items()}
    least_squares, covered = sample_displacements(maps, mesh, rasters, scale, sampler)
    bilinear = sampler.sample_bilinear(maps) * scale
    moving = covered & (np.linalg.norm(delta, axis=1) > MOVING_CM)
    mean = float(np.linalg.norm(delta[moving], axis=1).mean()) if moving.any() else 0.0
    out = {"moving_vertices": int(moving.sum()), "mean_displacement_mm": 10 * mean}
    for label, sampled in (("least_squares", least_squares), ("bilinear", bilinear)):
        error = float(np.linalg.norm(sampled[moving] - delta[moving], axis=1).mean()) if moving.any() else 0.0
        out[f"{label}_error_mm"] = 10 * error
        out[f"{label}_error_pct"] = 100 * error / mean if mean else float("nan")
    return out


def timings(mesh: FaceMesh, resolutions: list[int], delta: np.ndarray) -> list[dict[str, float]]:
    rows = []
    for res in resolutions:
        t0 = time.perf_counter()
        rasters = uv_raster(mesh, res, groups=ICT_SKIN)
        t1 = time.perf_counter()
        rasterize_maps(rasters, delta)
        t2 = time.perf_counter()
        sampler = VertexSampler(mesh, rasters)
        t3 = time.perf_counter()
        sampler.sample(rasterize_maps(rasters, delta))
        t4 = time.perf_counter() - (t2 - t1)  # the sample's own rasterisation is not sampling time
        rows.append({"resolution": res, "build_s": t1 - t0, "rasterize_3ch_s": t2 - t1,
                     "sampler_setup_s": t3 - t2, "sample_3ch_s": t4 - t3})
        print(f"  {res:5d}^2  build {t1 - t0:6.2f} s  rasterise 3ch {t2 - t1:6.2f} s  "
              f"sampler setup {t3 - t2:6.2f} s  sample 3ch {t4 - t3:6.2f} s")
        del rasters, sampler
    return rows


def ict_section(ict_dir: Path, timing_resolutions: list[int]) -> dict:
    mesh = read_obj(ict_dir / "generic_neutral_mesh.obj")
    data = np.load(ict_dir / "ict_facekit_deltas.npz")
    names = [str(s) for s in data["expression_names"]]
    expressions = data["expression_deltas"]
    scale = PositionMapConfig().scale_in(mesh.units)
    report: dict = {"vertices": mesh.n_vertices, "scale_cm": PositionMapConfig().scale_cm}

    print("ICT-FaceKit skin raster timings (2 tiles):")
    report["timings"] = timings(mesh, timing_resolutions, expressions[names.index("jawOpen")])

    rasters = uv_raster(mesh, 512, groups=ICT_SKIN)
    sampler = VertexSampler(mesh, rasters)
    print(f"\nICT round trip at 512^2 per tile ({int(sampler.covered.sum())} skin vertices), mean vertex error "
          "over moving skin vertices:")
    print(f"  {'expression':18s} {'mean |d| mm':>11s} {'LSQ mm':>9s} {'LSQ %':>7s} {'bilinear %':>10s}")
    per_expression = {}
    for name, delta in zip(names, expressions):
        row = roundtrip(mesh, rasters, sampler, delta, scale)
        per_expression[name] = row
        mark = " *" if name in NAMED else ""
        print(f"  {name:18s} {row['mean_displacement_mm']:11.3f} {row['least_squares_error_mm']:9.5f} "
              f"{row['least_squares_error_pct']:7.3f} {row['bilinear_error_pct']:10.3f}{mark}")
    skin_expressions = {n: r for n, r in per_expression.items() if r["mean_displacement_mm"] >= 0.1}
    worst = max(skin_expressions, key=lambda n: skin_expressions[n]["least_squares_error_pct"])
    print(f"  worst of the {len(skin_expressions)} expressions moving the skin by >= 0.1 mm on average: "
          f"{worst} {skin_expressions[worst]['least_squares_error_pct']:.3f}% (target < 1%)")
    report["roundtrip_512"] = per_expression

    rng = np.random.default_rng(0)
    degradations = {
        "noise_sigma_0.003": lambda m: m + rng.normal(0, 0.003, m.shape).astype(np.float32),
        "blur_sigma_1px": lambda m: ndimage.gaussian_filter(m, (0, 1.0, 1.0)),
    }
    print("\nDegraded maps (what a decoder may return), % of the mean displacement:")
    report["degraded_512"] = {}
    for label, fn in degradations.items():
        for name in ("jawOpen", "eyeBlink_R"):
            row = roundtrip(mesh, rasters, sampler, expressions[names.index(name)], scale, fn)
            report["degraded_512"][f"{label}/{name}"] = row
            print(f"  {label:18s} {name:11s} least squares {row['least_squares_error_pct']:7.3f}%  "
                  f"bilinear {row['bilinear_error_pct']:7.3f}%")

    print("\nRecovery off the skin, mean error (mm) over all expressions, per material group:")
    neutral_maps = position_maps(mesh.vertices, mesh.vertices, rasters, scale)
    group_of_vertex = np.full(mesh.n_vertices, -1)
    group_of_vertex[mesh.face_vertex_indices] = np.repeat(mesh.face_groups, mesh.face_vertex_counts)
    off_skin = ~sampler.covered
    follow = np.zeros(mesh.n_vertices)
    stay = np.zeros(mesh.n_vertices)
    for delta in expressions:
        P_n = position_maps(mesh.vertices + delta, mesh.vertices, rasters, scale)
        recovered = recover_mesh(mesh, P_n, neutral_maps, rasters, scale, sampler=sampler)
        follow += np.linalg.norm(recovered.vertices - (mesh.vertices + delta), axis=1)
        stay += np.linalg.norm(delta, axis=1)
    follow, stay = follow / len(expressions), stay / len(expressions)
    report["recovery_off_skin_mm"] = {}
    print(f"  {'group':16s} {'follow skin':>11s} {'stay':>8s}")
    for g in np.unique(group_of_vertex[off_skin]):
        sel = off_skin & (group_of_vertex == g)
        name = mesh.group_names[g]
        report["recovery_off_skin_mm"][name] = {"follow_skin": 10 * follow[sel].mean(), "stay": 10 * stay[sel].mean()}
        print(f"  {name:16s} {10 * follow[sel].mean():11.3f} {10 * stay[sel].mean():8.3f}")
    print(f"  {'all off-skin':16s} {10 * follow[off_skin].mean():11.3f} {10 * stay[off_skin].mean():8.3f}")
    return report


def synthetic_section(resolutions=(128, 256), seeds=(0, 1)) -> dict | None:
    try:
        from expdiff_core.synth.factory import ProceduralSource
    except ImportError as exc:
        print(f"\nSynthetic template: skipped ({exc})")
        return None
    source = ProceduralSource()
    template = source.template
    scale = PositionMapConfig().scale_in(template.units)
    identities = [source.identity(seed) for seed in seeds]
    deltas = [(identity, unit, source.expression(identity, unit) - identity.neutral)
              for identity in identities for unit in source.units]
    report: dict = {"vertices": template.n_vertices, "identities": list(seeds), "units": len(source.units)}
    print(f"\nSynthetic template ({template.n_vertices} vertices), {len(seeds)} identities x "
          f"{len(source.units)} units, mean vertex error over moving skin vertices:")
    for res in resolutions:
        rasters = uv_raster(template, res, groups=source.skin_groups)
        sampler = VertexSampler(template, rasters)
        rows = []
        for identity, unit, delta in deltas:
            neutral = template.with_vertices(identity.neutral)
            row = roundtrip(neutral, rasters, sampler, delta, scale)
            if row["moving_vertices"]:
                rows.append({**row, "unit": f"{unit}/{identity.seed}"})
        errors = np.array([r["least_squares_error_mm"] for r in rows])
        means = np.array([r["mean_displacement_mm"] for r in rows])
        counts = np.array([r["moving_vertices"] for r in rows])
        pooled = 100 * (errors * counts).sum() / (means * counts).sum()  # over all units' moving vertices
        pcts = np.array([r["least_squares_error_pct"] for r in rows])
        bilinear = np.array([r["bilinear_error_pct"] for r in rows])
        worst = rows[int(np.argmax(pcts))]
        report[str(res)] = {"mean_error_mm": float(errors.mean()), "pooled_error_pct": float(pooled),
                            "mean_unit_error_pct": float(pcts.mean()), "worst_unit_error_pct": float(pcts.max()),
                            "worst_unit": worst["unit"], "units_over_1pct": int((pcts > 1).sum()),
                            "bilinear_mean_unit_error_pct": float(bilinear.mean())}
        print(f"  {res:4d}^2  mean error {errors.mean():.5f} mm; over all units' moving vertices {pooled:.3f}% of "
              f"the displacement; per unit mean {pcts.mean():.3f}%, worst {pcts.max():.2f}% ({worst['unit']}), "
              f"{int((pcts > 1).sum())} of {len(pcts)} over 1%; bilinear per unit mean {bilinear.mean():.3f}%")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="UV position-map round trip and mesh recovery figures.")
    parser.add_argument("--ict", type=Path, default=DEFAULT_ICT, help="ICT-FaceKit folder (default: shared data)")
    parser.add_argument("--timings", default="512,1024,2048",
                        help="comma-separated tile resolutions to time (add 4096 for the large case, ~30 s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    report: dict = {"python": sys.version.split()[0], "machine": platform.machine()}
    if (args.ict / "generic_neutral_mesh.obj").is_file():
        report["ict"] = ict_section(args.ict, [int(r) for r in args.timings.split(",") if r])
    else:
        print(f"ICT-FaceKit: skipped ({args.ict} not found)")
    report["synthetic"] = synthetic_section()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
