"""Prompt control of a trained pipeline on a held-out identity (issue "The ExpDiff model", acceptance).

    python benchmarks/prompt_control.py --model models/expdiff --dataset HELDOUT [--subject s0000]

Prints, for one identity:
- prompt interpolation jawOpen -> mouthSmile_L at w = 0, 0.25, ..., 1: mean vertex distance from the w = 0
  mesh and the position along the w=0 -> w=1 direction (projection, 0 at w=0 and 1 at w=1); geometry changes
  monotonically when both rise with w;
- the novel prompt "nose right": mean and max vertex distance from the generated neutral (Eq. 9 result);
- jawOpen chin travel: displacement of the vertex the true jawOpen moves most, generated vs true (mm);
- "smile on both sides": the lift (+Y, mm) at the vertex mouthSmile_L lifts most and the one mouthSmile_R lifts most;
- sides, for every _L/_R pair: own half over other half mean displacement (>= 3 wanted) and the cosine of the
  _L offsets with the mirrored _R offsets (>= 0.9 wanted), with the same figures for the truth when the
  dataset has the units.
"""

from __future__ import annotations

import argparse

import numpy as np

from expdiff_core.evaluation.sides import side_pairs, sides_table
from expdiff_core.facs import NEUTRAL
from expdiff_core.pipelines.expdiff import Expression

from _subject import load_subject, subject_arguments  # benchmarks/_subject.py (scripts run from benchmarks/)

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subject_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    loaded = load_subject(args)
    pipe, data, subject, mesh, maps = loaded.pipe, loaded.data, loaded.name, loaded.mesh, loaded.maps
    blends = [f"jawOpen->mouthSmile_L@{w}" for w in WEIGHTS]
    pairs = [u for pair in side_pairs() for u in pair] + ["jawOpen"]
    out = pipe(mesh, maps, [NEUTRAL, *blends, "nose right", "smile on both sides", *pairs], seed=args.seed,
               steps=args.steps, progress=False)
    scale = loaded.mm
    meshes = [out.vertices[Expression.parse(spec).label].astype(np.float64) for spec in blends]
    first, last = meshes[0], meshes[-1]
    direction = (last - first).ravel()
    print(f"{args.model} on {args.dataset}/{subject}, seed {args.seed}")
    print("interpolation jawOpen -> mouthSmile_L")
    print("  w     distance from w=0 (mm)   position along w=0 -> w=1")
    distances, positions = [], []
    for w, mesh_w in zip(WEIGHTS, meshes):
        distances.append(np.linalg.norm(mesh_w - first, axis=1).mean() * scale)
        positions.append(float((mesh_w - first).ravel() @ direction / max(direction @ direction, 1e-30)))
        print(f"  {w:<5} {distances[-1]:>10.3f}               {positions[-1]:>8.3f}")
    monotonic = all(b >= a for a, b in zip(distances, distances[1:])) and all(
        b >= a for a, b in zip(positions, positions[1:]))
    print(f"  monotonic: {'yes' if monotonic else 'NO'}")
    neutral = out.vertices[NEUTRAL].astype(np.float64)
    nose = np.linalg.norm(out.vertices[Expression.parse("nose right").label] - neutral, axis=1) * scale
    print(f"novel prompt 'nose right': mean {nose.mean():.3f} mm, max {nose.max():.3f} mm from the generated neutral")
    both = out.vertices[Expression.parse("smile on both sides").label] - neutral
    corners = [int(np.argmax(out.vertices[u][:, 1] - neutral[:, 1])) for u in ("mouthSmile_L", "mouthSmile_R")]
    print(f"'smile on both sides': lifts the left corner {both[corners[0], 1] * scale:.2f} mm, the right corner "
          f"{both[corners[1], 1] * scale:.2f} mm (mouthSmile_L/_R lift them "
          f"{(out.vertices['mouthSmile_L'] - neutral)[corners[0], 1] * scale:.2f} / "
          f"{(out.vertices['mouthSmile_R'] - neutral)[corners[1], 1] * scale:.2f} mm)")
    if "jawOpen" in data.units:
        true_jaw = data.load_vertices(subject, "jawOpen").astype(np.float64) - mesh.vertices
        chin = int(np.argmax(np.linalg.norm(true_jaw, axis=1)))
        travel = np.linalg.norm(out.vertices["jawOpen"][chin] - neutral[chin]) * scale
        truth_travel = np.linalg.norm(true_jaw[chin]) * scale
        print(f"jawOpen chin travel: {travel:.2f} mm generated, {truth_travel:.2f} mm true "
              f"({100 * (travel / truth_travel - 1):+.1f}%)")
    generated = sides_table(neutral, {u: out.vertices[u].astype(np.float64) for u in pairs})
    truth = {}
    if all(u in data.units for u in pairs):
        truth = {r["pair"]: r for r in sides_table(mesh.vertices.astype(np.float64),
                                                   {u: data.load_vertices(subject, u).astype(np.float64) for u in pairs})}
    def ratio(x: float) -> str:
        return f"{x:>6.1f}" if x < 1000 else "  >999"

    print("sides (own half / other half mean displacement; cosine of _L with mirrored _R)")
    print(f"  {'pair':<16} {'L ratio':>8} {'R ratio':>8} {'mirror':>7}   truth: {'L':>6} {'R':>6} {'mirror':>7}")
    for r in generated:
        t = truth.get(r["pair"])
        tail = f"{ratio(t['ratio_L'])} {ratio(t['ratio_R'])} {t['mirror_cosine']:>7.3f}" if t else "-"
        print(f"  {r['pair']:<16}   {ratio(r['ratio_L'])}   {ratio(r['ratio_R'])} {r['mirror_cosine']:>7.3f}          {tail}")
    ok = all(min(r["ratio_L"], r["ratio_R"]) >= 3 and r["mirror_cosine"] >= 0.9 for r in generated)
    print(f"  every pair >= 3x on its own side and mirror cosine >= 0.9: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
