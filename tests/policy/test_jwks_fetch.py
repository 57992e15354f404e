"""``jwks.Fetch(url)`` in policies, as Kyverno's JWT policies use it.

The URLs are literals checked at load; the identity stage's key store fetches them from a JWKS
endpoint (served on loopback by the test) in the background, before the set goes live; both
evaluation paths read the keys fetched last on every request, so a rotation is seen without
reloading the policies, and keys that never arrived deny under ``failurePolicy: Fail``.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz_server.cel import jwt as jwt_lib
from authz_server.cel.analysis import NOT_CONSTANT_URL
from authz_server.decision import DecidedBy, Decision
from authz_server.envoy.adapter import request_from_check
from authz_server.identity import JwksSource, KeyStore
from authz_server.identity.stage import FETCH_PREFIX
from authz_server.mcp import decode
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy import Engine, PolicyLoadError, load_text
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand, decide
from tests.identity.helpers import JwksServer, SigningKey, ec_key, token
from tests.policy.conftest import ALLOW, DENY, policy_yaml

BEARER = 'object.attributes.request.http.headers["authorization"].substring(7)'
WAIT = 10.0


def _policy(url: str) -> str:
    """Kyverno's JWT policy shape: the token decoded with the fetched keys in a variable."""
    return policy_yaml(
        "jwt",
        [f'variables.token.Valid && variables.token.Claims.sub == "user-1" ? {ALLOW} : {DENY}'],
        variables={"token": f'jwt.Decode({BEARER}, jwks.Fetch("{url}"))'},
        failure="Fail",
    )


def _check(signer: SigningKey | None) -> object:
    headers = {} if signer is None else {"authorization": f"Bearer {token(signer, time.time())}"}
    return check_request_from_shorthand({"tool": "search", "headers": headers})


def _eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(autouse=True)
def _no_provider_left() -> Iterator[None]:
    yield
    jwt_lib.serve_key_sets(None)
    jwt_lib.clear_cache()


# -- load -----------------------------------------------------------------------------------


def _issues(text: str) -> list:
    with pytest.raises(PolicyLoadError) as caught:
        load_text(textwrap.dedent(text), "p.yaml")
    return list(caught.value.issues)


def test_the_set_lists_every_fetched_url():
    fetch = 'size(jwks.Fetch("{}")) > 0'
    exception = textwrap.dedent(
        f"""\
        apiVersion: policies.kyverno.io/v1alpha1
        kind: PolicyException
        metadata:
          name: skip
        spec:
          policyRefs: [{{name: p}}]
          matchConditions:
          - name: e
            expression: '{fetch.format("https://d.example.com/k")}'
        """
    )
    policies = load_text(
        policy_yaml(
            "p",
            [f"{fetch.format('https://c.example.com/k')} ? null : null"],
            conditions=[fetch.format("https://a.example.com/k")],
            variables={"v": 'jwks.Fetch("http://127.0.0.1:8080/k")'},
        )
        + "---\n"
        + exception
    )
    assert policies.fetch_urls == {
        "https://a.example.com/k",
        "http://127.0.0.1:8080/k",
        "https://c.example.com/k",
        "https://d.example.com/k",
    }
    assert load_text(policy_yaml("q", [ALLOW])).fetch_urls == frozenset()


def test_a_url_computed_per_request_is_a_load_error_at_its_place():
    (issue,) = _issues(
        """\
        apiVersion: policies.kyverno.io/v1
        kind: ValidatingPolicy
        metadata:
          name: computed
        spec:
          evaluation:
            mode: Envoy
          variables:
          - name: token
            expression: >
              jwt.Decode("t",
                jwks.Fetch("https://" + object.attributes.request.http.host + "/jwks"))
          validations:
          - expression: "variables.token.Valid ? envoy.Allowed().Response() : null"
        """
    )
    assert issue.message == NOT_CONSTANT_URL
    assert issue.field == "spec.variables[0].expression"
    assert (issue.line, issue.column) == (12, 20)  # the argument's first character
    assert "p.yaml:12:20" in issue.format()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "http://idp.example.com/jwks.json",
            "scheme must be https (http only for a loopback host)",
        ),
        ("ftp://idp.example.com/jwks.json", "scheme must be https (http only for a loopback host)"),
        ("https://user:pw@idp.example.com/jwks", "must not carry credentials"),
        ("https:///jwks", "must name a host"),
        ("https://idp.example.com/a b", "is not a valid URL"),
    ],
)
def test_a_url_keys_may_not_be_fetched_from_is_a_load_error_at_its_place(url, problem):
    (issue,) = _issues(policy_yaml("p", [f'size(jwks.Fetch("{url}")) > 0 ? {ALLOW} : null']))
    assert issue.message == f"jwks.Fetch URL {problem}"
    # line 9 is `  - expression: "size(jwks.Fetch(\"...`: the literal, after the JSON quoting
    assert (issue.line, issue.expression_column) == (9, len('size(jwks.Fetch("'))


@pytest.mark.parametrize(
    "url", ["https://idp.example.com/jwks", "http://127.0.0.1:9/k", "http://localhost/k"]
)
def test_https_and_plain_http_to_loopback_load(url):
    assert load_text(_policy(url)).fetch_urls == {url}


# -- evaluation, with a real key store fetching from a loopback endpoint ----------------------


class Published:
    """A JWKS endpoint and the key store fetching it, installed as ``jwks.Fetch``'s provider
    the way the server installs its identity stage."""

    def __init__(self, signer: SigningKey) -> None:
        self.server = JwksServer([signer])
        self.url = self.server.url
        self.store = KeyStore({FETCH_PREFIX + self.url: JwksSource(uri=self.url)})
        assert self.refresh()
        jwt_lib.serve_key_sets(self.document, self.store.request_refetch)

    def document(self, url: str) -> object:
        key_set = self.store.key_set(FETCH_PREFIX + url)
        return None if key_set is None else key_set.document

    def refresh(self) -> bool:
        return self.store.refresh(FETCH_PREFIX + self.url)

    def close(self) -> None:
        self.store.close()
        self.server.close()


@pytest.fixture
def published() -> Iterator[Published]:
    endpoint = Published(ec_key("k1"))
    yield endpoint
    endpoint.close()


@pytest.fixture(params=[True, False], ids=["fast-path", "reference-path"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_a_token_signed_by_a_published_key_is_allowed_and_a_forged_one_denied(published, fast_path):
    signer = ec_key("k1")
    published.server.publish([ec_key("k0"), signer])
    assert published.refresh()
    engine = Engine(load_text(_policy(published.url)), fast_path=fast_path)
    allowed = decide(engine, _check(signer))
    assert allowed.allowed and allowed.policy == "jwt", allowed
    forged = decide(engine, _check(ec_key("k1")))  # the published kid, another key
    assert not forged.allowed
    assert forged.decided_by is DecidedBy.ERROR
    assert "jwt.Decode: bad signature" in forged.reason
    assert not decide(engine, _check(None)).allowed


def test_a_rotated_key_set_is_used_without_reloading_the_policies(published, fast_path):
    old = ec_key("k1")
    published.server.publish([old])
    assert published.refresh()
    policies = load_text(_policy(published.url))
    engine = Engine(policies, fast_path=fast_path)
    assert decide(engine, _check(old)).allowed
    new = ec_key("k1")  # the same kid, a new key: only the published set can tell them apart
    published.server.publish([new])
    assert published.refresh()
    assert decide(engine, _check(new)).allowed
    assert not decide(engine, _check(old)).allowed


def test_the_fast_path_decides_with_the_fetch_hoisted_out_of_cel(published):
    signer = ec_key("k1")
    published.server.publish([signer])
    assert published.refresh()
    policies = load_text(_policy(published.url))
    fast = policies.fast_path("tools/call")
    assert fast is not None
    # jwt.Decode(token, jwks.Fetch(url)) is one Python call made per request, outside CEL.
    assert "jwks.Fetch" not in fast.program.source and "jwt.Decode" not in fast.program.source
    request = request_from_check(_check(signer))
    view = dict(decode(request.body, request.headers).messages[0].kyverno)
    result = fast.evaluate(request.check_request, view)
    assert result is not None, "the fast path handed the request to the reference path"
    ((index, response),) = result
    assert index == 0 and response.HasField("ok_response")
    forged = request_from_check(_check(ec_key("k1")))
    assert fast.evaluate(forged.check_request, view) is None  # the reference path decides


def test_a_variable_holding_the_fetched_set_is_read_per_request_not_at_load(published, fast_path):
    old = ec_key("k1")
    published.server.publish([old])
    assert published.refresh()
    policies = load_text(
        policy_yaml(
            "jwt",
            [f"variables.token.Valid ? {ALLOW} : {DENY}"],
            variables={
                "keys": f'jwks.Fetch("{published.url}")',
                "token": f"jwt.Decode({BEARER}, variables.keys)",
            },
        )
    )
    engine = Engine(policies, fast_path=fast_path)
    assert decide(engine, _check(old)).allowed
    new = ec_key("k2")
    published.server.publish([new])
    assert published.refresh()
    assert decide(engine, _check(new)).allowed


# -- the server: PolicyAuthorizer prepares the URLs with the set and installs the provider ----


@pytest.fixture
def server_policies(tmp_path: Path) -> Iterator[tuple[JwksServer, Path]]:
    signer = ec_key("k1")
    server = JwksServer([signer])
    root = tmp_path / "policies"
    root.mkdir()
    (root / "jwt.yaml").write_text(_policy(server.url))
    yield server, root
    server.close()


def _decision(authorizer: PolicyAuthorizer, signer: SigningKey) -> Decision:
    return authorizer.check(request_from_check(_check(signer)))


def test_the_server_fetches_the_urls_before_the_set_goes_live_and_never_while_deciding(
    server_policies,
):
    server, root = server_policies
    signer = ec_key("k1")
    server.publish([signer])
    store = PolicyStore(root)
    authorizer = PolicyAuthorizer(store)
    try:
        assert store.reload(), store.status.last_error
        hits = server.hits
        assert hits >= 1
        for _ in range(20):
            assert _decision(authorizer, signer).allowed
        assert not _decision(authorizer, ec_key("k1")).allowed
        assert server.hits == hits  # no fetch on the request path
        assert authorizer.status().ready, authorizer.status()
    finally:
        authorizer.stop()
    assert jwt_lib.key_set_provider() is None


def test_a_token_naming_a_new_kid_gets_its_key_fetched_without_a_reload(server_policies):
    server, root = server_policies
    old = ec_key("k1")
    server.publish([old])
    store = PolicyStore(root)
    authorizer = PolicyAuthorizer(store)
    try:
        assert store.reload(), store.status.last_error
        assert _decision(authorizer, old).allowed
        generation = store.status.generation
        new = ec_key("k2")  # the identity provider rotates in a new key
        server.publish([old, new])
        # Held: the early refetch must not land within the decision that asks for it (a
        # fetch is quick, and a failing policy is evaluated a second time on the reference
        # path, which would read the new keys).
        server.hold()
        hits = server.hits
        first = _decision(authorizer, new)
        assert not first.allowed and "no matching key" in first.reason
        # That refusal asked for an early refetch; the key arrives in the background.
        assert _eventually(lambda: server.hits > hits)
        server.hold(False)
        assert _eventually(lambda: _decision(authorizer, new).allowed)
        assert store.status.generation == generation  # the policies were not reloaded
    finally:
        authorizer.stop()


def test_keys_not_fetched_yet_deny_under_fail_and_keep_the_server_unready(server_policies):
    server, root = server_policies
    server.down = True
    store = PolicyStore(root)
    authorizer = PolicyAuthorizer(store)
    try:
        assert store.reload(), store.status.last_error  # live after the wait, keys or not
        decision = _decision(authorizer, ec_key("k1"))
        assert not decision.allowed
        assert decision.decided_by is DecidedBy.ERROR and decision.policy == "jwt"
        assert decision.reason == (
            "policy 'jwt' failed at spec.validations[0].expression: variable 'token': "
            "jwks.Fetch: keys not fetched yet"
        )
        status = authorizer.status()
        assert not status.ready and f"jwks.Fetch {server.url}" in status.detail
    finally:
        authorizer.stop()


def test_offline_checks_fetch_the_urls_as_the_server_does():
    from authz_server.policy.offline import DecisionPath

    signer = ec_key()
    endpoint = JwksServer([signer])
    try:
        with DecisionPath(load_text(_policy(endpoint.url))) as path:
            assert path.decide(_check(signer)).allowed
            assert not path.decide(_check(ec_key())).allowed
        assert jwt_lib.key_set_provider() is None
    finally:
        endpoint.close()
