"""Hot reloading: atomic swap, broken files keep the last good set, no check is dropped."""

from __future__ import annotations

import os
import threading
import time

from authz_server.decision import DecidedBy
from authz_server.policy import Engine, EngineOptions
from authz_server.policy.store import PolicyStore
from tests.policy.conftest import ALLOW, DENY, policy_yaml, run


def test_empty_or_missing_directory_is_not_ready(tmp_path):
    store = PolicyStore(tmp_path / "absent")
    assert store.reload() is False
    assert not store.status.ready and store.status.last_error
    engine = Engine(store.current)
    assert run(engine, {"tool": "x"}).decided_by is DecidedBy.NO_POLICIES


def test_broken_file_keeps_the_last_good_set(tmp_path):
    (tmp_path / "p.yaml").write_text(policy_yaml("p", [ALLOW]))
    loads = []
    store = PolicyStore(tmp_path, on_load=lambda ok, err, n, s: loads.append((ok, n)))
    assert store.reload()
    good = store.current()
    (tmp_path / "p.yaml").write_text(policy_yaml("p", ["envoy.Alowed().Response()"]))
    assert store.reload() is False
    assert store.current() is good
    assert store.status.ready and "Alowed" in (store.status.last_error or "")
    assert store.status.generation == 1
    assert loads == [(True, 1), (False, 1)]


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_reload_while_checks_run_drops_none(tmp_path):
    (tmp_path / "p.yaml").write_text(policy_yaml("p", [ALLOW]))
    store = PolicyStore(tmp_path)
    assert store.reload()
    engine = Engine(store.current, EngineOptions())
    stop = threading.Event()
    results: list[tuple[bool, DecidedBy]] = []
    failures: list[BaseException] = []

    def checker() -> None:
        while not stop.is_set():
            try:
                decision = run(engine, {"tool": "x"})
                results.append((decision.allowed, decision.decided_by))
            except BaseException as exc:  # a raised check would be a dropped check
                failures.append(exc)

    threads = [threading.Thread(target=checker) for _ in range(3)]
    for thread in threads:
        thread.start()
    store.watch(interval=0.05)
    try:
        # a broken file: the old (allowing) set keeps serving
        (tmp_path / "broken.yaml").write_text("kind: [")
        assert _wait_for(
            lambda: store.status.last_error is not None and "broken" in store.status.last_error
        )
        os.remove(tmp_path / "broken.yaml")
        # a new denying policy takes effect
        (tmp_path / "q.yaml").write_text(policy_yaml("q", [DENY]))
        assert _wait_for(lambda: store.status.last_error is None and store.status.policy_count == 2)
        assert _wait_for(lambda: bool(results) and results[-1][0] is False)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        store.stop()
    assert failures == []
    assert all(by is DecidedBy.POLICY for _, by in results)
    assert (True, DecidedBy.POLICY) in results and (False, DecidedBy.POLICY) in results


def test_configmap_symlink_swap_is_seen(tmp_path):
    def version(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "p.yaml").write_text(text)

    version("..v1", policy_yaml("p", [ALLOW]))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/p.yaml", tmp_path / "p.yaml")
    store = PolicyStore(tmp_path)
    assert store.reload()
    version("..v2", policy_yaml("p", [DENY]))
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    store.watch(interval=0.05)
    try:
        assert _wait_for(lambda: store.status.generation == 2)
    finally:
        store.stop()
    assert not run(Engine(store.current()), {"tool": "x"}).allowed
