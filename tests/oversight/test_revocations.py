"""Revocations as an operator makes them and as the request path matches them: each selector
stops exactly the callers it names (not a neighbouring value, not the same value in another
field), issuers, tools and expiry narrow it, and bad input is refused before anything is stored."""

from __future__ import annotations

import time
from typing import Any

import pytest

from authz_server.identity.model import Identity, Method, Reason
from authz_server.oversight import (
    Revocation,
    RevocationError,
    RevocationIndex,
    Revocations,
    parse_duration,
)
from authz_server.state import Store

ISSUER = "https://idp.example.com"
CALLER = {
    "subject": "agent-7",
    "client_id": "ci-bot",
    "spiffe_id": "spiffe://example.org/ns/ci/sa/bot",
    "key_thumbprint": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
    "token_id": "jti-0001",
}


def caller(**changes: str) -> Identity:
    """A verified caller with every selector field set (``token_id`` is the ``jti`` claim)."""
    fields = {**CALLER, "issuer": ISSUER, **changes}
    return Identity(
        authenticated=True,
        method=Method.DPOP,
        issuer=fields["issuer"],
        subject=fields["subject"],
        client_id=fields["client_id"],
        spiffe_id=fields["spiffe_id"],
        key_thumbprint=fields["key_thumbprint"],
        claims={"jti": fields["token_id"], "sub": fields["subject"]},
    )


def index_of(store: Store) -> RevocationIndex:
    return RevocationIndex.of(Revocations(store).list())


@pytest.mark.parametrize("selector", sorted(CALLER))
def test_each_selector_matches_its_value_and_not_its_neighbours(
    store: Store, selector: str
) -> None:
    value = CALLER[selector]
    made = Revocations(store).add(**{selector: value}, reason="compromised")
    index = index_of(store)
    assert index.match(caller(), "merge_pull_request") == made
    assert index.match(caller(), "") == made  # a request that calls no tool is stopped too
    for neighbour in (value + "0", value[:-1], value.upper(), " " + value):
        assert index.match(caller(**{selector: neighbour}), "merge") is None, neighbour
    # The same text in every other field does not match: only the named field counts.
    others = {name: value for name in CALLER if name != selector}
    assert index.match(caller(**others, **{selector: "someone-else"}), "merge") is None


def test_an_issuer_narrows_a_subject_to_that_issuer(store: Store) -> None:
    revocations = Revocations(store)
    narrow = revocations.add(subject="agent-7", issuer=ISSUER, reason="that IdP's agent-7")
    index = index_of(store)
    assert index.match(caller(), "x") == narrow
    assert index.match(caller(issuer="https://other-idp.example.com"), "x") is None
    wide = revocations.add(subject="agent-7", reason="agent-7 of every issuer")
    index = index_of(store)
    assert index.match(caller(issuer="https://other-idp.example.com"), "x") == wide
    assert index.match(caller(), "x") in (narrow, wide)


def test_tools_limit_a_revocation_to_calls_of_those_tools(store: Store) -> None:
    revocations = Revocations(store)
    merge = revocations.add(client_id="ci-bot", tools=["merge_pull_request"], reason="no merges")
    delete = revocations.add(client_id="ci-bot", tools=["delete_file"], reason="no deletes")
    index = index_of(store)
    assert index.match(caller(), "merge_pull_request") == merge
    assert index.match(caller(), "delete_file") == delete
    for other in ("merge_pull_requests", "create_pull_request", "Merge_pull_request", ""):
        assert index.match(caller(), other) is None, other


def test_everyone_stops_every_caller_even_unauthenticated_and_may_be_limited_to_tools(
    store: Store,
) -> None:
    revocations = Revocations(store)
    deploys = revocations.add(everyone=True, tools=["deploy"], reason="deploy freeze")
    index = index_of(store)
    anonymous = Identity.failure(Reason.MISSING, "no credential")
    assert index.match(anonymous, "deploy") == deploys
    assert index.match(caller(), "deploy") == deploys
    assert index.match(caller(), "merge") is None
    everything = revocations.add(everyone=True, reason="incident 42")
    index = index_of(store)
    assert index.match(anonymous, "merge") == everything
    assert index.match(caller(), "") == everything


def test_a_failed_verification_matches_no_selector_but_everyone(store: Store) -> None:
    """A refused token's claims are never looked at: an attacker presenting a forged token with
    a revoked subject is refused by identity, not "matched" here; and an empty field matches
    nothing."""
    for selector, value in CALLER.items():
        Revocations(store).add(**{selector: value}, reason="r")
    failed = Identity.failure(Reason.BAD_SIGNATURE, "signature does not verify")
    assert index_of(store).match(failed, "merge") is None


def test_a_timed_revocation_stops_matching_at_its_end_and_leaves_the_store(store: Store) -> None:
    revocations = Revocations(store)
    timed = revocations.add(token_id="jti-0001", for_seconds=1.0, reason="this token")
    assert timed.expires is not None and timed.expires - timed.created == pytest.approx(
        1.0, abs=0.5
    )
    index = index_of(store)
    assert index.match(caller(), "x") == timed
    time.sleep(max(0.0, timed.expires - time.time()) + 0.05)
    assert index.match(caller(), "x") is None  # the index itself ends it, before any refresh
    assert revocations.list() == []


def test_until_removed_and_remove_ends_it(store: Store) -> None:
    revocations = Revocations(store)
    made = revocations.add(spiffe_id=CALLER["spiffe_id"], reason="workload compromised", by="ops")
    assert made.expires is None and made.created_by == "ops"
    assert revocations.list() == [made] and revocations.get(made.id) == made
    assert revocations.remove(made.id) is True
    assert revocations.list() == [] and index_of(store).match(caller(), "x") is None
    assert revocations.remove(made.id) is False
    assert revocations.remove("../../etc") is False


def test_to_json_uses_the_cli_field_names(store: Store) -> None:
    made = Revocations(store).add(
        subject="agent-7", issuer=ISSUER, tools=["a", "b", "a"], for_seconds="2h", reason="r"
    )
    body = made.to_json()
    assert set(body) == {
        "id", "subject", "issuer", "client_id", "spiffe_id", "key_thumbprint", "token_id",
        "everyone", "tools", "reason", "created", "expires", "created_by",
    }  # fmt: skip
    assert (body["subject"], body["issuer"], body["tools"], body["everyone"]) == (
        "agent-7", ISSUER, ["a", "b"], False,
    )  # fmt: skip
    assert body["expires"] - body["created"] == pytest.approx(7200, abs=1)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"reason": "r"}, "exactly one"),
    ({"subject": "a", "client_id": "b", "reason": "r"}, "exactly one"),
    ({"subject": "a", "everyone": True, "reason": "r"}, "exactly one"),
    ({"client_id": "b", "issuer": ISSUER, "reason": "r"}, "issuer only qualifies"),
    ({"subject": "a", "reason": ""}, "reason"),
    ({"subject": "a", "reason": "   "}, "reason"),
    ({"subject": "a", "reason": "r", "for_seconds": 0}, "above 0"),
    ({"subject": "a", "reason": "r", "for_seconds": "soon"}, "duration"),
    ({"subject": "a", "reason": "r", "tools": "merge"}, "list of tool names"),
    ({"subject": "a", "reason": "r", "tools": [""]}, "tool name"),
    ({"subject": "a\x1b[2J", "reason": "r"}, "control characters"),
    ({"subject": "a" * 2000, "reason": "r"}, "longer than"),
    ({"everyone": "yes", "reason": "r"}, "true or false"),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_bad_revocations_are_refused_and_nothing_is_stored(
    store: Store, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(RevocationError, match=message):
        Revocations(store).add(**fields)
    assert store.list("revocation") == ()


def test_from_json_reads_the_admin_api_body(store: Store) -> None:
    revocations = Revocations(store)
    made = revocations.from_json(
        {"client_id": "ci-bot", "tools": ["deploy"], "for": "30m", "reason": "freeze"}, by="alice"
    )
    assert (made.client_id, made.tools, made.created_by) == ("ci-bot", ("deploy",), "alice")
    assert made.expires is not None and made.expires - made.created == pytest.approx(1800, abs=1)
    seconds = revocations.from_json({"everyone": True, "for": 90, "reason": "r"})
    assert seconds.expires is not None and seconds.expires - seconds.created == pytest.approx(
        90, abs=1
    )
    forever = revocations.from_json({"token_id": "j", "for": None, "reason": "r"})
    assert forever.expires is None
    for body, message in (
        ({"subjet": "agent-7", "reason": "r"}, "unknown fields: subjet"),
        ({"subject": 7, "reason": "r"}, "must be a string"),
        ({"subject": "a", "reason": "r", "for": "1 week"}, "duration"),
        (["subject", "a"], "JSON object"),
    ):
        with pytest.raises(RevocationError, match=message):
            revocations.from_json(body)  # type: ignore[arg-type]
    assert {r.id for r in revocations.list()} == {made.id, seconds.id, forever.id}


def test_a_damaged_record_is_skipped_not_fatal(store: Store) -> None:
    store.put("revocation", "damaged", {"subjet": "agent-7", "reason": "r"})
    good = Revocations(store).add(subject="agent-7", reason="r")
    assert Revocations(store).list() == [good]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1h30m", 5400),
     ("0.5s", 0.5), (120, 120)],
)  # fmt: skip
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "m", "1w", "-5", "inf", "nan", "30 m", True, 0, 11 * 365 * 86400]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(RevocationError):
        parse_duration(text)


def test_a_revocation_value_checks_itself() -> None:
    with pytest.raises(RevocationError, match="exactly one"):
        Revocation(id="x", reason="r")
    assert Revocation(id="x", everyone=True, reason="r").selector == ("everyone", "")
