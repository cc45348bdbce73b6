"""ExpDiff benchmark suite: one command, a table on stdout and ``benchmarks/results/<date>-<machine>.json``.

    OMP_NUM_THREADS=1 python benchmarks/suite.py [--quick] [--model models/expdiff] [--device cpu]
                                                 [--night-json F] [--memory-json F] [--out benchmarks/results]

Measured in this run, on this machine (ratios are the acceptance figures: machine noise cancels in them):

- dense matmul FLOP/s (fp32 n x n, best of several) - the machine's reference;
- denoiser forward at the demo's batch (its 57 expressions, at most the denoiser's ``sampling_batch``): tokens/s
  (expressions/s for the subspace denoiser), achieved FLOP/s (torch's FLOP counter) and the fraction of the matmul
  FLOP/s (``denoiser_matmul_fraction``), eager and (full runs) through
  ``torch.compile`` (``denoiser_matmul_fraction_compiled``); when the bundled denoiser is not the latent
  transformer, also the production transformer's (random weights, one expression at 32^2 latents:
  ``production_denoiser_matmul_fraction``, what ``cost_model.py`` scales a GPU by);
- all 57 expressions sampled in the denoiser's batches vs one at a time (same steps): ``batched_speedup``;
- all 57 expressions sampled (the model's steps) and all their maps decoded: ``decode_to_diffuse_ratio``;
- schedulers DDPM-1000, DDIM-50, DPM-Solver++-20 and -10 on held-out synthetic identities (our factory, seeds
  outside the training corpus): sampling seconds (the whole generation's beside them), FVD (mean vertex
  error, mm) and change-PSNR (dB: PSNR of the transferred BRDF maps' change from the neutral against the true
  change, mean over kinds), at noise scale 1 (``dpm20_*``: the samplers of one distribution, like for like) and,
  for a model sampled colder, at its own noise scale (``dpm20_*_model_noise``);
- codec encode / decode maps/s (model resolution) and UV raster texels/s;
- upscaler output megapixels/s, guided Compact and x4plus (x4 of one albedo map);
- the demo build (``expdiff build --demo``'s stages with the upscale stage, all 56 units, in-process, at the
  model's own prior strength): wall seconds and peak resident GB per stage;
- ``night_two_worker_speedup`` and ``peak_gb_56_units_4k`` come from their own, longer benchmarks
  (night_fanout.py, texture_memory.py): the newest ``benchmarks/results/night-fanout-*.json`` /
  ``texture-memory-*.json`` unless given; the JSON names the file.

Every sampling figure runs the whole chain from pure noise (strength 1): a model whose default prior strength
is 0 samples nothing in a build, and would time nothing there.

``--quick``: a smoke run (smaller sizes, fewer identities and steps; the DDPM row runs 100 steps, named so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from texture_memory import PeakMemory  # noqa: E402

SCHEDULERS = (("ddpm", 1000), ("ddim", 50), ("dpm++", 20), ("dpm++", 10))
# Sampling figures run the whole chain from pure noise: a model whose default prior strength is 0 samples
# nothing in a build, and would time nothing.
FULL_CHAIN = 1.0
DEMO_EXPRESSIONS = 57  # the neutral and the 56 units
HELD_OUT_SEED = 880_001  # held-out identities: outside every identity_seed() of the training corpus


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# ------------------------------------------------------------------------------------------ hardware
def matmul_flops(n: int, device: torch.device, repeats: int = 5) -> float:
    """Dense fp32 matmul FLOP/s (2 n^3 per product) on ``device``, best of ``repeats``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def run():
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    return 2 * n ** 3 / best_seconds(run, repeats)


# ------------------------------------------------------------------------------------------ denoiser
def neutral_latent_shape(pipe) -> tuple[int, ...]:
    """(M, C, h, w): the neutral's latents the denoiser is conditioned on (either denoiser class)."""
    den = pipe.denoiser
    return (den.n_maps, den.condition_channels, *den.latent_hw)


def denoiser_inputs(pipe, batch: int):
    """(noisy sample, timestep, neutral latents, prompt tokens, mask) for one forward at ``batch`` expressions."""
    from expdiff_core import facs
    from expdiff_core.pipelines.expdiff import Expression

    units = list(facs.UNIT_NAMES)
    exprs = [Expression.parse(units[i % len(units)]) for i in range(batch)]
    tokens, mask = pipe.prompt_tokens(exprs)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *pipe.denoiser.diffused_shape(), generator=gen).to(pipe.device)
    cond = torch.randn(batch, *neutral_latent_shape(pipe), generator=gen).to(pipe.device)
    return x, torch.tensor(500, device=pipe.device), cond, tokens.to(pipe.device), mask.to(pipe.device)


def forward_figures(den: torch.nn.Module, args: tuple, device: torch.device, repeats: int,
                    compiled: bool = False) -> dict[str, Any]:
    """FLOPs (torch's FLOP counter) and best wall seconds of ``den(*args)``; ``compiled``: through
    ``torch.compile`` (a copy of the network; the one-off compile's seconds are reported, not counted)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from expdiff_core.device import autocast

    compile_s = None
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            den(*args)
        flops = float(counter.get_total_flops())
        if compiled:
            den = copy.deepcopy(den)
            den.compile()
            start = time.perf_counter()
            den(*args)
            compile_s = time.perf_counter() - start

        def run():
            with autocast(device):
                den(*args)
            if device.type == "cuda":
                torch.cuda.synchronize()

        seconds = best_seconds(run, repeats)
    return {"seconds": seconds, "flops_per_forward": flops, "flops_per_s": flops / seconds, "compile_s": compile_s}


def patch_tokens(den, batch: int) -> int | None:
    """A latent-map transformer's patch tokens for ``batch`` expressions; None for the subspace denoiser, whose
    sample is one vector."""
    if not hasattr(den.config, "patch_size"):
        return None
    (h, w), p = den.latent_hw, den.config.patch_size
    return batch * den.n_maps * (h // p) * (w // p)


def denoiser_figures(pipe, batch: int, repeats: int, compiled: bool = False) -> dict[str, Any]:
    """Throughput and achieved FLOP/s of one forward of the pipeline's denoiser at ``batch`` expressions."""
    den = pipe.denoiser
    figures = forward_figures(den, denoiser_inputs(pipe, batch), pipe.device, repeats, compiled)
    tokens = patch_tokens(den, batch)
    return {"denoiser": type(den).__name__, "batch": batch, "tokens": tokens,
            "expressions_per_s": batch / figures["seconds"],
            "tokens_per_s": tokens / figures["seconds"] if tokens else None, **figures}


def production_denoiser_figures(kinds: list[str], n_udims: int, latent: int, repeats: int,
                                device: torch.device) -> dict[str, Any]:
    """Achieved FLOP/s of the production latent transformer (``preset="production"``, random weights: speed does
    not depend on them) for one expression at ``latent``^2 latents: what the cost model scales a GPU by."""
    from expdiff_core.models.denoiser import ExpDiffDenoiser, denoiser_config

    torch.manual_seed(0)
    den = ExpDiffDenoiser(**denoiser_config(kinds, n_udims, 4, latent, preset="production",
                                            text_conditioning="encoder")).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, den.n_maps, 4, latent, latent, generator=gen).to(device)
    text = torch.randn(1, den.config.text_len, den.config.text_dim, generator=gen).to(device)
    mask = torch.ones(1, den.config.text_len, dtype=torch.bool, device=device)
    figures = forward_figures(den, (x, torch.tensor([500], device=device), x, text, mask), device, repeats)
    tokens = patch_tokens(den, 1)
    return {"latent": latent, "tokens": tokens, "tokens_per_s": tokens / figures["seconds"], **figures}


def throughput(figures: dict[str, Any]) -> str:
    """'N tokens/s' for a transformer, 'N expressions/s' for the subspace denoiser."""
    if figures["tokens_per_s"]:
        return f"{figures['tokens_per_s']:10.0f} tokens/s"
    return f"{figures['expressions_per_s']:10.0f} expressions/s"


def sampling_inputs(pipe, n_expressions: int):
    """(expressions: neutral + the first units, made-up neutral latents (M, C, h, w)) to sample from."""
    from expdiff_core import facs
    from expdiff_core.build import expression_list

    exprs = expression_list(list(facs.UNIT_NAMES)[:n_expressions - 1])
    z0 = torch.randn(*neutral_latent_shape(pipe), generator=torch.Generator().manual_seed(0))
    return exprs, z0


def batched_vs_single(pipe, n_expressions: int, steps: int) -> dict[str, float]:
    """Sampling ``n_expressions`` (neutral + units) in the denoiser's batches (``sampling_batch``) vs one at a
    time, same steps, from pure noise (``FULL_CHAIN``)."""
    exprs, z0 = sampling_inputs(pipe, n_expressions)
    pipe.prompt_tokens(exprs)  # the prompts' embeddings are cached: whichever run came first would pay for them
    t = {}
    for name, size in (("batched", pipe.denoiser.sampling_batch), ("one_at_a_time", 1)):
        start = time.perf_counter()
        pipe.sample(z0, exprs, steps=steps, batch_size=size, strength=FULL_CHAIN, progress=False)
        t[name] = time.perf_counter() - start
    return {"expressions": len(exprs), "steps": steps, "batch": pipe.denoiser.sampling_batch, "batched_s": t["batched"],
            "one_at_a_time_s": t["one_at_a_time"], "speedup": t["one_at_a_time"] / t["batched"]}


def flat_neutral_maps(pipe) -> dict[str, dict[int, np.ndarray]] | None:
    """Mid-grey neutral maps {kind: {udim: (3, r, r)}} for a change model to decode onto (None otherwise)."""
    if pipe.change_codec is None:
        return None
    r = pipe.config.resolution
    return {k: {u: np.full((3, r, r), 0.5, np.float32) for u in pipe.config.udims} for k in pipe.config.kinds}


def decode_vs_diffuse(pipe, n_expressions: int, steps: int | None) -> dict[str, float]:
    """Seconds to sample ``n_expressions`` from pure noise (the denoiser's batches, the model's steps) and to decode all
    their maps (``ExpDiffPipeline.decode``, as the build's decode stage does when sampling changed them)."""
    exprs, z0 = sampling_inputs(pipe, n_expressions)
    start = time.perf_counter()
    latents = pipe.sample(z0, exprs, steps=steps, strength=FULL_CHAIN, progress=False)
    diffuse = time.perf_counter() - start
    start = time.perf_counter()
    pipe.decode(latents, neutral_maps=flat_neutral_maps(pipe))
    decode = time.perf_counter() - start
    return {"expressions": len(exprs), "steps": int(steps or pipe.config.steps),
            "diffuse_s": diffuse, "decode_s": decode, "ratio": decode / diffuse}


# ------------------------------------------------------------------------------------------ schedulers
def held_out_subjects(pipe, count: int, units: list[str]):
    """(mesh, neutral BRDF maps, {unit: (vertices, maps)}) for ``count`` factory identities at model resolution."""
    from expdiff_core.synth.factory import ProceduralSource, iter_expressions, skin_rasters

    source = ProceduralSource()
    rasters = skin_rasters(source, pipe.config.resolution)
    kinds = [k for k in pipe.config.kinds if k != "position"]
    subjects = []
    for i in range(count):
        identity = source.identity(HELD_OUT_SEED + i)
        truth = {}
        for name, vertices, maps in iter_expressions(source, identity, rasters):
            if name == "neutral" or name in units:
                truth[name] = (vertices, {k: {u: maps[k][u] for u in pipe.config.udims} for k in kinds})
            if len(truth) == len(units) + 1:
                break
        mesh = source.template.with_vertices(truth["neutral"][0], name=f"held_out_{i}")
        subjects.append((mesh, truth["neutral"][1], {u: truth[u] for u in units}))
    return subjects


def change_psnr(pred: np.ndarray, true: np.ndarray, neutral: np.ndarray) -> float:
    """PSNR (dB) of a predicted map's change from the neutral against the true change (both offset to 0.5)."""
    from expdiff_core.evaluation.metrics import psnr

    return psnr(np.clip(0.5 + pred - neutral, 0, 1), np.clip(0.5 + true - neutral, 0, 1))


def scheduler_rows(pipe, subjects, units: list[str], schedulers, noise_scale: float | None = None
                   ) -> list[dict[str, Any]]:
    """Per scheduler: sampling seconds, FVD and change-PSNR on ``subjects``; ``noise_scale``: the start noise's
    scale (None: the model's own)."""
    from expdiff_core.evaluation.metrics import fvd
    from expdiff_core.pipelines.expdiff import transfer_map

    rows = []
    sample = pipe.sample
    sampling = [0.0]

    def timed_sample(*args, **kwargs):  # a scheduler's speed is its sampling time, not the whole call's
        if noise_scale is not None:
            kwargs["noise_scale"] = noise_scale
        start = time.perf_counter()
        try:
            return sample(*args, **kwargs)
        finally:
            sampling[0] += time.perf_counter() - start

    for sampler, steps in schedulers:
        seconds, fvds, psnrs = 0.0, [], []
        sampling[0] = 0.0
        for mesh, neutral_maps, truth in subjects:
            start = time.perf_counter()
            pipe.sample = timed_sample
            try:
                out = pipe(mesh, neutral_maps, units, seed=0, steps=steps, sampler=sampler, strength=FULL_CHAIN,
                           progress=False)
            finally:
                del pipe.sample  # the class's method again
            seconds += time.perf_counter() - start
            gen_neutral = out.maps["neutral"]
            for unit in units:
                vertices, maps = truth[unit]
                fvds.append(fvd(out.vertices[unit], vertices, mesh.units))
                for kind, tiles in neutral_maps.items():
                    for u, user in tiles.items():
                        pred = transfer_map(user, out.maps[unit][kind][u], gen_neutral[kind][u], kind)
                        psnrs.append(change_psnr(pred, maps[kind][u], user))
        name = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++": "DPM-Solver++"}[sampler] + f"-{steps}"
        rows.append({"scheduler": name, "sampler": sampler, "steps": steps, "seconds": sampling[0], "call_seconds": seconds,
                     "fvd_mm": float(np.mean(fvds)), "change_psnr_db": float(np.mean(psnrs))})
    return rows


# ------------------------------------------------------------------------------------------ codec, raster
def codec_figures(pipe, maps: int, repeats: int) -> dict[str, float]:
    r = pipe.config.resolution
    images = torch.rand(maps, 3, r, r, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        enc = best_seconds(lambda: pipe.codec.encode(images, "albedo"), repeats)
        m = len(pipe.config.kinds) * len(pipe.config.udims)
        per_expression = max(1, maps // m)
        codec = pipe.change_codec or pipe.codec  # what the build decodes with
        latents = torch.randn(per_expression, m, *codec.latent_shape(r, r))
        neutral_maps = flat_neutral_maps(pipe)
        dec = best_seconds(lambda: pipe.decode(latents, neutral_maps=neutral_maps), repeats)
    return {"resolution": r, "decoder": type(codec).__name__, "encode_maps_per_s": maps / enc,
            "decode_maps_per_s": per_expression * m / dec}


def raster_figures(resolution: int, repeats: int) -> dict[str, float]:
    from expdiff_core.synth.template import template_mesh
    from expdiff_core.uv.raster import uv_raster

    mesh = template_mesh()
    rasters = uv_raster(mesh, resolution)
    seconds = best_seconds(lambda: uv_raster(mesh, resolution), repeats)
    texels = len(rasters) * resolution * resolution
    return {"resolution": resolution, "tiles": len(rasters), "texels_per_s": texels / seconds}


def upscaler_figures(sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    """Output megapixels/s of each upscaler in ``sizes`` ({method: input size}), x4, one albedo map."""
    from expdiff_core.config import load_settings
    from expdiff_core.upscaling.maps import load_map_upscaler

    settings = load_settings()
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for method, size in sizes.items():
        up = load_map_upscaler(settings, method)
        base = rng.random((3, size, size), dtype=np.float32)
        seconds = best_seconds(lambda: up.upscale(base, base * 0.98, None, "albedo", 4), repeats)
        out[method] = {"input": size, "output": 4 * size, "seconds": seconds,
                       "output_mp_per_s": (4 * size) ** 2 / 1e6 / seconds}
    return out


# ------------------------------------------------------------------------------------------ demo build
def demo_build(model: Path, work: Path, units: int, steps: int | None, device: str) -> dict[str, Any]:
    """``expdiff build --demo``'s stages in this process: seconds and peak resident GB per stage."""
    from expdiff_core import build, facs
    from expdiff_core.demo import write_demo_asset

    asset = write_demo_asset(work / "asset")
    expressions = list(facs.UNIT_NAMES)[:units]
    build._cached_pipeline.cache_clear()
    peaks = PeakMemory()
    try:
        with peaks.stage("resolve model"):
            build.load_pipeline(model, device)
            build.load_pipeline(model, "cpu")
        with peaks.stage("ingest"):
            ingested = build.ingest(asset["mesh"], asset["textures"], model)
        with peaks.stage("encode"):
            encoded = build.encode_neutral(ingested, model, work, device=device)
        with peaks.stage("diffuse"):
            diffused = build.diffuse(encoded, model, expressions, work, steps=steps, device=device)
        with peaks.stage("decode"):
            decoded = build.decode(diffused, model, work, device=device)
        with peaks.stage("recover"):
            recovered = build.recover(decoded, ingested, model, work)
        with peaks.stage("upscale"):
            upscaled = build.upscale(decoded, ingested, work, device=device)
        with peaks.stage("textures"):
            textured = [build.transfer_textures(upscaled, ingested, k, work) for k in decoded["kinds"] if k != "position"]
        with peaks.stage("USD"):
            prov = dict(model_name="expdiff", model_version="bundled", seed=0, scheduler=diffused["sampler"],
                        steps=diffused["steps"])
            exported = build.export_usd(ingested, recovered, textured, "demo_head", work / "out", prov)
            build.validate_usd(exported)
        with peaks.stage("contact sheet"):
            build.contact_sheet(ingested, recovered, textured, work / "sheet.png")
    finally:
        peaks.close()
    return {"expressions": len(diffused["labels"]), "steps": diffused["steps"], "strength": diffused["strength"],
            "seconds": peaks.seconds,
            "peak_gb": {k: round(v, 3) for k, v in peaks.peaks.items()}, "total_seconds": sum(peaks.seconds.values()),
            "max_peak_gb": max(peaks.peaks.values())}


def newest(pattern: str) -> Path | None:
    found = sorted((REPO / "benchmarks" / "results").glob(pattern))
    return found[-1] if found else None


def side_benchmarks(result: dict[str, Any], night: Path | None, memory: Path | None,
                    say: Callable[[str], None]) -> None:
    """Add the night fan-out and 56-unit 4K memory figures from their own benchmarks' JSON files."""
    night = night or newest("night-fanout-*.json")
    if night and night.is_file():
        data = json.loads(night.read_text())
        result["night_two_worker_speedup"] = data["speedup"]
        result["night_source"] = str(night.relative_to(REPO) if night.is_relative_to(REPO) else night)
        say(f"night of {data['characters']} characters, 2 vs 1 worker  {data['speedup']:.2f}x   ({result['night_source']})")
    else:
        result["night_two_worker_speedup"] = None
        say("night fan-out: not measured (run benchmarks/night_fanout.py --json ...)")
    memory = memory or newest("texture-memory-*.json")
    if memory and memory.is_file():
        data = json.loads(memory.read_text())
        result["peak_gb_56_units_4k"] = data["peak_gb_56_units"]
        result["peak_gb_56_units_4k_method"] = data["method"]
        result["memory_source"] = str(memory.relative_to(REPO) if memory.is_relative_to(REPO) else memory)
        say(f"56-unit build, 4096^2 tiles         {data['peak_gb_56_units']:.2f} GB peak, "
            f"{data['growth_gb_per_expression']:+.3f} GB/expression ({data['method']}; {result['memory_source']})")
    else:
        result["peak_gb_56_units_4k"] = None
        say("56-unit 4K memory: not measured (run benchmarks/texture_memory.py --json ...)")


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, few steps")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "expdiff")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--night-json", type=Path, default=None)
    parser.add_argument("--memory-json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--refresh", type=Path, default=None, metavar="RESULT.json",
                        help="measure nothing: re-read the night / memory JSON files into an existing result")
    args = parser.parse_args(argv)
    if args.refresh:
        result = json.loads(args.refresh.read_text())
        table = [line for line in result["table"] if not line.startswith(("night", "56-unit"))]
        side_benchmarks(result, args.night_json, args.memory_json, table.append)
        result["table"] = table
        args.refresh.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print("\n".join(table))
        return 0
    quick = args.quick
    import tempfile

    from expdiff_core.build import load_pipeline
    from expdiff_core.device import resolve_device
    from expdiff_core.models.denoiser import ExpDiffDenoiser

    device = resolve_device(args.device)
    model = args.model.resolve()
    threads = torch.get_num_threads()
    result: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": socket.gethostname(),
                              "cpu": platform.processor() or platform.machine(), "device": str(device),
                              "torch_threads": threads, "quick": quick, "model": str(model)}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    report = []

    def say(line: str) -> None:
        report.append(line)
        print(line, flush=True)

    n = 512 if quick else 1024
    result["matmul_flops_per_s"] = matmul_flops(n, device)
    say(f"dense fp32 matmul {n}^3            {result['matmul_flops_per_s'] / 1e9:10.2f} GFLOP/s ({threads} thread(s))")

    pipe = load_pipeline(model, str(device))
    demo_batch = min(DEMO_EXPRESSIONS, pipe.denoiser.sampling_batch)
    den = denoiser_figures(pipe, demo_batch, 3 if quick else 10)
    result["denoiser"] = den
    result["denoiser_matmul_fraction"] = den["flops_per_s"] / result["matmul_flops_per_s"]
    say(f"{den['denoiser']} forward, batch {demo_batch}  {throughput(den)}  {den['flops_per_s'] / 1e9:.2f} GFLOP/s "
        f"= {100 * result['denoiser_matmul_fraction']:.0f}% of matmul")

    if not quick:
        comp = denoiser_figures(pipe, demo_batch, 10, compiled=True)
        result["denoiser_compiled"] = comp
        result["denoiser_matmul_fraction_compiled"] = comp["flops_per_s"] / result["matmul_flops_per_s"]
        say(f"  the same through torch.compile     {throughput(comp)}  "
            f"{comp['flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * result['denoiser_matmul_fraction_compiled']:.0f}% of "
            f"matmul (compiling took {comp['compile_s']:.0f} s)")

    if not isinstance(pipe.denoiser, ExpDiffDenoiser):  # the cost model's GPU figures scale the production model
        prod = production_denoiser_figures(list(pipe.config.kinds), len(pipe.config.udims), 16 if quick else 32,
                                           1 if quick else 3, device)
        result["production_denoiser"] = prod
        result["production_denoiser_matmul_fraction"] = prod["flops_per_s"] / result["matmul_flops_per_s"]
        say(f"production transformer, {prod['tokens']} tokens {prod['tokens_per_s']:10.0f} tokens/s  "
            f"{prod['flops_per_s'] / 1e9:.2f} GFLOP/s = {100 * result['production_denoiser_matmul_fraction']:.0f}% "
            "of matmul (random weights)")

    batched = batched_vs_single(pipe, 17 if quick else DEMO_EXPRESSIONS, 1 if quick else 3)
    result["batched"] = batched
    result["batched_speedup"] = batched["speedup"]
    say(f"sampling {batched['expressions']} expressions x {batched['steps']} steps   batched ({batched['batch']}) "
        f"{batched['batched_s']:.2f} s, one at a time {batched['one_at_a_time_s']:.2f} s: {batched['speedup']:.1f}x")

    ratio = decode_vs_diffuse(pipe, 17 if quick else DEMO_EXPRESSIONS, 3 if quick else None)
    result["decode_vs_diffuse"] = ratio
    result["decode_to_diffuse_ratio"] = ratio["ratio"]
    say(f"{ratio['expressions']} expressions x {ratio['steps']} steps from noise   diffuse {ratio['diffuse_s']:.1f} s, "
        f"decode {ratio['decode_s']:.1f} s: decode/diffuse {ratio['ratio']:.2f}")

    # DDPM-1000 is 1000 denoiser passes per identity: two held-out identities, four units, on a CPU.
    units = ["jawOpen", "mouthSmile_L"] if quick else ["jawOpen", "mouthSmile_L", "browInnerUp_L", "eyeBlink_R"]
    schedulers = [("ddpm", 100), ("ddim", 50), ("dpm++", 20), ("dpm++", 10)] if quick else list(SCHEDULERS)
    subjects = held_out_subjects(pipe, 1 if quick else 2, units)
    # At a sampling temperature below 1 (the bundled model's noise scale is 0) DDPM still adds its full per-step
    # noise while the deterministic solvers do not: the samplers are compared like for like at noise scale 1,
    # and at the model's own setting beside it.
    own = float(pipe.config.noise_scale)
    settings = [("", 1.0)] + ([("_model_noise", own)] if own != 1.0 else [])
    for suffix, noise in settings:
        rows = scheduler_rows(pipe, subjects, units, schedulers, noise_scale=noise)
        result["schedulers" + suffix] = rows
        ref, dpm20 = rows[0], next(r for r in rows if r["scheduler"] == "DPM-Solver++-20")
        result["dpm20_speedup_vs_ddpm1000" + suffix] = ref["seconds"] / dpm20["seconds"]
        result["dpm20_fvd_ratio_vs_ddpm1000" + suffix] = dpm20["fvd_mm"] / ref["fvd_mm"]
        result["dpm20_change_psnr_delta_db" + suffix] = dpm20["change_psnr_db"] - ref["change_psnr_db"]
        for r in rows:
            say(f"{r['scheduler']:<18} {len(subjects)} id x {len(units)} expr, noise scale {noise:g}  sampling "
                f"{r['seconds']:7.1f} s (whole call {r['call_seconds']:.1f} s)  FVD {r['fvd_mm']:.3f} mm  "
                f"change-PSNR {r['change_psnr_db']:.2f} dB")
        say(f"DPM-Solver++-20 vs {ref['scheduler']} at noise scale {noise:g}: "
            f"{result['dpm20_speedup_vs_ddpm1000' + suffix]:.1f}x faster, "
            f"FVD x{result['dpm20_fvd_ratio_vs_ddpm1000' + suffix]:.3f}, "
            f"change-PSNR {result['dpm20_change_psnr_delta_db' + suffix]:+.2f} dB")

    codec = codec_figures(pipe, 20 if quick else 60, 2 if quick else 3)
    result["codec"] = codec
    say(f"codec at {codec['resolution']}^2                    encode {codec['encode_maps_per_s']:.1f} maps/s, "
        f"decode {codec['decode_maps_per_s']:.1f} maps/s")
    raster = raster_figures(256 if quick else 512, 2 if quick else 3)
    result["raster"] = raster
    say(f"UV raster at {raster['resolution']}^2 ({raster['tiles']} tiles)     {raster['texels_per_s'] / 1e6:10.2f} Mtexels/s")
    result["upscaler"] = upscaler_figures({"compact": 64 if quick else 128, "x4plus": 32 if quick else 64},
                                          1 if quick else 2)
    for method, r in result["upscaler"].items():
        say(f"upscaler {method:<8} {r['input']}^2 -> {r['output']}^2     {r['output_mp_per_s']:10.3f} output Mpixel/s")

    with tempfile.TemporaryDirectory(prefix="expdiff-suite-") as tmp:
        demo = demo_build(model, Path(tmp), 4 if quick else 56, 3 if quick else None, str(device))
    result["demo_build"] = demo
    result["demo_build_seconds"] = demo["total_seconds"]
    result["demo_peak_gb"] = demo["max_peak_gb"]
    say(f"demo build, {demo['expressions']} expressions, {demo['steps']} steps at strength {demo['strength']}: "
        f"{demo['total_seconds']:.1f} s, peak {demo['max_peak_gb']:.2f} GB")
    say("   " + "  ".join(f"{k} {v:.1f}s/{demo['peak_gb'][k]:.2f}GB" for k, v in demo["seconds"].items()))

    side_benchmarks(result, args.night_json, args.memory_json, say)

    # The reference again at the end: on a shared machine the load moves; the fractions use the better figure.
    again = matmul_flops(n, device)
    if again > result["matmul_flops_per_s"]:
        result["matmul_flops_per_s_start"] = result["matmul_flops_per_s"]
        result["matmul_flops_per_s"] = again
        result["denoiser_matmul_fraction"] = den["flops_per_s"] / again
        if "production_denoiser" in result:
            result["production_denoiser_matmul_fraction"] = result["production_denoiser"]["flops_per_s"] / again
        if "denoiser_compiled" in result:
            result["denoiser_matmul_fraction_compiled"] = result["denoiser_compiled"]["flops_per_s"] / again
        say(f"dense fp32 matmul again at the end  {again / 1e9:10.2f} GFLOP/s: denoiser "
            f"{100 * result['denoiser_matmul_fraction']:.0f}% of it")

    result["table"] = report
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{result['date']}-{result['machine']}{'-quick' if quick else ''}.json"
    (args.out / name).write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
