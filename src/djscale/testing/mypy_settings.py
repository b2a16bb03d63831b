"""Minimal settings for the django-stubs mypy plugin (touches no service)."""

SECRET_KEY = "mypy"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "djscale",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "mypy"}}
USE_TZ = True
