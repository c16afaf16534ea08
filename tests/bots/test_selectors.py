"""``bots.selectors.user_portfolio`` (``/api/portfolio/``): each bot's book equals the one-bot
``portfolio``, and it reads in a fixed number of queries however many bots the user has (it read
three per bot: 150 for a user with 50 bots, the figure ``bench_api_load`` measured)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bots import selectors
from bots.manager import BotManager
from bots.models import Bot
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.factories import UserFactory

HISTORY = 30


@pytest.fixture
def world(db):
    """A user with a bot that traded (closed trades, a position row) and an idle one; and
    someone else's bot, which must not appear."""
    instrument = instrument_with_exchange()
    data = walk(120, seed=3)
    store(instrument, data, slice(0, HISTORY))
    owner = UserFactory()
    traded = make_bot(owner, instrument, name="Trader")
    idle = make_bot(owner, instrument, name="Idle")
    other = make_bot(UserFactory(), instrument, name="Someone else's")
    manager = BotManager()
    assert manager.start_bot(traded.pk)
    for close_ms in store(instrument, data, slice(HISTORY, 120)):
        manager.process_candle(instrument.pk, "1m", close_ms)
    traded.refresh_from_db()
    assert traded.trades.count() >= 2
    return {"owner": owner, "instrument": instrument, "bots": [traded, idle], "other": other}


def test_user_portfolio_equals_each_bots_portfolio(world):
    result = selectors.user_portfolio(world["owner"])
    mine = Bot.objects.filter(pk__in=[bot.pk for bot in world["bots"]]).order_by("pk")
    expected = [selectors.portfolio(bot) for bot in mine]
    assert result["bots"] == expected
    assert world["other"].pk not in {row["bot"] for row in result["bots"]}
    traded = next(row for row in result["bots"] if row["trades"])
    assert traded["trades"] == world["bots"][0].trades.count()


def test_user_portfolio_reads_in_fixed_queries(world):
    with CaptureQueriesContext(connection) as two:
        selectors.user_portfolio(world["owner"])
    for k in range(8):
        make_bot(world["owner"], world["instrument"], name=f"more {k}")
    with CaptureQueriesContext(connection) as ten:
        result = selectors.user_portfolio(world["owner"])
    assert len(result["bots"]) == 10
    assert len(ten.captured_queries) == len(two.captured_queries) == 1
