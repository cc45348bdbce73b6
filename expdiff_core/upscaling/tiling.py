"""Tiled inference with overlap and seamless blending: bounded memory for any image size.

The low-resolution image is reflect-padded by ``context`` texels (as the ncnn runtime pads by 10), cut into
tiles of ``tile`` texels overlapping by ``overlap``; each tile runs with its context, the context is cropped
from the output, and overlapping outputs are blended with linear ramps that sum to one, so no seam shows.
Memory: one tile's activations plus the (C, s*H, s*W) output and one weight plane.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis of ``size`` texels: step ``tile - overlap``, the last tile flush with the end."""
    if tile >= size:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, ramp_in: int, ramp_out: int) -> torch.Tensor:
    """(length,) weights: linear 0->1 over the first ``ramp_in`` texels, 1->0 over the last ``ramp_out``."""
    w = torch.ones(length)
    if ramp_in:
        w[:ramp_in] = (torch.arange(ramp_in, dtype=torch.float32) + 0.5) / ramp_in
    if ramp_out:
        w[length - ramp_out:] = torch.minimum(w[length - ramp_out:],
                                              (torch.arange(ramp_out, 0, -1, dtype=torch.float32) - 0.5) / ramp_out)
    return w


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, out_channels: int, *,
              tile: int = 192, overlap: int = 16, context: int = 24,
              shortcut: Callable[[torch.Tensor, tuple[slice, slice]], torch.Tensor | None] | None = None
              ) -> torch.Tensor:
    """``fn`` applied to ``x`` (C, H, W) tile by tile -> (out_channels, scale*H, scale*W).

    fn: (1, C, h + 2*context, w + 2*context) -> (1, out_channels, scale*(h + 2*context), ...). ``tile`` >= H, W
    runs the whole image at once (still with the context padding). shortcut(patch, (rows, cols) of the output
    tile): a tile's output without running ``fn`` (e.g. where it would equal a known output), or None.
    """
    c, h, w = x.shape
    ctx = min(context, h - 1, w - 1)
    xp = F.pad(x[None], (ctx, ctx, ctx, ctx), mode="reflect") if ctx > 0 else x[None]
    tile = max(tile, overlap + 1)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = torch.zeros(out_channels, h * scale, w * scale, dtype=torch.float32)
    weight = torch.zeros(1, h * scale, w * scale, dtype=torch.float32) if len(ys) * len(xs) > 1 else None
    for i, y0 in enumerate(ys):
        th = min(tile, h)
        for j, x0 in enumerate(xs):
            tw = min(tile, w)
            patch = xp[:, :, y0:y0 + th + 2 * ctx, x0:x0 + tw + 2 * ctx]
            region = (slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
            y = shortcut(patch, region) if shortcut is not None else None
            if y is None:
                y = fn(patch)[0, :, ctx * scale:(ctx + th) * scale, ctx * scale:(ctx + tw) * scale].float()
            if weight is None:
                out += y
                continue
            # ramps only where a neighbouring tile overlaps this one (their widths: the shared texels)
            top = (ys[i - 1] + th - y0) * scale if i else 0
            bottom = (y0 + th - ys[i + 1]) * scale if i + 1 < len(ys) else 0
            left = (xs[j - 1] + tw - x0) * scale if j else 0
            right = (x0 + tw - xs[j + 1]) * scale if j + 1 < len(xs) else 0
            wy = _ramp(th * scale, max(top, 0), max(bottom, 0))
            wx = _ramp(tw * scale, max(left, 0), max(right, 0))
            wt = wy[:, None] * wx[None, :]
            ys_, xs_ = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[:, ys_, xs_] += y * wt
            weight[:, ys_, xs_] += wt
    if weight is not None:
        out /= weight.clamp_min(1e-12)
    return out
