"""The bots' pages: thin views over ``bots.services``/``bots.selectors``/``BotManager``.

Every page needs a signed-in user and shows only the user's own bots (staff: every bot, their
own on the dashboard unless ``?all=1``); another user's bot answers 404, its actions too.
Actions are POST forms (CSRF-protected) that redirect back with a message.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from bots import selectors, services
from bots.brokers import BrokerError
from bots.forms import BotCreateForm, BotEditForm, ParametersForm, service_errors
from bots.manager import BotManager
from bots.models import Bot
from bots.parity import parity_check
from strategies.base import StrategyParameterError
from strategies.registry import UnknownStrategyError, available, get_strategy
from tradeapp.limits import page_status

#: Bots per page of the dashboard and the list (the dashboard's live stream follows a page).
PAGE_SIZE = 50
#: The parity check replays every decision of the bot synchronously: above this many, the
#: page refuses and points to ``manage.py parity_check``.
PARITY_MAX_SIGNALS = 20_000
#: Report lines shown (the summary lines come first; mismatches beyond this are counted).
PARITY_MAX_LINES = 200

SERVICE_ERRORS = (
    StrategyParameterError, UnknownStrategyError, ValidationError, services.BotStateError,
    ValueError,
)  # fmt: skip


def _bot_or_404(request: HttpRequest, pk: int) -> Bot:
    return get_object_or_404(
        Bot.objects.owned_by(request.user).select_related("instrument__exchange", "account"),
        pk=pk,
    )


# --- dashboard and list ---------------------------------------------------------------------


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    everyone = bool(user.is_staff) and request.GET.get("all") == "1"
    bots = selectors.bots_visible(user, everyone=everyone).order_by("name", "pk")
    page = Paginator(bots, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [selectors.dashboard_row(bot) for bot in page]
    stream = "/ws/dashboard?bots=" + ",".join(str(row["id"]) for row in rows)
    context = {
        "rows": rows,
        "page": page,
        "everyone": everyone,
        "totals": selectors.portfolio_totals(selectors.bots_visible(user, everyone=everyone)),
        # Staff see the platform's events, everyone else those of their own bots.
        "events": selectors.recent_events(user, everyone=bool(user.is_staff)),
        "kill_switch_at": selectors.kill_switch_engaged_at(user),
        "page_data": {
            "stream": stream + ("&all=1" if everyone else ""),
            "staff": bool(user.is_staff),
            "bots": rows,
        },
    }
    return render(request, "bots/dashboard.html", context)


@login_required
def bot_list(request: HttpRequest) -> HttpResponse:
    bots = (
        Bot.objects.owned_by(request.user)
        .select_related("instrument__exchange", "owner")
        .annotate(pnl=F("equity") - F("capital"))
        .order_by("name", "pk")
    )
    filters = {
        "status": (request.GET.get("status", ""), Bot.Status.choices),
        "mode": (request.GET.get("mode", ""), Bot.Mode.choices),
        "strategy": (
            request.GET.get("strategy", ""),
            [(name, get_strategy(name).title or name) for name in available()],
        ),
    }
    for field, (value, choices) in filters.items():
        if value and value in {key for key, _ in choices}:
            bots = bots.filter(**{field: value})
    page = Paginator(bots, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "filters": filters,
        "query": query.urlencode(),
        "kill_switch_at": selectors.kill_switch_engaged_at(request.user),
    }
    return render(request, "bots/list.html", context)


# --- create and edit ------------------------------------------------------------------------


def _parameter_forms(
    chosen: str | None, data: Any = None, initial: dict[str, Any] | None = None
) -> dict[str, ParametersForm]:
    """Every strategy's parameter form (its fieldset is on the page); only ``chosen``'s is
    bound to the submitted data (the others keep their defaults: they are not read)."""
    return {
        name: ParametersForm(
            name, data if name == chosen else None, initial=initial if name == chosen else None
        )
        for name in available()
    }


@login_required
def bot_create(request: HttpRequest) -> HttpResponse:
    names = available()
    if request.method == "POST":
        form = BotCreateForm(request.POST, user=request.user)
        chosen = request.POST.get("strategy")
        chosen = chosen if chosen in names else None
        parameter_forms = _parameter_forms(chosen, request.POST)
        params = parameter_forms.get(chosen) if chosen else None
        form_ok = form.is_valid()
        params_ok = params is not None and params.is_valid()
        status = 200
        if form_ok and params_ok:
            try:
                bot = services.bot_create(
                    user=request.user, parameters=params.parameters(), **form.bot_fields()
                )
            except SERVICE_ERRORS as exc:
                service_errors(exc, form, params)
                status = page_status(exc)  # 429: the user owns their limit of bots
            else:
                messages.success(request, f"Bot “{bot.name}” created (stopped).")
                return redirect("bots:detail", pk=bot.pk)
    else:
        chosen = request.GET.get("strategy")
        if chosen not in names:
            chosen = "sma_crossover" if "sma_crossover" in names else (names[0] if names else "")
        form = BotCreateForm(user=request.user, initial={"strategy": chosen})
        parameter_forms = _parameter_forms(chosen)
        status = 200
    context = {
        "form": form,
        "parameter_forms": parameter_forms,
        "chosen": chosen or form["strategy"].value(),
        "creating": True,
    }
    return render(request, "bots/form.html", context, status=status)


@login_required
def bot_edit(request: HttpRequest, pk: int) -> HttpResponse:
    bot = _bot_or_404(request, pk)
    locked = bot.status == Bot.Status.RUNNING
    status = 200
    try:
        get_strategy(bot.strategy)
    except UnknownStrategyError as exc:
        messages.error(request, f"This bot's strategy cannot be loaded: {exc}")
        return redirect("bots:detail", pk=bot.pk)
    if request.method == "POST":
        form = BotEditForm(request.POST, bot=bot)
        params = ParametersForm(bot.strategy, request.POST)
        if form.is_valid() and params.is_valid():
            try:
                services.bot_edit(
                    bot_id=bot.pk, changes=form.changes(params.parameters()), actor=request.user
                )
            except services.BotStateError as exc:
                form.add_error(None, f"{exc}: a running bot keeps its settings.")
                status = 409
            except SERVICE_ERRORS as exc:
                service_errors(exc, form, params)
            else:
                messages.success(request, f"Bot “{form.cleaned_data['name']}” saved.")
                return redirect("bots:detail", pk=bot.pk)
        bot.refresh_from_db(fields=["status"])
        locked = bot.status == Bot.Status.RUNNING
    else:
        form = BotEditForm(bot=bot)
        params = ParametersForm(bot.strategy, initial=bot.parameters)
    context = {
        "form": form,
        "parameter_forms": {bot.strategy: params},
        "chosen": bot.strategy,
        "bot": bot,
        "locked": locked,
        "creating": False,
    }
    return render(request, "bots/form.html", context, status=status)


# --- detail and actions ---------------------------------------------------------------------


@login_required
def bot_detail(request: HttpRequest, pk: int) -> HttpResponse:
    bot = _bot_or_404(request, pk)
    history = selectors.bot_history(bot)
    for trade in history["trades"]:
        trade.return_pct = trade.return_fraction * 100
    portfolio = selectors.portfolio(bot)
    chart = selectors.bot_chart(bot)
    strategy = None
    try:
        strategy = get_strategy(bot.strategy)
    except UnknownStrategyError:
        pass
    page_data = {
        "bot": {
            "id": bot.pk, "name": bot.name, "status": bot.status, "mode": bot.mode,
            "strategy": bot.strategy, "symbol": bot.instrument.symbol,
            "instrument_id": bot.instrument_id, "timeframe": bot.timeframe,
            "capital": float(bot.capital), "fee": bot.fee, "base": bot.instrument.base,
            "realized_equity": float(bot.capital) + float(portfolio["realized_pnl"]),
        },
        "streams": {
            "status": f"/ws/bot/{bot.pk}/status",
            "portfolio": f"/ws/portfolio/{bot.pk}",
            "market_symbol": bot.instrument.symbol,
        },
    }  # fmt: skip
    # The viewer's own kill switch (staff release another user's in the admin).
    own = bot.owner_id == request.user.pk
    own_switch = selectors.kill_switch_engaged_at(request.user) if own else None
    context = {
        "bot": bot,
        "strategy": strategy,
        "portfolio": portfolio,
        "pnl": (bot.equity - bot.capital) if bot.equity is not None else None,
        "chart": chart,
        "equity": selectors.equity_points(bot),
        "page_data": page_data,
        "api_signals": reverse("signal-list") + f"?bot={bot.pk}",
        "api_orders": reverse("order-list") + f"?bot={bot.pk}",
        "api_trades": reverse("trade-list") + f"?bot={bot.pk}",
        "history_rows": selectors.HISTORY_ROWS,
        "kill_switch_at": own_switch,
        **history,
    }
    return render(request, "bots/detail.html", context)


@login_required
@require_POST
def bot_start(request: HttpRequest, pk: int) -> HttpResponse:
    bot = _bot_or_404(request, pk)
    try:
        started = BotManager().start_bot(bot.pk, actor=request.user)
    except services.BotStateError as exc:
        messages.error(request, f"Bot “{bot.name}” not started: {exc}")
    else:
        if started:
            messages.success(request, f"Bot “{bot.name}” started.")
        else:
            messages.info(request, f"Bot “{bot.name}” was already running.")
    return redirect("bots:detail", pk=bot.pk)


@login_required
@require_POST
def bot_stop(request: HttpRequest, pk: int) -> HttpResponse:
    bot = _bot_or_404(request, pk)
    if BotManager().stop_bot(bot.pk, actor=request.user):
        messages.success(request, f"Bot “{bot.name}” stopped; its open orders were cancelled.")
    else:
        messages.info(request, f"Bot “{bot.name}” was already stopped.")
    return redirect("bots:detail", pk=bot.pk)


@login_required
@require_POST
def bot_delete(request: HttpRequest, pk: int) -> HttpResponse:
    bot = _bot_or_404(request, pk)
    try:
        name = services.bot_delete(bot_id=bot.pk, actor=request.user)
    except services.BotStateError as exc:
        messages.error(request, f"Bot “{bot.name}” not deleted: {exc}")
        return redirect("bots:detail", pk=bot.pk)
    messages.success(request, f"Bot “{name}” deleted with its history.")
    return redirect("bots:list")


@login_required
@require_POST
def bot_adopt_balance(request: HttpRequest, pk: int) -> HttpResponse:
    import ccxt  # only where live trading happens (as bots.brokers.broker_for)

    from bots.reconcile import BalanceError, balance_adopt

    bot = _bot_or_404(request, pk)
    try:
        message = balance_adopt(bot_id=bot.pk, actor=request.user)
    except (BalanceError, BrokerError, ccxt.BaseError) as exc:
        messages.error(request, f"Bot “{bot.name}”: balance not adopted: {exc}")
    else:
        messages.success(request, f"Bot “{bot.name}”: {message}.")
    return redirect("bots:detail", pk=bot.pk)


@login_required
@require_POST
def kill_switch_release(request: HttpRequest) -> HttpResponse:
    """Release the signed-in user's own kill switch (``services.kill_switch_release``: audited
    with the user as actor), then back to the page the form was on."""
    if services.kill_switch_release(user=request.user, actor=request.user):
        messages.success(
            request,
            "Kill switch released: your bots may be started again (each stays stopped until "
            "you start it).",
        )
    else:
        messages.info(request, "Your kill switch was not engaged.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("dashboard")
    return redirect(target)


@login_required
@require_POST
def bot_parity(request: HttpRequest, pk: int) -> HttpResponse:
    bot = _bot_or_404(request, pk)
    decided = bot.signals.count()
    if decided > PARITY_MAX_SIGNALS:
        messages.error(
            request,
            f"This bot has {decided} decisions; the page checks at most {PARITY_MAX_SIGNALS}. "
            f"Run `manage.py parity_check {bot.pk}` instead.",
        )
        return redirect("bots:detail", pk=bot.pk)
    report = parity_check(bot)
    lines = report.lines()
    context = {
        "bot": bot,
        "report": report,
        "lines": lines[:PARITY_MAX_LINES],
        "hidden": max(0, len(lines) - PARITY_MAX_LINES),
    }
    return render(request, "bots/parity.html", context)
