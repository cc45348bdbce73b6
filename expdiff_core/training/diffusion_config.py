"""Settings and command-line flags of diffusion training, importable without torch.

``expdiff --help`` builds every subcommand's parser; keeping these here means building the parser does not
import torch/diffusers (seconds on a loaded CPU). :mod:`expdiff_core.training.diffusion` trains.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from ..errors import ExpDiffInputError

PREDICTION_TYPES = ("epsilon", "v_prediction")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISIONS = ("auto", "no", "bf16")


@dataclass
class DiffusionTrainConfig:
    """How to train. ``batch_size`` is global (split over processes; must divide evenly)."""

    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0
    prediction_type: str = "epsilon"
    # Min-SNR-γ loss weighting (Hang et al. 2023); None = plain Eq. 6.
    snr_gamma: float | None = None
    # Probability a sample's prompt is dropped (all-False mask), training the unconditional branch for CFG.
    text_dropout: float = 0.1
    # auto: bf16 autocast on CUDA, fp32 on CPU.
    mixed_precision: str = "auto"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # Rescale the schedule so its last step is pure noise (Lin et al. 2024); needs v-prediction.
    zero_terminal_snr: bool = False
    # Training timesteps t = T * s*u / (1 + (s-1)*u), u ~ U(0, 1): s > 1 trains the noisiest steps more often
    # (the SD3 resolution shift); 1 = uniform.
    timestep_shift: float = 1.0
    split: str = "train"
    include_neutral: bool = True
    repeat_albedo: bool = False
    device: str = "auto"

    def validate(self) -> None:
        problems = []
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            problems.append("steps, batch_size, checkpoint_every and keep_checkpoints must be >= 1")
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            problems.append(f"mixed_precision must be one of {MIXED_PRECISIONS}")
        if not 0.0 <= self.text_dropout < 1.0:
            problems.append("text_dropout must be in [0, 1)")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            problems.append("zero_terminal_snr needs prediction_type v_prediction (epsilon is undefined at pure noise)")
        if not self.timestep_shift > 0.0:
            problems.append("timestep_shift must be > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1)")
        if problems:
            raise ExpDiffInputError(None, "diffusion train config: " + "; ".join(problems))


FLAG_HELP = {
    "steps": "optimizer steps in total (a resumed run continues up to this)",
    "batch_size": "samples per step over all processes (must divide by the process count)",
    "learning_rate": "AdamW peak learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear learning-rate warm-up steps",
    "lr_schedule": "learning-rate schedule after warm-up",
    "ema_decay": "decay of the EMA weights that are published",
    "grad_clip": "clip the gradient norm to this (0 = no clipping)",
    "checkpoint_every": "write a resumable checkpoint every N steps (and at the end)",
    "keep_checkpoints": "keep only the newest N checkpoints",
    "seed": "seed of the model init, sample order, noise, timesteps and text dropout",
    "prediction_type": "network target (Eq. 6 is epsilon)",
    "text_dropout": "probability of dropping a sample's prompt (trains classifier-free guidance)",
    "mixed_precision": "auto = bf16 autocast on CUDA, fp32 on CPU",
    "num_train_timesteps": "DDPM steps of the forward process",
    "beta_schedule": "diffusers beta schedule of the forward process",
    "beta_start": "first beta of the schedule",
    "beta_end": "last beta of the schedule",
    "zero_terminal_snr": "rescale the schedule so its last step is pure noise, as sampling starts (v-prediction "
                         "only); without it the model reads the expression from the signal left at the last step",
    "timestep_shift": "s > 1 draws noisy training timesteps more often: t = T*s*u/(1+(s-1)*u); 1 = uniform. "
                      "Many latent values let a model read the expression from faint signal at high t instead "
                      "of from the prompt; shifting trains the regime sampling starts in",
    "split": "manifest split to train on",
    "include_neutral": "also train on neutral as a target (mesh recovery, Eq. 9, needs the generated neutral)",
    "repeat_albedo": "fill the neutral condition's specular/roughness/normal slots with its albedo latent",
}

FLAG_CHOICES = {"lr_schedule": LR_SCHEDULES, "prediction_type": PREDICTION_TYPES, "mixed_precision": MIXED_PRECISIONS}


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.name == "device":
            parser.add_argument(flag, default=None, help="auto | cpu | cuda | cuda:N (default: settings' device, 'auto')")
        elif f.name == "snr_gamma":
            parser.add_argument(flag, type=float, default=None, metavar="GAMMA",
                                help="min-SNR-gamma loss weighting, e.g. 5 (default: off, plain Eq. 6)")
        elif isinstance(default, bool):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes", "on"), default=default,
                                metavar="BOOL", help=f"{FLAG_HELP[f.name]} (default {default})")
        elif f.name in FLAG_CHOICES:
            parser.add_argument(flag, default=default, choices=FLAG_CHOICES[f.name],
                                help=f"{FLAG_HELP[f.name]} (default {default})")
        else:
            parser.add_argument(flag, type=type(default), default=default, metavar=f.name.split("_")[-1].upper(),
                                help=f"{FLAG_HELP[f.name]} (default {default})")


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags of ``python -m expdiff_core.training.diffusion`` (also mountable as ``expdiff train diffusion``)."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m expdiff_core.training.diffusion",
        description="Train the ExpDiff denoiser on an encoded latent dataset; resumes from the latest checkpoint "
        "in --out. Multi-process: torchrun --nproc_per_node N -m expdiff_core.training.diffusion ...")
    parser.add_argument("--latents", required=True, help="encoded dataset folder (manifest.json + <subject>.safetensors)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, log, final model/")
    parser.add_argument("--preset", default="offline", choices=["offline", "production"], help="denoiser size preset")
    parser.add_argument("--model-config", metavar="JSON", help="denoiser config.json whose values override the preset")
    parser.add_argument("--no-attention", action="store_true",
                        help="ablation: no attention between maps (a subspace denoiser: one stream per map kind)")
    parser.add_argument("--text-conditioning", choices=["encoder", "one-hot"], default=None,
                        help="ablation 'one-hot': fixed random prompt embeddings instead of the text encoder")
    parser.add_argument("--target", choices=["absolute", "residual", "change"], default=None,
                        help="what is diffused: 'change' = a change codec's latents of the expression's maps minus "
                        "the neutral's, scaled per map (needs a change encoding: `expdiff data encode "
                        "--change-vae`); 'residual' = expression minus neutral latents, scaled per map "
                        "(expressions move where the absolute target mostly copies the neutral; figures in "
                        "models/expdiff/README.md); 'absolute' = the expression latents (paper Eq. 6). "
                        "Default: the preset's / --model-config's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_dataclass_flags(parser, DiffusionTrainConfig)
    return parser
