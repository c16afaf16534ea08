/* tradeapp's own page script: time zones, live streams, charts, small table helpers.
 *
 * Every page loads this file; page-specific scripts use the `Tradeapp` namespace it defines.
 * No framework: the pages are server-rendered and this only makes them live.
 */
(function () {
  "use strict";

  // --- time: the viewer's time zone in the text, UTC in the tooltip ----------------------------
  const localFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "short",
  });

  function utcText(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  /** A `<time>` element for epoch milliseconds: local text, UTC on hover. */
  function timeElement(ms) {
    const el = document.createElement("time");
    if (ms === null || ms === undefined) { el.textContent = "—"; return el; }
    el.dateTime = new Date(ms).toISOString();
    el.textContent = localFormat.format(new Date(ms));
    el.title = utcText(ms);
    return el;
  }

  /** Rewrite every server-rendered `<time data-local>` (UTC text) into the viewer's zone. */
  function localizeTimes(root) {
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      const ms = Date.parse(el.dateTime);
      if (Number.isNaN(ms)) return;
      el.title = utcText(ms);
      el.textContent = localFormat.format(new Date(ms));
      el.removeAttribute("data-local");
    });
  }

  // --- numbers -----------------------------------------------------------------------------------
  function num(value, places) {
    if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
    return Number(value).toLocaleString(undefined, {
      minimumFractionDigits: places === undefined ? 2 : places,
      maximumFractionDigits: places === undefined ? 2 : places,
    });
  }

  function signed(value, places) {
    if (value === null || value === undefined) return "—";
    const text = num(Math.abs(value), places);
    return (value > 0 ? "+" : value < 0 ? "-" : "") + text;
  }

  function pnlClass(value) {
    return value > 0 ? "pos" : value < 0 ? "neg" : "";
  }

  // --- live streams --------------------------------------------------------------------------------
  /**
   * One WebSocket route of the platform, kept alive.
   *
   * The server sends a snapshot first (`{"type": "snapshot", "streams": {channel: seq}}`), then
   * events, each with its channel's `seq`. An event just below the known seq was published
   * before the snapshot was read and is skipped; one beyond seq + 1 means messages were lost,
   * and one far below means the counter restarted (Redis was restarted): either way the stream
   * asks for a new snapshot (and ignores events until it arrives). A closed socket reconnects with
   * exponential backoff and jitter (0.5 s doubling to 30 s), and reconnecting brings a snapshot.
   * Close codes 4401/4403/4404/4400 are refusals: no reconnect.
   *
   * handlers: onSnapshot(msg), onEvent(event), onState(state, detail) with state one of
   * "connecting", "live", "resyncing", "reconnecting", "refused".
   */
  const DUPLICATE_WINDOW = 100;

  class LiveStream {
    constructor(path, handlers) {
      this.path = path;
      this.handlers = handlers || {};
      this.seqs = null;
      this.attempt = 0;
      this.closedByUs = false;
      this.gaps = 0;
      this.connect();
    }

    url() {
      const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      return scheme + "//" + window.location.host + this.path;
    }

    state(name, detail) {
      this.stateName = name;
      document.dispatchEvent(new CustomEvent("tradeapp:stream", { detail: { path: this.path, state: name } }));
      if (this.handlers.onState) this.handlers.onState(name, detail);
    }

    connect() {
      this.state(this.attempt ? "reconnecting" : "connecting");
      this.seqs = null;
      const socket = new WebSocket(this.url());
      this.socket = socket;
      socket.onmessage = (message) => this.receive(JSON.parse(message.data));
      socket.onclose = (event) => {
        if (this.closedByUs) return;
        if (event.code >= 4400 && event.code < 4500) {
          this.state("refused", event.code);
          return;
        }
        const delay = Math.min(30000, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
        this.attempt += 1;
        this.state("reconnecting", Math.round(delay));
        this.timer = window.setTimeout(() => this.connect(), delay);
      };
    }

    receive(message) {
      if (message.type === "snapshot") {
        this.seqs = Object.assign({}, message.streams || {});
        this.attempt = 0;
        this.state("live");
        if (this.handlers.onSnapshot) this.handlers.onSnapshot(message);
        return;
      }
      if (this.seqs === null) return; // waiting for a snapshot: it will contain this event
      const channel = message.channel;
      if (channel !== undefined && typeof message.seq === "number" && channel in this.seqs) {
        const known = this.seqs[channel];
        // Just behind the snapshot's seq: published before it was read, so already in it.
        if (message.seq <= known && known - message.seq < DUPLICATE_WINDOW) return;
        // Ahead by more than one (lost messages) or far behind (the counter restarted with
        // Redis): the state may have moved without us.
        if (message.seq !== known + 1) {
          this.resync(channel, known, message.seq);
          return;
        }
        this.seqs[channel] = message.seq;
      }
      if (this.handlers.onEvent) this.handlers.onEvent(message);
    }

    /** Messages were lost (or the sequence restarted): reload the snapshot. */
    resync(channel, known, got) {
      this.gaps += 1;
      this.seqs = null;
      this.state("resyncing", { channel: channel, expected: known + 1, got: got });
      if (this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify({ type: "snapshot" }));
      }
    }

    close() {
      this.closedByUs = true;
      window.clearTimeout(this.timer);
      if (this.socket) this.socket.close();
    }
  }

  /** Show a stream's state in an element (`data-stream-state`), for people and for tests. */
  function bindStreamBadge(stream, element) {
    if (!element) return;
    const show = (state) => {
      element.textContent = state;
      element.dataset.streamState = state;
      element.className = "badge stream-" + state;
    };
    show(stream.stateName || "connecting");
    document.addEventListener("tradeapp:stream", (event) => {
      if (event.detail.path === stream.path) show(event.detail.state);
    });
  }

  // --- charts (lightweight-charts, served from static/vendor) --------------------------------
  function chartLibrary() {
    if (!window.LightweightCharts) throw new Error("lightweight-charts is not loaded");
    return window.LightweightCharts;
  }

  const darkScheme = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;

  const tickFormats = [
    { year: "numeric" },                                  // Year
    { month: "short" },                                   // Month
    { day: "numeric", month: "short" },                   // DayOfMonth
    { hour: "2-digit", minute: "2-digit", hour12: false },  // Time
    { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false },  // TimeWithSeconds
  ].map((format) => new Intl.DateTimeFormat(undefined, format));

  /** An axis label in the viewer's zone (`TickMarkType`: 0 year ... 4 time with seconds). */
  function localTickMark(time, type) {
    const format = tickFormats[type] || tickFormats[3];
    return format.format(new Date(Number(time) * 1000));
  }

  function baseChart(container, options) {
    const lib = chartLibrary();
    const chart = lib.createChart(container, Object.assign({
      autoSize: true,
      layout: {
        background: { color: "transparent" },
        textColor: darkScheme ? "#d0d4dc" : "#222",
        attributionLogo: true,
      },
      grid: {
        vertLines: { color: darkScheme ? "#2a2e39" : "#eceff4" },
        horzLines: { color: darkScheme ? "#2a2e39" : "#eceff4" },
      },
      // The library works in UTC seconds; its labels (crosshair and axis) are written in the
      // viewer's zone, as every other time on the pages.
      localization: { timeFormatter: (t) => localFormat.format(new Date(t * 1000)) },
      timeScale: { timeVisible: true, secondsVisible: false, tickMarkFormatter: localTickMark },
    }, options || {}));
    return chart;
  }

  /** Epoch ms -> the chart's time (UTC seconds). */
  function chartTime(ms) {
    return Math.floor(ms / 1000);
  }

  /**
   * A candlestick chart with optional indicator lines and markers. Returns
   * `{chart, candles, setCandles(rows), update(row), addLine(name, color), setMarkers(list)}` with
   * rows `{timestamp, open, high, low, close, volume}` (timestamp = close time in ms).
   */
  function candleChart(container) {
    const lib = chartLibrary();
    const chart = baseChart(container);
    const candles = chart.addSeries(lib.CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
      wickUpColor: "#26a69a", wickDownColor: "#ef5350",
    });
    const volume = chart.addSeries(lib.HistogramSeries, {
      priceFormat: { type: "volume" }, priceScaleId: "volume", color: "rgba(120,120,160,0.35)",
    });
    chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.82, bottom: 0 } });
    const markers = lib.createSeriesMarkers(candles, []);
    const lines = {};
    const palette = ["#2962ff", "#ff9800", "#9c27b0", "#00897b", "#795548", "#e91e63"];
    let last = null;

    function toBar(row) {
      return { time: chartTime(row.timestamp), open: row.open, high: row.high, low: row.low, close: row.close };
    }
    return {
      chart: chart,
      candles: candles,
      count: 0,
      setCandles(rows) {
        candles.setData(rows.map(toBar));
        volume.setData(rows.map((r) => ({ time: chartTime(r.timestamp), value: r.volume || 0 })));
        this.count = rows.length;
        last = rows.length ? rows[rows.length - 1].timestamp : null;
        container.dataset.candles = String(this.count);
        chart.timeScale().fitContent();
      },
      update(row) {
        if (last !== null && row.timestamp < last) return; // an older bar: the snapshot has it
        candles.update(toBar(row));
        volume.update({ time: chartTime(row.timestamp), value: row.volume || 0 });
        if (last === null || row.timestamp > last) this.count += 1;
        last = row.timestamp;
        container.dataset.candles = String(this.count);
      },
      line(name) {
        if (!lines[name]) {
          const color = palette[Object.keys(lines).length % palette.length];
          lines[name] = chart.addSeries(lib.LineSeries, {
            color: color, lineWidth: 1, title: name, priceLineVisible: false, lastValueVisible: false,
          });
        }
        return lines[name];
      },
      setLine(name, points) {
        this.line(name).setData(points.map((p) => ({ time: chartTime(p.timestamp), value: p.value })));
      },
      addLinePoint(name, ms, value) {
        if (value === null || value === undefined || Number.isNaN(value)) return;
        this.line(name).update({ time: chartTime(ms), value: value });
      },
      setMarkers(list) {
        markers.setMarkers(list.slice().sort((a, b) => a.time - b.time));
        container.dataset.markers = String(list.length);
      },
    };
  }

  /** A marker for a trade decision (`buy`/`sell`/`exit`) at epoch ms. */
  function signalMarker(ms, action, text) {
    const buy = action === "buy";
    return {
      time: chartTime(ms),
      position: buy ? "belowBar" : "aboveBar",
      color: buy ? "#26a69a" : "#ef5350",
      shape: buy ? "arrowUp" : "arrowDown",
      text: text || action,
    };
  }

  /** A line chart (equity) or, with `area: true`, a filled one (drawdown). */
  function lineChart(container, points, options) {
    const lib = chartLibrary();
    const chart = baseChart(container, { rightPriceScale: { borderVisible: false } });
    const opts = options || {};
    const series = opts.area
      ? chart.addSeries(lib.AreaSeries, {
          lineColor: opts.color || "#ef5350", topColor: "rgba(239,83,80,0.05)",
          bottomColor: "rgba(239,83,80,0.4)", lineWidth: 1, invertFilledArea: true,
        })
      : chart.addSeries(lib.LineSeries, { color: opts.color || "#2962ff", lineWidth: 2 });
    series.setData(points.map((p) => ({ time: chartTime(p.timestamp), value: p.value })));
    chart.timeScale().fitContent();
    container.dataset.points = String(points.length);
    return { chart: chart, series: series };
  }

  // --- tables ------------------------------------------------------------------------------------
  /** Click (or Enter on) a `th[data-sort]` header to sort its table by that column. */
  function sortableTables(root) {
    (root || document).querySelectorAll("table.sortable").forEach(function (table) {
      table.querySelectorAll("th[data-sort]").forEach(function (th, index) {
        th.tabIndex = 0;
        th.setAttribute("role", "button");
        const column = Array.prototype.indexOf.call(th.parentNode.children, th);
        const sort = () => {
          const descending = th.getAttribute("aria-sort") !== "descending";
          table.querySelectorAll("th[data-sort]").forEach((h) => h.removeAttribute("aria-sort"));
          th.setAttribute("aria-sort", descending ? "descending" : "ascending");
          const body = table.tBodies[0];
          const rows = Array.from(body.rows);
          const numeric = th.dataset.sort === "number";
          rows.sort(function (a, b) {
            const x = a.cells[column].dataset.value ?? a.cells[column].textContent.trim();
            const y = b.cells[column].dataset.value ?? b.cells[column].textContent.trim();
            let order = numeric ? (parseFloat(x) || -Infinity) - (parseFloat(y) || -Infinity) : x.localeCompare(y);
            return descending ? -order : order;
          });
          rows.forEach((row) => body.appendChild(row));
        };
        th.addEventListener("click", sort);
        th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
        void index;
      });
    });
  }

  /** `<form data-confirm="question">`: ask before submitting (start/stop, cancel, delete). */
  function confirmForms(root) {
    (root || document).querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  /** JSON from a `<script type="application/json" id=...>` block (`json_script`). */
  function jsonData(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  /** The CSRF token of the page (for fetch() POSTs to the API with the session). */
  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  window.Tradeapp = {
    LiveStream, bindStreamBadge, timeElement, localizeTimes, num, signed, pnlClass,
    candleChart, lineChart, signalMarker, chartTime, sortableTables, confirmForms, jsonData, csrfToken,
  };

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    sortableTables(document);
    confirmForms(document);
  });
})();
