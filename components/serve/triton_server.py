"""The real Triton server that the nvidia-pytriton wheel ships, run directly on a model repository.

The wheel's `tritonserver` has the Python backend only, which serves the cpu-flavor repository on a
machine without a GPU or Docker. Running it takes a backend folder holding the backend library, its
utilities and the stub built for this interpreter's Python; the stub needs this interpreter's
libpython and the wheel's bundled libraries on LD_LIBRARY_PATH, and finds this environment's
packages through the `python3` first on PATH. The server runs in its own session, so a server that
ignores SIGTERM is killed with the Python stubs it started. It restricts the same APIs as the cluster's
ServingRuntime (RESTRICTED_APIS), behind a random key of its own, so the tests run against what the cluster runs.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from kubeclip.components.options import option

_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_OTHER_BACKENDS = re.compile(r'^(platform|backend):\s*"(?!python"|ensemble")', re.MULTILINE)

# Triton's APIs that neither the transformer (inference, model readiness and metadata) nor the probes (health)
# call: they answer only requests that carry ADMIN_HEADER, here and in the ServingRuntime
# (manifests/base/serving/kubeclip-triton.yaml; a test checks that it names this list). model-config stays open:
# read-only, and the project's own Triton client reads each ensemble's batch size, output width and model id there
# (client.py: serve-check, `kubeclip embed --url`, the triton benchmark backend).
RESTRICTED_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
# The HTTP header that unlocks them; over gRPC Triton reads it as metadata key `triton-grpc-protocol-<header>`.
ADMIN_HEADER = "admin-key"


def restricted_api_args(key: str) -> list[str]:
    """Triton's flags that put RESTRICTED_APIS behind ADMIN_HEADER=key, over HTTP and over gRPC."""
    group = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={group}", f"--grpc-restricted-protocol={group}"]


class ServerError(RuntimeError):
    """Triton did not start, or stopped, with the tail of its log."""


def pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """A running tritonserver (use as a context manager): ready on entry, stopped with its stubs on exit.

    A port given as 0 is picked free; `log_file` takes the server's output (inherited when None).
    """

    def __init__(self, repository: str | Path, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 host: str = "127.0.0.1", log_file: str | Path | None = None, startup_timeout: float = 120,
                 exit_timeout: int = 10, log_verbose: int = 0):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"no model repository at {self.repository}")
        needs_more = sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt")
                            if _OTHER_BACKENDS.search(p.read_text()))
        if needs_more:
            raise ServerError(f"{', '.join(needs_more)} need a backend that the nvidia-pytriton server lacks (it has "
                              "the Python backend only): write the repository with `kubeclip triton-repo --flavor "
                              "cpu`, or serve it with the official Triton image")
        self.host, self.startup_timeout, self.exit_timeout = host, startup_timeout, exit_timeout
        self.log_verbose = log_verbose
        self.ports = {"http": http_port or free_port(host), "grpc": grpc_port or free_port(host),
                      "metrics": metrics_port or free_port(host)}
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._shm_prefix = f"kubeclip_{uuid.uuid4().hex[:12]}_"
        self.admin_key = secrets.token_hex(16)  # a server of its own, a key of its own

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """What a request to one of RESTRICTED_APIS must carry (as HTTP headers, or as gRPC metadata)."""
        return {("triton-grpc-protocol-" if protocol == "grpc" else "") + ADMIN_HEADER: self.admin_key}

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command(self, backends: Path) -> list[str]:
        return [str(pytriton_dir() / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={backends}", f"--backend-config=python,shm-region-prefix-name="
                f"{self._shm_prefix}", f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                "--metrics-config=summary_latencies=true",  # as on the cluster: the latency alerts read them
                "--allow-gpu-metrics=false", "--disable-auto-complete-config",
                f"--exit-timeout-secs={self.exit_timeout}", f"--log-verbose={self.log_verbose}",
                *restricted_api_args(self.admin_key)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="kubeclip-triton-"))
        try:
            with open(self.log_file or os.devnull, "ab") as log:
                output = {"stdout": log, "stderr": subprocess.STDOUT} if self.log_file else {}
                self.process = subprocess.Popen(self.command(self._backends()), env=self.environment(),
                                                start_new_session=True, **output)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting"
                                  f"{self._log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {self.startup_timeout:.0f} s{self._log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int | None:
        """SIGTERM: Triton finishes in-flight requests (waiting up to exit_timeout) and unloads the models,
        which ends their stubs. Still running 10 s later, it gets SIGKILL with its whole process group.
        Removes the backend folder and any shared memory the stubs left. Returns the exit code."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.exit_timeout + 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # not yet reaped, so the group is still ours
                self.process.wait()
        for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return self.process.returncode if self.process else None

    def _backends(self) -> Path:
        """`<workdir>/backends/python/`: the backend library, its utilities and the stub for this Python."""
        source, python = pytriton_dir(), self._workdir / "backends" / "python"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"the nvidia-pytriton wheel has no Python backend stub for Python {version}")
        python.mkdir(parents=True)
        for path in [source / "backends" / "python" / name for name in _BACKEND_FILES] + [stub]:
            shutil.copy2(path, python / path.name)
        return python.parent

    def _log_tail(self, lines: int = 15) -> str:
        """Triton's error lines (a model that fails to load says why there) and the last `lines` lines."""
        if not self.log_file or not self.log_file.is_file():
            return ""
        log = self.log_file.read_text(errors="replace").splitlines()
        errors = [line for line in log[:-lines] if re.match(r"E\d{4} ", line) and "Cuda" not in line]
        return f"; from its log ({self.log_file}):\n" + "\n".join(errors + log[-lines:])


@dataclass(kw_only=True)
class ServeOptions:
    repo: str = option("", "Triton model repository (kubeclip triton-repo --out), cpu flavor on a CPU-only machine")
    transformer: bool = option(False, "run the KServe transformer (python -m kubeclip.components.serve.transformer) "
                                      "instead of Triton, calling the Triton at --predictor-url; its full flags: "
                                      "python -m kubeclip.components.serve.transformer --help")
    predictor_url: str = option("127.0.0.1:8001", "with --transformer: Triton's gRPC HOST:PORT")
    max_batch_size: int = option(64, "with --transformer: largest batch it sends to Triton (the repository's "
                                     "--max-batch-size)")
    http_port: int | None = option(None, "HTTP port: Triton's (default 8000), or with --transformer the "
                                         "transformer's (default 8080); 0 picks a free one")
    grpc_port: int = option(8001, "gRPC port (0: pick a free one)")
    metrics_port: int = option(8002, "Prometheus metrics port (0: pick a free one)")
    host: str = option("127.0.0.1", "address to listen on; 0.0.0.0 exposes the server to the network")
    exit_timeout: int = option(10, "seconds Triton waits for in-flight requests and open connections when stopped")
    log_verbose: int = option(0, "Triton's verbose log level")


class _Stop(Exception):
    pass


def serve(opts: ServeOptions) -> int:
    """Run Triton until SIGTERM or Ctrl-C (then stop it cleanly) or until it exits; returns its exit code.
    With `transformer`, run the transformer instead, in this process, until SIGTERM or Ctrl-C."""
    if opts.transformer:
        from kubeclip.components.serve import transformer

        port = 8080 if opts.http_port is None else opts.http_port or free_port()
        print(f"transformer on http://{opts.host}:{port} (model clip), calling Triton at {opts.predictor_url}",
              flush=True)
        transformer.main(["--host", opts.host, "--http_port", str(port), "--predictor_host", opts.predictor_url,
                          "--max-batch-size", str(opts.max_batch_size)])
        return 0
    if not opts.repo:
        raise SystemExit("kubeclip serve: --repo DIR is required (or --transformer to run the transformer)")
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    server = TritonServer(opts.repo, 8000 if opts.http_port is None else opts.http_port, opts.grpc_port,
                          opts.metrics_port, opts.host, exit_timeout=opts.exit_timeout, log_verbose=opts.log_verbose)
    try:
        with server:
            print(f"Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}",
                  flush=True)
            code = server.process.wait()
            print(f"tritonserver exited by itself, with code {code}", file=sys.stderr)
            return code
    except (_Stop, KeyboardInterrupt):
        print("stopping Triton", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
