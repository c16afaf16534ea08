"""Market pages: thin views over ``marketdata.selectors``.

Market data is shared by every signed-in user (not owner-scoped); the beat schedules' admin links
are shown to staff allowed to open them in the admin.
"""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from marketdata import selectors
from marketdata.consumers import DEFAULT_CANDLES
from marketdata.models import Instrument


@login_required
def market_list(request: HttpRequest) -> HttpResponse:
    return render(request, "marketdata/markets.html", {"rows": selectors.market_list()})


@login_required
def market_detail(request: HttpRequest, pk: int) -> HttpResponse:
    instrument = get_object_or_404(Instrument.objects.select_related("exchange"), pk=pk)
    detail = selectors.market_detail(instrument=instrument)
    timeframe = request.GET.get("timeframe", "1m")
    if timeframe not in detail["timeframes"]:
        # A clear refusal rather than a silent fall-back: the URL names a chart we cannot draw.
        return render(
            request,
            "marketdata/bad_timeframe.html",
            {"instrument": instrument, "timeframe": timeframe, **detail},
            status=400,
        )
    config = {
        "instrument_id": instrument.pk,
        "exchange": instrument.exchange.ccxt_id,
        "symbol": instrument.symbol,
        "timeframe": timeframe,
        "timeframes": detail["timeframes"],
        "limit": DEFAULT_CANDLES,
        "ws_path": detail["ws_path"],
        # Another exchange's instrument of the same symbol may be the stream's first active one:
        # the page then loads its own candles from the API.
        "candles_api": reverse("candle-list"),
    }
    return render(
        request,
        "marketdata/market.html",
        {"instrument": instrument, "timeframe": timeframe, "config": config, **detail},
    )


@login_required
def data_status(request: HttpRequest) -> HttpResponse:
    user = request.user
    # The admin opens the schedules to staff holding the model's permission; others get a 403.
    schedules_admin = user.is_staff and user.has_perm("django_celery_beat.view_periodictask")
    return render(
        request,
        "marketdata/data_status.html",
        {
            **selectors.data_status(),
            "schedules": selectors.market_schedules(),
            "schedules_admin": schedules_admin,
        },
    )
