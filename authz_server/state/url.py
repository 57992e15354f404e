"""``--state`` URLs and the default state directory.

Forms accepted:

- ``sqlite:///ABSOLUTE/PATH`` or ``sqlite:RELATIVE/PATH`` (resolved against the working directory
  when parsed): one file shared by every worker of one host.
- ``redis://[USER:PASSWORD@]HOST[:PORT][/DB]`` and ``rediss://...`` (TLS, certificate verified):
  one store shared by several replicas.

Query parameters: ``timeout`` (seconds, default 1: how long an operation may wait for a lock or a
reply before it fails with ``StoreUnavailable``), ``prefix`` (Redis only: the key prefix, default
``authz:``, so several deployments can share one Redis database) and ``ca_file`` (``rediss`` only:
a PEM bundle of the certificate authorities to trust instead of the system's).

The password is kept out of every ``str``/``repr`` and error message: :attr:`StoreUrl.display`
is the form to log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from authz_server.state.errors import StoreUrlError

STATE_DIR_VARIABLE = "AUTHZ_STATE_DIR"
STATE_FILE = "state.db"
DEFAULT_TIMEOUT = 1.0
DEFAULT_PREFIX = "authz:"
_PREFIX = re.compile(r"[A-Za-z0-9_.:{}-]{0,64}")
_PARAMS = {
    "sqlite": {"timeout"},
    "redis": {"timeout", "prefix"},
    "rediss": {"timeout", "prefix", "ca_file"},
}


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed, validated ``--state`` URL."""

    scheme: str  # "sqlite", "redis" or "rediss"
    path: Path | None = None  # sqlite
    host: str = ""
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None

    @property
    def display(self) -> str:
        """The URL without its password, safe for logs, errors and ``/readyz``."""
        if self.scheme == "sqlite":
            return f"sqlite://{self.path}"
        user = ""
        if self.username or self.password:
            user = f"{self.username or ''}{':***' if self.password else ''}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self.display


def parse_url(text: str) -> StoreUrl:
    """Parse and validate a ``--state`` URL; :class:`StoreUrlError` says what is wrong."""
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in _PARAMS:
        raise StoreUrlError(
            f"state URL must start with sqlite:, redis:// or rediss:// (got {_scheme_only(text)!r})"
        )
    if scheme == "sqlite":
        return _parse_sqlite(rest)
    return _parse_redis(scheme, text)


def _scheme_only(text: str) -> str:
    # Never echo a whole unparseable URL: it may hold a password.
    head = text.split("://", 1)[0] if "://" in text else text.split(":", 1)[0]
    return head[:20]


def _parse_sqlite(rest: str) -> StoreUrl:
    body, _, query = rest.partition("?")
    if body.startswith("//"):
        host, slash, path = body[2:].partition("/")
        if host:
            raise StoreUrlError(
                "sqlite URL has a host part: write sqlite:///absolute/path or sqlite:relative/path"
            )
        body = "/" + path.lstrip("/") if slash else ""
    body = unquote(body)
    if not body or body.endswith("/"):
        raise StoreUrlError("sqlite URL names no file: write sqlite:///path/to/state.db")
    if body.lstrip("/") == ":memory:" or body.startswith("file:"):
        raise StoreUrlError("sqlite URL must name a file that every worker can open")
    params = _params("sqlite", query)
    return StoreUrl("sqlite", path=Path(os.path.abspath(body)), timeout=_timeout(params))


def _parse_redis(scheme: str, text: str) -> StoreUrl:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise StoreUrlError(f"{scheme} URL has an invalid host or port") from None
    if not parts.hostname:
        raise StoreUrlError(f"{scheme} URL names no host: write {scheme}://host:6379/0")
    if parts.fragment:
        raise StoreUrlError(f"{scheme} URL must not have a #fragment")
    db_text = parts.path.strip("/")
    if db_text and not (db_text.isdigit() and int(db_text) < 1 << 16):
        raise StoreUrlError(f"{scheme} URL path must be a database number, like /0")
    params = _params(scheme, parts.query)
    prefix = params.get("prefix", DEFAULT_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise StoreUrlError("prefix must be at most 64 letters, digits or _.:{}-")
    return StoreUrl(
        scheme,
        host=parts.hostname,
        port=port if port is not None else 6379,
        db=int(db_text or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        timeout=_timeout(params),
        prefix=prefix,
        ca_file=params.get("ca_file"),
    )


def _params(scheme: str, query: str) -> Mapping[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise StoreUrlError(f"{scheme} URL has a malformed query string") from None
    params = dict(pairs)
    unknown = sorted(set(params) - _PARAMS[scheme])
    if unknown or len(params) != len(pairs):
        allowed = ", ".join(sorted(_PARAMS[scheme]))
        raise StoreUrlError(
            f"{scheme} URL: unknown or repeated parameter {unknown[:3] or ''} (allowed: {allowed})"
        )
    return params


def _timeout(params: Mapping[str, str]) -> float:
    text = params.get("timeout")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 60:
        raise StoreUrlError("timeout must be a number of seconds above 0 and at most 60")
    return value


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The directory of the default SQLite store, the same for every worker of one server.

    In order: ``$AUTHZ_STATE_DIR``; systemd's ``$STATE_DIRECTORY`` (``StateDirectory=``);
    ``/var/lib/authz-server`` for root; else ``$XDG_STATE_HOME/authz-server`` or
    ``~/.local/state/authz-server``. A container with a read-only root mounts a volume and sets
    ``AUTHZ_STATE_DIR`` to it. The directory is created on first use, not here.
    """
    explicit = environ.get(STATE_DIR_VARIABLE) or environ.get("STATE_DIRECTORY", "").split(":")[0]
    if explicit:
        return Path(os.path.abspath(explicit))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/authz-server")
    xdg = environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "authz-server"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        raise StoreUrlError(
            f"no home directory for the default state store: set {STATE_DIR_VARIABLE} or --state"
        ) from None
    return home / ".local" / "state" / "authz-server"


def default_url(environ: Mapping[str, str] = os.environ) -> str:
    """``--state``'s default: a SQLite file in :func:`state_dir`."""
    return f"sqlite://{state_dir(environ) / STATE_FILE}"
