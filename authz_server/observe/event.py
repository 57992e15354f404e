"""The record of one finished decision, handed to every observer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from authz_server.decision import Decision
from authz_server.identity.model import Identity
from authz_server.mcp.message import Decoded
from authz_server.request import Request


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    decision_id: str
    # Wall-clock time the check started (seconds since the epoch) and how long it took.
    started: float
    seconds: float
    request: Request
    decoded: Decoded
    decision: Decision
    # The caller as the identity stage verified it; None when the policy set has no
    # Authentication document (or the check failed before the stage ran).
    identity: Identity | None = None


class Observer(Protocol):
    """Sees every decision after it is made; must be cheap and must never raise."""

    def observe(self, event: DecisionEvent) -> None: ...
