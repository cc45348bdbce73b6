"""The tag limit made by ``flows.infra`` really serialises tagged task runs (Prefect test harness).

Each test limits a tag of its own: the harness's API lives for the whole session, and re-creating a limit
on a tag that earlier tests raised, lowered and deleted let both runs through once in CI (Prefect 3.9 backs
tag limits with global concurrency limits).
"""

from __future__ import annotations

import time
import uuid

import pytest
from prefect import flow, task

from tasks.common import GPU_TAG

pytestmark = pytest.mark.slow


@task
def hold_gpu(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@flow
def two_gpu_steps_at_once(tag: str) -> list[tuple[float, float]]:
    step = hold_gpu.with_options(tags=[tag])
    futures = [step.submit(1.5), step.submit(1.5)]
    return [f.result() for f in futures]


@pytest.fixture
def gpu_tag(prefect_harness):
    """A fresh ``gpu-<hex>`` tag limited to 1, deleted afterwards."""
    from prefect.client.orchestration import get_client

    from flows.infra import set_gpu_concurrency_limit

    tag = f"{GPU_TAG}-{uuid.uuid4().hex[:8]}"
    assert set_gpu_concurrency_limit(1, tag=tag) == 1
    yield tag
    with get_client(sync_client=True) as client:
        client.delete_concurrency_limit_by_tag(tag)


def test_setup_creates_a_limit_of_one_and_updates_it(gpu_tag):
    from flows.infra import set_gpu_concurrency_limit

    assert set_gpu_concurrency_limit(2, tag=gpu_tag) == 2  # re-running setup with more GPUs raises it in place
    assert set_gpu_concurrency_limit(1, tag=gpu_tag) == 1


def test_two_gpu_tasks_never_overlap_under_a_limit_of_one(gpu_tag):
    (a_start, a_end), (b_start, b_end) = sorted(two_gpu_steps_at_once(gpu_tag))
    assert b_start >= a_end  # the second waited for the first's slot
