"""The expression support: per unit, the vertices and texels its training changes touch."""

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.support import ExpressionSupport, fit_expression_support

LAYOUT = [["albedo", 1001, 3], ["roughness", 1001, 1]]
RES = 4  # 4x4 tiles: 16 * (3 + 1) = 64 map entries


def _support(**kw) -> ExpressionSupport:
    v = {"jawOpen": np.array([0.0, 0.5, 2e-5, 1e-6]), "eyeBlink_L": np.array([0.3, 0.0, 0.0, 0.0])}  # cm
    m = {"jawOpen": np.zeros(64), "eyeBlink_L": np.zeros(64)}
    m["jawOpen"][:5] = 1e-3  # albedo, first texels
    m["eyeBlink_L"][48:50] = 0.1  # roughness, first texels
    m["eyeBlink_L"][50] = 1e-4  # below 2e-4: still
    return fit_expression_support(v, m, LAYOUT, RES, **kw)


def test_a_unit_owns_what_some_identity_changes_beyond_the_threshold():
    s = _support()
    assert s.vertices.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert np.flatnonzero(s.maps[0]).tolist() == [0, 1, 2, 3, 4]
    assert np.flatnonzero(s.maps[1]).tolist() == [48, 49]


def test_saving_and_loading_keep_the_masks_exactly(tmp_path):
    s = _support()
    loaded = ExpressionSupport.from_pretrained(s.save_pretrained(tmp_path / "support"))
    assert loaded.expressions == s.expressions
    assert np.array_equal(loaded.vertices, s.vertices) and np.array_equal(loaded.maps, s.maps)


def test_a_mix_of_units_keeps_the_union_and_a_mix_of_none_keeps_everything():
    s = _support()
    mix = s.weights_for([{"jawOpen": 1.0}, {"jawOpen": 0.5, "eyeBlink_L": 0.5}, {}])
    kept = s.restrict_vertices(np.ones((3, 4, 3), np.float32), mix)[:, :, 0]
    np.testing.assert_array_equal(kept, [[0, 1, 1, 0], [0.5, 0.5, 0.5, 0], [1, 1, 1, 1]])


def test_maps_are_kept_against_their_reference_only_on_the_support():
    s = _support()
    channels = {"albedo": 3, "roughness": 1, "position": 3}
    ref = {kind: {1001: np.zeros((c, RES, RES), np.float32)} for kind, c in channels.items()}
    maps = {k: {1001: np.ones_like(t[1001])} for k, t in ref.items()}
    out = s.restrict_maps([maps], [ref], s.weights_for([{"eyeBlink_L": 1.0}]))[0]
    assert out["albedo"][1001].sum() == 0
    assert out["roughness"][1001].ravel()[:3].tolist() == [1, 1, 0]
    assert np.array_equal(out["position"][1001], maps["position"][1001])  # not in the layout: as it is


def test_a_folder_with_foreign_keys_is_one_clear_error(tmp_path):
    folder = _support().save_pretrained(tmp_path / "support")
    (folder / "config.json").write_text('{"expressions": [], "vertex_count": 1, "colour": 1}')
    with pytest.raises(ExpDiffInputError, match="unknown expression support key"):
        ExpressionSupport.from_pretrained(folder)
