"""``build-character`` flow: one neutral asset + expressions + a model reference -> a published USD version.

ingest -> encode -> diffuse -> decode -> recover meshes + upscale (guided Real-ESRGAN) -> transfer textures (one task per map kind) -> export
USD -> validate USD -> contact sheet. Any failing step fails the run (tasks are called, not left as
futures). Artifacts on the run page: ``build-<character>-summary`` (model, seed, timings, output),
``build-<character>-expressions`` (per-expression figures), ``build-<character>-diffusion-progress``,
``build-<character>-contact-sheet`` and, with an MLflow tracking server, ``build-<character>-model-run``.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.runtime import flow_run

from expdiff_core.preflight import check_build
from tasks import artifacts
from tasks import build as stages
from tasks.common import (StageTimer, artifacts_path, begin_build_run, bind_result_storage, cached_stage_dir,
                          end_build_run, run_settings)

POSITION = "position"


# The returned summary is persisted (JSON) so a parent run on another worker - the nightly fan-out - can read it.
@flow(name="build-character", description="Build FACS expression blendshapes with dynamic BRDF textures for one "
      "character and publish them as a new USD version.", persist_result=True, result_serializer="json",
      on_completion=[end_build_run], on_failure=[end_build_run], on_crashed=[end_build_run],
      on_cancellation=[end_build_run])
def build_character(character: str, mesh: str, textures: dict[str, str], expressions: list[str],
                    model: str = "models:/expdiff@champion", seed: int = 0, steps: int | None = None,
                    sampler: str | None = None, strength: float | None = None, device: str | None = None,
                    config_file: str | None = None, keep_work: bool = False) -> dict:
    """character: USD prim name of the character (letters, digits, '_'). mesh: neutral OBJ/PLY/USD on the
    model's template. textures: kind (albedo, specular, roughness, normal) -> a ``<UDIM>`` pattern, one tile
    or a folder; albedo required. expressions: FACS unit names or free prompts. model: ``models:/NAME@alias``,
    ``models:/NAME/VERSION`` or a local pipeline folder. steps/sampler/strength: sampling overrides.
    device: auto | cpu | cuda[:N] (default: settings). config_file: ExpDiff settings TOML. Free prompts are
    written ``prompt:TEXT``. keep_work: keep the per-run work folder (removed when the run ends by default).
    Every parameter is checked first (``expdiff_core.preflight``), before anything is written."""
    settings = run_settings(config_file)
    plan = check_build(settings, mesh=mesh, textures=textures, character=character, expressions=expressions,
                       model=model, seed=seed, steps=steps, sampler=sampler, strength=strength)
    expressions = plan.expressions  # free prompts without their "prompt:" marker
    (resolve, ingest, encode, diffuse, decode, recover, upscale, transfer, export, validate, sheet) = bind_result_storage(
        settings, stages.resolve_model, stages.ingest, stages.encode, stages.diffuse, stages.decode,
        stages.recover, stages.upscale, stages.transfer_textures, stages.export_usd, stages.validate_usd,
        stages.contact_sheet)
    run_id = str(flow_run.get_id())
    work = begin_build_run(settings, plan.character, run_id)
    device = device or settings.device
    timer = StageTimer()

    with timer.stage("resolve model"):
        model_ref = resolve(model, config_file)
    with timer.stage("ingest"):
        ingested = ingest(mesh, textures, model_ref)
    with timer.stage("encode"):
        encoded = encode(ingested, model_ref, cached_stage_dir(settings, "encode", ingested["hashes"],
                                                               ingested["textures"], model_ref["fingerprint"]), device)
    with timer.stage("diffuse"):
        diffused = diffuse(encoded, model_ref, expressions, cached_stage_dir(
                               settings, "diffuse", encoded["latents"], model_ref["fingerprint"], expressions, seed,
                               steps, sampler, strength), seed=seed, steps=steps, sampler=sampler,
                           strength=strength, device=device, compile_denoiser=settings.compile_denoiser,
                           progress_key=artifacts.artifact_key("build", character, "diffusion-progress"))
    with timer.stage("decode"):
        decoded = decode(diffused, model_ref, work, device)
    with timer.stage("recover meshes"):
        recovered = recover(decoded, ingested, model_ref, work)
    with timer.stage("upscale"):
        upscaled = upscale(decoded, ingested, work, device, config_file)
    with timer.stage("transfer textures"):
        kinds = [k for k in decoded["kinds"] if k != POSITION]
        textured = [f.result() for f in transfer.map(unmapped(upscaled), unmapped(ingested), kinds, unmapped(work))]
    provenance = {"model_name": model_ref["name"], "model_version": str(model_ref["version"]), "seed": seed,
                  "scheduler": diffused["sampler"], "steps": diffused["steps"],
                  "mlflow_run_id": model_ref["run_id"] or "", "prefect_flow_run_id": run_id}
    with timer.stage("export USD"):
        exported = export(ingested, recovered, textured, character, str(settings.output_path), provenance)
    with timer.stage("validate USD"):
        validated = validate(exported)
    with timer.stage("contact sheet"):
        target = artifacts_path(settings) / "builds" / f"{character}-{run_id}.png"
        sheet_path = sheet(ingested, recovered, textured, str(target))["contact_sheet"]

    artifacts.image_artifact(sheet_path, settings, artifacts.artifact_key("build", character, "contact-sheet"),
                             description=f"{character}: every expression rendered with its own maps")
    model_url = None
    if model_ref["run_id"]:
        model_url = artifacts.mlflow_run_url(settings.tracking_uri, model_ref["experiment_id"], model_ref["run_id"])
        artifacts.mlflow_link(settings.tracking_uri, model_ref["experiment_id"], model_ref["run_id"],
                              artifacts.artifact_key("build", character, "model-run"),
                              description=f"MLflow run that logged {model_ref['name']} version {model_ref['version']}")
    artifacts.markdown_summary(
        f"Build {character}",
        {"character": character, "output": exported["version_dir"], "USD root layer": exported["root_layer"],
         "model": f"{model_ref['name']} version {model_ref['version']} ({model_ref['reference']})",
         "MLflow run": f"[{model_ref['run_id']}]({model_url})" if model_url else (model_ref["run_id"] or "none"),
         "seed": seed, "sampler": f"{diffused['sampler']}, {diffused['steps']} steps, strength {diffused['strength']}",
         "expressions": len(diffused["labels"]) - 1, "USD warnings": len(validated["issues"]),
         "upscaler": f"{upscaled['upscaler'] if isinstance(upscaled['upscaler'], str) else upscaled['upscaler']['method']}"
                     f" x{upscaled['factor']}",
         **{f"{stage} (s)": seconds for stage, seconds in timer.seconds.items()}},
        key=artifacts.artifact_key("build", character, "summary"), description=f"build of {character}")
    artifacts.table(
        [{"expression": label, "prompt": prompt, **recovered["figures"][label]}
         for label, prompt in zip(diffused["labels"], diffused["prompts"])],
        key=artifacts.artifact_key("build", character, "expressions"),
        description=f"{character}: vertex displacement from the neutral per expression (mm)")
    return {"character": character, "version_dir": exported["version_dir"], "root_layer": exported["root_layer"],
            "version": exported["version"], "model": model_ref["fingerprint"], "contact_sheet": sheet_path,
            "seconds": timer.seconds}
