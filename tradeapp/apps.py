from django.apps import AppConfig


class TradeappConfig(AppConfig):
    name = "tradeapp"
    verbose_name = "Platform"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_save, pre_save

        # Sign-in failures and lockouts as events, and the reset on success (tradeapp.receivers).
        from tradeapp import receivers, sessions  # noqa: F401

        # Open WebSockets follow their session: sign-out and password changes close them
        # (tradeapp.sessions).
        user_model = get_user_model()
        user_logged_out.connect(sessions.on_user_logged_out, dispatch_uid="tradeapp.sessions.out")
        pre_save.connect(
            sessions.on_user_pre_save, sender=user_model, dispatch_uid="tradeapp.sessions.pre"
        )
        post_save.connect(
            sessions.on_user_post_save, sender=user_model, dispatch_uid="tradeapp.sessions.post"
        )
