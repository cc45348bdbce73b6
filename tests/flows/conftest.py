"""Fixtures of the orchestration tests: one Prefect test harness per session, run-inspection helpers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary local Prefect API (SQLite) for the whole session; ~30-60 s to start on 2 cores."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield


def flow_run_id(state) -> str:
    """The flow run id of a flow's final state (``flow(..., return_state=True)``)."""
    return str(state.state_details.flow_run_id)


def task_states(run_id: str) -> dict[str, str]:
    """{task name: state name} of a flow run's task runs (task names are unique within our flows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def run_artifacts(run_id: str) -> dict[str, object]:
    """{artifact key: artifact} created by a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in found}


# ------------------------------------------------------------------ a tiny model and a neutral asset
def tiny_model_folder(root):
    """A tiny, untrained ExpDiff pipeline folder on our template (as tests/pipelines builds it): every build
    stage runs in seconds; its expressions are noise, which is all orchestration tests need."""
    from expdiff_core.models.denoiser import ExpDiffDenoiser, denoiser_config
    from expdiff_core.models.vae import LatentCodec, offline_vae_config
    from expdiff_core.pipelines.expdiff import ExpDiffPipeline, PipelineConfig
    from expdiff_core.schedulers import training_noise_scheduler
    from expdiff_core.synth.template import template_mesh

    kinds = ["position", "albedo", "specular", "roughness", "normal"]
    resolution = 32  # 4x4 latents: the smallest size the 8x VAE and a patch-2 denoiser accept
    config = PipelineConfig(kinds=kinds, udims=[1001, 1002], resolution=resolution,
                            skin_groups=["M_Face", "M_BackHead"], steps=3)
    codec = LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8),
                                    seed=0, device="cpu")
    vae_dir = codec.save_pretrained(root / "parts" / "vae")
    denoiser = ExpDiffDenoiser(**denoiser_config(kinds, 2, 4, resolution // 8, width=32, depth=1, heads=2))
    den_dir = root / "parts" / "denoiser"
    denoiser.save_pretrained(den_dir)
    training_noise_scheduler().save_pretrained(den_dir)
    return ExpDiffPipeline.assemble(root / "model", config, vae_dir, den_dir, template_mesh(), "# tiny test model\n")


def write_neutral_asset(root, resolution: int = 64):
    """Our template head (OBJ) and smooth BRDF tiles 1001-1002 under ``root`` (``helpers.assets``); 64 texels:
    a power of two, as pre-flight requires. Returns (mesh path, {kind: "<root>/tex/<kind>.<UDIM>.exr"})."""
    from ..helpers.assets import write_neutral_asset as write

    return write(root, resolution)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-expdiff"))
