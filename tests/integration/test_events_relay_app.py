"""The relay publishes through the project's Celery app, never Celery's unconfigured default."""

from __future__ import annotations

import pytest
from celery import Celery
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from djscale.errors import ConfigurationError
from djscale.events.relay import celery_app

pytestmark = pytest.mark.integration

app = Celery("named-in-settings", set_as_current=False)


def test_the_app_named_in_settings_is_used() -> None:
    with override_settings(DJSCALE={"CELERY_APP": f"{__name__}:app"}):
        assert celery_app() is app
    assert celery_app(__name__) is app  # "module" finds its `app`


def test_without_a_name_the_app_is_configured_from_django_settings() -> None:
    with override_settings(DJSCALE={}, CELERY_BROKER_URL="redis://10.9.8.7:6390/3"):
        assert celery_app().conf.broker_url == "redis://10.9.8.7:6390/3"


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_here:app", "cannot import 'no_such_module_here'"),
    (f"{__name__}:nothing", "has no Celery app named nothing"),
])
def test_a_wrong_name_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        celery_app(spec)
    with pytest.raises(CommandError, match=message):
        call_command("events_relay", "--once", "--app", spec)
