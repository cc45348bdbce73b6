"""UDIM tile numbering: 1001 + floor(u) + 10 * floor(v), tiles 1001..1100."""

from __future__ import annotations

import numpy as np

from expdiff_core.io.udim import format_udims, udim_of, udim_origin, uv_outside_tiles


def test_udim_of_numbers_tiles_row_by_row():
    uv = np.array([[0.0, 0.0], [0.999, 0.5], [1.0, 0.0], [9.5, 0.5], [0.5, 1.5], [9.99, 9.99]])
    assert udim_of(uv).tolist() == [1001, 1001, 1002, 1010, 1011, 1100]


def test_udim_origin_inverts_udim_of_for_every_tile():
    tiles = np.arange(1001, 1101)
    centres = np.array([np.add(udim_origin(t), 0.5) for t in tiles])
    assert np.array_equal(udim_of(centres), tiles)


def test_uv_outside_tiles_flags_negative_past_ten_and_nan():
    uv = np.array([[0.5, 0.5], [-0.01, 0.5], [0.5, -0.01], [10.0, 0.5], [0.5, 10.0], [np.nan, 0.5], [9.999, 9.999]])
    assert uv_outside_tiles(uv).tolist() == [False, True, True, True, True, True, False]


def test_format_udims_collapses_runs():
    assert format_udims([1003, 1001, 1002, 1011, 1013]) == "1001–1003, 1011, 1013"
    assert format_udims([]) == "none"
