"""Start and stop a real Triton Inference Server on a model repository.

The binary comes, in this order, from ``$EDGE_THYROID_TRITONSERVER``, the ``nvidia-pytriton`` wheel
(``pip install 'edge-thyroid[serve]'``: a ``tritonserver`` built with the Python backend, its shared
libraries found through its own RPATH), or ``tritonserver`` on PATH (a Triton container). The wheel's
Python backend needs the stub built for the Python version that runs the models; the launcher lays
out a backend directory with that stub, so nobody sets library paths by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ServerError
from . import native_backend

BINARY_VARIABLE = "EDGE_THYROID_TRITONSERVER"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Installation:
    binary: Path
    backend_root: Path | None  # the wheel's tritonserver/ folder (backends/, python_backend_stubs/); None: the binary's own


def find_installation() -> Installation:
    """Where the tritonserver binary is; a ServerError says how to install one when there is none."""
    explicit = os.environ.get(BINARY_VARIABLE)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerError(f"${BINARY_VARIABLE} is {explicit!r}; expected an executable tritonserver binary")
        return Installation(path, None)
    import importlib.util

    # find_spec locates the wheel without importing PyTriton's Python API (which pins NumPy < 2).
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        binary = root / "bin" / "tritonserver"
        if binary.is_file():
            return Installation(binary, root)
    on_path = shutil.which("tritonserver")
    if on_path:
        return Installation(Path(on_path), None)
    raise ServerError("no tritonserver found: pip install 'edge-thyroid[serve]' (see docs/serving.md), run inside "
                      f"a Triton container, or set ${BINARY_VARIABLE} to the binary")


def python_backend_directory(installation: Installation, python_version: str, into: Path) -> Path | None:
    """A --backend-directory whose python/ backend uses the stub for ``python_version`` ("3.11");
    None when the installation brings its own backends (a Triton container)."""
    if installation.backend_root is None:
        return None
    source = installation.backend_root / "backends" / "python"
    stub = installation.backend_root / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (installation.backend_root / "python_backend_stubs").iterdir())
        raise ServerError(f"the embedded Triton has no Python backend stub for Python {python_version}; it has {have}")
    target = into / "python"
    target.mkdir(parents=True, exist_ok=True)
    for item in [*source.iterdir(), stub]:
        if item.name == "__pycache__":
            continue
        link = target / item.name
        if not link.exists():
            link.symlink_to(item)
    return into


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``port``. Triton's gRPC endpoint binds with SO_REUSEPORT, so a
    second server on a busy port would start and share the traffic instead of failing."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((_reachable(host), port)) == 0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launching process dies, even by SIGKILL, so no
    server outlives the command that started it (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_process_group(pgid: int) -> None:
    """The Python backend's stubs are the server's children, in its process group (the server starts a
    session of its own); a server that died hard leaves them running, so whatever is left goes too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_ports(count: int, host: str = LOOPBACK, avoid: Sequence[int] = ()) -> list[int]:
    """``count`` distinct free ports, none of them in ``avoid``. The sockets stay bound until all are chosen:
    asked one at a time, the OS may hand back a port it just released, and a server given the same port
    for gRPC and metrics refuses to start (it did, once, in CI)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def fill_free_ports(ports: Sequence[int | None], host: str = LOOPBACK) -> list[int]:
    """``ports`` with every 0 (or None) replaced by a free port, all of them distinct from each other and
    from the ports given."""
    given = [port for port in ports if port]
    chosen = iter(free_ports(len(ports) - len(given), host, avoid=given))
    return [port or next(chosen) for port in ports]


@dataclass
class ServerOptions:
    repository: Path
    host: str = LOOPBACK
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    log_file: Path | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)


class TritonServer:
    """One tritonserver process. ``start`` returns once every model is ready; ``stop`` ends it (SIGTERM,
    then SIGKILL after ``grace_s``). Idempotent; a context manager."""

    def __init__(self, options: ServerOptions, installation: Installation | None = None) -> None:
        self.options = options
        self.installation = installation
        self.process: subprocess.Popen | None = None
        self._scratch: Path | None = None
        self._log = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://{_url_host(self.options.host)}:{self.options.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.options.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.options.metrics_port}/metrics"

    def command(self) -> list[str]:
        installation = self.installation or find_installation()
        self.installation = installation
        options = self.options
        args = [str(installation.binary), f"--model-repository={options.repository}",
                f"--http-address={options.host}", f"--http-port={options.http_port}",
                f"--grpc-address={options.host}", f"--grpc-port={options.grpc_port}",
                f"--metrics-address={options.host}", f"--metrics-port={options.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--strict-readiness=true",
                "--exit-on-error=true", "--log-verbose=0", "--exit-timeout-secs=5"]
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="edge-thyroid-triton-"))
        backends = python_backend_directory(installation, options.python_version, self._scratch / "backends")
        if native_backend.repository_uses_it(options.repository):
            if backends is None:
                raise ServerError(f"the repository's openvino-flavour models need the {native_backend.NAME} backend, "
                                  "which is laid out for the embedded server only; in a Triton container serve the "
                                  "onnxruntime flavour (export-triton --flavor onnxruntime)")
            native_backend.install(backends)
        if backends is not None:
            args.append(f"--backend-directory={backends}")
        return args + list(options.extra_args)

    def start(self, timeout_s: float = 60.0) -> "TritonServer":
        if self.process is not None and self.process.poll() is None:
            return self
        args = self.command()
        options = self.options
        busy = [port for port in (options.grpc_port, options.http_port, options.metrics_port)
                if port_in_use(options.host, port)]
        if busy:
            raise ServerError(f"port(s) {busy} on {options.host} are already in use; expected free ports "
                              "(another server running? pick others, or 0 for free ones)")
        log_path = self.options.log_file or (self._scratch / "tritonserver.log")  # type: ignore[operator]
        self._log = open(log_path, "ab")
        # Its own process group: Ctrl-C in a terminal reaches us, and we stop the server in order.
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{_url_host(_reachable(self.options.host))}:{self.options.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with status {self.process.returncode} while starting: "
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise ServerError(f"tritonserver was not ready within {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        path = self.options.log_file or (self._scratch / "tritonserver.log" if self._scratch else None)
        if path is None or not Path(path).is_file():
            return "(no log)"
        text = Path(path).read_text(errors="replace").strip().splitlines()
        errors = [line for line in text if line[:1] in ("E", "W")] or text
        return " | ".join(line.strip()[:300] for line in errors[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop the server; returns its exit status (None when it was not started)."""
        status = None
        if self.process is not None:
            group = self.process.pid  # start_new_session: the server leads its own process group
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=grace_s)
            status = self.process.returncode
            _kill_process_group(group)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return status

    def cleanup(self) -> None:
        """Stop, then remove the scratch directory (backend links, default log)."""
        self.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


def _reachable(host: str) -> str:
    """Where to probe a server bound to ``host`` from this machine."""
    return LOOPBACK if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["Installation", "ServerError", "ServerOptions", "TritonServer", "find_installation",
           "fill_free_ports", "free_port", "free_ports"]
