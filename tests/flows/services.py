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
