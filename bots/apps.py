from django.apps import AppConfig


class BotsConfig(AppConfig):
    name = "bots"
    verbose_name = "Bots"

    def ready(self) -> None:
        from bots.receivers import on_candle_closed
        from marketdata.collector import candle_closed

        candle_closed.connect(on_candle_closed, dispatch_uid="bots.on_candle_closed")
