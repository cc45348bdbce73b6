"""The face factory: whole subjects, deterministic datasets, and `expdiff data synth`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from expdiff_core import facs
from expdiff_core.cli import main
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.dataset import Dataset, validate_dataset
from expdiff_core.synth.factory import (ProceduralSource, assign_splits, identity_seed, iter_expressions,
                                        skin_params_of, skin_rasters, synthesize_subject, wrinkle_correlations,
                                        write_dataset)
from expdiff_core.synth.skin import SkinLayout


@pytest.fixture(scope="module")
def source():
    return ProceduralSource()


@pytest.fixture(scope="module")
def subject(source):
    return synthesize_subject(11, 64, source)


def tree_bytes(root):
    """{relative path: bytes} of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_identical_trees(a_root, b_root) -> None:
    """Same files, same bytes; a failure says which files differ and, for EXRs, in which header fields."""
    import OpenImageIO as oiio

    a, b = tree_bytes(a_root), tree_bytes(b_root)
    assert sorted(a) == sorted(b)
    different = [p for p in a if a[p] != b[p]]
    if different:
        def header(path):
            inp = oiio.ImageInput.open(str(path))
            attrs = {x.name: x.value for x in inp.spec().extra_attribs}
            inp.close()
            return attrs

        exr = [p for p in different if p.endswith(".exr")][:5]
        fields = sorted({k for p in exr for k, v in header(a_root / p).items() if header(b_root / p).get(k) != v})
        pytest.fail(f"{len(different)} of {len(a)} files differ (e.g. {different[:3]}); "
                    f"differing EXR header fields: {fields}")


def test_subject_has_neutral_and_every_unit_on_both_tiles(subject, source):
    assert subject.expressions == list(facs.EXPRESSIONS)
    n = source.template.n_vertices
    for name in subject.expressions:
        assert subject.vertices[name].shape == (n, 3) and subject.vertices[name].dtype == np.float32
        maps = subject.maps[name]
        assert sorted(maps) == ["albedo", "normal", "position", "roughness", "specular"]
        for kind, channels in (("albedo", 3), ("specular", 1), ("roughness", 1), ("normal", 3), ("position", 3)):
            assert sorted(maps[kind]) == [1001, 1002]
            assert maps[kind][1001].shape == (channels, 64, 64)
    assert np.abs(subject.maps["neutral"]["position"][1001]).max() <= 1.0
    moved = np.linalg.norm(subject.vertices["jawOpen"] - subject.vertices["neutral"], axis=1).max()
    assert moved > 0.5  # the jaw drops by centimetres


def test_expression_maps_differ_from_the_neutral_where_the_face_moves(subject):
    neutral = subject.maps["neutral"]["normal"][1001]
    assert not np.array_equal(subject.maps["jawOpen"]["normal"][1001], neutral)
    # an eye movement leaves the back of the head as it was (up to float round-off of far-field motion)
    np.testing.assert_allclose(subject.maps["eyeLookUp_L"]["albedo"][1002], subject.maps["neutral"]["albedo"][1002],
                               atol=1e-4)


def test_subjects_are_deterministic_and_seed_dependent(source, subject):
    again = synthesize_subject(11, 64, source)
    other = synthesize_subject(12, 64, source, position=None)
    for name in ("neutral", "mouthSmile_L"):
        np.testing.assert_array_equal(again.vertices[name], subject.vertices[name])
        for kind in ("albedo", "normal", "position"):
            np.testing.assert_array_equal(again.maps[name][kind][1001], subject.maps[name][kind][1001])
    assert not np.array_equal(other.vertices["neutral"], subject.vertices["neutral"])
    assert not np.array_equal(other.maps["neutral"]["albedo"][1001], subject.maps["neutral"]["albedo"][1001])


def test_identity_skin_parameters_reach_the_maps(source):
    from expdiff_core.synth.identity import sample_identity

    people = [sample_identity(s) for s in range(40)]
    fair = min(people, key=lambda p: p.melanin)
    dark = max(people, key=lambda p: p.melanin)
    assert skin_params_of(dark).melanin > skin_params_of(fair).melanin + 0.3
    rasters = skin_rasters(source, 64)
    layout = SkinLayout(source.template, rasters)
    albedo = {}
    for person in (fair, dark):
        identity = source.identity(person.seed)
        albedo[person.seed] = next(iter_expressions(source, identity, rasters, layout))[2]["albedo"][1001]
    assert albedo[dark.seed].mean() < 0.6 * albedo[fair.seed].mean()


def test_wrinkles_follow_geometry_for_every_unit(source, capsys):
    """Per unit: correlation over skin texels between compression and the rise of normal-map detail."""
    correlations = {u: f["correlation"] for u, f in wrinkle_correlations(source, 128, seed=0).items()}
    with capsys.disabled():
        print("\ncompression vs normal-detail change, per unit, procedural identity (128^2):")
        for unit, value in correlations.items():
            print(f"  {unit:<18}{value:+.3f}")
    assert all(v > 0 for v in correlations.values()), {u: v for u, v in correlations.items() if not v > 0}


def test_splits_hold_out_whole_identities():
    for n in (1, 2, 3, 10, 37):
        splits = assign_splits(n, seed := 5)
        assert len(splits) == n and set(splits) <= {"train", "val", "test"}
        assert splits == assign_splits(n, seed)
        assert splits.count("train") >= max(1, n - 2 * max(1, round(0.1 * n)))
    assert assign_splits(2, 0).count("test") == 1
    assert {"train", "val", "test"} == set(assign_splits(3, 0))
    assert identity_seed(0, 1) != identity_seed(0, 2) != identity_seed(1, 1)


def test_resolution_range_is_enforced(source, tmp_path):
    for bad in (32, 5000):
        with pytest.raises(ExpDiffInputError, match="64..4096"):
            write_dataset(tmp_path / "x", source, 1, bad, progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    assert main(["data", "synth", "--identities", "1", "--resolution", "8", "--out", str(tmp_path / "x")]) == 2
    assert "64..4096" in capsys.readouterr().err
    assert main(["data", "synth", "--identities", "0", "--out", str(tmp_path / "x")]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["data", "synth", "--identities", "1", "--out", str(tmp_path)]) == 2
    assert "will not be overwritten" in capsys.readouterr().err


@pytest.mark.slow  # two full datasets (57 expressions x 8 EXRs each): 3-10 s
def test_same_seed_gives_byte_identical_datasets(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["data", "synth", "--identities", "1", "--resolution", "64", "--seed", "3",
                     "--out", str(tmp_path / name)]) == 0
    assert_identical_trees(tmp_path / "a", tmp_path / "b")
    a = tree_bytes(tmp_path / "a")
    assert len(a) == 1 + 2 + 1 + 57 * 9  # manifest, template OBJ + signature, subject.json, 57 x (npy + 8 EXR)
    manifest = json.loads(a["manifest.json"])
    assert manifest["generator"]["seed"] == 3 and manifest["expressions"]["absent_units"] == {}
    assert validate_dataset(tmp_path / "a") == []
    assert "identities/min" in capsys.readouterr().out


@pytest.mark.slow  # two datasets of two identities, one with 2 worker processes: 9-20 s
def test_worker_count_does_not_change_the_output(source, tmp_path):
    write_dataset(tmp_path / "one", source, 2, 64, seed=9, workers=1, progress=False)
    write_dataset(tmp_path / "two", source, 2, 64, seed=9, workers=2, progress=False)
    assert_identical_trees(tmp_path / "one", tmp_path / "two")
    ds = Dataset(tmp_path / "two")
    assert ds.splits == {"train": ["s0001"], "val": [], "test": ["s0000"]} or \
        ds.splits == {"train": ["s0000"], "val": [], "test": ["s0001"]}
