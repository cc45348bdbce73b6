"""Diffusion training of the ExpDiff denoiser (Eq. 6) on an encoded latent dataset.

Data-parallel through ``accelerate``: one process here, ``torchrun --nproc_per_node N -m
expdiff_core.training.diffusion ...`` for N processes (CPU: gloo, ``MULTI_CPU``; GPUs: NCCL, bf16 autocast).

Every random draw of step ``s`` (which samples, noise, timesteps, text dropout) comes from a generator seeded by
``(seed, s)`` over the *global* batch, each process taking its slice. So a run is a pure function of its
seed: resuming from a checkpoint continues the exact loss curve, and the sample stream does not depend on the
number of processes.

Output folder::

    <out_dir>/model/             EMA weights, save_pretrained (config.json + diffusion_pytorch_model.safetensors)
    <out_dir>/scheduler/         the training noise schedule (scheduler_config.json)
    <out_dir>/latents_manifest.json  the encoded dataset's manifest (codec, scaling factor, kinds, UDIMs)
    <out_dir>/training.json      train + model config, prompts, final step, time
    <out_dir>/train_log.jsonl    one line per step: step, loss, lr, grad_norm, seconds
    <out_dir>/checkpoints/step-NNNNNNN/  model/, ema/ (save_pretrained), optimizer.safetensors,
                                 rng.safetensors, state.json (step, configs, optimizer/EMA/LR/RNG scalars)

Checkpoints hold no pickle: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import ExpDiffInputError, PublishError
from ..fileio import atomic_dir, atomic_path
from ..models.denoiser import (ExpDiffDenoiser, PromptTokens, denoiser_class, denoiser_config, encode_prompts,
                               load_denoiser)
from ..models.subspace_denoiser import SubspaceDenoiser
from ..schedulers import training_noise_scheduler
from .diffusion_config import (FLAG_CHOICES, FLAG_HELP, LR_SCHEDULES, MIXED_PRECISIONS, PREDICTION_TYPES,  # noqa: F401
                               DiffusionTrainConfig, build_arg_parser)
from .latents import LatentDataset, read_manifest

CHECKPOINT_FORMAT = "expdiff-diffusion-checkpoint/1"
CHECKPOINTS = "checkpoints"
LOG_NAME = "train_log.jsonl"
LAYOUT_KEYS = ("kinds", "n_udims", "latent_channels", "latent_size", "condition_channels")


@dataclass(frozen=True)
class StepLog:
    """What ``on_step`` receives after every optimizer step (main process only)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    seconds: float
    checkpoint: Path | None = None


@dataclass
class TrainResult:
    """A finished (or already complete) training run."""

    out_dir: Path
    model_dir: Path
    scheduler_dir: Path
    log_path: Path
    step: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    last_checkpoint: Path | None = None
    seconds: float = 0.0
    num_processes: int = 1
    prompts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- randomness
def _seed_for(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def _generator(*words: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_for(*words))


class SampleOrder:
    """The global sample stream: epoch ``e`` is a permutation seeded by ``(seed, e)``; step ``s`` takes
    positions ``[s*B, (s+1)*B)`` of the concatenated epochs."""

    def __init__(self, n_samples: int, batch_size: int, seed: int):
        self.n, self.batch, self.seed = n_samples, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=_generator(self.seed, epoch, 1))
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        positions = range(step * self.batch, (step + 1) * self.batch)
        return [int(self._perm(p // self.n)[p % self.n]) for p in positions]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch_cpu": torch.get_rng_state(),
            "torch_cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def _set_rng_state(tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any], rank: int) -> None:
    prefix = f"rank{rank}/"
    torch.set_rng_state(tensors[prefix + "torch_cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"{prefix}torch_cuda/{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"{prefix}torch_cuda/{i}"], i)
    np_state = scalars["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    py_state = scalars["python"]
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))


# ---------------------------------------------------------------------------------------- checkpoints
def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:07d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``out_dir``, oldest first (partial writes are never listed)."""
    folder = Path(out_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint_model(checkpoint: str | os.PathLike, ema: bool = True) -> ExpDiffDenoiser:
    """A checkpoint's denoiser: the EMA weights (for sampling) or the raw training weights."""
    return load_denoiser(Path(checkpoint) / ("ema" if ema else "model"))


def _optimizer_to_files(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def _optimizer_from_files(tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in scalars["state_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in scalars["param_groups"]]
    return {"state": state, "param_groups": groups}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _save_ema_folder(ema, model: ExpDiffDenoiser, folder: Path) -> None:
    copy = type(model).from_config(model.config)
    copy.load_state_dict(model.state_dict())  # buffers (a subspace denoiser's bases) are not averaged
    ema.copy_to(copy.parameters())
    copy.save_pretrained(folder, safe_serialization=True)


# ---------------------------------------------------------------------------------------- the run
def _resolve_model_config(manifest, model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Constructor keyword arguments of the denoiser ``model_config`` asks for (its ``_class_name`` is kept: it
    selects the class, see :func:`denoiser_class`), with the dataset's layout filled in and checked."""
    layout = dict(kinds=list(manifest.kinds), n_udims=len(manifest.udims), latent_channels=manifest.latent_shape[0],
                  latent_size=list(manifest.latent_shape[1:]), condition_channels=manifest.condition_shape[0])
    if model_config is None:
        return denoiser_config(manifest.kinds, len(manifest.udims), manifest.latent_shape[0],
                               manifest.latent_shape[1:], "offline", condition_channels=manifest.condition_shape[0])
    config = dict(model_config)
    for key in ("_diffusers_version", "_name_or_path", "_use_default_values"):
        config.pop(key, None)
    if config.get("condition_channels") is None:  # None means "as many as the latents"
        config.pop("condition_channels", None)
    for key, value in layout.items():
        given = config.setdefault(key, value)
        if key == "latent_size" and isinstance(given, int):
            given = [given, given]
        if json.dumps(given) != json.dumps(value):
            raise ExpDiffInputError(None, f"model config {key}={given!r} does not match the latent dataset ({value!r})")
        config[key] = value
    return config


def _model_config_json(model: ExpDiffDenoiser) -> dict[str, Any]:
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    if not isinstance(model, ExpDiffDenoiser):
        config["_class_name"] = type(model).__name__
    return config


def _full_model_config(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` completed with its class's defaults (what its config.json would say)."""
    cls = denoiser_class(model_kwargs.get("_class_name"))
    params = inspect.signature(cls.__init__).parameters
    full = {name: p.default for name, p in params.items() if name != "self"}
    full.update(model_kwargs)
    if cls is ExpDiffDenoiser:
        full.pop("_class_name", None)
    return full


def _same_config(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.loads(json.dumps(a, default=_json_default)) == json.loads(json.dumps(b, default=_json_default))


def _sample_skip_schedule(cfg: DiffusionTrainConfig, given: Any, key: str = "sample_skip") -> dict[str, Any]:
    """The noise schedule a ``sample_skip`` / ``mean_skip`` path needs: the training run's (``given`` True), or
    ``given`` if it is it."""
    if cfg.prediction_type != "v_prediction":
        raise ExpDiffInputError(None, f"model config {key} needs --prediction-type v_prediction (the path scales "
                                f"into a v prediction), got {cfg.prediction_type!r}")
    schedule = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                    beta_start=cfg.beta_start, beta_end=cfg.beta_end, rescale_betas_zero_snr=cfg.zero_terminal_snr)
    if given is not True and dict(given) != schedule:
        raise ExpDiffInputError(None, f"model config {key} {dict(given)} is not this run's noise schedule "
                                f"{schedule}; give `\"{key}\": true` to use the run's")
    return schedule


def residual_scale(dataset: LatentDataset, floor: float = 0.01) -> list[float]:
    """Per-map factors that give each map's latent residual unit RMS on ``dataset`` (a residual denoiser's
    ``residual_scale``). A map that barely changes (RMS below ``floor`` x the largest map's) is scaled as if it
    had that floor, so its encoding noise is not blown up into a target of its own."""
    rms = dataset.residual_rms()
    rms = rms.clamp(min=float(rms.max()) * floor)
    return [float(f"{1.0 / float(v):.6g}") for v in rms]


def training_timesteps(num_train_timesteps: int, batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """(batch,) int64 training timesteps: uniform for ``shift`` 1, else ``T * s*u / (1 + (s-1)*u)``, u ~ U(0, 1)."""
    if shift == 1.0:
        return torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    shifted = shift * u / (1.0 + (shift - 1.0) * u)
    return (shifted * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)


def diffusion_loss(model: torch.nn.Module, noise_scheduler, x0: torch.Tensor, neutral: torch.Tensor,
                   text_tokens: torch.Tensor, text_mask: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """Per-sample (B,) loss of Eq. 6: noise ``x0`` (B, M, C, h, w) to ``timesteps`` and regress the scheduler's
    prediction target (ε, or v for ``prediction_type="v_prediction"``), optionally min-SNR-γ weighted; a model
    with a ``loss_weight`` buffer (shaped like one sample) weights each value by it."""
    from diffusers.training_utils import compute_snr

    noisy = noise_scheduler.add_noise(x0, noise, timesteps)
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = noise_scheduler.get_velocity(x0, noise, timesteps)
    pred = model(noisy, timesteps, neutral, text_tokens, text_mask)
    error = (pred.float() - target.float()).pow(2)
    weight = getattr(getattr(model, "module", model), "loss_weight", None)  # per diffused value, if the model has one
    if weight is not None:
        error = error * weight.to(error.device)
    per_sample = error.flatten(1).mean(1)
    if snr_gamma is not None:
        snr = compute_snr(noise_scheduler, timesteps)
        clipped = snr.clamp(max=snr_gamma)
        epsilon = noise_scheduler.config.prediction_type == "epsilon"
        per_sample = per_sample * (clipped / snr if epsilon else clipped / (snr + 1))
    return per_sample


def train_diffusion(
    latents_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_config: Mapping[str, Any] | None = None,
    train_config: DiffusionTrainConfig | None = None,
    text_encoder: Any = None,
    on_step: Callable[[StepLog], None] | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) the ExpDiff denoiser on the encoded dataset at ``latents_root``.

    ``model_config``: :class:`ExpDiffDenoiser` keyword arguments; None = the offline preset. Layout keys
    (kinds, n_udims, latent_channels, latent_size) are filled from the dataset's manifest and must match it.
    ``text_encoder``: for ``text_conditioning="encoder"``, anything with ``encode(prompts) -> .tokens/.mask``
    (default: the offline TextEncoder); prompts are embedded once. ``on_step(StepLog)`` runs on the main process
    after every step (and may raise to abort; the run then resumes from its last checkpoint).

    Resumes from the latest checkpoint in ``out_dir`` when there is one. A finished ``out_dir`` (``model/``
    present at the same step count) is returned as is; one finished at another step count is refused.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ..device import resolve_device

    started = time.perf_counter()
    cfg = train_config or DiffusionTrainConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    latents_root = Path(latents_root)
    manifest = read_manifest(latents_root)
    model_kwargs = _resolve_model_config(manifest, model_config)

    device = resolve_device(cfg.device)
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "no"
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision)
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % n_proc:
        raise ExpDiffInputError(None, f"batch_size {cfg.batch_size} is not divisible by the {n_proc} processes")
    local_batch = cfg.batch_size // n_proc

    model_dir, scheduler_dir, log_path = out_dir / "model", out_dir / "scheduler", out_dir / LOG_NAME
    dataset = LatentDataset(latents_root, cfg.split, include_neutral=cfg.include_neutral,
                            repeat_albedo=cfg.repeat_albedo)
    if (_full_model_config(model_kwargs).get("target") == "change") != manifest.encodes_change:
        raise ExpDiffInputError(latents_root / "manifest.json", "a denoiser of target 'change' trains on a change "
                                "encoding (`expdiff data encode --change-vae`), and only it does")
    for skip in ("sample_skip", "mean_skip"):  # paths that need the run's noise schedule
        if model_kwargs.get(skip):
            model_kwargs = {**model_kwargs, skip: _sample_skip_schedule(cfg, model_kwargs[skip], skip)}
        else:
            model_kwargs.pop(skip, None)
    model_cls = denoiser_class(model_kwargs.get("_class_name"))
    if (model_cls is ExpDiffDenoiser and model_kwargs.get("target") in ("residual", "change")
            and not model_kwargs.get("residual_scale")):
        model_kwargs = {**model_kwargs, "residual_scale": residual_scale(dataset)}
    finished = _finished_run(out_dir, cfg, model_kwargs)
    if finished is not None:
        return finished

    torch.manual_seed(cfg.seed)
    model = model_cls(**{k: v for k, v in model_kwargs.items() if k != "_class_name"})
    prompt_tokens: PromptTokens = encode_prompts(model.config, dataset.prompts, text_encoder)
    noise_scheduler = training_noise_scheduler(cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start,
                                               cfg.beta_end, cfg.prediction_type, cfg.zero_terminal_snr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay)

    start_step = 0
    resume_from = latest_checkpoint(out_dir)
    subspace = None
    if isinstance(model, SubspaceDenoiser):
        subspace = SubspaceTrainingSet(dataset, model, fit=resume_from is None, seed=cfg.seed, progress=progress)
    if resume_from is not None:
        start_step = _load_checkpoint(resume_from, model, optimizer, lr_scheduler, ema, model_kwargs, rank)
        if start_step > cfg.steps:
            raise ExpDiffInputError(resume_from, f"checkpoint is at step {start_step}, past the {cfg.steps} steps asked for")
    if subspace is not None:
        subspace.project(model)  # with the checkpoint's bases when resuming
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model: ExpDiffDenoiser = accelerator.unwrap_model(model)
    ema.to(accelerator.device)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start_step)
        # Temp folders of checkpoints whose writer was killed (atomic_dir never renamed them).
        for partial in (out_dir / CHECKPOINTS).glob(".step-*.partial"):
            shutil.rmtree(partial, ignore_errors=True)

    order = SampleOrder(len(dataset), cfg.batch_size, cfg.seed)
    losses: list[float] = []
    last_checkpoint = resume_from
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train diffusion", unit="step",
               disable=not (progress and accelerator.is_main_process))
    model.train()
    for step in range(start_step, cfg.steps):
        rows = order.indices(step)[rank * local_batch:(rank + 1) * local_batch]
        if subspace is not None:
            target0, neutral, prompt_index = subspace.batch(rows)
        else:
            items = [dataset[i] for i in rows]
            neutral = torch.stack([it["neutral"] for it in items])
            target0 = raw_model.diffusion_target(torch.stack([it["target"] for it in items]), neutral)
            prompt_index = [it["prompt_index"] for it in items]
        tokens, mask = prompt_tokens.index(prompt_index)

        gen = _generator(cfg.seed, step, 2)
        noise = torch.randn((cfg.batch_size, *target0.shape[1:]), generator=gen)
        timesteps = training_timesteps(noise_scheduler.config.num_train_timesteps, cfg.batch_size, cfg.timestep_shift,
                                       gen)
        dropped = torch.rand(cfg.batch_size, generator=gen) < cfg.text_dropout
        local = slice(rank * local_batch, (rank + 1) * local_batch)
        noise, timesteps, dropped = noise[local], timesteps[local], dropped[local]
        mask = mask & ~dropped[:, None]
        tokens = tokens * mask[..., None]

        dev = accelerator.device
        loss = diffusion_loss(model, noise_scheduler, target0.to(dev), neutral.to(dev), tokens.to(dev), mask.to(dev),
                              noise.to(dev), timesteps.to(dev), cfg.snr_gamma).mean()
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        lr = lr_scheduler.get_last_lr()[0]
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(raw_model.parameters())

        done = step + 1
        mean_loss = float(accelerator.reduce(loss.detach(), reduction="mean"))
        losses.append(mean_loss)
        checkpoint = None
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            rng = gather_object([_rng_state()])
            if accelerator.is_main_process:
                checkpoint = _save_checkpoint(out_dir, done, raw_model, optimizer, lr_scheduler, ema, cfg, rng)
                _prune_checkpoints(out_dir, cfg.keep_checkpoints)
            last_checkpoint = checkpoint_dir(out_dir, done)
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            entry = StepLog(step=done, total_steps=cfg.steps, loss=mean_loss, lr=float(lr),
                            grad_norm=float(grad_norm), seconds=time.perf_counter() - started, checkpoint=checkpoint)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(dataclasses.asdict(entry), default=_json_default) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if on_step is not None:
                on_step(entry)
    bar.close()

    if accelerator.is_main_process:
        _publish(out_dir, raw_model, ema, noise_scheduler, manifest, latents_root, cfg, dataset.prompts,
                 cfg.steps, time.perf_counter() - started, n_proc)
    accelerator.wait_for_everyone()
    return TrainResult(out_dir=out_dir, model_dir=model_dir, scheduler_dir=scheduler_dir, log_path=log_path,
                       step=cfg.steps, start_step=start_step, losses=losses, last_checkpoint=last_checkpoint,
                       seconds=time.perf_counter() - started, num_processes=n_proc, prompts=list(dataset.prompts))


class SubspaceTrainingSet:
    """A :class:`SubspaceDenoiser`'s training samples held in memory: every sample's diffused coefficients
    (computed once, not per step: the projection costs more than the network) and each identity's neutral.

    ``fit``: fit the model's subspaces on ``dataset`` first (a fresh run; a resumed one has them in its
    checkpoint). Loading holds all change latents once (N x 1.6e5 float32: ~4.7 GB for 128 identities x 56
    units); :meth:`project` keeps only the (N, K) coefficients.
    """

    def __init__(self, dataset: LatentDataset, model: SubspaceDenoiser, *, fit: bool, seed: int = 0,
                 progress: bool = True):
        from tqdm.auto import tqdm

        self.subject_index = torch.tensor([dataset.subjects.index(s) for s, _ in dataset.samples])
        self.prompt_index = [e for _, e in dataset.samples]
        self.neutrals = torch.stack([dataset.neutral(s) for s in dataset.subjects])
        self._changes: torch.Tensor | None = torch.stack([
            dataset.target(s, dataset.expressions[e])
            for s, e in tqdm(dataset.samples, desc="load changes", unit="sample", disable=not progress)])
        self.kept: dict[str, float] = {}
        if fit:
            self.kept = model.fit_subspace(self._changes, self.neutrals, units=torch.tensor(self.prompt_index),
                                           seed=seed)
        self.targets: torch.Tensor | None = None

    @torch.no_grad()
    def project(self, model: SubspaceDenoiser, chunk: int = 512) -> None:
        """Compute every sample's coefficients with ``model``'s bases, then drop the change latents."""
        changes, self._changes = self._changes, None
        self.targets = torch.cat([model.diffusion_target(changes[s:s + chunk]) for s in range(0, len(changes), chunk)])

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(coefficients (B, K), neutral latents (B, M, Cn, h, w), prompt indices) of sample ``rows``."""
        rows = torch.as_tensor(list(rows))
        return (self.targets[rows], self.neutrals[self.subject_index[rows]],
                [self.prompt_index[int(r)] for r in rows])


def _finished_run(out_dir: Path, cfg: DiffusionTrainConfig, model_kwargs: Mapping[str, Any]) -> TrainResult | None:
    info_path = out_dir / "training.json"
    if not (out_dir / "model").exists():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise PublishError(f"{out_dir / 'model'}: exists without a readable training.json; use a new out_dir") from None
    if info.get("step") != cfg.steps or not _same_config(info.get("model_config", {}), _full_model_config(model_kwargs)):
        raise PublishError(f"{out_dir / 'model'}: already published by a run of {info.get('step')} steps with another "
                           "configuration; it is not overwritten, use a new out_dir")
    return TrainResult(out_dir=out_dir, model_dir=out_dir / "model", scheduler_dir=out_dir / "scheduler",
                       log_path=out_dir / LOG_NAME, step=cfg.steps, start_step=cfg.steps,
                       last_checkpoint=latest_checkpoint(out_dir), num_processes=int(info.get("num_processes", 1)),
                       prompts=list(info.get("prompts", [])))


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines past ``step``: they came from a run that stopped before its next checkpoint."""
    if not log_path.is_file():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        if entry["step"] <= step:
            keep.append(line)
    with atomic_path(log_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _save_checkpoint(out_dir: Path, step: int, model: ExpDiffDenoiser, optimizer, lr_scheduler, ema,
                     cfg: DiffusionTrainConfig, rng_states: Sequence[Mapping[str, Any]]) -> Path:
    target = checkpoint_dir(out_dir, step)
    opt_tensors, opt_scalars = _optimizer_to_files(optimizer.state_dict())
    rng_tensors, rng_scalars = {}, []
    for rank, state in enumerate(rng_states):
        rng_tensors[f"rank{rank}/torch_cpu"] = state["torch_cpu"].cpu()
        for i, cuda_state in enumerate(state["torch_cuda"]):
            rng_tensors[f"rank{rank}/torch_cuda/{i}"] = cuda_state.cpu()
        rng_scalars.append({"numpy": state["numpy"], "python": state["python"]})
    ema_scalars = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    state = {"format": CHECKPOINT_FORMAT, "step": step, "model_config": _model_config_json(model),
             "train_config": dataclasses.asdict(cfg), "optimizer": opt_scalars, "lr_scheduler": lr_scheduler.state_dict(),
             "ema": ema_scalars, "rng": rng_scalars}
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        _save_ema_folder(ema, model, tmp / "ema")
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=_json_default) + "\n")
    return target


def _load_checkpoint(folder: Path, model: ExpDiffDenoiser, optimizer, lr_scheduler, ema,
                     model_kwargs: Mapping[str, Any], rank: int) -> int:
    try:
        state = json.loads((folder / "state.json").read_text())
    except json.JSONDecodeError as exc:
        raise ExpDiffInputError(folder / "state.json", f"invalid JSON: {exc}") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ExpDiffInputError(folder / "state.json", f"format {state.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
    if not _same_config(state["model_config"], _model_config_json(model)):
        raise ExpDiffInputError(folder / "state.json", "checkpoint was trained with another model config "
                                f"({state['model_config']}); resume with the same config or use a new out_dir")
    weights = load_file(str(folder / "model" / "diffusion_pytorch_model.safetensors"))
    model.load_state_dict(weights)
    ema_weights = load_file(str(folder / "ema" / "diffusion_pytorch_model.safetensors"))
    ema.load_state_dict({**state["ema"], "shadow_params": [ema_weights[name] for name, _ in model.named_parameters()]})
    optimizer.load_state_dict(_optimizer_from_files(load_file(str(folder / "optimizer.safetensors")), state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng_tensors = load_file(str(folder / "rng.safetensors"))
    saved_ranks = len(state["rng"])
    source = rank if rank < saved_ranks else 0
    _set_rng_state(rng_tensors, state["rng"][source], source)
    return int(state["step"])


def _prune_checkpoints(out_dir: Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)


def _publish(out_dir: Path, model: ExpDiffDenoiser, ema, noise_scheduler, manifest, latents_root: Path,
             cfg: DiffusionTrainConfig, prompts: Sequence[str], step: int, seconds: float, n_proc: int) -> None:
    scheduler_dir = out_dir / "scheduler"
    if scheduler_dir.exists():
        # Left by an earlier publish of this same run that stopped before model/ (written last) appeared.
        shutil.rmtree(scheduler_dir)
    with atomic_dir(scheduler_dir) as tmp:
        noise_scheduler.save_pretrained(tmp)
    with atomic_path(out_dir / "latents_manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    info = {"step": step, "model_config": _model_config_json(model), "train_config": dataclasses.asdict(cfg),
            "latents_root": str(latents_root), "prompts": list(prompts), "seconds_last_run": seconds,
            "num_processes": n_proc}
    with atomic_path(out_dir / "training.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
    # model/ last: its presence marks the run finished (see _finished_run).
    with atomic_dir(out_dir / "model") as tmp:
        _save_ema_folder(ema, model, tmp)


# ---------------------------------------------------------------------------------------- command line
def run_from_args(args: argparse.Namespace, default_device: str = "auto") -> TrainResult:
    """Run what :func:`build_arg_parser`'s flags ask for; ``default_device`` applies when --device is absent."""
    model_config, cfg = configs_from_args(args, default_device)
    return train_diffusion(args.latents, args.out, model_config, cfg, progress=not args.no_progress)


def configs_from_args(args: argparse.Namespace, default_device: str = "auto"
                      ) -> tuple[dict[str, Any], DiffusionTrainConfig]:
    """(denoiser model config, training config) that :func:`build_arg_parser`'s flags ask for."""
    manifest = read_manifest(args.latents)
    overrides: dict[str, Any] = {}
    if args.model_config:
        path = Path(args.model_config)
        try:
            overrides.update({k: v for k, v in json.loads(path.read_text()).items()
                              if not k.startswith("_") or k == "_class_name"})
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            raise ExpDiffInputError(path, f"unreadable model config: {exc}") from None
    if args.no_attention:
        overrides["attention"] = False
    if args.text_conditioning:
        overrides["text_conditioning"] = args.text_conditioning
    if args.target:
        overrides["target"] = args.target
    if denoiser_class(overrides.get("_class_name")) is ExpDiffDenoiser:
        model_config = denoiser_config(manifest.kinds, len(manifest.udims), manifest.latent_shape[0],
                                       manifest.latent_shape[1:], args.preset,
                                       condition_channels=manifest.condition_shape[0], **overrides)
    else:  # the size presets are the transformer's; other classes take their config file as it is
        model_config = overrides
    cfg = DiffusionTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DiffusionTrainConfig)})
    cfg.device = args.device or default_device
    return model_config, cfg


def main(argv: list[str] | None = None) -> int:
    from ..config import load_settings
    from ..errors import ExpDiffError

    args = build_arg_parser().parse_args(argv)
    try:
        result = run_from_args(args, default_device=load_settings().device)
    except ExpDiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to step {result.step} (from {result.start_step}) in {result.seconds:.1f}s on "
              f"{result.num_processes} process(es); model: {result.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
