/* The market page (/markets/<id>/): one instrument's live candlestick chart, a timeframe
 * switcher and its collection status.
 *
 * Stable elements (browser tests):
 *   #price-chart         chart container: data-candles (bars drawn, kept by Tradeapp.candleChart),
 *                        data-timeframe (timeframe shown), data-instrument, data-ws-path,
 *                        data-source ("stream" or "api": where the closed candles came from)
 *   #timeframe           form of buttons [data-timeframe] with aria-pressed="true" on the shown
 *                        one; a click reconnects the stream with that timeframe and rewrites
 *                        ?timeframe= in the address (history.replaceState); without JavaScript
 *                        the buttons submit the form (GET ?timeframe=)
 *   #stream-state        stream badge (Tradeapp.bindStreamBadge): data-stream-state="live" once a
 *                        snapshot arrived
 *   #last-price          close of the newest bar (the one in progress included); data-value
 *   #collection-state, #status-last-tick, #status-last-candle, #status-ticks, #status-rejects,
 *   #status-last-error   collection status, refreshed from every snapshot
 *   #chart-source        a note when the candles come from the API, or the stream failed
 *
 * Stream: /ws/market/{encodeURIComponent(symbol)}?timeframe=TF&limit=300 (marketdata/consumers.py).
 * Its snapshot's candles are those of the symbol's FIRST ACTIVE instrument (`instrument_id`):
 * when that is another exchange's, this page loads its own closed candles from /api/candles/.
 * Events carry `instrument_id` and `timeframe`; only this instrument's are used:
 *   candle.update  the 1m candle in progress (timeframe "1m")
 *   candle.closed  a stored candle of any timeframe (1m, and each higher one as it closes)
 *
 * The bar in progress above 1m: the server streams only the 1m candle in progress, so this page
 * folds the current interval's 1m candles into the higher bar (open of the first, high/low over
 * all, close of the last, volumes summed): the interval's closed minutes are fetched from the API
 * after each snapshot, then candle.update/candle.closed 1m events keep it current. The stored
 * candle replaces the folded bar when candle.closed arrives for the shown timeframe.
 *
 * The status panel has no events of its own: the page asks the stream for a new snapshot every
 * minute (the consumer's `{"type": "snapshot"}` request), which also re-syncs the chart.
 */
(function () {
  "use strict";

  const T = window.Tradeapp;
  const config = T && T.jsonData("market-config");
  const container = document.getElementById("price-chart");
  if (!config || !container) return;

  const switcher = document.getElementById("timeframe");
  const badge = document.getElementById("stream-state");
  const priceEl = document.getElementById("last-price");
  const sourceNote = document.getElementById("chart-source");

  const MINUTE = 60000;
  const INTERVAL_MS = {
    "1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE,
    "1h": 60 * MINUTE, "4h": 240 * MINUTE, "1d": 1440 * MINUTE,
  };
  const REFRESH_MS = 60000;

  const chart = T.candleChart(container);
  let timeframe = config.timeframe;
  let stream = null;
  let current = null; // token of the stream in use
  let generation = 0; // bumped by each snapshot and switch: work of an older one is dropped
  let lastClosed = null; // close time (ms) of the newest closed bar drawn
  let minutes = new Map(); // 1m close time -> 1m candle of the bar in progress (above 1m)
  let loading = true; // closed candles not drawn yet: events wait in `pending`
  let pending = [];
  let fitNext = true; // fit the chart to its data on the next draw (first load, switch)

  // --- helpers ---------------------------------------------------------------------------------
  function streamPath(tf) {
    return "/ws/market/" + encodeURIComponent(config.symbol) +
      "?timeframe=" + encodeURIComponent(tf) + "&limit=" + config.limit;
  }

  /** Close time of the `timeframe` bar holding the 1m candle closing at `ms` (right-aligned). */
  function barClose(ms) {
    const interval = INTERVAL_MS[timeframe];
    return Math.ceil(ms / interval) * interval;
  }

  function note(text) {
    if (!sourceNote) return;
    sourceNote.textContent = text || "";
    sourceNote.hidden = !text;
  }

  function showPrice(candle) {
    if (!priceEl || !candle) return;
    priceEl.textContent = Number(candle.close).toLocaleString(undefined, { maximumFractionDigits: 8 });
    priceEl.dataset.value = String(candle.close);
  }

  function asRow(candle) {
    return {
      timestamp: Number(candle.timestamp), open: Number(candle.open), high: Number(candle.high),
      low: Number(candle.low), close: Number(candle.close), volume: Number(candle.volume || 0),
    };
  }

  /** Closed candles of this instrument with close time >= sinceMs, oldest first (the API). */
  async function fetchCandles(tf, sinceMs) {
    const params = new URLSearchParams({
      instrument: String(config.instrument_id), timeframe: tf,
      since: new Date(sinceMs).toISOString(), page_size: "5000",
    });
    const response = await fetch(config.candles_api + "?" + params.toString(), {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error("candles request failed: HTTP " + response.status);
    const body = await response.json();
    return (body.results || []).map((r) => asRow({
      timestamp: Date.parse(r.close_time), open: r.open, high: r.high, low: r.low,
      close: r.close, volume: r.volume,
    }));
  }

  // --- status panel ----------------------------------------------------------------------------
  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function setTime(id, ms) {
    const el = document.getElementById(id);
    if (el) el.replaceChildren(T.timeElement(ms));
  }

  function showStatus(instruments) {
    const own = (instruments || []).find((i) => i.id === config.instrument_id);
    const c = own && own.collection;
    const state = c ? c.state : "stopped";
    const stateEl = document.getElementById("collection-state");
    if (stateEl) {
      stateEl.textContent = state;
      stateEl.className = "badge " + state;
    }
    setTime("status-last-tick", c ? c.last_tick_ms : null);
    setTime("status-last-candle", c ? c.last_candle_ms : null);
    setText("status-ticks", c ? String(c.ticks) : "0");
    setText("status-rejects", c ? String(c.rejects) : "0");
    const error = document.getElementById("status-last-error");
    if (error) {
      error.textContent = c && c.last_error ? c.last_error : "none";
      error.className = c && c.last_error ? "neg" : "muted";
    }
  }

  // --- chart -----------------------------------------------------------------------------------
  /** Draw the closed bars; keep the viewer's zoom and distance from the right edge on redraws. */
  function drawClosed(rows) {
    const scale = chart.chart.timeScale();
    const range = fitNext ? null : scale.getVisibleLogicalRange();
    const before = chart.count;
    chart.setCandles(rows);
    if (range && before && rows.length) {
      const fromRight = before - 1 - range.to;
      const to = rows.length - 1 - fromRight;
      scale.setVisibleLogicalRange({ from: to - (range.to - range.from), to: to });
    }
    fitNext = false;
    lastClosed = rows.length ? rows[rows.length - 1].timestamp : null;
    for (const ts of Array.from(minutes.keys())) {
      if (lastClosed !== null && barClose(ts) <= lastClosed) minutes.delete(ts);
    }
    if (rows.length) showPrice(rows[rows.length - 1]);
  }

  /** Fold one 1m candle (closed or in progress) into the higher bar in progress. */
  function foldMinute(candle) {
    const bar = barClose(candle.timestamp);
    if (lastClosed !== null && bar <= lastClosed) return; // that bar is closed and drawn
    minutes.set(candle.timestamp, candle);
    let current = -Infinity;
    minutes.forEach((_, ts) => { current = Math.max(current, barClose(ts)); });
    const parts = [];
    for (const [ts, c] of Array.from(minutes.entries())) {
      if (barClose(ts) === current) parts.push(c);
      else minutes.delete(ts); // an earlier interval: its stored candle comes as candle.closed
    }
    parts.sort((a, b) => a.timestamp - b.timestamp);
    const folded = {
      timestamp: current,
      open: parts[0].open,
      high: Math.max.apply(null, parts.map((p) => p.high)),
      low: Math.min.apply(null, parts.map((p) => p.low)),
      close: parts[parts.length - 1].close,
      volume: parts.reduce((sum, p) => sum + p.volume, 0),
    };
    chart.update(folded);
    showPrice(folded);
  }

  function apply(event) {
    if (event.instrument_id !== config.instrument_id || !event.candle) return;
    if (event.type !== "candle.update" && event.type !== "candle.closed") return;
    const candle = asRow(event.candle);
    if (event.timeframe === timeframe) {
      chart.update(candle);
      showPrice(candle);
      if (event.type === "candle.closed") {
        lastClosed = Math.max(lastClosed || 0, candle.timestamp);
        for (const ts of Array.from(minutes.keys())) {
          if (barClose(ts) <= lastClosed) minutes.delete(ts);
        }
      }
    } else if (event.timeframe === "1m" && timeframe !== "1m") {
      foldMinute(candle);
    }
  }

  // --- stream ----------------------------------------------------------------------------------
  async function load(message, gen) {
    const own = message.instrument_id === config.instrument_id;
    let rows;
    if (own) {
      rows = (message.candles || []).map(asRow);
    } else {
      rows = await fetchCandles(timeframe, Date.now() - config.limit * INTERVAL_MS[timeframe]);
      rows = rows.slice(-config.limit);
    }
    if (gen !== generation) return;
    container.dataset.source = own ? "stream" : "api";
    note(own ? "" : "Candles of " + config.exchange + " loaded from the API (the stream's snapshot " +
      "is another exchange's instrument of " + config.symbol + "); live updates from the stream.");
    drawClosed(rows);
    if (timeframe !== "1m") {
      const interval = INTERVAL_MS[timeframe];
      // The current interval's closed minutes (one interval more for clock skew).
      const since = Math.max(lastClosed || 0, barClose(Date.now()) - 2 * interval) + 1;
      const closedMinutes = await fetchCandles("1m", since);
      if (gen !== generation) return;
      closedMinutes.forEach(foldMinute);
    }
  }

  function onSnapshot(message) {
    if (message.timeframe !== undefined && message.timeframe !== timeframe) return;
    const gen = ++generation;
    loading = true;
    showStatus(message.instruments);
    load(message, gen)
      .catch((error) => note("Could not load the candles: " + error.message))
      .finally(() => {
        if (gen !== generation) return;
        loading = false;
        const queued = pending;
        pending = [];
        queued.forEach(apply);
      });
  }

  function onEvent(event) {
    if (loading) pending.push(event);
    else apply(event);
  }

  function connect() {
    if (stream) stream.close();
    loading = true;
    pending = [];
    // Messages of a stream already replaced (a late snapshot after a switch) are dropped.
    const token = {};
    current = token;
    stream = new T.LiveStream(streamPath(timeframe), {
      onSnapshot: (m) => { if (current === token) onSnapshot(m); },
      onEvent: (e) => { if (current === token) onEvent(e); },
      onState: (state, detail) => {
        if (current === token && state === "refused") {
          note("The stream refused the connection (code " + detail + ").");
        }
      },
    });
    T.bindStreamBadge(stream, badge);
  }

  function switchTo(tf) {
    if (!(tf in INTERVAL_MS) || config.timeframes.indexOf(tf) < 0 || tf === timeframe) return;
    timeframe = tf;
    generation += 1;
    minutes = new Map();
    lastClosed = null;
    fitNext = true;
    chart.setCandles([]);
    container.dataset.timeframe = tf;
    container.setAttribute("aria-label", config.symbol + " " + tf + " candlestick chart");
    switcher.querySelectorAll("button[data-timeframe]").forEach((button) => {
      const on = button.dataset.timeframe === tf;
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.classList.toggle("primary", on);
    });
    const url = new URL(window.location.href);
    url.searchParams.set("timeframe", tf);
    window.history.replaceState(null, "", url.toString());
    connect();
  }

  if (switcher) {
    switcher.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-timeframe]");
      if (!button) return;
      event.preventDefault();
      switchTo(button.dataset.timeframe);
    });
    switcher.addEventListener("submit", (event) => event.preventDefault());
  }

  window.setInterval(() => {
    const socket = stream && stream.socket;
    if (socket && socket.readyState === WebSocket.OPEN && stream.seqs !== null) {
      socket.send(JSON.stringify({ type: "snapshot" }));
    }
  }, REFRESH_MS);

  connect();
})();
