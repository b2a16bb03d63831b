"""WSGI application of the supervision tests' app servers."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.supervision_support.settings")
application = get_wsgi_application()
