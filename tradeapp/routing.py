"""Every WebSocket route of the platform. Apps add their consumers here as they grow them."""

from django.urls import path

from tradeapp.consumers import SystemEventsConsumer

websocket_urlpatterns = [
    path("ws/system/events", SystemEventsConsumer.as_asgi()),
]
