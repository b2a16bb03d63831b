"""`manage.py check --deploy` on a settings module that breaks every rule reports each id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BROKEN_SETTINGS = '''
SECRET_KEY = "x" * 60
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth",
                  "django.contrib.sessions", "djscale", "brokenapp"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "djscale.http.proxies.TrustedProxyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "djscale.http.cache_control.CacheControlMiddleware",
]
ROOT_URLCONF = "brokenurls"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x", "CONN_MAX_AGE": 0},
    "default_replica1": {"ENGINE": "django.db.backends.postgresql", "NAME": "x",
                         "CONN_MAX_AGE": 60},
}
DATABASE_ROUTERS = []
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
SESSION_ENGINE = "django.contrib.sessions.backends.file"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
DJSCALE = {"APP_SERVERS": 3, "TRUSTED_PROXIES": [],
           "REPLICATION_GROUPS": {"default": {"PRIMARY": "default",
                                              "REPLICAS": ["default_replica1"]}}}
'''

BROKEN_CODE = '''
from django.core.cache import cache


def expensive(*args):
    key = "expensive:" + str(args)
    value = cache.get(key)
    if value is None:
        value = sum(args)
        cache.set(key, value)
    return value


def count(request):
    hits = cache.get("hits", 0)
    cache.set("hits", hits + 1)
'''


def test_every_rule_fires_on_a_settings_module_that_breaks_it(tmp_path: Path) -> None:
    (tmp_path / "broken_settings.py").write_text(BROKEN_SETTINGS)
    (tmp_path / "brokenurls.py").write_text("urlpatterns = []\n")
    (tmp_path / "brokenapp").mkdir()
    (tmp_path / "brokenapp" / "__init__.py").write_text("")
    (tmp_path / "brokenapp" / "views.py").write_text(BROKEN_CODE)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "broken_settings",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    env.pop("DJSCALE_STATE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "django", "check", "--deploy", "--tag",
                           "djscale"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120, check=False)
    out = proc.stdout + proc.stderr
    expected = ["djscale.W001", "djscale.W002", "djscale.W003", "djscale.W004",
                "djscale.W005", "djscale.W006", "djscale.W008", "djscale.W009",
                "djscale.W010", "djscale.W011"]
    assert [i for i in expected if i not in out] == [], out
    assert "Traceback" not in out, out


def test_djscale_doctor_reports_the_same_findings(tmp_path: Path) -> None:
    (tmp_path / "broken_settings.py").write_text(BROKEN_SETTINGS)
    (tmp_path / "brokenurls.py").write_text("urlpatterns = []\n")
    (tmp_path / "brokenapp").mkdir()
    (tmp_path / "brokenapp" / "__init__.py").write_text("")
    (tmp_path / "brokenapp" / "views.py").write_text(BROKEN_CODE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJSCALE_STATE_DIR", "DJANGO_SETTINGS_MODULE")}
    proc = subprocess.run([sys.executable, "-m", "djscale.cli", "doctor", "--settings",
                           "broken_settings"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert "djscale.W001" in out and "djscale.W011" in out, out
    assert "hint:" in out
    assert "Traceback" not in out, out
    missing = subprocess.run([sys.executable, "-m", "djscale.cli", "doctor"],
                             capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=60, check=False)
    assert missing.returncode == 2
    assert missing.stderr.startswith("djscale: error: no settings module"), missing.stderr
