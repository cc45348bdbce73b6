"""ExpDiff's USD schemas on prims: author and read ``ExpDiffFacsAPI`` and ``ExpDiffProvenanceAPI``.

The schemas themselves are the codeless plugin in ``usd_schemas/`` (see its ``schema.usda``); this module only
applies them and reads them back. Names of schemas and attributes live here and nowhere else in the code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Iterable, Mapping

import numpy as np

from .. import __version__
from ..errors import ExpDiffInputError

FACS_API = "ExpDiffFacsAPI"
PROVENANCE_API = "ExpDiffProvenanceAPI"
SIDES = ("left", "right", "center")

_FACS = "expdiff:facs:"
_PROV = "expdiff:provenance:"


@dataclass(frozen=True)
class FacsInfo:
    """What one expression blendshape means (the ``ExpDiffFacsAPI`` record).

    expression: vocabulary name (``"jawOpen"``) or free prompt; action_units: FACS codes (``("AU26",)``);
    side: ``"left"``, ``"right"`` or ``"center"``; region: facial region; prompt: the text prompt.
    """

    expression: str
    action_units: tuple[str, ...] = ()
    side: str = "center"
    region: str = ""
    prompt: str = ""


@dataclass(frozen=True)
class Provenance:
    """How an asset was made (the ``ExpDiffProvenanceAPI`` record on the asset root).

    input_hashes maps an input's name (``"neutral_mesh"``, ``"albedo"``, ...) or file path to its sha256 hex
    digest; file paths are published as file names (``portable_input_names``).
    """

    model_name: str
    model_version: str
    seed: int
    scheduler: str
    steps: int
    mlflow_run_id: str = ""
    prefect_flow_run_id: str = ""
    input_hashes: Mapping[str, str] = field(default_factory=dict)
    package_version: str = __version__


def facs_info_for(name: str, lookup: Any = None) -> FacsInfo:
    """The FacsInfo of expression ``name`` from the FACS vocabulary (``expdiff_core.facs.unit``).

    ``lookup(name)`` may be given instead; it returns an object with ``action_units``, ``side``, ``region``
    and ``prompt`` and raises KeyError or ExpDiffInputError for a name outside the vocabulary. A name outside
    it is a free prompt: no action units, side ``center``, region ``free``, and the name itself as the prompt.
    """
    if lookup is None:
        from ..facs import unit as lookup
    try:
        entry = lookup(name)
    except (KeyError, ExpDiffInputError):
        return FacsInfo(expression=name, action_units=(), side="center", region="free", prompt=name)
    return FacsInfo(
        expression=name,
        action_units=tuple(_action_unit_code(au) for au in _as_tuple(entry.action_units)),
        side=normalize_side(str(entry.side)),
        region=str(entry.region),
        prompt=str(entry.prompt),
    )


def normalize_side(side: str) -> str:
    """Map a side spelling (``"L"``, ``"left"``, ``"R"``, ``"C"``, ``"both"``, ...) to left/right/center."""
    s = side.strip().lower()
    if s in ("l", "left"):
        return "left"
    if s in ("r", "right"):
        return "right"
    if s in ("c", "center", "centre", "both", "bilateral", "none", "mid", "middle", ""):
        return "center"
    raise ValueError(f"unknown face side {side!r}; expected left, right or center")


def apply_facs_api(prim, info: FacsInfo) -> None:
    """Apply ``ExpDiffFacsAPI`` to a BlendShape prim and author ``info``."""
    _apply(prim, FACS_API)
    prim.GetAttribute(_FACS + "expression").Set(info.expression)
    prim.GetAttribute(_FACS + "actionUnits").Set(list(info.action_units))
    prim.GetAttribute(_FACS + "side").Set(info.side)
    prim.GetAttribute(_FACS + "region").Set(info.region)
    prim.GetAttribute(_FACS + "prompt").Set(info.prompt)


def read_facs_api(prim) -> FacsInfo | None:
    """The FacsInfo authored on ``prim``, or None when ``ExpDiffFacsAPI`` is not applied."""
    if not prim.HasAPI(FACS_API):
        return None
    get = lambda name: prim.GetAttribute(_FACS + name).Get()  # noqa: E731
    return FacsInfo(expression=str(get("expression")), action_units=tuple(str(a) for a in get("actionUnits") or ()),
                    side=str(get("side")), region=str(get("region")), prompt=str(get("prompt")))


def apply_provenance_api(prim, provenance: Provenance) -> None:
    """Apply ``ExpDiffProvenanceAPI`` to the asset root prim and author ``provenance``."""
    _apply(prim, PROVENANCE_API)
    portable = portable_input_names(provenance.input_hashes)
    names = sorted(portable)
    values = {
        "modelName": provenance.model_name, "modelVersion": str(provenance.model_version),
        "mlflowRunId": provenance.mlflow_run_id or "", "prefectFlowRunId": provenance.prefect_flow_run_id or "",
        "seed": int(provenance.seed), "scheduler": provenance.scheduler, "steps": int(provenance.steps),
        "inputNames": names, "inputHashes": [provenance.input_hashes[portable[n]] for n in names],
        "packageVersion": provenance.package_version,
    }
    for name, value in values.items():
        prim.GetAttribute(_PROV + name).Set(value)


def portable_input_names(input_hashes: Mapping[str, str]) -> dict[str, str]:
    """{name to publish: key of ``input_hashes``}: a key that is a file path becomes its file name (or the
    shortest trailing part of its path that tells it from the other inputs), never an absolute path of the
    build machine; other keys (``"neutral_mesh"``) stay. The absolute paths stay in the Prefect / MLflow run."""
    parts = {key: PurePath(key.replace("\\", "/")).parts for key in input_hashes}
    out: dict[str, str] = {}
    for key, p in parts.items():
        if len(p) <= 1 and not PurePath(key).is_absolute():
            out[key] = key
            continue
        tail = [x for x in p if x not in ("/", "")]
        for n in range(1, len(tail) + 1):
            name = "/".join(tail[-n:])
            clash = any(k != key and "/".join([x for x in q if x not in ("/", "")][-n:]) == name
                        for k, q in parts.items())
            if not clash:
                break
        out[name] = key
    return out


def read_provenance_api(prim) -> Provenance | None:
    """The Provenance authored on ``prim``, or None when ``ExpDiffProvenanceAPI`` is not applied."""
    if not prim.HasAPI(PROVENANCE_API):
        return None
    get = lambda name: prim.GetAttribute(_PROV + name).Get()  # noqa: E731
    return Provenance(
        model_name=str(get("modelName")), model_version=str(get("modelVersion")), seed=int(get("seed")),
        scheduler=str(get("scheduler")), steps=int(get("steps")), mlflow_run_id=str(get("mlflowRunId")),
        prefect_flow_run_id=str(get("prefectFlowRunId")),
        input_hashes=dict(zip((str(n) for n in get("inputNames") or ()), (str(h) for h in get("inputHashes") or ()))),
        package_version=str(get("packageVersion")),
    )


def hash_arrays(arrays: Iterable[np.ndarray]) -> str:
    """sha256 hex digest over arrays' dtypes, shapes and bytes, in order: a stable hash of in-memory inputs."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _apply(prim, schema: str) -> None:
    ok, why = prim.CanApplyAPI(schema)
    if not ok:
        raise ValueError(f"{prim.GetPath()}: cannot apply {schema}: {why or 'schema not registered'}")
    prim.ApplyAPI(schema)


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        return (value,)
    return tuple(value)


def _action_unit_code(au) -> str:
    """12 -> "AU12"; "AU12" / "au12" -> "AU12"; other strings (e.g. "AU12+25") kept, upper-cased prefix."""
    if isinstance(au, (int, np.integer)):
        return f"AU{int(au)}"
    s = str(au).strip()
    if s.isdigit():
        return f"AU{int(s)}"
    if s[:2].lower() == "au":
        return "AU" + s[2:]
    return s
