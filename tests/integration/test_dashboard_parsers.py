"""The dashboard's request-counter parsers (pure functions; no services needed)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from djscale.cluster.dashboard import (
    count_access_lines,
    haproxy_server_totals,
    metrics_request_total,
)


def test_metrics_request_total_sums_the_djscale_request_counter_over_labels() -> None:
    registry = CollectorRegistry()
    requests = Counter("djscale_http_requests", "requests", ["method", "view"],
                       registry=registry)
    cache = Counter("djscale_cache_requests", "cache lookups", ["result"], registry=registry)
    requests.labels("GET", "whoami").inc(5)
    requests.labels("POST", "visit").inc(2)
    requests.labels("GET", "djscale-metrics").inc(40)  # the dashboard's own scrapes
    requests.labels("GET", "djscale-health-ready").inc(40)
    cache.labels("hit").inc(100)
    assert metrics_request_total(generate_latest(registry).decode()) == 7


def test_metrics_without_a_request_counter_or_unparsable_give_none() -> None:
    registry = CollectorRegistry()
    Counter("djscale_cache_requests", "cache lookups", registry=registry).inc(3)
    assert metrics_request_total(generate_latest(registry).decode()) is None
    assert metrics_request_total("<html>not found</html>") is None


def test_haproxy_show_stat_gives_stot_per_server_of_the_app_backend() -> None:
    csv = (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,status\n"
        "djscale_front,FRONTEND,,,0,1,8192,40,0,0,OPEN\n"
        "djscale_app,app-1,0,0,0,1,,25,0,0,UP\n"
        "djscale_app,app-2,0,0,0,1,,15,0,0,DOWN\n"
        "djscale_app,BACKEND,0,0,0,1,,40,0,0,UP\n"
    )
    assert haproxy_server_totals(csv) == {"app-1": 25, "app-2": 15}
    assert haproxy_server_totals("Unknown command\n") == {}


def test_access_log_counts_request_lines_but_not_health_checks_or_scrapes() -> None:
    log = (
        b'[2026-11-26 12:00:00 +0000] [1] [INFO] Booting worker with pid: 1\n'
        b'127.0.0.1 - - [26/Nov/2026:12:00:01 +0000] "GET /whoami HTTP/1.1" 200 90 "-" "-"\n'
        b'127.0.0.1 - - [26/Nov/2026:12:00:01 +0000] "POST /visit HTTP/1.0" 201 70 "-" "-"\n'
        b'127.0.0.1 - - [26/Nov/2026:12:00:01 +0000] "GET /health/live HTTP/1.1" 200 2 "-" "-"\n'
        b'127.0.0.1 - - [26/Nov/2026:12:00:01 +0000] "GET /metrics HTTP/1.1" 404 9 "-" "-"\n'
    )
    assert count_access_lines(log) == 2
