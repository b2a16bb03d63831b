"""A production-style topology against real servers started with TLS and passwords.

PostgreSQL 15 with ``ssl = on`` that accepts only TLS connections with a scram password
(``hostssl ... scram-sha-256``), and Redis 7 that listens on a TLS port only with an ACL
user; the topology gives their fixed addresses, ``sslmode = "require"``, ``tls = true``
and the passwords by reference (an environment variable, a file). A Django project in a
subprocess (settings: ``globals().update(from_topology(globals()))``, run from another
folder, with no local cluster anywhere) reads, writes, caches and keeps sessions through
them; a wrong password is one line, no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from djscale.cluster.postgres import PG_BIN, pg_user
from djscale.cluster.supervisor import ManagedProcess, free_port, run, tcp_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PG_PASSWORD = "pg-Pa55:w/rd"
REDIS_PASSWORD = "redis-Pa55@word"


@dataclass
class Servers:
    """Where the TLS servers listen and the files a client needs."""

    folder: Path
    pg_port: int
    redis_port: int
    ca_file: Path


def _chown_to_postgres(*paths: Path) -> None:
    user = pg_user()
    if user is not None:
        for path in paths:
            shutil.chown(path, user, user)


@pytest.fixture(scope="module")
def tls_servers() -> Iterator[Servers]:
    """PostgreSQL (ssl = on, scram over TLS only) and Redis (TLS port only, ACL user)."""
    # Under /tmp, readable by the postgres user (pytest's tmp_path is root's only).
    folder = Path(tempfile.mkdtemp(prefix="djscale-tls-", dir="/tmp"))
    folder.chmod(0o755)
    processes: list[ManagedProcess] = []
    try:
        cert, key = folder / "server.crt", folder / "server.key"
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)], service="openssl")
        pg_key, pg_cert = folder / "pg.key", folder / "pg.crt"
        shutil.copy(key, pg_key)
        shutil.copy(cert, pg_cert)
        pg_key.chmod(0o600)
        _chown_to_postgres(pg_key, pg_cert)

        data = folder / "pg"
        data.mkdir(mode=0o700)
        _chown_to_postgres(data)
        pwfile = folder / "initdb.pw"
        pwfile.write_text(PG_PASSWORD, encoding="utf-8")
        pwfile.chmod(0o644)
        run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "shop", f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8",
             "--no-sync"], service="initdb", user=pg_user(), cwd="/tmp")
        pwfile.unlink()
        # TLS or nothing: a plain-text connection finds no pg_hba.conf line.
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8")
        pg_port = free_port()
        postgres = ManagedProcess(
            name="tls-postgres", kind="postgres", log=str(folder / "postgres.log"),
            cmd=[str(PG_BIN / "postgres"), "-D", str(data), "-p", str(pg_port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on",
                 "-c", f"ssl_cert_file={pg_cert}", "-c", f"ssl_key_file={pg_key}",
                 "-c", f"unix_socket_directories={data}", "-c", "fsync=off"],
            port=pg_port, cwd="/tmp", user=pg_user(), stop_signal=2)
        postgres.start()
        processes.append(postgres)

        acl = folder / "redis.conf"
        acl.write_text("user default off\n"
                       f"user app on >{REDIS_PASSWORD} ~* &* +@all\n", encoding="utf-8")
        redis_port = free_port()
        redis = ManagedProcess(
            name="tls-redis", kind="redis", log=str(folder / "redis.log"),
            cmd=["redis-server", str(acl), "--port", "0", "--tls-port", str(redis_port),
                 "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                 "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                 "--save", "", "--appendonly", "no", "--dir", str(folder)],
            port=redis_port)
        redis.start()
        processes.append(redis)

        postgres.wait_ready(lambda: tcp_ready("127.0.0.1", pg_port))
        redis.wait_ready(lambda: tcp_ready("127.0.0.1", redis_port))
        yield Servers(folder, pg_port, redis_port, cert)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(folder, ignore_errors=True)


TOPOLOGY = """\
[project]
name = "prodsite"

[postgres]
database = "postgres"
user = "shop"
host = "127.0.0.1"
port = {pg_port}
password_env = "PGPASSWORD_PROD"
sslmode = "require"
options = {{ application_name = "prodsite" }}

[redis]
host = "127.0.0.1"
port = {redis_port}
tls = true
ca_file = "{ca_file}"
username = "app"
password_file = "secrets/redis"
"""

SETTINGS = """\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth",
                  "django.contrib.sessions", "djscale"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CACHES = {"local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

from djscale.settings import from_topology

globals().update(from_topology(globals()))
"""

SCRIPT = """\
import django
django.setup()
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection
from importlib import import_module

call_command("migrate", verbosity=0)
with connection.cursor() as cursor:
    cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    print("pg ssl:", cursor.fetchone()[0])
User.objects.create(username="ada")
print("read back:", User.objects.get(username="ada").username)

cache = caches["default"]
cache.set("greeting", "hello over tls", 60)
print("cache:", caches["sessions"].get("greeting") is None, cache.get("greeting"))
print("redis up:", cache.ping())

store: SessionBase = import_module(settings.SESSION_ENGINE).SessionStore()
store["cart"] = [1, 2, 3]
store.save()
again = import_module(settings.SESSION_ENGINE).SessionStore(session_key=store.session_key)
print("session:", settings.SESSION_ENGINE, again["cart"])
print("kept:", sorted(settings.CACHES), settings.DJSCALE_OVERRIDDEN)
"""


@pytest.fixture(scope="module")
def project(tls_servers: Servers) -> Path:
    """A Django project whose djscale.toml gives the TLS servers' fixed addresses."""
    root = tls_servers.folder / "prodsite"
    (root / "prodsite").mkdir(parents=True)
    (root / "prodsite" / "__init__.py").write_text("", encoding="utf-8")
    (root / "prodsite" / "settings.py").write_text(SETTINGS, encoding="utf-8")
    (root / "manage.py").write_text(textwrap.dedent("""\
        import os, sys
        from django.core.management import execute_from_command_line
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prodsite.settings")
        execute_from_command_line(sys.argv)
        """), encoding="utf-8")
    (root / "secrets").mkdir()
    (root / "secrets" / "redis").write_text(REDIS_PASSWORD + "\n", encoding="utf-8")
    (root / "djscale.toml").write_text(TOPOLOGY.format(
        pg_port=tls_servers.pg_port, redis_port=tls_servers.redis_port,
        ca_file=tls_servers.ca_file), encoding="utf-8")
    return root


def _run(project: Path, args: list[str], password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJSCALE_", "DJANGO_SETTINGS_MODULE"))}
    # No local cluster state anywhere: the fixed addresses must be enough.
    env.update(PGPASSWORD_PROD=password, DJANGO_SETTINGS_MODULE="prodsite.settings",
               DJSCALE_STATE_DIR=str(project / "no-cluster-here"),
               PYTHONPATH=os.pathsep.join([str(project), str(ROOT / "src")]))
    # Run from another folder: the topology is found beside the project, not in the cwd.
    return subprocess.run([sys.executable, *args], cwd="/", env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_reads_writes_cache_and_sessions_work_over_tls_with_passwords_by_reference(
        project: Path) -> None:
    result = _run(project, ["-c", SCRIPT], PG_PASSWORD)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "pg ssl: True" in out
    assert "read back: ada" in out
    assert "cache: True hello over tls" in out
    assert "redis up: True" in out
    assert "session: djscale.sessions [1, 2, 3]" in out
    # The project's own cache alias is kept; nothing of the user's was replaced.
    assert "kept: ['default', 'local', 'sessions'] []" in out


@pytest.mark.parametrize("command", [["check", "--database", "default"], ["migrate"]])
def test_a_wrong_password_is_one_clear_line_without_a_traceback(project: Path,
                                                                command: list[str]) -> None:
    result = _run(project, [str(project / "manage.py"), *command], "not-the-password")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "djscale.E200" in line]
    assert len(lines) == 1, output
    assert "cannot connect to database 'default'" in lines[0]
    assert 'password authentication failed for user "shop"' in lines[0]
