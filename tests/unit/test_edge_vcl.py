"""The [edge] topology table and the VCL generated from it (compiled in the integration tests)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from djscale.cluster.dashboard import edge_metrics
from djscale.cluster.varnish import EdgeStats, edge_home, validate_vcl, vcl
from djscale.deploy.kubernetes import kubernetes_manifests
from djscale.errors import TopologyError
from djscale.topology import parse


def _edge(**table: object) -> str:
    spec = parse({"edge": {"kind": "varnish", **table}}).edge
    return vcl(spec, backend_host="127.0.0.1", backend_port=8080)


def test_no_edge_by_default_and_varnish_purges_its_own_edge() -> None:
    assert parse({}).edge.kind == "none" and parse({}).edge.purger == "none"
    spec = parse({"edge": {"kind": "varnish"}}).edge
    assert spec.enabled and spec.purger == "varnish" and spec.purge_mode == "hard"


def test_cookies_are_dropped_only_on_the_public_paths() -> None:
    text = _edge(public_paths=["^/catalog/", "^/static/"])
    assert 'if (req.url ~ {"^/catalog/"} || req.url ~ {"^/static/"}) {' in text
    assert "unset req.http.Cookie;" in text
    assert "if (false) {" in _edge()  # nothing declared public: no cookie is dropped


def test_personal_requests_are_passed_and_personal_responses_never_stored() -> None:
    text = _edge(session_cookies=["sessionid", "auth_token"])
    assert r'req.http.Authorization || req.http.Cookie ~ {"(^|;\s*)(sessionid|auth_token)="}' \
        in text
    assert 'beresp.http.Set-Cookie || beresp.http.Cache-Control ~ ' \
           '"(?i)(private|no-store|no-cache)"' in text
    assert "set beresp.uncacheable = true;" in text


def test_grace_tags_and_purges_come_from_the_table() -> None:
    text = _edge(grace_seconds=42, purge_from=["10.0.0.0/8"])
    assert 'set beresp.grace = std.duration("42s", 0s);' in text
    assert '"10.0.0.0"/8;' in text
    assert "set beresp.http.xkey = beresp.http.Surrogate-Key;" in text
    assert "unset resp.http.Surrogate-Key;" in text and "unset resp.http.xkey;" in text
    assert "xkey.softpurge(req.http.xkey-softpurge)" in text


@pytest.mark.parametrize(("table", "message"), [
    ({"kind": "squid"}, "edge.kind"),
    ({"public_paths": ["(unclosed"]}, "not a regular expression"),
    ({"purge_from": ["example.com"]}, "edge.purge_from[0]"),
    ({"purger": "fastly"}, "needs edge.service_id"),
    ({"purger": "cloudfront", "distribution_id": "E1"}, "needs edge.aws_key_id_env"),
    ({"token": "secret"}, "never goes in the topology file"),
    ({"session_cookies": ["bad cookie"]}, "cookie name"),
    ({"purge_urls": ["varnish:6081"]}, "http(s) URL"),
])
def test_a_bad_edge_table_is_one_clear_error(table: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(message)):
        parse({"edge": table})


def test_hit_ratio_counts_lookups_not_passes() -> None:
    stats = EdgeStats(hits=95, misses=5, passes=50, grace_hits=0, purges=3, objects_purged=0,
                      requests=150, backend_failures=0)
    assert stats.hit_ratio == 0.95
    assert "hit ratio 95.0%" in stats.summary()
    empty = EdgeStats(0, 0, 0, 0, 0, 0, 0, 0)
    assert empty.hit_ratio is None


def test_kubernetes_gets_a_varnish_deployment_with_the_same_vcl_in_front_of_the_app(
        tmp_path: Path) -> None:
    topo = parse({"project": {"name": "shop"},
                  "edge": {"kind": "varnish", "public_paths": ["^/api/products/"],
                           "purge_from": ["10.0.0.0/8"]}})
    manifests = kubernetes_manifests(topo, topology_text="")
    objects = {(o["kind"], o["metadata"]["name"]): o for m in manifests for o in m.objects
               if "metadata" in o}
    text = objects[("ConfigMap", "shop-edge-vcl")]["data"]["default.vcl"]
    assert text == vcl(topo.edge, backend_host="shop-app", backend_port=80)
    assert '"10.0.0.0"/8;' in text
    if shutil.which("varnishd"):  # it compiles, xkey included
        home = edge_home(tmp_path)  # a folder varnishd's own user may read
        try:
            # Varnish resolves the backend when it loads the VCL: in the pod, the Service.
            validate_vcl(text.replace('"shop-app"', '"127.0.0.1"'), home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    pod = objects[("Deployment", "shop-edge")]["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][:2] == ["varnishd", "-F"]
    assert pod["volumes"][0]["configMap"]["name"] == "shop-edge-vcl"
    assert objects[("Service", "shop-edge")]["spec"]["ports"][0]["port"] == 80
    ingress = objects[("Ingress", "shop")]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"][
        "name"] == "shop-edge"
    env = objects[("ConfigMap", "shop-env")]["data"]
    assert env["DJSCALE_ADDR_EDGE"] == "shop-edge:80"  # where the app pods purge
    kustomization = next(m for m in manifests if m.filename == "kustomization.yaml")
    assert "57-edge.yaml" in kustomization.objects[0]["resources"]


def test_no_edge_no_varnish_in_kubernetes() -> None:
    manifests = kubernetes_manifests(parse({"project": {"name": "shop"}}), topology_text="")
    assert all(m.filename != "57-edge.yaml" for m in manifests)


def test_the_dashboard_exports_the_edge_counters_for_prometheus() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = edge_metrics([{"name": "edge", "hits": 95, "misses": 5, "passes": 7,
                          "grace_hits": 2, "purges": 3, "objects_purged": 1,
                          "hit_ratio": 0.95},
                         {"name": "down", "hits": None}])
    samples = {s.name: (s.labels, s.value) for f in text_string_to_metric_families(text)
               for s in f.samples}
    assert samples["djscale_edge_cache_hits_total"] == ({"edge": "edge"}, 95)
    assert samples["djscale_edge_cache_misses_total"][1] == 5
    assert samples["djscale_edge_cache_purges_total"][1] == 3
    assert samples["djscale_edge_cache_grace_hits_total"][1] == 2
    assert samples["djscale_edge_cache_hit_ratio"][1] == 0.95
    assert edge_metrics([]).count("# TYPE") == 7  # no edge: the families, no samples
