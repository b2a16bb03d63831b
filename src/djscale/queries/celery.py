"""N+1 detection for Celery tasks, through ``task_prerun`` / ``task_postrun`` signals.

:func:`install` connects the handlers (idempotent). djscale's app config calls it when
Celery is already imported at start-up (a worker imports the Celery app before Django
starts); call it yourself otherwise. Each task is inspected with the same policy as a
request (mode, threshold, sample rate); findings are labelled ``task:<name>``. In
``raise`` mode the task fails at the query that completes the N+1.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from djscale.queries.config import query_config
from djscale.queries.nplusone import NPlusOneDetector

__all__ = ["install", "install_if_loaded"]

_running: dict[str, NPlusOneDetector] = {}


def _prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    config = query_config()
    if config.n_plus_one == "off" or random.random() >= config.sample_rate:
        return
    name = f"task:{getattr(task, 'name', '?')}"
    detector = NPlusOneDetector(mode=config.n_plus_one, threshold=config.threshold,
                                where=name, label=name,
                                keep=config.max_recorded, ignore_paths=config.ignore_paths)
    detector.start()
    _running[str(task_id)] = detector


def _postrun(task_id: str | None = None, **kwargs: Any) -> None:
    detector = _running.pop(str(task_id), None)
    if detector is not None:
        detector.stop()
        detector.report()


def install() -> None:
    """Connect the task signal handlers (safe to call more than once)."""
    from celery.signals import task_postrun, task_prerun

    task_prerun.connect(_prerun, weak=False, dispatch_uid="djscale.queries.prerun")
    task_postrun.connect(_postrun, weak=False, dispatch_uid="djscale.queries.postrun")


def install_if_loaded() -> None:
    """:func:`install` when this process has imported Celery (a worker, usually)."""
    if "celery" in sys.modules:
        install()
