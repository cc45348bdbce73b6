"""infra/ and prefect.yaml parse and pass Prefect's own validation (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


# ------------------------------------------------------------------ work pool base job templates
def _worker(pool_type):
    if pool_type == "process":
        from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

        return ProcessWorker, ProcessJobConfiguration
    kubernetes = pytest.importorskip("prefect_kubernetes.worker")
    return kubernetes.KubernetesWorker, kubernetes.KubernetesWorkerJobConfiguration


def _render(template: dict, job_configuration_cls):
    """The job configuration a worker builds from the template's defaults (what ``from_template_and_values``
    does before it resolves block and variable references, of which our templates have none)."""
    from prefect.utilities.templating import apply_values

    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    config = dict(template["job_configuration"])
    if isinstance(defaults.get("env"), dict):
        config["env"] = defaults["env"]
    return job_configuration_cls(**apply_values(config, defaults))


@pytest.mark.parametrize("pool_type", ["process", "kubernetes"])
def test_work_pool_template_passes_prefects_validation(pool_type):
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.schema_tools.validation import is_valid_schema, validate

    from flows.infra import load_base_job_template

    template = load_base_job_template(pool_type)
    WorkPoolCreate(name="gpu", type=pool_type, base_job_template=template)  # every {{ variable }} is declared
    is_valid_schema(template["variables"], preprocess=False)
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    validate(defaults, template["variables"], raise_on_error=True, ignore_required=True)


@pytest.mark.parametrize("pool_type", ["process", "kubernetes"])
def test_work_pool_template_keeps_every_variable_of_the_workers_default(pool_type):
    from flows.infra import load_base_job_template

    worker, _ = _worker(pool_type)
    ours = set(load_base_job_template(pool_type)["variables"]["properties"])
    assert set(worker.get_default_base_job_template()["variables"]["properties"]) <= ours


def test_process_pool_renders_to_a_job_with_offline_gpu_env():
    from flows.infra import load_base_job_template

    _, config_cls = _worker("process")
    config = _render(load_base_job_template("process"), config_cls)
    assert config.env["EXPDIFF_DEVICE"] == "cuda" and config.env["HF_HUB_OFFLINE"] == "1"


def test_kubernetes_pool_renders_to_a_job_requesting_one_nvidia_gpu():
    from flows.infra import load_base_job_template

    _, config_cls = _worker("kubernetes")
    config = _render(load_base_job_template("kubernetes"), config_cls)
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "expdiff-worker:latest"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]} == {"expdiff-builds", "expdiff-state"}
    assert config.env["EXPDIFF_STATE_DIR"] == "/state" and config.env["EXPDIFF_OUTPUT_ROOT"] == "/builds"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_an_unknown_pool_type_is_refused():
    from expdiff_core.errors import ExpDiffInputError
    from flows.infra import load_base_job_template

    with pytest.raises(ExpDiffInputError, match="unknown pool type 'docker'"):
        load_base_job_template("docker")


# ------------------------------------------------------------------ compose and kubernetes manifests
def test_compose_file_wires_server_database_mlflow_storage_and_a_gpu_worker():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "mlflow", "artifacts", "setup", "gpu-worker"} <= set(services)
    for name, service in services.items():
        needs = service.get("depends_on", [])
        assert set(needs) <= set(services), f"{name} depends on an unknown service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/", "$")) or source in compose["volumes"], f"{name}: volume {source}"
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in mlflow and "--artifacts-destination s3://" in mlflow
    worker = services["gpu-worker"]
    assert worker["command"].split()[-6:] == ["--pool", "gpu", "--type", "process", "--limit", "1"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["device_ids"] == ["0"] and "gpu" in device["capabilities"]
    assert "expdiff infra setup" in services["setup"]["command"] and "deploy --all" in services["setup"]["command"]
    assert "serve-artifacts" in services["artifacts"]["command"]


def test_kubernetes_manifests_run_a_worker_allowed_to_create_jobs_with_shared_volumes():
    docs = [d for d in yaml.safe_load_all((INFRA / "k8s" / "gpu-worker.yaml").read_text()) if d]
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert all(d["metadata"].get("namespace", "expdiff") == "expdiff" for d in docs)
    worker = named[("Deployment", "expdiff-gpu-worker")]["spec"]["template"]["spec"]
    assert worker["containers"][0]["command"][-4:] == ["--pool", "gpu", "--type", "kubernetes"]
    role = named[("Role", "expdiff-worker")]
    job_rules = [r for r in role["rules"] if "jobs" in r["resources"]]
    assert job_rules and "create" in job_rules[0]["verbs"]
    assert named[("RoleBinding", "expdiff-worker")]["roleRef"]["name"] == "expdiff-worker"
    assert worker["serviceAccountName"] == "expdiff-worker"
    # The flow-run Jobs mount the claims named by the pool template's defaults.
    from flows.infra import load_base_job_template

    props = load_base_job_template("kubernetes")["variables"]["properties"]
    for claim in (props["builds_claim"]["default"], props["state_claim"]["default"]):
        assert ("PersistentVolumeClaim", claim) in named
    assert props["namespace"]["default"] == "expdiff"  # where the worker's Role allows creating Jobs


def test_worker_image_installs_the_package_and_serves_the_gpu_pool():
    dockerfile = (INFRA / "Dockerfile.worker").read_text()
    for folder in ("expdiff_core", "flows", "tasks", "usd_schemas"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert 'CMD ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"]' in dockerfile
    assert "EXPDIFF_SRC=/opt/expdiff/src" in dockerfile  # prefect.yaml's pull step cds there


# ------------------------------------------------------------------ prefect.yaml
@pytest.fixture(scope="module")
def prefect_yaml():
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return raw, PrefectYamlModel.model_validate(raw)


def test_prefect_yaml_deployments_use_only_keys_prefect_knows(prefect_yaml):
    from prefect.cli.deploy._models import DeploymentConfig

    raw, _ = prefect_yaml
    known = set(DeploymentConfig.model_fields)
    for deployment in raw["deployments"]:
        assert set(deployment) <= known, f"{deployment['name']}: unknown keys {set(deployment) - known}"


@pytest.mark.slow  # imports every flow's stack (torch, diffusers, usd): 10-40 s on 2 shared cores
def test_prefect_yaml_entrypoints_load_and_accept_their_parameters(prefect_yaml):
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    _, model = prefect_yaml
    for deployment in model.deployments:
        flow = load_flow_from_entrypoint(str(REPO / deployment.entrypoint))
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        validate(deployment.parameters, schema, raise_on_error=True, ignore_required=True)
        assert set(deployment.parameters) <= set(schema["properties"]), deployment.name
        assert deployment.work_pool.name == "gpu"


def test_nightly_runs_at_2am_studio_time_and_never_overlaps(prefect_yaml):
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    _, model = prefect_yaml
    nightly = next(d for d in model.deployments if d.name == "nightly")
    (schedule,) = nightly.schedules
    CronSchedule(cron=schedule.cron, timezone=schedule.timezone)  # valid cron and IANA timezone
    assert schedule.timezone == "Europe/London" and schedule.cron == "0 2 * * *"
    assert nightly.concurrency_limit.limit == 1
    assert ConcurrencyLimitStrategy(nightly.concurrency_limit.collision_strategy) == ConcurrencyLimitStrategy.ENQUEUE


def test_prefect_yaml_pull_step_sets_the_working_directory_from_expdiff_src(prefect_yaml):
    import importlib

    _, model = prefect_yaml
    (step,) = model.pull
    (name, args), = step.items()
    module, _, function = name.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))
    assert args == {"directory": "{{ $EXPDIFF_SRC }}"}
