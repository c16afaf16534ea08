"""The batch path of ``process_candle``: many paper bots of one stream decide exactly as each bot
alone on the per-bot path (``process_data`` per candle, rows written as they happen), a
redelivered candle changes nothing, and one failing bot does not stop the others."""

from __future__ import annotations

import pytest

from bots import services
from bots.manager import BotManager
from bots.models import Bot, Fill, Order, Position, Signal, Trade
from marketdata.selectors import candles_frame
from marketdata.services import ms_to_datetime
from strategies.builtin import DonchianBreakout
from tests.bots.support import instrument_with_exchange, make_bot, store, walk

HISTORY = 300  # the longest look-back below (EMA 13, RSI 7) fits
# (strategy, parameters, options): several bots share a configuration, some only the strategy.
CONFIGS = [
    ("sma_crossover", {"fast": 3, "slow": 8}, {"stop_loss": 0.004}),
    ("sma_crossover", {"fast": 3, "slow": 8}, {"take_profit": 0.003, "cooldown_candles": 5}),
    ("sma_crossover", {"fast": 2, "slow": 5}, {}),
    ("ema_crossover", {"fast": 5, "slow": 13}, {"trailing_stop": 0.004}),
    ("rsi_reversion", {"period": 7, "oversold": 45.0, "overbought": 55.0}, {}),
    ("bollinger_reversion", {"n": 10, "k": 1.0}, {"max_position_fraction": 0.5}),
    ("donchian_breakout", {"n": 8}, {"stop_loss": 0.003}),
    ("donchian_breakout", {"n": 8}, {"max_daily_loss": 0.002}),
]


def bots_on(user, instrument, prefix):
    bots = []
    for k, (strategy, params, options) in enumerate(CONFIGS):
        bot = make_bot(user, instrument, name=f"{prefix}{k}", strategy=strategy,
                       parameters=params, **options)  # fmt: skip
        assert BotManager().start_bot(bot.pk)
        bots.append(bot)
    return bots


def one_at_a_time(instrument, bots, close_ms):
    """The reference: each bot alone through the per-bot path, as every bot ran before."""
    end = ms_to_datetime(close_ms)
    for bot in bots:
        bot.refresh_from_db()
        if bot.status != Bot.Status.RUNNING:
            continue
        strategy = services.strategy_for(bot)
        lookback = type(strategy).lookback(strategy.parameters)
        frame = candles_frame(instrument_id=instrument.pk, timeframe="1m", end=end)
        first = bot.last_processed_at
        start = frame.index[max(0, frame.index.searchsorted(first) - lookback)]
        window = services._Candles.load(instrument.pk, "1m", start, end)
        services._process_bot(bot.pk, strategy, window, end)


def snapshot(bot):
    bot.refresh_from_db()
    signals = list(
        Signal.objects.filter(bot=bot).order_by("time").values_list(
            "time", "action", "price", "strength", "reason", "indicators", "risk_checks",
            "executed", "no_order_reason",
        )
    )  # fmt: skip
    orders = [
        (o.client_order_id.split("-", 1)[1], o.side, o.type, o.reason, o.time, o.status,
         o.quantity, o.quote_amount, o.price, o.filled_quantity, o.error,
         o.signal.time if o.signal else None)
        for o in Order.objects.filter(bot=bot).order_by("id").select_related("signal")
    ]  # fmt: skip
    fills = list(
        Fill.objects.filter(bot=bot).order_by("id").values_list(
            "order__client_order_id", "time", "side", "quantity", "price", "fee"
        )
    )  # fmt: skip
    fills = [(f[0].split("-", 1)[1], *f[1:]) for f in fills]
    trades = [
        (t.entry_time, t.exit_time, t.quantity, t.entry_price, t.exit_price, t.fees, t.pnl,
         t.return_fraction, t.exit_reason,
         t.entry_order.client_order_id.split("-", 1)[1] if t.entry_order else None,
         t.exit_order.client_order_id.split("-", 1)[1])
        for t in Trade.objects.filter(bot=bot).order_by("exit_time")
    ]  # fmt: skip
    position = Position.objects.filter(bot=bot).values_list(
        "quantity", "entry_price", "entry_time", "mark_price", "unrealized_pnl"
    )[0]
    state = (bot.status, bot.status_reason, bot.last_processed_at, bot.paper_book,
             bot.risk_state, bot.cash, bot.equity)  # fmt: skip
    return {"signals": signals, "orders": orders, "fills": fills, "trades": trades,
            "position": position, "state": state}  # fmt: skip


def test_batch_equals_each_bot_alone(user):
    data = walk(460, seed=7, vol=0.003)
    batch_instrument = instrument_with_exchange("BTC/USDT")
    alone_instrument = instrument_with_exchange("ETH/USDT")
    for instrument in (batch_instrument, alone_instrument):
        store(instrument, data, slice(0, HISTORY))
    # Every configuration twice on the batch stream: identical bots must stay identical.
    batch = bots_on(user, batch_instrument, "batch") + bots_on(user, batch_instrument, "twin")
    alone = bots_on(user, alone_instrument, "alone")
    manager = BotManager()
    # Candle by candle, then a catch-up over 40 candles in one call.
    for rows in [*(slice(i, i + 1) for i in range(HISTORY, 420)), slice(420, 460)]:
        times = store(batch_instrument, data, rows)
        store(alone_instrument, data, rows)
        counts = manager.process_candle(batch_instrument.pk, "1m", times[-1])
        assert counts["bots"] >= 1
        one_at_a_time(alone_instrument, alone, times[-1])
    traded = paused = 0
    for k, reference in enumerate(alone):
        expected = snapshot(reference)
        for bot in (batch[k], batch[len(CONFIGS) + k]):
            got = snapshot(bot)
            for part in expected:
                if part != "signals":
                    assert got[part] == expected[part], (CONFIGS[k], part)
            steady = 420 - HISTORY
            assert got["signals"][:steady] == expected["signals"][:steady], CONFIGS[k]
            # The catch-up decides the missed range in one call over a longer window than each
            # candle's process_data: recursive smoothing (EMA, Wilder) agrees to float precision.
            for ours, theirs in zip(got["signals"], expected["signals"], strict=True):
                assert ours[:5] + ours[6:] == theirs[:5] + theirs[6:], CONFIGS[k]
                assert ours[5] == pytest.approx(theirs[5], rel=1e-12, nan_ok=True), CONFIGS[k]
        assert expected["signals"]
        traded += len(expected["trades"]) > 0
        paused += expected["state"][0] == Bot.Status.PAUSED
    assert traded >= 5 and paused == 1  # the comparison covered fills, stops and a pause
    assert Signal.objects.filter(bot__in=batch, executed=False).exclude(no_order_reason="").exists()


def test_redelivered_candle_is_a_no_op(user):
    instrument = instrument_with_exchange()
    data = walk(200, seed=3)
    store(instrument, data, slice(0, 40))
    bots = [make_bot(user, instrument, name=f"b{k}", stop_loss=0.003) for k in range(6)]
    for bot in bots:
        assert BotManager().start_bot(bot.pk)
    manager = BotManager()
    for i in range(40, 200):
        (close_ms,) = store(instrument, data, slice(i, i + 1))
        manager.process_candle(instrument.pk, "1m", close_ms)

    def rows():
        books = Bot.objects.order_by("pk").values_list("paper_book", "last_processed_at")
        counts = [m.objects.count() for m in (Signal, Order, Fill, Trade)]
        return counts, list(books)

    before = rows()
    assert before[0][1] > 10
    for close_ms in (int(data["timestamp"][199]), int(data["timestamp"][199]),
                     int(data["timestamp"][120])):  # fmt: skip
        counts = manager.process_candle(instrument.pk, "1m", close_ms)
        assert counts["signals"] == counts["orders"] == counts["candles"] == 0
    assert rows() == before


def test_a_failing_bot_goes_to_error_and_the_others_go_on(user, monkeypatch):
    instrument = instrument_with_exchange()
    data = walk(120, seed=5)
    store(instrument, data, slice(0, 40))
    good = [make_bot(user, instrument, name=f"ok{k}") for k in range(3)]
    raising = make_bot(user, instrument, name="raises", strategy="donchian_breakout",
                       parameters={"n": 8})  # fmt: skip
    broken = make_bot(user, instrument, name="broken book")
    for bot in [*good, raising, broken]:
        assert BotManager().start_bot(bot.pk)
    Bot.objects.filter(pk=broken.pk).update(paper_book={"cash": "not a number"})

    def explode(cls, ohlcv, parameters=None):
        raise ZeroDivisionError("the strategy divided by zero")

    monkeypatch.setattr(DonchianBreakout, "generate_signals", classmethod(explode))
    manager = BotManager()
    for i in range(40, 60):
        (close_ms,) = store(instrument, data, slice(i, i + 1))
        manager.process_candle(instrument.pk, "1m", close_ms)
    raising.refresh_from_db()
    broken.refresh_from_db()
    assert raising.status == broken.status == Bot.Status.ERROR
    assert "divided by zero" in raising.status_reason
    assert "not a number" in broken.status_reason
    assert not Signal.objects.filter(bot__in=[raising, broken]).exists()
    for bot in good:
        bot.refresh_from_db()
        assert bot.status == Bot.Status.RUNNING
        assert Signal.objects.filter(bot=bot).count() == 20


@pytest.mark.parametrize("seed", [1, 2])
def test_candles_load_equals_candles_frame(db, seed):
    instrument = instrument_with_exchange()
    data = walk(300, seed=seed)
    data["close"] = data["close"] * (1 + 1e-9)  # more digits than the 4-decimal walk
    store(instrument, data, slice(0, 300))
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1m")
    loaded = services._Candles.load(instrument.pk, "1m", None, frame.index[-1]).frame
    assert loaded.equals(frame)
