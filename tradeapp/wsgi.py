"""WSGI entry point, for management tools only: the platform is served by ASGI (tradeapp.asgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeapp.settings")
application = get_wsgi_application()
