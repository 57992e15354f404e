"""The Redis store: shared by several replicas (``redis://``, ``rediss://`` with TLS).

Layout, under the URL's prefix (default ``authz:``): ``claim:NS:KEY`` (``SET NX PX``),
``count:NS:KEY`` (a counter with a TTL), ``rec:KIND:ID`` (a hash: state, value, created, updated,
expires; Redis expires it), ``idx:KIND`` (the set of a kind's ids, for listing; ids whose record
expired are dropped when listed) and ``ver:KIND`` (the kind's version). Every write to a record
and its version bump run in one Lua script, so they are atomic and one round trip.

The server's own expiry keeps the keyspace bounded; Redis must therefore not evict keys that have
no TTL (``maxmemory-policy noeviction`` or a ``volatile-*`` policy): an evicted revocation would
silently end. Commands are not retried: a claim or a transition retried after a lost reply could
report a loss for what was a win. Connect and reply waits are bounded by the URL's timeout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from authz_server.state.errors import StoreUnavailable
from authz_server.state.store import (
    Record,
    Store,
    check_key,
    check_name,
    check_state,
    check_ttl,
    decode_value,
    encode_value,
)
from authz_server.state.url import StoreUrl

T = TypeVar("T")

# A kind's version starts at the server's clock in microseconds rather than at 1: a Redis that
# restarted empty must not count up to a number a mirror last saw and pass for unchanged.
BUMP = """
local function bump(key)
  if redis.call('INCR', key) == 1 then
    local now = redis.call('TIME')
    redis.call('SET', key, now[1] .. string.format('%06d', now[2]))
  end
end
"""
# KEYS: record, index, version. ARGV: id, state, value, now, ttl ms (0: none), expires, mode.
WRITE = BUMP + """
if ARGV[7] == 'create' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'value', ARGV[3], 'created', ARGV[4],
           'updated', ARGV[4], 'expires', ARGV[6])
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
redis.call('SADD', KEYS[2], ARGV[1])
bump(KEYS[3])
return 1
"""
# KEYS: record, version. ARGV: expected state, new state, now, new value ('' keeps it), has value.
TRANSITION = BUMP + """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated', ARGV[3])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'value', ARGV[4]) end
bump(KEYS[2])
return redis.call('HGETALL', KEYS[1])
"""
# KEYS: record, index, version. ARGV: id.
TAKE = BUMP + """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if #fields == 0 then return false end
redis.call('DEL', KEYS[1])
bump(KEYS[3])
return fields
"""
# KEYS: counter. ARGV: amount, ttl ms.
INCR = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return count
"""


class RedisStore(Store):
    def __init__(self, url: StoreUrl) -> None:
        self.url = url
        self._prefix = url.prefix
        tls: dict[str, Any] = {}
        if url.scheme == "rediss":
            tls = {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": url.ca_file}
        self._client = redis.Redis(
            host=url.host,
            port=url.port,
            db=url.db,
            username=url.username,
            password=url.password,
            socket_timeout=url.timeout,
            socket_connect_timeout=url.timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            **tls,
        )
        self._write = self._client.register_script(WRITE)
        self._transition = self._client.register_script(TRANSITION)
        self._take = self._client.register_script(TAKE)
        self._incr = self._client.register_script(INCR)

    def _run(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.url.display}: {self._reason(exc)}") from None

    def _reason(self, exc: BaseException) -> str:
        reason = str(exc) or type(exc).__name__
        if self.url.password:
            reason = reason.replace(self.url.password, "***")
        if isinstance(exc, redis.TimeoutError):
            reason = f"no answer within {self.url.timeout:g}s ({reason})"
        return reason

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def close(self) -> None:
        self._client.close()

    def ping(self) -> None:
        self._run(self._client.ping)

    def claim(self, namespace: str, key: str, ttl: float) -> bool:
        check_name("namespace", namespace)
        check_key("key", key)
        ms = _ms(check_ttl(ttl))
        name = self._key("claim", namespace, key)
        return bool(self._run(lambda: self._client.set(name, "1", nx=True, px=ms)))

    def incr(self, namespace: str, key: str, ttl: float, amount: int = 1) -> int:
        check_name("namespace", namespace)
        check_key("key", key)
        ms = _ms(check_ttl(ttl))
        name = self._key("count", namespace, key)
        return int(self._run(lambda: self._incr(keys=[name], args=[int(amount), ms])))

    def put(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        *,
        state: str = "",
        ttl: float | None = None,
    ) -> Record:
        record = self._write_record(kind, id, value, state, ttl, "put")
        assert record is not None
        return record

    def create(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        *,
        state: str = "",
        ttl: float | None = None,
    ) -> Record | None:
        return self._write_record(kind, id, value, state, ttl, "create")

    def _write_record(
        self, kind: str, id: str, value: Mapping[str, Any], state: str, ttl: float | None, mode: str
    ) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        check_state(state)
        ttl = check_ttl(ttl, optional=True)
        text = encode_value(value)
        now = time.time()
        expires = None if ttl is None else now + ttl
        keys = [self._key("rec", kind, id), self._key("idx", kind), self._key("ver", kind)]
        args = [id, state, text, repr(now), _ms(ttl) if ttl else 0, _num(expires), mode]
        if not self._run(lambda: self._write(keys=keys, args=args)):
            return None
        return Record(kind, id, state, decode_value(text), now, now, expires)

    def get(self, kind: str, id: str) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        fields = self._run(lambda: self._client.hgetall(self._key("rec", kind, id)))
        return _record(kind, id, fields)

    def list(self, kind: str) -> tuple[Record, ...]:
        check_name("kind", kind)
        index = self._key("idx", kind)

        def read() -> tuple[Record, ...]:
            ids = sorted(self._client.smembers(index))
            pipe = self._client.pipeline(transaction=False)
            for id in ids:
                pipe.hgetall(self._key("rec", kind, id))
            found = [
                (id, _record(kind, id, fields))
                for id, fields in zip(ids, pipe.execute(), strict=True)
            ]
            gone = [id for id, record in found if record is None]
            if gone:  # their records expired; keep the index bounded
                self._client.srem(index, *gone)
            return tuple(r for _, r in found if r is not None)

        records = self._run(read)
        return tuple(sorted(records, key=lambda r: (r.created, r.id)))

    def delete(self, kind: str, id: str) -> bool:
        return self.take(kind, id) is not None

    def take(self, kind: str, id: str) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        keys = [self._key("rec", kind, id), self._key("idx", kind), self._key("ver", kind)]
        fields = self._run(lambda: self._take(keys=keys, args=[id]))
        return _record(kind, id, _pairs(fields))

    def transition(
        self, kind: str, id: str, expect: str, to: str, *, value: Mapping[str, Any] | None = None
    ) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        check_state(expect)
        check_state(to)
        text = "" if value is None else encode_value(value)
        keys = [self._key("rec", kind, id), self._key("ver", kind)]
        args = [expect, to, repr(time.time()), text, "0" if value is None else "1"]
        fields = self._run(lambda: self._transition(keys=keys, args=args))
        return _record(kind, id, _pairs(fields))

    def version(self, kind: str) -> int:
        check_name("kind", kind)
        value = self._run(lambda: self._client.get(self._key("ver", kind)))
        return int(value or 0)


def _ms(seconds: float | None) -> int:
    return max(1, math.ceil((seconds or 0) * 1000))


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _pairs(flat: Sequence[str] | None) -> dict[str, str]:
    if not flat:
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _record(kind: str, id: str, fields: Mapping[str, str]) -> Record | None:
    if not fields:
        return None
    try:
        expires = float(fields["expires"]) if fields.get("expires") else None
        return Record(
            kind,
            id,
            fields["state"],
            decode_value(fields["value"]),
            float(fields["created"]),
            float(fields["updated"]),
            expires,
        )
    except (KeyError, ValueError):
        raise StoreUnavailable(f"the state store holds a damaged {kind} record") from None
