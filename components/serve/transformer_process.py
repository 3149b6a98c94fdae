"""The transformer as a child process (tests, benchmarks, the demo): started on a free port, ready on entry,
stopped on exit. A separate process, because kserve and tritonclient.grpc cannot share one."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubeclip.components.serve.triton_server import ServerError, free_port


class TransformerProcess:
    def __init__(self, predictor_url: str, log_file: str | Path, *flags: str, startup_timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "kubeclip.components.serve.transformer", "--host", "127.0.0.1",
                        "--predictor_host", predictor_url, "--http_port", str(self.port), *flags]
        self.log_file, self.startup_timeout = Path(log_file), startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> TransformerProcess:
        self.process = subprocess.Popen(self.command, stdout=self.log_file.open("w"),
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + self.startup_timeout
        while not self.ready():
            if self.process.poll() is not None or time.time() > deadline:
                self.__exit__()
                raise ServerError(f"the transformer did not become ready; its log ({self.log_file}):\n"
                                  f"{self.log_file.read_text()[-3000:]}")
            time.sleep(0.3)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/models/clip", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
