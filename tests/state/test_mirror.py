"""The mirror: one build per change, expiry without a write, and failing closed."""

from __future__ import annotations

import time

import pytest

from authz_server.state import Mirror, MirrorStale, Record, Store, StoreValueError


class CountingBuild:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, records: tuple[Record, ...]) -> frozenset[str]:
        self.calls += 1
        return frozenset(r.id for r in records)


def test_the_snapshot_is_rebuilt_only_when_the_kind_changes(store: Store) -> None:
    build = CountingBuild()
    mirror = Mirror(store, "revocation", build)
    assert mirror.refresh() is True and build.calls == 1
    assert mirror.get(max_staleness=1) == frozenset()
    store.put("approval", "elsewhere", {})
    store.claim("dpop", "jti", 60)
    assert mirror.refresh() is False and build.calls == 1
    store.put("revocation", "r1", {"subject": "a"})
    assert mirror.refresh() is True and build.calls == 2
    assert mirror.get(max_staleness=1) == {"r1"}
    snapshot = mirror.snapshot
    assert snapshot is not None and snapshot.version == store.version("revocation")
    assert [r.id for r in snapshot.records] == ["r1"]


def test_an_expired_record_leaves_the_snapshot_without_any_write(store: Store) -> None:
    store.put("revocation", "brief", {"subject": "a"}, ttl=0.3)
    store.put("revocation", "lasting", {"subject": "b"})
    with Mirror(store, "revocation", lambda rs: {r.id for r in rs}, interval=0.05) as mirror:
        assert mirror.get(max_staleness=1) == {"brief", "lasting"}
        deadline = time.monotonic() + 3
        while mirror.get(max_staleness=1) != {"lasting"}:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_nothing_is_served_before_the_first_load(store: Store) -> None:
    mirror: Mirror[tuple[Record, ...]] = Mirror(store, "revocation")
    assert mirror.snapshot is None and mirror.staleness == float("inf")
    with pytest.raises(MirrorStale, match="never loaded"):
        mirror.get(max_staleness=3600)


def test_a_failing_build_keeps_the_last_snapshot_and_goes_stale(store: Store) -> None:
    def build(records: tuple[Record, ...]) -> int:
        if any(r.id == "poison" for r in records):
            raise RuntimeError("caller bug")
        return len(records)

    with Mirror(store, "revocation", build, interval=0.05) as mirror:
        assert mirror.get(max_staleness=1) == 0
        store.put("revocation", "poison", {})
        time.sleep(0.4)
        assert mirror.get(max_staleness=60) == 0  # the old value, for a caller that accepts it
        with pytest.raises(MirrorStale):
            mirror.get(max_staleness=0.3)
        store.delete("revocation", "poison")
        deadline = time.monotonic() + 3
        while True:
            try:
                if mirror.get(max_staleness=0.3) == 0:
                    break
            except MirrorStale:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_a_mirror_polls_at_least_once_a_second(store: Store) -> None:
    with pytest.raises(StoreValueError):
        Mirror(store, "revocation", interval=5)
    with pytest.raises(StoreValueError):
        Mirror(store, "Not A Kind")
