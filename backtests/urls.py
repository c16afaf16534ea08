"""Backtest and optimisation pages (``/backtests/...``, ``/optimizations/...``), included at the
site root."""

from django.urls import path

from backtests import views

app_name = "backtests"

urlpatterns = [
    path("backtests/", views.backtest_list, name="list"),
    path("backtests/new/", views.backtest_create, name="create"),
    path("backtests/candle-range/", views.candle_range, name="candle-range"),
    path("backtests/<int:pk>/", views.backtest_detail, name="detail"),
    path("backtests/<int:pk>/cancel/", views.backtest_cancel, name="cancel"),
    path("optimizations/", views.optimization_list, name="optimization-list"),
    path("optimizations/new/", views.optimization_create, name="optimization-create"),
    path("optimizations/<int:pk>/", views.optimization_detail, name="optimization-detail"),
    path("optimizations/<int:pk>/cancel/", views.optimization_cancel, name="optimization-cancel"),
]
