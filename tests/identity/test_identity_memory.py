"""The in-memory single-use claim of the offline runs (``authz-server test``, ``check``)."""

from __future__ import annotations

from authz_server.identity.memory import MemoryClaim
from tests.identity.helpers import Clock


def test_a_key_is_claimed_once_while_its_claim_lasts_then_again():
    clock = Clock()
    claim = MemoryClaim(clock)
    assert claim("dpop:a", 60)
    assert not claim("dpop:a", 60)
    assert claim("dpop:b", 60)  # another key is free
    clock.advance(59)
    assert not claim("dpop:a", 60)
    clock.advance(2)
    assert claim("dpop:a", 60)
    assert not claim("dpop:a", 60)
