"""The masking rules on their own: secret keys, credential-shaped values, truncation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz_server.observe.redact import MASK, Limits, Redactor, is_secret_key, mask_text


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "passwd",
        "api_key",
        "apiKey",
        "X-API-Key",
        "client_secret",
        "refresh_token",
        "accessToken",
        "Authorization",
        "proxy-authorization",
        "cookie",
        "Set-Cookie",
        "credentials",
        "private_key",
        "privateKey",
        "session_id",
        "SESSION",
        "dpop",
        "auth",
        "pwd",
        "otp",
        "key",
        "jwt",
        "aws_secret_access_key",
        "signature",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "title",
        "body",
        "owner",
        "repo",
        "author",
        "query",
        "path",
        "keyword",
        "footprint",
        "description",
        "monkey",
        "issue_number",
    ],
)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abcdefgh12345678", f"Bearer {MASK}"),
        ("dpop Zm9vYmFyYmF6cXV4", f"dpop {MASK}"),
        ("Basic dXNlcjpwYXNzd29yZA==", f"Basic {MASK}"),
        ("see ghp_abcdefghijklmnopqrstuvwxyz0123 now", f"see {MASK} now"),
        ("gho_abcdefghijklmnopqrstuvwxyz0123", MASK),
        ("github_pat_11ABCDEFG0123456789_abcdefghijkl", MASK),
        ("glpat-abcdefghij0123456789", MASK),
        ("key sk-ant-api03-abcdefghijklmnop", f"key {MASK}"),
        ("xoxp-1234567890-abcdefghij", MASK),
        ("AKIAIOSFODNN7EXAMPLE", MASK),
        ("AIzaSyA-abcdefghijklmnopqrstuvwxyz012345", MASK),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl", MASK),
        ("https://bob:hunter2@example.com/x", f"https://bob:{MASK}@example.com/x"),
        ("/cb?code=abc123&state=xyz", f"/cb?code={MASK}&state=xyz"),
        ("/x?X-Amz-Signature=abcdef&ok=1", f"/x?X-Amz-Signature={MASK}&ok=1"),
        ("password: hunter2 ok", f"password: {MASK} ok"),
        ('{"client_secret": "abc"}', f'{{"client_secret": "{MASK}"}}'),
        ("Cookie: a=1; b=2\nnext line", f"Cookie: {MASK}\nnext line"),
        ("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----!", f"{MASK}!"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn", MASK),
    ],
)
def test_credential_shaped_values(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "merge_pull_request",
        "hello world",
        "token expired",
        "basic information",
        "tools/call",
        "3f786850e387550fdab836ed7e6dc881de23001b",
        "https://example.com/a/b?page=2",
        "2025-06-18",
        "claude-code/1.0",
        "The key to success",
        "sk-1",
    ],
)
def test_ordinary_values_are_kept(text: str) -> None:
    assert mask_text(text) == text


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_B64URL = _ALNUM + "-_"
credentials = st.one_of(
    st.text(_B64URL, min_size=12, max_size=80).map(lambda t: "Bearer " + t),
    st.text(_ALNUM, min_size=36, max_size=40).map(lambda t: "ghp_" + t),
    st.text(_ALNUM, min_size=32, max_size=48).map(lambda t: "sk-" + t),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16).map(lambda t: "AKIA" + t),
    st.tuples(*(st.text(_B64URL, min_size=10, max_size=60) for _ in range(3))).map(
        lambda parts: f"eyJ{parts[0]}.eyJ{parts[1]}.{parts[2]}"
    ),
)
filler = st.text(st.sampled_from([*"abcdefgh ,.;()-", "\n"]), max_size=60)


@given(before=filler, credential=credentials, after=filler)
def test_credentials_in_text_never_survive(before: str, credential: str, after: str) -> None:
    masked = mask_text(f"{before} {credential} {after}")
    secret = credential.removeprefix("Bearer ")
    assert secret not in masked


@given(credential=credentials, prefix=st.integers(min_value=0, max_value=80))
def test_truncation_never_reveals_a_credential(credential: str, prefix: int) -> None:
    redactor = Redactor(Limits(max_value_length=64))
    text = redactor.text("x" * prefix + " " + credential + " tail" * 50)
    secret = credential.removeprefix("Bearer ")
    assert secret not in text
    assert secret[:24] not in text


def test_a_long_random_token_cut_at_the_limit_is_masked() -> None:
    token = "Zx9" * 400  # longer than the look-ahead, and of no known format
    text = Redactor(Limits(max_value_length=40)).text("y" * 20 + " " + token)
    assert text.startswith("y" * 20 + " " + MASK) and "Zx9" not in text


def test_plain_words_cut_at_the_limit_are_kept() -> None:
    text = Redactor(Limits(max_value_length=40)).text("lorem ipsum dolor " * 30)
    assert text.startswith("lorem ipsum dolor lorem") and text.endswith("...[540 chars]")


def test_values_are_bounded_in_depth_and_breadth() -> None:
    redactor = Redactor(Limits(max_items=3, max_depth=2))
    assert redactor.value({"a": {"b": {"c": 1}}}) == {"a": {"b": "[...]"}}
    assert redactor.value(list(range(5))) == [0, 1, 2, "[2 more]"]
    assert redactor.value({str(i): i for i in range(5)}) == {
        "0": 0,
        "1": 1,
        "2": 2,
        "...": "[2 more]",
    }


def test_counts_named_tokens_are_not_masked() -> None:
    redactor = Redactor()
    assert redactor.value({"max_tokens": 512, "token": 12345, "tokens": "abc"}) == {
        "max_tokens": 512,
        "token": MASK,
        "tokens": MASK,
    }


def test_a_long_key_is_judged_on_its_whole_name() -> None:
    # The audit queue holds only the head of a long key; the secret word may come after it.
    redactor = Redactor(Limits(max_value_length=16))
    key = "x" * 2000 + "_password"
    out = redactor.value({key: "hunter2", "note": {key: ["hunter2"]}})
    assert "hunter2" not in json.dumps(out)
    assert next(iter(out.values())) == MASK


def test_numbers_under_tokens_keys_stay_numbers_even_when_not_finite() -> None:
    redactor = Redactor()
    out = redactor.value({"max_tokens": float("inf"), "tokens": [1], "n": float("nan")})
    assert out == {"max_tokens": "inf", "tokens": MASK, "n": "nan"}
