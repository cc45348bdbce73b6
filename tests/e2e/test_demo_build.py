"""The README's main job: `expdiff build --demo` on the bundled offline default, end to end through Prefect."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_build_publishes_a_valid_usd_version_with_one_blendshape_per_expression(tmp_path):
    env_state = tmp_path / "state"
    out = tmp_path / "builds"
    cmd = [sys.executable, "-m", "expdiff_core.cli", "build", "--demo", "--device", "cpu",
           "--expressions", "jawOpen", "mouthSmile_L", "eyeBlink_R", "--steps", "10"]
    env = {"EXPDIFF_STATE_DIR": str(env_state), "EXPDIFF_OUTPUT_ROOT": str(out)}
    import os

    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    root_layer = out / "demo_head" / "v001" / "demo_head.usda"
    assert f"published {root_layer}" in done.stdout

    from expdiff_core.usd.validate import validate_asset

    assert not [i for i in validate_asset(root_layer) if i.severity == "error"]

    from pxr import Usd, UsdSkel

    stage = Usd.Stage.Open(str(root_layer))
    shapes = {p.GetName(): UsdSkel.BlendShape(p) for p in stage.Traverse() if p.IsA(UsdSkel.BlendShape)}
    assert set(shapes) == {"jawOpen", "mouthSmile_L", "eyeBlink_R"}
    for name, shape in shapes.items():
        offsets = np.asarray(shape.GetOffsetsAttr().Get())
        assert len(offsets) and np.isfinite(offsets).all(), name
