"""ReplayProvider: trades and candles from CSV/Parquet files written by the tests into tmp_path."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marketdata.aggregation import aggregate_arrays
from marketdata.providers.base import ProviderError
from marketdata.providers.replay import ReplayProvider, parse_timestamps

T0 = 1_699_999_980_000  # 2023-11-14 22:13:00 UTC, a multiple of the minute
MINUTE = 60_000
BTC, ETH = "BTC/USDT", "ETH/USDT"


def trade_rows(n: int = 40, *, step_ms: int = 7_000, symbol: str | None = BTC) -> list[dict]:
    rng = np.random.default_rng(1)
    prices = 30000 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    rows = []
    for i in range(n):
        row = {
            "timestamp": T0 + 1 + i * step_ms,
            "price": round(float(prices[i]), 2),
            "amount": round(float(rng.uniform(0.001, 2)), 6),
            "side": "buy" if i % 3 else "sell",
            "id": str(1000 + i),
        }
        if symbol:
            row["symbol"] = symbol
        rows.append(row)
    return rows


def write_csv(path: Path, header: list[str], lines: list[list[object]], preamble: str = "") -> Path:
    text = preamble + ",".join(header) + "\n"
    text += "".join(",".join(str(v) for v in line) + "\n" for line in lines)
    path.write_text(text)
    return path


def rows_csv(path: Path, rows: list[dict]) -> Path:
    header = list(rows[0])
    return write_csv(path, header, [[r[h] for h in header] for r in rows])


async def drain(provider: ReplayProvider, symbols: list[str], timeout: float = 20) -> list[dict]:
    async def run() -> list[dict]:
        return [t async for t in provider.stream_trades(symbols)]

    return await asyncio.wait_for(run(), timeout=timeout)


def reference_candles(ts, price, amount, rule: str) -> list[tuple]:
    """Right-closed, right-labelled OHLCV by pandas, independent of marketdata.aggregation."""
    df = pd.DataFrame({"price": price, "amount": amount}, index=pd.to_datetime(ts, unit="ms"))
    res = df.resample(rule, closed="right", label="right", origin="epoch").agg(
        {"price": ["first", "max", "min", "last"], "amount": "sum"}
    )
    res = res.dropna()
    stamps = res.index.as_unit("ms").asi8.tolist()
    return [(t, *vals) for t, vals in zip(stamps, res.itertuples(index=False), strict=True)]


def as_tuples(candles: list[dict]) -> list[tuple]:
    return [
        (c["timestamp"], c["open"], c["high"], c["low"], c["close"], c["volume"]) for c in candles
    ]


# --------------------------------------------------------------------------------- trades files


@pytest.mark.asyncio
async def test_csv_trades_replay_yields_exactly_the_rows(tmp_path):
    rows = trade_rows()
    provider = ReplayProvider(rows_csv(tmp_path / "trades.csv", rows))
    assert provider.kind == "trades"
    trades = await drain(provider, [BTC])
    assert len(trades) == len(rows)
    for trade, row in zip(trades, rows, strict=True):
        assert trade["exchange"] == "replay"
        assert trade["symbol"] == BTC
        assert (trade["timestamp"], trade["price"], trade["amount"]) == (
            row["timestamp"],
            row["price"],
            row["amount"],
        )
        assert (trade["side"], trade["id"]) == (row["side"], row["id"])
        assert trade["info"] == {k: str(v) for k, v in row.items()}


@pytest.mark.asyncio
async def test_parquet_trades_replay_yields_exactly_the_rows(tmp_path):
    rows = trade_rows()
    path = tmp_path / "trades.parquet"
    pd.DataFrame(rows).to_parquet(path)
    provider = ReplayProvider(path, exchange_id="binance-replay")
    trades = await drain(provider, [BTC])
    assert [(t["timestamp"], t["price"], t["amount"], t["side"], t["id"]) for t in trades] == [
        (r["timestamp"], r["price"], r["amount"], r["side"], r["id"]) for r in rows
    ]
    assert {t["exchange"] for t in trades} == {"binance-replay"}
    assert trades[0]["info"] == rows[0]


@pytest.mark.asyncio
async def test_aliases_and_timestamp_units(tmp_path):
    rows = trade_rows(5, symbol=None)
    seconds = write_csv(
        tmp_path / "s.csv",
        ["Time", "Price", "Qty"],
        [[f"{r['timestamp'] / 1000:.3f}", r["price"], r["amount"]] for r in rows],
    )
    iso = write_csv(
        tmp_path / "iso.csv",
        ["date", "PRICE", "quantity"],
        [
            [pd.Timestamp(r["timestamp"], unit="ms").isoformat(), r["price"], r["amount"]]
            for r in rows
        ],
    )
    path = tmp_path / "dt.parquet"
    pd.DataFrame(
        {
            "datetime": pd.to_datetime([r["timestamp"] for r in rows], unit="ms", utc=True),
            "p": [r["price"] for r in rows],
            "size": [r["amount"] for r in rows],
        }
    ).to_parquet(path)
    want = [(r["timestamp"], r["price"], r["amount"]) for r in rows]
    for file in (seconds, iso, path):
        trades = await drain(ReplayProvider(file), ["SOL/USDT"])
        assert [(t["timestamp"], t["price"], t["amount"]) for t in trades] == want, file
        assert {t["symbol"] for t in trades} == {"SOL/USDT"}
        assert {t["id"] for t in trades} == {None}


def test_parse_timestamps_units():
    ms, ok = parse_timestamps(["1700000000", "1700000001.5", "", "x"])
    assert ok.tolist() == [True, True, False, False]
    assert ms[:2].tolist() == [1_700_000_000_000, 1_700_000_001_500]
    ms, ok = parse_timestamps([1_700_000_000_000_000, 1_700_000_000_001_000])  # microseconds
    assert ms.tolist() == [1_700_000_000_000, 1_700_000_000_001]
    ms, ok = parse_timestamps(["2023-11-14 22:13:20", "2023-11-14T23:13:20.250+01:00"])
    assert ms.tolist() == [1_700_000_000_000, 1_700_000_000_250]
    ms, ok = parse_timestamps(["1700000000000"], "ms")
    assert ms.tolist() == [1_700_000_000_000]


@pytest.mark.asyncio
async def test_malformed_rows_pass_through_with_raw_values(tmp_path):
    header = ["timestamp", "price", "amount", "side", "id"]
    lines = [
        [T0 + 1000, "30000.5", "0.1", "buy", "a"],
        [T0 + 2000, "abc", "0.1", "sell", "b"],  # price not a number
        [T0 + 3000, "30001", "-5", "SELL", "c"],  # negative amount: passed on, not judged here
        ["yesterday", "30002", "0.2", "buy", "d"],  # unreadable time
        [T0 + 4000, "30003", "0.3", "buy", "e", "surplus"],  # too many fields
        [T0 + 5000, "30004"],  # too few fields
        [T0 + 6000, "nan", "", "", ""],
        [T0 + 7000, "30005", "0.4", "buy", "f"],
    ]
    path = write_csv(tmp_path / "bad.csv", header, lines)
    trades = await drain(ReplayProvider(path), [BTC])
    assert len(trades) == len(lines)  # nothing dropped, file order kept around bad times
    assert [t["id"] for t in trades] == ["a", "b", "c", "d", None, None, None, "f"]
    assert trades[1]["price"] == "abc" and trades[1]["timestamp"] == T0 + 2000
    assert trades[2]["amount"] == -5.0 and trades[2]["side"] == "sell"
    assert trades[3]["timestamp"] == "yesterday" and trades[3]["price"] == 30002.0
    assert trades[4]["timestamp"] is None and trades[4]["price"] is None
    assert trades[4]["info"]["raw"] == [str(T0 + 4000), "30003", "0.3", "buy", "e", "surplus"]
    assert "6 fields" in trades[4]["info"]["error"]
    assert trades[5]["info"]["raw"] == [str(T0 + 5000), "30004"]
    assert np.isnan(trades[6]["price"]) and trades[6]["amount"] == ""
    assert trades[6]["side"] is None
    assert trades[3]["info"] == dict(
        zip(header, ["yesterday", "30002", "0.2", "buy", "d"], strict=True)
    )

    # candles are built from the rows a collector would accept only
    candles = await ReplayProvider(path).fetch_candles(BTC, "1m", 0)
    assert as_tuples(candles) == [(T0 + MINUTE, 30000.5, 30005.0, 30000.5, 30005.0, 0.5)]


@pytest.mark.asyncio
async def test_rows_are_replayed_in_time_order(tmp_path):
    rows = trade_rows(6)
    shuffled = [rows[i] for i in (3, 0, 5, 1, 4, 2)]
    trades = await drain(ReplayProvider(rows_csv(tmp_path / "t.csv", shuffled)), [BTC])
    assert [t["id"] for t in trades] == [r["id"] for r in rows]


@pytest.mark.asyncio
async def test_multi_symbol_file_filters_and_matches_symbol_spellings(tmp_path):
    btc = trade_rows(10, symbol="BTCUSDT")
    eth = [{**r, "symbol": "ETH-USDT", "id": "e" + r["id"]} for r in trade_rows(10, step_ms=5_000)]
    rows = sorted(btc + eth, key=lambda r: r["timestamp"])
    provider = ReplayProvider(rows_csv(tmp_path / "multi.csv", rows))
    only_eth = await drain(provider, [ETH])
    assert [t["id"] for t in only_eth] == [r["id"] for r in eth]
    assert {t["symbol"] for t in only_eth} == {ETH}
    both = await drain(provider, [BTC, ETH])
    assert len(both) == 20
    assert [t["timestamp"] for t in both] == sorted(t["timestamp"] for t in both)
    assert {t["symbol"] for t in both} == {BTC, ETH}
    with pytest.raises(ProviderError, match="SOL/USDT"):
        await drain(provider, [BTC, "SOL/USDT"])
    with pytest.raises(ProviderError, match="SOL/USDT"):
        await provider.fetch_candles("SOL/USDT", "1m", 0)
    restricted = ReplayProvider(tmp_path / "multi.csv", symbol=BTC)
    assert len(await drain(restricted, [BTC])) == 10
    with pytest.raises(ProviderError, match="ETH/USDT"):
        await drain(restricted, [ETH])


@pytest.mark.asyncio
async def test_symbol_rules_without_symbol_column(tmp_path):
    path = rows_csv(tmp_path / "t.csv", trade_rows(3, symbol=None))
    with pytest.raises(ProviderError, match="no symbol column"):
        await drain(ReplayProvider(path), [BTC, ETH])
    with pytest.raises(ProviderError, match="ETH/USDT"):
        await drain(ReplayProvider(path, symbol=BTC), [ETH])
    assert len(await drain(ReplayProvider(path, symbol=BTC), [BTC])) == 3


@pytest.mark.asyncio
async def test_fetch_candles_from_trades_matches_reference_and_pages(tmp_path):
    rows = trade_rows(200, step_ms=4_321)
    provider = ReplayProvider(rows_csv(tmp_path / "t.csv", rows))
    ts = np.array([r["timestamp"] for r in rows])
    price = np.array([r["price"] for r in rows])
    amount = np.array([r["amount"] for r in rows])
    for timeframe, rule in (("1m", "1min"), ("5m", "5min")):
        candles = await provider.fetch_candles(BTC, timeframe, 0)
        want = reference_candles(ts, price, amount, rule)
        got = as_tuples(candles)
        assert [c[:5] for c in got] == [w[:5] for w in want]
        assert [c[5] for c in got] == pytest.approx([w[5] for w in want], rel=1e-12)
        agg = aggregate_arrays(ts, price, amount, timeframe)
        assert [c["volume"] for c in candles] == agg["volume"].tolist()
    all_minutes = await provider.fetch_candles(BTC, "1m", 0)
    pages, cursor = [], 0
    while page := await provider.fetch_candles(BTC, "1m", cursor, limit=4):
        assert len(page) <= 4 and page[0]["timestamp"] > cursor
        pages.extend(page)
        cursor = page[-1]["timestamp"]
    assert pages == all_minutes
    assert await provider.fetch_candles(BTC, "1m", all_minutes[-1]["timestamp"]) == []
    with pytest.raises(ProviderError, match="7m"):
        await provider.fetch_candles(BTC, "7m", 0)


# --------------------------------------------------------------------------------- candles files


def candle_frame(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    close = 30000 + np.cumsum(rng.normal(0, 20, n))
    open_ = np.concatenate(([30000.0], close[:-1]))
    high = np.maximum(open_, close) + rng.uniform(0, 10, n)
    low = np.minimum(open_, close) - rng.uniform(0, 10, n)
    return pd.DataFrame(
        {
            "open_ms": T0 + np.arange(n) * MINUTE,
            "open": open_.round(2),
            "high": high.round(2),
            "low": low.round(2),
            "close": close.round(2),
            "volume": rng.uniform(1, 5, n).round(4),
        }
    )


@pytest.mark.asyncio
async def test_open_stamped_candle_file_is_converted_to_close_stamps(tmp_path):
    df = candle_frame()
    # CryptoDataDownload's layout: URL line, newest first, unix ms, date, "Volume BTC"
    header = ["unix", "date", "symbol", "open", "high", "low", "close", "Volume BTC", "Volume USDT"]
    lines = [
        [r.open_ms, pd.Timestamp(r.open_ms, unit="ms").strftime("%Y-%m-%d %H:%M:%S"), "BTC/USDT",
         r.open, r.high, r.low, r.close, r.volume, round(r.volume * r.close, 2)]
        for r in df.iloc[::-1].itertuples()
    ]  # fmt: skip
    path = write_csv(
        tmp_path / "cdd.csv", header, lines, preamble="https://www.CryptoDataDownload.com\n"
    )
    provider = ReplayProvider(path, candle_stamp="open")
    assert provider.kind == "candles"
    candles = await provider.fetch_candles(BTC, "1m", 0)
    assert [c["timestamp"] for c in candles] == (df["open_ms"] + MINUTE).tolist()
    assert as_tuples(candles) == [
        (r.open_ms + MINUTE, r.open, r.high, r.low, r.close, r.volume) for r in df.itertuples()
    ]
    # 1m -> 5m: the 5m candle closing at c holds the 1m candles closing in (c - 5m, c]
    five = await provider.fetch_candles(BTC, "5m", 0)
    closes = df["open_ms"] + MINUTE
    for c in five:
        part = df[(closes > c["timestamp"] - 5 * MINUTE) & (closes <= c["timestamp"])]
        assert c["open"] == part["open"].iloc[0] and c["close"] == part["close"].iloc[-1]
        assert c["high"] == part["high"].max() and c["low"] == part["low"].min()
        assert c["volume"] == pytest.approx(part["volume"].sum())
    assert sum(c["volume"] for c in five) == pytest.approx(df["volume"].sum())
    declared_5m = ReplayProvider(path, candle_stamp="open", interval="5m")
    with pytest.raises(ProviderError, match="cannot build 1m"):
        await declared_5m.fetch_candles(BTC, "1m", 0)

    # the same file stamped as close times is left as it is
    as_close = await ReplayProvider(path).fetch_candles(BTC, "1m", 0)
    assert [c["timestamp"] for c in as_close] == df["open_ms"].tolist()


@pytest.mark.asyncio
async def test_candle_file_streams_four_trades_per_candle(tmp_path):
    df = candle_frame(12)
    path = tmp_path / "candles.parquet"
    df.rename(columns={"open_ms": "timestamp"}).assign(
        timestamp=lambda d: d["timestamp"] + MINUTE  # a close-stamped file
    ).to_parquet(path)
    provider = ReplayProvider(path, symbol=ETH)
    trades = await drain(provider, [ETH])
    assert len(trades) == 4 * len(df)
    ts = np.array([t["timestamp"] for t in trades])
    assert np.all(np.diff(ts) > 0)
    for k, r in enumerate(df.itertuples()):
        four = trades[4 * k : 4 * k + 4]
        close_ms = r.open_ms + MINUTE
        assert all(r.open_ms < t["timestamp"] <= close_ms for t in four)
        assert four[-1]["timestamp"] == close_ms
        middle = [four[1]["price"], four[2]["price"]]
        assert middle == ([r.high, r.low] if r.close < r.open else [r.low, r.high])
        assert sum(t["amount"] for t in four) == pytest.approx(r.volume)
    # folding the synthetic trades gives back the file's candles (the live path == the file)
    agg = aggregate_arrays(
        ts, np.array([t["price"] for t in trades]), np.array([t["amount"] for t in trades]), "1m"
    )
    assert agg["timestamp"].tolist() == (df["open_ms"] + MINUTE).tolist()
    for field in ("open", "high", "low", "close"):
        assert agg[field].tolist() == df[field].tolist()
    assert agg["volume"].tolist() == pytest.approx(df["volume"].tolist())


# --------------------------------------------------------------------------------- pacing


@pytest.mark.asyncio
async def test_accelerated_speed_paces_by_the_timestamps(tmp_path):
    rows = trade_rows(25, step_ms=5_000)  # a 2-minute recording
    path = rows_csv(tmp_path / "t.csv", rows)
    started = time.monotonic()
    arrivals: list[tuple[float, int]] = []

    async def run():
        async for trade in ReplayProvider(path, speed=60).stream_trades([BTC]):
            arrivals.append((time.monotonic() - started, trade["timestamp"]))

    await asyncio.wait_for(run(), timeout=20)
    elapsed = arrivals[-1][0]
    assert 1.5 < elapsed < 8, elapsed  # 120 s of recording at 60x is ~2 s
    assert [ts for _, ts in arrivals] == [r["timestamp"] for r in rows]
    halfway = next(at for at, ts in arrivals if ts >= rows[0]["timestamp"] + MINUTE)
    assert 0.6 < halfway < elapsed  # the first minute of recording took about a second

    started = time.monotonic()
    assert len(await drain(ReplayProvider(path), [BTC])) == 25  # speed=None: no waiting
    assert time.monotonic() - started < 1


@pytest.mark.asyncio
async def test_stream_is_cancellable_while_pacing(tmp_path):
    path = rows_csv(tmp_path / "t.csv", trade_rows(10, step_ms=60_000))
    provider = ReplayProvider(path, speed=1.0)
    got: list[dict] = []

    async def run():
        async for trade in provider.stream_trades([BTC]):
            got.append(trade)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert len(got) == 1  # the first trade at once, the second a recorded minute later


# --------------------------------------------------------------------------------- bad files


def test_missing_file_raises(tmp_path):
    with pytest.raises(ProviderError, match="does not exist"):
        ReplayProvider(tmp_path / "nope.csv")


def test_missing_columns_raise_naming_them(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["timestamp", "price"], [[T0, 1.0]])
    with pytest.raises(ProviderError, match="amount"):
        ReplayProvider(path)
    path = write_csv(tmp_path / "c.csv", ["timestamp", "open", "high", "low", "close"], [])
    with pytest.raises(ProviderError, match="volume"):
        ReplayProvider(path)
    path = write_csv(tmp_path / "x.csv", ["when", "what"], [[1, 2]])
    with pytest.raises(ProviderError, match="when, what"):
        ReplayProvider(path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ProviderError):
        ReplayProvider(tmp_path / "empty.csv")


def test_unparseable_files_raise(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ProviderError, match="Parquet"):
        ReplayProvider(tmp_path / "bad.parquet")
    (tmp_path / "bin.csv").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ProviderError, match="CSV"):
        ReplayProvider(tmp_path / "bin.csv")


@pytest.mark.asyncio
async def test_gzipped_semicolon_csv(tmp_path):
    rows = trade_rows(4)
    header = list(rows[0])
    text = (
        ";".join(header) + "\n" + "".join(";".join(str(r[h]) for h in header) + "\n" for r in rows)
    )
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    trades = await drain(ReplayProvider(path), [BTC])
    assert [t["id"] for t in trades] == [r["id"] for r in rows]


@pytest.mark.asyncio
async def test_single_candle_needs_an_interval(tmp_path):
    path = write_csv(
        tmp_path / "one.csv", ["timestamp", "open", "high", "low", "close", "volume"],
        [[T0, 1, 2, 0.5, 1.5, 10]],
    )  # fmt: skip
    with pytest.raises(ProviderError, match="interval"):
        await ReplayProvider(path).fetch_candles(BTC, "1m", 0)
    candles = await ReplayProvider(path, interval="1h", candle_stamp="open").fetch_candles(
        BTC, "1h", 0
    )
    assert as_tuples(candles) == [(T0 + 3_600_000, 1.0, 2.0, 0.5, 1.5, 10.0)]
