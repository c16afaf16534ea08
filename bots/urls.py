"""The bots' pages (``/bots/...``); the dashboard is ``/`` (``tradeapp.urls``)."""

from django.urls import path

from bots import views

app_name = "bots"

urlpatterns = [
    path("", views.bot_list, name="list"),
]
