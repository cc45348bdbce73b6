"""Long-running child processes for end-to-end tests (Prefect server, workers), always torn down.

Each ``Service`` runs in its own process group (``start_new_session``) with output to a log file, so
``stop()`` ends it and everything it started (a worker's flow-run processes, the server's uvicorn) and the
log is there to show when something fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")


class Service:
    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path,
                 cwd: str | os.PathLike | None = None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} ({self.log_path}) ---\n{self.log()[-chars:]}"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout`` seconds."""
        try:
            if self.alive():
                self._signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._signal(signal.SIGKILL)  # children that outlived their parent, if any
            self.process.wait(timeout)
        finally:
            self._log.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 1.0,
               explain: Callable[[], str] = lambda: "",
               not_ready: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """Call ``check`` until it returns something truthy (returned); TimeoutError naming ``what`` otherwise.

    not_ready: exceptions that mean "not yet" (a connection refused while a server starts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except not_ready:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{explain()}")
        time.sleep(interval)


# ------------------------------------------------------------------ a local Prefect server with a gpu pool
def _wait_http(check: Callable[[], T], timeout: float, what: str, explain: Callable[[], str] = lambda: "") -> T:
    import httpx

    return wait_until(check, timeout, what, interval=2, explain=explain, not_ready=(OSError, httpx.TransportError))


class PrefectStack:
    """A Prefect server on a free loopback port (SQLite, its own PREFECT_HOME under ``root``), the ``gpu`` pool
    made from ``infra/work-pools/gpu-process.json`` with the flow runs' EXPDIFF_DEVICE set to ``device``, the
    ``gpu`` tag limit, and the deployments named in ``deployments`` (from prefect.yaml). ``env`` is what every
    CLI call, worker and flow-run process gets. Use as a context manager: everything started is stopped."""

    def __init__(self, root: Path, repo: Path, *, deployments: Sequence[str], gpu_limit: int = 1,
                 device: str = "cpu", extra_env: Mapping[str, str] | None = None):
        import json
        import sys

        from .chromium import free_port

        self.root, self.repo, self.services = Path(root), Path(repo), []
        self.bin = Path(sys.executable).parent
        port = free_port()
        self.api, self.ui = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EXPDIFF_"))}
        env.update({
            "PREFECT_HOME": str(self.root / "prefect-home"), "PREFECT_API_URL": self.api,
            "PREFECT_UI_API_URL": self.api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "EXPDIFF_SRC": str(self.repo), "EXPDIFF_STATE_DIR": str(self.root / "state"),
            "EXPDIFF_OUTPUT_ROOT": str(self.root / "builds"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(self.repo),
            **(extra_env or {}),
        })
        self.env = env
        try:
            server = self.start("prefect-server", [self.bin / "prefect", "server", "start", "--host", "127.0.0.1",
                                                   "--port", str(port)])
            _wait_http(lambda: server.alive() and _get(f"{self.api}/health").status_code == 200, 300,
                       "prefect server health", explain=server.log_tail)
            templates = self.root / "work-pools"
            templates.mkdir(parents=True, exist_ok=True)
            template = json.loads((self.repo / "infra" / "work-pools" / "gpu-process.json").read_text())
            template["variables"]["properties"]["env"]["default"]["EXPDIFF_DEVICE"] = device
            (templates / "gpu-process.json").write_text(json.dumps(template))
            self.cli([sys.executable, "-c", "from flows.infra import setup_infrastructure; "
                      f"setup_infrastructure('process', {int(gpu_limit)}, templates_dir={str(templates)!r})"], 300)
            for name in deployments:
                self.cli([self.bin / "prefect", "--no-prompt", "deploy", "--name", name], 600)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "PrefectStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Service:
        service = Service(name, [str(a) for a in argv], env or self.env, self.root, cwd=self.root)
        self.services.append(service)
        return service

    def cli(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
        done = subprocess.run([str(a) for a in argv], env=dict(env or self.env), cwd=self.repo, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done.stdout

    def logs(self) -> str:
        return "\n".join(s.log_tail() for s in self.services)

    def start_workers(self, names: Sequence[str], env: Mapping[str, str] | None = None,
                      queues: Sequence[str] = ()) -> list[Service]:
        """``prefect worker start --pool gpu --limit 1`` per name (serving ``queues``, default all); waits
        until all are online."""
        extra = [a for q in queues for a in ("--work-queue", q)]
        workers = [self.start(n, [self.bin / "prefect", "worker", "start", "--pool", "gpu", "--limit", "1",
                                  "--name", n, *extra], env) for n in names]

        def online() -> bool:
            import httpx

            found = httpx.post(f"{self.api}/work_pools/gpu/workers/filter", json={}, timeout=10).json()
            return {w["name"] for w in found if w["status"] == "ONLINE"} >= set(names)

        _wait_http(online, 300, f"workers {list(names)} online in pool 'gpu'", explain=self.logs)
        return workers

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services = []


def _get(url: str):
    import httpx

    return httpx.get(url, timeout=5)
