"""``expdiff train vae``: trains on a real (tiny) dataset's train split, reports PSNR on its val split."""

from __future__ import annotations

import json

import pytest

from expdiff_core.cli import build_parser, main
from expdiff_core.models.vae import LatentCodec, offline_vae_config
from expdiff_core.training.vae import VAETrainConfig

TINY_FLAGS = ["--steps", "2", "--resolution", "32", "--widths", "8,8,16,16", "--batch-size", "2",
              "--held-out-maps", "15", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_vae_publishes_a_codec_with_held_out_psnr_per_kind(make_tiny_dataset, tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "data")
    out = tmp_path / "vae"
    assert main(["train", "vae", "--dataset", str(dataset), "--out", str(out), *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["held_out"]) == {"position", "albedo", "specular", "roughness", "normal"}
    for kind in metrics["held_out"]:
        assert f"  {kind}" in printed and "PSNR" in printed
    assert metrics["data"]["held_out"] == "val split: ['s2']"
    assert metrics["data"]["train_subjects"] == ["s0", "s1"]
    # 2 train subjects x 3 expressions x 5 kinds x 1 tile
    assert sum(metrics["train_maps"].values()) == 30
    codec = LatentCodec.from_pretrained(out, device="cpu")
    assert list(codec.config.block_out_channels) == [8, 8, 16, 16]


def test_train_vae_refuses_an_existing_output_and_a_too_large_resolution(make_tiny_dataset, tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "data")
    (tmp_path / "taken").mkdir()
    assert main(["train", "vae", "--dataset", str(dataset), "--out", str(tmp_path / "taken"), *TINY_FLAGS]) == 2
    assert "already exists" in capsys.readouterr().err
    flags = [*TINY_FLAGS[:2], "--resolution", "128", *TINY_FLAGS[4:]]
    assert main(["train", "vae", "--dataset", str(dataset), "--out", str(tmp_path / "new"), *flags]) == 2
    assert "exceeds the dataset's 64x64" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_train_vae_flag_defaults_are_the_trainer_defaults():
    args = build_parser().parse_args(["train", "vae", "--dataset", "d", "--out", "o"])
    trainer = VAETrainConfig()
    assert (args.steps, args.resolution, args.batch_size) == (trainer.steps, trainer.crop_size, trainer.batch_size)
    assert (args.learning_rate, args.seed) == (trainer.learning_rate, trainer.seed)
    assert args.held_out_maps == trainer.held_out_max_maps
    assert args.widths == offline_vae_config()["block_out_channels"]


def test_train_vae_rejects_malformed_widths(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "vae", "--dataset", "d", "--out", "o", "--widths", "8,8"])
    assert "four positive block widths" in capsys.readouterr().err


def test_train_change_codec_fits_on_train_and_reports_the_val_round_trip(make_tiny_dataset, tmp_path, capsys):
    from expdiff_core.models.patch_codec import PatchChangeCodec

    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    out = tmp_path / "codec"
    assert main(["train", "change-codec", "--dataset", str(dataset), "--out", str(out), "--channels", "8",
                 "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_identities"] == 2 and metrics["val_identities"] == 1
    assert f"through Eq. 9 {metrics['eq9_mm']:.4f} mm" in printed
    assert PatchChangeCodec.from_pretrained(out, device="cpu").latent_channels == 8
    assert (out / "README.md").is_file()
    assert main(["train", "change-codec", "--dataset", str(dataset), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_train_change_codec_registers_the_codec_in_mlflow(make_tiny_dataset, tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    assert main(["train", "change-codec", "--dataset", str(dataset), "--out", str(tmp_path / "codec"),
                 "--channels", "8", "--val-identities", "0"]) == 0
    assert "registered expdiff-change-codec version 1 (alias candidate)" in capsys.readouterr().out


def test_train_support_writes_the_units_supports_and_says_how_large_they_are(make_tiny_dataset, tmp_path, capsys):
    from expdiff_core.models.support import ExpressionSupport

    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    out = tmp_path / "support"
    assert main(["train", "support", "--dataset", str(dataset), "--out", str(out)]) == 0
    support = ExpressionSupport.from_pretrained(out)
    assert support.expressions == ["jawOpen", "mouthSmile_L"]
    assert f"moves on average {support.vertices.mean():.1%} of the vertices" in capsys.readouterr().out
    assert main(["train", "support", "--dataset", str(dataset), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
