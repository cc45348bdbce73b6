"""The guided upscaler (ExpDiff Eq. 8): an official Real-ESRGAN network whose first convolution is widened to
take guide channels beside the low-resolution map.

Guides (each 3 channels at the low resolution, in the network's input encoding):
- ``w``: the difference map ``W_n = sigmoid(D_n / (D_0 + 1e-8))`` of the generated expression map ``D_n`` and
  the neutral map ``D_0`` (Eq. 8), per channel.
- ``neutral``: the user's neutral map, area-downsampled to the low resolution (the generated neutral when the
  user gave none), so the network sees how the user's neutral differs from the generated one.

The new input weights start at zero, so a freshly widened network computes exactly the official network's
output whatever the guides are; ``expdiff train sr`` fine-tunes it. A model folder holds ``config.json``
(``format`` expdiff-upscaler/1, ``architecture`` Compact | ESRGAN, ``guides``), ``model.safetensors`` (the
network's state dict in spandrel's key names, first convolution widened) and a model card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from ..errors import ExpDiffInputError
from ..fileio import atomic_path
from .official import FORMAT, WEIGHTS, load_official, load_state_dict

GUIDES = ("w", "neutral")
GUIDE_CHANNELS = 3
FIRST_CONV = {"Compact": "body.0", "ESRGAN": "model.0"}  # spandrel's module path of the first convolution
EPS = 1e-8


def difference_map(expression: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``W_n = 1 / (1 + exp(-D_n / (D_0 + 1e-8)))``, elementwise; (..., C, h, w) -> same shape."""
    return torch.sigmoid(expression / (neutral + EPS))


def _first_conv(model: nn.Module, architecture: str) -> nn.Conv2d:
    return model.get_submodule(FIRST_CONV[architecture])


class GuidedNet(nn.Module):
    """An official Real-ESRGAN network (spandrel module) with ``3 * len(guides)`` extra input channels.

    forward(x (B, 3, h, w) in [0, 1], guide (B, G, h, w) or None) -> (B, 3, s*h, s*w).
    """

    def __init__(self, descriptor: Any, guides: Sequence[str] = GUIDES):
        super().__init__()
        unknown = sorted(set(guides) - set(GUIDES))
        if unknown:
            raise ExpDiffInputError(None, f"unknown guide(s) {unknown}; use {list(GUIDES)}")
        self.architecture = descriptor.architecture.id
        self.scale = int(descriptor.scale)
        self.guides = tuple(guides)
        self.net = descriptor.model
        old = _first_conv(self.net, self.architecture)
        extra = GUIDE_CHANNELS * len(self.guides)
        if extra:
            new = nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding)
            with torch.no_grad():
                new.weight.zero_()
                new.weight[:, :old.in_channels] = old.weight
                new.bias.copy_(old.bias)
            parent, _, name = FIRST_CONV[self.architecture].rpartition(".")
            self.net.get_submodule(parent)._modules[name] = new

    @property
    def guide_channels(self) -> int:
        return GUIDE_CHANNELS * len(self.guides)

    def guide(self, x: torch.Tensor, neutral: torch.Tensor, user: torch.Tensor) -> torch.Tensor | None:
        """The guide channels ((B,) G, h, w) for encoded low-resolution maps: ``x``, its ``neutral`` and the user's
        neutral ``user`` already reduced to (h, w); None for a network without guides."""
        parts = [difference_map(x, neutral) if g == "w" else user for g in self.guides]
        return torch.cat(parts, dim=-3) if parts else None

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if self.guide_channels:
            if guide is None or guide.shape[1] != self.guide_channels:
                got = None if guide is None else guide.shape[1]
                raise ExpDiffInputError(None, f"guided upscaler needs {self.guide_channels} guide channels "
                                        f"({', '.join(self.guides)}), got {got}")
            inp = torch.cat([x, guide], dim=1)
        else:
            inp = x
        if self.architecture == "Compact":
            out = inp
            for layer in self.net.body:
                out = layer(out)
            return self.net.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.net.model(inp)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, folder: str | os.PathLike, *, extra_config: dict[str, Any] | None = None,
                        model_card: str | None = None) -> Path:
        """Write config.json + model.safetensors (+ README.md) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"format": FORMAT, "kind": "guided", "architecture": self.architecture, "scale": self.scale,
                  "guides": list(self.guides), "parameters": int(sum(p.numel() for p in self.parameters())),
                  **(extra_config or {})}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if model_card:
            with atomic_path(folder / "README.md") as tmp:
                tmp.write_text(model_card)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "GuidedNet":
        """A guided model folder (``kind`` guided), or an official one (``kind`` official: guides none)."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ExpDiffInputError(folder, "not an upscaler folder (no config.json)")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ExpDiffInputError(config_path, f"invalid JSON: {exc}") from None
        if config.get("format") != FORMAT:
            raise ExpDiffInputError(config_path, f"format {config.get('format')!r} is not {FORMAT}")
        if config.get("kind") == "official":
            return cls(load_official(folder / WEIGHTS), guides=())
        return cls.from_state_dict(load_state_dict(folder / WEIGHTS), config.get("architecture"),
                                   config.get("guides", []), source=folder / WEIGHTS)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], architecture: str | None, guides: Sequence[str],
                        source: str | os.PathLike | None = None) -> "GuidedNet":
        """Rebuild from a widened state dict: spandrel loads the official part (first conv narrowed to RGB)."""
        if architecture not in FIRST_CONV:
            raise ExpDiffInputError(source, f"architecture {architecture!r} is not Compact or ESRGAN")
        key = f"{FIRST_CONV[architecture]}.weight"
        if key not in state:
            raise ExpDiffInputError(source, f"is not a {architecture} network (no {key})")
        expected = 3 + GUIDE_CHANNELS * len(guides)
        if state[key].shape[1] != expected:
            raise ExpDiffInputError(source, f"first convolution takes {state[key].shape[1]} channels; guides "
                                    f"{list(guides)} need {expected}")
        narrow = dict(state)
        narrow[key] = state[key][:, :3]
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            save_file({k: v.contiguous() for k, v in narrow.items()}, f"{tmp}/{WEIGHTS}")
            try:
                descriptor = load_official(f"{tmp}/{WEIGHTS}", architecture)
            except ExpDiffInputError as exc:
                raise ExpDiffInputError(source, exc.problem) from None
        net = cls(descriptor, guides)
        net.net.load_state_dict(state)
        return net.eval()


def load_upscaler(folder: str | os.PathLike) -> tuple[GuidedNet, dict[str, GuidedNet]]:
    """(network, {kind: network}) from an upscaler folder: one network for every kind, or -- ``kind`` per-kind in
    its config.json -- one sub-folder per map kind (``kinds``), each a guided model folder; the first serves
    kinds without their own."""
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ExpDiffInputError(config_path, f"invalid JSON: {exc}") from None
    if config.get("kind") != "per-kind":
        return GuidedNet.from_pretrained(folder), {}
    kinds = list(config.get("kinds") or [])
    if not kinds:
        raise ExpDiffInputError(config_path, "a per-kind upscaler lists no kinds")
    nets = {kind: GuidedNet.from_pretrained(folder / kind) for kind in kinds}
    architectures = {n.architecture for n in nets.values()}
    if len(architectures) > 1:
        raise ExpDiffInputError(folder, f"its per-kind networks mix architectures {sorted(architectures)}")
    return nets[kinds[0]], nets


def write_per_kind_config(folder: str | os.PathLike, kinds: Sequence[str], extra: dict[str, Any] | None = None) -> Path:
    """The config.json of a per-kind upscaler folder whose ``<kind>/`` sub-folders are guided model folders."""
    folder = Path(folder)
    nets = {kind: GuidedNet.from_pretrained(folder / kind) for kind in kinds}
    first = nets[kinds[0]]
    config = {"format": FORMAT, "kind": "per-kind", "kinds": list(kinds), "architecture": first.architecture,
              "scale": first.scale, "guides": list(first.guides),
              "parameters": int(sum(p.numel() for n in nets.values() for p in n.parameters())), **(extra or {})}
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
