"""``nightly-build`` flow: a manifest of characters -> one ``build-character`` subflow per entry.

A failed character does not stop the others; the summary artifact (``nightly-summary``) and table
(``nightly-characters``) list every character with its outcome, and the run ends Failed when any
character failed (never a silently Completed night). Manifest format: ``expdiff_core.orchestration_helpers
.build_manifest``.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Failed

from flows.build_character import build_character
from tasks import artifacts
from tasks.build import read_manifest
from tasks.common import bind_result_storage, run_settings


@flow(name="nightly-build", description="Build every character of the studio manifest; failures are isolated "
      "per character and summarised.")
def nightly_build(manifest: str, config_file: str | None = None):
    """manifest: TOML list of characters (mesh, textures, expressions, model). config_file: settings TOML."""
    settings = run_settings(config_file)
    (read,) = bind_result_storage(settings, read_manifest)
    characters = read(manifest)
    rows = []
    for entry in characters:
        state = build_character(character=entry["name"], mesh=entry["mesh"], textures=entry["textures"],
                                expressions=entry["expressions"], model=entry["model"], seed=entry["seed"],
                                steps=entry["steps"], config_file=config_file, return_state=True)
        if state.is_completed():
            built = state.result()
            rows.append({"character": entry["name"], "outcome": "built", "version": built["version_dir"],
                         "detail": f"{len(entry['expressions'])} expressions, model {built['model']}"})
        else:
            rows.append({"character": entry["name"], "outcome": state.name.lower(), "version": "",
                         "detail": state.message or ""})
    failed = [r["character"] for r in rows if r["outcome"] != "built"]
    artifacts.markdown_summary(
        "Nightly build", {"manifest": manifest, "characters": len(rows), "built": len(rows) - len(failed),
                          "failed": ", ".join(failed) or "none"},
        key="nightly-summary", description="nightly character builds",
        notes=[f"**{r['character']}** {r['outcome']}: {r['detail']}" for r in rows if r["outcome"] != "built"])
    artifacts.table(rows, key="nightly-characters", description="nightly character builds: one row per character")
    if failed:
        return Failed(message=f"{len(failed)} of {len(rows)} character build(s) failed: {', '.join(failed)}")
    return {"built": [r["character"] for r in rows], "versions": [r["version"] for r in rows]}
