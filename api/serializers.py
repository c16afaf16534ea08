"""What the API shows and accepts. Money is sent as strings of decimals (exact), times as ISO-8601
in UTC; a bot's strategy parameters are validated by the strategy itself."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from api.errors import Conflict
from backtests import services as backtests_services
from backtests.metrics import METRIC_NAMES
from backtests.models import BacktestRun, OptimizationResult, OptimizationRun
from bots import services
from bots.models import Bot, BotEvent, ExchangeAccount, Fill, Order, Position, Signal, Trade
from marketdata.models import Candle, Exchange, Instrument, RawTick, RejectedTick
from strategies.base import StrategyParameterError
from strategies.registry import available


class ExchangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Exchange
        fields = ["id", "ccxt_id", "name", "kind", "active"]


class InstrumentSerializer(serializers.ModelSerializer):
    exchange = serializers.SlugRelatedField(slug_field="ccxt_id", read_only=True)

    class Meta:
        model = Instrument
        fields = ["id", "exchange", "symbol", "active"]


class CandleSerializer(serializers.ModelSerializer):
    class Meta:
        model = Candle
        fields = ["close_time", "open", "high", "low", "close", "volume", "trades"]


class StrategySerializer(serializers.Serializer):
    """A strategy of the catalog (``BaseStrategy.describe``): only documents the response."""

    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    parameters = serializers.ListField(
        child=serializers.DictField(), help_text="Each parameter: name, type, default, minimum, "
        "maximum, step, help, choices."
    )  # fmt: skip
    defaults = serializers.DictField(help_text="The default value of each parameter.")
    warmup = serializers.IntegerField()
    lookback = serializers.IntegerField()
    plots = serializers.DictField(help_text="How to draw each indicator.")


class PositionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Position
        fields = [
            "id", "bot", "quantity", "entry_price", "entry_time", "mark_price", "unrealized_pnl",
            "dust", "updated_at",
        ]  # fmt: skip


class BotSerializer(serializers.ModelSerializer):
    """A bot; ``parameters`` are the strategy's (validated and completed with its defaults)."""

    instrument = serializers.PrimaryKeyRelatedField(queryset=Instrument.objects.all())
    account = serializers.PrimaryKeyRelatedField(
        queryset=ExchangeAccount.objects.all(), required=False, allow_null=True
    )
    strategy = serializers.ChoiceField(choices=[])
    parameters = serializers.JSONField(required=False, default=dict)
    position = PositionSerializer(read_only=True)

    class Meta:
        model = Bot
        fields = [
            "id", "name", "strategy", "parameters", "instrument", "timeframe", "mode", "account",
            "capital", *services.RISK_FIELDS, "status", "status_reason", "last_processed_at",
            "cash", "equity", "position", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["status", "status_reason", "last_processed_at", "cash", "equity",
                            "created_at", "updated_at"]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["strategy"].choices = available()
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated and not request.user.is_staff:
            # Only one's own accounts may be given to a bot.
            self.fields["account"].queryset = ExchangeAccount.objects.filter(owner=request.user)

    def validate_capital(self, value: Decimal) -> Decimal:
        if value <= 0:
            raise serializers.ValidationError("the capital must be positive")
        return value

    def validate_max_position_fraction(self, value: float) -> float:
        # The model's check constraint, named here so the error names the field.
        if not 0 < value <= 1:
            raise serializers.ValidationError("must be above 0 and at most 1")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        strategy = attrs.get("strategy", getattr(self.instance, "strategy", None))
        parameters = attrs.get("parameters", getattr(self.instance, "parameters", None))
        try:
            attrs["parameters"] = services.parameters_clean(strategy, parameters)
        except StrategyParameterError as exc:
            raise serializers.ValidationError({"parameters": [str(exc)]}) from exc
        return attrs

    def create(self, validated: dict[str, Any]) -> Bot:
        options = {name: validated.pop(name) for name in services.RISK_FIELDS if name in validated}
        return services.bot_create(user=self.context["request"].user, **validated, **options)

    def update(self, bot: Bot, validated: dict[str, Any]) -> Bot:
        """Through ``services.bot_edit``, as the bot's page: refused (409) while the bot runs,
        validated again and recorded in the audit trail. The strategy, market, mode, account
        and capital are fixed once created."""
        changes = {name: value for name, value in validated.items() if getattr(bot, name) != value}
        fixed = sorted(set(changes) - set(services.EDITABLE))
        if fixed:
            raise serializers.ValidationError(
                {name: ["cannot be changed once the bot exists"] for name in fixed}
            )
        try:
            return services.bot_edit(
                bot_id=bot.pk, changes=changes, actor=self.context["request"].user
            )
        except services.BotStateError as exc:
            raise Conflict(str(exc)) from exc


class SignalSerializer(serializers.ModelSerializer):
    class Meta:
        model = Signal
        fields = ["id", "bot", "time", "action", "price", "strength", "reason", "indicators",
                  "risk_checks", "executed", "no_order_reason", "created_at"]  # fmt: skip


class FillSerializer(serializers.ModelSerializer):
    """One fill; ``fee_cost`` in ``fee_currency`` is the fee as the exchange charged it (the
    quote currency, the coin bought, or a third asset such as BNB), ``fee`` its value in the
    quote currency at the fill."""

    class Meta:
        model = Fill
        fields = ["id", "time", "side", "quantity", "price", "fee_cost", "fee_currency", "fee",
                  "exchange_trade_id"]  # fmt: skip


class OrderSerializer(serializers.ModelSerializer):
    fills = FillSerializer(many=True, read_only=True)

    class Meta:
        model = Order
        fields = [
            "id", "bot", "signal", "client_order_id", "side", "type", "reason", "time",
            "quantity", "quote_amount", "price", "filled_quantity", "status",
            "exchange_order_id", "error", "created_at", "submitted_at", "filled_at", "fills",
        ]  # fmt: skip


class TradeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Trade
        fields = ["id", "bot", "side", "entry_time", "exit_time", "quantity", "entry_price",
                  "exit_price", "fees", "pnl", "return_fraction", "exit_reason"]  # fmt: skip


class BotEventSerializer(serializers.ModelSerializer):
    # null: the system acted (a worker, the risk rules), not a user.
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = BotEvent
        fields = ["id", "bot", "kind", "actor", "message", "data", "time"]


class ExchangeAccountSerializer(serializers.ModelSerializer):
    """An exchange account; the key and secret are write-only: stored encrypted, never shown
    again (only whether each is set)."""

    exchange = serializers.SlugRelatedField(slug_field="ccxt_id", queryset=Exchange.objects.all())
    api_key = serializers.CharField(write_only=True, required=False, allow_blank=False,
                                    trim_whitespace=True, max_length=512)  # fmt: skip
    api_secret = serializers.CharField(write_only=True, required=False, allow_blank=False,
                                       trim_whitespace=True, max_length=512)  # fmt: skip
    has_api_key = serializers.SerializerMethodField()
    has_api_secret = serializers.SerializerMethodField()

    class Meta:
        model = ExchangeAccount
        fields = ["id", "exchange", "label", "api_key", "api_secret", "has_api_key",
                  "has_api_secret", "created_at", "updated_at"]  # fmt: skip

    def get_has_api_key(self, account: ExchangeAccount) -> bool:
        return bool(account.api_key_encrypted)

    def get_has_api_secret(self, account: ExchangeAccount) -> bool:
        return bool(account.api_secret_encrypted)

    def _save(self, account: ExchangeAccount, validated: dict[str, Any]) -> ExchangeAccount:
        key = validated.pop("api_key", None)
        secret = validated.pop("api_secret", None)
        for name, value in validated.items():
            setattr(account, name, value)
        account.set_credentials(api_key=key, api_secret=secret)
        account.full_clean()
        account.save()
        return account

    def create(self, validated: dict[str, Any]) -> ExchangeAccount:
        return self._save(ExchangeAccount(owner=self.context["request"].user), validated)

    def update(self, account: ExchangeAccount, validated: dict[str, Any]) -> ExchangeAccount:
        return self._save(account, validated)


_RUN_FIELDS = [
    "id", "strategy", "instrument", "timeframe", "start", "end", "cash", "fee",
    "slippage", "size", "fill", "allow_short", "fee_in_base", "stop_loss", "take_profit",
    "trailing_stop", "status", "progress", "error", "created_at", "started_at", "finished_at",
    "data_first", "data_last", "data_bars", "data_hash", "strategy_version", "engine_version",
]  # fmt: skip
_RUN_READ_ONLY = [
    "status", "progress", "error", "created_at", "started_at", "finished_at", "data_first",
    "data_last", "data_bars", "data_hash", "strategy_version", "engine_version",
]  # fmt: skip


class BacktestRunSerializer(serializers.ModelSerializer):
    """A stored backtest: the request (strategy, parameters, market, period, costs, sizing,
    stops), its status and progress, the reproducibility record and the metrics."""

    instrument = serializers.PrimaryKeyRelatedField(queryset=Instrument.objects.all())
    strategy = serializers.ChoiceField(choices=[])
    parameters = serializers.JSONField(required=False, default=dict)

    class Meta:
        model = BacktestRun
        fields = [*_RUN_FIELDS, "parameters", "metrics", "trades_count"]
        read_only_fields = [*_RUN_READ_ONLY, "metrics", "trades_count"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["strategy"].choices = available()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["end"] <= attrs["start"]:
            raise serializers.ValidationError({"end": ["must be after start"]})
        return attrs

    def create(self, validated: dict[str, Any]) -> BacktestRun:
        return backtests_services.backtest_create(user=self.context["request"].user, **validated)


class OptimizationRunSerializer(serializers.ModelSerializer):
    instrument = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = OptimizationRun
        fields = [*_RUN_FIELDS, "method", "space", "objective", "n_iter", "seed", "train_bars",
                  "test_bars", "chunks_total", "chunks_done", "combinations", "best_parameters",
                  "best_metrics", "walk_forward"]  # fmt: skip
        read_only_fields = fields


class OptimizationResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = OptimizationResult
        fields = ["id", "parameters", "metrics", "objective"]


#: What a new optimisation's request sets: the run's settings and the search's.
_OPTIMIZATION_WRITABLE = {*_RUN_FIELDS, "method", "space", "objective", "n_iter", "seed",
                          "train_bars", "test_bars"} - {*_RUN_READ_ONLY, "id"}  # fmt: skip


class OptimizationRunCreateSerializer(OptimizationRunSerializer):
    """A new optimisation: the backtest's request (strategy, market, period, costs, sizing,
    stops) plus the search: ``method`` (grid, random, walk_forward), ``space`` (parameter name
    -> list of values; a parameter left out takes its schema grid), ``objective`` (the metric
    ranked on), ``n_iter`` and ``seed`` (random search), ``train_bars``/``test_bars``
    (walk-forward). Checked as ``backtests.services.optimization_create`` checks it."""

    instrument = serializers.PrimaryKeyRelatedField(queryset=Instrument.objects.all())
    strategy = serializers.ChoiceField(choices=[])
    space = serializers.JSONField(required=False, default=dict)
    objective = serializers.ChoiceField(choices=list(METRIC_NAMES), default="sharpe")

    class Meta(OptimizationRunSerializer.Meta):
        read_only_fields = [
            name for name in OptimizationRunSerializer.Meta.fields
            if name not in _OPTIMIZATION_WRITABLE
        ]  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["strategy"].choices = available()

    def validate_space(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError(
                "give a JSON object of parameter name -> list of values to try"
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["end"] <= attrs["start"]:
            raise serializers.ValidationError({"end": ["must be after start"]})
        return attrs

    def create(self, validated: dict[str, Any]) -> OptimizationRun:
        # The rest (the space against the strategy, the grid's size, walk-forward windows, the
        # engine settings) is the service's: a ValidationError keyed by field, nothing stored.
        return backtests_services.optimization_create(
            user=self.context["request"].user, **validated
        )


class RawTickSerializer(serializers.ModelSerializer):
    """A trade exactly as the exchange sent it (the audit copy); ``time`` the exchange's trade
    time, ``received_at`` when the collector got it."""

    class Meta:
        model = RawTick
        fields = ["id", "instrument", "trade_id", "time", "price", "amount", "side",
                  "received_at"]  # fmt: skip
        read_only_fields = fields


class RejectedTickSerializer(serializers.ModelSerializer):
    """A row the collector refused, with its raw payload and the reason."""

    class Meta:
        model = RejectedTick
        fields = ["id", "instrument", "exchange", "symbol", "reason", "payload", "received_at"]
        read_only_fields = fields


class SystemEventSerializer(serializers.ModelSerializer):
    """One event of the platform's log, named as on the ``system_events`` channel
    (``bot.started``, ``bot.kill_switch``, ...): the bot, its owner, who acted (null: the
    system), the message and the event's data."""

    type = serializers.SerializerMethodField()
    # A plain string in the schema: a second "kind" enum made of BotEvent.Kind would collide
    # with Exchange.Kind's name (the values are BotEventKindEnum's).
    kind = serializers.CharField(
        read_only=True, help_text=f"One of {', '.join(BotEvent.Kind.values)}."
    )
    bot_name = serializers.CharField(source="bot.name", read_only=True)
    owner = serializers.CharField(source="bot.owner.username", read_only=True)
    # null: the system acted (a worker, the risk rules), not a user.
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = BotEvent
        fields = ["id", "type", "kind", "time", "bot", "bot_name", "owner", "actor", "message",
                  "data"]  # fmt: skip
        read_only_fields = fields

    def get_type(self, event: BotEvent) -> str:
        return f"bot.{event.kind}"
