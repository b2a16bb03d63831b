"""Signal handlers of the replica layer (connected once, from ``DjscaleConfig.ready()``).

- ``request_finished`` (and Celery ``task_postrun``): replica connections whose server
  was promoted are closed (:func:`djscale.db.failover.drop_promoted`).
- ``connection_created``: every new connection to the primary of a replication group
  with replicas gets an execute wrapper that calls
  :func:`djscale.db.replicas.record_write` for each statement that is not a read. This is
  how writes are noticed whatever issued them (ORM through the router, ``.using()``,
  raw cursors).
- Celery ``before_task_publish``: the publisher's read-your-writes tokens travel in the
  task's headers (``djscale_lsn``, signed); ``task_prerun``/``task_postrun`` open and close
  a consistency scope around the task, so the task reads what was written before it was
  sent. Publish tasks from ``transaction.on_commit`` when they follow a write made inside
  a transaction: before the commit there is nothing for a replica to replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import Token
from typing import Any

from django.core.signals import request_finished
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from djscale.db import config, consistency, failover
from djscale.db import deadline as _deadline  # noqa: F401 - connects the request hooks
from djscale.db.replicas import record_write

__all__ = ["TASK_HEADER", "detect_writes"]

log = logging.getLogger("djscale.db.signals")

TASK_HEADER = "djscale_lsn"

# Statements that never change data. Anything else (INSERT, UPDATE, DELETE, WITH ..., DDL,
# COPY, CALL) counts as a write; being wrong that way only costs a read on the primary.
_READS = ("SELECT", "SAVEPOINT", "RELEASE", "ROLLBACK", "SET ", "SHOW ")


def detect_writes(execute: Callable[..., Any], sql: Any, params: Any, many: bool,
                  context: dict[str, Any]) -> Any:
    """Execute wrapper of primary connections: record writes for read-your-writes."""
    if not (isinstance(sql, str) and sql.lstrip()[:10].upper().startswith(_READS)):
        record_write(context["connection"].alias)
    return execute(sql, params, many, context)


def _install_wrapper(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    group = config.group_of(connection.alias)
    if (group is not None and group.replicas and connection.alias == group.primary
            and detect_writes not in connection.execute_wrappers):
        connection.execute_wrappers.insert(0, detect_writes)


connection_created.connect(_install_wrapper, dispatch_uid="djscale.db.detect_writes")
request_finished.connect(failover.drop_promoted, dispatch_uid="djscale.db.drop_promoted")


# ---------------------------------------------------------------------- Celery

_task_scopes: dict[str, Token[consistency.ConsistencyState | None]] = {}


def _before_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None:
        return
    try:
        tokens = consistency.handoff_tokens()
    except Exception:  # sending the task matters more than the token
        log.warning("could not attach read-your-writes tokens to a task", exc_info=True)
        return
    if tokens:
        headers[TASK_HEADER] = consistency.encode_tokens(tokens)


def _task_tokens(task: Any) -> dict[str, int]:
    request = getattr(task, "request", None)
    value = getattr(request, TASK_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(TASK_HEADER)
    return consistency.decode_tokens(value, max_age=config.cookie_age())


def _prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task_id is not None:
        _task_scopes[task_id] = consistency.begin(_task_tokens(task))


def _postrun(task_id: str | None = None, **kwargs: Any) -> None:
    failover.drop_promoted()
    reset = _task_scopes.pop(task_id, None) if task_id is not None else None
    if reset is not None:
        try:
            consistency.end(reset)
        except ValueError:  # created in another context (should not happen)
            log.debug("task %s ended in another context than it started", task_id)


try:
    from celery import signals as celery_signals
except ImportError:  # pragma: no cover - celery is a dependency, but stay importable
    pass
else:
    celery_signals.before_task_publish.connect(_before_publish,
                                               dispatch_uid="djscale.db.publish")
    celery_signals.task_prerun.connect(_prerun, dispatch_uid="djscale.db.prerun")
    celery_signals.task_postrun.connect(_postrun, dispatch_uid="djscale.db.postrun")
