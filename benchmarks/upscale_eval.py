"""Upscaling stage acceptance figures (issue 13): held-out PSNR table, peak memory, time per megapixel.

    python benchmarks/upscale_eval.py [--model models/upscaler] [--no-w-model FOLDER] [--identities 2]
                                      [--out models/upscaler/EVAL.md] [--perf] [--x4plus-size 256]

Table: held-out synthetic identities (seeds from ``EVAL_SEED``, disjoint from training), truth made by the
factory at 4x the model resolution, inputs area-reduced to the model resolution; PSNR (dB) of the whole face
tile and inside the wrinkle mask (true change > 0.01), for albedo and normal, of:
guided SR (the model, through the texture transfer as the build uses it), (a) Lanczos (OpenImageIO lanczos3
of the expression map; and through the transfer), (b) the same network trained without W_n, (c) today's
bilinear change transfer, and the official Compact untuned.

--perf: in a fresh process per network, a (3, S, S) albedo map upscaled x4 (S = 1024 for Compact, --x4plus-size
for x4plus, whose cost on CPU is ~30x Compact's): peak resident memory (MB, whole process, ru_maxrss) and
seconds per output megapixel, single thread unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _perf_child(method: str, size: int) -> None:
    import resource

    import numpy as np
    import torch

    from expdiff_core.config import load_settings
    from expdiff_core.upscaling.maps import load_map_upscaler

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    up = load_map_upscaler(load_settings(), method)
    rng = np.random.default_rng(0)
    base = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 3, size // 16, size // 16), dtype=np.float32)),
                                           size=(size, size), mode="bicubic")[0].clamp(0, 1).numpy()
    t0 = time.perf_counter()
    out = up.upscale(base, base * 0.98, None, "albedo", 4)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "input": size, "output": out.shape[-1], "seconds": seconds,
                      "seconds_per_output_mp": seconds / (out.shape[-1] * out.shape[-2] / 1e6),
                      "peak_rss_mb": peak_mb, "tile": up.tile}))


def perf(x4plus_size: int) -> list[dict]:
    rows = []
    for method, size in (("compact", 1024), ("x4plus", x4plus_size)):
        done = subprocess.run([sys.executable, __file__, "--perf-child", method, str(size)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{method}: {r['input']}^2 -> {r['output']}^2 in {r['seconds']:.1f} s = "
              f"{r['seconds_per_output_mp']:.2f} s per output megapixel; peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(tile {r['tile']})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="guided upscaler folder (default: the bundled models/upscaler)")
    parser.add_argument("--no-w-model", default=None, help="the same network trained without W_n (ablation b)")
    parser.add_argument("--identities", type=int, default=2)
    parser.add_argument("--val", action="store_true",
                        help="score on the validation identities (VAL_SEED), to choose between variants; the "
                        "default, the held-out ones (EVAL_SEED), is for reporting")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--perf", action="store_true", help="also measure peak memory and time per megapixel")
    parser.add_argument("--x4plus-size", type=int, default=256)
    parser.add_argument("--perf-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.perf_child:
        _perf_child(args.perf_child[0], int(args.perf_child[1]))
        return

    import torch

    from expdiff_core.config import load_settings
    from expdiff_core.upscaling import evaluate as ev
    from expdiff_core.upscaling.maps import load_map_upscaler
    from expdiff_core.upscaling.official import official_folder

    torch.set_num_threads(1)
    settings = load_settings()
    t0 = time.perf_counter()
    cases = ev.eval_cases(args.identities, cache_dir=settings.cache_path / "raster",
                          seed=ev.VAL_SEED if args.val else ev.EVAL_SEED)
    guided = load_map_upscaler(settings, "compact", args.model)
    official = load_map_upscaler(settings, "compact", str(official_folder(settings, "compact")))
    methods = {f"guided SR ({args.model or 'bundled models/upscaler'})": ev.network_method(guided)}
    if args.no_w_model:
        methods["(b) same network without W_n"] = ev.network_method(load_map_upscaler(settings, "compact",
                                                                                        args.no_w_model))
    methods.update({"(a) Lanczos": ev.method_lanczos, "(a') Lanczos through the transfer": ev.method_lanczos_transfer,
                    "(c) bilinear change transfer (before)": ev.method_bilinear,
                    "official Compact, untuned, through the transfer": ev.network_method(official)})
    results = ev.evaluate(methods, cases)
    units = sorted({c.expression for c in cases})
    table = ev.markdown_table(results, ["albedo", "normal"])
    header = (f"{'Validation' if args.val else 'Held-out'} PSNR (dB): {args.identities} identities x {len(units)} units ({', '.join(units)}), UDIM 1001, "
              f"truth at 512^2, inputs at 128^2; wrinkles = texels whose true change > 0.01.\n\n")
    print(header + table)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        Path(args.out).write_text(header + table + "\n")
    if args.perf:
        perf(args.x4plus_size)


if __name__ == "__main__":
    main()
