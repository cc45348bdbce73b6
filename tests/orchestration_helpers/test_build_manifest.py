"""The nightly build manifest: defaults, relative paths, and errors that name the manifest and the problem."""

from __future__ import annotations

import pytest

from expdiff_core import facs
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.orchestration_helpers.build_manifest import read_build_manifest


def _write(tmp_path, text):
    path = tmp_path / "studio" / "nightly.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_apply_and_paths_resolve_against_the_manifest_folder(tmp_path):
    path = _write(tmp_path, """
[defaults]
model = "models:/expdiff@champion"
seed = 4

[[characters]]
name = "alice"
mesh = "alice/neutral.obj"
textures = { albedo = "alice/tex/albedo.<UDIM>.exr", normal = "/abs/normal" }
expressions = ["jawOpen", "nose right"]

[[characters]]
name = "bob"
mesh = "bob.obj"
textures = { albedo = "bob" }
seed = 9
model = "models:/expdiff/3"
""")
    alice, bob = read_build_manifest(path)
    studio = str(path.parent.resolve())
    assert alice == {"name": "alice", "mesh": f"{studio}/alice/neutral.obj",
                     "textures": {"albedo": f"{studio}/alice/tex/albedo.<UDIM>.exr", "normal": "/abs/normal"},
                     "expressions": ["jawOpen", "nose right"], "model": "models:/expdiff@champion", "seed": 4,
                     "steps": None}
    assert bob["expressions"] == list(facs.UNIT_NAMES)  # no list anywhere: every FACS unit
    assert (bob["seed"], bob["model"]) == (9, "models:/expdiff/3")


@pytest.mark.parametrize("body,problem", [
    ('[[characters]]\nname = "a"\nmesh = "a.obj"\ntextures = { albedo = "t" }\n', "missing ['model']"),
    ('[defaults]\nmodel = "m"\n[[characters]]\nname = "a"\nmesh = "a.obj"\ntextures = { normal = "t" }\n',
     "at least 'albedo'"),
    ('[defaults]\nmodel = "m"\n[[characters]]\nname = "a"\nmesh = "m"\ntextures = { albedo = "t" }\ncolour = 1\n',
     "unknown key(s) ['colour']"),
    ('[defaults]\nmodel = "m"\n[[characters]]\nname = "a"\nmesh = "m"\ntextures = { albedo = "t" }\n'
     '[[characters]]\nname = "a"\nmesh = "m"\ntextures = { albedo = "t" }\n', "'a' listed twice"),
    ('[defaults]\nmodel = "m"\n', "no [[characters]] entries"),
    ('[defaults\nmodel = "m"\n', "invalid TOML"),
])
def test_problems_name_the_manifest(tmp_path, body, problem):
    path = _write(tmp_path, body)
    with pytest.raises(ExpDiffInputError) as err:
        read_build_manifest(path)
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(ExpDiffInputError, match="build manifest not found"):
        read_build_manifest(tmp_path / "nope.toml")
