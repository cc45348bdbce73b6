"""Contact sheets: grid layout, readable labels and title, file output, expression sheets."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.images import read_image
from expdiff_core.render.contact_sheet import (contact_sheet, moving_vertices, render_expression_sheet,
                                               write_contact_sheet)
from expdiff_core.render.preview import Camera, render_preview, to_display

BACKGROUND = (24, 24, 24)


def solid(color, h=40, w=48) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.uint8), (h, w, 3)).copy()


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def test_cells_are_laid_out_row_major_with_the_given_columns():
    sheet = contact_sheet([solid(c) for c in COLORS], ["a", "b", "c", "d", "e"], columns=3, padding=6,
                          font_size=10)
    label_h = 16  # round(1.6 * font_size)
    assert sheet.shape == (6 + 2 * (40 + label_h + 6), 6 + 3 * (48 + 6), 3)
    for i, color in enumerate(COLORS):
        top = 6 + (i // 3) * (40 + label_h + 6)
        left = 6 + (i % 3) * (48 + 6)
        assert (sheet[top:top + 40, left:left + 48] == color).all()
    # the sixth cell is empty
    assert (sheet[6 + 40 + label_h + 6:, 6 + 2 * 54:][:40, :48] == BACKGROUND).all()


def test_labels_are_drawn_under_their_cells_and_differ_by_text():
    sheet = contact_sheet([solid(COLORS[0], 64, 128)] * 2, ["jawOpen", "mouthSmile_L"], columns=2,
                          padding=6, font_size=14)
    strips = [sheet[6 + 64:6 + 64 + 22, 6 + i * 134:6 + i * 134 + 128] for i in range(2)]
    lit = [np.abs(s.astype(int) - BACKGROUND).max(axis=2) > 60 for s in strips]
    # a 14 px label covers a few hundred text pixels; an empty strip would have none
    assert all(m.sum() > 100 for m in lit)
    assert not np.array_equal(lit[0], lit[1])
    # the longer label is wider
    assert np.ptp(np.flatnonzero(lit[1].any(axis=0))) > np.ptp(np.flatnonzero(lit[0].any(axis=0)))


def test_title_adds_a_row_of_text_above_the_grid():
    plain = contact_sheet([solid(COLORS[0])], ["a"], font_size=10)
    titled = contact_sheet([solid(COLORS[0])], ["a"], title="subject 0007", font_size=10)
    extra = titled.shape[0] - plain.shape[0]
    assert extra == 26  # round(2.6 * font_size)
    title_band = titled[6:6 + extra]
    assert (np.abs(title_band.astype(int) - BACKGROUND).max(axis=2) > 60).sum() > 50
    np.testing.assert_array_equal(titled[6 + extra:], plain[6:])


def test_long_labels_are_shortened_to_their_cell():
    sheet = contact_sheet([solid(COLORS[0], 32, 60)] * 2, ["x" * 80, "y"], columns=2, padding=6, font_size=12)
    strip = sheet[6 + 32:6 + 32 + 19]
    lit_cols = np.flatnonzero((np.abs(strip.astype(int) - BACKGROUND).max(axis=2) > 60).any(axis=0))
    first_cell = lit_cols[lit_cols < 6 + 60 + 6]
    assert first_cell.min() >= 6 and first_cell.max() < 6 + 60


def test_float_images_are_display_encoded_and_sizes_may_differ():
    linear = np.full((20, 30, 3), 0.5, np.float32)
    sheet = contact_sheet([linear, solid(COLORS[1], 40, 48)], ["lin", "u8"], columns=2, padding=6)
    # the 20 x 30 image is centred in the 40 x 48 cell
    assert (sheet[6 + 10:6 + 30, 6 + 9:6 + 39] == to_display(linear)[0, 0]).all()
    assert to_display(linear)[0, 0, 0] == 188


@pytest.mark.parametrize("images, labels, problem", [
    ([solid(COLORS[0])], ["a", "b"], "1 images but 2 labels"),
    ([], [], "no images"),
    ([np.zeros((8, 8), np.uint8)], ["gray"], "not \\(H, W, 3\\)"),
])
def test_bad_input_is_refused(images, labels, problem):
    with pytest.raises(ExpDiffInputError, match=problem):
        contact_sheet(images, labels)


def test_written_sheet_reads_back_and_is_byte_identical(tmp_path):
    images = [solid(c) for c in COLORS]
    labels = ["neutral", "jawOpen", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L"]
    a = write_contact_sheet(tmp_path / "a.png", images, labels, title="identity 3")
    b = write_contact_sheet(tmp_path / "b.png", images, labels, title="identity 3")
    assert a.read_bytes() == b.read_bytes()
    back = np.round(read_image(a) * 255).astype(np.uint8)
    np.testing.assert_array_equal(back, contact_sheet(images, labels, title="identity 3"))


def test_moving_vertices_are_the_ones_some_pose_displaces(make_sphere):
    sphere = make_sphere(rings=8, segments=16)
    pose = sphere.vertices.copy()
    pose[:5] += [0.0, 0.0, 2.0]
    pose[5] += [0.0, 0.0, 0.1]  # 5 % of the largest move: below the default 10 % threshold
    np.testing.assert_array_equal(moving_vertices(sphere, [sphere.vertices, pose]), np.arange(5))
    assert moving_vertices(sphere, [sphere.vertices]) is None


def test_expression_sheet_renders_every_pose_with_one_camera(make_sphere):
    sphere = make_sphere(rings=12, segments=24)
    squash = sphere.vertices * np.array([1.2, 0.8, 1.0], np.float32)
    poses = {"neutral": sphere.vertices, "squash": squash}
    sheet = render_expression_sheet(sphere, poses, size=48, columns=2, progress=False,
                                    camera=Camera(margin=0.1), frame_moving=False)
    cell = sheet[6:54, 6 + 54:6 + 54 + 48]
    expected = to_display(render_preview(sphere, vertices=squash, width=48, height=48, camera=Camera(margin=0.1)))
    # the posed cell is rendered on the neutral's framing, not re-framed to the squashed shape
    np.testing.assert_array_equal(cell, expected)
    assert sheet.shape[1] == 6 + 2 * 54


def test_expression_sheet_frames_the_moving_part_by_default(make_sphere):
    sphere = make_sphere(rings=12, segments=24)
    lifted = sphere.vertices.copy()
    top = lifted[:, 1] > 7.0  # only the cap above y = 7 cm moves
    lifted[top] += [0.0, 1.0, 0.0]
    poses = {"neutral": sphere.vertices, "lift": lifted}
    whole = render_expression_sheet(sphere, poses, size=48, columns=2, progress=False, frame_moving=False)
    moving = render_expression_sheet(sphere, poses, size=48, columns=2, progress=False)

    def bottom_row_on_sphere(sheet) -> np.ndarray:
        cell = sheet[6:54, 6:54].astype(int)
        return np.abs(cell[-1] - cell[0, 0]).max(axis=1) > 8  # differs from the render's background corner

    # framed on the moving cap (the top of the sphere), the sphere runs out of the cell's bottom edge;
    # framed whole, it sits inside the cell with background below it
    assert bottom_row_on_sphere(moving).all()
    assert not bottom_row_on_sphere(whole).any()
