"""Tiled inference with overlap and seamless blending: bounded memory for any image size.

The low-resolution image is cut into tiles of ``tile`` texels overlapping by ``overlap``; each tile runs with
``context`` texels of its neighbours around it (``border`` texels of reflect padding where it meets the image
edge, as the ncnn runtime pads by 10), the context is cropped from the output, and overlapping outputs are
blended with linear ramps that sum to one, so no seam shows. Memory: one batch of tiles' activations plus the
(B, C, s*H, s*W) output and one weight plane.
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
              tile: int = 192, overlap: int = 16, context: int = 24, border: int | None = 10) -> torch.Tensor:
    """``fn`` applied to ``x`` ((B,) C, H, W) tile by tile -> ((B,) out_channels, scale*H, scale*W).

    fn: (B, C, h', w') -> (B, out_channels, scale*h', scale*w') for any window size. ``tile`` >= H, W runs the
    whole image at once. border: reflect padding at the image edges (None: ``context``).
    """
    single = x.ndim == 3
    xb = x[None] if single else x
    b, c, h, w = xb.shape
    ctx = max(0, min(context, h - 1, w - 1))
    edge = ctx if border is None else max(0, min(border, ctx))
    xp = F.pad(xb, (ctx, ctx, ctx, ctx), mode="reflect") if ctx > 0 else xb
    tile = max(tile, overlap + 1)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    out = torch.zeros(b, out_channels, h * scale, w * scale, dtype=torch.float32)
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32) if len(ys) * len(xs) > 1 else None
    for i, y0 in enumerate(ys):
        top = edge if y0 == 0 else ctx
        bottom = edge if y0 + th == h else ctx
        for j, x0 in enumerate(xs):
            left = edge if x0 == 0 else ctx
            right = edge if x0 + tw == w else ctx
            patch = xp[:, :, ctx + y0 - top:ctx + y0 + th + bottom, ctx + x0 - left:ctx + x0 + tw + right]
            y = fn(patch)[:, :, top * scale:(top + th) * scale, left * scale:(left + tw) * scale].float()
            rows, cols = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            if weight is None:
                out[:, :, rows, cols] += y
                continue
            # ramps only where a neighbouring tile overlaps this one (their widths: the shared texels)
            r_top = (ys[i - 1] + th - y0) * scale if i else 0
            r_bottom = (y0 + th - ys[i + 1]) * scale if i + 1 < len(ys) else 0
            r_left = (xs[j - 1] + tw - x0) * scale if j else 0
            r_right = (x0 + tw - xs[j + 1]) * scale if j + 1 < len(xs) else 0
            wt = _ramp(th * scale, r_top, r_bottom)[:, None] * _ramp(tw * scale, r_left, r_right)[None, :]
            out[:, :, rows, cols] += y * wt
            weight[:, :, rows, cols] += wt
    if weight is not None:
        out /= weight.clamp_min(1e-12)
    return out[0] if single else out
