"""Every WebSocket route of the platform (the seed's three, and the staff's system events).

``/ws/bot/{bot_id}/status`` and ``/ws/portfolio/{bot_id}``: ``bots.consumers``;
``/ws/market/{symbol}``: ``marketdata.consumers`` (its docstring: how a symbol such as
``BTC/USDT`` is written in the URL); ``/ws/system/events``: ``tradeapp.consumers``.
"""

from django.urls import path

from backtests.consumers import BacktestProgressConsumer, OptimizationProgressConsumer
from bots.consumers import BotStatusConsumer, DashboardConsumer, PortfolioConsumer
from marketdata.consumers import MarketConsumer
from tradeapp.consumers import SystemEventsConsumer

websocket_urlpatterns = [
    path("ws/bot/<int:bot_id>/status", BotStatusConsumer.as_asgi()),
    path("ws/portfolio/<int:bot_id>", PortfolioConsumer.as_asgi()),
    path("ws/market/<path:symbol>", MarketConsumer.as_asgi()),
    path("ws/system/events", SystemEventsConsumer.as_asgi()),
    path("ws/backtest/<int:run_id>", BacktestProgressConsumer.as_asgi()),
    path("ws/optimization/<int:run_id>", OptimizationProgressConsumer.as_asgi()),
    path("ws/dashboard", DashboardConsumer.as_asgi()),
]
