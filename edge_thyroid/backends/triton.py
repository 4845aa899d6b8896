"""Triton backend: the backbone runs on a Triton Inference Server (``edge-thyroid serve``), the rest
of the engine (capture, preprocessing on the host, pane cache, head, temporal logic) stays here.

``--backend triton --server grpc://HOST:PORT`` (or ``http://HOST:PORT``). Each frame's panes are
preprocessed on the host with the bundle's exact float path and sent as pixels [N, 3, S, S]; the
server answers feature maps [N, C, h, w]. At load the backend finds the served model whose config
carries the sha256 of the local bundle's model, so the server runs exactly the weights this bundle
verified. On the same host (a loopback address) the tensors travel through system shared memory.

Failures: a request that the server does not answer within ``timeout_s`` is retried ``retries``
times with doubling back-off; then :class:`ServerUnavailableError` is raised, and for the next
``probe`` interval (doubling up to ``max_probe_s``) every call fails at once without touching the
network, so a stream abstains frame by frame without waiting on a dead server, and recovers on the
first probe after the server is back. Requests the server refuses (shape, size) are
:class:`BackendError` and never retried.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from ..errors import BackendError, MissingDependencyError, ServerUnavailableError
from ..kernels.graph_io import FRAME, PIXELS, ROIS
from ..serving.repository import CLIENT_PARAMETER, ONE_IN_FLIGHT_PARAMETER, OUTPUT, SHA_PARAMETER
from .base import Backend, BackendOption

if TYPE_CHECKING:  # annotations only: a backend module imports light (the CLI reads its declarations)
    import numpy as np

    from ..bundle import Bundle, ModelEntry
    from ..kernels.reference import PreprocessSpec

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# A refusal (never retried) is the server saying this request is wrong: gRPC INVALID_ARGUMENT, HTTP 400.
REFUSED_STATUSES = {"StatusCode.INVALID_ARGUMENT", "400"}
# ... unless it is about the server's state, not the request: a model unloading or loading while the
# server stops or restarts, shared memory regions a restarted server has forgotten.
TRANSIENT_MESSAGES = ("unknown model", "no available versions", "not ready", "shared memory", "unavailable",
                      "requests waiting", "unloading")
_region_ids = itertools.count()
_client_ids = itertools.count()


@dataclass(frozen=True)
class ServerAddress:
    protocol: str  # "grpc" | "http"
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> "ServerAddress":
        parts = urlsplit(url if "://" in url else f"grpc://{url}")
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise BackendError(f"server {url!r} is not grpc://HOST:PORT or http://HOST:PORT")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise BackendError(f"server {url!r} has an invalid port; expected grpc://HOST:PORT") from None
        return cls(parts.scheme, parts.hostname, port)

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.target}"


class TritonBackend(Backend):
    name = "triton"
    display_name = "Triton Inference Server"
    tag = "triton"
    # The server's model repository holds one backbone; a bundle with one per modality would need one
    # served model per branch (not built).
    runs_branches = False
    options: ClassVar[tuple[BackendOption, ...]] = (BackendOption(
        "server", (), "", metavar="URL", names_rows=False,
        help="triton only: the Triton server that runs the backbone, grpc://HOST:PORT or http://HOST:PORT "
             "(start one with 'edge-thyroid serve BUNDLE'; pip install 'edge-thyroid[serve]')."),)

    @classmethod
    def from_bundle(cls, bundle: "Bundle", entry: "ModelEntry", *, threads: int | None = None,
                    **options: Any) -> "TritonBackend":
        """Host preprocessing needs the bundle's spec; the served model is found by the sha256 the
        manifest records (already verified when the bundle was opened)."""
        options.setdefault("preprocessing", bundle.manifest.preprocessing)
        options.setdefault("max_panes", len(bundle.manifest.modalities))
        options.setdefault("model_sha256", bundle.manifest.files.get(entry.file))
        return cls(bundle.path(entry.file), threads=threads, **options)

    def __init__(self, model_path: str | Path, *, threads: int | None = None, server: str | None = None,
                 preprocessing: "PreprocessSpec | None" = None, max_panes: int = 3, model_sha256: str | None = None,
                 timeout_s: float = 2.0, retries: int = 2, backoff_s: float = 0.05, max_probe_s: float = 1.0,
                 shared_memory: bool | None = None) -> None:
        """``server``: grpc://HOST:PORT or http://HOST:PORT. ``model_sha256``: of ``model_path``
        (hashed at load when None). ``shared_memory``: None = when the server is on a loopback
        address. ``threads`` is not used: the server decides its own."""
        super().__init__(model_path, threads=threads)
        if not server:
            raise BackendError("--backend triton needs --server grpc://HOST:PORT or http://HOST:PORT (start a server "
                               "with 'edge-thyroid serve BUNDLE')")
        self.address = ServerAddress.parse(server)
        if preprocessing is None:
            raise BackendError("the triton backend preprocesses on the host; it needs the bundle's preprocessing spec")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_probe_s <= 0:
            raise BackendError(f"timeout_s={timeout_s}, retries={retries}, backoff_s={backoff_s}, "
                               f"max_probe_s={max_probe_s}; expected timeout > 0, retries >= 0, back-off >= 0, probe > 0")
        self.preprocessing = preprocessing
        self.max_panes = max_panes
        self.model_sha256 = model_sha256
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_probe_s = max_probe_s
        self.use_shared_memory = (self.address.host in LOOPBACK_HOSTS) if shared_memory is None else shared_memory
        self.model_name = ""
        self.max_batch_size = 0
        self.output_dims: tuple[int, ...] = ()
        self.failures = 0        # requests that ended in ServerUnavailableError
        self.retried = 0         # attempts after the first, over all requests
        self._client: Any = None
        self._module: Any = None
        self._preprocess: Any = None
        self._regions: dict[str, Any] = {}   # "input"/"output" -> shared memory handle
        self._region_names: dict[str, str] = {}
        self._region_sizes: dict[str, int] = {}
        self._registered = False
        self._down_until = 0.0
        self._probe_s = 0.0
        self._last_error = ""
        # A fair-scheduled (decoupled) model answers over one gRPC stream per backend; the server
        # queues requests per client, and this backend is one client (one workstation stream).
        self.decoupled = False
        self.client_id = f"{socket.gethostname()}:{os.getpid()}:{next(_client_ids)}"
        self._answers: queue.Queue | None = None
        self._request_ids = itertools.count()
        self._sent = self._received = 0  # on the current stream; more sent than received: answers outstanding

    # -- lifecycle ---------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            if self.address.protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except ImportError:
            raise MissingDependencyError("tritonclient", "serve", "the triton backend") from None
        from ..bundle import sha256_file
        from ..kernels.opencv_path import OpenCVPreprocessor

        self._module = module
        self._client = self._new_client()
        self._preprocess = OpenCVPreprocessor(self.preprocessing)
        sha256 = self.model_sha256 or sha256_file(self.model_path)
        try:
            self._find_model(sha256)
            if self.use_shared_memory:
                self._create_regions()
                self._register_regions()
        except BaseException:
            self._close()
            raise

    def _new_client(self) -> Any:
        if self.address.protocol == "grpc":
            return self._module.InferenceServerClient(self.address.target)
        return self._module.InferenceServerClient(self.address.target, connection_timeout=self.timeout_s,
                                                  network_timeout=self.timeout_s)

    def _renew_client(self) -> None:
        """A new connection after the server went away. gRPC would otherwise keep the old channel's
        reconnect back-off (1 s, growing 1.6x per try), so a server back after a few seconds' outage was
        first reached up to seconds later than the next probe."""
        self._stop_stream()
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - the old channel is broken; closing it must not hide the retry
            pass
        self._client = self._new_client()

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """A control-plane call; no answer is a ServerUnavailableError naming the server."""
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # tritonclient raises its own and the transport's exception types
            if self._unavailable(exc):
                raise ServerUnavailableError(f"no answer from the Triton server at {self.address} ({what}): "
                                             f"{_first_line(exc)}; start one with 'edge-thyroid serve BUNDLE'") from None
            raise BackendError(f"the Triton server at {self.address} refused {what}: {_first_line(exc)}") from None

    def _find_model(self, sha256: str) -> None:
        index = self._call("the repository index", self._client.get_model_repository_index,
                           **({"as_json": True} if self.address.protocol == "grpc" else {}))
        models = index.get("models", []) if isinstance(index, dict) else index
        ready = [m["name"] for m in models if m.get("state") == "READY"]
        candidates = [name for name in ready if name.endswith(f"_{sha256[:12]}")]
        if not candidates:
            raise BackendError(f"the Triton server at {self.address} serves no model for {self.model_path.name} "
                               f"(sha256 {sha256[:12]}...); it serves {sorted(ready) or 'nothing'}; start it with "
                               "'edge-thyroid serve' on this bundle")
        name = candidates[0]
        config = self._call(f"model {name}'s config", self._client.get_model_config, name,
                            **({"as_json": True} if self.address.protocol == "grpc" else {}))
        config = config.get("config", config)
        served_sha = config.get("parameters", {}).get(SHA_PARAMETER, {}).get("string_value", "")
        if served_sha != sha256:
            raise BackendError(f"model {name} on {self.address} was written from weights with sha256 "
                               f"{served_sha[:12] or 'unknown'}...; this bundle's {self.model_path.name} has {sha256[:12]}...")
        dims = [int(d) for d in config["input"][0]["dims"]]
        size = self.preprocessing.image_size
        if dims != [3, size, size]:
            raise BackendError(f"model {name} on {self.address} takes pixels {dims}; this bundle preprocesses to [3, {size}, {size}]")
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        if self.decoupled and self.address.protocol != "grpc":
            raise BackendError(f"model {name} on {self.address} schedules its clients fairly, which needs gRPC "
                               f"streaming: use --server grpc://{self.address.host}:<grpc port> (or serve with "
                               "--scheduling fifo for HTTP clients)")
        self.model_name = name
        self.max_batch_size = int(config.get("max_batch_size", 0)) or self.max_panes
        self.output_dims = tuple(int(d) for d in config["output"][0]["dims"])

    def _create_regions(self) -> None:
        import tritonclient.utils.shared_memory as shm

        panes = min(self.max_panes, self.max_batch_size)
        size = self.preprocessing.image_size
        sizes = {"input": panes * 3 * size * size * 4, "output": panes * math.prod(self.output_dims) * 4}
        for role, byte_size in sizes.items():
            name = f"edge_thyroid_{os.getpid()}_{next(_region_ids)}_{role}"
            self._region_names[role] = name
            self._region_sizes[role] = byte_size
            self._regions[role] = shm.create_shared_memory_region(name, f"/{name}", byte_size)

    def _register_regions(self) -> None:
        for role, handle in self._regions.items():
            name = self._region_names[role]
            # A region left registered by an earlier run of a restarted server is replaced, not an error.
            try:
                self._client.unregister_system_shared_memory(name)
            except Exception:  # noqa: BLE001 - absent is the normal case
                pass
            self._call(f"registering shared memory {name}", self._client.register_system_shared_memory,
                       name, f"/{name}", self._region_sizes[role])
        self._registered = True

    def _close(self) -> None:
        self._stop_stream()
        if self._client is not None:
            if self._registered:
                for name in self._region_names.values():
                    try:
                        self._client.unregister_system_shared_memory(name)
                    except Exception:  # noqa: BLE001 - a server that is gone has forgotten them already
                        pass
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken channel must not hide the real error
                pass
        if self._regions:
            import tritonclient.utils.shared_memory as shm

            for handle in self._regions.values():
                shm.destroy_shared_memory_region(handle)
        self._regions.clear()
        self._region_names.clear()
        self._region_sizes.clear()
        self._registered = False
        self._client = self._preprocess = None

    # -- inference ---------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [FRAME, ROIS] if self.model_name else []

    @property
    def providers(self) -> list[str]:
        if not self.model_name:
            return []
        via = "shared memory" if self.use_shared_memory else self.address.protocol
        return [f"Triton {self.model_name} at {self.address} (host preprocessing; tensors via {via})"]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        now = time.monotonic()
        if now < self._down_until:
            raise ServerUnavailableError(f"{self._last_error} (next try in {self._down_until - now:.2f} s)")
        import numpy as np

        rois = np.asarray(feeds[ROIS]).reshape(-1, 4)
        chunk = min(self.max_batch_size, self.max_panes) if self.use_shared_memory else self.max_batch_size
        parts = [self._infer_panes(feeds[FRAME], rois[i : i + chunk]) for i in range(0, len(rois), chunk)]
        return {OUTPUT: parts[0] if len(parts) == 1 else np.concatenate(parts)}

    def _infer_panes(self, frame: np.ndarray, rois: np.ndarray) -> np.ndarray:
        pixels = self._preprocess(frame, rois)
        if self.use_shared_memory:
            import tritonclient.utils.shared_memory as shm

            shm.set_shared_memory_region(self._regions["input"], [pixels])
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(delay)
                delay *= 2
            try:
                if self.use_shared_memory and not self._registered:
                    self._register_regions()
                maps = self._request(pixels)
            except ServerUnavailableError as exc:
                last = exc
                self._registered = False  # a restarted server has forgotten our regions
                self._renew_client()
                continue
            self._down_until, self._probe_s = 0.0, 0.0
            return maps
        self.failures += 1
        self._last_error = str(last)
        self._probe_s = min(max(self._probe_s * 2, 0.25), self.max_probe_s)
        self._down_until = time.monotonic() + self._probe_s
        raise last

    def _request(self, pixels: np.ndarray) -> np.ndarray:
        module = self._module
        pane_count = len(pixels)
        feature = (pane_count, *self.output_dims)
        pixels_in = module.InferInput(PIXELS, list(pixels.shape), "FP32")
        if self.use_shared_memory:
            pixels_in.set_shared_memory(self._region_names["input"], pixels.nbytes)
            wanted = module.InferRequestedOutput(OUTPUT)
            wanted.set_shared_memory(self._region_names["output"], math.prod(feature) * 4)
        else:
            pixels_in.set_data_from_numpy(pixels, **({"binary_data": True} if self.address.protocol == "http" else {}))
            wanted = module.InferRequestedOutput(OUTPUT, **({"binary_data": True} if self.address.protocol == "http" else {}))
        if self.decoupled:
            result = self._stream_request(pixels_in, wanted)
        else:
            kwargs = {"client_timeout": self.timeout_s} if self.address.protocol == "grpc" else {}
            result = self._call("the inference request", self._client.infer, self.model_name, [pixels_in],
                                outputs=[wanted], **kwargs)
        if self.use_shared_memory:
            # The region is overwritten by the next request; the pane cache keeps these maps.
            import numpy as np
            import tritonclient.utils.shared_memory as shm

            return np.array(shm.get_contents_as_numpy(self._regions["output"], np.float32, feature))
        return result.as_numpy(OUTPUT)

    def _stream_request(self, pixels_in: Any, wanted: Any) -> Any:
        """One request over the stream, answered within ``timeout_s``. Answers are matched by request
        id, so one that arrives after its request timed out is dropped, never taken for the next
        request's. A stream that broke (the server went away) is closed and the next attempt opens one."""
        if self._answers is None:
            answers: queue.Queue = queue.Queue()
            self._sent = self._received = 0

            def take(result: Any, error: Any) -> None:
                self._received += 1
                answers.put((result, error))

            self._call("opening a stream", self._client.start_stream, callback=take)
            self._answers = answers
        request_id = str(next(self._request_ids))
        # No answer outstanding (an earlier request that timed out may still be on the server): then
        # this is the client's only request in flight, which lets an idle server run it at once.
        parameters = {CLIENT_PARAMETER: self.client_id, ONE_IN_FLIGHT_PARAMETER: self._sent == self._received}
        try:
            self._call("the inference request", self._client.async_stream_infer, self.model_name, [pixels_in],
                       outputs=[wanted], request_id=request_id, parameters=parameters)
        except ServerUnavailableError:
            self._stop_stream()
            raise
        self._sent += 1
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                result, error = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ServerUnavailableError(f"no answer from the Triton server at {self.address} within "
                                             f"{self.timeout_s:g} s") from None
            if error is not None:
                if self._unavailable(error, streamed=True):
                    if getattr(error, "status", lambda: None)() is not None:
                        self._stop_stream()  # a transport status: the stream itself is gone
                    raise ServerUnavailableError(f"no answer from the Triton server at {self.address} (the inference "
                                                 f"request): {_first_line(error)}")
                raise BackendError(f"the Triton server at {self.address} refused the inference request: "
                                   f"{_first_line(error)}")
            if result.get_response().id == request_id:
                return result

    def _stop_stream(self) -> None:
        """Close the stream. Only with answers outstanding are they cancelled (otherwise closing waits
        for them): the embedded Triton never finishes unloading a model after a cancelled stream, so a
        server that is still up would then need its exit timeout to stop."""
        if self._answers is not None and self._client is not None:
            try:
                self._client.stop_stream(cancel_requests=self._sent > self._received)
            except Exception:  # noqa: BLE001 - a broken stream is being thrown away
                pass
        self._answers = None

    @staticmethod
    def _unavailable(exc: BaseException, streamed: bool = False) -> bool:
        """True: no usable answer (transport failure, timeout, server stopping or restarting), worth
        retrying; False: the server refused the request itself."""
        status = getattr(exc, "status", None)
        status = status() if callable(status) else status
        # Over a stream, an error without a transport status is the server's answer to the request.
        if (status is not None or not streamed) and str(status) not in REFUSED_STATUSES:
            return True
        text = str(exc).lower()
        return any(message in text for message in TRANSIENT_MESSAGES)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
