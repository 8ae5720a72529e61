"""Assembling and running the server: ``sparsemm serve`` (DESIGN.md §5).

    SparseMMServer(ServerConfig(...)).start()  ->  port;   .stop(grace)

Security defaults: without a token file the server listens only on loopback;
``--tls-cert/--tls-key`` turn on TLS and ``--tls-client-ca`` requires a client
certificate signed by that CA.  The standard health service (no credentials
needed) and server reflection are served beside sparsemm.v1.SparseMMService.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sparsemm.v1 import sparsemm_pb2 as pb
from sparsemm.v1 import sparsemm_pb2_grpc as pb_grpc

from .auth import Authenticator, AuthInterceptor, TokenTable, is_loopback
from .disclosure import DEFAULT_MAX_SATURATION, DEFAULT_MIN_GROUP_SIZE, DisclosurePolicy
from .jobs import JobManager
from .outputs import OutputRoot
from .paths import DataRoots
from .service import SparseMMServicer
from .store import JobStore

log = logging.getLogger("sparsemm.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SparseMMService"].full_name


class ConfigError(ValueError):
    """A server setting that cannot be honoured (the CLI exits 2 with it)."""


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    data_roots: tuple[str, ...]
    state: str = "sparsemm-state.duckdb"
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    workers: int = 2
    max_queue: int = 64
    max_rpcs: int = 64  # concurrent calls; more are refused with RESOURCE_EXHAUSTED
    grace_s: float = 10.0
    max_upload_bytes: int = 4 << 30
    max_message_bytes: int = 8 << 20
    output_root: str | None = None  # where clients may have tables written (OutputOptions)
    memory_budget_bytes: int | None = None  # admission control by estimated memory
    disclosure_control: bool = False  # for health data (``disclosure``): off by default
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    allow_row_outputs: bool = False
    max_saturation: float = DEFAULT_MAX_SATURATION

    def disclosure(self) -> DisclosurePolicy | None:
        if not self.disclosure_control:
            return None
        return DisclosurePolicy(self.min_group_size, self.allow_row_outputs, self.max_saturation)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None


def _credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    if not (cfg.tls_cert or cfg.tls_key):
        if cfg.tls_client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    pair = (_read(cfg.tls_key, "--tls-key"), _read(cfg.tls_cert, "--tls-cert"))
    client_ca = _read(cfg.tls_client_ca, "--tls-client-ca") if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _host(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {listen}: expected HOST:PORT")
    return host


class SparseMMServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        host = _host(config.listen)
        tokens = None
        if config.token_file:
            try:
                tokens = TokenTable.load(config.token_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--token-file: {exc}") from None
        elif not is_loopback(host):
            raise ConfigError(
                f"--listen {config.listen}: without --token-file the server "
                "listens on loopback only (127.0.0.1, ::1, localhost)"
            )
        if config.workers < 1 or config.max_queue < 1 or config.grace_s < 0:
            raise ConfigError("--workers and --max-queue must be at least 1, --grace >= 0")
        if config.memory_budget_bytes is not None and config.memory_budget_bytes <= 0:
            raise ConfigError("--memory-budget-mb must be positive")
        if config.min_group_size < 1 or not 0 < config.max_saturation <= 1:
            raise ConfigError("--min-group-size must be at least 1, --max-saturation in (0, 1]")
        self._credentials = _credentials(config)
        try:
            self.roots = DataRoots(config.data_roots)
            self.output_root = OutputRoot.open(config.output_root) if config.output_root else None
            self.store = JobStore(config.state)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.jobs = JobManager(
            self.store,
            config.workers,
            config.max_queue,
            config.memory_budget_bytes,
            config.disclosure(),
        )
        self.auth = Authenticator(tokens, client_certs=config.tls_client_ca is not None)
        self.health = health.HealthServicer()
        self._server = self._build(tokens)
        self.port = 0
        self._stopped = threading.Event()

    def _build(self, tokens: TokenTable | None) -> grpc.Server:
        cfg = self.config
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=cfg.max_rpcs + 8, thread_name_prefix="sparsemm-rpc"
            ),
            interceptors=[AuthInterceptor(tokens)] if tokens else [],
            maximum_concurrent_rpcs=cfg.max_rpcs,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = SparseMMServicer(
            self.jobs, self.roots, self.auth, cfg.max_upload_bytes, self.output_root,
            cfg.disclosure(),
        )  # fmt: skip
        pb_grpc.add_SparseMMServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        return server

    def start(self) -> int:
        """Bind, start the workers, and serve; returns the port (useful with port 0)."""
        try:
            if self._credentials is not None:
                self.port = self._server.add_secure_port(self.config.listen, self._credentials)
            else:
                self.port = self._server.add_insecure_port(self.config.listen)
        except RuntimeError as exc:
            self.store.close()
            raise ConfigError(f"--listen {self.config.listen}: cannot bind ({exc})") from None
        self.jobs.start()
        self._server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "sparsemm serving on %s (data roots: %s)",
            self.config.listen,
            ", ".join(self.roots.roots),
        )
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: refuse new calls and jobs, give running ones ``grace``
        seconds, then stop what is left (its jobs are failed, queued ones stay queued
        for the next start)."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        self.jobs.stop_accepting()
        done = self._server.stop(grace)
        self.jobs.drain(deadline)
        done.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        self.jobs.close()
        self.store.close()
        self._stopped.set()
        log.info("sparsemm server stopped")

    def wait(self) -> None:
        self._stopped.wait()


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = SparseMMServer(config)
    port = server.start()
    print(f"sparsemm: serving on {config.listen.rpartition(':')[0]}:{port}", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
