"""``jwks.Fetch(url)``: the keys come from the provider the server installs, never from the
network during an evaluation; the same key-set type as ``jwks.Parse``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server.cel import CelCompileError, CelEvaluationError, compile_expression
from authz_server.cel import jwt as jwt_lib
from authz_server.cel.analysis import NOT_CONSTANT_URL

URL = "https://idp.example.com/jwks.json"


class Signer:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return {**data, "kid": self.kid, "alg": "ES256"}

    def token(self, **claims: Any) -> str:
        return jwt.encode({"sub": "agent", **claims}, self.key, "ES256", headers={"kid": self.kid})


class Published:
    """A provider as the server installs one: the document last fetched per URL (read-only
    views, like the key store's), and the refetch requests it received."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.refetches: list[str] = []

    def publish(self, url: str, *signers: Signer) -> None:
        self.documents[url] = MappingProxyType({"keys": [s.jwk() for s in signers]})

    def __call__(self, url: str) -> Any:
        return self.documents.get(url)


@pytest.fixture
def published() -> Iterator[Published]:
    provider = Published()
    jwt_lib.serve_key_sets(provider, provider.refetches.append)
    jwt_lib.clear_cache()
    yield provider
    jwt_lib.serve_key_sets(None)
    jwt_lib.clear_cache()


def _decode(cel_eval, token: str, url: str = URL) -> Any:
    return cel_eval(f"jwt.Decode({json.dumps(token)}, jwks.Fetch({json.dumps(url)}))")


def test_without_a_provider_every_fetch_is_an_error_naming_the_url(cel_eval):
    jwt_lib.serve_key_sets(None)
    message = re.escape(f"jwks.Fetch: keys for {URL} not fetched yet")
    with pytest.raises(CelEvaluationError, match=message):
        cel_eval(f'size(jwks.Fetch("{URL}")) > 0')


def test_keys_not_fetched_yet_are_an_error(cel_eval, published):
    published.publish("https://other.example.com/jwks.json", Signer("k1"))
    with pytest.raises(CelEvaluationError, match="not fetched yet"):
        _decode(cel_eval, Signer("k1").token())


def test_a_token_signed_by_a_fetched_key_decodes(cel_eval, published):
    signer = Signer("k1")
    published.publish(URL, Signer("k0"), signer)
    token = _decode(cel_eval, signer.token(scope="tools"))
    assert token.Valid is True
    assert token.Claims["scope"] == "tools"


def test_the_fetched_set_is_the_value_jwks_parse_gives_for_the_document(cel_eval, published):
    published.publish(URL, Signer("k1"))
    document = json.dumps(dict(published.documents[URL]))
    assert cel_eval(f'jwks.Fetch("{URL}") == jwks.Parse({json.dumps(document)})') is True


def test_a_bad_signature_is_an_error_and_asks_for_no_refetch(cel_eval, published):
    published.publish(URL, Signer("k1"))
    with pytest.raises(CelEvaluationError, match=r"jwt\.Decode: bad signature"):
        _decode(cel_eval, Signer("k1").token())  # same kid, another key
    assert published.refetches == []


def test_a_new_document_is_read_on_the_next_call(cel_eval, published):
    old, new = Signer("k1"), Signer("k2")
    published.publish(URL, old)
    assert _decode(cel_eval, old.token()).Valid
    published.publish(URL, new)  # rotated: the old key is gone
    assert _decode(cel_eval, new.token()).Valid
    with pytest.raises(CelEvaluationError, match="no matching key"):
        _decode(cel_eval, old.token())


def test_a_kid_the_set_lacks_asks_for_a_refetch_of_that_url(cel_eval, published):
    published.publish(URL, Signer("k1"))
    published.publish("https://other.example.com/jwks.json", Signer("k9"))
    with pytest.raises(CelEvaluationError, match="no matching key"):
        _decode(cel_eval, Signer("k2").token())
    assert published.refetches == [URL]
    # The hoisted form (token and URL in one call) asks too.
    with pytest.raises(ValueError, match="no matching key"):
        jwt_lib.decode_with_fetched_keys_shared(Signer("k3").token(), URL)
    assert published.refetches == [URL, URL]


def test_a_set_given_inline_never_asks_for_a_refetch(cel_eval, published):
    keyset = json.dumps(json.dumps({"keys": [Signer("k1").jwk()]}))
    with pytest.raises(CelEvaluationError, match="no matching key"):
        cel_eval(f"jwt.Decode({json.dumps(Signer('k2').token())}, jwks.Parse({keyset}))")
    assert published.refetches == []


def test_a_published_set_with_a_symmetric_key_is_refused(cel_eval, published):
    published.documents[URL] = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}
    with pytest.raises(CelEvaluationError, match="symmetric"):
        cel_eval(f'size(jwks.Fetch("{URL}")) > 0')


@pytest.mark.parametrize(
    ("source", "column"),
    [
        ('size(jwks.Fetch("https://" + "idp.example.com")) > 0', 17),
        ("size(jwks.Fetch(object.attributes.request.http.host)) > 0", 17),
        ('["https://a.example.com"].all(u, size(jwks.Fetch(u)) > 0)', 50),
    ],
)
def test_a_url_that_is_not_a_literal_does_not_compile(source, column):
    with pytest.raises(CelCompileError) as caught:
        compile_expression(None, source)
    (issue,) = caught.value.issues
    assert issue.message == NOT_CONSTANT_URL
    assert (issue.line, issue.column) == (1, column)  # the argument's first character


def test_the_literal_urls_are_collected_with_their_place():
    program = compile_expression(
        None, f'jwt.Decode("t",\n  jwks.Fetch("{URL}")).Valid || size(jwks.Fetch("https://b"))>0'
    )
    assert program.fetch_urls == {URL, "https://b"}
    assert (URL, 2, 14) in {(s.url, s.line, s.column) for s in program.fetches}
    # A fetched set changes over time: never computed once at load.
    assert compile_expression(None, f'size(jwks.Fetch("{URL}")) > 0').constant is False
