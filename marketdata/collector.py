"""The seed's Data Collector: providers in, raw ticks and right-aligned candles out.

Flow for every trade a provider yields:

1. ``process_raw_data`` validates it (``validate_trade``); a bad row becomes a ``RejectedTick``
   with its reason, and collection goes on.
2. A good one is buffered for ``RawTick`` (stored as received) and folded into the instrument's
   streaming 1m ``CandleBuilder``.
3. Every ``flush_interval`` seconds ``flush`` writes the buffers in one transaction (COPY on
   PostgreSQL), upserts the 1m candles that closed, rebuilds each higher timeframe whose
   interval just ended from the stored 1m candles, and after commit ``send_signal_to_bots``
   announces each closed candle on ``market_data:{symbol}`` and wakes the bots
   (``candle_closed`` signal).

A candle closes when a later trade arrives or when its close time is ``close_grace_ms`` in the
past. On start, each instrument's builder is restored from the raw ticks after its last closed
1m candle; the minutes the collector may have missed while it was down are taken from the
provider's own candles (``fetch_candles``) instead of the incomplete tick stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.dispatch import Signal

from marketdata import services
from marketdata.aggregation import CandleBuilder
from marketdata.models import Candle, CollectionStatus, Instrument, RawTick
from marketdata.providers.base import DataProvider, ProviderError
from tradeapp.events import publish

logger = logging.getLogger(__name__)

MINUTE_MS = 60_000

#: Sent after commit for every closed candle: kwargs instrument_id, symbol, timeframe, close_ms.
#: The bots app connects to it to process the bots on that instrument and timeframe.
candle_closed = Signal()


class TickRejected(ValueError):
    """A raw trade failed validation; the message is the reason stored on the RejectedTick."""


@dataclass(frozen=True, slots=True)
class ValidTick:
    ts_ms: int
    price: Decimal
    amount: Decimal
    trade_id: str | None
    side: str


def _number(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise TickRejected(f"{name} is missing or not a number: {value!r}")
    try:
        number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        raise TickRejected(f"{name} is not a number: {value!r}") from None
    if not number.is_finite():
        raise TickRejected(f"{name} is not finite: {value!r}")
    return number


def validate_trade(
    raw: dict[str, Any], *, now_ms: int, last_closed_ms: int | None, max_future_ms: int
) -> ValidTick:
    """Check one raw trade; raise ``TickRejected`` with the reason, or return it normalised.

    Refused: a price or amount that is missing, non-numeric, NaN/infinite, zero or negative; a
    timestamp that is missing, not an integer of milliseconds, more than ``max_future_ms`` ahead
    of ``now_ms``, or not after ``last_closed_ms`` (its candle is already closed); an over-long
    trade id.
    """
    ts = raw.get("timestamp")
    if isinstance(ts, bool) or ts is None:
        raise TickRejected(f"timestamp is missing: {ts!r}")
    try:
        ts_f = float(ts)
    except (TypeError, ValueError):
        raise TickRejected(f"timestamp is not a number: {ts!r}") from None
    if not math.isfinite(ts_f) or ts_f != int(ts_f) or ts_f <= 0:
        raise TickRejected(f"timestamp is not a positive integer of milliseconds: {ts!r}")
    ts_ms = int(ts_f)
    if ts_ms > now_ms + max_future_ms:
        raise TickRejected(f"timestamp {ts_ms} is in the future (now {now_ms})")
    if last_closed_ms is not None and ts_ms <= last_closed_ms:
        raise TickRejected(
            f"timestamp {ts_ms} is not after the last closed candle {last_closed_ms}"
        )
    price = _number(raw.get("price"), "price")
    if price <= 0:
        raise TickRejected(f"price is not positive: {raw.get('price')!r}")
    amount = _number(raw.get("amount"), "amount")
    if amount <= 0:
        raise TickRejected(f"amount is not positive: {raw.get('amount')!r}")
    trade_id = raw.get("id")
    if trade_id is not None:
        trade_id = str(trade_id)
        if not trade_id or len(trade_id) > 64:
            raise TickRejected(f"trade id is empty or longer than 64 characters: {trade_id!r}")
    side = raw.get("side") if raw.get("side") in ("buy", "sell") else ""
    return ValidTick(ts_ms, price, amount, trade_id, side)


@dataclass
class InstrumentState:
    instrument_id: int
    exchange: str
    symbol: str
    timeframes: list[str]
    builder: CandleBuilder = field(default_factory=lambda: CandleBuilder("1m"))
    recent_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Minutes closing at or before this time may have missed trades (collector down): their
    # candle is taken from the provider when it closes.
    tainted_until_ms: int = 0
    last_tick_ms: int | None = None
    # Close time of the newest 1m candle written: higher candles up to it are final.
    last_minute_ms: int | None = None

    RECENT_IDS = 50_000

    def seen(self, trade_id: str) -> bool:
        if trade_id in self.recent_ids:
            return True
        self.recent_ids[trade_id] = None
        if len(self.recent_ids) > self.RECENT_IDS:
            self.recent_ids.popitem(last=False)
        return False


@dataclass
class _Buffers:
    ticks: list[services.TickRow] = field(default_factory=list)
    rejects: list[services.RejectRow] = field(default_factory=list)
    closed: list[tuple[InstrumentState, dict[str, Any]]] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)

    def merged(self, later: _Buffers) -> _Buffers:
        """This batch followed by ``later``'s (a batch the database could not take yet)."""
        return _Buffers(
            ticks=self.ticks + later.ticks, rejects=self.rejects + later.rejects,
            closed=self.closed + later.closed, touched=self.touched | later.touched,
        )  # fmt: skip


class DataCollector:
    """Collects trades from registered providers for a set of symbols (the seed's class)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 1.0,
        close_grace_ms: int = 2_000,
        max_future_ms: int = 60_000,
        restart_delay: float = 30.0,
    ) -> None:
        self.providers: dict[str, DataProvider] = {}
        self.restart_delay = restart_delay
        self.states: dict[tuple[str, str], InstrumentState] = {}
        self.clock = clock
        self.flush_interval = flush_interval
        self.close_grace_ms = close_grace_ms
        self.max_future_ms = max_future_ms
        self._buffers = _Buffers()
        self._stop: asyncio.Event | None = None
        self._provider_events: list[tuple[str, str, str]] = []

    # --- the seed's API --------------------------------------------------------------------

    def register_provider(self, name: str, provider: DataProvider) -> None:
        """Register a provider; it serves the instruments of exchange ``provider.exchange_id``."""
        if name in self.providers:
            raise ValueError(f"a provider named {name!r} is already registered")
        provider.on_event = lambda event, detail: self._provider_events.append(
            (provider.exchange_id, event, detail)
        )
        self.providers[name] = provider

    def start_collection(self, symbols: list[str]) -> None:
        """Collect ``symbols`` until stopped (Ctrl-C / SIGTERM). Blocks.

        A symbol is ``BTC/USDT`` (on every registered provider's exchange that lists it) or
        ``exchange:BTC/USDT``.
        """
        asyncio.run(self.run(symbols))

    def process_raw_data(self, raw_data: dict[str, Any]) -> dict[str, Any] | None:
        """Validate one raw trade and fold it into its candles.

        Returns ``{"instrument_id", "exchange", "symbol", "tick", "closed"}`` for an accepted
        trade (``closed``: the 1m candles it closed), ``None`` when it was rejected (stored as a
        RejectedTick with the reason).
        """
        received_at = services.ms_to_datetime(self._now_ms())
        exchange = str(raw_data.get("exchange") or "")
        symbol = raw_data.get("symbol")
        state = self.states.get((exchange, symbol)) if isinstance(symbol, str) else None
        if state is None:
            self._reject(
                raw_data, exchange=exchange, symbol=symbol, instrument_id=None,
                reason=f"unknown symbol {symbol!r}", received_at=received_at,
            )  # fmt: skip
            return None
        try:
            tick = validate_trade(
                raw_data,
                now_ms=self._now_ms(),
                last_closed_ms=state.builder.last_closed_ms,
                max_future_ms=self.max_future_ms,
            )
        except TickRejected as exc:
            self._reject(
                raw_data, exchange=exchange, symbol=symbol, instrument_id=state.instrument_id,
                reason=str(exc), received_at=received_at,
            )  # fmt: skip
            return None
        if tick.trade_id is not None and state.seen(tick.trade_id):
            self._reject(
                raw_data, exchange=exchange, symbol=symbol, instrument_id=state.instrument_id,
                reason=f"duplicate trade id {tick.trade_id}", received_at=received_at,
            )  # fmt: skip
            return None
        closed = state.builder.add(tick.ts_ms, float(tick.price), float(tick.amount))
        state.last_tick_ms = tick.ts_ms
        self._buffers.ticks.append(
            services.TickRow(
                instrument_id=state.instrument_id,
                trade_id=tick.trade_id,
                time=services.ms_to_datetime(tick.ts_ms),
                price=tick.price,
                amount=tick.amount,
                side=tick.side,
                received_at=received_at,
            )
        )
        self._buffers.touched.add(state.instrument_id)
        self._buffers.closed.extend((state, c) for c in closed)
        return {
            "instrument_id": state.instrument_id,
            "exchange": exchange,
            "symbol": symbol,
            "tick": {
                "timestamp": tick.ts_ms,
                "price": float(tick.price),
                "amount": float(tick.amount),
            },
            "closed": closed,
        }

    def send_signal_to_bots(self, processed_data: dict[str, Any]) -> dict[str, Any]:
        """Announce a closed candle: ``market_data:{symbol}`` event, then wake the bots.

        ``processed_data``: ``{"instrument_id", "symbol", "timeframe", "candle"}`` with a
        right-aligned candle dict (``timestamp`` = close time, epoch ms).
        """
        candle = services.json_candle(processed_data["candle"])
        event = publish(
            f"market_data:{processed_data['symbol']}",
            {
                "type": "candle.closed",
                "instrument_id": processed_data["instrument_id"],
                "symbol": processed_data["symbol"],
                "timeframe": processed_data["timeframe"],
                "candle": candle,
            },
        )
        candle_closed.send(
            sender=DataCollector,
            instrument_id=processed_data["instrument_id"],
            symbol=processed_data["symbol"],
            timeframe=processed_data["timeframe"],
            close_ms=candle["timestamp"],
        )
        return event

    # --- running ------------------------------------------------------------------------------

    async def run(self, symbols: Sequence[str], *, stop: asyncio.Event | None = None) -> None:
        """Collect until ``stop`` is set (or the task is cancelled), flushing periodically."""
        self._stop = stop or asyncio.Event()
        await sync_to_async(self.load_instruments)(symbols)
        await sync_to_async(self.restore)()
        streams = [
            asyncio.create_task(self._consume(name, provider), name=f"collect:{name}")
            for name, provider in self.providers.items()
            if self._symbols_for(provider)
        ]
        catch_up = asyncio.create_task(self._catch_up(), name="collect:catch-up")
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.flush_interval)
                await self.tick()
        finally:
            for task in [*streams, catch_up]:
                task.cancel()
            await asyncio.gather(*streams, catch_up, return_exceptions=True)
            await self.tick()
            for provider in self.providers.values():
                await provider.close()
            await sync_to_async(self._set_state)(CollectionStatus.State.STOPPED)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def tick(self) -> None:
        """Close candles whose time has passed, resolve tainted minutes, write and announce."""
        now = self._now_ms()
        events, self._provider_events = self._provider_events, []
        for exchange, event, _ in events:
            if event in ("reconnecting", "error"):
                # Trades made during an outage may reach us only after their minute closed
                # (then they are refused as late): take the minutes around it from the
                # exchange's own candles.
                until = -(-now // MINUTE_MS) * MINUTE_MS + MINUTE_MS
                for state in self.states.values():
                    if state.exchange == exchange:
                        state.tainted_until_ms = max(state.tainted_until_ms, until)
        horizon = now - self.close_grace_ms
        for state in self.states.values():
            self._buffers.closed.extend((state, c) for c in state.builder.flush(horizon))
        buffers, self._buffers = self._buffers, _Buffers()
        for i, (state, candle) in enumerate(buffers.closed):
            if candle["timestamp"] <= state.tainted_until_ms:
                buffers.closed[i] = (state, await self._exchange_minute(state, candle))
        try:
            await sync_to_async(self.flush)(buffers, events)
        except (OperationalError, InterfaceError) as exc:
            # The database is unreachable (restarted, failing over): the batch's one transaction
            # wrote nothing. Keep the batch ahead of what arrives meanwhile and write it with the
            # next flush, so no tick is dropped and no closed candle skipped.
            logger.warning("database unavailable, %d ticks and %d candles kept for the next "
                           "flush: %s", len(buffers.ticks), len(buffers.closed), exc)  # fmt: skip
            self._buffers = buffers.merged(self._buffers)
            self._provider_events[:0] = events

    def flush(
        self, buffers: _Buffers, provider_events: Sequence[tuple[str, str, str]] = ()
    ) -> None:
        """Write one batch in a transaction, then announce what closed (runs in a thread).

        Leaves ``buffers`` and the instruments' state as they were when the database fails with
        a connection error (``OperationalError``/``InterfaceError``, raised after the broken
        connection is closed), so the same batch can be written again (``tick``)."""
        announce: list[dict[str, Any]] = []
        last_minutes = [(state, state.last_minute_ms) for state in self.states.values()]
        try:
            self._write(buffers, provider_events, announce)
        except (OperationalError, InterfaceError):
            for state, value in last_minutes:
                state.last_minute_ms = value
            close_old_connections()  # the next flush connects afresh
            raise
        for item in announce:
            try:
                self.send_signal_to_bots(item)
            except Exception:
                # Events are best effort (the candle is stored); a Redis outage must not stop
                # collection.
                logger.exception("announcing %s %s failed", item["symbol"], item["timeframe"])
        self._publish_progress(buffers)

    def _write(self, buffers: _Buffers, provider_events, announce: list[dict[str, Any]]) -> None:
        buffers = replace(buffers, rejects=list(buffers.rejects))  # duplicates added below
        with transaction.atomic():
            duplicates = services.ticks_store(buffers.ticks)
            for row in duplicates:
                state = self._state_by_id(row.instrument_id)
                buffers.rejects.append(
                    services.RejectRow(
                        exchange=state.exchange, symbol=state.symbol,
                        instrument_id=row.instrument_id,
                        payload={"id": row.trade_id, "timestamp": services.datetime_to_ms(row.time),
                                 "price": str(row.price), "amount": str(row.amount)},
                        reason=f"duplicate trade id {row.trade_id} (already stored)",
                        received_at=row.received_at,
                    )
                )  # fmt: skip
            services.rejects_store(buffers.rejects)
            for state, closed in buffers.closed:
                # Not popped: a batch the database refused is written again as it was.
                source = closed.get("_source", Candle.Source.TICKS)
                candle = {k: v for k, v in closed.items() if k != "_source"}
                services.candles_upsert(
                    instrument_id=state.instrument_id,
                    timeframe="1m",
                    candles=[candle],
                    source=source,
                )
                announce.append(self._announcement(state, "1m", candle))
                close = int(candle["timestamp"])
                previous = state.last_minute_ms if state.last_minute_ms is not None else close
                state.last_minute_ms = max(close, previous)
                # Every higher candle whose interval ended in (previous 1m close, this close] is
                # final now (after a quiet spell that may be several).
                higher = services.candles_rebuild_higher(
                    instrument=self._instrument(state),
                    start_ms=min(previous, close - MINUTE_MS),
                    end_ms=close,
                    final_until_ms=close,
                )
                for timeframe, arrays in higher.items():
                    for i, higher_close in enumerate(arrays["timestamp"].tolist()):
                        if previous < higher_close <= close or higher_close == close:
                            announce.append(
                                self._announcement(
                                    state, timeframe, {k: v[i] for k, v in arrays.items()}
                                )
                            )
            self._record_status(buffers, duplicates, provider_events)

    # --- internals ----------------------------------------------------------------------------

    def load_instruments(self, symbols: Sequence[str]) -> None:
        """Resolve ``symbols`` to active instruments served by the registered providers."""
        exchanges = {p.exchange_id for p in self.providers.values()}
        wanted: list[tuple[str | None, str]] = []
        for symbol in symbols:
            exchange, sep, rest = symbol.partition(":")
            # "BTC/USDT:USDT" is a ccxt symbol, "binance:BTC/USDT" an exchange-qualified one.
            if sep and "/" not in exchange and exchange in exchanges:
                wanted.append((exchange, rest))
            else:
                wanted.append((None, symbol))
        for exchange, symbol in wanted:
            qs = (
                Instrument.objects.active()
                .select_related("exchange")
                .filter(symbol=symbol, exchange__ccxt_id__in=[exchange] if exchange else exchanges)
            )
            found = list(qs)
            if not found:
                raise ProviderError(
                    f"unknown symbol {symbol!r}: no active instrument on "
                    f"{exchange or sorted(exchanges)}"
                )
            for inst in found:
                self.states[(inst.exchange.ccxt_id, inst.symbol)] = InstrumentState(
                    instrument_id=inst.pk,
                    exchange=inst.exchange.ccxt_id,
                    symbol=inst.symbol,
                    timeframes=list(inst.timeframes),
                )

    def restore(self) -> None:
        """Rebuild each builder from the raw ticks after the instrument's last closed 1m candle."""
        now = self._now_ms()
        for state in self.states.values():
            last = (
                Candle.objects.filter(instrument_id=state.instrument_id, timeframe="1m")
                .order_by("-close_time")
                .values_list("close_time", flat=True)
                .first()
            )
            ticks = RawTick.objects.filter(instrument_id=state.instrument_id)
            if last is not None:
                ticks = ticks.filter(time__gt=last)
                state.last_minute_ms = services.datetime_to_ms(last)
                state.builder = CandleBuilder("1m", last_closed_ms=state.last_minute_ms)
            for trade_id, at, price, amount in ticks.order_by("time", "id").values_list(
                "trade_id", "time", "price", "amount"
            ):
                ts = services.datetime_to_ms(at)
                self._buffers.closed.extend(
                    (state, c) for c in state.builder.add(ts, float(price), float(amount))
                )
                state.last_tick_ms = ts
                if trade_id is not None:
                    state.seen(trade_id)
            # Trades made while we were down never reached us: until the current minute has
            # closed, take minutes from the provider.
            state.tainted_until_ms = -(-now // MINUTE_MS) * MINUTE_MS
            services.status_record(instrument_id=state.instrument_id, state="running")

    async def _catch_up(self) -> None:
        """Fill the 1m candles missed while the collector was down, from the providers."""
        from marketdata.backfill import backfill

        for state in list(self.states.values()):
            provider = self._provider_for(state.exchange)
            last = state.builder.last_closed_ms
            if provider is None or last is None:
                continue
            try:
                await backfill(
                    provider, instrument_id=state.instrument_id, symbol=state.symbol,
                    timeframe="1m", since_ms=last, until_ms=state.tainted_until_ms - MINUTE_MS,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - reported; the live stream goes on
                logger.warning("catch-up of %s failed: %s", state.symbol, exc)
                self._provider_events.append((state.exchange, "error", f"catch-up: {exc}"))

    async def _consume(self, name: str, provider: DataProvider) -> None:
        """Feed one provider's stream into ``process_raw_data``; supervise it.

        Providers retry transient failures themselves; a stream that still ends with an error
        (``ProviderError``: bad symbol, bad credentials...) is reported on the instruments'
        status and restarted after ``restart_delay`` seconds, so one broken exchange neither
        stops the others nor the process.
        """
        symbols = self._symbols_for(provider)
        while True:
            try:
                async for item in provider.stream_trades(symbols):
                    raw = item if isinstance(item, dict) else {"info": item}
                    raw.setdefault("exchange", provider.exchange_id)
                    self.process_raw_data(raw)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("%s stream failed", name)
                self._provider_events.append((provider.exchange_id, "error", f"{exc}"))
            else:
                return  # a finite source (a replayed file) ended
            await asyncio.sleep(self.restart_delay)

    async def _exchange_minute(self, state: InstrumentState, candle: dict[str, Any]) -> dict:
        provider = self._provider_for(state.exchange)
        close = int(candle["timestamp"])
        if provider is not None:
            try:
                page = await provider.fetch_candles(state.symbol, "1m", close - MINUTE_MS, limit=1)
            except Exception as exc:  # noqa: BLE001 - fall back to our own ticks
                logger.warning("%s: exchange candle %s unavailable: %s", state.symbol, close, exc)
            else:
                if page and int(page[0]["timestamp"]) == close:
                    return {**page[0], "trades": candle.get("trades", 0), "_source": "exchange"}
        return candle

    def _symbols_for(self, provider: DataProvider) -> list[str]:
        return [s.symbol for s in self.states.values() if s.exchange == provider.exchange_id]

    def _provider_for(self, exchange: str) -> DataProvider | None:
        return next((p for p in self.providers.values() if p.exchange_id == exchange), None)

    def _state_by_id(self, instrument_id: int) -> InstrumentState:
        return next(s for s in self.states.values() if s.instrument_id == instrument_id)

    def _instrument(self, state: InstrumentState) -> Instrument:
        return Instrument(pk=state.instrument_id, symbol=state.symbol, timeframes=state.timeframes)

    def _announcement(self, state: InstrumentState, timeframe: str, candle: dict) -> dict:
        return {
            "instrument_id": state.instrument_id,
            "symbol": state.symbol,
            "timeframe": timeframe,
            "candle": services.json_candle(candle),
        }

    def _reject(
        self, raw: Any, *, exchange: str, symbol: Any, instrument_id: int | None, reason: str,
        received_at: Any,
    ) -> None:  # fmt: skip
        logger.info("rejected %s %r: %s", exchange, symbol, reason)
        self._buffers.rejects.append(
            services.RejectRow(
                exchange=exchange or "?",
                symbol=symbol if isinstance(symbol, str) else "",
                instrument_id=instrument_id,
                payload=raw,
                reason=reason,
                received_at=received_at,
            )
        )

    def _record_status(self, buffers: _Buffers, duplicates, provider_events) -> None:
        ticks: dict[int, int] = {}
        last_tick: dict[int, int] = {}
        for row in buffers.ticks:
            ticks[row.instrument_id] = ticks.get(row.instrument_id, 0) + 1
        for row in duplicates:
            ticks[row.instrument_id] -= 1
        for state in self.states.values():
            if state.last_tick_ms is not None:
                last_tick[state.instrument_id] = state.last_tick_ms
        rejects: dict[int, int] = {}
        for row in buffers.rejects:
            if row.instrument_id is not None:
                rejects[row.instrument_id] = rejects.get(row.instrument_id, 0) + 1
        closed_at = {s.instrument_id: c["timestamp"] for s, c in buffers.closed}
        errors = {exchange: (event, detail) for exchange, event, detail in provider_events}
        for state in self.states.values():
            event = errors.get(state.exchange)
            new_state, error = None, None
            if event is not None:
                kind, detail = event
                new_state = {"reconnecting": "reconnecting", "error": "error"}.get(kind, "running")
                error = detail if kind in ("reconnecting", "error") else None
            elif state.instrument_id in buffers.touched:
                new_state = "running"
            services.status_record(
                instrument_id=state.instrument_id,
                ticks=ticks.get(state.instrument_id, 0),
                rejects=rejects.get(state.instrument_id, 0),
                last_tick_at=services.ms_to_datetime(last_tick[state.instrument_id])
                if state.instrument_id in buffers.touched
                else None,
                last_candle_at=services.ms_to_datetime(closed_at[state.instrument_id])
                if state.instrument_id in closed_at
                else None,
                state=new_state,
                error=error,
            )

    def _publish_progress(self, buffers: _Buffers) -> None:
        """Stream the in-progress 1m candle of each instrument that traded (for live charts)."""
        for state in self.states.values():
            current = state.builder.current
            if state.instrument_id not in buffers.touched or current is None:
                continue
            try:
                publish(
                    f"market_data:{state.symbol}",
                    {
                        "type": "candle.update",
                        "instrument_id": state.instrument_id,
                        "symbol": state.symbol,
                        "timeframe": "1m",
                        "candle": services.json_candle(current),
                    },
                )
            except Exception:
                logger.exception("publishing progress of %s failed", state.symbol)

    def _set_state(self, value: str) -> None:
        for state in self.states.values():
            services.status_record(instrument_id=state.instrument_id, state=value)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
