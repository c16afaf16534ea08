"""``ReplayProvider``: trades or candles from a CSV or Parquet file, as fast as possible or paced.

Accepted files
--------------
Column names are matched case-insensitively, with spaces and dashes read as ``_``
("Volume BTC" -> ``volume_btc``). The first alias present wins:

- time: ``timestamp``, ``unix``, ``time``, ``ts``, ``datetime``, ``date``, ``open_time``. Values are
  epoch seconds, ms, us or ns (``timestamp_unit="auto"`` picks by magnitude: below 1e11 seconds,
  below 1e14 ms, below 1e17 us, else ns), ISO-8601 strings (naive ones read as UTC) or Parquet
  timestamps.
- trades file: ``price`` (``p``, ``rate``); ``amount`` (``qty``, ``quantity``, ``size``, ``volume``,
  ``base_volume``); optional ``id`` (``trade_id``, ``tid``), ``side`` (``taker_side``).
- candles file: ``open``, ``high``, ``low``, ``close``; ``volume`` (``vol``, ``base_volume``,
  ``volume_base``, else ``volume_<base currency of the symbol>``, else the first ``volume_*``).
- optional ``symbol`` (``pair``, ``market``) in both; "BTCUSDT", "BTC-USDT" and "BTC/USDT" match.

``kind=None`` reads a file with open/high/low/close columns as candles, one with a price column
as trades. CSV files may be gzipped (``.gz``), use ``,`` ``;`` tab or ``|``, and may have preamble
lines before the header (CryptoDataDownload puts its URL there).

Replay rules
------------
- Rows are replayed in time order (a stable sort; a row whose time cannot be read keeps its place
  after its predecessor in the file). The stream ends after the last row.
- Trades are yielded with the values of the file (numbers parsed, nothing validated): the collector
  is the one that rejects bad rows, with a reason. A CSV row that cannot even be split into the
  columns (wrong number of fields) is still yielded, with ``None`` values and ``info = {"raw":
  [...fields], "error": ...}``. Every other trade's ``info`` is the file's row as a dict.
- A candles file drives the live path through 4 synthetic trades per candle, at 1/4, 1/2 and 3/4
  of the interval and at the close time: the open, then the low and the high (high first on a down
  candle), then the close, each with a quarter of the volume. Folded into candles they give back
  the file's candle. Their ids are ``"{close_ms}-{k}"``; their side is ``None``.
- ``speed=None`` replays as fast as the consumer takes it; ``speed=1.0`` waits the recorded gaps;
  ``speed=60`` a sixtieth of them (a 2-minute file takes 2 s).
- ``fetch_candles`` treats the whole file as history (every candle in it is closed). From a trades
  file it aggregates the rows whose time, price and amount are valid numbers (price, amount > 0)
  with ``aggregation.aggregate_arrays``; from a candles file it returns the file's candles, or
  merges them into a higher timeframe with ``aggregation.resample_candles``.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import math
import re
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from marketdata.aggregation import aggregate_arrays, parse_timeframe, resample_candles
from marketdata.providers.base import Candle, DataProvider, ProviderError, RawTrade

Kind = Literal["trades", "candles"]
TimestampUnit = Literal["auto", "s", "ms", "us", "ns", "iso"]

_TIME_ALIASES = ("timestamp", "unix", "time", "ts", "datetime", "date", "open_time")
_SYMBOL_ALIASES = ("symbol", "pair", "market")
_TRADE_ALIASES: dict[str, tuple[str, ...]] = {
    "price": ("price", "p", "rate"),
    "amount": ("amount", "qty", "quantity", "size", "volume", "base_volume"),
    "id": ("id", "trade_id", "tid"),
    "side": ("side", "taker_side"),
}
_CANDLE_ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume", "vol", "base_volume", "volume_base"),
}
_TRADE_REQUIRED = ("timestamp", "price", "amount")
_CANDLE_REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")
_UNIT_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
_DELIMITERS = (",", ";", "\t", "|")
_HEADER_SCAN_LINES = 10
# With speed=None the stream hands the event loop back every this many trades.
_YIELD_EVERY = 500


def _norm_column(name: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _norm_symbol(symbol: object) -> str:
    return re.sub(r"[/\-_:\s]", "", str(symbol)).upper()


def _jsonable(value: Any) -> Any:
    """A raw file value as a JSON type (for ``info``), keeping numbers and strings as they are."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime | date | dt_time | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _number(value: Any) -> Any:
    """A numeric cell as a number when it reads as one, else the raw value (never validated)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    if isinstance(value, Decimal):
        return float(value)
    if value == "" or value is None:
        return None
    return _jsonable(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _trade_id(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(_jsonable(value)).strip()


def _side(value: Any) -> str | None:
    if value is None:
        return None
    text = str(_jsonable(value)).strip().lower()
    return text or None


def parse_timestamps(
    values: Sequence[Any], unit: TimestampUnit = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Raw time cells -> (int64 epoch ms, bool "readable") arrays; unreadable cells give 0/False.

    ``auto``: when at least half of the non-empty cells are numbers, the column is numeric and its
    unit follows the median magnitude (< 1e11 s, < 1e14 ms, < 1e17 us, else ns); otherwise cells
    are ISO-8601 strings or datetimes (naive ones are UTC).
    """
    series = pd.Series(list(values), dtype=object)
    n = len(series)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, bool)
    present = series.map(lambda v: v is not None and not (isinstance(v, str) and not v.strip()))
    is_datetime = series.map(
        lambda v: isinstance(v, datetime | date | pd.Timestamp | np.datetime64)
    )
    numeric_mode = unit in _UNIT_TO_MS
    numbers = pd.Series(np.nan, index=series.index)
    if unit != "iso":
        numbers = pd.to_numeric(
            series.where(~is_datetime & present, None).map(
                lambda v: v.strip() if isinstance(v, str) else v
            ),
            errors="coerce",
        ).astype(np.float64)
        if unit == "auto":
            numeric_mode = bool(present.any()) and numbers.notna().sum() * 2 >= present.sum()
    if numeric_mode:
        raw = numbers.to_numpy(dtype=np.float64)
        ok = np.isfinite(raw)
        if unit == "auto":
            magnitude = float(np.median(np.abs(raw[ok]))) if ok.any() else 0.0
            unit = (
                "s"
                if magnitude < 1e11
                else "ms"
                if magnitude < 1e14
                else "us"
                if magnitude < 1e17
                else "ns"
            )
        ms = np.zeros(n, dtype=np.int64)
        ms[ok] = np.round(raw[ok] * _UNIT_TO_MS[unit]).astype(np.int64)
        return ms, ok
    texts = series.map(lambda v: v.strip() if isinstance(v, str) else v).where(present, None)
    dt = pd.to_datetime(texts, utc=True, errors="coerce", format="ISO8601")
    ok = dt.notna().to_numpy()
    ms = np.zeros(n, dtype=np.int64)
    ms[ok] = dt[ok].dt.as_unit("ms").to_numpy(dtype="datetime64[ms]").astype(np.int64)
    return ms, ok


def _infer_interval(ts: np.ndarray, groups: np.ndarray | None) -> int | None:
    """The most common positive step between consecutive distinct candle times (per symbol)."""
    steps: list[np.ndarray] = []
    keys = [None] if groups is None else list(dict.fromkeys(groups.tolist()))
    for key in keys:
        sel = ts if groups is None else ts[groups == key]
        diffs = np.diff(np.unique(sel))
        steps.append(diffs[diffs > 0])
    all_steps = np.concatenate(steps) if steps else np.empty(0, np.int64)
    if len(all_steps) == 0:
        return None
    values, counts = np.unique(all_steps, return_counts=True)
    return int(values[np.argmax(counts)])


@dataclass
class _Table:
    """The file's rows (raw values) plus the parsed columns the replay needs."""

    header: list[str]
    rows: list[Sequence[Any]]
    malformed: dict[int, str]  # row index -> why it could not be split into columns
    ts: np.ndarray  # int64 epoch ms; for candles, the CLOSE time (after any conversion)
    ts_ok: np.ndarray  # bool
    symbols: list[str | None] | None  # normalised symbol per row, when the file has the column
    order: np.ndarray  # replay order (indices into rows)
    interval_ms: int | None  # candles file only


class ReplayProvider(DataProvider):
    """Replays a recorded trades or candles file (see the module docstring for the format)."""

    def __init__(
        self,
        path: str | Path,
        *,
        symbol: str | None = None,
        kind: Kind | None = None,
        speed: float | None = None,
        timestamp_unit: TimestampUnit = "auto",
        candle_stamp: Literal["close", "open"] = "close",
        interval: str | None = None,
        exchange_id: str = "replay",
    ) -> None:
        super().__init__()
        self.exchange_id = exchange_id
        self.path = Path(path)
        self.symbol = symbol
        if speed is not None and not (speed > 0 and math.isfinite(speed)):
            raise ProviderError(f"replay speed must be > 0 or None, got {speed!r}")
        self.speed = speed
        if timestamp_unit not in ("auto", "iso", *_UNIT_TO_MS):
            raise ProviderError(f"unknown timestamp_unit {timestamp_unit!r}")
        self.timestamp_unit = timestamp_unit
        if candle_stamp not in ("close", "open"):
            raise ProviderError(f"candle_stamp must be 'close' or 'open', got {candle_stamp!r}")
        self.candle_stamp = candle_stamp
        self._interval_ms: int | None = None
        if interval is not None:
            try:
                self._interval_ms = parse_timeframe(interval) * 1000
            except ValueError as exc:
                raise ProviderError(str(exc)) from exc
        if kind not in (None, "trades", "candles"):
            raise ProviderError(f"kind must be 'trades', 'candles' or None, got {kind!r}")
        if not self.path.is_file():
            raise ProviderError(f"replay file {self.path} does not exist")
        self._parquet = self._is_parquet()
        # Read the header now, so a wrong file fails when the provider is configured.
        self._csv_dialect: tuple[str, int] | None = None  # (delimiter, header line)
        self.header = self._read_header()
        self.kind, self.columns = self._map_columns(self.header, kind)
        self._table: _Table | None = None
        self._load_lock = threading.Lock()
        # (normalised symbol, timeframe) -> all candles: the file never changes, pages slice them
        self._candle_cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._closed = False

    # ----------------------------------------------------------------------------- reading

    def _is_parquet(self) -> bool:
        if self.path.suffix.lower() in (".parquet", ".pq"):
            return True
        with self.path.open("rb") as fh:
            return fh.read(4) == b"PAR1"

    def _open_text(self) -> io.TextIOBase:
        if self.path.suffix.lower() == ".gz":
            return io.TextIOWrapper(gzip.open(self.path, "rb"), encoding="utf-8-sig", newline="")
        return self.path.open(encoding="utf-8-sig", newline="")

    def _read_header(self) -> list[str]:
        if self._parquet:
            import pyarrow.parquet as pq

            try:
                return list(pq.read_schema(self.path).names)
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise ProviderError(
                    f"replay file {self.path} is not readable Parquet: {exc}"
                ) from exc
        try:
            for delimiter in _DELIMITERS:
                with self._open_text() as fh:
                    lines = [line for _, line in zip(range(_HEADER_SCAN_LINES), fh, strict=False)]
                for index, row in enumerate(csv.reader(lines, delimiter=delimiter)):
                    names = {_norm_column(c) for c in row}
                    if names & set(_TIME_ALIASES) and names & {"price", "p", "rate", "close"}:
                        self._csv_dialect = (delimiter, index)
                        return [c.strip() for c in row]
            with self._open_text() as fh:
                first = next(csv.reader(fh), [])
        except (UnicodeDecodeError, OSError, csv.Error, EOFError) as exc:
            raise ProviderError(
                f"replay file {self.path} is not a readable CSV file: {exc}"
            ) from exc
        self._csv_dialect = (",", 0)
        return [c.strip() for c in first]

    def _map_columns(self, header: list[str], kind: Kind | None) -> tuple[Kind, dict[str, int]]:
        names = [_norm_column(c) for c in header]

        def find(aliases: Sequence[str]) -> int | None:
            return next((names.index(a) for a in aliases if a in names), None)

        if kind is None:
            if all(c in names for c in ("open", "high", "low", "close")):
                kind = "candles"
            elif find(_TRADE_ALIASES["price"]) is not None:
                kind = "trades"
            else:
                raise ProviderError(
                    f"replay file {self.path} is neither a trades file (timestamp, price, amount) "
                    f"nor a candles file (timestamp, open, high, low, close, volume); "
                    f"its columns are: {', '.join(header) or '(none)'}"
                )
        aliases = dict(_TRADE_ALIASES if kind == "trades" else _CANDLE_ALIASES)
        aliases["timestamp"] = _TIME_ALIASES
        aliases["symbol"] = _SYMBOL_ALIASES
        columns = {field: i for field, a in aliases.items() if (i := find(a)) is not None}
        if kind == "candles" and "volume" not in columns:
            # CryptoDataDownload: "Volume BTC" and "Volume USDT": the base currency's is the volume
            base = _norm_column(self.symbol.split("/")[0]) if self.symbol else None
            prefixed = [i for i, n in enumerate(names) if n.startswith("volume_")]
            exact = [i for i in prefixed if base and names[i] == f"volume_{base}"]
            if exact or prefixed:
                columns["volume"] = (exact or prefixed)[0]
        required = _TRADE_REQUIRED if kind == "trades" else _CANDLE_REQUIRED
        missing = [f for f in required if f not in columns]
        if missing:
            raise ProviderError(
                f"replay {kind} file {self.path} lacks the column(s) {', '.join(missing)}; "
                f"its columns are: {', '.join(header) or '(none)'}"
            )
        return kind, columns

    def _read_rows(self) -> tuple[list[Sequence[Any]], dict[int, str]]:
        width = len(self.header)
        if self._parquet:
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(self.path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise ProviderError(
                    f"replay file {self.path} is not readable Parquet: {exc}"
                ) from exc
            columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
            return list(zip(*columns, strict=True)), {}
        assert self._csv_dialect is not None
        delimiter, header_line = self._csv_dialect
        rows: list[Sequence[Any]] = []
        malformed: dict[int, str] = {}
        try:
            with self._open_text() as fh:
                reader = csv.reader(fh, delimiter=delimiter)
                for _ in range(header_line + 1):
                    next(reader, None)
                for fields in reader:
                    if not fields or (len(fields) == 1 and not fields[0].strip()):
                        continue  # blank line
                    if len(fields) != width:
                        malformed[len(rows)] = (
                            f"line {reader.line_num}: {len(fields)} fields, header has {width}"
                        )
                    rows.append(fields)
        except (UnicodeDecodeError, OSError, csv.Error, EOFError) as exc:
            raise ProviderError(
                f"replay file {self.path} is not a readable CSV file: {exc}"
            ) from exc
        return rows, malformed

    def _load(self) -> _Table:
        with self._load_lock:
            if self._table is None:
                self._table = self._build_table()
            return self._table

    def _build_table(self) -> _Table:
        rows, malformed = self._read_rows()
        cols = self.columns

        def column(field: str) -> list[Any]:
            i = cols[field]
            return [None if r in malformed else row[i] for r, row in enumerate(rows)]

        ts, ok = parse_timestamps(column("timestamp"), self.timestamp_unit)
        symbols = None
        if "symbol" in cols:
            symbols = [None if v is None else _norm_symbol(v) for v in column("symbol")]
            if self.symbol is not None and _norm_symbol(self.symbol) not in set(symbols):
                raise ProviderError(
                    f"replay file {self.path} holds no {self.symbol} rows "
                    f"(symbols: {', '.join(sorted({s for s in symbols if s}))})"
                )
        interval = None
        if self.kind == "candles":
            groups = None
            if symbols is not None:
                groups = np.array([s or "" for s in symbols], dtype=object)[ok]
            interval = self._interval_ms or _infer_interval(ts[ok], groups)
            if interval is None:
                raise ProviderError(
                    f"cannot infer the candle interval of {self.path} (fewer than two distinct "
                    "times): pass interval='1m' (or the file's timeframe)"
                )
            if self.candle_stamp == "open":
                # The file stamps candles with their OPEN time (exchanges, ccxt fetch_ohlcv,
                # CryptoDataDownload); ours is the close time: close = open + interval.
                ts = np.where(ok, ts + interval, ts)
        # Stable sort on time; an unreadable time borrows its predecessor's, keeping its place.
        key = ts.copy()
        if len(ts) and ok.any() and not ok.all():
            last_readable = np.maximum.accumulate(np.where(ok, np.arange(len(ts)), -1))
            key = np.where(last_readable >= 0, ts[np.maximum(last_readable, 0)], ts[ok][0])
        order = np.argsort(key, kind="stable")
        return _Table(self.header, rows, malformed, ts, ok, symbols, order, interval)

    # ----------------------------------------------------------------------------- symbols

    def _resolve(self, table: _Table, symbols: Sequence[str]) -> dict[str, str]:
        """Normalised -> requested symbol, or ProviderError when the file cannot serve one."""
        if isinstance(symbols, str) or not symbols:
            raise ProviderError(f"replay needs a list of symbols, got {symbols!r}")
        requested = list(dict.fromkeys(symbols))
        for s in requested:
            if self.symbol is not None and _norm_symbol(s) != _norm_symbol(self.symbol):
                raise ProviderError(f"replay file {self.path} is for {self.symbol}, not {s}")
        if table.symbols is not None:
            present = {s for s in table.symbols if s}
            for s in requested:
                if _norm_symbol(s) not in present:
                    raise ProviderError(
                        f"symbol {s} is not in replay file {self.path} "
                        f"(it holds {', '.join(sorted(present)) or 'no symbols'})"
                    )
        elif len(requested) > 1 and self.symbol is None:
            raise ProviderError(
                f"replay file {self.path} has no symbol column: it replays one symbol, "
                f"not {', '.join(requested)}"
            )
        return {_norm_symbol(s): s for s in requested}

    def _rows_for(
        self, table: _Table, wanted: dict[str, str], *, unattributed: bool
    ) -> list[tuple[int, str | None]]:
        """Replay-ordered (row, symbol) pairs of the wanted symbols.

        With ``unattributed``, rows whose symbol cannot be known (a malformed row, an empty symbol
        cell) are included too, under the requested symbol when there is one, else ``None``: the
        stream must pass them on for the collector to reject, never drop them.
        """
        sole = next(iter(wanted.values())) if len(wanted) == 1 else None
        out: list[tuple[int, str | None]] = []
        for i in table.order.tolist():
            if i in table.malformed or (table.symbols is not None and not table.symbols[i]):
                if unattributed:
                    out.append((i, sole))
            elif table.symbols is None:
                out.append((i, sole))
            elif table.symbols[i] in wanted:
                out.append((i, wanted[table.symbols[i]]))
        return out

    # ----------------------------------------------------------------------------- trades

    def _info(self, table: _Table, i: int) -> dict[str, Any]:
        row = table.rows[i]
        if i in table.malformed:
            return {"raw": [_jsonable(v) for v in row], "error": table.malformed[i]}
        return {name: _jsonable(v) for name, v in zip(table.header, row, strict=True)}

    def _trades_of_row(self, table: _Table, i: int, symbol: str | None) -> list[RawTrade]:
        row, cols = table.rows[i], self.columns
        info = self._info(table, i)
        if i in table.malformed:
            return [
                RawTrade(
                    exchange=self.exchange_id, symbol=symbol, id=None, timestamp=None,
                    price=None, amount=None, side=None, info=info,
                )
            ]  # fmt: skip

        def cell(field: str) -> Any:
            return row[cols[field]] if field in cols else None

        timestamp = int(table.ts[i]) if table.ts_ok[i] else _jsonable(cell("timestamp"))
        if self.kind == "trades":
            return [
                RawTrade(
                    exchange=self.exchange_id, symbol=symbol, id=_trade_id(cell("id")),
                    timestamp=timestamp, price=_number(cell("price")),
                    amount=_number(cell("amount")), side=_side(cell("side")), info=info,
                )
            ]  # fmt: skip
        o, h, lo, c, v = (_number(cell(f)) for f in ("open", "high", "low", "close", "volume"))
        if not table.ts_ok[i]:
            # no time to place the four trades at: one trade carrying the close, raw time
            info = {**info, "error": "candle time could not be read"}
            return [
                RawTrade(
                    exchange=self.exchange_id, symbol=symbol, id=None, timestamp=timestamp,
                    price=c, amount=v, side=None, info=info,
                )
            ]  # fmt: skip
        interval = table.interval_ms or 4
        opened = timestamp - interval
        times = (
            opened + interval // 4,
            opened + interval // 2,
            opened + 3 * interval // 4,
            timestamp,
        )
        down = _is_number(o) and _is_number(c) and c < o
        prices = (o, h, lo, c) if down else (o, lo, h, c)
        quarter = v / 4 if _is_number(v) else v
        return [
            RawTrade(
                exchange=self.exchange_id, symbol=symbol, id=f"{timestamp}-{k}", timestamp=t,
                price=p, amount=quarter, side=None, info=info,
            )
            for k, (t, p) in enumerate(zip(times, prices, strict=True))
        ]  # fmt: skip

    async def stream_trades(self, symbols: Sequence[str]) -> AsyncIterator[RawTrade]:
        table = await asyncio.to_thread(self._load)
        wanted = self._resolve(table, symbols)
        self.report("connected", f"replaying {self.path.name} for {', '.join(wanted.values())}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_ms: int | None = None
        sent = 0
        for i, symbol in self._rows_for(table, wanted, unattributed=True):
            for trade in self._trades_of_row(table, i, symbol):
                if self._closed:
                    return
                ts = trade.get("timestamp")
                if self.speed is not None and isinstance(ts, int) and table.ts_ok[i]:
                    if first_ms is None:
                        first_ms, started = ts, loop.time()
                    # waits are measured from the start, so they do not accumulate drift
                    delay = started + (ts - first_ms) / 1000 / self.speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif sent % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                sent += 1
                yield trade

    # ----------------------------------------------------------------------------- candles

    async def fetch_candles(
        self, symbol: str, timeframe: str, since_ms: int, *, limit: int = 1000
    ) -> list[Candle]:
        try:
            tf_ms = parse_timeframe(timeframe) * 1000
        except ValueError as exc:
            raise ProviderError(str(exc)) from exc
        table = await asyncio.to_thread(self._load)
        self._resolve(table, [symbol])
        if limit <= 0:
            return []
        cache_key = (_norm_symbol(symbol), timeframe)
        arrays = self._candle_cache.get(cache_key)
        if arrays is None:
            arrays = await asyncio.to_thread(self._candle_arrays, table, symbol, timeframe, tf_ms)
            self._candle_cache[cache_key] = arrays
        start = int(np.searchsorted(arrays["timestamp"], since_ms, side="right"))
        page = slice(start, start + limit)
        fields = ("timestamp", "open", "high", "low", "close", "volume")
        columns = [arrays[f][page].tolist() for f in fields]
        return [
            Candle(timestamp=int(t), open=o, high=h, low=lo, close=c, volume=v)
            for t, o, h, lo, c, v in zip(*columns, strict=True)
        ]

    def _candle_arrays(
        self, table: _Table, symbol: str, timeframe: str, tf_ms: int
    ) -> dict[str, np.ndarray]:
        """All of the file's candles of ``symbol`` at ``timeframe``, ascending by close time."""
        wanted = {_norm_symbol(symbol): symbol}
        rows = [i for i, _ in self._rows_for(table, wanted, unattributed=False)]
        rows = np.array(rows, dtype=np.int64)
        ok = table.ts_ok[rows]
        rows = rows[ok]
        ts = table.ts[rows]
        fields = (
            ("price", "amount")
            if self.kind == "trades"
            else ("open", "high", "low", "close", "volume")
        )
        values = {
            f: pd.to_numeric(
                pd.Series([table.rows[i][self.columns[f]] for i in rows.tolist()], dtype=object),
                errors="coerce",
            ).to_numpy(dtype=np.float64)
            for f in fields
        }
        good = np.ones(len(rows), dtype=bool)
        for f in fields:
            good &= np.isfinite(values[f])
        if self.kind == "trades":
            good &= (values["price"] > 0) & (values["amount"] > 0)
            # ``order`` is sorted by time already; the filter keeps it sorted
            return aggregate_arrays(
                ts[good], values["price"][good], values["amount"][good], timeframe
            )
        ts = ts[good]
        values = {f: v[good] for f, v in values.items()}
        # one candle per close time (the first, as the file repeated it)
        ts, first = np.unique(ts, return_index=True)
        candles = {f: values[f][first] for f in fields}
        candles["timestamp"] = ts
        candles["trades"] = np.zeros(len(ts), dtype=np.int64)
        source = table.interval_ms or tf_ms
        if tf_ms == source:
            return candles
        if tf_ms < source or tf_ms % source:
            raise ProviderError(
                f"cannot build {timeframe} candles from the {source // 1000} s candles "
                f"of {self.path}"
            )
        return resample_candles(candles, timeframe)

    async def close(self) -> None:
        self._closed = True
