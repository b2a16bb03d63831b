"""Kubernetes manifests from a topology: valid offline, complete, secrets by reference only.

Validation (offline, no cluster): built-in kinds against the Kubernetes 1.30 JSON schemas
shipped by ``kubernetes-validate`` in *strict* mode (unknown fields fail); CloudNativePG
``Cluster``/``Pooler`` and the Prometheus ``ServiceMonitor`` against the hand-checked CRD
subsets vendored in ``tests/unit/schemas/`` (see its README); the ``Kustomization`` by
its structure (it lists exactly the generated files).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from djscale.deploy import connection_budget, kubernetes_manifests, load_manifests
from djscale.errors import TopologyError
from djscale.settings import from_topology
from djscale.topology import Topology, load, parse

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.30"
CRD_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "cnpg-cluster-v1.json",
    ("postgresql.cnpg.io/v1", "Pooler"): "cnpg-pooler-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
}
# Every example topology in the repository (the demo; the shop's users, products, orders
# and gateway) and ours.
TOPOLOGIES = sorted([*ROOT.glob("examples/*/*.toml"), *ROOT.glob("deploy/*.toml")])
COMMITTED = {ROOT / "examples/demo/djscale.toml": ROOT / "deploy/demo",
             ROOT / "deploy/scaled.toml": ROOT / "deploy/scaled"}


def _objects(path: Path) -> tuple[Topology, list[tuple[str, dict[str, Any]]]]:
    topo = load(path)
    manifests = kubernetes_manifests(topo, topology_text=path.read_text(encoding="utf-8"))
    return topo, [(m.filename, o) for m in manifests for o in m.objects]


def validate(obj: Mapping[str, Any]) -> str:
    """Validate one object offline; return what it was validated against."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema).validate(obj)
        return CRD_SCHEMAS[key]
    if obj["kind"] == "Kustomization":
        assert obj["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert set(obj) == {"apiVersion", "kind", "resources"}
        return "kustomization structure"
    kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
    return f"kubernetes {K8S_VERSION} strict"


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_manifest_validates_offline(path: Path) -> None:
    _, objects = _objects(path)
    checked = {}
    for filename, obj in objects:
        try:
            checked[(filename, obj["kind"], obj["metadata"]["name"]
                     if "metadata" in obj else "")] = validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"{filename} {obj['kind']}: {'.'.join(map(str, exc.path))}: "
                        f"{exc.message}")
    kinds = {kind for (_, kind, _) in checked}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Ingress",
            "HorizontalPodAutoscaler", "PodDisruptionBudget", "Cluster", "ServiceMonitor",
            "StatefulSet", "Job", "Kustomization"} <= kinds


def test_strict_validation_rejects_a_misspelled_field() -> None:
    _, objects = _objects(ROOT / "deploy/scaled.toml")
    deployment = next(o for _, o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    pooler = next(o for _, o in objects if o["kind"] == "Pooler")
    pooler["spec"]["pgbouncer"]["poolMode"] = "statement"
    with pytest.raises(jsonschema.ValidationError):
        validate(pooler)


@pytest.mark.parametrize(("topology", "folder"), COMMITTED.items(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_example_manifests_are_up_to_date(topology: Path, folder: Path) -> None:
    topo = load(topology)
    manifests = kubernetes_manifests(topo, topology_text=topology.read_text(encoding="utf-8"))
    for manifest in manifests:
        committed = folder / manifest.filename
        assert committed.read_text(encoding="utf-8") == manifest.to_yaml(), (
            f"{committed} is stale: run `djscale deploy kubernetes -t "
            f"{topology.relative_to(ROOT)} -o {folder.relative_to(ROOT)}`")
    assert {p.name for p in folder.glob("*.yaml")} == {m.filename for m in manifests}
    assert len(load_manifests(folder)) == sum(len(m.objects) for m in manifests)


def test_app_has_probes_autoscaler_budget_and_resources() -> None:
    topo, objects = _objects(ROOT / "deploy/scaled.toml")
    by_kind = {(o["kind"], o["metadata"]["name"]): o for _, o in objects if "metadata" in o}
    app = by_kind[("Deployment", "demo-app")]
    assert "replicas" not in app["spec"]  # the autoscaler owns it
    container = app["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}}
    assert container["command"][:2] == ["gunicorn", "demo.wsgi:application"]
    hpa = by_kind[("HorizontalPodAutoscaler", "demo-app")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (4, 20)
    assert by_kind[("PodDisruptionBudget", "demo-app")]["spec"]["maxUnavailable"] == 1
    ingress = by_kind[("Ingress", "demo")]["spec"]
    assert ingress["tls"] == [{"secretName": "demo-tls", "hosts": ["demo.example.com"]}]
    assert ingress["rules"][0]["host"] == "demo.example.com"
    monitor = by_kind[("ServiceMonitor", "demo-app")]["spec"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert monitor["selector"]["matchLabels"] == by_kind[("Service", "demo-app")]["spec"][
        "selector"]
    worker = by_kind[("Deployment", "demo-celery")]
    assert worker["spec"]["replicas"] == topo.celery.workers


def test_the_outbox_relay_runs_as_its_own_deployment_when_the_topology_asks() -> None:
    topo, objects = _objects(ROOT / "examples/demo/djscale.toml")
    assert topo.celery.relay
    relay = {o["metadata"]["name"]: o for _, o in objects
             if o["kind"] == "Deployment"}["demo-relay"]
    container = relay["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "django", "events_relay",
                                    "--app", topo.celery.app]
    assert relay["spec"]["replicas"] == 1
    _, without = _objects(ROOT / "deploy/scaled.toml")
    assert "demo-relay" not in {o["metadata"]["name"] for _, o in without
                                if o["kind"] == "Deployment"}


def test_one_postgres_cluster_and_one_transaction_pooler_per_replication_group() -> None:
    topo, objects = _objects(ROOT / "deploy/scaled.toml")
    clusters = {o["metadata"]["name"]: o["spec"] for _, o in objects if o["kind"] == "Cluster"}
    poolers = {o["metadata"]["name"]: o["spec"] for _, o in objects if o["kind"] == "Pooler"}
    assert set(clusters) == {"demo-pg-default", "demo-pg-shard1", "demo-pg-shard2"}
    assert clusters["demo-pg-default"]["instances"] == 3
    assert clusters["demo-pg-shard1"]["instances"] == 2
    assert {p["cluster"]["name"] for p in poolers.values()} == set(clusters)
    assert {p["pgbouncer"]["poolMode"] for p in poolers.values()} == {"transaction"}
    budget = connection_budget(topo, app_servers=20, pooler_instances=2)
    assert clusters["demo-pg-default"]["postgresql"]["parameters"]["max_connections"] == str(
        budget.max_connections)


def test_redis_cluster_is_a_statefulset_formed_by_a_job() -> None:
    topo, objects = _objects(ROOT / "deploy/scaled.toml")
    sts = {o["metadata"]["name"]: o["spec"] for _, o in objects if o["kind"] == "StatefulSet"}
    assert sts["demo-redis"]["replicas"] == topo.redis.nodes == 6
    assert "--cluster-enabled" in sts["demo-redis"]["template"]["spec"]["containers"][0]["args"]
    assert sts["demo-redis-broker"]["replicas"] == 1

    def policy(name: str) -> str:
        args = sts[name]["template"]["spec"]["containers"][0]["args"]
        return str(args[args.index("--maxmemory-policy") + 1])

    # The cache may evict anything; the broker's queued tasks never.
    assert (policy("demo-redis"), policy("demo-redis-broker")) == ("allkeys-lru", "noeviction")
    job = next(o for _, o in objects if o["metadata"].get("name") == "demo-redis-cluster-create")
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "--cluster-replicas 1" in script


def test_secrets_are_only_referenced_never_inlined() -> None:
    for path in TOPOLOGIES:
        _, objects = _objects(path)
        assert not [o for _, o in objects if o["kind"] == "Secret"]
        for _, obj in objects:
            for node in _walk(obj):
                if isinstance(node, Mapping) and "name" in node and (
                        "value" in node or "valueFrom" in node) and any(
                        w in node["name"] for w in ("PASSWORD", "SECRET", "TOKEN")):
                    assert "value" not in node, node
                    assert "secretKeyRef" in node["valueFrom"], node
        config = [o for _, o in objects if o["kind"] == "ConfigMap"]
        assert "password" not in json.dumps(config).lower()


def test_pods_rebuild_their_settings_from_the_same_topology_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "deploy/scaled.toml"
    _, objects = _objects(path)
    configs = {o["metadata"]["name"]: o["data"] for _, o in objects if o["kind"] == "ConfigMap"}
    text = configs["demo-topology"]["djscale.toml"]
    assert parse(tomllib.loads(text)) == parse(tomllib.loads(path.read_text()))
    for name, value in configs["demo-env"].items():
        monkeypatch.setenv(name, value)
    settings = from_topology(parse(tomllib.loads(text)), state_dir=tmp_path)
    dbs = settings["DATABASES"]
    assert (dbs["default"]["HOST"], dbs["default"]["PORT"]) == ("demo-pg-default-pooler", "5432")
    assert dbs["shard2"]["HOST"] == "demo-pg-shard2-pooler"
    assert dbs["default"]["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert dbs["default_replica2"]["HOST"] == "demo-pg-default-ro"
    assert settings["CACHES"]["default"]["LOCATION"][0] == "redis://demo-redis-0.demo-redis:6379"
    assert settings["CELERY_BROKER_URL"] == "redis://demo-redis-broker:6379/0"


def test_connection_budget_grows_with_app_servers_and_pooling_caps_the_primary() -> None:
    topo = parse({"app": {"servers": 4, "workers": 4, "threads": 8},
                  "celery": {"workers": 2, "concurrency": 4, "app": "p.celery:app"}})
    direct = connection_budget(topo)
    assert (direct.app_clients, direct.worker_clients, direct.clients) == (128, 8, 137)
    assert direct.primary_backends == 137 and direct.max_connections == 147
    assert connection_budget(topo, app_servers=40).primary_backends == 1289
    pooled = parse({"app": {"servers": 40, "workers": 4, "threads": 8},
                    "pgbouncer": {"enabled": True, "default_pool_size": 25}})
    budget = connection_budget(pooled, pooler_instances=2)
    assert (budget.clients, budget.primary_backends, budget.max_connections) == (1281, 50, 60)
    with_replicas = parse({"postgres": {"replicas": 1}, "pgbouncer": {"enabled": True}})
    assert connection_budget(with_replicas).replica_backends == connection_budget(
        with_replicas).clients


def test_a_name_too_long_for_kubernetes_is_a_topology_error() -> None:
    topo = parse({"project": {"name": "a" * 31}, "shards": [{"name": "b" * 31}],
                  "pgbouncer": {"enabled": True}})
    with pytest.raises(TopologyError, match=r"Kubernetes name .* is invalid"):
        kubernetes_manifests(topo, topology_text="")


def test_cli_writes_the_manifests_and_reports_errors_on_one_line(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    ok = subprocess.run([sys.executable, "-m", "djscale.cli", "deploy", "kubernetes",
                         "--topology", str(ROOT / "examples/demo/djscale.toml"),
                         "--out", str(out)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert (out / "50-app.yaml").exists() and "kubectl apply -k" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[kubernetes]\nnamespace = "Not_Valid"\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "djscale.cli", "deploy", "kubernetes",
                           "--topology", str(bad), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("djscale: error: ")
    assert "kubernetes.namespace" in proc.stderr


def test_a_gateway_topology_gets_a_gateway_deployment_behind_the_ingress() -> None:
    topo = parse({"project": {"name": "gw"},
                  "services": {"users": {"urls": ["http://users-app.users"]}},
                  "gateway": {"routes": [{"prefix": "/api/users/", "service": "users"}]}})
    objects = [o for m in kubernetes_manifests(topo, topology_text="") for o in m.objects]
    for obj in objects:
        validate(obj)
    gateway = next(o for o in objects if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "gw-gateway")
    assert "djscale.services.gateway:create_app" in gateway["spec"]["template"]["spec"][
        "containers"][0]["command"]
    ingress = next(o for o in objects if o["kind"] == "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "gw-gateway"


def test_synchronous_group_waits_for_a_standby_in_cloudnativepg_too() -> None:
    topo = parse({"postgres": {"replicas": 2, "ha": "patroni", "synchronous": True},
                  "redis": {"port": 6379}})
    manifests = kubernetes_manifests(topo, topology_text="")
    clusters = [o for m in manifests for o in m.objects if o["kind"] == "Cluster"]
    assert [(c["spec"]["minSyncReplicas"], c["spec"]["maxSyncReplicas"]) for c in clusters] == [
        (1, 2)]
    for cluster in clusters:
        validate(cluster)
