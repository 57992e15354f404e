"""The gRPC server: Envoy's Authorization/Check and ExternalProcessor/Process, agentgateway's
ExtMcp, gRPC health, reflection, the HTTP side server and the HTTP authorizer
(:mod:`authz_server.serve.http_authz`).

Checks are served by grpcio's synchronous server on a small thread pool, not by ``grpc.aio``:
for a bare Check handler, grpc.aio costs about 200 us of CPU and 16 context switches per call
where the synchronous server costs about 125 us and 6 (``make bench`` runs both), and a check is
short CPU-bound work that gains nothing from a coroutine. The pool threads do the network side
of each call; ``--dispatch`` says where the decision is made (:mod:`authz_server.serve.serial`):

* ``thread`` (the default): handed to one decision thread, which decides what waits (up to 16
  checks) before waking their callers;
* ``inline``: on the pool thread that received the call; no handoff, and the same answers (the
  GIL lets one thread decide at a time anyway).

Measured on 2026-12-03 on a 2-vCPU KVM guest (AMD EPYC, CPython 3.11) shared with other jobs (load
average 6 to 16): each server pinned to CPU 0, h2load on CPU 1, the example policies and the
benchmark's tools/call, runs interleaved round by round, CPU per check from ``/proc/PID/stat``. With
``-c 4 -m 8`` (9 rounds of 8,000 checks; medians): the batching decision thread 1,835 checks/s and
518 us of CPU per check, the same thread waking each caller at once (the previous default) 1,761 and
554, inline 1,679 and 581, a ``grpc.aio`` server deciding in the coroutine
(``tests/benchmarks/floor_server.py aio-decide``) 1,410 and 698. Per round, the batching thread took
less CPU than waking at once in 6 of 9 rounds, and in 7 of 9 of an earlier run. Inline against the
unbatched thread was within the noise (-4% to +5% CPU per check in four runs under load; +3% with
one connection and 1 or 4 streams, where batching has little to gather), though it always had the
fewest context switches (10.3-11.3 per check under load, against 13.2-13.9 unbatched, 11.1-11.3
batching and 16.5-17.8 for grpc.aio). So the batching thread is the default.

Inside gVisor (``make bench-gvisor``: Debian's runsc, ptrace platform, the same machine, 5 rounds)
the batching thread still beat inline in every round (median 246 against 198 checks/s): under
load it wakes fewer threads than deciding in place does, which counts for more where a wake-up is
dear. There the grpc.aio server deciding in the coroutine won 6 rounds of 8 (about +20%). Natively
it loses a third, so the transport stays synchronous (README, Performance).

Parallelism comes from ``--workers`` processes sharing the port (see ``workers.py``). The asyncio
loop in the main thread runs the HTTP side server, the health tracker and the signal handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST

from authz_server import __version__
from authz_server.authorizer import Authorizer
from authz_server.config import DEFAULT_DISPATCH, ServeConfig
from authz_server.decision import DecidedBy, deny
from authz_server.envoy import request_from_check, response_from_decision
from authz_server.envoy.ext_proc import ExtProcSettings, Oversize
from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2, ext_mcp_pb2_grpc
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import (
    external_processor_pb2,
    external_processor_pb2_grpc,
)
from authz_server.mcp.limits import DEFAULT_LIMITS
from authz_server.observe.metrics import render_metrics
from authz_server.oversight.admin import AdminError
from authz_server.serve.admin import AdminListener, start_admin
from authz_server.serve.http_authz import HttpAuthzService
from authz_server.serve.http_server import Reply, SideServer
from authz_server.serve.listeners import close_listening_sockets
from authz_server.serve.processors import Decisions, ExtMcpService, ExtProcService
from authz_server.serve.serial import dispatcher
from authz_server.serve.workers import HAND_OVER_SIGNAL, WorkerControl

log = logging.getLogger(__name__)

SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
EXT_PROC_SERVICE = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
EXT_MCP_SERVICE = ext_mcp_pb2.DESCRIPTOR.services_by_name["ExtMcp"].full_name
# The names health reports on: a gateway health-checks the one it calls.
SERVICES = (SERVICE_NAME, EXT_PROC_SERVICE, EXT_MCP_SERVICE)
# How long a connection told to go away (max_connection_age) may finish its streams. Checks end
# in milliseconds; an ext_proc stream lasts as long as its HTTP exchange (a slow tool, an SSE
# response), and cutting it would fail that exchange. Shutdown has its own, shorter grace.
CONNECTION_AGE_GRACE_SECONDS = 24 * 3600
HEALTH_POLL_SECONDS = 0.5
# On shutdown, keep answering until no check has arrived for this long (or the grace period
# ends): gRPC cancels checks it has received but not yet dispatched, so stopping while the
# queue is busy would fail checks the gateway already sent.
DRAIN_QUIET_SECONDS = 0.2
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Threads serving calls. One thread decides (see CheckService), but more overlap the network round
# trips of calls: on the benchmark, throughput rises up to four and is flat from four to sixteen.
# Each open reflection stream holds a thread while it lasts (health Watch streams do not), so
# there is room to spare.
CHECK_THREADS = 8

# The last resort, when even the authorizer's internal_error failed: still a denial Envoy can
# relay, never an RPC error that `failure_mode_allow` would turn into an allow.
_INTERNAL_ERROR = deny(
    500,
    reason="internal error",
    body="authorization failed: internal error\n",
    decided_by=DecidedBy.ERROR,
)


class CheckService(external_auth_pb2_grpc.AuthorizationServicer):
    """Envoy's ext_authz v3 Check: adapt, decide, adapt back. Never raises.

    The pool threads decide through ``--dispatch``'s dispatcher (see
    :mod:`authz_server.serve.serial`).
    """

    def __init__(self, authorizer: Authorizer, dispatch: str = DEFAULT_DISPATCH) -> None:
        self._authorizer = authorizer
        self.last_check = 0.0
        self.decider = dispatcher(
            dispatch, self._respond, fallback=response_from_decision(_INTERNAL_ERROR), name="check"
        )

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.last_check = time.monotonic()
        return self.decider(request)

    def _respond(self, check: Any) -> Any:
        # Whatever raises, the check still gets a decision with an id, a metric and an audit
        # line (the authorizer's internal_error); the runner's fallback is the last resort.
        try:
            decision = self._authorizer.check(request_from_check(check))
        except Exception as exc:
            decision = self._authorizer.internal_error(exc)
        try:
            return response_from_decision(decision)
        except Exception as exc:
            return response_from_decision(self._authorizer.internal_error(exc))


class Server:
    """A running authz-server process: gRPC on one port, HTTP probes and metrics on another."""

    def __init__(
        self, config: ServeConfig, authorizer: Authorizer, control: WorkerControl | None = None
    ) -> None:
        self.config = config
        self.authorizer = authorizer
        self._control = control or WorkerControl(None)
        self.grpc_port = 0
        self.http_port = 0
        self.http_authz_port = 0
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", config.max_receive_bytes),
            ("grpc.so_reuseport", int(config.reuse_port)),
        ]
        if config.max_connection_age:
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_SECONDS * 1000),
            ]
        # Every ext_proc stream holds a thread while its exchange lasts; Checks keep their own.
        threads = CHECK_THREADS + config.ext_proc_streams
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc"), options=options
        )
        self._health = HealthServicer()
        self._side = SideServer(
            {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}
        )
        self._service = CheckService(authorizer, config.dispatch)
        self._http_authz = (
            HttpAuthzService(
                authorizer,
                self._service.decider,
                nested=config.http_authz_nested_request,
                max_body=DEFAULT_LIMITS.max_body_bytes,
            )
            if config.http_authz_address is not None
            else None
        )
        self._decisions = Decisions(authorizer, self._service.decider)
        settings = ExtProcSettings(
            max_body_bytes=config.ext_proc_max_body_bytes,
            oversize=Oversize(config.ext_proc_oversize),
        )
        self._ext_proc = ExtProcService(self._decisions, settings, config.ext_proc_streams)
        self._ext_mcp = ExtMcpService(self._decisions)
        self._stopping = asyncio.Event()
        self._handing_over = False
        self._health_task: asyncio.Task[None] | None = None
        self._admin: AdminListener | None = None

    async def start(self) -> None:
        # First, so that a busy admin port stops the start before anything else runs. Under a
        # supervisor, workers have no admin address: the supervisor serves it.
        self._admin = start_admin(self.config)
        try:
            await self._start_serving()
        except BaseException:
            if self._admin is not None:
                self._admin.stop()
            raise

    async def _start_serving(self) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self._service, self._grpc)
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
            self._ext_proc, self._grpc
        )
        ext_mcp_pb2_grpc.add_ExtMcpServicer_to_server(self._ext_mcp, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            [
                *SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._grpc,
        )
        for service in ("", *SERVICES):
            self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_port = self._grpc.add_insecure_port(str(self.config.grpc_address))
        if not self.grpc_port:
            raise OSError(f"cannot listen for gRPC on {self.config.grpc_address}")
        self.authorizer.start()
        self._service.decider.start()
        self._grpc.start()
        self.http_port = await self._side.start(
            self.config.http_address, reuse_port=self.config.reuse_port
        )
        address = self.config.http_authz_address
        if self._http_authz is not None and address is not None:
            self.http_authz_port = await self._http_authz.listener.start(
                address.host, address.port, reuse_port=self.config.reuse_port
            )
        self._health_task = asyncio.create_task(self._track_health())
        log.info(
            "authz-server %s serving Envoy ext_authz v3 and ext_proc v3, agentgateway ExtMcp on "
            "%s:%d (gRPC, health, reflection); "
            "/metrics /healthz /readyz on %s:%d; %s; policies from %s",
            __version__,
            self.config.grpc_address.host,
            self.grpc_port,
            self.config.http_address.host,
            self.http_port,
            f"the HTTP authorizer on {address.host}:{self.http_authz_port}"
            if address is not None
            else "no HTTP authorizer",
            self.config.policies,
        )

    def request_stop(self) -> None:
        self._stopping.set()

    def hand_over(self) -> None:
        """Stop because a successor on the same port now serves (the supervisor's SIGUSR1)."""
        self._handing_over = True
        self._stopping.set()

    async def wait(self) -> None:
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Report NOT_SERVING, answer what is queued, then stop within the grace period."""
        log.info(
            "shutting down: finishing in-flight checks (grace %.1fs)", self.config.grace_period
        )
        deadline = time.monotonic() + self.config.grace_period
        self._health.enter_graceful_shutdown()
        if self._handing_over:
            # New connections go to the successor from now on; the open ones drain below.
            closed = close_listening_sockets(self.grpc_port)
            log.info("handing over: closed %d gRPC listening socket(s)", closed)
        if self._http_authz is not None:
            # First, while the decision thread still runs: requests being answered finish.
            await self._http_authz.close(max(0.0, deadline - time.monotonic()))
        while (
            time.monotonic() < deadline
            and time.monotonic() - max(self._service.last_check, self._decisions.last_call)
            < DRAIN_QUIET_SECONDS
        ):
            await asyncio.sleep(DRAIN_QUIET_SECONDS / 4)
        stopped = self._grpc.stop(max(0.0, deadline - time.monotonic()))
        await asyncio.to_thread(stopped.wait)
        await asyncio.to_thread(self._service.decider.stop)
        if self._health_task is not None:
            self._health_task.cancel()
        await self._side.close()
        if self._admin is not None:
            await asyncio.to_thread(self._admin.stop)
        self.authorizer.stop()
        log.info("stopped")

    async def _track_health(self) -> None:
        serving: bool | None = None
        rss_limit = self.config.max_worker_rss_mib * 1024 * 1024
        while True:
            now = self.authorizer.status().serving
            if now and not serving:
                self._control.ready()
            if rss_limit and _resident_bytes() > rss_limit:
                self._control.retire()
            if self._control.orphaned:
                log.error("the supervisor is gone; stopping")
                self.request_stop()
            if now != serving:
                state = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in ("", *SERVICES):
                    self._health.set(service, state)
                serving = now
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    def _metrics(self) -> Reply:
        return Reply(200, render_metrics(), CONTENT_TYPE_LATEST)

    def _healthz(self) -> Reply:
        return Reply(200, b"ok\n")

    def _readyz(self) -> Reply:
        status = self.authorizer.status()
        if status.ready:
            return Reply(200, f"ready: {status.detail}\n".encode())
        return Reply(503, f"not ready: {status.detail}\n".encode())


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


async def run(
    config: ServeConfig, authorizer: Authorizer, control: WorkerControl | None = None
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    server = Server(config, authorizer, control)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    loop.add_signal_handler(HAND_OVER_SIGNAL, server.hand_over)
    try:
        await server.start()
    except (OSError, AdminError) as exc:
        log.error("%s", exc)
        authorizer.stop()
        return 1
    await server.wait()
    return 0
