"""Assemble trained parts (VAE + denoiser) and their dataset's template into one ExpDiff pipeline folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ExpDiffInputError
from ..io.dataset import Dataset
from ..models.denoiser import load_denoiser
from ..pipelines.expdiff import ExpDiffPipeline, PipelineConfig
from .latents import NEUTRAL_PROMPT


def _metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def model_card(name: str, config: PipelineConfig, vae_dir: Path, denoiser_dir: Path, dataset: Dataset,
               denoiser: dict | None = None) -> str:
    """A markdown model card: what the model is, what it was trained on, and its measured figures.

    denoiser_dir: the diffusion run folder; denoiser: its model's config.json values.
    """
    vae_metrics = _metrics(vae_dir)
    den_metrics = _metrics(denoiser_dir) or _training_summary(denoiser_dir)
    lines = [
        f"# {name}",
        "",
        "ExpDiff pipeline: latent codec (AutoencoderKL) + "
        f"{'subspace' if (denoiser or {}).get('_class_name') == 'SubspaceDenoiser' else 'dual-attention'} "
        "denoiser, trained by ExpDiff's own",
        "trainers on the synthetic face factory's corpus. Offline default; not a production model.",
        "",
        f"- maps: {', '.join(config.kinds)} on UDIM tiles {config.udims} at {config.resolution}x{config.resolution}",
        f"- template: {dataset.vertex_count} vertices, skin groups {config.skin_groups}",
        f"- position map scale: {config.position['scale_cm']} cm",
        f"- text encoder: {config.text_encoder}",
        f"- training data: {dataset.root.name}, {len(dataset.split('train'))} train / {len(dataset.split('val'))} "
        f"val / {len(dataset.split('test'))} test identities x {len(dataset.expressions)} expressions",
        f"- default sampling: {config.sampler}, {config.steps} steps, strength {config.strength}, noise scale "
        f"{config.noise_scale}",
    ]
    if denoiser and denoiser.get("_class_name") == "SubspaceDenoiser":
        lines.append(f"- denoiser: diffuses the principal coefficients of the change latents ({denoiser.get('components')}"
                     f" directions per kind, {_whitening(denoiser)}); "
                     f"identity from {denoiser.get('neutral_components')} neutral directions; map kinds "
                     f"{_kind_exchange(denoiser)}; text conditioning "
                     f"{denoiser.get('text_conditioning', 'encoder')}; MLP width {denoiser.get('width')}, depth "
                     f"{denoiser.get('depth')}")
    elif denoiser:
        lines.append(f"- denoiser: diffuses the {denoiser.get('target', 'absolute')} latents; attention between maps "
                     f"{'on' if denoiser.get('attention', True) else 'off'}; text conditioning "
                     f"{denoiser.get('text_conditioning', 'encoder')}; width {denoiser.get('width')}, depth "
                     f"{denoiser.get('depth')}, patch {denoiser.get('patch_size')}")
    if vae_metrics:
        lines += ["", "## Latent codec (held-out)", "", "```json", json.dumps(vae_metrics, indent=2)[:4000], "```"]
    if den_metrics:
        lines += ["", "## Denoiser training", "", "```json", json.dumps(den_metrics, indent=2)[:4000], "```"]
    return "\n".join(lines) + "\n"


def assemble_pipeline(dataset_root: str | os.PathLike, vae_dir: str | os.PathLike, diffusion_run: str | os.PathLike,
                      out: str | os.PathLike, *, name: str = "expdiff-offline", steps: int = 30,
                      sampler: str = "ddim", strength: float = 1.0, noise_scale: float = 1.0,
                      prior_dir: str | os.PathLike | None = None, prior_strength: float = 0.0,
                      change_vae_dir: str | os.PathLike | None = None, half_weights: bool = False,
                      support_dir: str | os.PathLike | None = None) -> Path:
    """A new pipeline folder ``out`` from a trained VAE and a finished diffusion run on ``dataset_root``'s template.

    diffusion_run: the trainer's output folder (``model/`` EMA weights, ``scheduler/``, ``latents_manifest.json``).
    prior_dir: an expression prior (``expdiff train prior``) fitted on the same dataset and codec, with its
    latents; prior_strength: the SDEdit strength from it. change_vae_dir: the change codec of a
    target="change" denoiser (required for one, refused otherwise). noise_scale: the default sampling
    temperature (``PipelineConfig.noise_scale``). half_weights: store the denoiser's weights as float16.
    support_dir: an expression support (``expdiff train support``) fitted on the same dataset.
    """
    if not 0.0 <= float(noise_scale) <= 1.0:
        raise ExpDiffInputError(None, f"noise_scale must be in [0, 1], got {noise_scale}")
    dataset = Dataset(dataset_root)
    run = Path(diffusion_run)
    vae_dir, denoiser_dir = Path(vae_dir), run / "model"
    if not (denoiser_dir / "config.json").is_file():
        raise ExpDiffInputError(run, "not a finished diffusion training run (model/ missing)")
    denoiser_config = json.loads((denoiser_dir / "config.json").read_text())
    if int(denoiser_config["n_udims"]) != len(dataset.udims):
        raise ExpDiffInputError(denoiser_dir, f"denoiser was built for {denoiser_config['n_udims']} tiles; the dataset "
                                f"has {dataset.udims}")
    load_denoiser(denoiser_dir)  # loads: safetensors present, config valid
    encoding = _encoding_of(run)
    if (denoiser_config.get("target") == "change") != (change_vae_dir is not None):
        raise ExpDiffInputError(denoiser_dir, "a denoiser of target 'change' is assembled with its change codec "
                                "(--change-vae), and only it is")
    linear_change = False
    if change_vae_dir is not None:
        from ..models.patch_codec import PatchChangeCodec, load_codec

        change_codec = load_codec(change_vae_dir, device="cpu")
        linear_change = isinstance(change_codec, PatchChangeCodec)
        if not change_codec.encodes_change:
            raise ExpDiffInputError(Path(change_vae_dir), "is not a change codec (no change_scales.json)")
        same = (encoding.get("change_scales") == change_codec.change_scales.to_dict()
                if change_codec.change_scales is not None
                else encoding.get("change_fingerprint") == change_codec.fingerprint)
        if not same:
            raise ExpDiffInputError(Path(change_vae_dir), "is not the change codec the denoiser's latents were "
                                    "encoded with (its change scales or bases differ)")
    config = PipelineConfig(
        kinds=list(denoiser_config["kinds"]), udims=list(dataset.udims), resolution=dataset.resolution,
        skin_groups=list(dataset.manifest["template"].get("skin_groups") or []),
        position=encoding.get("position_map", {"scale_cm": 6.0}), neutral_prompt=NEUTRAL_PROMPT,
        sampler=sampler, steps=steps, strength=strength, prior_strength=float(prior_strength),
        noise_scale=float(noise_scale))
    if prior_dir is not None:
        from ..models.prior import ExpressionPrior

        prior = ExpressionPrior.from_pretrained(prior_dir)
        if prior.latent_mean is not None and linear_change:
            raise ExpDiffInputError(Path(prior_dir), "has a latent part, which a model with the linear change codec "
                                    "does not use (it encodes the prior's changes); fit the prior without --latents")
        if prior.latent_mean is None and not linear_change:
            raise ExpDiffInputError(Path(prior_dir), "has no latent part; fit it with --latents (a model with the "
                                    "linear change codec needs none: it encodes the prior's changes)")
        if prior.config.vertex_count != dataset.vertex_count:
            raise ExpDiffInputError(Path(prior_dir), f"is for {prior.config.vertex_count} vertices, the dataset has "
                                    f"{dataset.vertex_count}")
        representation = prior.config.fitted_on.get("latent_representation", "absolute")
        if prior.latent_mean is not None and (representation == "change") != (change_vae_dir is not None):
            raise ExpDiffInputError(Path(prior_dir), f"its latent part was fitted on {representation} latents; this "
                                    f"denoiser's are {'change' if change_vae_dir else 'absolute'} latents")
        if not 0.0 <= prior_strength <= 1.0:
            raise ExpDiffInputError(None, f"prior strength must be in [0, 1], got {prior_strength}")
    if support_dir is not None:
        from ..models.support import ExpressionSupport

        support = ExpressionSupport.from_pretrained(support_dir)
        if support.config.vertex_count != dataset.vertex_count or support.config.map_resolution != dataset.resolution:
            raise ExpDiffInputError(Path(support_dir), f"is for {support.config.vertex_count} vertices and "
                                    f"{support.config.map_resolution}^2 maps; the dataset has {dataset.vertex_count} "
                                    f"and {dataset.resolution}^2")
    card = model_card(name, config, vae_dir, run, dataset, denoiser_config)
    if prior_dir is not None:
        c = prior.config
        fitted = {k: v for k, v in c.fitted_on.items() if k != "map_validation"}
        maps = ("; map part (BRDF change in map space, added to the character's neutral maps) per kind "
                + ", ".join(f"{kind} K={k} ridge {r:g}" for kind, (k, r) in sorted(c.map_tuning.items()))
                if c.map_tuning else "")
        card += (f"\n## Expression prior\n\nRidge regression from the neutral's identity coefficients to each unit's "
                 f"change: {c.n_components} components, ridge {c.ridge}{maps}; fitted on {json.dumps(fitted)}. "
                 f"Each expression starts from it; SDEdit strength {prior_strength}.\n")
    if support_dir is not None:
        c = support.config
        card += (f"\n## Expression support\n\nEach expression keeps its change only where its units change some "
                 f"training identity (vertices moved > {c.vertex_threshold:g} cm, texels changed > "
                 f"{c.map_threshold:g}); on average a unit's support is {support.vertices.mean():.1%} of the "
                 f"vertices and {support.maps.mean():.1%} of the texels; fitted on {json.dumps(c.fitted_on)}.\n")
    return ExpDiffPipeline.assemble(out, config, vae_dir, denoiser_dir, dataset.template(), card,
                                    scheduler_folder=run / "scheduler", prior_folder=prior_dir,
                                    change_vae_folder=change_vae_dir, half_weights=half_weights,
                                    support_folder=support_dir)


def _encoding_of(run: Path) -> dict:
    """The latent-encoding settings the denoiser was trained on (the run's copy of the latents manifest)."""
    path = run / "latents_manifest.json"
    if not path.is_file():
        raise ExpDiffInputError(run, "latents_manifest.json missing: cannot tell the position map scale")
    return json.loads(path.read_text()).get("codec", {})


def _training_summary(run: Path) -> dict:
    path = run / "training.json"
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    return {k: info.get(k) for k in ("step", "seconds_last_run", "num_processes", "train_config")}


def _kind_exchange(denoiser: dict) -> str:
    """How a subspace denoiser's map kinds inform each other, in words."""
    if not denoiser.get("attention", True):
        return "in separate streams (no exchange: the w/o attention ablation)"
    if denoiser.get("kind_tokens", False):
        return "as tokens of their own that attend to each other"
    return "mixed in one MLP stream"


def _whitening(denoiser: dict) -> str:
    """Which of a subspace denoiser's kinds have whitened coefficients, in words."""
    whiten = denoiser.get("whiten", True)
    if whiten is True:
        return "whitened"
    if not whiten:
        return "one scale per kind"
    return f"whitened for {', '.join(whiten)}, one scale for the other kinds"
