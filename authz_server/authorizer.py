"""The seam between the transport (gRPC server, CLI) and the decision pipeline.

The server only needs something that turns a :class:`Request` into a :class:`Decision` and says
whether it can serve; everything about decoding and policies stays behind this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from authz_server.decision import Decision
from authz_server.request import Request


@dataclass(frozen=True, slots=True)
class Status:
    """``serving``: a policy set is loaded and enforced (gRPC health SERVING).
    ``ready``: serving and the last load succeeded (``/readyz`` 200)."""

    serving: bool
    ready: bool
    detail: str = ""


class Authorizer(Protocol):
    def check(self, request: Request) -> Decision:
        """Decide; should never raise."""

    def internal_error(self, error: Exception, request: Request | None = None) -> Decision:
        """The denial for a check the transport could not read or answer (its adapter raised),
        or whose ``check`` raised: recorded like any decision (id, metrics, audit)."""

    def filter_list(
        self, request: Request, result: dict[str, Any], method: str
    ) -> tuple[dict[str, Any], int]:
        """A list result (``tools/list`` ...) answering ``request``, without the entries the
        caller may never use, and how many were removed. Should not raise; if it does, the
        transport refuses the response (fail closed)."""

    def status(self) -> Status: ...

    def start(self) -> None:
        """Load what is needed to decide and start background work (e.g. policy reload)."""

    def stop(self) -> None: ...
