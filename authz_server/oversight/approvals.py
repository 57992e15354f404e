"""Human approval: a call a policy marks with ``approval.Require`` waits until a person grants it,
and a grant lets exactly one matching call through.

An :class:`Approval` is keyed by the verified caller, the MCP method, the target (tool name,
resource URI or prompt name) and a digest of the canonical arguments (:func:`canonical_digest`).
Its id is derived from that key, so identical requests arriving together on different replicas
meet at one record (``store.create`` lets one of them make it). States::

    pending --approve--> approved --consume (exactly one caller)--> used
       \\--reject--> rejected

Every record lives ``ttl`` seconds from the first request, whatever its state; a rejected one
keeps answering the approver's reason until then. A used one is moved aside (to ``ID-xxxxxxxx``)
by the next identical request, which then starts a new pending approval: the next identical call
asks again. See ``docs/oversight.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from authz_server.frozen import thaw
from authz_server.oversight.errors import ApprovalError, ApprovalNotFound, ApprovalNotPending
from authz_server.state import Record, Store

if TYPE_CHECKING:  # only a type here: the CLI need not load the identity stage
    from authz_server.identity.model import Identity

log = logging.getLogger(__name__)

KIND = "approval"
PENDING, APPROVED, REJECTED, USED = "pending", "approved", "rejected", "used"
STATES = (PENDING, APPROVED, REJECTED, USED)
CALLER_FIELDS = ("issuer", "subject", "client_id", "spiffe_id", "method")
MAX_ARGUMENTS_BYTES = 64 * 1024
MAX_TEXT = 4096
MAX_REASON = 1024
# A record some process started moving aside (state "retiring.<token>") and left there for this
# long was abandoned by a crash: another request may finish the move.
RETIRE_STUCK_AFTER = 5.0
_RETIRING = "retiring."
ID = re.compile(r"[0-9a-f]{24}(?:-[0-9a-f]{8})?")
DIGEST = re.compile(r"[0-9a-f]{64}")


def _plain(obj: object) -> object:
    if isinstance(obj, MappingProxyType):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _canonical(value: Any) -> bytes:
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_plain,
        )
    except (TypeError, ValueError, RecursionError):
        raise ApprovalError("the arguments are not a JSON value") from None
    # Lone surrogates (a "\ud800" escape in the request) still give one fixed byte string.
    return text.encode("utf-8", "surrogatepass")


def canonical_digest(arguments: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``arguments``: keys sorted, no spaces, non-ASCII
    kept as UTF-8. Two calls whose arguments differ only in key order or spacing share it."""
    return hashlib.sha256(_canonical(arguments)).hexdigest()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _text(what: str, value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ApprovalError(f"{what} must be a string")
    if len(value) > limit:
        raise ApprovalError(f"{what} is longer than {limit} characters")
    return value


def caller_of(identity: Identity) -> dict[str, str]:
    """The caller mapping of a verified identity (what :meth:`Approvals.request` keys by)."""
    return {
        "issuer": identity.issuer,
        "subject": identity.subject,
        "client_id": identity.client_id,
        "spiffe_id": identity.spiffe_id,
        "method": str(identity.method),
    }


def _caller(caller: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(caller, Mapping):
        raise ApprovalError("the caller must be a mapping")
    return {name: _text(f"caller {name}", caller.get(name, "") or "") for name in CALLER_FIELDS}


def approval_key(caller: Mapping[str, Any], mcp_method: str, target: str, digest: str) -> str:
    """The key of a call: sha256 (hex) over the caller's verified fields, the MCP method, the
    target and the arguments' digest, each in its own JSON slot (no ambiguous joins)."""
    parts = ["authz-server approval v1", _caller(caller), mcp_method, target, digest]
    return hashlib.sha256(_canonical(parts)).hexdigest()


def approval_id(key: str) -> str:
    """The id of the live approval of ``key``: every replica derives the same one."""
    return hashlib.sha256(f"approval id:{key}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Approval:
    """One approval as stored. ``caller`` and ``arguments`` are read-only; :meth:`to_json`
    gives plain JSON. ``decided``/``decided_by``/``decision_reason`` are set by approve or
    reject. Times are seconds since the epoch."""

    id: str
    state: str
    key: str
    caller: Mapping[str, str]
    mcp_method: str
    target: str
    arguments: Any
    reason: str
    created: float
    decided: float | None
    decided_by: str
    decision_reason: str
    expires: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "key": self.key,
            "caller": dict(self.caller),
            "mcp_method": self.mcp_method,
            "target": self.target,
            "arguments": thaw(self.arguments),
            "reason": self.reason,
            "created": self.created,
            "decided": self.decided,
            "decided_by": self.decided_by,
            "decision_reason": self.decision_reason,
            "expires": self.expires,
        }

    @classmethod
    def from_record(cls, record: Record) -> Approval:
        value = record.value
        state = USED if record.state.startswith(_RETIRING) else record.state
        if state not in STATES:
            raise ApprovalError(f"unknown approval state {state[:20]!r}")
        created = value.get("created")
        decided = value.get("decided")
        return cls(
            id=record.id,
            state=state,
            key=_text("key", value.get("key")),
            caller=MappingProxyType(_caller(value.get("caller", {}))),
            mcp_method=_text("mcp_method", value.get("mcp_method")),
            target=_text("target", value.get("target")),
            arguments=_freeze(value.get("arguments")),
            reason=_text("reason", value.get("reason", "")),
            created=float(created) if isinstance(created, int | float) else record.created,
            decided=float(decided) if isinstance(decided, int | float) else None,
            decided_by=_text("decided_by", value.get("decided_by", "")),
            decision_reason=_text("decision_reason", value.get("decision_reason", "")),
            expires=record.expires if record.expires is not None else math.inf,
        )


class Approvals:
    """Approvals in a store. Each method is a few store operations: it runs only for calls a
    policy sent to approval, and for the people deciding them."""

    def __init__(self, store: Store, ttl: float = 600.0) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
            raise ApprovalError("the approval lifetime must be a positive number of seconds")
        self._store = store
        self.ttl = float(ttl)

    canonical_digest = staticmethod(canonical_digest)

    def request(
        self,
        caller: Mapping[str, Any],
        mcp_method: str,
        target: str,
        arguments_digest: str,
        arguments: Any,
        reason: str,
    ) -> Approval:
        """The live approval for this call: the pending, approved or rejected one already there
        (however many replicas ask at once, they share it), else a new pending one."""
        if not isinstance(arguments_digest, str) or not DIGEST.fullmatch(arguments_digest):
            raise ApprovalError("the arguments digest must be a sha256 hex digest")
        mcp_method = _text("mcp_method", mcp_method, 256)
        target = _text("target", target)
        caller = _caller(caller)
        if len(_canonical(arguments)) > MAX_ARGUMENTS_BYTES:
            raise ApprovalError(
                f"the arguments take more than {MAX_ARGUMENTS_BYTES} bytes: clip them first"
            )
        reason = reason[:MAX_REASON] if isinstance(reason, str) else ""
        key = approval_key(caller, mcp_method, target, arguments_digest)
        id = approval_id(key)
        value = {
            "key": key,
            "caller": caller,
            "mcp_method": mcp_method,
            "target": target,
            "arguments": arguments,
            "reason": reason,
            "created": time.time(),
            "decided": None,
            "decided_by": "",
            "decision_reason": "",
        }
        for _ in range(50):
            record = self._store.get(KIND, id)
            if record is None:
                made = self._store.create(KIND, id, value, state=PENDING, ttl=self.ttl)
                if made is not None:
                    return Approval.from_record(made)
                continue  # another replica made it just now: read theirs
            if record.value.get("key") != key:
                raise ApprovalError("approval id collision; refusing to share a record")
            if record.state in (PENDING, APPROVED, REJECTED):
                return Approval.from_record(record)
            self._retire(record)
        raise ApprovalError("the approval record kept changing; try again")

    def _retire(self, record: Record) -> None:
        """Move a used record out of its key's place (to ``ID-xxxxxxxx``, same expiry) so the
        next identical call gets a new pending approval. One mover wins the transition to a
        private state; the others wait for it, or take over a move abandoned by a crash."""
        if record.state.startswith(_RETIRING) and time.time() - record.updated < RETIRE_STUCK_AFTER:
            time.sleep(0.01)
            return
        mine = f"{_RETIRING}{secrets.token_hex(8)}"
        if self._store.transition(KIND, record.id, record.state, mine) is None:
            return
        taken = self._store.take(KIND, record.id)
        if taken is None:
            return
        left = (taken.expires or 0.0) - time.time()
        if taken.state != mine:  # expired and made again between the two steps: put it back
            if left > 0:
                self._store.create(KIND, taken.id, taken.value, state=taken.state, ttl=left)
            return
        if left > 0:
            archive = f"{taken.id}-{secrets.token_hex(4)}"
            self._store.create(KIND, archive, taken.value, state=USED, ttl=left)

    def list(self, state: str | None = PENDING) -> list[Approval]:
        """Live approvals in ``state`` (None: all), oldest first."""
        if state is not None and state not in STATES:
            raise ApprovalError(f"state must be one of {', '.join(STATES)}")
        found = []
        for record in self._store.list(KIND):
            try:
                approval = Approval.from_record(record)
            except ApprovalError as exc:
                log.error("approval %r in the store is not usable, skipped: %s", record.id, exc)
                continue
            if state is None or approval.state == state:
                found.append(approval)
        return found

    def get(self, id: str) -> Approval | None:
        record = self._record(id)
        return None if record is None else Approval.from_record(record)

    def approve(self, id: str, by: str) -> Approval:
        """Grant a pending approval; :class:`ApprovalNotFound` or :class:`ApprovalNotPending`."""
        return self._decide(id, APPROVED, by, "")

    def reject(self, id: str, by: str, reason: str = "") -> Approval:
        """Refuse a pending approval; the caller is denied with ``reason`` until it expires."""
        return self._decide(id, REJECTED, by, reason)

    def consume(self, key: str) -> Approval | None:
        """Use the approved approval of ``key``: of any number of concurrent callers on any
        replica, exactly one gets it (now ``used``); the others, and every caller when there is
        no approved one, get None."""
        if not isinstance(key, str) or not DIGEST.fullmatch(key):
            return None
        id = approval_id(key)
        record = self._store.transition(KIND, id, APPROVED, USED)
        if record is None:
            return None
        if record.value.get("key") != key:  # another key's record (a collision): give it back
            self._store.transition(KIND, id, USED, APPROVED)
            return None
        return Approval.from_record(record)

    def _record(self, id: str) -> Record | None:
        if not isinstance(id, str) or not ID.fullmatch(id):
            return None
        return self._store.get(KIND, id)

    def _decide(self, id: str, to: str, by: str, reason: str) -> Approval:
        by = _text("by", by or "", 256)
        reason = _text("reason", reason or "", MAX_REASON)
        record = self._record(id)
        for _ in range(2):
            if record is None:
                raise ApprovalNotFound(f"no live approval {id[:64]!r}")
            current = Approval.from_record(record)
            if current.state != PENDING:
                raise ApprovalNotPending(f"approval {id} is {current.state}, not pending")
            value = {
                **record.plain(),
                "decided": time.time(),
                "decided_by": by,
                "decision_reason": reason,
            }
            moved = self._store.transition(KIND, id, PENDING, to, value=value)
            if moved is not None:
                return Approval.from_record(moved)
            record = self._record(id)  # decided by someone else meanwhile: say how
        raise ApprovalNotPending(f"approval {id} was decided meanwhile")  # pragma: no cover
