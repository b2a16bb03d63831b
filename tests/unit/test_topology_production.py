"""Production topologies: fixed addresses, credentials by reference, TLS, layered files,
and settings that merge with the project's own instead of replacing them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from djscale.errors import ConfigurationError, TopologyError
from djscale.localstate import STATE_FILE
from djscale.settings import configure, find_topology, from_topology, redis_urls
from djscale.settings_checks import check_overridden_settings
from djscale.topology import load, merge_layers, parse

FIXED: dict[str, Any] = {
    "postgres": {"host": "10.0.0.5", "port": 5432, "replicas": 1, "replica_ports": [5433],
                 "password_env": "PG_TEST_PASSWORD", "sslmode": "require"},
    "redis": {"host": "10.0.0.6", "port": 6380},
}


def _settings(data: dict[str, Any], tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return from_topology(parse(data, source=str(tmp_path / "djscale.toml")),
                         state_dir=tmp_path / "no-cluster", **kwargs)


# ----------------------------------------------------------------- credentials by reference

@pytest.mark.parametrize("data, key", [
    ({"postgres": {"password": "hunter2"}}, "postgres.password"),
    ({"shards": [{"name": "s1", "password": "x"}]}, "shards[0].password"),
    ({"redis": {"password": "x"}}, "redis.password"),
    ({"celery": {"broker_password": "x"}}, "celery.broker_password"),
    ({"postgres": {"options": {"password": "x"}}}, "postgres.options.password"),
])
def test_a_literal_password_is_refused_with_what_to_write_instead(data: dict[str, Any],
                                                                   key: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse(data)
    message = str(err.value)
    assert f"{key} is not allowed" in message
    assert "password_env" in message and "password_file" in message
    assert "\n" not in message


def test_a_password_in_the_broker_url_is_refused() -> None:
    with pytest.raises(TopologyError, match=r"celery.broker must not contain a password"):
        parse({"celery": {"broker": "redis://user:secret@10.0.0.1:6379/0"}})


def test_password_env_and_password_file_together_are_refused() -> None:
    with pytest.raises(TopologyError, match=r"both set: give one of them"):
        parse({"postgres": {"password_env": "A", "password_file": "/run/secrets/pg"}})


def test_the_password_comes_from_the_named_environment_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_TEST_PASSWORD", "s3cret")
    s = _settings(FIXED, tmp_path)
    assert s["DATABASES"]["default"]["PASSWORD"] == "s3cret"
    assert s["DATABASES"]["default_replica1"]["PASSWORD"] == "s3cret"


def test_an_unset_password_variable_is_one_line_naming_key_and_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_TEST_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError) as err:
        _settings(FIXED, tmp_path)
    assert str(err.value).startswith("postgres.password_env = 'PG_TEST_PASSWORD'")
    assert "not set" in str(err.value) and "\n" not in str(err.value)


def test_the_password_file_is_read_relative_to_the_topology(tmp_path: Path) -> None:
    (tmp_path / "pg.secret").write_text("from-file\n", encoding="utf-8")
    s = _settings({"postgres": {"port": 5432, "password_file": "pg.secret"},
                   "redis": {"port": 6379}}, tmp_path)
    assert s["DATABASES"]["default"]["PASSWORD"] == "from-file"


def test_an_unreadable_password_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"postgres.password_file = 'missing': "
                                                 r"cannot read .*missing"):
        _settings({"postgres": {"port": 5432, "password_file": "missing"},
                   "redis": {"port": 6379}}, tmp_path)


def test_shards_inherit_the_credentials_and_tls_of_postgres_unless_they_set_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_TEST_PASSWORD", "main")
    monkeypatch.setenv("SHARD2_PASSWORD", "other")
    data = {**FIXED, "shards": [{"name": "s1", "port": 6001},
                                {"name": "s2", "port": 6002, "password_env": "SHARD2_PASSWORD"}]}
    s = _settings(data, tmp_path)
    assert s["DATABASES"]["s1"]["PASSWORD"] == "main"
    assert s["DATABASES"]["s1"]["OPTIONS"]["sslmode"] == "require"
    assert s["DATABASES"]["s2"]["PASSWORD"] == "other"


# ----------------------------------------------------------------- TLS and libpq options

def test_sslmode_ssl_files_and_libpq_options_reach_the_connection_options(
        tmp_path: Path) -> None:
    s = _settings({
        "postgres": {"port": 5432, "sslmode": "verify-full", "sslrootcert": "certs/ca.pem",
                     "sslcert": "/etc/pg/client.crt", "sslkey": "/etc/pg/client.key",
                     "options": {"application_name": "shop", "keepalives_idle": 30}},
        "redis": {"port": 6379}}, tmp_path)
    options = s["DATABASES"]["default"]["OPTIONS"]
    assert options["sslmode"] == "verify-full"
    assert options["sslrootcert"] == str(tmp_path / "certs/ca.pem")
    assert options["sslcert"] == "/etc/pg/client.crt"
    assert options["sslkey"] == "/etc/pg/client.key"
    assert options["application_name"] == "shop"
    assert options["keepalives_idle"] == 30


def test_a_bad_sslmode_names_the_allowed_values() -> None:
    with pytest.raises(TopologyError, match=r"postgres.sslmode = 'required' is invalid: "
                                            r"expected one of .*'require'"):
        parse({"postgres": {"sslmode": "required"}})


def test_options_that_have_their_own_key_are_refused() -> None:
    with pytest.raises(TopologyError, match=r"postgres.options.sslmode is not allowed here: "
                                            r"use postgres.sslmode"):
        parse({"postgres": {"options": {"sslmode": "require"}}})
    with pytest.raises(TopologyError, match=r"postgres.options.port is not allowed here"):
        parse({"postgres": {"options": {"port": 5432}}})


def test_redis_tls_acl_user_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "redis.secret").write_text("p@ss/word\n", encoding="utf-8")
    data = {"postgres": {"port": 5432},
            "redis": {"host": "10.0.0.6", "port": 6380, "tls": True, "ca_file": "ca.pem",
                      "username": "app", "password_file": "redis.secret"}}
    s = _settings(data, tmp_path)
    cache = s["CACHES"]["default"]
    # Credentials stay out of LOCATION, which labels metrics and log lines.
    assert cache["LOCATION"] == "rediss://10.0.0.6:6380/0"
    assert cache["OPTIONS"]["CONNECTION_KWARGS"] == {
        "username": "app", "password": "p@ss/word", "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(tmp_path / "ca.pem")}
    assert s["CACHES"]["sessions"]["OPTIONS"]["CONNECTION_KWARGS"]["username"] == "app"
    assert s["CELERY_BROKER_URL"] == (
        "rediss://app:p%40ss%2Fword@10.0.0.6:6380/1?ssl_cert_reqs=required&ssl_ca_certs="
        + str(tmp_path / "ca.pem").replace("/", "%2F"))
    assert s["CELERY_RESULT_BACKEND"] == s["CELERY_BROKER_URL"]
    assert redis_urls(parse(data, source=str(tmp_path / "djscale.toml")),
                      state_dir=tmp_path)[0].startswith("rediss://app:p%40ss%2Fword@10.0.0.6")


def test_redis_tls_files_need_tls() -> None:
    with pytest.raises(TopologyError, match=r"redis.ca_file is set but redis.tls = false"):
        parse({"redis": {"ca_file": "ca.pem"}})


def test_an_existing_redis_cluster_is_given_by_its_node_addresses(tmp_path: Path) -> None:
    data = {"postgres": {"port": 5432},
            "redis": {"mode": "cluster", "tls": True,
                      "addresses": ["10.0.1.1:7000", "10.0.1.2:7000", "10.0.1.3:7000"],
                      "broker_host": "10.0.1.9", "broker_port": 6379},
            "celery": {"workers": 1, "app": "shop.celery:app"}}
    s = _settings(data, tmp_path)
    assert s["CACHES"]["default"]["LOCATION"] == [
        "rediss://10.0.1.1:7000", "rediss://10.0.1.2:7000", "rediss://10.0.1.3:7000"]
    assert s["CACHES"]["default"]["OPTIONS"]["CLUSTER"] is True
    assert s["CELERY_BROKER_URL"].startswith("rediss://10.0.1.9:6379/0?")


def test_redis_addresses_need_cluster_mode() -> None:
    with pytest.raises(TopologyError, match=r'needs redis.mode = "cluster"'):
        parse({"redis": {"addresses": ["10.0.1.1:7000"]}})


def test_a_broker_url_gets_its_password_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PW", "b/pw")
    s = _settings({"postgres": {"port": 5432}, "redis": {"port": 6379},
                   "celery": {"broker": "amqp://shop@mq.example.com:5672/",
                              "broker_password_env": "BROKER_PW"}}, tmp_path)
    assert s["CELERY_BROKER_URL"] == "amqp://shop:b%2Fpw@mq.example.com:5672/"


# ----------------------------------------------------------------- addresses

def test_fixed_addresses_need_no_local_cluster(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_TEST_PASSWORD", "x")
    s = _settings(FIXED, tmp_path)
    assert (s["DATABASES"]["default"]["HOST"], s["DATABASES"]["default"]["PORT"]) == (
        "10.0.0.5", "5432")
    assert s["DATABASES"]["default_replica1"]["PORT"] == "5433"
    assert s["CACHES"]["default"]["LOCATION"] == "redis://10.0.0.6:6380/0"


@pytest.mark.parametrize("data, key", [
    ({"postgres": {"port": 5432}}, "redis.port"),
    ({"redis": {"port": 6379}}, "postgres.port"),
    ({"postgres": {"port": 5432, "replicas": 2, "replica_ports": [5433]},
      "redis": {"port": 6379}}, "postgres.replica_ports[1]"),
    ({"postgres": {"port": 5432}, "shards": [{"name": "s1"}], "redis": {"port": 6379}},
     "shards[0].port"),
    ({"postgres": {"port": 5432}, "redis": {"mode": "cluster"},
      "celery": {"workers": 1, "app": "a.celery:app"}}, "redis.port"),
])
def test_a_missing_address_is_one_line_naming_its_key(tmp_path: Path, data: dict[str, Any],
                                                       key: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        _settings(data, tmp_path)
    message = str(err.value)
    assert message.startswith(f'{key} is "auto"'), message
    assert "\n" not in message


def test_the_state_beside_the_topology_resolves_auto_ports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJSCALE_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path.parent)
    (tmp_path / ".djscale").mkdir()
    (tmp_path / ".djscale" / STATE_FILE).write_text(
        '{"services": {"pg-default": {"host": "127.0.0.1", "port": 41001},'
        ' "redis": {"host": "127.0.0.1", "port": 41002}}}', encoding="utf-8")
    (tmp_path / "djscale.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    s = from_topology(tmp_path / "djscale.toml")
    assert s["DATABASES"]["default"]["PORT"] == "41001"


# ----------------------------------------------------------------- finding the file

def test_the_topology_is_found_beside_the_project_not_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJSCALE_TOPOLOGY", raising=False)
    monkeypatch.chdir("/")
    (tmp_path / "mysite").mkdir()
    (tmp_path / "djscale.toml").write_text("", encoding="utf-8")
    settings_file = tmp_path / "mysite" / "settings.py"
    assert find_topology({"BASE_DIR": tmp_path}) == tmp_path / "djscale.toml"
    assert find_topology({"__file__": str(settings_file)}) == tmp_path / "djscale.toml"


def test_djscale_topology_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJSCALE_TOPOLOGY", str(tmp_path / "other.toml"))
    assert find_topology({"BASE_DIR": "/nowhere"}) == tmp_path / "other.toml"


def test_a_missing_topology_says_where_it_looked(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJSCALE_TOPOLOGY", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=f"looked for {tmp_path}/djscale.toml"):
        find_topology({"BASE_DIR": tmp_path})


# ----------------------------------------------------------------- profiles and layers

BASE_TOML = """
[project]
name = "shop"
[postgres]
replicas = 1
[[shards]]
name = "s1"
[redis]
mode = "single"
"""

PROD_TOML = """
[postgres]
host = "10.0.0.5"
port = 5432
replica_ports = [5433]
password_env = "PGPASSWORD_PROD"
sslmode = "require"
[[shards]]
name = "s1"
port = 6001
[redis]
port = 6380
tls = true
"""


def test_a_profile_layers_its_file_over_the_topology(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "djscale.toml").write_text(BASE_TOML, encoding="utf-8")
    (tmp_path / "djscale.prod.toml").write_text(PROD_TOML, encoding="utf-8")
    local = load(tmp_path / "djscale.toml", profile="")
    assert local.postgres.port == "auto" and local.postgres.replicas == 1
    monkeypatch.setenv("DJSCALE_PROFILE", "prod")
    prod = load(tmp_path / "djscale.toml")
    assert prod.postgres.port == 5432 and prod.postgres.replicas == 1
    assert prod.postgres.password_env == "PGPASSWORD_PROD"
    assert prod.shards[0].port == 6001 and prod.shards[0].sslmode == "require"
    assert prod.redis.tls and prod.project.name == "shop"


def test_an_override_file_can_name_its_base_with_extends(tmp_path: Path) -> None:
    (tmp_path / "djscale.toml").write_text(BASE_TOML, encoding="utf-8")
    (tmp_path / "djscale.prod.toml").write_text('extends = "djscale.toml"\n' + PROD_TOML,
                                                encoding="utf-8")
    prod = load(tmp_path / "djscale.prod.toml", profile="")
    assert prod.postgres.port == 5432 and prod.shards[0].name == "s1"
    # The same file used as a profile agrees with its extends.
    assert load(tmp_path / "djscale.toml", profile="prod").postgres.port == 5432


def test_a_missing_profile_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "djscale.toml").write_text(BASE_TOML, encoding="utf-8")
    with pytest.raises(TopologyError, match=r"djscale.staging.toml: topology file of profile "
                                            r"'staging' not found"):
        load(tmp_path / "djscale.toml", profile="staging")


def test_an_error_in_a_layer_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "djscale.toml").write_text(BASE_TOML, encoding="utf-8")
    (tmp_path / "djscale.prod.toml").write_text('[postgres]\nport = "x"\n', encoding="utf-8")
    with pytest.raises(TopologyError, match=r"djscale.toml \+ .*djscale.prod.toml: "
                                            r"postgres.port = 'x' is invalid"):
        load(tmp_path / "djscale.toml", profile="prod")


def test_extends_loops_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n', encoding="utf-8")
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n', encoding="utf-8")
    with pytest.raises(TopologyError, match=r"extends loops back"):
        load(tmp_path / "a.toml", profile="")


def test_layers_merge_tables_by_key_shards_by_name_and_replace_lists() -> None:
    merged = merge_layers(
        {"postgres": {"replicas": 2, "replica_ports": [1, 2]}, "shards": [{"name": "a"}, {}]},
        {"postgres": {"replica_ports": [5]}, "shards": [{"name": "shard2", "port": 9},
                                                        {"name": "c"}]})
    assert merged == {"postgres": {"replicas": 2, "replica_ports": [5]},
                      "shards": [{"name": "a"}, {"port": 9, "name": "shard2"}, {"name": "c"}]}


# ----------------------------------------------------------------- SQLite projects

def test_postgres_disabled_leaves_the_projects_databases_alone(tmp_path: Path) -> None:
    ns = {"DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db"}}}
    s = _settings({"postgres": {"enabled": False}, "redis": {"port": 6379}}, tmp_path,
                  namespace=ns)
    assert "DATABASES" not in s
    assert s["DJSCALE_OVERRIDDEN"] == []
    assert "DATABASES" not in _settings({"postgres": {"enabled": False},
                                         "redis": {"port": 6379}}, tmp_path)


def test_replicas_or_shards_without_postgres_say_they_need_postgresql() -> None:
    with pytest.raises(TopologyError, match=r"postgres.replicas needs PostgreSQL"):
        parse({"postgres": {"enabled": False, "replicas": 1}})
    with pytest.raises(TopologyError, match=r"\[\[shards\]\] needs PostgreSQL"):
        parse({"postgres": {"enabled": False}, "shards": [{"name": "s1"}]})
    with pytest.raises(TopologyError, match=r"pgbouncer.enabled = true needs PostgreSQL"):
        parse({"postgres": {"enabled": False}, "pgbouncer": {"enabled": True}})


# ----------------------------------------------------------------- merging settings

USER: dict[str, Any] = {
    "BASE_DIR": "/srv/shop",
    "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"},
                  "legacy": {"ENGINE": "django.db.backends.sqlite3", "NAME": "old"}},
    "CACHES": {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
               "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    "DATABASE_ROUTERS": ["shop.routers.AuditRouter"],
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
    "CELERY_RESULT_BACKEND": "django-db",
    "CELERY_TASK_IGNORE_RESULT": False,
    "CELERY_BROKER_URL": "redis://:secret@old-broker:6379/0",
}


def test_settings_merge_and_leave_alone_what_djscale_does_not_own(tmp_path: Path) -> None:
    s = _settings({"postgres": {"port": 5432}, "redis": {"port": 6379}}, tmp_path,
                  namespace=USER)
    assert s["DATABASES"]["legacy"] == USER["DATABASES"]["legacy"]
    assert s["DATABASES"]["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert s["CACHES"]["local"] == USER["CACHES"]["local"]
    assert s["CACHES"]["default"]["BACKEND"] == "djscale.cache.TieredCache"
    assert s["DATABASE_ROUTERS"] == ["shop.routers.AuditRouter",
                                     "djscale.db.routers.PrimaryReplicaRouter"]
    for kept in ("SESSION_ENGINE", "SESSION_CACHE_ALIAS", "CELERY_RESULT_BACKEND",
                 "CELERY_TASK_IGNORE_RESULT"):
        assert kept not in s, kept


def test_every_replaced_user_value_is_recorded_without_passwords(tmp_path: Path) -> None:
    s = _settings({"postgres": {"port": 5432}, "redis": {"port": 6379}}, tmp_path,
                  namespace=USER)
    replaced = {item["setting"]: item for item in s["DJSCALE_OVERRIDDEN"]}
    assert set(replaced) == {"DATABASES['default']", "CACHES['default']", "CELERY_BROKER_URL"}
    assert replaced["DATABASES['default']"]["was"] == "sqlite3 db.sqlite3"
    assert replaced["DATABASES['default']"]["now"] == "postgresql app at 127.0.0.1:5432"
    assert replaced["CELERY_BROKER_URL"]["was"] == "redis://:***@old-broker:6379/0"


def test_applying_the_topology_twice_reports_nothing(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"BASE_DIR": str(tmp_path)}
    topo = parse({"postgres": {"port": 5432}, "redis": {"port": 6379}})
    configure(ns, topo, state_dir=tmp_path)
    configure(ns, topo, state_dir=tmp_path)
    assert ns["DJSCALE_OVERRIDDEN"] == []
    assert ns["DATABASE_ROUTERS"] == ["djscale.db.routers.PrimaryReplicaRouter"]


def test_the_old_call_still_returns_every_setting(tmp_path: Path) -> None:
    s = _settings({"postgres": {"port": 5432}, "redis": {"port": 6379}}, tmp_path)
    assert s["SESSION_ENGINE"] == "djscale.sessions"
    assert s["CELERY_TASK_IGNORE_RESULT"] is True
    assert s["DJSCALE_OVERRIDDEN"] == []


def test_each_overridden_setting_is_a_w200_warning() -> None:
    replaced = [{"setting": "CACHES['default']", "was": "LocMemCache", "now": "TieredCache"}]
    with override_settings(DJSCALE_OVERRIDDEN=replaced):
        messages = check_overridden_settings()
    assert [m.id for m in messages] == ["djscale.W200"]
    assert "CACHES['default'] from settings.py (LocMemCache)" in messages[0].msg
    with override_settings(DJSCALE_OVERRIDDEN=[]):
        assert check_overridden_settings() == []


# ----------------------------------------------------------------- runtime vs tooling

def test_importing_the_settings_loads_no_cluster_tooling() -> None:
    code = ("import djscale.settings, djscale.storage, djscale.localstate, sys; "
            "print([m for m in sys.modules if m.startswith('djscale.cluster')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_kubernetes_pods_get_the_password_in_the_variable_the_topology_names() -> None:
    from djscale.deploy import kubernetes_manifests

    topo = parse({"project": {"name": "shop"},
                  "postgres": {"password_env": "PGPASSWORD_PROD"}})
    text = "\n".join(str(m.__dict__) for m in kubernetes_manifests(topo, topology_text=""))
    assert "'PGPASSWORD_PROD'" in text
    assert "'DJSCALE_DB_PASSWORD'" not in text


def test_the_old_call_finds_the_file_beside_the_calling_settings_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.delenv("DJSCALE_TOPOLOGY", raising=False)
    monkeypatch.chdir("/")
    (tmp_path / "djscale.toml").write_text(
        '[project]\nname = "beside"\n[postgres]\nport = 5432\n[redis]\nport = 6379\n',
        encoding="utf-8")
    (tmp_path / "mysite").mkdir()
    module_file = tmp_path / "mysite" / "settings.py"
    module_file.write_text("from djscale.settings import from_topology\n"
                           "globals().update(from_topology())\n", encoding="utf-8")
    spec = importlib.util.spec_from_file_location("beside_settings", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CACHES["default"]["KEY_PREFIX"] == "beside"
