"""Dataset contact sheets: one subject's expressions rendered from a real (tiny) dataset."""

from __future__ import annotations

import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.images import read_image
from expdiff_core.orchestration_helpers.previews import dataset_contact_sheet


def test_sheet_has_one_cell_per_expression_the_dataset_holds(make_tiny_dataset, tmp_path):
    root = make_tiny_dataset(tmp_path / "ds")  # neutral, jawOpen, mouthSmile_L
    out = dataset_contact_sheet(root, tmp_path / "sheet.png", subject="s1", size=48, columns=3)
    image = read_image(out)
    # 3 columns x 48 px + padding, one row plus the title: wider than tall, and not a single cell.
    assert image.shape[2] == 3 and image.shape[1] > 3 * 48 and 48 < image.shape[0] < 2 * 48 + 60


def test_unknown_subject_or_expression_is_named(make_tiny_dataset, tmp_path):
    root = make_tiny_dataset(tmp_path / "ds")
    with pytest.raises(ExpDiffInputError, match="no subject 'zz'"):
        dataset_contact_sheet(root, tmp_path / "a.png", subject="zz")
    with pytest.raises(ExpDiffInputError, match=r"no expression\(s\) \['cheekPuff_L'\]"):
        dataset_contact_sheet(root, tmp_path / "b.png", expressions=["neutral", "cheekPuff_L"])


def test_an_existing_sheet_is_not_overwritten(make_tiny_dataset, tmp_path):
    from expdiff_core.errors import PublishError

    root = make_tiny_dataset(tmp_path / "ds")
    out = dataset_contact_sheet(root, tmp_path / "sheet.png", size=32)
    with pytest.raises(PublishError):
        dataset_contact_sheet(root, out, size=32)
