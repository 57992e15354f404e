"""The switches of ``make bench BENCH_ARGS=--breakdown`` (tests/benchmarks/ablated.py): a stage
switched off does no work after its first call, and the server still gives the same answer, so
the CPU per check it takes away is the stage's cost as served.

Each case runs in its own interpreter: the switches replace methods of the classes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.ablated import STAGES, parse_stages
from tests.benchmarks.load import ROOT

CHECKS = 3

# Three checks of the benchmark's valid request through PolicyAuthorizer.check, counting the
# engine's combined-program evaluations and the JSON bodies the decoder parsed; prints the
# answers and the counts as JSON.
SCRIPT = """
import json, sys
from pathlib import Path
from authz_server.config import ServeConfig
from authz_server.envoy import request_from_check
from authz_server.mcp import _json
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy import combined
from tests.benchmarks import ablated, workload

stages, scratch, checks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
ablated.switch_off(ablated.parse_stages(stages))
counts = {"evaluations": 0, "parses": 0}

def counted(name, original):
    def call(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)
    return call

combined.CombinedProgram.evaluate = counted("evaluations", combined.CombinedProgram.evaluate)
_json.loads = counted("parses", _json.loads)
config = ServeConfig(
    policies=Path("policies"), audit_log=str(scratch / "audit.log"),
    state=f"sqlite:///{scratch}/state.db",
)
authorizer = PolicyAuthorizer.from_config(config)
authorizer.start()
answers = []
for _ in range(checks):
    decision = authorizer.check(request_from_check(workload.check_request()))
    answers.append([decision.allowed, decision.http_status, decision.policy])
authorizer.stop()
lines = (scratch / "audit.log").read_text().splitlines()
print(json.dumps({"answers": answers, "audit_lines": len(lines), **counts}))
"""


def _run(stages: str, scratch: Path) -> dict:
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, stages, str(scratch), str(CHECKS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def everything_on(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run("none", tmp_path_factory.mktemp("on") / "run")


def test_with_every_stage_on_each_check_does_the_work(everything_on: dict) -> None:
    assert everything_on["evaluations"] == CHECKS
    assert everything_on["parses"] == CHECKS
    assert everything_on["audit_lines"] == CHECKS
    assert everything_on["answers"][0][0] is True  # the valid request is allowed


def test_all_stages_off_give_the_same_answers_without_the_work(
    everything_on: dict, tmp_path: Path
) -> None:
    off = _run(",".join(STAGES), tmp_path / "run")
    assert off["answers"] == everything_on["answers"]
    # Decode and engine ran for the first check only; nothing was audited.
    assert off["evaluations"] == 1
    assert off["parses"] == 1
    assert off["audit_lines"] == 0


@pytest.mark.parametrize(
    ("stage", "evaluations", "parses", "audit_lines"),
    [("engine", 1, CHECKS, CHECKS), ("decode", CHECKS, 1, CHECKS), ("audit", CHECKS, CHECKS, 0)],
)
def test_one_stage_off_leaves_the_others_working(
    everything_on: dict,
    tmp_path: Path,
    stage: str,
    evaluations: int,
    parses: int,
    audit_lines: int,
) -> None:
    off = _run(stage, tmp_path / "run")
    assert off["answers"] == everything_on["answers"]
    assert (off["evaluations"], off["parses"], off["audit_lines"]) == (
        evaluations,
        parses,
        audit_lines,
    )


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown stage"):
        parse_stages("engine,cache")
    assert parse_stages("none") == set()
