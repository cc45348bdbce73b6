"""A tiny, untrained ExpDiff pipeline on our procedural template: exercises every stage in seconds."""

from __future__ import annotations

import numpy as np

from expdiff_core.models.denoiser import ExpDiffDenoiser, denoiser_config
from expdiff_core.models.patch_codec import PatchChangeCodec
from expdiff_core.models.support import ExpressionSupport, ExpressionSupportConfig
from expdiff_core.models.vae import ChangeScales, LatentCodec, offline_vae_config
from expdiff_core.pipelines.expdiff import ExpDiffPipeline, PipelineConfig
from expdiff_core.schedulers import training_noise_scheduler
from expdiff_core.synth.template import template_mesh

KINDS = ["position", "albedo", "specular", "roughness", "normal"]
RESOLUTION = 32  # 4x4 latents: the smallest size the 8x VAE and a patch-2 denoiser accept


PRIOR_UNITS = ["jawOpen", "mouthSmile_L", "mouthSmile_R"]


def tiny_prior_folder(root, template, n_identities: int = 6, maps: bool = False, latents: bool = True):
    """Write an expression prior fitted on made-up identities of ``template`` (one latent component); returns it.

    Identity k is the template scaled by 1 + 0.02 k; jawOpen moves the lower half down by 1 cm (more for
    bigger faces), mouthSmile_L/_R lift the +X/-X half by 0.5 cm; latent changes are small fixed patterns.
    maps: also a map part (``TINY_MAP_CHANGE``: each unit changes one block of texels of every BRDF kind).
    latents=False: no latent part (a model with the linear change codec encodes the prior's changes instead).
    """
    from expdiff_core.models.prior import fit_expression_prior, fit_map_change

    rng = np.random.default_rng(0)
    v = template.vertices.astype(np.float64)
    scales = 1.0 + 0.02 * np.arange(n_identities)
    neutrals = np.stack([v * s for s in scales])
    lower, left = (v[:, 1] < np.median(v[:, 1]))[:, None], (v[:, 0] > 0)[:, None]
    up = np.array([0.0, 1.0, 0.0])
    changes = {"jawOpen": np.stack([-s * up * lower for s in scales]),
               "mouthSmile_L": np.stack([0.5 * up * left for _ in scales]),
               "mouthSmile_R": np.stack([0.5 * up * ~left for _ in scales])}
    latent_changes = {u: np.stack([rng.normal(size=(2 * len(KINDS), 4, RESOLUTION // 8, RESOLUTION // 8)) * 0.1] * n_identities)
               for u in PRIOR_UNITS}
    prior = fit_expression_prior(neutrals.astype(np.float32), np.zeros((n_identities, 0)),
                                 {u: c.astype(np.float32) for u, c in changes.items()}, n_components=2, ridge=1e-6,
                                 map_kinds=[], udims=[], latent_changes=latent_changes if latents else None,
                                 latent_components=1)
    if maps:
        layout = [[k, u, 3 if k in ("albedo", "normal") else 1] for k in KINDS if k != "position" for u in (1001, 1002)]
        scores = prior.features.scores(neutrals.reshape(n_identities, -1), np.zeros((n_identities, 0)))
        flat = {u: np.stack([tiny_map_change(u, layout, k) for k in range(n_identities)]) for u in PRIOR_UNITS}
        part = fit_map_change(scores, flat, PRIOR_UNITS, layout, RESOLUTION, {k: (2, 1e-6) for k in KINDS[1:]})
        prior = prior.with_map_part(part, layout, RESOLUTION, {k: (2, 1e-6) for k in KINDS[1:]})
    return prior.save_pretrained(root / "prior")


def tiny_map_change(unit: str, layout, identity: int = 0) -> np.ndarray:
    """The flattened map change of ``unit`` for made-up identity k: 0.05 (1 + 0.02 k) on the unit's own block
    of texels (rows 4j..4j+3 for the j-th prior unit) of every tile and BRDF kind, zero elsewhere."""
    from expdiff_core.models.prior import flatten_maps

    j = PRIOR_UNITS.index(unit)
    maps = {}
    for kind, udim, channels in layout:
        tile = np.zeros((channels, RESOLUTION, RESOLUTION), np.float32)
        tile[:, 4 * j:4 * j + 4, 8:16] = 0.05 * (1.0 + 0.02 * identity)
        maps.setdefault(kind, {})[udim] = tile
    return flatten_maps(maps, layout)


def tiny_pipeline_folder(root, text_conditioning: str = "encoder", target: str = "absolute", prior: bool = False,
                         map_prior: bool = False, change_codec: str = "vae", denoiser: str = "transformer",
                         condition: str = "vae", support: bool = False):
    """Write a pipeline folder under ``root / "model"`` (random weights, 4 sampling steps); returns it.

    target="residual": the denoiser diffuses (expression - neutral) latents, every map scaled by 4.
    target="change": it diffuses a change codec's latents (a second tiny codec, ``change_vae/``), scaled by 4.
    prior: also an expression prior (``tiny_prior_folder``), sampled from at strength 0; map_prior: with a map part.
    change_codec="patch": the change codec is a linear patch codec (8 latent channels against the VAE's 4),
    its bases the principal directions of a random second moment.
    denoiser="subspace": a ``SubspaceDenoiser`` (target "change", patch codec), its subspaces fitted on random
    low-rank changes of 12 identities x 5 expressions; ``condition="change"``: its condition is the neutral maps
    encoded by the change codec (``condition_codec``), its identity read from the position maps.
    support: also an expression support (:func:`tiny_support`; a change model's).
    """
    template = template_mesh()
    config = PipelineConfig(kinds=KINDS, udims=[1001, 1002], resolution=RESOLUTION,
                            skin_groups=["M_Face", "M_BackHead"], steps=4)
    codec = LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8),
                                    seed=0, device="cpu")
    vae_dir = codec.save_pretrained(root / "parts" / "vae")
    channels = 8 if change_codec == "patch" else 4
    if denoiser == "subspace":
        denoiser = tiny_subspace_denoiser(channels, condition)
    else:
        denoiser = ExpDiffDenoiser(**denoiser_config(KINDS, 2, channels, RESOLUTION // 8, width=32, depth=1, heads=2,
                                                     condition_channels=4, text_conditioning=text_conditioning,
                                                     target=target, residual_scale=None if target == "absolute"
                                                     else [4.0] * 2 * len(KINDS)))
    den_dir = root / "parts" / "denoiser"
    denoiser.save_pretrained(den_dir)
    training_noise_scheduler().save_pretrained(den_dir)
    prior_dir = (tiny_prior_folder(root / "parts", template, maps=map_prior, latents=change_codec != "patch")
                 if prior or map_prior else None)
    change_dir = None
    if target == "change" and change_codec == "patch":
        rng = np.random.default_rng(0)
        moments = {}
        for kind in KINDS:
            d = (3 if kind in ("position", "albedo", "normal") else 1) * 64
            a = rng.normal(size=(d, d))
            moments[kind] = a @ a.T / d * 1e-4
        change_dir = PatchChangeCodec.fit(moments, latent_channels=channels).save_pretrained(root / "parts" / "change_vae")
    elif target == "change":
        change = LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8),
                                         seed=1, device="cpu", change_scales=ChangeScales(TINY_CHANGE_SCALES))
        change_dir = change.save_pretrained(root / "parts" / "change_vae")
    support_dir = (tiny_support(config, template.n_vertices).save_pretrained(root / "parts" / "support")
                   if support else None)
    return ExpDiffPipeline.assemble(root / "model", config, vae_dir, den_dir, template, "# tiny test model\n",
                                    prior_folder=prior_dir, change_vae_folder=change_dir, support_folder=support_dir)


def tiny_support(config: PipelineConfig, n_vertices: int) -> ExpressionSupport:
    """jawOpen may move every other vertex (:func:`tiny_support_vertices`) and change the albedo of the first tile,
    nothing else; mouthSmile_L anything."""
    layout = [[k, u, 3 if k in ("albedo", "normal") else 1]
              for k in config.kinds if k != "position" for u in config.udims]
    size = sum(ch for _, _, ch in layout) * config.resolution ** 2
    maps = np.zeros((2, size), bool)
    maps[0, :3 * config.resolution ** 2] = True  # the layout starts with albedo on the first tile
    maps[1] = True
    vertices = np.stack([tiny_support_vertices(n_vertices), np.ones(n_vertices, bool)])
    return ExpressionSupport(ExpressionSupportConfig(["jawOpen", "mouthSmile_L"], n_vertices, layout,
                                                     config.resolution), vertices, maps)


def tiny_support_vertices(n_vertices: int) -> np.ndarray:
    """(V,) bool: the vertices :func:`tiny_support` lets jawOpen move."""
    return np.arange(n_vertices) % 2 == 0


def tiny_subspace_denoiser(channels: int, condition: str = "vae"):
    """A SubspaceDenoiser on the tiny layout, fitted on random changes of rank 4 per kind (scale 0.1)."""
    import torch

    from expdiff_core.models.subspace_denoiser import SubspaceDenoiser

    size = RESOLUTION // 8
    gen = torch.Generator().manual_seed(0)
    samples, maps = 60, 2 * len(KINDS)
    changes = (torch.randn(samples, 4, generator=gen) @ torch.randn(4, maps * channels * size * size, generator=gen)
               ).view(samples, maps, channels, size, size) * 0.1
    condition_channels = channels if condition == "change" else 4
    neutrals = torch.randn(12, maps, condition_channels, size, size, generator=gen)
    model = SubspaceDenoiser(kinds=KINDS, n_udims=2, latent_channels=channels, latent_size=size,
                             condition_channels=condition_channels, components=[4] * len(KINDS), neutral_components=3,
                             width=32, depth=1, condition_codec=condition,
                             identity_kinds=["position"] if condition == "change" else None)
    model.fit_subspace(changes, neutrals)
    return model


# map units: position 0.3 of the 6 cm scale (1.8 cm), textures a tenth of their range
TINY_CHANGE_SCALES = {"position": 0.3, "albedo": 0.1, "specular": 0.1, "roughness": 0.1, "normal": 0.1}


def neutral_textures(resolution: int = 48) -> dict[str, dict[int, np.ndarray]]:
    """Smooth, distinct per-kind maps at a resolution other than the model's (so resizing is exercised)."""
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    base = {
        "albedo": np.stack([0.6 + 0.2 * x, 0.4 + 0.1 * y, 0.35 + 0.0 * x]),
        "specular": (0.3 + 0.1 * x)[None],
        "roughness": (0.5 + 0.2 * y)[None],
        "normal": np.stack([0.5 + 0.0 * x, 0.5 + 0.0 * x, 1.0 + 0.0 * x]),
    }
    return {k: {1001: v.copy(), 1002: v[:, ::-1].copy()} for k, v in base.items()}
