"""The market pages: the instruments list, one market's live chart page, the data status."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from marketdata import selectors
from marketdata.models import Candle, CollectionStatus, Exchange, RawTick, RejectedTick
from marketdata.services import datetime_to_ms, instrument_ensure, ms_to_datetime

MINUTE = 60_000


@pytest.fixture
def market(db):
    Exchange.objects.create(ccxt_id="binance", name="Binance", kind=Exchange.Kind.CCXT)
    Exchange.objects.create(ccxt_id="okx", name="OKX", kind=Exchange.Kind.CCXT)
    btc = instrument_ensure(exchange_id="binance", symbol="BTC/USDT")
    eth = instrument_ensure(exchange_id="okx", symbol="ETH/USDT", timeframes=["1m", "5m"])
    return {"btc": btc, "eth": eth}


def candle(instrument, close_ms: int, price: str) -> Candle:
    value = Decimal(price)
    return Candle(
        instrument=instrument,
        timeframe="1m",
        close_time=ms_to_datetime(close_ms),
        open=value,
        high=value,
        low=value,
        close=value,
        volume=Decimal(1),
        trades=1,
    )


def last_closed_minute_ms() -> int:
    # The data-status window ends a full minute behind now (as the refill task's).
    return datetime_to_ms(timezone.now()) // MINUTE * MINUTE - MINUTE


@pytest.mark.parametrize(
    "name,args",
    [("marketdata:markets", []), ("marketdata:market", [1]), ("marketdata:data-status", [])],
)
def test_pages_redirect_anonymous_to_login(client, db, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_market_list_shows_every_instrument_with_price_change_and_state(client, user, market):
    now = timezone.now()
    btc = market["btc"]
    Candle.objects.bulk_create(
        [
            candle(btc, datetime_to_ms(now - timedelta(hours=25)), "100"),
            candle(btc, datetime_to_ms(now - timedelta(minutes=2)), "110.5"),
        ]
    )
    CollectionStatus.objects.create(
        instrument=btc, state="running", last_tick_at=now - timedelta(seconds=5)
    )
    market["eth"].active = False
    market["eth"].save()
    client.force_login(user)

    response = client.get(reverse("marketdata:markets"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="table-wrap' in html or "table-wrap" in html
    for instrument in market.values():
        assert reverse("marketdata:market", args=[instrument.pk]) in html
    assert "BTC/USDT" in html and "ETH/USDT" in html
    rows = {row["instrument"].pk: row for row in response.context["rows"]}
    assert rows[btc.pk]["last_price"] == Decimal("110.5")
    assert rows[btc.pk]["change_pct"] == Decimal("10.5")
    assert rows[market["eth"].pk]["last_price"] is None  # no candle yet
    assert "110.5" in html and "+10.50 %" in html
    assert 'data-collection-state="running"' in html
    assert "<time" in html  # the last tick, as a localised timestamp


def test_market_page_has_the_stream_path_and_timeframe(client, user, market):
    btc = market["btc"]
    client.force_login(user)
    url = reverse("marketdata:market", args=[btc.pk])

    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="price-chart"' in html and 'id="stream-state"' in html and 'id="last-price"' in html
    # The symbol percent-encoded as encodeURIComponent writes it.
    assert 'data-ws-path="/ws/market/BTC%2FUSDT"' in html
    config = response.context["config"]
    assert config["timeframe"] == "1m" and config["instrument_id"] == btc.pk
    assert config["timeframes"] == ["1m", "5m", "15m", "1h", "4h", "1d"]
    assert config["ws_path"] == "/ws/market/BTC%2FUSDT" and config["symbol"] == "BTC/USDT"
    assert 'id="market-config"' in html and "js/market." in html  # hashed in production

    response = client.get(url, {"timeframe": "1h"})
    assert response.status_code == 200
    assert response.context["config"]["timeframe"] == "1h"
    html = response.content.decode()
    assert 'data-timeframe="1h"' in html
    assert 'value="1h" data-timeframe="1h" aria-pressed="true"' in html
    assert 'value="1m" data-timeframe="1m" aria-pressed="false"' in html


def test_market_page_shows_only_the_timeframes_the_instrument_builds(client, user, market):
    client.force_login(user)
    response = client.get(reverse("marketdata:market", args=[market["eth"].pk]))
    assert response.context["config"]["timeframes"] == ["1m", "5m"]
    assert 'data-timeframe="1h"' not in response.content.decode()


@pytest.mark.parametrize("timeframe", ["2m", "", "1h"])  # 1h: valid, but ETH builds 1m and 5m
def test_market_page_refuses_a_bad_timeframe(client, user, market, timeframe):
    client.force_login(user)
    url = reverse("marketdata:market", args=[market["eth"].pk])
    response = client.get(url, {"timeframe": timeframe})
    assert response.status_code == 400
    html = response.content.decode()
    assert "No chart for timeframe" in html and "1m, 5m" in html
    assert f'href="{url}?timeframe=5m"' in html


def test_market_page_unknown_instrument_is_404(client, user, market):
    client.force_login(user)
    missing = max(i.pk for i in market.values()) + 1
    assert client.get(reverse("marketdata:market", args=[missing])).status_code == 404


def test_market_detail_percent_encodes_the_whole_symbol(market):
    perp = instrument_ensure(exchange_id="binance", symbol="BTC/USDT:USDT")
    assert selectors.market_detail(instrument=perp)["ws_path"] == "/ws/market/BTC%2FUSDT%3AUSDT"


def test_data_status_shows_gaps_and_rejects(client, user, market):
    btc = market["btc"]
    end = last_closed_minute_ms()
    hole = range(end - 60 * MINUTE, end - 55 * MINUTE, MINUTE)  # five missing minutes
    closes = [end - k * MINUTE for k in range(120) if end - k * MINUTE not in hole]
    Candle.objects.bulk_create([candle(btc, ms, "100") for ms in closes])
    # A trade stored inside the hole: ticks arrived but no candle was built.
    now = timezone.now()
    RawTick.objects.create(
        instrument=btc,
        time=ms_to_datetime(hole[2] - 1000),
        price=Decimal(100),
        amount=Decimal(1),
        received_at=now,
    )
    CollectionStatus.objects.create(instrument=btc, state="error", last_error="socket closed")
    RejectedTick.objects.create(
        exchange="binance",
        symbol="BTC/USDT",
        instrument=btc,
        payload={"price": "-1"},
        reason="price not positive",
        received_at=now - timedelta(minutes=3),
    )
    RejectedTick.objects.create(
        exchange="binance",
        symbol="XRP/USDT",
        payload={"price": "1"},
        reason="unknown symbol XRP/USDT",
        received_at=now - timedelta(minutes=2),
    )
    client.force_login(user)

    response = client.get(reverse("marketdata:data-status"))
    assert response.status_code == 200
    rows = {row["instrument"].pk: row for row in response.context["rows"]}
    row = rows[btc.pk]
    # 24 h of minutes, 115 stored: the hole and the hours before the first candle are missing.
    assert row["expected"] == 1440 and row["stored"] == 115 and row["missing"] == 1325
    assert row["gap_count"] == 2
    newest = row["gaps"][0]
    assert (newest["first_ms"], newest["last_ms"], newest["missing"]) == (hole[0], hole[-1], 5)
    assert newest["ticks"] == 1 and row["gaps"][1]["ticks"] == 0
    assert row["rejects_window"] == 1 and row["state"] == "error"
    assert row["candle_lag_s"] is not None and row["candle_lag_s"] < 180

    html = response.content.decode()
    assert f'id="gaps-{btc.pk}"' in html
    assert f'data-first-ms="{hole[0]}" data-last-ms="{hole[-1]}" data-missing="5"' in html
    assert f'id="rejects-{btc.pk}"' in html and "price not positive" in html
    assert "unknown symbol XRP/USDT" in html  # of no known instrument
    assert "socket closed" in html
    assert f'data-instrument="{market["eth"].pk}" data-missing="1440"' in html  # never collected
    # Schedules are listed; their admin links are for staff.
    assert "marketdata.refill_gaps" in html
    assert "Schedules are edited by staff in the admin" in html
    assert reverse("admin:django_celery_beat_periodictask_changelist") not in html


def test_data_status_links_the_beat_schedules_in_the_admin_for_staff(client, staff_user, market):
    changelist = reverse("admin:django_celery_beat_periodictask_changelist")
    task = PeriodicTask.objects.get(task="marketdata.refill_gaps")  # created by a migration
    change = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    client.force_login(staff_user)
    # Staff without the admin permission for schedules: no link the admin would refuse.
    html = client.get(reverse("marketdata:data-status")).content.decode()
    assert changelist not in html and "your account does not have" in html

    staff_user.user_permissions.add(
        Permission.objects.get(codename="change_periodictask"),
        Permission.objects.get(codename="view_periodictask"),
    )
    html = client.get(reverse("marketdata:data-status")).content.decode()
    assert f'href="{changelist}"' in html and f'href="{change}"' in html
    assert "edited by staff" not in html
    # The links lead where this user may go.
    assert client.get(changelist).status_code == 200
    assert client.get(change).status_code == 200


def test_market_pages_render_with_no_instruments(client, user):
    client.force_login(user)
    assert "No instruments yet" in client.get(reverse("marketdata:markets")).content.decode()
    assert "No active instruments" in client.get(reverse("marketdata:data-status")).content.decode()


def test_duration_and_price_filters():
    from marketdata.templatetags.marketdata_tags import duration, price

    assert price(Decimal("65000.123400000000000000")) == "65000.1234"
    assert price(Decimal("100.000")) == "100" and price(None) == "—"
    assert duration(5.4) == "5 s" and duration(600) == "10 min"
    assert duration(3 * 3600 + 1200) == "3 h 20 min" and duration(3 * 86400) == "3 d"
    assert duration(None) == "—"
