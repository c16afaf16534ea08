"""Backtest and optimisation pages (``/backtests/...``, ``/optimizations/...``)."""

from django.urls import path

from backtests import views

app_name = "backtests"

urlpatterns = [
    path("backtests/", views.backtest_list, name="list"),
    path("optimizations/", views.optimization_list, name="optimization-list"),
]
