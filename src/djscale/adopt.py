"""``djscale init``: a starting ``djscale.toml`` for an existing Django project.

Run in the folder of ``manage.py`` (or give ``--settings``); it imports the project's
settings module, reads what the project has today (``DATABASES``, ``CACHES``,
``CELERY_*``, ``SESSION_ENGINE``, ``MIDDLEWARE``, ``INSTALLED_APPS``) and writes a
commented ``djscale.toml`` that describes it: the PostgreSQL server at its fixed address
(the password stays in the environment, never in the file), the Redis server of a
django-redis or Django ``RedisCache``, the Celery application and broker, plus
commented-out examples for replicas, shards, Redis and app servers. Next to it, the
``local`` profile (``djscale.local.toml``, layered over it with ``DJSCALE_PROFILE=local``)
moves those servers to the local cluster's free ports, so ``djscale cluster up`` runs the
same project on this machine. It then prints the lines to add to ``settings.py``
(middleware in the order djscale needs) and ``urls.py``.

It is idempotent: a second run that would write the same file says so and changes
nothing; a file that differs is never overwritten without ``--force``.

An SQLite (or other non-PostgreSQL) project gets a file that says what works on any
database (cache, health, edge, metrics, checks) and what needs PostgreSQL (replicas,
sharding), and settings lines that leave its ``DATABASES`` alone.

This module is tooling: it is imported by the command line only, never by the runtime.
It must not start services or open connections.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import re
import sys
import textwrap
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from djscale.db.engines import NEEDS_POSTGRES, POSTGRES_ENGINES
from djscale.errors import ConfigurationError, DjscaleError

__all__ = ["NEEDS_POSTGRES", "Project", "init", "middleware_order", "read_project",
           "render_settings_lines", "render_toml"]

PASSWORD_VARIABLE = "DJSCALE_DB_PASSWORD"

# The edge middleware in its order (djscale.http.MIDDLEWARE), then what comes last.
EDGE_MIDDLEWARE = (
    "djscale.http.proxies.TrustedProxyMiddleware",
    "djscale.http.request_id.RequestIdMiddleware",
    "djscale.http.metrics.MetricsMiddleware",
    "djscale.http.health.HealthCheckMiddleware",
)
CACHE_CONTROL = "djscale.http.cache_control.CacheControlMiddleware"
UNAVAILABLE = "djscale.http.unavailable.DatabaseUnavailableMiddleware"
REPLICA = "djscale.db.middleware.ReplicaMiddleware"
STATIC = ("djscale.http.static.StaticFilesMiddleware", "whitenoise.middleware.WhiteNoiseMiddleware")
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
BEGIN = "# --- djscale (lines printed by `djscale init`) ---"
END = "# --- end of djscale ---"

_NAME_RE = re.compile(r"[^a-z0-9_]+")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:\-]+$")
_CELERY_RE = re.compile(r"^(\w+)\s*=\s*Celery\(", re.M)


@dataclass
class Postgres:
    """The project's PostgreSQL ``default`` database, as its settings give it."""

    host: str
    port: int
    database: str
    user: str
    conn_max_age: int
    password_env: str = ""
    ssl: dict[str, str] = field(default_factory=dict)
    options: dict[str, str | int | float | bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Redis:
    """The Redis server of the project's cache (``CACHES``), when it has one."""

    host: str
    port: int
    alias: str
    backend: str
    tls: bool = False
    username: str = ""
    password_env: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Project:
    """What ``init`` learned about a project: where it is and what its settings hold."""

    root: Path
    settings_module: str
    settings_file: Path | None
    name: str
    wsgi: str
    engine: str
    postgres: Postgres | None
    redis: Redis | None
    broker: str
    broker_note: str
    broker_password_env: str
    celery_app: str
    session_engine: str
    session_engine_set: bool
    middleware: list[str]
    installed_apps: list[str]
    has_base_dir: bool
    uses_topology: bool
    other_databases: list[str]

    @property
    def sqlite(self) -> bool:
        """True when the default database is not PostgreSQL (SQLite, MySQL, ...)."""
        return self.postgres is None and bool(self.engine)


# --------------------------------------------------------------------------- finding


def _settings_from_manage(manage: Path) -> str:
    text = manage.read_text(encoding="utf-8", errors="replace")
    found = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([\w.]+)['\"]", text)
    return found.group(1) if found else ""


def _find_root(start: Path, settings: str) -> tuple[Path, str]:
    """The project folder (the one with manage.py) and its settings module."""
    for folder in (start, *start.parents):
        manage = folder / "manage.py"
        if manage.is_file():
            module = settings or os.environ.get("DJANGO_SETTINGS_MODULE", "") \
                or _settings_from_manage(manage)
            if not module:
                raise ConfigurationError(
                    f"{manage} does not name a settings module: pass --settings "
                    "(e.g. --settings mysite.settings)")
            return folder, module
    module = settings or os.environ.get("DJANGO_SETTINGS_MODULE", "")
    if not module:
        raise ConfigurationError(
            f"no manage.py in {start} or above, and no settings module: run djscale init "
            "in your Django project's folder, or pass --settings (or set "
            "DJANGO_SETTINGS_MODULE)")
    return start, module


@contextlib.contextmanager
def _topology_disabled() -> Iterator[list[int]]:
    """Make ``from_topology()`` return nothing while the settings module is imported.

    A project that already derives its settings from a topology would otherwise need
    that file (and a running cluster for ``auto`` ports) just to be read; what ``init``
    wants is the project's own settings. The list holds one item per call.
    """
    import djscale.settings as derived

    calls: list[int] = []
    original, original_configure = derived.from_topology, derived.configure

    def quiet(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return {}

    def quiet_configure(*args: Any, **kwargs: Any) -> None:
        calls.append(1)

    derived.from_topology, derived.configure = quiet, quiet_configure
    try:
        yield calls
    finally:
        derived.from_topology, derived.configure = original, original_configure


def _import_settings(root: Path, module_name: str) -> tuple[Any, bool]:
    sys.path.insert(0, str(root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", module_name)
    try:
        with _topology_disabled() as calls:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and module_name.startswith(exc.name):
                    raise ConfigurationError(
                        f"settings module {module_name!r} not found under {root}: run "
                        "djscale init in the folder of manage.py, or pass --settings"
                    ) from None
                raise ConfigurationError(
                    f"importing {module_name} failed: no module named {exc.name!r} (install "
                    "the project's requirements in this environment)") from None
            except DjscaleError as exc:
                raise ConfigurationError(f"importing {module_name} failed: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - the user's code: one line, no traceback
                raise ConfigurationError(
                    f"importing {module_name} failed: {type(exc).__name__}: {exc} (set the "
                    "environment variables your settings need, then run djscale init "
                    "again)") from None
        return module, bool(calls)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


# --------------------------------------------------------------------------- reading


def _project_name(module_name: str) -> str:
    base = module_name.split(".")[0].lower()
    name = _NAME_RE.sub("_", base).strip("_") or "project"
    if not name[0].isalpha():
        name = f"p{name}"
    return name[:31]


def _variable_holding(secret: object, default: str) -> tuple[str, bool]:
    """The environment variable whose value is ``secret`` (the settings read it from
    there), else ``default``; and whether it was found."""
    if isinstance(secret, str) and secret:
        names = sorted(k for k, v in os.environ.items() if v == secret)
        if names:
            return names[0], True
    return default, False


_SSL_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
_LIBPQ_SKIP = ("pool", "connect_timeout", "password", "host", "hostaddr", "port", "dbname",
               "user", "passfile", "prepare_threshold", "server_side_binding", "cursor_factory",
               "isolation_level", "assume_role", "client_encoding")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _postgres(entry: Mapping[str, Any]) -> Postgres:
    notes: list[str] = []
    host = str(entry.get("HOST") or "")
    if not host or host.startswith("/"):
        notes.append(f"the project connects through a local socket ({host or 'default'}); "
                     "djscale connects over TCP to 127.0.0.1")
        host = "127.0.0.1"
    elif not _HOST_RE.match(host):
        notes.append(f"HOST {host!r} is not a host name or address djscale accepts")
        host = "127.0.0.1"
    port_text = str(entry.get("PORT") or "5432")
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else 5432
    database = str(entry.get("NAME") or "")
    if not _IDENT_RE.match(database):
        notes.append(f"database NAME {database!r} is not a plain PostgreSQL identifier; "
                     "rename it here if it differs")
        database = _NAME_RE.sub("_", database.lower()).strip("_") or "app"
        if not database[0].isalpha():
            database = f"db_{database}"
    user = str(entry.get("USER") or "")
    if not user:
        notes.append("USER is empty (libpq uses the operating system user); set user here")
        user = "postgres"
    elif not _IDENT_RE.match(user):
        notes.append(f"USER {user!r} is not a plain PostgreSQL role name")
        user = "postgres"
    password_env = ""
    if entry.get("PASSWORD"):
        password_env, found = _variable_holding(entry["PASSWORD"], PASSWORD_VARIABLE)
        if not found:
            notes.append(f"set ${password_env} to the database password where the app "
                         "servers run (settings.py has it; this file never does)")
    options = entry.get("OPTIONS") or {}
    ssl: dict[str, str] = {}
    libpq: dict[str, str | int | float | bool] = {}
    if isinstance(options, Mapping):
        skipped = []
        for key, value in sorted(options.items()):
            if key in _SSL_KEYS and isinstance(value, str):
                ssl[key] = value
            elif key not in _LIBPQ_SKIP and _OPTION_RE.match(str(key)) and isinstance(
                    value, str | int | float | bool):
                libpq[str(key)] = value
            elif key not in ("pool", "connect_timeout"):
                skipped.append(str(key))
        if skipped:
            notes.append("not carried over from OPTIONS: " + ", ".join(skipped))
    age = entry.get("CONN_MAX_AGE", 0)
    conn_max_age = age if isinstance(age, int) and age >= 0 else 60
    return Postgres(host=host, port=port, database=database, user=user,
                    conn_max_age=conn_max_age, password_env=password_env, ssl=ssl,
                    options=libpq, notes=notes)


def _redis(caches: Mapping[str, Any]) -> Redis | None:
    for alias in sorted(caches, key=lambda a: a != "default"):
        entry = caches[alias]
        if not isinstance(entry, Mapping):
            continue
        backend = str(entry.get("BACKEND", ""))
        if "redis" not in backend.lower():
            continue
        location = entry.get("LOCATION", "")
        locations = [str(x) for x in location] if isinstance(location, list | tuple) \
            else [str(x) for x in str(location).split(",") if x]
        if not locations:
            continue
        notes: list[str] = []
        if len(locations) > 1:
            notes.append(f"{len(locations)} locations ({', '.join(locations)}); only the "
                         "first is described here")
        url = urlsplit(locations[0] if "://" in locations[0] else f"redis://{locations[0]}")
        if url.scheme == "unix":
            notes.append(f"{alias!r} uses a Unix socket; djscale connects over TCP")
        password_env = ""
        if url.password:
            password_env, found = _variable_holding(unquote(url.password), "REDIS_PASSWORD")
            if not found:
                notes.append(f"set ${password_env} to the Redis password where the app "
                             "servers run")
        username = unquote(url.username or "")
        if username and not re.match(r"^[^\s:@/]+$", username):
            username = ""
        host = url.hostname or "127.0.0.1"
        try:
            port = url.port or 6379
        except ValueError:
            port = 6379
        if not _HOST_RE.match(host):
            host = "127.0.0.1"
        return Redis(host=host, port=port, alias=alias, backend=backend,
                     tls=url.scheme == "rediss", username=username, password_env=password_env,
                     notes=notes)
    return None


def _broker(module: Any) -> tuple[str, str, str]:
    """``(URL without password, note, password variable)`` of the Celery broker."""
    url = str(getattr(module, "CELERY_BROKER_URL", "") or getattr(module, "BROKER_URL", "")
              or "")
    if not url:
        return "", "", ""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "amqp"):
        return "", f"CELERY_BROKER_URL uses {parts.scheme or 'an unknown'}:// (djscale " \
                   "describes redis://, rediss:// and amqp:// brokers)", ""
    note, variable = "", ""
    if parts.password:
        variable, found = _variable_holding(unquote(parts.password), "BROKER_PASSWORD")
        if not found:
            note = f"set ${variable} to the broker's password where the workers run"
        netloc = (f"{parts.username}@" if parts.username else "") + (parts.hostname or "") \
            + (f":{parts.port}" if parts.port else "")
        url = parts._replace(netloc=netloc).geturl()
    return url, note, variable


def _celery_app(root: Path, module_name: str) -> str:
    package = module_name.rsplit(".", 1)[0] if "." in module_name else ""
    if not package:
        return ""
    path = root.joinpath(*package.split("."), "celery.py")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    found = _CELERY_RE.search(text)
    return f"{package}.celery:{found.group(1)}" if found else ""


def read_project(start: Path, settings: str = "") -> Project:
    """Find the project at or above ``start`` and read what its settings hold today.

    Raise :class:`~djscale.errors.ConfigurationError` with one line when there is no
    project or its settings cannot be imported.
    """
    root, module_name = _find_root(start.resolve(), settings)
    module, uses_topology = _import_settings(root, module_name)
    databases = getattr(module, "DATABASES", {}) or {}
    default = databases.get("default") or {}
    engine = str(default.get("ENGINE", "")) if isinstance(default, Mapping) else ""
    postgres = _postgres(default) if engine in POSTGRES_ENGINES else None
    caches = getattr(module, "CACHES", {}) or {}
    broker, broker_note, broker_password_env = _broker(module)
    wsgi = str(getattr(module, "WSGI_APPLICATION", "") or "")
    wsgi = (wsgi.rsplit(".", 1)[0] + ":" + wsgi.rsplit(".", 1)[1]) if "." in wsgi \
        else f"{module_name.rsplit('.', 1)[0]}.wsgi:application"
    source = getattr(module, "__file__", None)
    return Project(
        root=root,
        settings_module=module_name,
        settings_file=Path(source) if source else None,
        name=_project_name(module_name),
        wsgi=wsgi,
        engine=engine,
        postgres=postgres,
        redis=_redis(caches) if isinstance(caches, Mapping) else None,
        broker=broker,
        broker_note=broker_note,
        broker_password_env=broker_password_env,
        celery_app=_celery_app(root, module_name),
        session_engine=str(getattr(module, "SESSION_ENGINE",
                                   "django.contrib.sessions.backends.db")),
        session_engine_set=hasattr(module, "SESSION_ENGINE"),
        middleware=[str(m) for m in getattr(module, "MIDDLEWARE", []) or []],
        installed_apps=[str(a) for a in getattr(module, "INSTALLED_APPS", []) or []],
        has_base_dir=hasattr(module, "BASE_DIR"),
        uses_topology=uses_topology,
        other_databases=sorted(a for a in databases if a != "default"),
    )


# --------------------------------------------------------------------------- writing


def middleware_order(existing: Sequence[str], *, postgres: bool) -> list[str]:
    """``existing`` with djscale's middleware placed where each one works.

    The edge middleware comes first (the trusted-proxy one before anything that reads the
    client's address, scheme or host), static files before ``CacheControlMiddleware``,
    which comes right before ``SessionMiddleware``; with PostgreSQL,
    ``DatabaseUnavailableMiddleware`` then ``ReplicaMiddleware`` come last (djscale.W402).
    """
    ours = {*EDGE_MIDDLEWARE, CACHE_CONTROL, UNAVAILABLE, REPLICA}
    rest = [m for m in existing if m not in ours and m not in STATIC]
    statics = [m for m in existing if m in STATIC]
    cut = rest.index(SESSION) if SESSION in rest else next(
        (i + 1 for i, m in reversed(list(enumerate(rest)))
         if m == "django.middleware.security.SecurityMiddleware"), 0)
    ordered = [*EDGE_MIDDLEWARE, *rest[:cut], *statics, CACHE_CONTROL, *rest[cut:]]
    if postgres:
        ordered += [UNAVAILABLE, REPLICA]
    return ordered


def _comment(lines: Sequence[str]) -> list[str]:
    out = []
    for line in lines:
        out += [f"# {part}" for part in textwrap.wrap(line, 86)] if line else ["#"]
    return out


def _toml_str(value: str) -> str:
    return json.dumps(value)


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _toml_str(value)


def _postgres_lines(project: Project) -> list[str]:
    pg = project.postgres
    if pg is not None:
        lines = [
            "# The PostgreSQL server the project uses today (DATABASES['default']), at its fixed",
            "# address. Passwords never go in this file: password_env names the environment",
            "# variable the app servers read it from (or password_file, a file such as",
            "# /run/secrets/db).",
            *_comment(pg.notes),
            "[postgres]",
            f"host = {_toml_str(pg.host)}",
            f"port = {pg.port}",
            f"database = {_toml_str(pg.database)}",
            f"user = {_toml_str(pg.user)}",
        ]
        if pg.password_env:
            lines.append(f"password_env = {_toml_str(pg.password_env)}")
        lines.append(f"conn_max_age = {pg.conn_max_age}")
        lines += [f"{key} = {_toml_str(value)}" for key, value in pg.ssl.items()]
        if not pg.ssl:
            lines += ['# sslmode = "verify-full"    # TLS; sslrootcert = "/etc/ssl/db-ca.pem"']
        if pg.options:
            lines.append("options = { " + ", ".join(
                f"{k} = {_toml_value(v)}" for k, v in pg.options.items()) + " }")
        lines += [
            "# replicas = 2              # streaming replicas: reads there, writes to the primary",
            '# replica_hosts = ["10.0.0.12", "10.0.0.13"]',
            "# replica_ports = [5432, 5432]",
            "# max_lag_seconds = 5.0     # a replica further behind is skipped",
        ]
        return lines
    if project.sqlite:
        return [
            f"# {project.engine.rsplit('.', 1)[-1]} stays the project's database: djscale "
            "leaves DATABASES alone.",
            "[postgres]",
            "enabled = false",
            *_comment(["When the project moves to PostgreSQL, replace the two lines above:",
                       "[postgres]", f'database = "{project.name}"', "replicas = 2"]),
        ]
    return [
        "# The project sets no database of its own: `djscale cluster up` starts a local",
        '# PostgreSQL on a free port ("auto"); give host and port for a real server.',
        "[postgres]",
        f"database = {_toml_str(project.name)}",
        "# replicas = 2",
    ]


def _redis_lines(project: Project) -> list[str]:
    rd = project.redis
    if rd is not None:
        lines = [f"# The Redis server of CACHES[{rd.alias!r}] ({rd.backend}).", *_comment(rd.notes),
                 "[redis]", 'mode = "single"', f"host = {_toml_str(rd.host)}",
                 f"port = {rd.port}"]
        if rd.tls:
            lines.append("tls = true                  # rediss://")
        if rd.username:
            lines.append(f"username = {_toml_str(rd.username)}   # Redis ACL user")
        if rd.password_env:
            lines.append(f"password_env = {_toml_str(rd.password_env)}")
        return lines + _comment([
            'mode = "cluster"          # an existing Redis Cluster: list its nodes',
            'addresses = ["10.0.0.41:6379", "10.0.0.42:6379", "10.0.0.43:6379"]'])
    if project.sqlite:
        return _comment(["The project has no Redis cache today; describe it here when it has "
                         "one.", "[redis]", 'host = "10.0.0.7"', "port = 6379"])
    return ["# The project has no Redis cache today: `djscale cluster up` starts one on a",
            '# free port ("auto"); give host and port for a real server.',
            "[redis]", 'mode = "single"',
            '# mode = "cluster"         # a Redis Cluster: masters >= 3']


def _celery_lines(project: Project) -> list[str]:
    lines: list[str] = []
    if project.celery_app:
        lines += [f"# The project's Celery application ({project.celery_app}).", "[celery]",
                  "workers = 1", f"app = {_toml_str(project.celery_app)}"]
    if project.broker:
        if not lines:
            lines.append("[celery]")
        if project.broker_note:
            lines += _comment([project.broker_note])
        lines.append(f"broker = {_toml_str(project.broker)}")
        if project.broker_password_env:
            lines.append(f"broker_password_env = {_toml_str(project.broker_password_env)}")
    elif project.broker_note:
        lines += _comment([project.broker_note])
    return lines or _comment(["[celery]", "workers = 1", f'app = "{project.name}.celery:app"'])


def render_toml(project: Project) -> str:
    """The text of ``djscale.toml`` describing ``project`` (no timestamps: re-runs match)."""
    out: list[str] = [
        f"# djscale topology of {project.name}, written by `djscale init` from "
        f"{project.settings_module}.",
        "# It describes what the project has today; uncomment the examples to grow it.",
        "# Check it with `djscale topology check`; reference: docs/topology.md.",
    ]
    if project.sqlite:
        out += _comment(["", f"This project's database is {project.engine.rsplit('.', 1)[-1]}: "
                             f"{NEEDS_POSTGRES}."])
    elif project.postgres is not None:
        out += _comment([
            "",
            "The addresses below are the servers the project uses today. To run the same",
            "project on this machine with `djscale cluster up`, put the production addresses",
            "in a profile instead (djscale.prod.toml, used when DJSCALE_PROFILE=prod) and",
            'leave ports "auto" here: see docs/adoption.md.',
        ])
    out += ["", "[project]", f"name = {_toml_str(project.name)}", 'pythonpath = "."',
            f"settings = {_toml_str(project.settings_module)}",
            f"wsgi = {_toml_str(project.wsgi)}", ""]
    out += _postgres_lines(project)
    if project.other_databases:
        out += _comment([f"Also in DATABASES: {', '.join(project.other_databases)} "
                         "(kept as settings.py has them)."])
    out += ["", *_comment([
        "Shards: rows spread over several databases by a key (docs/sharding.md).",
        "[[shards]]", 'name = "shard1"', 'host = "10.0.0.21"', "port = 5432", "replicas = 1",
    ]), ""]
    out += _redis_lines(project)
    out += ["", "# App servers and load balancer of the local cluster (`djscale cluster up`).",
            "[app]", "servers = 2", "workers = 2",
            *_comment(["weights = [2, 1]", 'hosts = ["10.0.0.31", "10.0.0.32"]']), "",
            "[lb]", 'kind = "nginx"             # or "haproxy"',
            'method = "round_robin"     # least_conn, ip_hash', ""]
    out += _celery_lines(project)
    if project.sqlite and (project.celery_app or project.broker):
        out += _comment(["The Celery broker stays as settings.py sets it."])
    return "\n".join(out) + "\n"


LOCAL_PROFILE = "local"


def render_local_toml(project: Project, base: str = "djscale.toml") -> str | None:
    """The ``local`` profile: the same project on a local cluster (None: nothing to change).

    ``djscale.toml`` holds the servers the project uses today; layered over it with
    ``DJSCALE_PROFILE=local``, this file moves PostgreSQL, Redis and the broker to the
    local cluster's free ports, without credentials or TLS.
    """
    pg, rd = project.postgres, project.redis
    if pg is None and rd is None and not project.broker:
        return None
    out = [
        f"# The {LOCAL_PROFILE!r} profile of {base}, written by `djscale init`: the same project",
        "# on this machine. `DJSCALE_PROFILE=local djscale cluster up` starts its services on",
        "# free ports; `DJSCALE_PROFILE=local python manage.py runserver` (or check, test) uses",
        f"# them. Without DJSCALE_PROFILE, {base} alone describes the real servers.",
        f"extends = {_toml_str(base)}",
    ]
    if pg is not None:
        out += ["", "[postgres]", 'host = "127.0.0.1"', 'port = "auto"']
        if pg.password_env:
            out.append('password_env = ""         # the local cluster needs no password')
        out += [f'{key} = ""' for key in pg.ssl]   # (libpq options carry over: harmless)
    if rd is not None:
        out += ["", "[redis]", 'host = "127.0.0.1"', 'port = "auto"']
        if rd.tls:
            out.append("tls = false")
        if rd.username:
            out.append('username = ""')
        if rd.password_env:
            out.append('password_env = ""')
    if project.broker:
        out += ["", "[celery]", 'broker = ""                 # the local cluster\'s Redis']
        if project.broker_password_env:
            out.append('broker_password_env = ""')
    return "\n".join(out) + "\n"


def _settings_path(project: Project) -> Path:
    settings = project.settings_file or Path(project.settings_module.replace(".", "/") + ".py")
    with contextlib.suppress(ValueError):
        settings = settings.relative_to(project.root)
    return settings


def render_settings_lines(project: Project) -> str:
    """The block to paste at the end of the settings module, between marker comments."""
    lines = [BEGIN]
    if "djscale" not in project.installed_apps:
        lines.append('INSTALLED_APPS += ["djscale"]')
    lines.append("MIDDLEWARE = [")
    lines += [f"    {m!r}," for m in middleware_order(project.middleware,
                                                       postgres=not project.sqlite)]
    lines.append("]")
    if project.sqlite:
        lines += [f"# {NEEDS_POSTGRES}.",
                  "# DATABASES, CACHES and sessions stay as settings.py has them."]
    elif not project.uses_topology:
        lines += ["",
                  "from djscale.settings import from_topology",
                  "",
                  "# Merges djscale.toml (found next to manage.py) into these settings;",
                  "# each value of yours it replaces is reported by `manage.py check`",
                  "# (djscale.W200).",
                  "globals().update(from_topology(globals()))"]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _replaced(project: Project) -> list[str]:
    """User settings the topology will replace (each one a djscale.W200 until removed)."""
    found = []
    if project.redis is not None and project.redis.alias == "default":
        found.append(f"CACHES['default'] ({project.redis.backend}): djscale's TieredCache "
                     "over the same Redis replaces it")
    return found


def _report(project: Project, toml_path: Path, action: str) -> str:
    settings = _settings_path(project)
    urls = settings.parent / "urls.py"
    out = [f"djscale: {action} {toml_path}"]
    if project.sqlite:
        out.append(f"djscale: {project.engine.rsplit('.', 1)[-1]} database: {NEEDS_POSTGRES}")
    else:
        pg = project.postgres
        out.append("   postgres  " + (
            f"{pg.user}@{pg.host}:{pg.port}/{pg.database}"
            + (f" (password from ${pg.password_env})" if pg.password_env else "") if pg else
            "none set: a local one from `djscale cluster up`"))
        rd = project.redis
        out.append("   redis     " + (f"{rd.host}:{rd.port} (CACHES[{rd.alias!r}])" if rd else
                                      "none set: a local one from `djscale cluster up`"))
        if project.broker or project.celery_app:
            out.append(f"   celery    {project.celery_app or '(no app found)'}, broker "
                       f"{project.broker or 'the Redis above'}")
        out.append("   sessions  " + (
            f"{project.session_engine} (yours, kept; djscale.sessions is the failover-safe "
            "one: docs/cache.md)" if project.session_engine_set else
            "djscale.sessions (cached_db over Redis, failover-safe)"))
    ordered = middleware_order(project.middleware, postgres=not project.sqlite)
    if (project.uses_topology or project.sqlite) and "djscale" in project.installed_apps \
            and project.middleware == ordered:
        out.append(f"\n{settings} already has djscale's lines; nothing to add.")
        return "\n".join(out)
    if project.uses_topology:
        out.append(f"\n{settings} already calls from_topology(); put its MIDDLEWARE in this "
                   "order:")
    else:
        out.append(f"\nAdd these lines at the end of {settings}:")
    out += ["", render_settings_lines(project)]
    replaced = _replaced(project)
    if replaced and not project.uses_topology:
        out += ["Then remove from settings.py what the topology now describes (or keep it and "
                "silence djscale.W200):", *(f"    {r}" for r in replaced), ""]
    out += [f"and at the end of {urls}:", "",
            "    from django.urls import include",
            '    urlpatterns += [path("", include("djscale.urls"))]   '
            "# /health/live, /health/ready, /metrics", ""]
    out.append("Then: `djscale topology check` and `python manage.py check --deploy`.")
    if not project.sqlite:
        local = render_local_toml(project) is not None
        profile = f"DJSCALE_PROFILE={LOCAL_PROFILE} " if local else ""
        out.append(f"On this machine: `{profile}djscale cluster up` runs it on a local cluster"
                   + (f" ({toml_path.stem}.{LOCAL_PROFILE}.toml moves the servers there)"
                      if local else "") + "; docs/adoption.md.")
    return "\n".join(out)


def _plan(path: Path, text: str, force: bool) -> str:
    """What to do with ``path``: 'wrote', 'overwrote' or 'unchanged'; refuse a different file."""
    if not path.exists():
        return "wrote"
    try:
        old = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    if old == text:
        return "unchanged"
    if not force:
        changed = sum(1 for line in difflib.unified_diff(
            old.splitlines(), text.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---"))
        raise ConfigurationError(
            f"{path} exists and differs from what init would write ({changed} changed "
            f"line{'s' if changed != 1 else ''}); keep it, or run djscale init --force "
            "to overwrite it")
    return "overwrote"


def init(directory: str | Path = ".", *, settings: str = "", output: str | Path = "",
         force: bool = False) -> int:
    """Write ``djscale.toml`` (and its ``local`` profile) for the project at ``directory``.

    Print what was found and the lines to add to the settings module. Return 0 when the
    files were written or already matched. Raise :class:`~djscale.errors.ConfigurationError`
    when a file exists with other content and ``force`` is false, or when the project
    cannot be read; nothing is written then.
    """
    from djscale.topology import merge_layers, parse, profile_path

    project = read_project(Path(directory), settings)
    path = Path(output) if output else project.root / "djscale.toml"
    files = {path: render_toml(project)}
    local = render_local_toml(project, path.name)
    base = tomllib.loads(files[path])
    parse(base, source=str(path))  # never write a file `topology check` would refuse
    if local is not None:
        layer = tomllib.loads(local)
        layer.pop("extends")
        local_path = profile_path(path, LOCAL_PROFILE)
        parse(merge_layers(base, layer), source=str(local_path))
        files[local_path] = local
    actions = {p: _plan(p, text, force) for p, text in files.items()}
    for p, text in files.items():
        if actions[p] != "unchanged":
            try:
                p.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot write {p}: {exc.strerror or exc}") from None
    first, rest = _report(project, path, actions[path]).split("\n", 1)
    print("\n".join([first, *(f"djscale: {a} {p}" for p, a in actions.items() if p != path),
                     rest]))
    return 0
