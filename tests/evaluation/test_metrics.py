"""FVD, PSNR, SSIM and LPIPS-from-local-weights (paper Tables II and III)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.evaluation.metrics import (PSNR_CAP_DB, LpipsMetric, fvd, group_vertex_mask, lpips_available,
                                             lpips_status, map_scores, psnr, ssim)
from expdiff_core.io.dataset import Dataset


def _a_map(procedural_dataset, kind="albedo"):
    ds = Dataset(procedural_dataset)
    return ds.load_map(ds.split("test")[0], "jawOpen", kind, ds.udims[0])


def test_fvd_reports_known_offsets_given_in_cm_in_mm():
    true = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    pred = true.copy()
    pred[:4] += np.array([0.3, 0.4, 0.0], np.float32)  # 0.5 cm = 5 mm on 4 of 10 vertices
    # float32 coordinates of magnitude ~1 cm round to ~1e-7 cm: 1e-5 mm is far below that bound.
    assert fvd(pred, true, units="cm") == pytest.approx(5.0 * 4 / 10, abs=1e-5)
    assert fvd(pred, true, units="m") == pytest.approx(500.0 * 4 / 10, abs=1e-3)
    assert fvd(pred, true, units="mm") == pytest.approx(0.5 * 4 / 10, abs=1e-6)


def test_fvd_mask_restricts_the_mean_to_the_selected_vertices():
    true = np.zeros((6, 3), np.float32)
    pred = true.copy()
    pred[0] = [0.0, 0.0, 1.0]  # 1 cm
    mask = np.array([True, True, False, False, False, False])
    assert fvd(pred, true, mask=mask) == pytest.approx(5.0)
    assert fvd(pred, true, mask=np.array([2, 3])) == 0.0
    with pytest.raises(ExpDiffInputError, match="selects no vertex"):
        fvd(pred, true, mask=np.zeros(6, bool))


def test_fvd_refuses_mismatched_shapes_and_unknown_units():
    with pytest.raises(ExpDiffInputError, match="one shape"):
        fvd(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ExpDiffInputError, match="unknown length unit"):
        fvd(np.zeros((4, 3)), np.zeros((4, 3)), units="inch")


def test_group_vertex_mask_selects_the_vertices_of_a_material_group(procedural_dataset):
    template = Dataset(procedural_dataset).template()
    face = group_vertex_mask(template, ["M_Face"])
    both = group_vertex_mask(template, ["M_Face", "M_BackHead"])
    assert 0 < face.sum() < both.sum() <= template.n_vertices
    with pytest.raises(ExpDiffInputError, match="no group"):
        group_vertex_mask(template, ["M_Teeth_nope"])


def test_identical_maps_give_the_psnr_cap_and_ssim_one(procedural_dataset):
    image = _a_map(procedural_dataset)
    assert psnr(image, image) == PSNR_CAP_DB
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-6)  # float32 accumulation in the Gaussian filter


def test_psnr_of_a_constant_offset_is_known_and_uses_data_range_one(procedural_dataset):
    # A narrow-range map: if the range were taken from the data instead of 1.0, PSNR would be far higher/lower.
    image = 0.4 + 0.2 * _a_map(procedural_dataset, "roughness")
    expected = 10 * math.log10(1.0 / 0.01 ** 2)  # MSE = 1e-4 -> 40 dB
    assert psnr(image + 0.01, image) == pytest.approx(expected, abs=1e-3)  # float32 MSE of 4096 texels


def test_ssim_falls_as_structure_is_lost(procedural_dataset):
    image = _a_map(procedural_dataset)
    noise = np.random.default_rng(0).normal(size=image.shape).astype(np.float32)
    slightly = np.clip(image + 0.01 * noise, 0, 1)
    badly = np.clip(image + 0.2 * noise, 0, 1)
    assert 1.0 > ssim(slightly, image) > ssim(badly, image)


def test_map_scores_average_every_tile_of_each_kind(procedural_dataset):
    ds = Dataset(procedural_dataset)
    subject = ds.split("test")[0]
    true = ds.load_maps(subject, "jawOpen")
    pred = ds.load_maps(subject, "neutral")
    scores = map_scores(pred, true, ["albedo", "roughness"])
    for kind in ("albedo", "roughness"):
        per_tile = [psnr(pred[kind][u], true[kind][u]) for u in ds.udims]
        assert scores["psnr"][kind] == pytest.approx(np.mean(per_tile), rel=1e-9)
        assert scores["ssim"][kind] == pytest.approx(np.mean([ssim(pred[kind][u], true[kind][u]) for u in ds.udims]))


def test_lpips_is_not_available_without_configured_weights(tmp_path):
    # an empty state folder of its own: the user's home may hold imported weights
    settings = load_settings(environ={"EXPDIFF_STATE_DIR": str(tmp_path / "state")})
    status = lpips_status(settings)
    assert not status.available and not lpips_available(settings)
    assert "not configured" in status.reason


def test_lpips_refuses_missing_and_pickle_weights(tmp_path):
    missing = load_settings(environ={"EXPDIFF_LPIPS_WEIGHTS_PATH": str(tmp_path / "nope.safetensors")})
    assert "does not exist" in lpips_status(missing).reason
    pickle = tmp_path / "alex.pth"
    pickle.write_bytes(b"\x80\x04pickle")
    status = lpips_status(load_settings(environ={"EXPDIFF_LPIPS_WEIGHTS_PATH": str(pickle)}))
    assert not status.available and "pickle" in status.reason


def _lpips_net(net="squeeze"):
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    torch.manual_seed(0)
    module = _NoTrainLpips(pretrained=False, net=net, pnet_rand=True)
    for lin in module.lins:  # trained LPIPS heads are non-negative, which makes distances >= 0
        lin.model[1].weight.data.abs_()
    return module


def test_lpips_runs_from_a_complete_local_safetensors_file(tmp_path):
    # Random weights stand in for real ones: what is tested is loading offline and scoring, not LPIPS values.
    path = tmp_path / "lpips_squeeze.safetensors"
    save_model(_lpips_net(), str(path))
    settings = load_settings(environ={"EXPDIFF_LPIPS_WEIGHTS_PATH": str(tmp_path)})
    status = lpips_status(settings)
    assert status.available and status.net == "squeeze" and status.path == path
    metric = LpipsMetric.from_settings(settings)
    y, x = np.mgrid[0:64, 0:64].astype(np.float32) / 64
    image = np.stack([x, y, 0.5 * x + 0.25])
    assert metric(image, image) == pytest.approx(0.0, abs=1e-6)
    assert metric(image, image[:, ::-1].copy()) > 1e-4
    assert metric.batch(image[:1][None].repeat(2, 0), image[:1][None].repeat(2, 0)).shape == (2,)  # 1-channel maps


def test_lpips_refuses_an_incomplete_state_dict(tmp_path):
    state = {k: v.contiguous() for k, v in _lpips_net().state_dict().items() if not k.startswith(("lin0.", "lins."))}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ExpDiffInputError, match="not a complete LPIPS-squeeze state dict"):
        LpipsMetric(path, "squeeze")
