"""``djscale init`` on three layouts; each output passes ``topology check`` and ``manage.py check``.

The layouts: a fresh ``django-admin startproject`` (SQLite), a project with PostgreSQL,
django-redis and Celery settings, and ``examples/demo``. Every command runs as a user runs
it, in a subprocess in the project's folder; the printed settings lines are pasted into
the project's settings module as printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from djscale.testing import ClusterFactory
from djscale.topology import load

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration

NEEDS_POSTGRES = ("replicas and sharding need PostgreSQL; cache, health, edge, metrics and "
                  "checks work on any database")


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DJANGO_SETTINGS_MODULE", "DJSCALE_TOPOLOGY", "DJSCALE_STATE_DIR")}
    full_env.update(env or {})
    proc = subprocess.run(list(args), cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=120, check=False)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def _djscale(cwd: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return _run(cwd, sys.executable, "-m", "djscale.cli", *args, **kwargs)  # type: ignore[arg-type]


def _startproject(folder: Path, name: str) -> Path:
    folder.mkdir()
    _run(folder, str(BIN / "django-admin"), "startproject", name, ".")
    return folder


def _apply(project: Path, package: str, printed: str) -> None:
    """Paste the printed settings block and the URL line, as the output says."""
    begin = printed.index("# --- djscale (lines printed by `djscale init`) ---")
    end = printed.index("# --- end of djscale ---")
    block = printed[begin:end + len("# --- end of djscale ---")]
    settings = project / package / "settings.py"
    settings.write_text(settings.read_text() + "\n" + block + "\n")
    assert 'urlpatterns += [path("", include("djscale.urls"))]' in printed
    urls = project / package / "urls.py"
    if urls.exists():
        urls.write_text(urls.read_text() + "\nfrom django.urls import include, path\n"
                        'urlpatterns += [path("", include("djscale.urls"))]\n')


def test_init_on_a_fresh_sqlite_project_says_what_needs_postgres(tmp_path: Path) -> None:
    project = _startproject(tmp_path / "site", "mysite")

    out = _djscale(project, "init").stdout
    assert NEEDS_POSTGRES in out
    toml = (project / "djscale.toml").read_text()
    assert NEEDS_POSTGRES in toml.replace("\n# ", " ")
    assert tomllib.loads(toml)["postgres"] == {"enabled": False}   # DATABASES stay SQLite
    assert "from_topology" not in out.split("# --- djscale")[1].split("# --- end")[0] \
        .replace("from_topology() is for PostgreSQL", "")

    check = _djscale(project, "topology", "check")
    assert "djscale.toml: ok" in check.stdout
    _apply(project, "mysite", out)
    result = _run(project, sys.executable, "manage.py", "check")
    assert "Traceback" not in result.stderr
    # The middleware order it printed is the one djscale's checks accept.
    assert "djscale.W008" not in result.stdout + result.stderr
    assert "djscale.W011" not in result.stdout + result.stderr
    assert "nothing to add" in _djscale(project, "init").stdout


def test_init_is_idempotent_and_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    project = _startproject(tmp_path / "site", "mysite")
    _djscale(project, "init")
    first = (project / "djscale.toml").read_text()

    again = _djscale(project, "init")
    assert "unchanged" in again.stdout
    assert (project / "djscale.toml").read_text() == first

    (project / "djscale.toml").write_text(first + "# my own note\n")
    refused = _djscale(project, "init", check=False)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert (project / "djscale.toml").read_text().endswith("# my own note\n")

    _djscale(project, "init", "--force")
    assert (project / "djscale.toml").read_text() == first


def test_init_outside_a_project_is_one_clear_line(tmp_path: Path) -> None:
    result = _djscale(tmp_path, "init", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("djscale: error: no manage.py in ")
    assert "Traceback" not in result.stderr


POSTGRES_SETTINGS = '''
import os

DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": "shop", "USER": "shopper",
    "PASSWORD": os.environ["SHOP_DB_PASSWORD"],
    "HOST": "db.internal", "PORT": "6543", "CONN_MAX_AGE": 30,
    "OPTIONS": {"sslmode": "require", "application_name": "shop"},
}}
CACHES = {"default": {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": "redis://cache.internal:6380/2",
    "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
}}
CELERY_BROKER_URL = f"redis://:{os.environ['SHOP_BROKER_PASSWORD']}@broker.internal:6381/0"
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
'''

CELERY_APP = '''import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
'''


def test_init_on_a_postgres_redis_celery_project_describes_its_servers(tmp_path: Path) -> None:
    project = _startproject(tmp_path / "shop", "shop")
    settings = project / "shop" / "settings.py"
    settings.write_text(settings.read_text() + POSTGRES_SETTINGS)
    (project / "shop" / "celery.py").write_text(CELERY_APP)
    (project / "shop" / "__init__.py").write_text("from .celery import app as celery_app\n")

    secrets = {"SHOP_DB_PASSWORD": "db-secret-1", "SHOP_BROKER_PASSWORD": "broker-secret-2"}
    out = _djscale(project, "init", env=secrets).stdout
    text = (project / "djscale.toml").read_text()
    assert "db-secret-1" not in text and "broker-secret-2" not in text
    data = tomllib.loads(text)
    assert {k: data["postgres"][k] for k in (
        "host", "port", "database", "user", "password_env", "sslmode", "options")} == {
        "host": "db.internal", "port": 6543, "database": "shop", "user": "shopper",
        "password_env": "SHOP_DB_PASSWORD", "sslmode": "require",
        "options": {"application_name": "shop"}}
    assert (data["redis"]["host"], data["redis"]["port"]) == ("cache.internal", 6380)
    assert data["celery"] == {"workers": 1, "app": "shop.celery:app",
                              "broker": "redis://broker.internal:6381/0",
                              "broker_password_env": "SHOP_BROKER_PASSWORD"}
    assert "CACHES['default']" in out   # told to remove what the topology now describes

    assert "djscale.toml: ok" in _djscale(project, "topology", "check").stdout
    topo = load(project / "djscale.toml")
    assert (topo.postgres.host, topo.postgres.port) == ("db.internal", 6543)

    _apply(project, "shop", out)
    # Fixed addresses: no local cluster is needed to build the settings.
    result = _run(project, sys.executable, "manage.py", "check", env=secrets)
    assert "djscale.W008" not in result.stdout + result.stderr
    shown = _run(project, sys.executable, "-c",
                 "import django; django.setup(); from django.conf import settings as s; "
                 "d = s.DATABASES['default']; print(d['HOST'], d['PORT'], d['NAME'], d['USER'], "
                 "d['PASSWORD'], d['OPTIONS']['sslmode'], s.CELERY_BROKER_URL)",
                 env={**secrets, "DJANGO_SETTINGS_MODULE": "shop.settings",
                      "PYTHONPATH": str(project)})
    assert shown.stdout.split() == ["db.internal", "6543", "shop", "shopper", "db-secret-1",
                                    "require",
                                    "redis://:broker-secret-2@broker.internal:6381/0"]

    # Once pasted, a second run finds the same project and changes nothing.
    again = _djscale(project, "init", env=secrets).stdout
    assert "unchanged" in again and "nothing to add" in again


def test_the_local_profile_init_writes_runs_the_project_on_a_local_cluster(
        tmp_path: Path) -> None:
    project = _startproject(tmp_path / "shop", "shop")
    settings = project / "shop" / "settings.py"
    settings.write_text(settings.read_text() + POSTGRES_SETTINGS)
    secrets = {"SHOP_DB_PASSWORD": "db-secret-1", "SHOP_BROKER_PASSWORD": "broker-secret-2"}
    out = _djscale(project, "init", env=secrets).stdout
    assert "djscale: wrote" in out and "djscale.local.toml" in out
    _apply(project, "shop", out)
    local = {**secrets, "DJSCALE_PROFILE": "local"}
    assert "djscale.toml: ok" in _djscale(project, "topology", "check", env=local).stdout
    try:
        _djscale(project, "cluster", "up", "--only", "postgres,redis,migrate", env=local)
        # The same settings now reach the local servers: a database check connects.
        result = _run(project, sys.executable, "manage.py", "check", "--database", "default",
                      env=local)
        assert "djscale.E200" not in result.stdout + result.stderr
    finally:
        _djscale(project, "cluster", "down", "--purge", env=local, check=False)


def test_init_on_the_demo_project_boots_and_checks(tmp_path: Path,
                                                   djscale_cluster_factory: ClusterFactory) -> None:
    project = tmp_path / "demo"
    shutil.copytree(DEMO, project, ignore=shutil.ignore_patterns("djscale.toml", "__pycache__"))
    # The demo has no manage.py (the cluster runs it through django-admin): name its settings.
    out = _djscale(project, "init", "--settings", "demo.settings").stdout
    assert "already has djscale's lines; nothing to add" in out
    assert "djscale.toml: ok" in _djscale(project, "topology", "check").stdout
    data = tomllib.loads((project / "djscale.toml").read_text())
    assert data["project"]["settings"] == "demo.settings"
    assert data["celery"]["app"] == "demo.celery:app"

    # The demo's databases come from the topology with "auto" ports: boot what they need.
    cluster = djscale_cluster_factory(load(project / "djscale.toml"),
                                      parts=("postgres", "redis"), name="init-demo")
    result = _run(project, str(BIN / "django-admin"), "check",
                  env={"DJSCALE_STATE_DIR": str(cluster.state_dir), "PYTHONPATH": str(project),
                       "DJANGO_SETTINGS_MODULE": "demo.settings"})
    assert "Traceback" not in result.stderr
