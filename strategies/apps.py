from django.apps import AppConfig
from django.core import checks


class StrategiesConfig(AppConfig):
    name = "strategies"
    verbose_name = "Strategies"

    def ready(self) -> None:
        # User strategy modules load lazily on first use; this check makes a broken
        # TRADEAPP_STRATEGY_MODULES visible at start-up (runserver, migrate, check) as well.
        checks.register(check_strategy_modules, "strategies")


def check_strategy_modules(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from strategies.registry import StrategyModuleError, available

    try:
        available()
    except StrategyModuleError as exc:
        return [
            checks.Error(
                str(exc),
                hint="Fix the module or remove it from TRADEAPP_STRATEGY_MODULES.",
                obj=exc.module,
                id="strategies.E001",
            )
        ]
    return []
