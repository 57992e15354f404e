"""Every store operation, on SQLite and on a real Redis (the ``backend`` fixture parametrises)."""

from __future__ import annotations

import json
import math
import time

import pytest

from authz_server.state import Record, Store, StoreValueError, open_store
from authz_server.state.sqlite_store import SqliteStore
from authz_server.state.url import parse_url

from .inspect_store import stored_rows

SECRET = "value-that-must-not-leak"


def test_claim_wins_once_until_it_expires(store: Store) -> None:
    assert store.claim("dpop", "jti-1", 0.3) is True
    assert store.claim("dpop", "jti-1", 0.3) is False
    assert store.claim("dpop", "jti-2", 0.3) is True
    assert store.claim("other", "jti-1", 0.3) is True
    time.sleep(0.4)
    assert store.claim("dpop", "jti-1", 60) is True
    assert store.claim("dpop", "jti-1", 60) is False


def test_counter_window_starts_at_the_first_increment_and_does_not_slide(store: Store) -> None:
    assert store.incr("rate", "agent-a", 0.4) == 1
    assert store.incr("rate", "agent-a", 0.4, 5) == 6
    assert store.incr("rate", "agent-b", 0.4) == 1
    time.sleep(0.25)
    assert store.incr("rate", "agent-a", 0.4) == 7  # does not restart the window
    time.sleep(0.25)
    assert store.incr("rate", "agent-a", 0.4) == 1


def test_put_get_list_delete(store: Store) -> None:
    assert store.get("revocation", "r1") is None
    assert store.list("revocation") == ()
    first = store.put("revocation", "r1", {"subject": "agent-7", "tools": ["merge"]}, state="on")
    second = store.put("revocation", "r2", {"everyone": True}, ttl=60)
    store.put("approval", "a1", {"tool": "delete_file"})
    assert first.kind == "revocation" and first.id == "r1" and first.state == "on"
    assert first.created == first.updated and first.expires is None
    assert second.expires is not None and second.expires == pytest.approx(time.time() + 60, abs=5)
    assert store.get("revocation", "r1") == first
    assert store.get("revocation", "r2") == second
    assert store.list("revocation") == (first, second)
    assert [r.id for r in store.list("approval")] == ["a1"]
    assert store.delete("revocation", "r1") is True
    assert store.delete("revocation", "r1") is False
    assert store.get("revocation", "r1") is None
    assert store.list("revocation") == (second,)


def test_put_replaces_create_does_not(store: Store) -> None:
    store.put("approval", "a1", {"n": 1}, state="pending")
    replaced = store.put("approval", "a1", {"n": 2}, state="approved")
    assert store.get("approval", "a1") == replaced
    assert replaced.plain() == {"n": 2}
    assert store.create("approval", "a1", {"n": 3}) is None
    assert store.get("approval", "a1") == replaced
    made = store.create("approval", "a2", {"n": 4}, state="pending", ttl=0.2)
    assert made is not None and store.get("approval", "a2") == made
    time.sleep(0.3)  # an expired record does not block a new one
    again = store.create("approval", "a2", {"n": 5}, state="pending")
    assert again is not None and again.plain() == {"n": 5} and again.expires is None


def test_transition_only_from_the_expected_state(store: Store) -> None:
    created = store.put("approval", "a1", {"tool": "merge"}, state="pending", ttl=60)
    assert store.transition("approval", "a1", "approved", "used") is None
    assert store.transition("approval", "missing", "pending", "approved") is None
    approved = store.transition("approval", "a1", "pending", "approved", value={"by": "alice"})
    assert approved is not None
    assert (approved.state, approved.plain(), approved.created) == (
        "approved",
        {"by": "alice"},
        created.created,
    )
    assert approved.updated >= created.updated and approved.expires == created.expires
    assert store.get("approval", "a1") == approved
    assert store.transition("approval", "a1", "pending", "approved") is None
    used = store.transition("approval", "a1", "approved", "used")
    assert used is not None and used.plain() == {"by": "alice"}  # the value is kept
    assert store.transition("approval", "a1", "approved", "used") is None


def test_take_returns_the_record_once(store: Store) -> None:
    record = store.put("approval", "a1", {"tool": "merge"}, state="approved")
    assert store.take("approval", "a1") == record
    assert store.take("approval", "a1") is None
    assert store.get("approval", "a1") is None
    assert store.list("approval") == ()


def test_expired_records_are_gone_for_every_operation(store: Store) -> None:
    store.put("revocation", "short", {"subject": "a"}, state="on", ttl=0.2)
    lasting = store.put("revocation", "long", {"subject": "b"}, state="on", ttl=60)
    assert len(store.list("revocation")) == 2
    time.sleep(0.3)
    assert store.get("revocation", "short") is None
    assert store.list("revocation") == (lasting,)
    assert store.transition("revocation", "short", "on", "off") is None
    assert store.take("revocation", "short") is None
    assert store.delete("revocation", "short") is False


def test_version_moves_on_every_write_and_only_then(store: Store) -> None:
    seen = [store.version("approval")]

    def moved() -> bool:
        seen.append(store.version("approval"))
        return seen[-1] != seen[-2]

    store.put("approval", "a1", {}, state="pending")
    assert moved()
    store.get("approval", "a1"), store.list("approval")
    assert store.transition("approval", "a1", "approved", "used") is None
    assert store.create("approval", "a1", {}) is None
    assert store.take("approval", "nothing") is None
    store.put("revocation", "r1", {})  # another kind
    store.claim("dpop", "j", 10), store.incr("rate", "k", 10)
    assert not moved()
    for write in (
        lambda: store.create("approval", "a2", {}),
        lambda: store.transition("approval", "a1", "pending", "approved"),
        lambda: store.put("approval", "a1", {"again": 1}),
        lambda: store.take("approval", "a1"),
        lambda: store.delete("approval", "a2"),
    ):
        write()
        assert moved()
    assert len(set(seen)) == len(seen) - 1  # every write gave a new number


def test_values_round_trip_and_are_read_only(store: Store) -> None:
    value = {
        "text": 'ünïcode ✓ "quoted" \n',
        "int": 2**62,
        "float": 0.1,
        "nested": {"list": [1, {"deep": [None, True, False]}], "empty": {}},
    }
    store.put("approval", "a1", value)
    record = store.get("approval", "a1")
    assert record is not None and record.plain() == value
    with pytest.raises(TypeError):
        record.value["text"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        record.value["nested"]["list"][0] = 2  # type: ignore[index]
    # A frozen value is accepted back, e.g. a record's value passed to put again.
    assert store.put("approval", "a2", record.value).plain() == value


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.claim("Bad NS", "k", 1), "namespace must be"),
        (lambda s: s.claim("dpop", "", 1), "key must be"),
        (lambda s: s.claim("dpop", "k" * 513, 1), "key must be"),
        (lambda s: s.claim("dpop", "a\x00b", 1), "NUL"),
        (lambda s: s.claim("dpop", "k", 0), "ttl must be"),
        (lambda s: s.claim("dpop", "k", -1), "ttl must be"),
        (lambda s: s.claim("dpop", "k", math.nan), "ttl must be"),
        (lambda s: s.claim("dpop", "k", True), "ttl must be"),
        (lambda s: s.incr("rate", "k", 1e12), "ttl must be"),
        (lambda s: s.put("approval", "a", {"x": {SECRET}}), "must be JSON"),
        (lambda s: s.put("approval", "a", {"x": math.inf}), "must be JSON"),
        (lambda s: s.put("approval", "a", [SECRET]), "must be a mapping"),  # type: ignore[arg-type]
        (lambda s: s.put("approval", "a", {}, state="Pending!"), "state must be"),
        (lambda s: s.put("approval", "a", {}, ttl=0), "ttl must be"),
        (lambda s: s.put("kind:x", "a", {}), "kind must be"),
        (lambda s: s.transition("approval", "a", "ok", "x" * 65), "state must be"),
        (lambda s: s.get("approval", SECRET * 40), "id must be"),
    ],
)
def test_bad_input_is_refused_without_quoting_it(store: Store, call, message: str) -> None:
    with pytest.raises(StoreValueError, match=message) as caught:
        call(store)
    assert SECRET not in str(caught.value)


def test_expired_entries_are_purged(store_url: str, backend: str) -> None:
    store = (
        SqliteStore(parse_url(store_url), purge_interval=0)
        if backend == "sqlite"
        else open_store(store_url)
    )
    with store:
        # Long enough that none expires while the 90 writes are made on a busy machine.
        ttl = 1.5
        for i in range(30):
            store.claim("dpop", f"jti-{i}", ttl)
            store.incr("rate", f"agent-{i}", ttl)
            store.put("approval", f"a{i}", {"i": i}, ttl=ttl)
        store.put("revocation", "kept", {})
        assert stored_rows(store) >= 91
        time.sleep(ttl + 0.1)
        assert store.claim("dpop", "fresh", 60)  # SQLite purges on a write
        assert [r.id for r in store.list("approval")] == []  # Redis drops expired index entries
        assert stored_rows(store) == 2  # "fresh" and "kept"


def test_health(store: Store) -> None:
    health = store.health()
    assert health.ok and health.backend in ("sqlite", "redis")
    store.ping()


def test_records_are_plain_frozen_values() -> None:
    record = Record("k", "i", "s", {}, 1.0, 1.0, None)
    with pytest.raises(AttributeError):
        record.state = "t"  # type: ignore[misc]
    assert not record.expired(1e12) and Record("k", "i", "s", {}, 1, 1, 5.0).expired(5.0)
    assert json.loads(json.dumps(Record("k", "i", "s", {"a": 1}, 1, 1).plain())) == {"a": 1}
