"""The dataset format: writer, reader, and a validator that names the file of every problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from expdiff_core import facs
from expdiff_core.cli import main
from expdiff_core.errors import ExpDiffInputError, PublishError
from expdiff_core.io.dataset import (
    BRDF_KINDS,
    Dataset,
    DatasetSpec,
    DatasetWriter,
    read_vertices,
    require_valid_dataset,
    validate_dataset,
    write_vertices,
)
from expdiff_core.io.images import write_image
from expdiff_core.synth.skin import SkinParams, SkinSynthesizer
from expdiff_core.uv.raster import uv_raster

from ..helpers.meshes import sheet_face

RES = 64
UNITS = ["jawOpen", "mouthSmile_L", "eyeBlink_R"]


def build(root, subjects=("s0", "s1"), splits=("train", "test")) -> None:
    """A real small dataset: a sheet 'face' squeezed per unit, maps from the skin synthesiser at 64^2."""
    template = sheet_face()
    rasters = uv_raster(template, RES, groups=["skin"])
    spec = DatasetSpec(units=UNITS, map_kinds=BRDF_KINDS, resolution=RES, udims=[1001], skin_groups=["skin"],
                       generator={"name": "test", "seed": 0},
                       absent_units={u: "not in this test" for u in facs.UNIT_NAMES if u not in UNITS})
    with DatasetWriter(root, template, spec) as writer:
        for k, (subject, split) in enumerate(zip(subjects, splits)):
            synth = SkinSynthesizer(template, rasters, SkinParams(melanin=0.2 + 0.3 * k), seed=k)
            for i, expression in enumerate(spec.expressions()):
                squeeze = np.array([1.0 - 0.08 * i, 1.0, 1.0], dtype=np.float32)
                vertices = template.vertices * squeeze
                writer.write_expression(subject, expression, vertices, synth.maps(vertices))
            writer.add_subject(subject, split, {"seed": k})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "dataset"
    build(root)
    return root


@pytest.fixture
def dataset(pristine, tmp_path):
    """A fresh copy of the valid dataset that a test may damage."""
    root = tmp_path / "dataset"
    shutil.copytree(pristine, root)
    return root


def edit_manifest(root, change) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------- valid data
def test_a_written_dataset_validates(pristine):
    assert validate_dataset(pristine) == []


def test_manifest_describes_the_data(pristine):
    manifest = json.loads((pristine / "manifest.json").read_text())
    assert manifest["length_unit"] == "cm"
    assert manifest["expressions"]["units"] == UNITS
    assert "tongueOut" in manifest["expressions"]["absent_units"]
    assert manifest["maps"]["albedo"]["colour_space"] == "lin_rec709"
    assert manifest["maps"]["normal"]["colour_space"] == "data"
    assert manifest["resolution"] == RES and manifest["udims"] == [1001]
    assert manifest["splits"] == {"train": ["s0"], "val": [], "test": ["s1"]}
    assert manifest["template"]["vertex_count"] == 81


def test_reader_returns_what_was_written(pristine):
    ds = Dataset(pristine)
    assert ds.subjects == ["s0", "s1"] and ds.split("test") == ["s1"]
    assert ds.expressions == ["neutral"] + UNITS
    template = ds.template()
    assert template.n_vertices == 81
    vertices = ds.load_vertices("s0", "jawOpen")
    np.testing.assert_array_equal(vertices, template.vertices * np.array([0.92, 1, 1], dtype=np.float32))
    maps = ds.load_maps("s1", "eyeBlink_R")
    expected = SkinSynthesizer(template, uv_raster(template, RES, groups=["skin"]), SkinParams(melanin=0.5),
                               seed=1).maps(vertices * np.array([0.76 / 0.92, 1, 1], dtype=np.float32))
    for kind in BRDF_KINDS:
        assert maps[kind][1001].shape == expected[kind][1001].shape
        # half floats keep 11 significant bits: 2^-11 relative, < 5e-4 absolute for values in [0, 1]
        np.testing.assert_allclose(maps[kind][1001], expected[kind][1001], atol=5e-4)
    assert ds.subject_info("s1")["split"] == "test"
    assert [s for s in ds.samples(split="train")][:2] == [("s0", "neutral"), ("s0", "jawOpen")]


def test_vertices_files_refuse_pickles_and_wrong_shapes(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ExpDiffInputError, match="v.npy"):
        read_vertices(path)
    with pytest.raises(ExpDiffInputError, match=r"\(V, 3\)"):
        write_vertices(path, np.zeros((4, 2)))


def test_writer_never_overwrites_and_leaves_nothing_on_failure(pristine, tmp_path):
    with pytest.raises(PublishError):
        build(pristine)
    target = tmp_path / "broken"
    spec = DatasetSpec(UNITS, BRDF_KINDS, RES, [1001], ["skin"], {"name": "test"})
    with pytest.raises(RuntimeError):
        with DatasetWriter(target, sheet_face(), spec):
            raise RuntimeError("generator crashed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- problems
def test_missing_unit_is_reported_with_its_folder(dataset):
    shutil.rmtree(dataset / "subjects" / "s1" / "mouthSmile_L")
    problems = validate_dataset(dataset)
    assert problems == [f"{dataset / 'subjects' / 's1' / 'mouthSmile_L'}: missing expression unit 'mouthSmile_L'"]


def test_wrong_resolution_is_reported_with_the_file(dataset):
    path = dataset / "subjects" / "s0" / "jawOpen" / "roughness.1001.exr"
    write_image(path, np.full((32, 32, 1), 0.5, np.float32))
    problems = validate_dataset(dataset)
    assert len(problems) == 1 and problems[0].startswith(str(path))
    assert "wrong resolution 32x32" in problems[0]


def test_wrong_vertex_count_is_reported_with_the_file(dataset):
    path = dataset / "subjects" / "s0" / "neutral" / "vertices.npy"
    write_vertices(path, read_vertices(path)[:-1])
    assert validate_dataset(dataset) == [f"{path}: has 80 vertices, the template has 81"]


def test_unknown_map_kind_is_reported_with_the_file(dataset):
    path = dataset / "subjects" / "s1" / "neutral" / "gloss.1001.exr"
    write_image(path, np.zeros((RES, RES, 1), np.float32))
    assert validate_dataset(dataset) == [f"{path}: unknown map kind 'gloss'"]


def test_missing_and_corrupt_maps_are_reported_with_the_file(dataset):
    missing = dataset / "subjects" / "s0" / "eyeBlink_R" / "normal.1001.exr"
    missing.unlink()
    corrupt = dataset / "subjects" / "s1" / "jawOpen" / "albedo.1001.exr"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    problems = validate_dataset(dataset)
    assert len(problems) == 2
    assert problems[0] == f"{missing}: missing normal map"
    assert problems[1].startswith(f"{corrupt}: ")


def test_out_of_range_values_are_reported(dataset):
    path = dataset / "subjects" / "s0" / "neutral" / "specular.1001.exr"
    write_image(path, np.full((RES, RES, 1), 1.5, np.float32))
    problems = validate_dataset(dataset)
    assert len(problems) == 1 and problems[0].startswith(str(path)) and "outside the specular range" in problems[0]


def test_quick_check_skips_pixel_reads(dataset):
    path = dataset / "subjects" / "s0" / "neutral" / "specular.1001.exr"
    write_image(path, np.full((RES, RES, 1), 1.5, np.float32))
    assert validate_dataset(dataset, check_pixels=False) == []


def test_manifest_errors_are_reported(dataset):
    def damage(m):
        del m["resolution"]
        m["splits"]["val"] = ["s0"]

    edit_manifest(dataset, damage)
    problems = validate_dataset(dataset)
    manifest = dataset / "manifest.json"
    assert f"{manifest}: missing key 'resolution'" in problems
    assert f"{manifest}: subject 's0' is in both 'train' and 'val' splits" in problems


def test_units_outside_the_vocabulary_are_reported(dataset):
    edit_manifest(dataset, lambda m: m["expressions"]["units"].append("mouthYawn"))
    problems = validate_dataset(dataset)
    manifest = dataset / "manifest.json"
    assert f"{manifest}: unknown expression unit 'mouthYawn' (not in the FACS vocabulary)" in problems
    assert f"{dataset / 'subjects' / 's0' / 'mouthYawn'}: missing expression unit 'mouthYawn'" in problems


def test_template_mismatch_is_reported(dataset):
    edit_manifest(dataset, lambda m: m["template"].update(vertex_count=5000))
    problems = validate_dataset(dataset, check_pixels=False)
    assert problems[0] == f"{dataset / 'template' / 'template.obj'}: template has 81 vertices, manifest says 5000"
    # every expression's vertices are then the wrong count too, each reported with its file
    assert sum("has 81 vertices, the template has 5000" in p for p in problems) == 8


def test_not_a_dataset(tmp_path):
    assert validate_dataset(tmp_path) == [f"{tmp_path / 'manifest.json'}: manifest missing; not an ExpDiff dataset"]


def test_trainers_refuse_an_invalid_dataset(dataset):
    shutil.rmtree(dataset / "subjects" / "s0" / "jawOpen")
    with pytest.raises(ExpDiffInputError, match="1 problem") as err:
        require_valid_dataset(dataset)
    assert str(dataset / "subjects" / "s0" / "jawOpen") in str(err.value)


def test_trainers_accept_a_valid_dataset(pristine):
    assert require_valid_dataset(pristine).subjects == ["s0", "s1"]


# ------------------------------------------------------------------------------------- CLI
def test_cli_validate_lists_problems_and_exits_1(dataset, capsys):
    shutil.rmtree(dataset / "subjects" / "s1" / "eyeBlink_R")
    (dataset / "subjects" / "s0" / "neutral" / "vertices.npy").unlink()
    assert main(["data", "validate", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert str(dataset / "subjects" / "s1" / "eyeBlink_R") in out
    assert str(dataset / "subjects" / "s0" / "neutral" / "vertices.npy") in out
    assert "2 problem(s)" in out


def test_cli_validate_passes_a_valid_dataset(pristine, capsys):
    assert main(["data", "validate", str(pristine)]) == 0
    assert "valid" in capsys.readouterr().out
