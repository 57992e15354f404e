"""The fast path keeps no Python memory per check.

cel-expr-python 0.1.3 never frees the Python objects it makes for the arguments and the result
of a call from CEL into a Python function (the JWT string passed to ``jwt.Decode`` on every
check, ~450 bytes). Those are Python allocations, so ``tracemalloc`` sees them: deterministic,
unlike the process's resident size.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.policy import Engine, load_directory, load_text
from tests.benchmarks import workload
from tests.policy.conftest import DENY, policy_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"
CHECKS = 5_000
# A leak of one small object per check is thousands of objects, far above this.
BOUND = 50_000


def _leaks(run: Callable[[], object], times: int = CHECKS) -> list[tracemalloc.StatisticDiff]:
    """The allocation sites that kept at least one block every other run, in each half of
    ``times`` runs (after a warm-up).

    A leak grows steadily; what does not is left out: one-off allocations (a cache entry),
    and objects the runtime frees later rather than at once (in a full test run, several
    hundred of them are alive at any time, a number that does not grow).
    """
    halves = _growth(run, times // 2)
    steady = {stat.traceback for stat in halves[0] if stat.count_diff >= times // 4}
    return [s for s in halves[1] if s.count_diff >= times // 4 and s.traceback in steady]


def _bytes(leaks: list[tracemalloc.StatisticDiff]) -> int:
    return sum(stat.size_diff for stat in leaks)


def _growth(run: Callable[[], object], times: int) -> list[list[tracemalloc.StatisticDiff]]:
    """What each of two rounds of ``times`` runs left allocated, by allocation traceback."""
    for _ in range(200):
        run()
    gc.collect()
    tracemalloc.start(8)
    try:
        snapshots = [tracemalloc.take_snapshot()]
        for _ in range(2):
            for _ in range(times):
                run()
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    return [
        after.compare_to(before, "traceback") for before, after in itertools.pairwise(snapshots)
    ]


def _checker(engine: Engine) -> Callable[[], object]:
    request = request_from_check(workload.check_request())
    decoded = decode(request.body, request.headers)
    return lambda: engine.check(request, decoded)


def test_the_example_policies_retain_no_memory_per_check():
    leaks = _leaks(_checker(Engine(load_directory(EXAMPLES))))
    assert _bytes(leaks) < BOUND, leaks


def test_hoisted_getters_and_json_retain_no_memory_per_check():
    policies = load_text(
        policy_yaml(
            "p",
            [
                'mcp.GetStringArgument("owner", "") == "x" || mcp.GetIntArgument("n", 0) == 3 || '
                'mcp.GetStringSliceArgument("tags", []) == ["a"] || '
                "json.Unmarshal(string(object.attributes.request.http.raw_body)).params.name == 'y'"
                f" ? {DENY} : null"
            ],
        )
    )
    leaks = _leaks(_checker(Engine(policies)))
    assert _bytes(leaks) < BOUND, leaks


def test_the_measure_sees_a_leak():
    # Calling into Python from CEL in a loop: the measure must report it, or the tests above
    # prove nothing.
    from authz_server.cel import compile_expression
    from authz_server.cel.env import activation

    text = "y" * 300
    program = compile_expression(None, f"json.Unmarshal('\"{text}\"') == '{text}'")
    act = activation({})
    assert _bytes(_leaks(lambda: program.expression.eval(act), 2_000)) > BOUND
