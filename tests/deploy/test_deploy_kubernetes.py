"""deploy/kubernetes: the Kustomize manifests are complete, consistent and match the real CLI.

No cluster here: the manifests are parsed in Python, cross-checked against each other and against
`authz-server serve`'s argument parser. When `kubectl` is installed, `kubectl kustomize` also
builds the set.
"""

from __future__ import annotations

import ast
import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server import cli
from authz_server.policy.loader import load_directory
from authz_server.state import parse_url

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"

EXPECTED = {
    "Namespace": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "ServiceMonitor": "monitoring.coreos.com/v1",
}


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text(encoding="utf-8"))


def resources() -> list[dict[str, Any]]:
    found = []
    for name in kustomization()["resources"]:
        path = KUSTOMIZE / name
        assert path.is_file(), f"kustomization.yaml lists {name}, which does not exist"
        found += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return found


def one(kind: str, name: str = "authz-server") -> dict[str, Any]:
    (found,) = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container() -> dict[str, Any]:
    (found,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return found


def env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def pod_labels() -> dict[str, str]:
    return one("Deployment")["spec"]["template"]["metadata"]["labels"]


def test_every_resource_has_the_expected_kind_and_api_version() -> None:
    kinds = {}
    for resource in resources():
        assert resource["kind"] in EXPECTED, resource["kind"]
        assert resource["apiVersion"] == EXPECTED[resource["kind"]]
        kinds[resource["kind"]] = True
    assert set(kinds) == set(EXPECTED)


def test_every_yaml_file_in_the_directory_is_used() -> None:
    listed = set(kustomization()["resources"]) | {"kustomization.yaml"}
    on_disk = {p.name for p in KUSTOMIZE.glob("*.yaml")}
    assert on_disk == listed


def test_the_policy_configmap_holds_exact_copies_of_every_example_policy() -> None:
    (generator,) = kustomization()["configMapGenerator"]
    listed = [KUSTOMIZE / f for f in generator["files"]]
    # Every file of policies/ itself: the policy files and the JWK set authentication.yaml reads
    # (ConfigMap keys cannot hold subdirectories, so policies/tests/ stays out).
    examples = sorted(p for p in (ROOT / "policies").iterdir() if p.is_file())
    assert "jwks.json" in {p.name for p in examples}
    assert sorted(p.name for p in listed) == [p.name for p in examples]
    for copy, original in zip(sorted(listed), examples, strict=True):
        assert copy.read_bytes() == original.read_bytes(), f"{copy} differs from {original}"
    # and the set loads as it does from policies/, its Authentication document with its keys
    deployed = load_directory(KUSTOMIZE / "policies")
    shipped = load_directory(ROOT / "policies")
    assert len(deployed.policies) == len(shipped.policies)
    assert deployed.authentication is not None and shipped.authentication is not None
    assert set(deployed.authentication.issuers) == set(shipped.authentication.issuers)


def test_policies_are_mounted_where_the_server_reads_them_and_reload_in_place() -> None:
    (generator,) = kustomization()["configMapGenerator"]
    # A hashed name would roll the Deployment on every change instead of reloading in place.
    assert generator["options"]["disableNameSuffixHash"] is True
    assert "generatorOptions" not in kustomization()  # it would take the Secret's hash too
    spec = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in container()["volumeMounts"] if m["mountPath"] == env()["AUTHZ_POLICIES"]]
    # subPath mounts never see ConfigMap updates.
    assert "subPath" not in mount
    assert volumes[mount["name"]]["configMap"]["name"] == generator["name"]


def test_container_is_locked_down() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_temporary_files_have_a_writable_volume_on_the_read_only_root() -> None:
    # --workers > 1 keeps the shared metric files in a tempfile.mkdtemp() directory.
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    (tmp,) = [m for m in container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert not tmp.get("readOnly", False)


def test_the_state_store_is_a_file_on_a_writable_volume_on_the_read_only_root() -> None:
    # Revocations and the DPoP replay cache live in the state store, and a store that cannot be
    # written makes /readyz fail. The default file lies under the home directory, on the
    # read-only root, so AUTHZ_STATE must name a volume.
    state = parse_url(env()["AUTHZ_STATE"])
    assert state.scheme == "sqlite" and state.path is not None
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container()["volumeMounts"] if state.path.parent == Path(m["mountPath"])]
    assert "emptyDir" in volumes[mount["name"]]
    assert not mount.get("readOnly", False)


def test_probes_hit_healthz_and_readyz_on_the_http_port() -> None:
    c = container()
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9001}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9001}
    assert env()["AUTHZ_HTTP_ADDRESS"].rsplit(":", 1)[1] == "9001"
    assert env()["AUTHZ_GRPC_ADDRESS"].rsplit(":", 1)[1] == "9000"


def _env_names_the_cli_reads() -> set[str]:
    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("_env", "_env_flag", "_env_number")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(f"AUTHZ_{node.args[0].value}")
    assert "AUTHZ_POLICIES" in names and "AUTHZ_WORKERS" in names  # the scan itself works
    return names


def test_env_and_args_are_ones_the_cli_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = env()
    unknown = set(variables) - _env_names_the_cli_reads()
    assert not unknown, f"authz-server reads no such environment variables: {unknown}"
    for name in list(os.environ):
        if name.startswith("AUTHZ_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # The CLI reads AUTHZ_* when the parser is built; a bad value or flag fails here.
    args = cli.build_parser().parse_args(container()["args"])
    assert args.command == "serve"
    assert str(args.policies) == "/etc/authz-server/policies"
    assert args.audit_log == "-"
    assert (
        args.grace_period
        < one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_workers_match_the_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHZ_POLICIES", "/p")
    args = cli.build_parser().parse_args(container()["args"])
    assert args.workers == _cpus(container()["resources"]["limits"]["cpu"])
    assert "cpu" in container()["resources"]["requests"]  # the HPA's utilisation needs it


# Resident sizes measured on Python 3.11 with the example policies (`serve --workers 2`, idle:
# supervisor 22 MiB, each worker 73 MiB), rounded up; and what one worker can add between two of
# its memory checks (every 0.5 s): CheckRequests of up to 8 MiB on its gRPC threads and a body
# decoded into Python objects.
SUPERVISOR_MIB = 32
IDLE_WORKER_MIB = 96
BURST_MIB = 64
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9}


def _mib(quantity: str) -> float:
    """A Kubernetes memory quantity (``512Mi``, ``1Gi``, ``800M``, bytes) in MiB."""
    for suffix, factor in {**_BINARY, **_DECIMAL}.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor / 2**20
    return float(quantity) / 2**20


def test_workers_replaced_for_memory_fit_the_container_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("AUTHZ_"):
            monkeypatch.delenv(name)
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    args = cli.build_parser().parse_args(container()["args"])
    limit = _mib(container()["resources"]["limits"]["memory"])
    rss = args.max_worker_rss_mib
    assert rss > 0, "without --max-worker-rss-mib nothing stops the leak before the OOM killer"
    # A worker is replaced long before the limit: well above what a fresh one uses, or workers
    # would be replaced in a loop.
    assert rss >= 2 * IDLE_WORKER_MIB
    # Memory-backed volumes count against the container's limit.
    mounted = {m["name"] for m in container()["volumeMounts"]}
    in_memory = sum(
        _mib(v["emptyDir"]["sizeLimit"])
        for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] in mounted and v.get("emptyDir", {}).get("medium") == "Memory"
    )
    # The worst moment: every worker at its limit plus a burst, and one successor started
    # beside the worker it replaces (the old one serves until the new one is ready).
    peak = (
        SUPERVISOR_MIB
        + args.workers * (rss + BURST_MIB)
        + (IDLE_WORKER_MIB + BURST_MIB)
        + in_memory
    )
    assert peak <= limit, (
        f"{args.workers} workers replaced at {rss} MiB need up to {peak:.0f} MiB, "
        f"over the {limit:.0f} MiB limit: the pod is OOM-killed before a worker is replaced"
    )
    assert _mib(container()["resources"]["requests"]["memory"]) <= limit


def test_service_ports_match_the_container_ports() -> None:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"grpc": 9000, "http-metrics": 9001, "admin": 9002}
    for name in ("authz-server", "authz-server-headless", "authz-server-admin"):
        service = one("Service", name)
        assert service["spec"]["selector"].items() <= pod_labels().items()
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"]
    grpc = {p["name"]: p for p in one("Service")["spec"]["ports"]}["grpc"]
    assert grpc["appProtocol"] == "grpc"
    assert one("Service", "authz-server-headless")["spec"]["clusterIP"] == "None"


def _admin_args(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in list(os.environ):
        if name.startswith("AUTHZ_"):
            monkeypatch.delenv(name)
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    return cli.build_parser().parse_args(container()["args"])


def test_the_admin_listener_has_a_service_of_its_own_on_port_9002(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = _admin_args(monkeypatch)
    host, port = args.admin_address.rsplit(":", 1)
    # Beyond loopback, or the Service could not reach it (serve then requires the token file).
    assert host == "0.0.0.0" and int(port) == 9002
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    admin = one("Service", "authz-server-admin")["spec"]
    (service_port,) = admin["ports"]
    assert ports[service_port["targetPort"]] == 9002 == service_port["port"]
    # Page sessions live in one pod's memory: a browser must stay on the pod it logged in to.
    assert admin["sessionAffinity"] == "ClientIP"
    # The gRPC Services, which gateways reach, never carry the admin port.
    for name in ("authz-server", "authz-server-headless"):
        assert 9002 not in {p["port"] for p in one("Service", name)["spec"]["ports"]}
    # The approval links agents are sent to name where people reach the page.
    assert args.admin_public_url.startswith(("http://", "https://"))


def test_the_admin_token_comes_from_a_secret_mounted_read_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = _admin_args(monkeypatch).admin_token_file
    assert token_file == Path("/var/run/secrets/authz-admin/token")
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container()["volumeMounts"] if Path(m["mountPath"]) == token_file.parent]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    # The non-root server reads it through the pod's fsGroup; nobody else can.
    assert secret["defaultMode"] == 0o440
    assert (
        one("Deployment")["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
        == (one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsGroup"])
    )
    # The Secret is generated from a file the operator makes: its key is the file's name, and no
    # token is shipped (the file is ignored by git and absent from the repository).
    (generator,) = kustomization()["secretGenerator"]
    assert generator["name"] == secret["secretName"]
    (source,) = generator["files"]
    key, _, file = source.partition("=")
    assert key == token_file.name
    assert "options" not in generator  # hashed name: a new token rolls the pods
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(KUSTOMIZE / file)], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, f"{file} is not in .gitignore"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(KUSTOMIZE / file)],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert tracked.returncode != 0, f"{file} is in the repository"


def test_pdb_hpa_and_service_monitor_select_the_pods() -> None:
    labels = pod_labels()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "authz-server",
    }
    assert hpa["minReplicas"] >= 2  # one can be disrupted while another serves
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    monitor = one("ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    # Exactly one selected Service has the scraped port, so every pod is scraped once.
    scraped = [
        s
        for s in resources()
        if s["kind"] == "Service"
        and monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["authz-server"]


def _kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_set(tmp_path: Path) -> None:
    # A copy, with the admin token an operator makes first.
    directory = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE, directory, ignore=shutil.ignore_patterns("admin-token"))
    assert _kustomize(directory).returncode != 0  # no token, nothing to apply
    (directory / "admin-token").write_text("a-token-made-for-this-test-0123456789\n")
    done = _kustomize(directory)
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert {d["metadata"].get("namespace") for d in built if d["kind"] != "Namespace"} == {
        "authz-server"
    }
    (configmap,) = [d for d in built if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"] == "authz-server-policies"
    assert set(configmap["data"]) == {p.name for p in (ROOT / "policies").iterdir() if p.is_file()}
    # The Secret holds the token under "token", and the Deployment mounts it by its hashed name.
    (secret,) = [d for d in built if d["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("authz-admin-token-")
    assert base64.b64decode(secret["data"]["token"]) == b"a-token-made-for-this-test-0123456789\n"
    (deployment,) = [d for d in built if d["kind"] == "Deployment"]
    secrets = [
        v["secret"]["secretName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert secrets == [secret["metadata"]["name"]]
