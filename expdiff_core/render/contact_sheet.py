"""Contact sheets: a labelled grid of preview images, e.g. every expression of one subject.

Pillow only draws the label text into the array (its bundled default font, so no system fonts are needed and
the result is the same on every machine with the same Pillow); files are written through OpenImageIO.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from ..errors import ExpDiffInputError
from ..io.mesh import FaceMesh
from .preview import Camera, render_preview, to_display, write_preview


def _as_display(image: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ExpDiffInputError(None, f"contact sheet image {index}: shape {arr.shape} is not (H, W, 3)")
    return arr if arr.dtype == np.uint8 else to_display(arr)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, max_width: int) -> str:
    """``text``, shortened with an ellipsis until it fits in ``max_width`` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], columns: int | None = None,
                  title: str | None = None, *, font_size: int | None = None, padding: int = 6,
                  background: tuple[int, int, int] = (24, 24, 24),
                  text_color: tuple[int, int, int] = (225, 225, 225)) -> np.ndarray:
    """A grid of ``images`` with ``labels`` under each cell and an optional ``title`` row; (H, W, 3) uint8.

    images: (h, w, 3) uint8 display images, or float linear RGB (encoded with ``to_display``); cells take the
    largest size and smaller images are centred. columns: default ceil(sqrt(n)). font_size: default scales
    with the cell width (about 14 px for 256 px cells).
    """
    if len(images) != len(labels):
        raise ExpDiffInputError(None, f"contact sheet: {len(images)} images but {len(labels)} labels")
    if not images:
        raise ExpDiffInputError(None, "contact sheet: no images")
    cells = [_as_display(img, i) for i, img in enumerate(images)]
    cell_h = max(c.shape[0] for c in cells)
    cell_w = max(c.shape[1] for c in cells)
    columns = columns or math.ceil(math.sqrt(len(cells)))
    if columns < 1:
        raise ExpDiffInputError(None, f"contact sheet: columns must be >= 1, got {columns}")
    rows = math.ceil(len(cells) / columns)
    font_size = font_size or max(10, round(cell_w / 18))
    font = ImageFont.load_default(size=font_size)
    label_h = round(font_size * 1.6)
    title_font = ImageFont.load_default(size=round(font_size * 1.5))
    title_h = round(font_size * 2.6) if title else 0

    step_x, step_y = cell_w + padding, cell_h + label_h + padding
    width = padding + columns * step_x
    height = padding + title_h + rows * step_y
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:] = background
    for i, cell in enumerate(cells):
        top = padding + title_h + (i // columns) * step_y + (cell_h - cell.shape[0]) // 2
        left = padding + (i % columns) * step_x + (cell_w - cell.shape[1]) // 2
        sheet[top:top + cell.shape[0], left:left + cell.shape[1]] = cell

    canvas = Image.fromarray(sheet, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((width / 2, padding + title_h / 2), _fit_text(draw, title, title_font, width - 2 * padding),
                  fill=text_color, font=title_font, anchor="mm")
    for i, label in enumerate(labels):
        x = padding + (i % columns) * step_x + cell_w / 2
        y = padding + title_h + (i // columns) * step_y + cell_h + label_h / 2
        draw.text((x, y), _fit_text(draw, str(label), font, cell_w), fill=text_color, font=font, anchor="mm")
    return np.asarray(canvas, dtype=np.uint8).copy()


def write_contact_sheet(path: str | os.PathLike, images: Sequence[np.ndarray], labels: Sequence[str],
                        columns: int | None = None, title: str | None = None, *, overwrite: bool = True,
                        **options) -> Path:
    """``contact_sheet(...)`` written as an 8-bit sRGB image (suffix picks PNG/JPEG/TIFF), atomically."""
    return write_preview(path, contact_sheet(images, labels, columns, title, **options), overwrite=overwrite)


def moving_vertices(mesh: FaceMesh, poses: Iterable[np.ndarray], fraction: float = 0.1) -> np.ndarray | None:
    """(K,) int64 indices of vertices that move more than ``fraction`` of the largest displacement in any of
    ``poses`` ((V, 3) each) from ``mesh.vertices``; None when nothing moves."""
    largest = np.zeros(mesh.n_vertices, dtype=np.float32)
    for pose in poses:
        moved = np.linalg.norm(np.asarray(pose, dtype=np.float32) - mesh.vertices, axis=1)
        np.maximum(largest, moved, out=largest)
    peak = float(largest.max()) if len(largest) else 0.0
    if peak <= 0.0:
        return None
    return np.flatnonzero(largest > fraction * peak)


def render_expression_sheet(mesh: FaceMesh, expressions: Mapping[str, np.ndarray],
                            maps: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]] | None = None, *,
                            size: int = 256, columns: int | None = None, title: str | None = None,
                            camera: Camera = Camera(margin=0.1), frame_moving: bool = True,
                            progress: bool = True, **render_options) -> np.ndarray:
    """Render each expression of one subject and lay them out as a contact sheet; (H, W, 3) uint8.

    expressions: name -> (V, 3) posed vertices on ``mesh``'s topology, in sheet order. maps: optional
    name -> ``{kind: {udim: (C, H, W)}}`` per expression (a missing name renders with default maps).
    All cells share ``camera``, placed on the neutral ``mesh.vertices``; with ``frame_moving`` it frames
    only the vertices that some expression moves (the expressive part of the face, not neck and scalp),
    unless ``frame_vertices`` is given.
    render_options go to ``render_preview`` (lights, hide_groups, supersample, ...).
    """
    frame = render_options.pop("frame_vertices", None)
    if frame is None and frame_moving:
        frame = moving_vertices(mesh, expressions.values())
    images = []
    for name in tqdm(list(expressions), desc="preview renders", unit="expr", disable=not progress):
        image = render_preview(mesh, (maps or {}).get(name), vertices=expressions[name], width=size,
                               height=size, camera=camera, frame_vertices=frame, **render_options)
        images.append(to_display(image))
    return contact_sheet(images, list(expressions), columns, title)
