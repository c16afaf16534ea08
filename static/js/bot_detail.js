/* A bot's page (`/bots/<id>/`): status, book, live chart with the strategy's indicators and the
 * bot's entries and exits, decision log, orders and trades, all kept live.
 *
 * Data (json_script): `bot-data` {bot: {id, status, instrument_id, symbol, timeframe, capital, fee},
 * streams: {status, portfolio, market_symbol}}, `bot-chart` {candles, indicators: {name: {pane,
 * color, group, style, levels, values (aligned to candles)}}, markers: [{time_ms, side, text}]},
 * `bot-equity` [{timestamp, value}].
 *
 * Streams: `/ws/bot/{id}/status` (snapshot `bot` + `signals`; `signal.created`, `bot.status`),
 * `/ws/portfolio/{id}` (snapshot `portfolio`; `portfolio.updated`, `order.updated`,
 * `trade.closed`), `/ws/market/{symbol}?timeframe=<bot's>` (`candle.closed` of the bot's
 * timeframe; `candle.update`/`candle.closed` of 1m fold into the forming bar when the bot's
 * timeframe is higher — its open is the first minute seen until the bar closes). Market events
 * of another exchange's instrument with the same symbol are ignored (`instrument_id`).
 *
 * Stable hooks for tests: `#bot-status` (text = status), `#start-form`, `#stop-form`,
 * `#delete-form` (hidden when not applicable), `#stream-state-status`, `#stream-state-portfolio`,
 * `#stream-state-market`, `#price-chart` (`data-candles`, `data-markers`, `data-indicators`),
 * `#decision-log tbody tr[data-signal-id]` (newest first), `#orders tr[data-order-id]`,
 * `#trades tr[data-trade-id]`, `#equity-value`, `#pnl-value`, `#position-value`,
 * `#unrealized-value`, `#equity-chart` (`data-points`).
 */
(function () {
  "use strict";
  const T = window.Tradeapp;
  const TIMEFRAME_MS = { "1m": 60e3, "5m": 300e3, "15m": 900e3, "1h": 3600e3, "4h": 14400e3, "1d": 86400e3 };
  const MAX_ROWS = 50;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function prependRow(tbody, tr) {
    const empty = tbody.querySelector("tr.empty");
    if (empty) empty.remove();
    tbody.prepend(tr);
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const data = T.jsonData("bot-data");
    const initial = T.jsonData("bot-chart") || { candles: [], indicators: {}, markers: [] };
    const bot = data.bot;
    const frame = TIMEFRAME_MS[bot.timeframe];

    // --- status ------------------------------------------------------------------------------
    function setStatus(status, reason) {
      const badge = document.getElementById("bot-status");
      badge.textContent = status;
      badge.className = "badge " + status;
      badge.title = reason || "";
      document.getElementById("bot-status-reason").textContent = status === "running" ? "" : reason || "";
      document.getElementById("start-form").hidden = status === "running";
      document.getElementById("stop-form").hidden = status === "stopped";
      document.getElementById("delete-form").hidden = status !== "stopped";
      bot.status = status;
    }

    // --- price chart ---------------------------------------------------------------------------
    const container = document.getElementById("price-chart");
    const chart = T.candleChart(container);
    chart.setCandles(initial.candles);
    let lastClosed = initial.candles.length ? initial.candles[initial.candles.length - 1].timestamp : null;
    let forming = null;

    const lib = window.LightweightCharts;
    const lines = {};
    const lineLast = {};
    const panes = {};
    Object.keys(initial.indicators).forEach(function (name) {
      const spec = initial.indicators[name];
      let pane = 0;
      if (spec.pane === "own") {
        const group = spec.group || name;
        if (!(group in panes)) panes[group] = Object.keys(panes).length + 1;
        pane = panes[group];
      }
      const options = { color: spec.color || "#888", title: name, priceLineVisible: false, lastValueVisible: false };
      const series = spec.style === "histogram"
        ? chart.chart.addSeries(lib.HistogramSeries, options, pane)
        : chart.chart.addSeries(lib.LineSeries, Object.assign({ lineWidth: 1 }, options), pane);
      (spec.levels || []).forEach((level) => series.createPriceLine({ price: level, color: "#999", lineStyle: 2, lineWidth: 1, axisLabelVisible: true }));
      const points = [];
      initial.candles.forEach(function (candle, i) {
        const value = spec.values[i];
        if (value !== null && value !== undefined) points.push({ time: T.chartTime(candle.timestamp), value: value });
      });
      series.setData(points);
      lines[name] = series;
      lineLast[name] = points.length ? points[points.length - 1].time : null;
    });
    const allPanes = chart.chart.panes();
    if (allPanes.length > 1) allPanes[0].setStretchFactor(3);
    container.dataset.indicators = String(Object.keys(lines).length);
    document.querySelectorAll("#chart-legend .swatch[data-color]").forEach((swatch) => {
      swatch.style.background = swatch.dataset.color;
    });

    function addIndicators(ms, values) {
      const time = T.chartTime(ms);
      Object.keys(values || {}).forEach(function (name) {
        const value = values[name];
        if (!lines[name] || value === null || value === undefined || Number.isNaN(value)) return;
        if (lineLast[name] !== null && time < lineLast[name]) return; // older: already drawn
        lines[name].update({ time: time, value: value });
        lineLast[name] = time;
      });
    }

    const markers = new Map();
    function addMarker(ms, side, text) {
      const key = ms + ":" + side + ":" + text;
      if (markers.has(key)) return false;
      markers.set(key, T.signalMarker(ms, side, text));
      return true;
    }
    function drawMarkers() { chart.setMarkers(Array.from(markers.values())); }
    initial.markers.forEach((m) => addMarker(m.time_ms, m.side, m.text));
    drawMarkers();

    function closedCandle(candle) {
      if (lastClosed !== null && candle.timestamp < lastClosed) return;
      chart.update(candle);
      lastClosed = candle.timestamp;
      if (forming && forming.timestamp <= candle.timestamp) forming = null;
      document.getElementById("no-candles")?.remove();
    }

    function foldMinute(candle) {
      // The forming bar of the bot's timeframe from 1m candles (closes at the next boundary).
      const bucket = Math.ceil(candle.timestamp / frame) * frame;
      if (lastClosed !== null && bucket <= lastClosed) return;
      if (!forming || forming.timestamp !== bucket) {
        forming = { timestamp: bucket, open: candle.open, high: candle.high, low: candle.low, close: candle.close, minutes: {} };
      } else {
        forming.high = Math.max(forming.high, candle.high);
        forming.low = Math.min(forming.low, candle.low);
        forming.close = candle.close;
      }
      forming.minutes[candle.timestamp] = candle.volume;
      const volume = Object.values(forming.minutes).reduce((a, b) => a + b, 0);
      chart.update({ timestamp: bucket, open: forming.open, high: forming.high, low: forming.low, close: forming.close, volume: volume });
    }

    function onMarket(event) {
      if (event.instrument_id !== bot.instrument_id || !event.candle) return;
      if (event.type === "candle.closed" && event.timeframe === bot.timeframe) {
        closedCandle(event.candle);
      } else if (event.timeframe === "1m" && (event.type === "candle.update" || event.type === "candle.closed")) {
        if (bot.timeframe === "1m") {
          if (lastClosed === null || event.candle.timestamp > lastClosed) chart.update(event.candle);
        } else {
          foldMinute(event.candle);
        }
      }
    }

    // --- decision log --------------------------------------------------------------------------
    const log = document.querySelector("#decision-log tbody");
    function signalRow(signal) {
      const tr = el("tr");
      tr.dataset.signalId = String(signal.signal_id);
      tr.dataset.live = "1";
      const time = el("td");
      time.append(T.timeElement(signal.time_ms));
      const action = el("td");
      action.append(el("span", signal.action, "action-" + signal.action.toLowerCase()));
      const order = el("td");
      if (signal.executed) order.append(el("span", "executed", "badge ok"));
      else order.append(el("span", signal.no_order_reason || "—", "muted"));
      const checks = el("td", null, "wrap");
      (signal.risk_checks || []).forEach(function (check) {
        const span = el("span", (check.passed ? "✓ " : "✗ ") + check.name, "check " + (check.passed ? "passed" : "failed"));
        span.title = check.detail || "";
        checks.append(span, " ");
      });
      if (!(signal.risk_checks || []).length) checks.append(el("span", "—", "muted"));
      tr.append(time, action, el("td", T.num(signal.price, 4), "num"), el("td", T.num(signal.strength, 2), "num"),
        order, el("td", signal.reason, "wrap"), checks);
      return tr;
    }

    function applySignal(signal) {
      if (!log.querySelector('tr[data-signal-id="' + signal.signal_id + '"]')) {
        prependRow(log, signalRow(signal));
      }
      addIndicators(signal.time_ms, signal.indicators);
      if (signal.executed && (signal.action === "BUY" || signal.action === "SELL")) {
        if (addMarker(signal.time_ms, signal.action === "BUY" ? "buy" : "sell", signal.action)) drawMarkers();
      }
    }

    // --- book, orders, trades, equity -----------------------------------------------------------
    const book = { equity: null, cash: null, position: 0, entry_price: null, mark_price: null };
    function setTile(id, text, value) {
      const node = document.getElementById(id);
      node.textContent = text;
      if (value !== undefined) {
        node.classList.remove("pos", "neg");
        const cls = T.pnlClass(value);
        if (cls) node.classList.add(cls);
      }
    }
    function renderBook(unrealized) {
      setTile("equity-value", T.num(book.equity, 2));
      const pnl = book.equity === null ? null : book.equity - bot.capital;
      setTile("pnl-value", T.signed(pnl, 2), pnl);
      setTile("cash-value", T.num(book.cash, 2));
      setTile("position-value", T.num(book.position, 6));
      setTile("entry-value", book.position ? T.num(book.entry_price, 4) : "—");
      setTile("mark-value", T.num(book.mark_price, 4));
      setTile("unrealized-value", T.signed(unrealized, 2), unrealized);
      if (book.dust !== undefined && document.getElementById("dust-value")) {
        setTile("dust-value", T.num(book.dust, 8) + " " + (bot.base || ""));
      }
    }

    const equityContainer = document.getElementById("equity-chart");
    const equityPoints = T.jsonData("bot-equity") || [];
    const equity = T.lineChart(equityContainer, equityPoints);
    let equityLast = equityPoints.length ? equityPoints[equityPoints.length - 1].timestamp : null;
    let equityCount = equityPoints.length;
    // Realised equity (capital + closed trades' P&L): each closed trade adds a point.
    let realized = bot.realized_equity;
    function equityPoint(ms, value) {
      if (ms === null || ms === undefined || value === null) return;
      if (equityLast !== null && ms < equityLast) return;
      equity.series.update({ time: T.chartTime(ms), value: value });
      if (equityLast === null || ms > equityLast) equityCount += 1;
      equityLast = ms;
      equityContainer.dataset.points = String(equityCount);
    }

    const orders = document.querySelector("#orders tbody");
    function applyOrder(order) {
      const existing = orders.querySelector('tr[data-order-id="' + order.id + '"]');
      if (existing) {
        const status = existing.querySelector('[data-field="status"]');
        status.textContent = order.status;
        status.className = "badge " + order.status;
        return;
      }
      const tr = el("tr");
      tr.dataset.orderId = String(order.id);
      const time = el("td");
      time.append(T.timeElement(order.time_ms));
      const status = el("td");
      const badge = el("span", order.status, "badge " + order.status);
      badge.dataset.field = "status";
      status.append(badge);
      const id = el("td");
      id.append(el("code", order.client_order_id));
      tr.append(time, el("td", order.side, "side-" + order.side), el("td", order.type), el("td", order.reason || ""),
        status, el("td", T.num(order.quantity, 6), "num"), el("td", T.num(order.filled_quantity, 6), "num"),
        el("td", T.num(order.price, 4), "num"), feesCell(), id, el("td", order.error || "", "wrap"));
      prependRow(orders, tr);
    }
    function feesCell() {
      const td = el("td", "—", "num");
      td.dataset.field = "fees";
      return td;
    }
    // A fill adds its fee, in the asset the exchange charged, to its order's row.
    function applyFill(orderId, fill) {
      const row = orders.querySelector('tr[data-order-id="' + orderId + '"]');
      if (!row || !fill.fee_cost) return;
      const cell = row.querySelector('[data-field="fees"]');
      const seen = JSON.parse(cell.dataset.fills || "[]");
      if (seen.includes(fill.id)) return;
      seen.push(fill.id);
      cell.dataset.fills = JSON.stringify(seen);
      const parts = JSON.parse(cell.dataset.parts || "{}");
      parts[fill.fee_currency] = (parts[fill.fee_currency] || 0) + fill.fee_cost;
      cell.dataset.parts = JSON.stringify(parts);
      cell.textContent = Object.keys(parts).sort().map((asset) => T.num(parts[asset], 8) + " " + asset).join(", ");
    }

    const trades = document.querySelector("#trades tbody");
    function applyTrade(trade) {
      if (trades.querySelector('tr[data-trade-id="' + trade.id + '"]')) return;
      const tr = el("tr");
      tr.dataset.tradeId = String(trade.id);
      const entry = el("td");
      // trade.closed events say entry_time_ms/exit_time_ms, the snapshot entry_ms/exit_ms.
      const exitMs = trade.exit_time_ms ?? trade.exit_ms;
      entry.append(T.timeElement(trade.entry_time_ms ?? trade.entry_ms));
      const exit = el("td");
      exit.append(T.timeElement(exitMs));
      const pnlClass = "num " + T.pnlClass(trade.pnl);
      tr.append(entry, exit, el("td", trade.side), el("td", T.num(trade.quantity, 6), "num"),
        el("td", T.num(trade.entry_price, 4), "num"), el("td", T.num(trade.exit_price, 4), "num"),
        el("td", T.num(trade.fees, 4), "num"), el("td", T.signed(trade.pnl, 2), pnlClass),
        el("td", trade.return === undefined ? "—" : T.signed(trade.return * 100, 2) + " %", pnlClass),
        el("td", trade.exit_reason));
      prependRow(trades, tr);
      if (trade.exit_reason !== "signal" && addMarker(exitMs, "sell", trade.exit_reason)) drawMarkers();
    }

    // --- streams -------------------------------------------------------------------------------
    const status = new T.LiveStream(data.streams.status, {
      onSnapshot(message) {
        setStatus(message.bot.status, message.bot.status_reason);
        (message.signals || []).forEach(applySignal);
      },
      onEvent(event) {
        if (event.type === "signal.created") applySignal(event);
        else if (event.type === "bot.status") setStatus(event.status, event.message);
      },
    });
    T.bindStreamBadge(status, document.getElementById("stream-state-status"));

    const portfolio = new T.LiveStream(data.streams.portfolio, {
      onSnapshot(message) {
        Object.assign(book, message.portfolio);
        renderBook(message.portfolio.unrealized_pnl);
        (message.orders || []).forEach(applyOrder);
        (message.trades || []).forEach(applyTrade);
      },
      onEvent(event) {
        if (event.type === "portfolio.updated") {
          Object.assign(book, {
            equity: event.equity, cash: event.cash, position: event.position,
            entry_price: event.entry_price, mark_price: event.mark_price,
          });
          if (event.dust !== undefined) book.dust = event.dust;
          // As the server marks it (bots.brokers.position_fields): the entry fee counts.
          const unrealized = event.unrealized_pnl !== undefined ? event.unrealized_pnl : book.position
            ? book.position * (book.mark_price - book.entry_price) - book.position * book.entry_price * bot.fee
            : 0;
          renderBook(unrealized);
        } else if (event.type === "order.updated") {
          applyOrder(event.order);
        } else if (event.type === "fill.created") {
          applyFill(event.order_id, event.fill);
        } else if (event.type === "trade.closed") {
          if (!trades.querySelector('tr[data-trade-id="' + event.trade.id + '"]')) {
            realized += event.trade.pnl;
            equityPoint(event.trade.exit_time_ms, realized);
          }
          applyTrade(event.trade);
        }
      },
    });
    T.bindStreamBadge(portfolio, document.getElementById("stream-state-portfolio"));

    const marketPath = "/ws/market/" + encodeURIComponent(data.streams.market_symbol)
      + "?timeframe=" + encodeURIComponent(bot.timeframe) + "&limit=300";
    const market = new T.LiveStream(marketPath, {
      onSnapshot(message) {
        if (message.instrument_id !== bot.instrument_id) return; // another exchange's candles
        (message.candles || []).forEach((candle) => {
          if (lastClosed === null || candle.timestamp > lastClosed) closedCandle(candle);
        });
      },
      onEvent: onMarket,
    });
    T.bindStreamBadge(market, document.getElementById("stream-state-market"));
  });
})();
