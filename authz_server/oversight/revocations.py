"""The kill switch: revocations that stop an agent on every worker and replica sharing the store.

A :class:`Revocation` names *one* selector of the verified caller (subject, optionally qualified by
its issuer; OAuth client id; SPIFFE ID; DPoP key thumbprint; token id ``jti``; or everyone),
optionally only some tools, a reason, and an optional end. :class:`Revocations` keeps them in the
state store (kind ``revocation``, the store's TTL ending the timed ones), which every replica
shares. :class:`RevocationIndex` answers "is this caller revoked for this tool?" with a few dict
lookups, and :class:`RevocationWatch` keeps one current through a state ``Mirror``, so that the
per-request check costs no store round trip. See ``docs/oversight.md``.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from authz_server.oversight.errors import RevocationError
from authz_server.state import Mirror, Record, Store, StoreValueError

if TYPE_CHECKING:  # only a type here: the CLI need not load the identity stage
    from authz_server.identity.model import Identity

log = logging.getLogger(__name__)

KIND = "revocation"
SELECTORS = ("subject", "client_id", "spiffe_id", "key_thumbprint", "token_id")
MAX_TEXT = 1024  # a selector value, an issuer, a tool name, a reason
MAX_TOOLS = 256
MAX_SECONDS = 10 * 365 * 86400.0  # the store's longest TTL
ID = re.compile(r"[0-9a-f]{12}")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text such as ``90``, ``45s``, ``30m``, ``2h``, ``7d``,
    ``1h30m``; above 0 and at most ten years."""
    if isinstance(value, bool):
        raise RevocationError("a duration is a number of seconds or a text like 30m, 2h, 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        parts = _DURATION_PART.findall(value.strip())
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    else:
        try:
            seconds = float(value) if isinstance(value, str) else math.nan
        except ValueError:
            seconds = math.nan
        if math.isnan(seconds):
            raise RevocationError(
                "a duration is a number of seconds or a text like 30m, 2h, 7d, 1h30m"
            ) from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise RevocationError("a duration must be above 0 and at most ten years")
    return seconds


def _text(what: str, value: Any, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RevocationError(f"{what} must be a string")
    value = value.strip()
    if required and not value:
        raise RevocationError(f"{what} is required")
    if len(value) > MAX_TEXT:
        raise RevocationError(f"{what} is longer than {MAX_TEXT} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise RevocationError(f"{what} must not contain control characters")
    return value


def _tools(tools: Any) -> tuple[str, ...]:
    if tools is None:
        return ()
    if isinstance(tools, str) or not isinstance(tools, Iterable):
        raise RevocationError("tools must be a list of tool names")
    names = tuple(dict.fromkeys(_text("a tool name", t, required=True) for t in tools))
    if len(names) > MAX_TOOLS:
        raise RevocationError(f"at most {MAX_TOOLS} tools per revocation")
    return names


@dataclass(frozen=True)
class Revocation:
    """One entry of the kill switch. Exactly one of ``subject``, ``client_id``, ``spiffe_id``,
    ``key_thumbprint``, ``token_id`` is non-empty, or ``everyone`` is true; ``issuer`` only
    narrows ``subject``. ``tools`` empty means every request, else only calls of those tools.
    ``expires`` None: until removed."""

    id: str
    subject: str = ""
    issuer: str = ""
    client_id: str = ""
    spiffe_id: str = ""
    key_thumbprint: str = ""
    token_id: str = ""
    everyone: bool = False
    tools: tuple[str, ...] = ()
    reason: str = ""
    created: float = 0.0
    expires: float | None = None
    created_by: str = ""

    def __post_init__(self) -> None:
        chosen = [name for name in SELECTORS if getattr(self, name)]
        if self.everyone:
            chosen.append("everyone")
        if len(chosen) != 1:
            raise RevocationError(
                "a revocation names exactly one of subject, client_id, spiffe_id, "
                f"key_thumbprint, token_id or everyone (got {', '.join(chosen) or 'none'})"
            )
        if self.issuer and not self.subject:
            raise RevocationError("issuer only qualifies a subject: give subject too")
        if not self.reason.strip():
            raise RevocationError("a revocation needs a reason")

    @property
    def selector(self) -> tuple[str, str]:
        """``(field, value)`` of the one selector; ``("everyone", "")`` for everyone."""
        for name in SELECTORS:
            value = getattr(self, name)
            if value:
                return name, value
        return "everyone", ""

    def applies_to(self, tool: str) -> bool:
        return not self.tools or tool in self.tools

    def live(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def to_json(self) -> dict[str, Any]:
        """The CLI's and the admin API's field names, plus id, created, expires, created_by."""
        return {
            "id": self.id,
            "subject": self.subject,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "spiffe_id": self.spiffe_id,
            "key_thumbprint": self.key_thumbprint,
            "token_id": self.token_id,
            "everyone": self.everyone,
            "tools": list(self.tools),
            "reason": self.reason,
            "created": self.created,
            "expires": self.expires,
            "created_by": self.created_by,
        }

    @classmethod
    def from_record(cls, record: Record) -> Revocation:
        """The revocation a store record holds; :class:`RevocationError` for a damaged one."""
        value = record.value
        everyone = value.get("everyone", False)
        if not isinstance(everyone, bool):
            raise RevocationError("everyone must be true or false")
        created = value.get("created", record.created)
        if isinstance(created, bool) or not isinstance(created, int | float):
            created = record.created
        return cls(
            id=record.id,
            reason=_text("reason", value.get("reason"), required=True),
            subject=_text("subject", value.get("subject")),
            issuer=_text("issuer", value.get("issuer")),
            client_id=_text("client_id", value.get("client_id")),
            spiffe_id=_text("spiffe_id", value.get("spiffe_id")),
            key_thumbprint=_text("key_thumbprint", value.get("key_thumbprint")),
            token_id=_text("token_id", value.get("token_id")),
            everyone=everyone,
            tools=_tools(value.get("tools")),
            created=float(created),
            # The store's expiry is the one that removes the record: it is the truth.
            expires=record.expires,
            created_by=_text("created_by", value.get("created_by")),
        )


class Revocations:
    """The revocations in a store: add, list, remove. Every call is one store operation, so
    this is for the CLI and the admin API, not for the request path (see
    :class:`RevocationWatch`)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(
        self,
        *,
        subject: str = "",
        issuer: str = "",
        client_id: str = "",
        spiffe_id: str = "",
        key_thumbprint: str = "",
        token_id: str = "",
        everyone: bool = False,
        tools: Iterable[str] = (),
        for_seconds: float | None = None,
        reason: str,
        by: str = "",
    ) -> Revocation:
        """Store a new revocation (its id is random); timed ones end by the store's TTL."""
        if not isinstance(everyone, bool):
            raise RevocationError("everyone must be true or false")
        ttl = None if for_seconds is None else parse_duration(for_seconds)
        now = time.time()
        draft = Revocation(
            id="",
            reason=_text("reason", reason, required=True),
            subject=_text("subject", subject),
            issuer=_text("issuer", issuer),
            client_id=_text("client_id", client_id),
            spiffe_id=_text("spiffe_id", spiffe_id),
            key_thumbprint=_text("key_thumbprint", key_thumbprint),
            token_id=_text("token_id", token_id),
            everyone=everyone,
            tools=_tools(tools),
            created=now,
            expires=None if ttl is None else now + ttl,
            created_by=_text("by", by),
        )
        value = draft.to_json()
        del value["id"]
        for _ in range(8):
            id = secrets.token_hex(6)
            record = self._store.create(KIND, id, value, state="active", ttl=ttl)
            if record is not None:
                return Revocation.from_record(record)
        raise RevocationError("could not find a free revocation id")  # pragma: no cover

    def from_json(self, body: Mapping[str, Any], *, by: str = "") -> Revocation:
        """Add the revocation an admin API body describes (the CLI's field names; ``for`` is
        seconds or a text like ``30m``). Unknown fields are refused, so a typo such as
        ``subjet`` never turns into a revocation of something else."""
        if not isinstance(body, Mapping):
            raise RevocationError("the body must be a JSON object")
        known = {*SELECTORS, "everyone", "issuer", "tools", "for", "reason"}
        unknown = sorted(str(k)[:40] for k in body if k not in known)
        if unknown:
            raise RevocationError(f"unknown fields: {', '.join(unknown)}")
        duration = body.get("for")
        return self.add(
            subject=body.get("subject", ""),
            issuer=body.get("issuer", ""),
            client_id=body.get("client_id", ""),
            spiffe_id=body.get("spiffe_id", ""),
            key_thumbprint=body.get("key_thumbprint", ""),
            token_id=body.get("token_id", ""),
            everyone=body.get("everyone", False),
            tools=body.get("tools") or (),
            for_seconds=None if duration in (None, "") else parse_duration(duration),
            reason=body.get("reason", ""),
            by=by,
        )

    def list(self) -> list[Revocation]:
        """The live revocations, oldest first (damaged records are logged and left out)."""
        return parse_records(self._store.list(KIND))

    def get(self, id: str) -> Revocation | None:
        if not isinstance(id, str) or not ID.fullmatch(id):
            return None
        record = self._store.get(KIND, id)
        return None if record is None else Revocation.from_record(record)

    def remove(self, id: str) -> bool:
        """End a revocation now; False when no live one has this id."""
        if not isinstance(id, str) or not ID.fullmatch(id):
            return False
        try:
            return self._store.delete(KIND, id)
        except StoreValueError:
            return False


def parse_records(records: Iterable[Record]) -> list[Revocation]:
    """The revocations among ``records``. A record that does not parse (written by a newer
    version with a selector this one does not know, or damaged) is logged and skipped: it
    cannot be matched because what it selects is unknown."""
    found = []
    for record in records:
        try:
            found.append(Revocation.from_record(record))
        except RevocationError as exc:
            log.error("revocation %r in the store is not usable, skipped: %s", record.id, exc)
    return found


@dataclass(frozen=True)
class RevocationIndex:
    """The revocations arranged by selector value, for :meth:`match` in a few dict lookups.
    Immutable: a new index is built when the revocations change."""

    revocations: tuple[Revocation, ...] = ()
    _by: Mapping[str, Mapping[str, tuple[Revocation, ...]]] = field(
        init=False, repr=False, compare=False
    )
    _everyone: tuple[Revocation, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by: dict[str, dict[str, list[Revocation]]] = {name: {} for name in SELECTORS}
        everyone = []
        for revocation in self.revocations:
            name, value = revocation.selector
            if name == "everyone":
                everyone.append(revocation)
            else:
                by[name].setdefault(value, []).append(revocation)
        frozen = {name: {k: tuple(v) for k, v in values.items()} for name, values in by.items()}
        object.__setattr__(self, "_by", frozen)
        object.__setattr__(self, "_everyone", tuple(everyone))

    @classmethod
    def of(cls, revocations: Iterable[Revocation]) -> RevocationIndex:
        return cls(tuple(revocations))

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> RevocationIndex:
        """The index of the revocations among ``records`` (a :class:`Mirror`'s build)."""
        return cls(tuple(parse_records(records)))

    def __len__(self) -> int:
        return len(self.revocations)

    def match(
        self, identity: Identity, tool: str = "", now: float | None = None
    ) -> Revocation | None:
        """The first live revocation that applies to ``identity`` calling ``tool`` (``""`` for
        a request that calls no tool: only revocations without ``tools`` apply), else None.

        Only verified values are compared: a failed verification has every field empty, so it
        can be matched only by ``everyone``."""
        if not self.revocations:
            return None
        now = time.time() if now is None else now
        jti = identity.claims.get("jti", "")
        for name, value in (
            ("subject", identity.subject),
            ("client_id", identity.client_id),
            ("spiffe_id", identity.spiffe_id),
            ("key_thumbprint", identity.key_thumbprint),
            ("token_id", jti if isinstance(jti, str) else ""),
        ):
            if not value:
                continue
            for revocation in self._by[name].get(value, ()):
                if (
                    (not revocation.issuer or revocation.issuer == identity.issuer)
                    and revocation.applies_to(tool)
                    and revocation.live(now)
                ):
                    return revocation
        for revocation in self._everyone:
            if revocation.applies_to(tool) and revocation.live(now):
                return revocation
        return None


EMPTY = RevocationIndex()


class RevocationWatch:
    """A :class:`RevocationIndex` kept current from the store by a background
    :class:`~authz_server.state.Mirror`: a write by any process or replica is seen within
    ``interval`` plus one store round trip.

    :meth:`check` never touches the store. When the mirror has not heard from the store for
    longer than ``max_staleness`` seconds it raises :class:`~authz_server.state.MirrorStale`
    (a :class:`~authz_server.state.StoreUnavailable`) for every check, even when the last index
    it holds is empty: a revocation may have been added since, so the caller fails closed
    (503). The default bound keeps the promise that a new revocation is enforced everywhere
    within 2 seconds, by a denial or by a 503."""

    def __init__(self, store: Store, interval: float = 0.5, max_staleness: float = 2.0) -> None:
        if not math.isfinite(max_staleness) or max_staleness < interval:
            raise RevocationError("max_staleness must be finite and at least the poll interval")
        self._mirror: Mirror[RevocationIndex] = Mirror(
            store, KIND, RevocationIndex.from_records, interval=interval
        )
        self.max_staleness = max_staleness

    @property
    def staleness(self) -> float:
        """Seconds since the store last answered (infinite before the first answer)."""
        return self._mirror.staleness

    def index(self) -> RevocationIndex:
        """The current index; :class:`~authz_server.state.MirrorStale` when stale."""
        return self._mirror.get(self.max_staleness)

    def check(self, identity: Identity, tool: str = "") -> Revocation | None:
        """The revocation that stops this call, or None; raises
        :class:`~authz_server.state.MirrorStale` when the mirror is too old to tell."""
        return self._mirror.get(self.max_staleness).match(identity, tool)

    def refresh(self) -> bool:
        """Poll the store once now (tests, and a first load before serving)."""
        return self._mirror.refresh()

    def start(self) -> RevocationWatch:
        self._mirror.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._mirror.stop(timeout)

    def __enter__(self) -> RevocationWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
