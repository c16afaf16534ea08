"""``/api/``: the REST API (DRF), its OpenAPI 3 schema and the browsable docs."""

from typing import Any

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from api import views
from api.auth import ObtainTokenView
from api.parsers import PARSERS
from api.schema import ApiSchemaGenerator


class ApiRouter(DefaultRouter):
    """DRF's router, but any path segment reaches a detail view as the object's id: a malformed
    id (``0.5``) is answered by the view, with the API's JSON 404, not Django's HTML page."""

    def get_lookup_regex(self, viewset: Any, lookup_prefix: str = "") -> str:
        return super().get_lookup_regex(viewset, lookup_prefix).replace("[^/.]+", "[^/]+")


router = ApiRouter()
router.register("bots", views.BotViewSet, basename="bot")
router.register("signals", views.SignalViewSet, basename="signal")
router.register("orders", views.OrderViewSet, basename="order")
router.register("trades", views.TradeViewSet, basename="trade")
router.register("positions", views.PositionViewSet, basename="position")
router.register("events", views.BotEventViewSet, basename="botevent")
router.register("accounts", views.ExchangeAccountViewSet, basename="account")
router.register("exchanges", views.ExchangeViewSet, basename="exchange")
router.register("instruments", views.InstrumentViewSet, basename="instrument")
router.register("candles", views.CandleViewSet, basename="candle")
router.register("strategies", views.StrategyViewSet, basename="strategy")
router.register("backtests", views.BacktestRunViewSet, basename="backtest")
router.register("optimizations", views.OptimizationRunViewSet, basename="optimization")
router.register("ticks", views.RawTickViewSet, basename="tick")
router.register("rejects", views.RejectedTickViewSet, basename="reject")
router.register("system-events", views.SystemEventViewSet, basename="systemevent")

urlpatterns = [
    path("", include(router.urls)),
    path("portfolio/", views.PortfolioView.as_view(), name="portfolio"),
    path("kill-switch/", views.KillSwitchView.as_view(), name="kill-switch"),
    # Password guessing limited by axes and a throttle (api.auth).
    path("token/", ObtainTokenView.as_view(parser_classes=PARSERS), name="token"),
    # The error responses documented too (api.schema).
    path("schema/", SpectacularAPIView.as_view(generator_class=ApiSchemaGenerator), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
