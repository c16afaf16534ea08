"""Market pages (``/markets/...``): instruments with live charts, and the data status."""

from django.urls import path

from marketdata import views

app_name = "marketdata"

urlpatterns = [
    path("", views.market_list, name="markets"),
    path("<int:pk>/", views.market_detail, name="market"),
    path("data-status/", views.data_status, name="data-status"),
]
