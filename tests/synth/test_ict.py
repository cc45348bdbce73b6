"""ICT-FaceKit adapter: identities from its PCA modes, its shapes as our units, datasets on its topology."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from expdiff_core import facs
from expdiff_core.cli import main
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.dataset import Dataset, validate_dataset
from expdiff_core.synth import ict

ICT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ict-facekit"


@pytest.fixture(scope="module")
def kit():
    if not (ICT_DIR / ict.ICT_MESH).is_file():
        pytest.skip(f"ICT-FaceKit data not found at {ICT_DIR}")
    return ict.load_ict_facekit(ICT_DIR)


def test_units_are_the_vocabulary_minus_tongue_out(kit):
    assert len(kit.units) == 55
    assert kit.units == [u for u in facs.UNIT_NAMES if u != "tongueOut"]
    assert list(kit.absent_units) == ["tongueOut"]
    assert "PupilDilate_L" not in kit.unit_deltas


def test_mouth_close_unit_is_jaw_open_plus_ict_mouth_close(kit):
    with np.load(ICT_DIR / ict.ICT_DELTAS) as data:
        names = [str(n) for n in data["expression_names"]]
        shapes = data["expression_deltas"]
        jaw, close = shapes[names.index("jawOpen")], shapes[names.index("mouthClose")]
    np.testing.assert_allclose(kit.unit_deltas["mouthClose"], jaw + close, atol=1e-6)
    np.testing.assert_array_equal(kit.unit_deltas["jawOpen"], jaw)


def test_identities_are_deterministic_distinct_and_plausible(kit):
    a, b, c = (ict.identity_vertices(kit, s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    offset = np.linalg.norm(a - kit.mesh.vertices, axis=1)
    # 0.6 x N(0, 1) weights on modes averaging 0.33 cm (first) to 0.005 cm (last): a few mm on average
    assert 0.05 < offset.mean() < 1.0
    assert np.linalg.norm(a - c, axis=1).mean() > 0.05


def test_expression_is_identity_plus_shape(kit):
    neutral = ict.identity_vertices(kit, 1)
    smile = ict.expression_vertices(kit, neutral, "mouthSmile_L")
    np.testing.assert_allclose(smile - neutral, kit.unit_deltas["mouthSmile_L"], atol=1e-5)
    np.testing.assert_array_equal(ict.expression_vertices(kit, neutral, "neutral"), neutral)
    with pytest.raises(ExpDiffInputError, match="tongueOut"):
        ict.expression_vertices(kit, neutral, "tongueOut")


def test_skin_regions_sit_on_the_face_tile_in_anatomical_order(kit):
    regions = ict.ict_skin_regions(kit)
    lips, brows = regions.lip_outline, regions.brow_lines
    assert ((lips >= 0) & (lips < 1)).all() and all(((b >= 0) & (b < 1)).all() for b in brows)
    assert all(b[:, 1].mean() > lips[:, 1].mean() + 0.2 for b in brows)  # brows well above the mouth in v
    # each brow runs medial -> lateral: away from the face's vertical midline
    mid_u = lips[:, 0].mean()
    for b in brows:
        assert abs(b[-1, 0] - mid_u) > abs(b[0, 0] - mid_u)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ExpDiffInputError, match="ICT-FaceKit folder not found"):
        ict.load_ict_facekit(tmp_path / "nowhere")
    if not (ICT_DIR / ict.ICT_MESH).is_file():
        pytest.skip("ICT-FaceKit data not found")
    (tmp_path / ict.ICT_MESH).symlink_to((ICT_DIR / ict.ICT_MESH).resolve())
    with pytest.raises(ExpDiffInputError) as err:
        ict.load_ict_facekit(tmp_path)
    assert err.value.path == str(tmp_path / ict.ICT_DELTAS)


@pytest.mark.slow  # ~14 s: 56 expressions x 8 EXRs plus the 26k-vertex template OBJ and a full validation
def test_from_ict_facekit_writes_a_valid_dataset_on_ict_topology(kit, tmp_path, capsys):
    out = tmp_path / "ict"
    assert main(["data", "from-ict-facekit", "--source", str(ICT_DIR), "--identities", "1",
                 "--resolution", "64", "--out", str(out)]) == 0
    assert validate_dataset(out) == []
    ds = Dataset(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert ds.vertex_count == 26719 and ds.udims == [1001, 1002]
    assert manifest["expressions"]["absent_units"] == {"tongueOut": "ICT-FaceKit has no shape for this unit"}
    assert manifest["template"]["skin_groups"] == ["M_Face", "M_BackHead"]
    assert len(ds.expressions) == 56
    assert ds.template().topology_hash() == kit.mesh.topology_hash()
    seed = ds.subject_info("s0000")["seed"]
    np.testing.assert_allclose(ds.load_vertices("s0000", "jawOpen"),
                               ict.identity_vertices(kit, seed) + kit.unit_deltas["jawOpen"], atol=1e-5)
    assert "identities/min" in capsys.readouterr().out
