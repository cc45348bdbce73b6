"""A character build stage by stage on the tiny model: files in, a valid published USD version out."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from expdiff_core import build
from expdiff_core.errors import ExpDiffInputError, TemplateMismatchError
from expdiff_core.io.mesh import write_obj
from expdiff_core.io.textures import write_texture_set
from expdiff_core.synth.template import template_mesh

from .conftest import neutral_textures


@pytest.fixture(scope="module")
def asset(tmp_path_factory):
    root = tmp_path_factory.mktemp("asset")
    write_obj(template_mesh(), root / "head.obj")
    for kind, tiles in neutral_textures(48).items():
        write_texture_set(tiles, root / "tex", kind)
    return root


@pytest.fixture(scope="module")
def built(asset, tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    model = str(tiny_model)
    textures = {k: str(asset / "tex" / f"{k}.<UDIM>.exr") for k in ("albedo", "specular", "roughness", "normal")}
    ingested = build.ingest(asset / "head.obj", textures, model)
    encoded = build.encode_neutral(ingested, model, work, device="cpu")
    diffused = build.diffuse(encoded, model, ["jawOpen", "mouthSmile_L"], work, seed=1, steps=3, device="cpu")
    decoded = build.decode(diffused, model, work, device="cpu")
    recovered = build.recover(decoded, ingested, model, work)
    textured = [build.transfer_textures(decoded, ingested, k, work) for k in ("albedo", "specular", "roughness", "normal")]
    prov = dict(model_name="tiny", model_version="0", seed=1, scheduler="ddim", steps=3)
    exported = build.export_usd(ingested, recovered, textured, "hero", work / "out", prov)
    return dict(ingested=ingested, diffused=diffused, recovered=recovered, textured=textured,
                exported=exported, work=work)


def test_stage_results_are_json(built):
    for key in ("ingested", "diffused", "recovered", "exported"):
        json.dumps(built[key])


def test_ingest_hashes_every_input_file(built):
    hashes = built["ingested"]["hashes"]
    assert len(hashes) == 1 + 4 * 2  # mesh + 4 kinds x 2 tiles
    assert all(len(h) == 64 for h in hashes.values())


def test_recovered_neutral_is_the_input_mesh(built):
    v = load_file(built["recovered"]["vertices"])
    assert np.array_equal(v["neutral"].numpy(), template_mesh().vertices)
    assert set(built["recovered"]["figures"]) == {"neutral", "jawOpen", "mouthSmile_L"}


def test_textures_keep_the_users_resolution(built):
    from expdiff_core.io.images import read_image

    maps = built["textured"][0]["maps"]
    assert read_image(f"{maps}/jawOpen/albedo.1001.exr").shape == (48, 48, 3)


def test_published_version_validates(built):
    result = build.validate_usd(built["exported"])
    assert built["exported"]["version_dir"].endswith("v001")
    assert not [i for i in result["issues"] if i.startswith("error")]


def test_contact_sheet_is_written(built):
    out = build.contact_sheet(built["ingested"], built["recovered"], built["textured"], built["work"] / "sheet.png", size=64)
    from expdiff_core.io.images import read_image

    assert read_image(out["contact_sheet"]).shape[2] == 3


def test_ingest_names_a_mesh_off_the_template(tmp_path, tiny_model, asset):
    mesh = template_mesh()
    bad = mesh.with_vertices(mesh.vertices)
    bad.uvs = bad.uvs + 0.01
    write_obj(bad, tmp_path / "shifted.obj")
    with pytest.raises(TemplateMismatchError, match="shifted.obj"):
        build.ingest(tmp_path / "shifted.obj", {"albedo": str(asset / "tex")}, str(tiny_model))


def test_ingest_requires_every_face_tile(tmp_path, tiny_model, asset):
    tiles = neutral_textures(48)["albedo"]
    write_texture_set({1001: tiles[1001]}, tmp_path / "tex", "albedo")
    with pytest.raises(ExpDiffInputError, match=r"lacks UDIM tile\(s\) \[1002\]"):
        build.ingest(asset / "head.obj", {"albedo": str(tmp_path / "tex")}, str(tiny_model))


@pytest.mark.parametrize("model_fixture, strength", [
    ("tiny_prior_model", None),  # the model's 0: the prior as it is
    ("tiny_prior_model", 0.5),  # diffused from the prior
    ("tiny_change_model", None),  # a change model: decoded changes on the character's neutral maps
    ("tiny_map_prior_model", None),  # BRDF maps from the prior's map part, in map space
    ("tiny_map_prior_model", 0.5),  # ... plus what sampling changed from the prior
    ("tiny_linear_prior_model", None),  # the linear change codec: the prior's changes encoded as its start
    ("tiny_linear_prior_model", 0.5),
    ("tiny_support_model", None),  # each expression's change kept where its units act
])
def test_stages_match_the_pipeline_run_in_one_go(asset, request, tmp_path, model_fixture, strength):
    """The staged build (files between stages) gives the vertices and maps of ``ExpDiffPipeline.__call__``."""
    from expdiff_core.io.textures import read_texture_set
    from expdiff_core.pipelines.expdiff import transfer_map

    model = str(request.getfixturevalue(model_fixture))
    textures = {k: str(asset / "tex" / f"{k}.<UDIM>.exr") for k in ("albedo", "specular", "roughness", "normal")}
    ingested = build.ingest(asset / "head.obj", textures, model)
    encoded = build.encode_neutral(ingested, model, tmp_path, device="cpu")
    diffused = build.diffuse(encoded, model, ["jawOpen", "mouthSmile_L"], tmp_path, seed=0, device="cpu",
                             strength=strength)
    decoded = build.decode(diffused, model, tmp_path, device="cpu")
    staged = load_file(build.recover(decoded, ingested, model, tmp_path)["vertices"])
    albedo = build.transfer_textures(decoded, ingested, "albedo", tmp_path)

    user = {k: read_texture_set({int(u): p for u, p in tiles.items()}, k) for k, tiles in ingested["textures"].items()}
    direct = build.load_pipeline(model, "cpu")(template_mesh(), user, ["jawOpen", "mouthSmile_L"], seed=0,
                                               strength=strength, progress=False)
    for label in ("neutral", "jawOpen", "mouthSmile_L"):
        # float EXR round trips of the decoded maps are exact; only float32 summation order differs
        np.testing.assert_allclose(staged[label].numpy(), direct.vertices[label], atol=1e-4)
    expected = transfer_map(user["albedo"][1001], direct.maps["jawOpen"]["albedo"][1001],
                            direct.references["jawOpen"]["albedo"][1001], "albedo")
    written = build._read_maps(albedo["maps"], ["jawOpen"], ["albedo"], [1001])["jawOpen"]["albedo"][1001]
    assert np.abs(written - expected).max() < 2e-3  # written as half floats (2^-11 relative)
