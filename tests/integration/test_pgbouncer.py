"""PgBouncer (transaction pooling) in front of real primaries, with real Django clients.

One cluster for the module: a primary and a shard primary, each behind its own PgBouncer,
Redis, and 4 gunicorn app servers x 2 workers x 16 threads running a small site that
imports the test settings (so DATABASES come from ``from_topology`` with PgBouncer on).
The primary's ``max_connections`` is lowered to 20 before anything connects.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from djscale.cluster import LocalCluster
from djscale.cluster import pgbouncer as pgb
from djscale.testing import ClusterFactory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

MAX_CONNECTIONS = 20
POOL_SIZE = 8
SERVERS, WORKERS, THREADS = 4, 2, 16

SITE = {
    "__init__.py": "",
    "settings.py": f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.settings import *  # noqa: F403 - the test settings, on this cluster
ROOT_URLCONF = "pgb_site.urls"
""",
    "wsgi.py": """
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
""",
    "urls.py": """
from django.db import connection, transaction
from django.http import JsonResponse
from django.urls import include, path

from tests.testapp.models import Note


def work(request):
    with transaction.atomic():
        note = Note.objects.create(author="load", text="x")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.005)")
    recent = [n.pk for n in Note.objects.filter(pk__lte=note.pk).order_by("-pk")[:6]
              .iterator(chunk_size=2)]
    return JsonResponse({"ok": recent[0] == note.pk})


urlpatterns = [path("work", work), path("", include("djscale.urls"))]
""",
}


@pytest.fixture(scope="module")
def cluster(djscale_cluster_factory: ClusterFactory, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[LocalCluster]:
    site = tmp_path_factory.mktemp("pgb-site")
    (site / "pgb_site").mkdir()
    for name, text in SITE.items():
        (site / "pgb_site" / name).write_text(text, encoding="utf-8")
    topology = {
        "project": {"name": "pgbtest", "pythonpath": str(site),
                    "settings": "pgb_site.settings", "wsgi": "pgb_site.wsgi:application"},
        "postgres": {"database": "pgbtest"},
        "shards": [{"name": "shard1"}],
        "app": {"servers": SERVERS, "workers": WORKERS, "threads": THREADS},
        "pgbouncer": {"enabled": True, "pool_mode": "transaction",
                      "default_pool_size": POOL_SIZE},
    }
    c = djscale_cluster_factory(topology, parts=("postgres",), name="pgbouncer")
    host, port = c.address("pg-default")
    with psycopg.connect(host=host, port=port, user="djscale", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
    c.stop_service("pg-default")
    c.start_service("pg-default")
    c.up(only=("pgbouncer", "redis", "migrate", "app"))
    yield c


def _primary_connections(c: LocalCluster) -> tuple[int, int]:
    """(max_connections, client backends on the application database) on the primary.

    Autovacuum workers also show the database's name in pg_stat_activity: not counted.
    """
    host, port = c.address("pg-default")
    with psycopg.connect(host=host, port=port, user="djscale", dbname="postgres",
                         autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int, "
            "(SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgbtest' "
            " AND backend_type = 'client backend')").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_each_primary_gets_its_own_pgbouncer_and_status_probes_it(cluster: LocalCluster) -> None:
    rows = {r.name: r for r in cluster.status()}
    assert rows["pgbouncer-default"].healthy and rows["pgbouncer-default"].kind == "pgbouncer"
    assert rows["pgbouncer-shard1"].healthy
    assert cluster.address("pgbouncer-default") != cluster.address("pg-default")


def test_django_transactions_and_iterators_work_through_transaction_pooling(
        cluster: LocalCluster) -> None:
    script = """
import json
from django.conf import settings
from django.db import connections, transaction
from tests.testapp.models import Note

with transaction.atomic():
    Note.objects.create(author="it", text="a")
    Note.objects.create(author="it", text="b")
try:
    with transaction.atomic():
        Note.objects.create(author="rolled-back", text="x")
        raise RuntimeError("roll back")
except RuntimeError:
    pass
Note.objects.bulk_create([Note(author="iter", text=str(i)) for i in range(50)])
# Without server-side cursors this streams with client-side fetches; with them (WITH HOLD
# cursors in autocommit) the FETCHes could land on another server connection.
outside = [n.text for n in Note.objects.filter(author="iter").order_by("pk").iterator(chunk_size=7)]
with transaction.atomic():
    inside = sum(1 for _ in Note.objects.filter(author="iter").iterator(chunk_size=5))
db = settings.DATABASES["default"]
with connections["default"].cursor() as cursor:
    cursor.execute("SELECT current_database()")
    current_db = cursor.fetchone()[0]
with connections["shard1"].cursor() as cursor:
    cursor.execute("SELECT inet_server_port()")
    shard_server_port = cursor.fetchone()[0]
print(json.dumps({
    "port": db["PORT"], "current_db": current_db,
    "shard_port": settings.DATABASES["shard1"]["PORT"], "shard_server_port": shard_server_port,
    "no_server_side_cursors": db["DISABLE_SERVER_SIDE_CURSORS"],
    "prepare_threshold": db["OPTIONS"]["prepare_threshold"],
    "committed": Note.objects.filter(author="it").count(),
    "rolled_back": Note.objects.filter(author="rolled-back").count(),
    "outside": outside, "inside": inside,
}))
"""
    out = json.loads(cluster.django_admin("shell", "-c", script).strip().splitlines()[-1])
    assert out["port"] == str(cluster.address("pgbouncer-default")[1])
    assert out["current_db"] == "pgbtest"
    # The shard is reached through its own PgBouncer, which forwards to the shard primary.
    assert out["shard_port"] == str(cluster.address("pgbouncer-shard1")[1])
    assert out["shard_server_port"] == cluster.address("pg-shard1")[1]
    assert out["no_server_side_cursors"] is True
    assert out["prepare_threshold"] is None
    assert (out["committed"], out["rolled_back"]) == (2, 0)
    assert out["outside"] == [str(i) for i in range(50)]
    assert out["inside"] == 50
    pools = {(p.database, p.user): p for p in pgb.pools(*cluster.address("pgbouncer-default"),
                                                        "djscale")}
    assert pools[("pgbtest", "djscale")].pool_mode == "transaction"


def test_four_app_servers_hold_far_more_client_connections_than_max_connections(
        cluster: LocalCluster) -> None:
    """Every gunicorn thread keeps its own Django connection; PgBouncer multiplexes them."""
    apps = [cluster.address(f"app-{i}") for i in range(1, SERVERS + 1)]
    bhost, bport = cluster.address("pgbouncer-default")
    stop = threading.Event()
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        host, port = apps[index % len(apps)]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while not stop.is_set():
                conn.request("GET", "/work", headers={"Host": "localhost"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or not json.loads(body)["ok"]:
                    with lock:
                        errors.append(f"{resp.status} {body[:200]!r}")
                    return
                with lock:
                    done[0] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    peak_clients = peak_servers = peak_backends = 0
    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(2 * SERVERS * WORKERS * THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and not errors:
        pool = next(p for p in pgb.pools(bhost, bport, "djscale") if p.database == "pgbtest")
        peak_clients = max(peak_clients, pool.clients)
        peak_servers = max(peak_servers, pool.servers)
        peak_backends = max(peak_backends, _primary_connections(cluster)[1])
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=30)

    max_connections, _ = _primary_connections(cluster)
    print(f"\n{done[0]} requests, {len(errors)} errors; peak PgBouncer clients "
          f"{peak_clients}, server connections {peak_servers}, PostgreSQL backends "
          f"{peak_backends}; max_connections {max_connections}")
    assert errors == []
    assert done[0] > 0
    assert max_connections == MAX_CONNECTIONS
    assert peak_clients > 3 * MAX_CONNECTIONS
    assert peak_servers <= POOL_SIZE
    assert peak_backends <= POOL_SIZE


def test_up_again_keeps_pgbouncer_and_a_crashed_one_restarts_on_its_port(
        cluster: LocalCluster) -> None:
    before = cluster.process("pgbouncer-shard1")
    cluster.up(only=("pgbouncer",))
    assert cluster.process("pgbouncer-shard1").pid == before.pid
    cluster.stop_service("pgbouncer-shard1", crash=True)
    cluster.up(only=("pgbouncer",))
    after = cluster.process("pgbouncer-shard1")
    assert after.pid != before.pid and after.port == before.port
    assert pgb.ready(after.host, after.port, "djscale", "pgbtest")


def test_migrate_through_transaction_pooling_sets_no_session_lock_timeout(
        cluster: LocalCluster) -> None:
    """A session-level SET would stay on a server connection the app servers get next."""
    env = {**os.environ, **cluster.env("migrate-test")}
    done = subprocess.run([sys.executable, "-m", "django", "migrate", "--database", "default"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "default: lock_timeout not set: the database is reached through PgBouncer in " \
           "transaction mode" in done.stderr
    host, port = cluster.address("pgbouncer-default")
    for _ in range(POOL_SIZE):  # whichever server connection PgBouncer hands out
        with psycopg.connect(host=host, port=port, user="djscale", dbname="pgbtest",
                             autocommit=True, prepare_threshold=None) as conn:
            assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
