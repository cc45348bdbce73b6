"""Server-side setup the deployments rely on: the ``gpu`` work pool and the ``gpu`` tag concurrency limit.

``setup_infrastructure`` is what ``expdiff infra setup`` runs against $PREFECT_API_URL; it is idempotent
(an existing pool gets the template again, an existing limit gets the new value). The same by hand::

    prefect work-pool create gpu --type process --base-job-template infra/work-pools/gpu-process.json --overwrite
    prefect concurrency-limit create gpu 1
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

from expdiff_core.errors import ExpDiffInputError
from tasks.common import GPU_TAG

POOL_NAME = "gpu"
TEMPLATE_FILES = {"process": "gpu-process.json", "kubernetes": "gpu-kubernetes.json"}
REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "infra" / "work-pools"


def load_base_job_template(pool_type: str = "process", templates_dir: str | os.PathLike | None = None
                           ) -> dict[str, Any]:
    """The ``gpu`` pool's base job template for ``pool_type`` (process | kubernetes) from infra/work-pools."""
    if pool_type not in TEMPLATE_FILES:
        raise ExpDiffInputError(None, f"unknown pool type {pool_type!r}; use one of {sorted(TEMPLATE_FILES)}")
    path = Path(templates_dir or TEMPLATES_DIR) / TEMPLATE_FILES[pool_type]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExpDiffInputError(path, "work pool template not found") from None
    except json.JSONDecodeError as exc:
        raise ExpDiffInputError(path, f"invalid JSON: {exc}") from None


def create_gpu_pool(pool_type: str = "process", name: str = POOL_NAME,
                    templates_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Create (or update the template of) work pool ``name``; returns {"name", "type", "variables"}."""
    template = load_base_job_template(pool_type, templates_dir)
    description = template["variables"].get("description")
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(
            WorkPoolCreate(name=name, type=pool_type, base_job_template=template, description=description),
            overwrite=True)
    return {"name": pool.name, "type": pool.type,
            "variables": sorted(pool.base_job_template.get("variables", {}).get("properties", {}))}


def set_gpu_concurrency_limit(limit: int = 1, tag: str = GPU_TAG) -> int:
    """Tag concurrency limit: at most ``limit`` task runs tagged ``tag`` at once, server-wide. Returns it."""
    if limit < 0:
        raise ExpDiffInputError(None, f"gpu concurrency limit must be >= 0, got {limit}")
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)  # an upsert on Prefect 3.9
        return int(client.read_concurrency_limit_by_tag(tag).concurrency_limit)


def setup_infrastructure(pool_type: str = "process", gpu_limit: int = 1,
                         templates_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``gpu`` pool from its template and the ``gpu`` tag limit; returns what was set."""
    pool = create_gpu_pool(pool_type, templates_dir=templates_dir)
    return {"pool": pool, "gpu_concurrency_limit": set_gpu_concurrency_limit(gpu_limit)}
