"""Settings for `authz-server serve`, each with a flag and an ``AUTHZ_*`` environment variable."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from authz_server.errors import AuthzServerError

MIB = 1024 * 1024
DISPATCH_MODES = ("thread", "inline")
# Measured: see authz_server/serve/server.py.
DEFAULT_DISPATCH = "thread"


class ConfigError(AuthzServerError, ValueError):
    """A setting has a value the server cannot use."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` (``[::1]:9000`` for IPv6, ``:9000`` for all interfaces)."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"address {text!r} is not HOST:PORT")
        host = host.strip("[]") or "0.0.0.0"
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether only this host can connect: a loopback IP or ``localhost``. Any other name
        may resolve to a public interface, so it counts as not loopback."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class ServeConfig:
    policies: Path
    grpc_address: Address = Address("0.0.0.0", 9000)
    http_address: Address = Address("0.0.0.0", 9001)
    workers: int = 1
    # Envoy forwards the body inside the CheckRequest: 4 MiB of body plus headers must fit.
    max_receive_bytes: int = 8 * MIB
    grace_period: float = 15.0
    # Clients are asked (HTTP/2 GOAWAY) to reconnect after this many seconds, which spreads a
    # gateway's few long-lived connections over the workers and lets a stopping worker drain.
    max_connection_age: float = 10.0
    combine: str = "deny-overrides"
    default_decision: str = "deny"
    decode_failures_to_policies: bool = False
    # The upstream undoes Content-Encoding before it reads a body, so the decoder does too.
    decode_content_encoding: bool = False
    reload_interval: float = 1.0
    log_level: str = "info"
    # "-" is stdout; with several workers a file keeps long lines from interleaving.
    audit_log: str = "-"
    audit_max_value_length: int = 256
    metrics_tool_limit: int = 100
    # A worker past this resident size is replaced (see serve/workers.py); 0 never replaces one.
    max_worker_rss_mib: int = 512
    # The state store's URL; None: the default SQLite file (authz_server.state.default_url).
    state: str | None = None
    # The admin listener (approvals page and API); None: off. It serves only with a token file,
    # and a non-loopback address requires one (see oversight/admin.py, serve/admin.py).
    admin_address: Address | None = Address("127.0.0.1", 9002)
    admin_token_file: Path | None = None
    # The base of approval links given to agents; "" means http://<admin_address>.
    admin_public_url: str = ""
    # Seconds an approval lives from the first refused call.
    approval_ttl: float = 600.0
    # The HTTP authorizer (HTTP-mode policies, for Envoy's http_service, agentgateway's HTTP
    # protocol and Kyverno's HTTP clients); None: off.
    http_authz_address: Address | None = Address("0.0.0.0", 9003)
    # Each request's body is the raw HTTP request to judge (Kyverno's --nested-request).
    http_authz_nested_request: bool = False
    # ext_proc: the most of a list response held to filter it, and what happens past it
    # ("deny" fails closed, "pass" lets the rest through unfiltered); how many ext_proc streams
    # (each an HTTP exchange in flight, holding a thread) one worker serves at once.
    ext_proc_max_body_bytes: int = 4 * MIB
    ext_proc_oversize: str = "deny"
    ext_proc_streams: int = 128
    # Where a check is decided: "thread" hands it from the gRPC pool thread to one decision
    # thread, "inline" decides on the pool thread that received it (see serve/server.py).
    dispatch: str = DEFAULT_DISPATCH
    # Set for each process of a --workers group so that they can share the listening ports.
    reuse_port: bool = False

    @property
    def listen_addresses(self) -> tuple[Address, ...]:
        """The addresses every worker binds (the admin listener is the supervisor's alone)."""
        addresses = (self.grpc_address, self.http_address)
        if self.http_authz_address is not None:
            addresses += (self.http_authz_address,)
        return addresses

    @property
    def approval_url(self) -> str:
        """The base of the links to the admin page's approvals."""
        if self.admin_public_url:
            return self.admin_public_url.rstrip("/")
        address = self.admin_address or Address("127.0.0.1", 9002)
        return f"http://{address}"

    @property
    def supervised(self) -> bool:
        """Whether serving runs as a supervisor of worker processes (see serve/workers.py)."""
        return self.workers > 1 or self.max_worker_rss_mib > 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.max_worker_rss_mib < 0:
            raise ConfigError("--max-worker-rss-mib must not be negative")
        if self.max_receive_bytes < 64 * 1024:
            raise ConfigError("--max-receive-bytes must be at least 65536")
        if self.max_connection_age < 0:
            raise ConfigError("--max-connection-age must not be negative")
        if self.grace_period < 0:
            raise ConfigError("--grace-period must not be negative")
        if not 1.0 <= self.approval_ttl <= 7 * 86400:
            raise ConfigError("--approval-ttl must be between 1 second and 7 days")
        if self.admin_public_url and not self.admin_public_url.startswith(("https://", "http://")):
            raise ConfigError("--admin-public-url must be an http:// or https:// URL")
        if self.audit_max_value_length < 16:
            raise ConfigError("--audit-max-value-length must be at least 16")
        if self.metrics_tool_limit < 0:
            raise ConfigError("--metrics-tool-limit must not be negative")
        if not 1024 <= self.ext_proc_max_body_bytes <= self.max_receive_bytes:
            raise ConfigError(
                "--ext-proc-max-body-bytes must be between 1024 and --max-receive-bytes "
                "(a BUFFERED body arrives in one gRPC message)"
            )
        if self.ext_proc_oversize not in ("deny", "pass"):
            raise ConfigError("--ext-proc-oversize must be deny or pass")
        if not 1 <= self.ext_proc_streams <= 10_000:
            raise ConfigError("--ext-proc-streams must be between 1 and 10000")
        if self.dispatch not in DISPATCH_MODES:
            raise ConfigError("--dispatch must be thread or inline")
        if self.combine not in ("deny-overrides", "first-match"):
            raise ConfigError("--combine must be deny-overrides or first-match")
        if self.default_decision not in ("deny", "allow"):
            raise ConfigError("--default-decision must be deny or allow")
        if self.admin_address and not self.admin_address.loopback and not self.admin_token_file:
            raise ConfigError(
                f"--admin-address {self.admin_address} is reachable from other hosts: give "
                "--admin-token-file, or an empty --admin-address to turn the listener off"
            )
