"""Shared test fixtures. Tests never touch the network or the user's home: state goes to a temp folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Prefect reads its settings once, when first imported: keep its home (profiles, default result storage,
# local database) in a temp folder for the whole session and never talk to a server from the user's env.
_PREFECT_HOME = tempfile.mkdtemp(prefix="expdiff-test-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
ICT_DIR = REPO_ROOT.parent / "shared" / "data" / "ict-facekit"


@pytest.fixture
def ict_dir() -> Path:
    """The ICT-FaceKit light face model from shared data; tests using it skip on a fresh clone without it."""
    if not (ICT_DIR / "generic_neutral_mesh.obj").is_file():
        pytest.skip(f"ICT-FaceKit data not found at {ICT_DIR}")
    return ICT_DIR


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Every test gets its own ExpDiff state folder and output root."""
    root = tmp_path_factory.mktemp("expdiff-state")
    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(root / "state"))
    monkeypatch.setenv("EXPDIFF_OUTPUT_ROOT", str(root / "builds"))


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: the machine's 2 cores are shared, and tiny models and
    convolutions run several times faster on one thread than with OpenMP oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_tiny_dataset():
    """Factory: make_tiny_dataset(root, splits={"s0": "train", ...}, resolution=64) -> a real dataset folder.

    A flat-sheet 'face' (81 vertices, tile 1001) squeezed a little more per expression (neutral + jawOpen +
    mouthSmile_L), with smooth random BRDF maps (bicubic 5x5 fields) seeded per subject/expression/kind.
    Written by DatasetWriter, so it is a valid dataset; about 0.2 s for three subjects at 64^2.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from expdiff_core import facs
    from expdiff_core.io.dataset import BRDF_KINDS, MAP_SPECS, DatasetSpec, DatasetWriter

    from .helpers.meshes import sheet_face

    units = ["jawOpen", "mouthSmile_L"]

    def make(root, splits=None, resolution: int = 64) -> Path:
        splits = splits or {"s0": "train", "s1": "train", "s2": "val"}
        template = sheet_face()
        spec = DatasetSpec(units=units, map_kinds=BRDF_KINDS, resolution=resolution, udims=[1001],
                           skin_groups=["skin"], generator={"name": "tests/conftest.py", "seed": 0},
                           absent_units={u: "not in this test" for u in facs.UNIT_NAMES if u not in units})
        with DatasetWriter(root, template, spec) as writer:
            for k, (subject, split) in enumerate(splits.items()):
                for i, expression in enumerate(spec.expressions()):
                    squeeze = np.array([1.0 - 0.05 * i - 0.01 * k, 1.0, 1.0], dtype=np.float32)
                    maps = {}
                    for j, kind in enumerate(BRDF_KINDS):
                        g = torch.Generator().manual_seed(1000 * k + 10 * i + j)
                        grid = torch.rand(1, MAP_SPECS[kind]["channels"], 5, 5, generator=g)
                        field = F.interpolate(grid, size=(resolution, resolution), mode="bicubic",
                                              align_corners=True)[0].clamp(0, 1)
                        maps[kind] = {1001: field.numpy()}
                    writer.write_expression(subject, expression, template.vertices * squeeze, maps)
                writer.add_subject(subject, split, {"seed": k})
        return Path(root)

    return make
