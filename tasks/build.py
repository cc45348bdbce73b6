"""Character build tasks: one ``expdiff_core.build`` stage each (plus model resolution and the manifest).

Pure stages whose inputs fully determine their output carry content-hash cache keys (ingest: the mesh and
texture files; encode: the ingested hashes; diffuse: the neutral latents file, prompts, seed and sampling
settings; all: the model's fingerprint), so a rerun with the same inputs skips them (``Cached``).
Stages that load models onto the GPU carry the ``gpu`` tag. Publishing and validation never come from the cache.
Stage outputs are files in a per-run work folder; results are their paths and figures.
"""

from __future__ import annotations

from typing import Any, Sequence

from prefect import task

from expdiff_core import build
from expdiff_core.orchestration_helpers.build_manifest import read_build_manifest
from expdiff_core.orchestration_helpers.model_refs import resolve_model_reference

from .artifacts import ProgressReporter
from .common import (GPU_TAG, IO_RETRIES, IO_RETRY_DELAYS, IO_RETRY_JITTER, NOT_CACHED, RESULT_SERIALIZER,
                     content_cache_key, retry_on_transient_io, run_settings)

_IO = dict(retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_jitter_factor=IO_RETRY_JITTER,
           retry_condition_fn=retry_on_transient_io)


# An alias can move between two runs, so the reference is resolved afresh every run (never cached).
@task(name="resolve-model", **NOT_CACHED, result_serializer=RESULT_SERIALIZER, **_IO)
def resolve_model(reference: str, config_file: str | None = None) -> dict[str, Any]:
    """``resolve_model_reference``: {"path", "name", "version", "run_id", "uri", "fingerprint", ...}."""
    return resolve_model_reference(run_settings(config_file), reference)


@task(name="read-build-manifest", **NOT_CACHED, result_serializer=RESULT_SERIALIZER, **_IO)
def read_manifest(manifest: str) -> list[dict[str, Any]]:
    """``read_build_manifest``: the characters of a nightly manifest, defaults applied."""
    return read_build_manifest(manifest)


@task(name="ingest", cache_key_fn=content_cache_key("ingest", files=["mesh", "textures"], values=["model.fingerprint"]),
      result_serializer=RESULT_SERIALIZER, **_IO)
def ingest(mesh: str, textures: dict[str, str], model: dict[str, Any]) -> dict[str, Any]:
    """``build.ingest``: the neutral asset checked against the model's template; file hashes."""
    return build.ingest(mesh, textures, model["path"], device="cpu")


@task(name="encode", tags=[GPU_TAG], result_serializer=RESULT_SERIALIZER,
      cache_key_fn=content_cache_key("encode", values=["ingested.hashes", "ingested.textures", "model.fingerprint"]))
def encode(ingested: dict[str, Any], model: dict[str, Any], work_dir: str, device: str = "auto") -> dict[str, Any]:
    """``build.encode_neutral``: neutral maps -> latents file."""
    return build.encode_neutral(ingested, model["path"], work_dir, device=device)


@task(name="diffuse", tags=[GPU_TAG], result_serializer=RESULT_SERIALIZER,
      cache_key_fn=content_cache_key("diffuse", files=["encoded.latents"],
                                     values=["model.fingerprint", "expressions", "seed", "steps", "sampler",
                                             "strength"]))
def diffuse(encoded: dict[str, Any], model: dict[str, Any], expressions: Sequence[str], work_dir: str, seed: int = 0,
            steps: int | None = None, sampler: str | None = None, strength: float | None = None,
            device: str = "auto", progress_key: str = "diffusion-progress",
            compile_denoiser: bool = False) -> dict[str, Any]:
    """``build.diffuse``: every expression's latents in one batch; a progress artifact follows the steps."""
    progress = ProgressReporter(progress_key, description=f"diffusion of {len(expressions)} expression(s)")
    return build.diffuse(encoded, model["path"], list(expressions), work_dir, seed=seed, steps=steps,
                         sampler=sampler, strength=strength, device=device, on_progress=progress.update,
                         compile_denoiser=compile_denoiser)


@task(name="decode", tags=[GPU_TAG], **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def decode(diffused: dict[str, Any], model: dict[str, Any], work_dir: str, device: str = "auto") -> dict[str, Any]:
    """``build.decode``: latents -> model-resolution maps per expression."""
    return build.decode(diffused, model["path"], work_dir, device=device)


@task(name="recover-meshes", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def recover(decoded: dict[str, Any], ingested: dict[str, Any], model: dict[str, Any], work_dir: str) -> dict[str, Any]:
    """``build.recover`` (Eq. 9): expression meshes on the user's topology + per-expression figures."""
    return build.recover(decoded, ingested, model["path"], work_dir)


@task(name="upscale", tags=[GPU_TAG], **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def upscale(decoded: dict[str, Any], ingested: dict[str, Any], work_dir: str, device: str = "auto",
            config_file: str | None = None) -> dict[str, Any]:
    """``build.upscale``: the guided Real-ESRGAN stage (Eq. 8), maps at the user's texture resolution."""
    return build.upscale(decoded, ingested, work_dir, settings=run_settings(config_file), device=device)


@task(name="transfer-textures", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def transfer_textures(decoded: dict[str, Any], ingested: dict[str, Any], kind: str, work_dir: str) -> dict[str, Any]:
    """``build.transfer_textures``: one map kind for every expression at the user's resolution."""
    return build.transfer_textures(decoded, ingested, kind, work_dir)


# Publishing makes a new version folder every time: never cached. Retried only on OS-level errors (the
# version folder appears atomically, so a retry starts clean).
@task(name="export-usd", **NOT_CACHED, result_serializer=RESULT_SERIALIZER, **_IO)
def export_usd(ingested: dict[str, Any], recovered: dict[str, Any], textured: list[dict[str, Any]], character: str,
               output_root: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """``build.export_usd``: publish ``<output_root>/<character>/v###/``."""
    return build.export_usd(ingested, recovered, textured, character, output_root, provenance)


@task(name="validate-usd", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def validate_usd(exported: dict[str, Any]) -> dict[str, Any]:
    """``build.validate_usd``: fails listing every USD error; else the warnings."""
    return build.validate_usd(exported)


@task(name="contact-sheet", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def contact_sheet(ingested: dict[str, Any], recovered: dict[str, Any], textured: list[dict[str, Any]],
                  out_path: str, size: int = 192) -> dict[str, Any]:
    """``build.contact_sheet``: every expression rendered with its own maps, one PNG."""
    return build.contact_sheet(ingested, recovered, textured, out_path, size=size)
