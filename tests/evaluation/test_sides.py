"""Left/right checks: the half a unit moves and mirror symmetry of _L/_R pairs, on our template head."""

import numpy as np

from expdiff_core.evaluation.sides import mirror_cosine, mirror_index, side_pairs, side_ratio, sides_table
from expdiff_core.synth.template import template_mesh


def _left_bump(v):
    """A smooth bump on the character's left cheek (+X), moving up by up to 0.5 cm."""
    centre = np.array([3.0, -2.0, 8.0])
    w = np.exp(-np.sum((v - centre) ** 2, axis=1) / 4.0)
    return w[:, None] * np.array([0.0, 0.5, 0.0])


def test_the_template_is_its_own_mirror():
    v = template_mesh().vertices.astype(np.float64)
    m = mirror_index(v)
    # the procedural template is symmetric to float32 precision (~1e-6 cm)
    assert np.abs(v[m] * [-1, 1, 1] - v).max() < 1e-4


def test_a_mirrored_pair_has_cosine_one_and_the_right_sides():
    v = template_mesh().vertices.astype(np.float64)
    left = _left_bump(v)
    right = _left_bump(v * [-1, 1, 1])  # the same bump on the right cheek
    assert mirror_cosine(left, right, mirror_index(v)) > 0.999
    assert side_ratio(left, v, "L") > 3 and side_ratio(right, v, "R") > 3
    assert side_ratio(left, v, "R") < 1 / 3
    # the same field on both sides is no mirror pair
    assert mirror_cosine(left, left, mirror_index(v)) < 0.1


def test_sides_table_covers_every_pair_given():
    v = template_mesh().vertices.astype(np.float64)
    rows = sides_table(v, {"mouthSmile_L": v + _left_bump(v), "mouthSmile_R": v + _left_bump(v * [-1, 1, 1])})
    assert [r["pair"] for r in rows] == ["mouthSmile"]
    assert len(side_pairs()) >= 20  # 56 units hold more than twenty left/right pairs
