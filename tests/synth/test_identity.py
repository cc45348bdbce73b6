"""Synthetic identities: deterministic sampling, parameter ranges, neutrals on the template topology."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.synth import identity as identity_module
from expdiff_core.synth.identity import Identity, head_shape, identity_vertices, sample_identity
from expdiff_core.synth.template import template


def test_same_seed_gives_the_same_identity_and_identical_vertices():
    assert sample_identity(7) == sample_identity(7)
    a = identity_vertices(sample_identity(7))
    identity_module._neutral.cache_clear()  # recompute, not a cache hit
    b = identity_vertices(sample_identity(7))
    assert a.dtype == np.float32 and a.shape == template().mesh.vertices.shape
    assert a.tobytes() == b.tobytes()


def test_different_seeds_give_different_faces():
    a, b = identity_vertices(sample_identity(1)), identity_vertices(sample_identity(2))
    face = template().regions["face"]
    assert np.linalg.norm(a[face] - b[face], axis=1).mean() > 0.1  # identities differ by millimetres


def test_the_default_identity_is_the_template():
    assert np.array_equal(identity_vertices(Identity()), template().mesh.vertices)


def test_sampled_parameters_stay_in_their_ranges():
    people = [sample_identity(s) for s in range(60)]
    for p in people:
        for name in ("face_width", "jaw_width", "jaw_length", "chin", "nose_length", "nose_width",
                     "nose_projection", "cheekbone", "brow_ridge", "lip_fullness", "eye_depth"):
            assert -1.0 <= getattr(p, name) <= 1.0, name
        for name in ("cheek_fullness", "laxity", "freckle_density", "fine_lines", "oiliness"):
            assert 0.0 <= getattr(p, name) <= 1.0, name
        assert 18.0 <= p.age <= 78.0 and 0.02 <= p.melanin <= 0.45 and 0.02 <= p.haemoglobin <= 0.10
    # Laxity follows age: the older half is laxer on average.
    ages = np.array([p.age for p in people])
    lax = np.array([p.laxity for p in people])
    assert lax[ages > np.median(ages)].mean() > lax[ages <= np.median(ages)].mean() + 0.3


def test_identity_neutrals_are_finite_and_mirror_symmetric():
    layout = template()
    v = identity_vertices(sample_identity(3))
    assert np.isfinite(v).all()
    assert np.abs(v[layout.mirror] * np.array([-1, 1, 1], dtype=np.float32) - v).max() < 1e-4


def test_laxity_shows_in_the_neutral_as_sagging_cheeks():
    young = Identity(laxity=0.0)
    old = Identity(laxity=1.0)
    cheeks = template().regions["cheek_L"]
    drop = identity_vertices(young)[cheeks, 1] - identity_vertices(old)[cheeks, 1]
    assert drop.mean() > 0.2  # cm: cheeks slide down with age


def test_shape_parameters_reach_the_generator():
    shape = head_shape(Identity(face_width=1.0, nose_length=-1.0, cheek_fullness=0.5))
    assert shape.face_width > 1.0 and shape.nose_length < 0.0 and shape.cheek_fullness == 0.5


def test_to_dict_round_trips_and_unknown_keys_are_refused():
    p = sample_identity(5)
    assert Identity.from_dict(p.to_dict()) == p
    with pytest.raises(ExpDiffInputError, match="wrinkliness"):
        Identity.from_dict({**p.to_dict(), "wrinkliness": 1.0})
