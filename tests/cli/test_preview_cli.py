"""``expdiff preview``: a contact sheet of a dataset subject, or one render of a mesh file."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core import facs
from expdiff_core.cli import main
from expdiff_core.io.dataset import BRDF_KINDS, DatasetSpec, DatasetWriter
from expdiff_core.io.images import read_image
from expdiff_core.io.mesh import FaceMesh, write_obj

UNITS = ["jawOpen", "mouthSmile_L"]
RES = 16


def box(n: int = 6) -> FaceMesh:
    """A closed cube of n x n quads per side (cm), outward winding; each side's UVs fill tile 1001 or 1002."""
    t = np.linspace(-5.0, 5.0, n + 1)
    uv = np.linspace(0.02, 0.98, n + 1)
    vertices, uvs, counts, fv, ft = [], [], [], [], []
    axes = [(0, 1, 2, 1.0), (0, 1, 2, -1.0), (2, 1, 0, 1.0), (2, 1, 0, -1.0), (0, 2, 1, 1.0), (0, 2, 1, -1.0)]
    for side, (a, b, c, sign) in enumerate(axes):
        base_v, base_t = len(vertices), len(uvs)
        for j in range(n + 1):
            for i in range(n + 1):
                p = [0.0, 0.0, 0.0]
                p[a], p[b], p[c] = t[i], t[j], 5.0 * sign
                vertices.append(p)
                uvs.append([uv[i] + side % 2, uv[j]])
        for j in range(n):
            for i in range(n):
                quad = [base_v + j * (n + 1) + i, base_v + j * (n + 1) + i + 1,
                        base_v + (j + 1) * (n + 1) + i + 1, base_v + (j + 1) * (n + 1) + i]
                normal = np.cross(np.subtract(vertices[quad[1]], vertices[quad[0]]),
                                  np.subtract(vertices[quad[3]], vertices[quad[0]]))
                if normal[c] * sign < 0:
                    quad = quad[::-1]
                counts.append(4)
                fv += quad
                ft += [q - base_v + base_t for q in quad]
    # sides share edges but not vertices: a faceted box is enough for a preview
    return FaceMesh(np.array(vertices), counts, fv, np.array(uvs), ft, np.zeros(len(counts)), ["skin"], "cm", "box")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview") / "dataset"
    template = box()
    spec = DatasetSpec(units=UNITS, map_kinds=BRDF_KINDS, resolution=RES, udims=[1001, 1002], skin_groups=["skin"],
                       generator={"name": "test"},
                       absent_units={u: "not in this test" for u in facs.UNIT_NAMES if u not in UNITS})
    channels = {"albedo": 3, "specular": 1, "roughness": 1, "normal": 3}
    value = {"albedo": 0.4, "specular": 0.04, "roughness": 0.5, "normal": 0.5}
    with DatasetWriter(root, template, spec) as writer:
        for i, expression in enumerate(spec.expressions()):
            maps = {k: {u: np.full((channels[k], RES, RES), value[k], np.float32) for u in spec.udims}
                    for k in BRDF_KINDS}
            for u in spec.udims:
                maps["normal"][u][2] = 1.0  # flat: (0, 0, 1) encoded
            writer.write_expression("s0", expression, template.vertices * (1 + 0.1 * i), maps)
        writer.add_subject("s0", "train", {"seed": 0})
    return root


def test_dataset_preview_writes_a_sheet_of_every_expression(dataset, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["preview", str(dataset), "--out", str(out), "--size", "40", "--columns", "3"]) == 0
    assert "3 expressions of s0" in capsys.readouterr().out
    sheet = read_image(out)
    # three 40 px cells in a row plus padding; a title row and one label row
    assert sheet.shape[1] == 6 + 3 * (40 + 6) and sheet.shape[0] > 40 + 6


def test_dataset_preview_refuses_to_overwrite(dataset, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    out.write_bytes(b"keep me")
    assert main(["preview", str(dataset), "--out", str(out), "--size", "16"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_dataset_preview_names_an_unknown_subject(dataset, tmp_path, capsys):
    assert main(["preview", str(dataset), "--subject", "nobody", "--out", str(tmp_path / "x.png")]) == 2
    assert "subject 'nobody' not in this dataset" in capsys.readouterr().err


def test_mesh_preview_renders_one_image(tmp_path):
    mesh_path = write_obj(box(), tmp_path / "box.obj")
    out = tmp_path / "box.png"
    assert main(["preview", str(mesh_path), "--out", str(out), "--size", "48"]) == 0
    image = read_image(out)
    assert image.shape == (48, 48, 3)
    assert image.std() > 0.02  # the lit box stands out from the flat background
