"""ShardRouter decisions that need no database: where tables may live, missing keys."""

from __future__ import annotations

import pytest
from django.db import models
from django.test.utils import isolate_apps

from djscale.errors import ShardKeyMissing
from djscale.sharding.managers import SHARD_HINT
from djscale.sharding.models import ShardedModel
from djscale.sharding.router import ShardRouter, is_sharded
from tests.shardapp.models import Order, ShardedUser, UserDirectory
from tests.testapp.models import Note

router = ShardRouter()


def test_sharded_models_are_recognised_by_their_base_and_key() -> None:
    assert is_sharded(Order) and is_sharded(ShardedUser)
    assert not is_sharded(UserDirectory) and not is_sharded(Note)


@pytest.mark.parametrize(("db", "model", "allowed"), [
    ("shard1", "order", True),
    ("shard2", "shardeduser", True),
    ("default", "order", False),
    ("default_replica1", "order", False),
    ("shard1", "userdirectory", False),
    ("default", "userdirectory", None),  # no opinion: the replica router decides
])
def test_sharded_tables_live_on_shards_and_global_tables_off_them(
        db: str, model: str, allowed: bool | None) -> None:
    assert router.allow_migrate(db, "shardapp", model) is allowed


def test_global_apps_and_plain_operations_stay_off_shards() -> None:
    assert router.allow_migrate("shard3", "auth", "user") is False
    assert router.allow_migrate("shard3", "testapp") is False  # RunPython without a model
    assert router.allow_migrate("default", "testapp") is None


def test_operations_hinted_for_shards_run_on_every_shard_only() -> None:
    assert router.allow_migrate("shard1", "djscale_sharding", djscale_shards=True) is True
    assert router.allow_migrate("default", "djscale_sharding", djscale_shards=True) is False


def test_unsharded_models_are_left_to_the_next_router() -> None:
    assert router.db_for_read(Note) is None
    assert router.db_for_write(UserDirectory) is None


def test_a_query_without_key_or_instance_names_model_and_key() -> None:
    with pytest.raises(ShardKeyMissing, match=r"shardapp\.Order is sharded by 'user_id'"):
        router.db_for_read(Order)
    with pytest.raises(ShardKeyMissing, match=r"Order\.objects\.for_key"):
        router.db_for_write(Order)


def test_a_routed_queryset_hint_names_its_shard() -> None:
    assert router.db_for_write(Order, **{SHARD_HINT: "shard2"}) == "shard2"
    assert router.db_for_read(Order, **{SHARD_HINT: "shard2"}) == "shard2"  # no replicas


def test_relations_between_sharded_rows_need_the_same_shard() -> None:
    a, b = Order(user_id=1, amount=1), ShardedUser(user_id=1)
    a._state.db, b._state.db = "shard1", "shard1"
    assert router.allow_relation(a, b) is True
    b._state.db = "shard2"
    assert router.allow_relation(a, b) is False
    assert router.allow_relation(Note(), UserDirectory()) is None


@isolate_apps("tests.shardapp")
def test_model_checks_catch_a_wrong_shard_key_and_a_custom_primary_key() -> None:
    class Bad(ShardedModel):
        shard_key = "tenant"
        id = models.BigAutoField(primary_key=True)
        tenant_id = models.IntegerField()

        class Meta:
            app_label = "shardapp"

    ids = {e.id for e in Bad.check()}
    assert ids == {"djscale_sharding.E001", "djscale_sharding.E002"}
    assert Order.check() == []
