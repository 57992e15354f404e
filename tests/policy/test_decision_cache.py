"""Translating a response to a Decision is memoized on the serialized response."""

from __future__ import annotations

from authz_server.cel import envoy as envoy_lib
from authz_server.policy import response as response_module
from authz_server.policy.response import cached_decision_from_response, decision_from_response


def _allow(header_value: str = "v"):
    ok = envoy_lib.with_header_kv(envoy_lib.allowed(), "x-k", header_value)
    return envoy_lib.response(ok)


def test_same_response_same_decision_object():
    first = cached_decision_from_response(_allow(), "p", 0)
    second = cached_decision_from_response(_allow(), "p", 0)
    assert first is second
    assert first == decision_from_response(_allow(), "p", 0)


def test_policy_and_index_are_part_of_the_key():
    assert cached_decision_from_response(_allow(), "p", 0).policy == "p"
    assert cached_decision_from_response(_allow(), "q", 0).policy == "q"
    assert cached_decision_from_response(_allow(), "p", 1).validation_index == 1


def test_different_responses_do_not_share_a_decision():
    a = cached_decision_from_response(_allow("a"), "p", 0)
    b = cached_decision_from_response(_allow("b"), "p", 0)
    assert [h.value for h in a.headers] == ["a"] and [h.value for h in b.headers] == ["b"]


def test_large_responses_bypass_the_cache():
    big = envoy_lib.response(
        envoy_lib.with_body(envoy_lib.denied(403), "x" * response_module.MAX_CACHED_RESPONSE)
    )
    first = cached_decision_from_response(big, "p", 0)
    assert first == cached_decision_from_response(big, "p", 0)
    assert first is not cached_decision_from_response(big, "p", 0)
    assert response_module._decision_from_bytes.cache_info().maxsize == (
        response_module.DECISION_CACHE_SIZE
    )
