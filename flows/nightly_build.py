"""``nightly-build`` flow: a manifest of characters -> one ``build-character`` flow run per character, all at once.

Fan-out: the characters are *mapped* over the ``build-one-character`` task, so every character's build is
submitted at once and the flow waits for all of them before it writes the summary.

- ``build_deployment="build-character/on-demand"`` (what the deployed nightly passes, see prefect.yaml): each
  task creates a run of that deployment (``run_deployment``, linked as a subflow of the task run) and waits
  for it. The runs go to the deployment's work pool, where every free worker picks one up: N GPU workers
  build N characters at a time. The ``gpu`` tag limit still caps the GPU stages (encode, diffuse, decode)
  server-wide.
- ``build_deployment=None`` (a plain Python call with no workers): each task runs ``build-character`` as a
  subflow in this process, the mapped tasks on Prefect's thread pool (GPU stages still capped by the tag
  limit).

A failed character does not stop the others: each task returns its character's row (built, or the failed
run's state and message) instead of raising. The summary artifact (``nightly-summary``) and table
(``nightly-characters``) list every character with its outcome, and the run ends Failed when any character
failed (never a silently Completed night). Manifest format: ``expdiff_core.orchestration_helpers
.build_manifest``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.deployments import run_deployment
from prefect.states import Failed

from flows.build_character import build_character
from tasks import artifacts
from tasks.build import read_manifest
from tasks.common import NOT_CACHED, RESULT_SERIALIZER, bind_result_storage, run_settings

BUILD_DEPLOYMENT = "build-character/on-demand"
POLL_SECONDS = 2.0


def _build_parameters(entry: dict[str, Any], config_file: str | None) -> dict[str, Any]:
    return {"character": entry["name"], "mesh": entry["mesh"], "textures": entry["textures"],
            "expressions": entry["expressions"], "model": entry["model"], "seed": entry["seed"],
            "steps": entry["steps"], "config_file": config_file}


def _row(entry: dict[str, Any], state, flow_run_id: str | None) -> dict[str, Any]:
    """One summary row from a finished ``build-character`` run's final state."""
    row = {"character": entry["name"], "flow_run": flow_run_id or ""}
    if state is not None and state.is_completed():
        try:
            built = state.result()
        except Exception as exc:  # the run built; only its returned summary is not readable here
            return {**row, "outcome": "built", "version": "",
                    "detail": f"{len(entry['expressions'])} expressions; run result not readable here: {exc}"}
        return {**row, "outcome": "built", "version": built["version_dir"],
                "detail": f"{len(entry['expressions'])} expressions, model {built['model']}"}
    name = state.name.lower() if state is not None else "not started"
    return {**row, "outcome": name, "version": "", "detail": (state.message if state is not None else "") or ""}


@task(name="build-one-character", **NOT_CACHED, result_serializer=RESULT_SERIALIZER,
      task_run_name="build-{entry[name]}")
def build_one_character(entry: dict[str, Any], config_file: str | None = None,
                        build_deployment: str | None = None) -> dict[str, Any]:
    """Build one manifest entry as its own ``build-character`` flow run; returns its summary row (never raises
    for a failed build: the night isolates it)."""
    parameters = _build_parameters(entry, config_file)
    if build_deployment:
        run = run_deployment(build_deployment, parameters=parameters, timeout=None, poll_interval=POLL_SECONDS,
                             flow_run_name=f"build-{entry['name']}", tags=["nightly"])
        return _row(entry, run.state, str(run.id))
    state = build_character(**parameters, return_state=True)
    return _row(entry, state, str(state.state_details.flow_run_id))


@flow(name="nightly-build", description="Build every character of the studio manifest, one build-character run "
      "per character submitted at once; failures are isolated per character and summarised.")
def nightly_build(manifest: str, config_file: str | None = None, build_deployment: str | None = None):
    """manifest: TOML list of characters (mesh, textures, expressions, model). config_file: settings TOML.
    build_deployment: ``"build-character/on-demand"`` to fan the builds out to that deployment's work pool;
    None builds them as subflows of this run (concurrently, on this process's task threads)."""
    settings = run_settings(config_file)
    read, build_one = bind_result_storage(settings, read_manifest, build_one_character)
    characters = read(manifest)
    futures = build_one.map(characters, config_file=unmapped(config_file),
                            build_deployment=unmapped(build_deployment))
    rows = [f.result() for f in futures]
    failed = [r["character"] for r in rows if r["outcome"] != "built"]
    artifacts.markdown_summary(
        "Nightly build", {"manifest": manifest, "characters": len(rows), "built": len(rows) - len(failed),
                          "failed": ", ".join(failed) or "none",
                          "fan-out": f"deployment {build_deployment}" if build_deployment else "subflows in this run"},
        key="nightly-summary", description="nightly character builds",
        notes=[f"**{r['character']}** {r['outcome']}: {r['detail']}" for r in rows if r["outcome"] != "built"])
    artifacts.table(rows, key="nightly-characters", description="nightly character builds: one row per character")
    if failed:
        return Failed(message=f"{len(failed)} of {len(rows)} character build(s) failed: {', '.join(failed)}")
    return {"built": [r["character"] for r in rows], "versions": [r["version"] for r in rows],
            "flow_runs": [r["flow_run"] for r in rows]}
