"""The expression vocabulary: 56 FACS units + neutral, their codes, sides, prompts and the ICT mapping."""

from __future__ import annotations

import re

import numpy as np
import pytest

from expdiff_core import facs
from expdiff_core.errors import ExpDiffInputError


def test_there_are_exactly_56_units_with_unique_names():
    assert len(facs.UNITS) == 56
    assert len(set(facs.UNIT_NAMES)) == 56


def test_expressions_are_neutral_then_the_units():
    assert facs.EXPRESSIONS == (facs.NEUTRAL, *facs.UNIT_NAMES)
    assert facs.NEUTRAL == "neutral" and "neutral" not in facs.UNIT_NAMES


def test_every_unit_has_wellformed_codes_side_region_and_prompt():
    for u in facs.UNITS:
        assert u.action_units and all(re.fullmatch(r"AU\d{1,2}", c) for c in u.action_units), u
        assert u.side in ("L", "R", "both"), u
        assert u.region in ("brow", "eye", "cheek", "nose", "mouth", "jaw", "tongue"), u
        assert u.prompt and u.prompt == u.prompt.strip(), u


def test_prompts_name_the_side_the_unit_acts_on():
    for u in facs.UNITS:
        words = set(re.findall(r"[a-z]+", u.prompt.lower()))
        if u.side == "L":
            assert "left" in words and "right" not in words, u.prompt
        elif u.side == "R":
            assert "right" in words and "left" not in words, u.prompt
        else:
            assert not {"left", "right"} & words, u.prompt


@pytest.mark.parametrize("name, codes", [
    ("jawOpen", ("AU26", "AU27")), ("mouthSmile_L", ("AU12",)), ("browInnerUp_R", ("AU1",)),
    ("browOuterUp_L", ("AU2",)), ("browDown_L", ("AU4",)), ("cheekRaiser_R", ("AU6",)),
    ("eyeBlink_L", ("AU45",)), ("eyeSquint_R", ("AU7", "AU44")), ("eyeWide_L", ("AU5",)),
    ("noseSneer_L", ("AU9",)), ("mouthFrown_R", ("AU15",)), ("mouthDimple_L", ("AU14",)),
    ("mouthStretch_R", ("AU20",)), ("mouthPucker", ("AU18",)), ("mouthFunnel", ("AU22",)),
    ("mouthPress_L", ("AU24",)), ("mouthRollLower", ("AU28",)), ("mouthRollUpper", ("AU28",)),
    ("mouthShrugLower", ("AU17",)), ("mouthUpperUp_R", ("AU10",)), ("mouthLowerDown_L", ("AU16",)),
    ("cheekPuff_L", ("AU34",)), ("eyeLookUp_L", ("AU63",)), ("eyeLookDown_R", ("AU64",)),
    ("jawLeft", ("AU30",)), ("jawForward", ("AU29",)), ("mouthClose", ("AU8",)), ("tongueOut", ("AU19",)),
])
def test_facs_codes_of_known_units(name, codes):
    assert facs.unit(name).action_units == codes


def test_gaze_codes_follow_where_the_eye_turns():
    # The left eye looking in turns toward the nose, i.e. to the character's right: AU62.
    assert facs.unit("eyeLookIn_L").action_units == ("AU62",)
    assert facs.unit("eyeLookOut_L").action_units == ("AU61",)
    assert facs.unit("eyeLookIn_R").action_units == ("AU61",)
    assert facs.unit("eyeLookOut_R").action_units == ("AU62",)


def test_every_one_sided_unit_has_a_mirror_in_the_same_region():
    for u in facs.UNITS:
        other = facs.unit(facs.mirror_name(u.name))
        assert other.region == u.region
        if u.side == "both":
            assert other.name == u.name
        else:
            assert {u.side, other.side} == {"L", "R"}


def test_unknown_unit_error_lists_near_matches():
    with pytest.raises(ExpDiffInputError, match="mouthSmile_L"):
        facs.unit("mouthSmile")


def test_ict_mapping_covers_the_55_ict_expression_shapes_and_lacks_only_the_tongue():
    assert len(facs.ICT_UNIT_NAMES) == 55
    assert set(facs.ICT_UNIT_NAMES.values()) == set(facs.UNIT_NAMES) - {"tongueOut"}
    assert facs.UNITS_MISSING_FROM_ICT == ("tongueOut",)


def test_ict_mapping_matches_the_real_ict_file(ict_dir):
    names = [str(n) for n in np.load(ict_dir / "ict_facekit_deltas.npz")["expression_names"]]
    assert len(names) == 57
    expression_shapes = [n for n in names if n not in facs.ICT_SKIPPED_SHAPES]
    assert sorted(expression_shapes) == sorted(facs.ICT_UNIT_NAMES)
    assert set(facs.ICT_SKIPPED_SHAPES) <= set(names)
