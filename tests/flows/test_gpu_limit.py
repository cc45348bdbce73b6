"""The ``gpu`` tag limit made by ``flows.infra`` really serialises gpu-tagged task runs (Prefect test harness)."""

from __future__ import annotations

import time

import pytest
from prefect import flow, task

from tasks.common import GPU_TAG

pytestmark = pytest.mark.slow


@task(tags=[GPU_TAG])
def hold_gpu(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@flow
def two_gpu_steps_at_once() -> list[tuple[float, float]]:
    futures = [hold_gpu.submit(1.5), hold_gpu.submit(1.5)]
    return [f.result() for f in futures]


@pytest.fixture
def gpu_limit(prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.infra import set_gpu_concurrency_limit

    yield set_gpu_concurrency_limit(1)
    with get_client(sync_client=True) as client:
        client.delete_concurrency_limit_by_tag(GPU_TAG)


def test_setup_creates_a_limit_of_one_and_updates_it(gpu_limit):
    from flows.infra import set_gpu_concurrency_limit

    assert gpu_limit == 1
    assert set_gpu_concurrency_limit(2) == 2  # re-running setup with more GPUs raises the limit in place
    assert set_gpu_concurrency_limit(1) == 1


def test_two_gpu_tasks_never_overlap_under_a_limit_of_one(gpu_limit):
    (a_start, a_end), (b_start, b_end) = sorted(two_gpu_steps_at_once())
    assert b_start >= a_end  # the second waited for the first's slot
