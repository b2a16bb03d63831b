"""The autoscaler's policy and measurements (pure logic); the same policy as a Kubernetes HPA."""

from __future__ import annotations

import math
from typing import Any

import kubernetes_validate
import pytest

from djscale.cluster.autoscale import Policy, histogram_quantile
from djscale.deploy import kubernetes_manifests
from djscale.deploy.kubernetes import LATENCY_METRIC
from djscale.errors import TopologyError
from djscale.topology import AutoscaleSpec, parse

SPEC = AutoscaleSpec(min=1, max=4, metric="latency", target=100.0, cooldown=30.0)


def test_p95_is_interpolated_inside_its_bucket_as_promql_does() -> None:
    # 100 requests: 90 under 10 ms, 10 between 50 and 100 ms.
    buckets = {0.01: 90.0, 0.05: 90.0, 0.1: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.075)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 * 50 / 90)


def test_p95_in_the_inf_bucket_is_the_highest_finite_bound_and_none_without_requests() -> None:
    assert histogram_quantile(0.95, {0.1: 1.0, math.inf: 100.0}) == 0.1
    assert histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}) is None


def test_latency_over_target_scales_up_at_once_by_the_kubernetes_formula() -> None:
    policy = Policy(SPEC)
    assert policy.desired(0.0, 1, 250.0) == 3  # ceil(1 * 250 / 100)
    assert policy.desired(0.0, 2, 1000.0) == 4  # capped at max


def test_no_second_change_within_the_cooldown() -> None:
    policy = Policy(SPEC)
    policy.changed(100.0)
    assert policy.desired(110.0, 2, 300.0) == 2
    assert policy.desired(131.0, 2, 300.0) == 4


def test_within_the_tolerance_nothing_changes() -> None:
    policy = Policy(SPEC)
    assert policy.desired(0.0, 2, 105.0) == 2
    assert policy.desired(1000.0, 2, 95.0) == 2


def test_scale_down_one_server_only_after_a_cooldown_of_low_load() -> None:
    policy = Policy(SPEC)
    assert policy.desired(0.0, 4, 10.0) == 4  # low from now on
    assert policy.desired(20.0, 4, 10.0) == 4
    assert policy.desired(31.0, 4, None) == 3  # no traffic counts as low
    policy.changed(31.0)
    assert policy.desired(50.0, 3, 10.0) == 3
    assert policy.desired(62.0, 3, 10.0) == 3  # low since 50 only
    assert policy.desired(81.0, 3, 10.0) == 2


def test_a_spike_restarts_the_low_load_clock() -> None:
    policy = Policy(SPEC)
    policy.desired(0.0, 3, 10.0)
    policy.desired(10.0, 3, 95.0)  # near target: not low
    assert policy.desired(35.0, 3, 10.0) == 3
    assert policy.desired(66.0, 3, 10.0) == 2


def test_never_below_min_nor_above_max() -> None:
    policy = Policy(SPEC)
    assert policy.desired(1000.0, 1, None) == 1
    assert policy.desired(0.0, 6, 10.0) == 4
    assert policy.desired(0.0, 0, 10.0) == 1


def _topology(app: dict[str, Any], kubernetes: dict[str, Any] | None = None) -> Any:
    return parse({"project": {"name": "demo"}, "app": app, "kubernetes": kubernetes or {}})


def test_autoscale_keys_are_typed_with_one_line_errors() -> None:
    topo = _topology({"servers": 2, "autoscale": {"min": 1, "max": 6, "target": 200}})
    assert topo.app.autoscale == AutoscaleSpec(min=1, max=6, target=200.0)
    assert (topo.kubernetes.min_replicas, topo.kubernetes.max_replicas) == (1, 6)
    with pytest.raises(TopologyError, match=r"app\.autoscale\.metric"):
        _topology({"autoscale": {"metric": "memory"}})
    with pytest.raises(TopologyError, match="max = 1 is below"):
        _topology({"servers": 1, "autoscale": {"min": 2, "max": 1}})
    with pytest.raises(TopologyError, match=r"outside app\.autoscale's range"):
        _topology({"servers": 5, "autoscale": {"max": 4}})
    with pytest.raises(TopologyError, match=r"unknown key 'app\.autoscale\.targt'"):
        _topology({"autoscale": {"targt": 1}})


def _hpa(topo: Any) -> dict[str, Any]:
    for manifest in kubernetes_manifests(topo, topology_text=""):
        for obj in manifest.objects:
            if obj["kind"] == "HorizontalPodAutoscaler":
                kubernetes_validate.validate(obj, "1.30", strict=True)
                return dict(obj["spec"])
    raise AssertionError("no HPA rendered")


def test_hpa_follows_p95_latency_where_prometheus_adapter_runs() -> None:
    hpa = _hpa(_topology({"servers": 1, "autoscale": {"max": 5, "target": 250,
                                                      "cooldown": 45}},
                         {"prometheus_adapter": True}))
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 5)
    assert hpa["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": LATENCY_METRIC},
        "target": {"type": "AverageValue", "averageValue": "250m"}}}]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 45
    assert hpa["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 45}]
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_hpa_falls_back_to_cpu_without_prometheus_adapter() -> None:
    latency = _hpa(_topology({"servers": 1, "autoscale": {"target": 250}},
                             {"target_cpu_percent": 65}))
    assert latency["metrics"][0]["resource"]["target"]["averageUtilization"] == 65
    cpu = _hpa(_topology({"servers": 1, "autoscale": {"metric": "cpu", "target": 55}}))
    assert cpu["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}}]


@pytest.mark.parametrize(("header", "seconds"), [
    ("t=1764800000.123", 1764800000.123),  # nginx $msec
    ("t=1764800000123456", 1764800000.123456),  # HAProxy date(0,us)
    ("t=1764800000123", 1764800000.123),  # milliseconds
    ("1764800000", 1764800000.0),
])
def test_x_request_start_is_read_in_seconds_milliseconds_or_microseconds(
        header: str, seconds: float) -> None:
    from djscale.http.metrics import request_start

    assert request_start(header) == pytest.approx(seconds)


@pytest.mark.parametrize("header", ["", "t=", "t=abc", "t=-5", "t=nan", "t=" + "9" * 40])
def test_an_unreadable_x_request_start_is_ignored(header: str) -> None:
    from djscale.http.metrics import request_start

    assert request_start(header) is None
