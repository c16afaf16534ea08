"""The bots' pages (``/bots/...``); the dashboard is ``/`` (``tradeapp.urls``)."""

from django.urls import path

from bots import views

app_name = "bots"

urlpatterns = [
    path("", views.bot_list, name="list"),
    path("new/", views.bot_create, name="create"),
    path("<int:pk>/", views.bot_detail, name="detail"),
    path("<int:pk>/edit/", views.bot_edit, name="edit"),
    path("<int:pk>/start/", views.bot_start, name="start"),
    path("<int:pk>/stop/", views.bot_stop, name="stop"),
    path("<int:pk>/delete/", views.bot_delete, name="delete"),
    path("<int:pk>/parity/", views.bot_parity, name="parity"),
    path("<int:pk>/adopt-balance/", views.bot_adopt_balance, name="adopt_balance"),
    path("kill-switch/release/", views.kill_switch_release, name="kill_switch_release"),
]
