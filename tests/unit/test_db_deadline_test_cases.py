"""Query deadlines and Django's test cases share the connection wrappers peacefully.

Django's ``TestCase`` forbids the databases a test did not ask for by wrapping
``connect``/``cursor`` on each connection wrapper and unwraps them at class teardown
(``_remove_databases_failures`` reads ``.wrapped``). When the deadline hooks were first
installed on a thread inside such a test (an in-process request), they used to replace
``connect`` over Django's wrapper: the unwrap failed, the guards stayed, and every later
test of the run was refused its shards ("Database queries to 'shard3' are not allowed").
"""

from __future__ import annotations

import threading

from django.db import connections
from django.test import TestCase

from djscale.db import deadline


class _OnlyDefault(TestCase):
    databases = {"default"}


def test_installing_the_hooks_inside_a_test_case_leaves_its_guards_removable() -> None:
    problems: list[str] = []

    def cycle() -> None:  # a new thread: fresh, never-patched connection wrappers
        # Django's private hooks (not in django-stubs), the same pair TestCase runs.
        getattr(_OnlyDefault, "_add_databases_failures")()  # noqa: B009
        try:
            deadline.install()
        finally:
            try:
                getattr(_OnlyDefault, "_remove_databases_failures")()  # noqa: B009
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(f"unwrap failed: {exc!r}")
        for alias in connections:
            conn = connections[alias]
            for name in ("connect", "cursor", "chunked_cursor", "temporary_connection"):
                if hasattr(getattr(conn, name), "wrapped"):
                    problems.append(f"{alias}.{name} is still guarded")

    worker = threading.Thread(target=cycle)
    worker.start()
    worker.join(10)
    assert problems == []
