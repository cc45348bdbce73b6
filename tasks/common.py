"""What every ExpDiff task shares: settings, result storage, content-hash cache keys, retry policy, tags.

Results: tasks return small JSON values (paths, hashes, figures), serialised as JSON and persisted under
``<state_dir>/prefect-results`` (``results_path``). A flow binds its tasks to that folder at run time with
``bind_result_storage`` (Prefect fixes a task's storage when the task object is made, and the state folder is
a run-time setting). The folder is a plain path, which Prefect 3 turns into a ``LocalFileSystem`` without
a server-side block, so it works the same on the ephemeral API, the test harness and a real server.

Cache hits across runs: a pure step's cache key is a hash of its input files' contents (``content_cache_key``)
plus its other parameters (model version, config) and the ExpDiff version; the result record is stored under
that key in the results folder, so a rerun with the same inputs finds it and the task run ends ``Cached``
without running. Side-effecting steps (synthesise, export, register) are never served from the cache
(``NOT_CACHED``): Prefect 3.9 persists a result only under a transaction key and ``NO_CACHE`` gives none, so
they store their result under their own task run id instead - persisted, never a hit for another run.

Caches that heal: cached stages write their files to ``cached_stage_dir`` (named by their inputs, kept after
the run's work folder is removed); when a record's result names a file that is gone, ``drop_stale_record``
removes the record as the key is computed, so the lookup is a miss and the stage runs again; a missing input
file gives a key of its own instead of an exception. Retries: only OS errors that can heal are retried
(``retry_on_transient_io``). ``begin_build_run`` / ``end_build_run`` record a build as running, sweep what
dead builds left and remove the run's work folder at the end (``expdiff_core.housekeeping``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from expdiff_core import __version__
from expdiff_core.config import Settings, load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.fileio import hash_files, is_unhealable
from expdiff_core.orchestration_helpers.artifact_server import ARTIFACTS_FOLDER

__all__ = [
    "ARTIFACTS_FOLDER", "GPU_TAG", "IO_RETRIES", "IO_RETRY_DELAYS", "IO_RETRY_JITTER", "NOT_CACHED",
    "RESULTS_FOLDER", "RESULT_SERIALIZER", "artifacts_path", "bind_result_storage", "cached_stage_dir",
    "content_cache_key", "drop_stale_record", "referenced_paths",
    "StageTimer", "folder_files", "input_files", "results_path", "retry_on_transient_io", "run_settings",
]

RESULTS_FOLDER = "prefect-results"
RESULT_SERIALIZER = "json"

# Task options of side-effecting steps (see the module docstring).
NOT_CACHED: dict[str, Any] = {"cache_policy": None, "result_storage_key": "{task_run.id}"}

# Tasks that run on the GPU carry this tag. A tag concurrency limit (``expdiff infra setup --gpu-limit N`` or
# ``prefect concurrency-limit create gpu N``) caps gpu task runs server-wide at N = the GPUs serving the pool;
# one worker per GPU with ``--limit 1`` keeps each GPU to one flow run (docs/orchestration.md).
GPU_TAG = "gpu"

# I/O steps retry transient failures (network file systems, object stores, the MLflow server) 3 times,
# waiting 2 s, 4 s, 8 s (+- 50 % jitter so parallel runs do not retry in lockstep).
IO_RETRIES = 3
IO_RETRY_DELAYS = exponential_backoff(backoff_factor=2)
IO_RETRY_JITTER = 0.5

T = TypeVar("T", bound=Task)


def run_settings(config_file: str | None = None) -> Settings:
    """Settings for a run: defaults < ``config_file`` (or $EXPDIFF_CONFIG) < EXPDIFF_* env of the worker."""
    return load_settings(config_file)


def results_path(settings: Settings) -> Path:
    """Where task results (and so cache records) are persisted: ``<state_dir>/prefect-results``."""
    return settings.state_path / RESULTS_FOLDER


def artifacts_path(settings: Settings) -> Path:
    """Where run images (contact sheets) are written for the artifact server: ``<state_dir>/artifacts``."""
    return settings.state_path / ARTIFACTS_FOLDER


def bind_result_storage(settings: Settings, *tasks: T) -> tuple[T, ...]:
    """``tasks`` with results persisted under ``results_path(settings)`` (one copy of each task)."""
    storage = results_path(settings)
    storage.mkdir(parents=True, exist_ok=True)
    return tuple(t.with_options(result_storage=storage) for t in tasks)


def folder_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder``, sorted by relative path (what a folder's content hash covers)."""
    root = Path(folder)
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


UDIM_TOKEN = "<UDIM>"


def input_files(value: Any) -> list[Path]:
    """The files a path-like parameter value stands for, sorted: a file; every file under a folder; the tiles
    of a ``<UDIM>`` pattern; or all of these for each item of a list or each value of a mapping."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [p for k in sorted(value) for p in input_files(value[k])]
    if not isinstance(value, (str, os.PathLike)):
        return [p for v in value for p in input_files(v)]
    text = os.fspath(value)
    if UDIM_TOKEN in text:
        pattern = Path(text)
        prefix, suffix = pattern.name.split(UDIM_TOKEN, 1)
        return sorted(p for p in pattern.parent.glob(f"{prefix}[0-9][0-9][0-9][0-9]{suffix}") if p.is_file())
    path = Path(text)
    return folder_files(path) if path.is_dir() else [path]


def _parameter(parameters: Mapping[str, Any], name: str) -> Any:
    """``parameters[name]``; ``"a.b"`` reads key ``b`` of the mapping parameter ``a``."""
    head, _, rest = name.partition(".")
    value = parameters.get(head)
    for key in rest.split(".") if rest else ():
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def content_cache_key(step: str, files: Sequence[str] = (), values: Sequence[str] | None = None
                      ) -> Callable[[TaskRunContext, Mapping[str, Any]], str]:
    """A Prefect ``cache_key_fn`` for a pure step: ``"<step>-<sha256>"`` of what determines its result.

    files: parameters holding input paths (``"a.b"``: key ``b`` of mapping parameter ``a``): a file, a folder
    (every file under it), a ``<UDIM>`` pattern, or lists / mappings of these; each file's path and sha256
    go into the key. values: parameters taken by value (model version, seed, config...); default every
    parameter not named in ``files``. The ExpDiff version is always included, so a new release recomputes.
    A changed byte in any input file, or a changed value, gives a new key (a cache miss).
    """
    file_params = set(files)

    def key(context: TaskRunContext, parameters: Mapping[str, Any]) -> str:
        names = values if values is not None else sorted(k for k in parameters if k not in file_params)
        record: dict[str, Any] = {
            "step": step, "expdiff": __version__, "values": {k: _parameter(parameters, k) for k in names},
            "files": {k: _hash_or_missing(input_files(_parameter(parameters, k))) for k in files},
        }
        blob = json.dumps(record, sort_keys=True, default=str).encode("utf-8")
        cache_key = f"{step}-{hashlib.sha256(blob).hexdigest()}"
        drop_stale_record(getattr(context, "result_store", None), cache_key)
        return cache_key

    return key


def _hash_or_missing(paths: Sequence[Path]) -> dict[str, str]:
    """{path: sha256}; a file that is gone hashes as ``"missing"`` (a key no real run has), so the task runs
    and reports the missing file itself instead of the cache lookup crashing."""
    out = {}
    for p in paths:
        try:
            out.update(hash_files([p.resolve()]))
        except ExpDiffInputError:
            out[str(p)] = "missing"
    return out


def referenced_paths(value: Any) -> list[str]:
    """Absolute file paths named by a task result (strings in its values, nested; not mapping keys)."""
    if isinstance(value, str):
        return [value] if os.path.isabs(value) and "<UDIM>" not in value else []
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in referenced_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in referenced_paths(v)]
    return []


def drop_stale_record(store: Any, key: str) -> bool:
    """Remove the cache record ``key`` when a file its result names is gone (a cleaned work folder, a deleted
    cache), so the lookup is a miss and the task runs again instead of handing on dead paths. True when
    removed. Only records in local result storage are inspected; unreadable records are left to Prefect."""
    storage = getattr(store, "result_storage", None)
    basepath = getattr(storage, "basepath", None)
    if store is None or basepath is None or getattr(store, "metadata_storage", None) is not None:
        return False
    record_file = Path(str(basepath)).expanduser() / key
    if not record_file.is_file():
        return False
    try:
        result = store.read(key).result
    except Exception:  # noqa: BLE001 - a record Prefect cannot read is Prefect's to handle
        return False
    missing = [p for p in referenced_paths(result) if not os.path.exists(p)]
    if not missing:
        return False
    record_file.unlink(missing_ok=True)
    return True


def cached_stage_dir(settings: Settings, step: str, *values: Any) -> str:
    """Output folder of a cached stage, named by what determines its output: ``<cache>/stages/<step>-<hash>``.

    Cached stages (encode, diffuse) write here instead of the per-run work folder, so their cache records stay
    valid after the run's work folder is removed; equal inputs share a folder (files are written atomically).
    """
    blob = json.dumps([step, __version__, *values], sort_keys=True, default=str).encode("utf-8")
    return str(settings.cache_path / "stages" / f"{step}-{hashlib.sha256(blob).hexdigest()[:24]}")


def retry_on_transient_io(task: Task, task_run: Any, state: State) -> bool:
    """Retry condition for I/O steps: retry OS-level errors that can heal (network file systems, connections,
    timeouts).

    Errors that cannot heal fail at once: ExpDiff's own errors (a missing or malformed input, a refused
    overwrite, ``ExpDiffEnvironmentError``) and OS errors of the machine itself (no space left, read-only file
    system, permission denied, a path component that is not a folder: ``fileio.UNHEALABLE_ERRNOS``).
    """
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, OSError) and not is_unhealable(exc)


class StageTimer:
    """Wall-clock seconds per named stage of a flow, for its summary (``with timer.stage("ingest"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


# ------------------------------------------------------------------ run housekeeping of build flows
def begin_build_run(settings: Settings, character: str, run_id: str) -> str:
    """Record the build as running, sweep what dead builds left (``housekeeping.sweep_stale``) and return the
    run's work folder ``<state>/cache/builds/<character>/<run_id>`` (character already checked)."""
    from expdiff_core.housekeeping import register_build, sweep_stale, work_folder

    work = work_folder(settings.state_path, character, run_id)
    register_build(settings.state_path, run_id, work)
    swept = sweep_stale(settings.output_path, settings.state_path)
    mark_crashed(swept["dead_runs"])
    return str(work)


def mark_crashed(run_ids: Sequence[str]) -> list[str]:
    """Set flow runs whose build process died (SIGKILL, power loss) to Crashed, so they do not stay RUNNING
    forever on the API; returns the ids updated. Runs the API does not know (another server) are skipped."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    done = []
    if not run_ids:
        return done
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            try:
                run = client.read_flow_run(run_id)
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run_id, Crashed(message="the build process died; its leftovers "
                                                                      "were removed by a later build"), force=True)
                    done.append(run_id)
            except Exception:  # noqa: BLE001 - not a run of this API, or not a run id
                continue
    return done


def end_build_run(flow: Any, flow_run: Any, state: State) -> None:
    """Flow hook (completed, failed, crashed, cancelled): drop the running record and remove the run's work
    folder unless the ``keep_work`` parameter is true. Cached stages' outputs live elsewhere and stay."""
    from expdiff_core.housekeeping import release_build, remove_work_folder, running_builds

    parameters = dict(getattr(flow_run, "parameters", None) or {})
    settings = run_settings(parameters.get("config_file"))
    run_id = str(flow_run.id)
    record = next((b for b in running_builds(settings.state_path) if b.run_id == run_id), None)
    release_build(settings.state_path, run_id)
    if record is not None and record.work_dir and not parameters.get("keep_work"):
        remove_work_folder(record.work_dir)
