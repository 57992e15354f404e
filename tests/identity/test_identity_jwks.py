"""JWK sets fetched in the background from a JWKS endpoint served on loopback by the test:
rotation, the unknown-kid refetch and its rate limit, outages, files, metrics hooks."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_server.identity import (
    JwksSource,
    KeyStore,
    Reason,
    Verifier,
    parse_authentication,
)
from authz_server.identity.jwks import MAX_DOCUMENT, load_key_set, read_source
from tests.identity.helpers import (
    AUDIENCE,
    ISSUER,
    Checked,
    Clock,
    JwksServer,
    MemoryClaims,
    ec_key,
    ed_key,
    request,
    rsa_key,
    spec,
    token,
)

WAIT = 10.0


class Recorder:
    """The metrics observer: what a Prometheus adapter would count."""

    def __init__(self) -> None:
        self.fetches: list[tuple[str, bool]] = []
        self.counts: dict[str, int] = {}

    def fetched(self, source: str, ok: bool) -> None:
        self.fetches.append((source, ok))

    def key_count(self, source: str, count: int) -> None:
        self.counts[source] = count


class Monotonic:
    """A monotonic clock the test moves (drives the refetch rate limit)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[JwksServer]:
    first = rsa_key("k1")
    srv = JwksServer([first])
    srv.first = first  # type: ignore[attr-defined]
    yield srv
    srv.close()


def uri_config(url: str, refresh: str = "1h", extra: list[dict[str, Any]] | None = None) -> Any:
    raw = spec([])
    raw["issuers"][0]["jwks"] = {"uri": url, "refresh": refresh}
    raw["issuers"].extend(extra or [])
    return parse_authentication(raw)


class Running:
    def __init__(self, config: Any, **kwargs: Any) -> None:
        self.clock = Clock()
        self.recorder = Recorder()
        self.store = KeyStore.from_config(config, observer=self.recorder, **kwargs)
        self.verifier = Checked(
            Verifier(config, self.store, MemoryClaims(self.clock), clock=self.clock)
        )

    def verify(self, text: str) -> Any:
        return self.verifier.verify(request(f"Bearer {text}"))


@pytest.fixture
def running(server: JwksServer) -> Iterator[Running]:
    r = Running(uri_config(server.url))
    r.store.start()
    assert r.store.wait_ready(WAIT)
    yield r
    r.store.close()


def test_keys_arrive_in_the_background(running: Running, server: JwksServer) -> None:
    assert running.verify(token(server.first)).authenticated  # type: ignore[attr-defined]
    assert running.recorder.fetches == [(ISSUER, True)]
    assert running.recorder.counts == {ISSUER: 1}
    assert running.store.unready() == ()


def test_a_newly_published_key_is_accepted_at_once_through_the_refetch(
    running: Running, server: JwksServer
) -> None:
    rotated = ec_key("k2")
    server.publish([server.first, rotated])  # type: ignore[attr-defined]
    before = running.store.generation(ISSUER)
    # the request that meets the new kid is refused without waiting for the network ...
    assert running.verify(token(rotated)).error == Reason.UNKNOWN_KEY
    # ... and the next one, once the refetch it triggered landed (not the 1 h refresh), passes
    assert running.store.wait_for_fetch(ISSUER, before, WAIT)
    assert running.verify(token(rotated)).authenticated
    assert running.recorder.counts[ISSUER] == 2


def test_the_endpoint_going_down_keeps_the_old_keys(running: Running, server: JwksServer) -> None:
    old = token(server.first)  # type: ignore[attr-defined]
    server.down = True
    assert running.store.refresh(ISSUER) is False
    # an unknown kid during the outage must not wipe the cache either (PyJWT's failure)
    before = running.store.generation(ISSUER)
    assert running.verify(token(ec_key("random"))).error == Reason.UNKNOWN_KEY
    assert running.store.wait_for_fetch(ISSUER, before, WAIT)
    assert running.verify(old).authenticated
    assert running.recorder.fetches[-1] == (ISSUER, False)
    assert running.store.unready() == ()


def test_the_scheduled_refresh_picks_up_rotations(server: JwksServer) -> None:
    r = Running(uri_config(server.url, refresh="1s"))
    r.store.start()
    try:
        assert r.store.wait_ready(WAIT)
        rotated = ed_key("k3")
        server.publish([rotated])
        generation = r.store.generation(ISSUER)
        assert r.store.wait_for_fetch(ISSUER, generation, WAIT)
        assert r.verify(token(rotated)).authenticated
        # the retired key is gone with the set that dropped it
        assert r.verify(token(server.first)).error == Reason.UNKNOWN_KEY  # type: ignore[attr-defined]
    finally:
        r.store.close()


def test_one_early_refetch_per_issuer_per_30_seconds() -> None:
    clock = Monotonic()
    store = KeyStore(
        {"a": JwksSource(uri="https://a.example/j"), "b": JwksSource(uri="https://b.example/j")},
        clock=clock,
    )
    assert store.request_refetch("a")
    assert not store.request_refetch("a")
    assert store.request_refetch("b")  # another issuer has its own allowance
    clock.now += 29.9
    assert not store.request_refetch("a")
    clock.now += 0.1
    assert store.request_refetch("a")
    assert not store.request_refetch("unknown-issuer")


def test_unknown_kids_do_not_hammer_the_endpoint(server: JwksServer) -> None:
    clock = Monotonic()
    r = Running(uri_config(server.url), clock=clock)
    r.store.start()
    try:
        assert r.store.wait_ready(WAIT)
        hits = server.hits
        generation = r.store.generation(ISSUER)
        assert r.verify(token(ec_key("x1"))).error == Reason.UNKNOWN_KEY
        assert r.store.wait_for_fetch(ISSUER, generation, WAIT)
        assert server.hits == hits + 1
        for i in range(20):
            assert r.verify(token(ec_key(f"y{i}"))).error == Reason.UNKNOWN_KEY
        assert not r.store.request_refetch(ISSUER)  # still inside the 30 s
        clock.now += 30
        generation = r.store.generation(ISSUER)
        assert r.verify(token(ec_key("z"))).error == Reason.UNKNOWN_KEY
        assert r.store.wait_for_fetch(ISSUER, generation, WAIT)
        assert server.hits == hits + 2
    finally:
        r.store.close()


def test_garbage_tokens_cannot_drive_refetches(running: Running, server: JwksServer) -> None:
    # expired, unconfigured issuer, wrong typ or alg, no usable kid: refused before any lookup
    key = ec_key("unknown")
    for text in (
        token(key, exp=1),
        token(key, iss="https://evil.example.com"),
        token(key, header={"typ": "JWT"}),
        token(key, header={"alg": "ES512"}),
        token(key, header={"kid": None}),
        token(key, header={"kid": ""}),
        token(key, header={"kid": "k" * 257}),
    ):
        assert not running.verify(text).authenticated
    assert running.store.request_refetch(ISSUER)  # the allowance is untouched


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_keys_that_never_arrived_fail_that_issuer_only(tmp_path: Path) -> None:
    other = ec_key("other")
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    config = uri_config(
        dead,
        extra=[
            {
                "issuer": "https://other.example.com",
                "audiences": [AUDIENCE],
                "jwks": {"inline": {"keys": [other.jwk()]}},
            }
        ],
    )
    r = Running(config)
    r.store.start()
    try:
        assert r.store.wait_for_fetch(ISSUER, 0, WAIT)
        identity = r.verify(token(rsa_key("k1")))
        assert identity.error == Reason.KEYS_UNAVAILABLE and identity.unavailable
        assert r.verify(token(other, iss="https://other.example.com")).authenticated
        assert r.store.unready() == (ISSUER,)
        assert (ISSUER, False) in r.recorder.fetches
    finally:
        r.store.close()


def test_a_file_source_is_reread(tmp_path: Path) -> None:
    first, second = rsa_key("f1"), ec_key("f2")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [first.jwk()]}))
    raw = spec([])
    raw["issuers"][0]["jwks"] = {"file": "jwks.json", "refresh": "1h"}
    r = Running(parse_authentication(raw, base_dir=tmp_path))
    r.store.start()
    try:
        assert r.store.wait_ready(WAIT)
        assert r.verify(token(first)).authenticated
        path.write_text(json.dumps({"keys": [second.jwk()]}))
        assert r.store.refresh(ISSUER)
        assert r.verify(token(second)).authenticated
        # a key withdrawn from the set no longer verifies, even for a token seen before
        assert r.verify(token(first)).error == Reason.UNKNOWN_KEY
        path.write_text("{not json")
        assert not r.store.refresh(ISSUER)
        assert r.verify(token(second)).authenticated
    finally:
        r.store.close()


def test_a_cached_token_fails_once_its_key_is_withdrawn(tmp_path: Path) -> None:
    key = rsa_key("w1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.jwk()]}))
    raw = spec([])
    raw["issuers"][0]["jwks"] = {"file": str(path)}
    r = Running(parse_authentication(raw))
    assert r.store.refresh(ISSUER)
    text = token(key)
    assert r.verify(text).authenticated
    path.write_text(json.dumps({"keys": [ec_key("w2").jwk()]}))
    assert r.store.refresh(ISSUER)
    assert r.verify(text).error == Reason.UNKNOWN_KEY


def test_redirects_are_not_followed(server: JwksServer) -> None:
    target = JwksServer([ec_key("elsewhere")])
    try:
        server.redirect_to = target.url
        with pytest.raises(Exception, match="HTTP status 302"):
            read_source(JwksSource(uri=server.url))
        assert target.hits == 0
    finally:
        target.close()


def test_an_oversized_document_is_refused(server: JwksServer) -> None:
    server.document = b" " * (MAX_DOCUMENT + 10)
    with pytest.raises(Exception, match="larger than"):
        read_source(JwksSource(uri=server.url))


def test_unusable_keys_in_a_fetched_set_are_skipped() -> None:
    good = ec_key("good")
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**rsa_key("short", bits=1024).jwk()},
            {**ec_key("enc").jwk(), "use": "enc"},
            {**good.jwk(), "kid": ""},
            good.jwk(),
            {**ed_key("dup").jwk()},
            {**ed_key("dup").jwk()},
        ]
    }
    key_set = load_key_set(json.dumps(document).encode(), 0.0)
    assert set(key_set.keys) == {"good"}
    with pytest.raises(Exception, match="no usable signing key"):
        load_key_set(json.dumps({"keys": [document["keys"][0]]}).encode(), 0.0)
