"""The REST API's views. Every one needs a signed-in user (session or token); every list of
users' rows (bots, their records, accounts, runs, events) is scoped to the user's own (another
user's object answers 404), staff see all, while market data (exchanges, instruments, candles,
raw and rejected ticks) and the strategy catalog are shared; lists are cursor-paginated and
filterable."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import serializers as s
from api.errors import Conflict
from api.pagination import CandlesInTime, RejectsInTime, TicksInTime
from backtests import selectors as backtest_selectors
from backtests import services as backtests_services
from backtests.metrics import json_safe
from backtests.models import BacktestRun, OptimizationRun, RunStatus
from bots import selectors, services
from bots.brokers import BrokerError
from bots.manager import BotManager
from bots.models import (
    Bot,
    BotEvent,
    ExchangeAccount,
    Order,
    Position,
    Signal,
    Trade,
)
from marketdata import selectors as market_selectors
from marketdata.aggregation import TIMEFRAMES
from marketdata.models import Candle, Exchange, Instrument, RawTick, RejectedTick
from strategies.registry import available, get_strategy


class Owned:
    """A queryset of the requesting user's rows (``owner_path`` leads to the owner), all for
    staff."""

    owner_path = "owner"
    queryset: QuerySet

    def get_queryset(self) -> QuerySet:
        rows = super().get_queryset()  # type: ignore[misc]
        if getattr(self, "swagger_fake_view", False):  # the schema generator: no user
            return rows.none()
        user = self.request.user  # type: ignore[attr-defined]
        return rows if user.is_staff else rows.filter(**{self.owner_path: user})


class BotFilter(django_filters.FilterSet):
    class Meta:
        model = Bot
        fields = ["status", "mode", "strategy", "instrument", "timeframe"]


class BotViewSet(Owned, viewsets.ModelViewSet):
    """Bots: create (stopped, parameters validated by the strategy), read, update while
    stopped, delete while stopped; ``start`` and ``stop`` actions."""

    queryset = Bot.objects.select_related("position").order_by("-id")
    serializer_class = s.BotSerializer
    filterset_class = BotFilter

    def perform_destroy(self, bot: Bot) -> None:
        # The page's rule: only a stopped bot (its open orders cancelled) is deleted.
        try:
            services.bot_delete(bot_id=bot.pk, actor=self.request.user)
        except services.BotStateError as exc:
            raise Conflict(str(exc)) from exc

    @extend_schema(request=None, responses=s.BotSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        bot = self.get_object()
        try:
            BotManager().start_bot(bot.pk, actor=request.user)
        except services.BotStateError as exc:
            raise ValidationError({"non_field_errors": [str(exc)]}) from exc
        bot.refresh_from_db()
        return Response(self.get_serializer(bot).data)

    @extend_schema(request=None, responses=s.BotSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        bot = self.get_object()
        BotManager().stop_bot(bot.pk, actor=request.user)
        bot.refresh_from_db()
        return Response(self.get_serializer(bot).data)

    @extend_schema(request=None, responses=s.BotSerializer)
    @action(detail=True, methods=["post"], url_path="adopt-balance")
    def adopt_balance(self, request: Request, pk: str | None = None) -> Response:
        """A live bot's balance mismatch resolved by taking the exchange account's word: the
        bot books the account's balance of its coin less what the account's other live bots
        book (a transfer at the last price: the capital moves, the P&L does not); entries
        resume. 400 with the reason when it cannot be done now."""
        import ccxt  # only where live trading happens (as bots.brokers.broker_for)

        from bots.reconcile import BalanceError, balance_adopt

        bot = self.get_object()
        try:
            balance_adopt(bot_id=bot.pk, actor=request.user)
        except (BalanceError, BrokerError, ccxt.BaseError) as exc:
            raise ValidationError({"non_field_errors": [f"balance not adopted: {exc}"]}) from exc
        bot.refresh_from_db()
        return Response(self.get_serializer(bot).data)

    @extend_schema(responses=dict)
    @action(detail=True, methods=["get"])
    def portfolio(self, request: Request, pk: str | None = None) -> Response:
        return Response(selectors.portfolio(self.get_object()))


class PortfolioView(APIView):
    """The user's portfolio: totals over their bots, and each bot's figures."""

    @extend_schema(responses=dict)
    def get(self, request: Request) -> Response:
        return Response(selectors.user_portfolio(request.user))


class _TimeRange(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="lte")


class SignalFilter(_TimeRange):
    class Meta:
        model = Signal
        fields = ["bot", "action", "executed"]


class SignalViewSet(Owned, viewsets.ReadOnlyModelViewSet):
    """The decision log: every signal of the user's bots, executed or not, and why."""

    owner_path = "bot__owner"
    queryset = Signal.objects.all()
    serializer_class = s.SignalSerializer
    filterset_class = SignalFilter


class OrderFilter(_TimeRange):
    class Meta:
        model = Order
        fields = ["bot", "side", "status", "reason"]


class OrderViewSet(Owned, viewsets.ReadOnlyModelViewSet):
    owner_path = "bot__owner"
    queryset = Order.objects.prefetch_related("fills")
    serializer_class = s.OrderSerializer
    filterset_class = OrderFilter


class TradeFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="exit_time", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="exit_time", lookup_expr="lte")

    class Meta:
        model = Trade
        fields = ["bot", "exit_reason"]


class TradeViewSet(Owned, viewsets.ReadOnlyModelViewSet):
    owner_path = "bot__owner"
    queryset = Trade.objects.all()
    serializer_class = s.TradeSerializer
    filterset_class = TradeFilter


class PositionViewSet(Owned, viewsets.ReadOnlyModelViewSet):
    owner_path = "bot__owner"
    queryset = Position.objects.all()
    serializer_class = s.PositionSerializer
    filterset_fields = ["bot"]


class BotEventFilter(_TimeRange):
    class Meta:
        model = BotEvent
        fields = ["bot", "kind"]


class BotEventViewSet(Owned, viewsets.ReadOnlyModelViewSet):
    """The audit trail of the user's bots (starts, stops, errors, kill switches, ...)."""

    owner_path = "bot__owner"
    queryset = BotEvent.objects.select_related("actor")
    serializer_class = s.BotEventSerializer
    filterset_class = BotEventFilter


class ExchangeAccountViewSet(Owned, viewsets.ModelViewSet):
    """The user's exchange accounts; keys are write-only."""

    queryset = ExchangeAccount.objects.select_related("exchange")
    serializer_class = s.ExchangeAccountSerializer


class ExchangeViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Exchange.objects.all()
    serializer_class = s.ExchangeSerializer
    filterset_fields = ["kind", "active"]


class InstrumentViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Instrument.objects.select_related("exchange")
    serializer_class = s.InstrumentSerializer
    filterset_fields = ["exchange", "symbol", "active"]


class CandleQuery(serializers.Serializer):
    instrument = serializers.IntegerField(min_value=1)
    timeframe = serializers.ChoiceField(choices=list(TIMEFRAMES))
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class CandleViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Candles of one instrument and timeframe (both required), oldest first, between
    ``since`` and ``until`` (close times, inclusive); cursor pages of up to 5,000 rows."""

    serializer_class = s.CandleSerializer
    pagination_class = CandlesInTime
    queryset = Candle.objects.none()  # the schema's model; get_queryset() is the real one

    @extend_schema(parameters=[CandleQuery])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            return Candle.objects.none()
        query = CandleQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        values = query.validated_data
        if not Instrument.objects.filter(pk=values["instrument"]).exists():
            raise NotFound("no such instrument")
        rows = Candle.objects.filter(
            instrument_id=values["instrument"], timeframe=values["timeframe"]
        )
        if "since" in values:
            rows = rows.filter(close_time__gte=values["since"])
        if "until" in values:
            rows = rows.filter(close_time__lte=values["until"])
        return rows


class StrategyViewSet(viewsets.ViewSet):
    """The strategy catalog with each strategy's parameter schema and defaults."""

    lookup_field = "name"
    # Any name reaches the view, which answers an unknown one with the API's JSON 404.
    lookup_value_regex = "[^/]+"

    @extend_schema(operation_id="strategies_list", responses=s.StrategySerializer(many=True))
    def list(self, request: Request) -> Response:
        return Response([get_strategy(name).describe() for name in available()])

    @extend_schema(operation_id="strategies_retrieve", responses=s.StrategySerializer)
    def retrieve(self, request: Request, name: str | None = None) -> Response:
        if name not in available():
            raise NotFound(f"no strategy named {name!r}")
        return Response(get_strategy(name).describe())


class KillSwitchState(serializers.Serializer):
    engaged = serializers.BooleanField(help_text="No bot of the user may start while engaged.")
    engaged_at = serializers.DateTimeField(allow_null=True, help_text="When it was engaged.")


class KillSwitchView(APIView):
    """The signed-in user's own kill switch: ``GET`` its state, ``POST`` engages it (stops every
    bot of the user and cancels their open orders), ``DELETE`` releases it (their bots may be
    started again; 409 when it was not engaged). Audited with the user as actor."""

    @staticmethod
    def _state(user: Any) -> Response:
        at = selectors.kill_switch_engaged_at(user)
        return Response(KillSwitchState({"engaged": at is not None, "engaged_at": at}).data)

    @extend_schema(responses=KillSwitchState)
    def get(self, request: Request) -> Response:
        return self._state(request.user)

    @extend_schema(request=None, responses=dict)
    def post(self, request: Request) -> Response:
        result = BotManager().kill_switch(request.user, actor=request.user)
        return Response(result, status=status.HTTP_200_OK)

    @extend_schema(request=None, responses=KillSwitchState)
    def delete(self, request: Request) -> Response:
        if not services.kill_switch_release(user=request.user, actor=request.user):
            raise Conflict("the kill switch is not engaged")
        return self._state(request.user)


class Cancellable:
    """``POST .../{id}/cancel/`` for a stored run (``backtests.services.run_cancel``): 409 when
    it has finished already. ``run_noun`` names the run in that message."""

    run_noun = "run"

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()  # type: ignore[attr-defined]
        if not backtests_services.run_cancel(run=run):
            raise Conflict(f"the {self.run_noun} is {run.status} already")
        run.refresh_from_db()
        return Response(self.get_serializer(run).data)  # type: ignore[attr-defined]


class BacktestRunViewSet(
    Owned,
    Cancellable,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Stored backtests: create one (202 Accepted: queued on the ``backtests`` queue; follow
    ``status`` and ``progress`` here or live on ``backtests:{id}``), list, read the metrics,
    ``result`` (equity per bar and the trades) and ``cancel``."""

    run_noun = "backtest"
    queryset = BacktestRun.objects.all()
    serializer_class = s.BacktestRunSerializer
    filterset_fields = ["status", "strategy", "instrument", "timeframe"]

    @extend_schema(responses={202: s.BacktestRunSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().create(request, *args, **kwargs)
        response.status_code = status.HTTP_202_ACCEPTED
        response["Location"] = f"{request.path}{response.data['id']}/"
        return response

    @extend_schema(responses=dict)
    @action(detail=True, methods=["get"])
    def result(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        if run.status != RunStatus.DONE:
            raise Conflict(f"the backtest is {run.status}, not done")
        equity = backtests_services.unpack_equity(run.equity_blob)
        trades = backtests_services.unpack_trades(run.trades_blob)
        return Response(
            {
                "metrics": run.metrics,
                "equity": [float(value) for value in equity.to_numpy()],
                "equity_first": run.data_first,
                "equity_last": run.data_last,
                "trades": json_safe(trades.to_dict(orient="records")),
            }
        )


class RankedPages(PageNumberPagination):
    """Numbered pages of an optimisation's results, in rank order. Not a cursor: a cursor page
    orders by its own column (the default's newest first would undo the ranking), and its
    position needs a column without nulls or long runs of ties, while the objective has both
    (NaN, the many combinations that never trade). A finished run's rows no longer change,
    so numbered pages are stable."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class OptimizationRunViewSet(
    Owned,
    Cancellable,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Stored optimisations: create one (202 Accepted: queued on the ``backtests`` queue; follow
    ``status`` and ``progress`` here or live on ``optimizations:{id}``), list, read the status,
    the best parameters and walk-forward windows; ``results`` the per-combination table, best
    first; ``cancel``."""

    run_noun = "optimisation"
    queryset = OptimizationRun.objects.all()
    serializer_class = s.OptimizationRunSerializer
    filterset_fields = ["status", "strategy", "method"]

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        if self.action == "create":
            return s.OptimizationRunCreateSerializer
        return s.OptimizationRunSerializer

    @extend_schema(
        request=s.OptimizationRunCreateSerializer, responses={202: s.OptimizationRunSerializer}
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = serializer.save()
        body = s.OptimizationRunSerializer(run, context=self.get_serializer_context()).data
        return Response(
            body, status=status.HTTP_202_ACCEPTED, headers={"Location": f"{request.path}{run.pk}/"}
        )

    @extend_schema(responses=s.OptimizationResultSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=RankedPages)
    def results(self, request: Request, pk: str | None = None) -> Response:
        """The evaluated combinations best first, as ``optimize.rank`` orders them (the
        objective descending, ascending for a minimised one; NaN last; ties in storage
        order), in numbered pages."""
        rows = backtest_selectors.ranked_results(self.get_object())
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(s.OptimizationResultSerializer(page, many=True).data)


class TickQuery(serializers.Serializer):
    instrument = serializers.IntegerField(min_value=1, help_text="The instrument's id.")
    since = serializers.DateTimeField(required=False, help_text="Trade time from (inclusive).")
    until = serializers.DateTimeField(required=False, help_text="Trade time to (inclusive).")


def _query(query: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """A list's query parameters, validated (400 in the error shape when they are not)."""
    checked = query(data=request.query_params)
    checked.is_valid(raise_exception=True)
    return checked.validated_data


class RawTickViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The raw trades of one instrument (required), exactly as received, oldest first by trade
    time, between ``since`` and ``until``; cursor pages of up to 10,000 rows (one range of the
    ``(instrument, time)`` index however many ticks are stored). Market data is shared: every
    signed-in user may read it."""

    serializer_class = s.RawTickSerializer
    pagination_class = TicksInTime
    queryset = RawTick.objects.none()  # the schema's model; get_queryset() is the real one

    @extend_schema(parameters=[TickQuery])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            return RawTick.objects.none()
        values = _query(TickQuery, self.request)
        if not Instrument.objects.filter(pk=values["instrument"]).exists():
            raise NotFound("no such instrument")
        return market_selectors.raw_ticks_between(
            instrument_id=values["instrument"], since=values.get("since"),
            until=values.get("until"),
        )  # fmt: skip


class RejectQuery(serializers.Serializer):
    instrument = serializers.RegexField(
        r"^(none|[1-9][0-9]{0,17})$",
        help_text="The instrument's id, or none: the rows of no known instrument (unknown "
        "symbols).",
    )
    since = serializers.DateTimeField(required=False, help_text="Received from (inclusive).")
    until = serializers.DateTimeField(required=False, help_text="Received until (inclusive).")
    exchange = serializers.CharField(required=False, help_text="As the provider named it.")
    symbol = serializers.CharField(required=False, help_text="As the provider sent it.")


class RejectedTickViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The rows the collector refused for one instrument (or, with ``instrument=none``, for no
    known instrument), with the raw payload and the reason, oldest first by arrival; cursor
    pages. Shared like all market data."""

    serializer_class = s.RejectedTickSerializer
    pagination_class = RejectsInTime
    queryset = RejectedTick.objects.none()

    @extend_schema(parameters=[RejectQuery])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            return RejectedTick.objects.none()
        values = _query(RejectQuery, self.request)
        instrument = None if values["instrument"] == "none" else int(values["instrument"])
        if instrument is not None and not Instrument.objects.filter(pk=instrument).exists():
            raise NotFound("no such instrument")
        return market_selectors.rejected_ticks_between(
            instrument_id=instrument, since=values.get("since"), until=values.get("until"),
            exchange=values.get("exchange"), symbol=values.get("symbol"),
        )  # fmt: skip


class SystemEventFilter(_TimeRange):
    kind = django_filters.MultipleChoiceFilter(choices=BotEvent.Kind.choices)

    class Meta:
        model = BotEvent
        fields = ["kind", "bot"]


class SystemEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The platform's event log, as the ``system_events`` channel announces it live (starts,
    stops, pauses, errors, kill switches, reconciliations, ...), newest first: the events of
    the user's own bots; staff see every user's. Filter by ``kind`` (repeatable), ``bot``,
    ``since``/``until``; staff also by ``owner`` (a user id)."""

    serializer_class = s.SystemEventSerializer
    filterset_class = SystemEventFilter
    queryset = BotEvent.objects.none()

    @extend_schema(
        parameters=[
            OpenApiParameter("owner", int, description="Staff only: the bots' owner (user id).")
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            return BotEvent.objects.none()
        rows = selectors.system_events_for(self.request.user)
        owner = self.request.query_params.get("owner")
        if owner and self.request.user.is_staff:
            if not owner.isdigit():
                raise ValidationError({"owner": ["a user id"]})
            rows = rows.filter(bot__owner_id=int(owner))
        return rows
