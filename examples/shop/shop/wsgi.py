"""WSGI entry point of every shop service (the topology sets DJANGO_SETTINGS_MODULE)."""

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
