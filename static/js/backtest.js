/* The backtest pages (and what the optimisation pages share with them).
 *
 * Forms (`#backtest-form`, `#optimization-form`, both `form.run-form[data-range-url]`):
 *   - `select#id_strategy` swaps the parameter fieldsets: one `fieldset.strategy-params
 *     [data-strategy=NAME]` per strategy; the chosen one is shown and enabled, the others get
 *     `hidden` and `disabled` (so they are neither focusable nor submitted). Without JavaScript
 *     the server-chosen strategy's fieldset is the enabled one.
 *   - changing `#id_instrument` / `#id_timeframe` asks `data-range-url` for the stored candles'
 *     range, shows it in `#data-range` and fills `#id_start` / `#id_end` (UTC) unless the user
 *     edited them (or the form has `data-period-fixed="1"`: a re-run, a form with errors);
 *     `#use-range` fills them on demand.
 * Run pages (backtest and optimisation detail):
 *   - `#run-live[data-ws]` (only while queued/running): a `Tradeapp.LiveStream` on that path
 *     (`/ws/backtest/{id}` or `/ws/optimization/{id}`); the snapshot's `run` and each
 *     `run.progress` event update `#run-status` (text and `data-status` = status),
 *     `#run-progress` (`<progress>`, 0..1) and `#run-progress-text`; `#stream-state` carries
 *     `data-stream-state` ("live" once the snapshot arrived). When the run finishes the page
 *     reloads to show its result.
 *   - `#equity-chart` / `#drawdown-chart` are drawn from the `equity-data` / `drawdown-data`
 *     JSON blocks (`Tradeapp.lineChart`, drawdown as an area); each sets `data-points`.
 */
(function () {
  "use strict";

  const FINISHED = ["done", "failed", "cancelled"];

  function bindStrategySwitch(form) {
    const select = form.querySelector("#id_strategy");
    if (!select) return;
    const show = () => {
      form.querySelectorAll("fieldset.strategy-params").forEach((fieldset) => {
        const on = fieldset.dataset.strategy === select.value;
        fieldset.hidden = !on;
        fieldset.disabled = !on;
      });
    };
    select.addEventListener("change", show);
    show();
  }

  function utcInputValue(iso) {
    // "2026-01-01T00:00:00+00:00" -> "2026-01-01T00:00" (the inputs are UTC).
    return new Date(iso).toISOString().slice(0, 16);
  }

  function bindCandleRange(form) {
    const url = form.dataset.rangeUrl;
    const instrument = form.querySelector("#id_instrument");
    const timeframe = form.querySelector("#id_timeframe");
    const start = form.querySelector("#id_start");
    const end = form.querySelector("#id_end");
    const note = form.querySelector("#data-range");
    const button = form.querySelector("#use-range");
    if (!url || !instrument || !timeframe || !start || !end) return;
    let range = null;
    // A period the user chose (a re-run, a form shown again with errors) is kept.
    const touched = { value: form.dataset.periodFixed === "1" };
    [start, end].forEach((input) => input.addEventListener("input", () => { touched.value = true; }));

    const fill = () => {
      if (!range || !range.first || !range.last) return;
      start.value = utcInputValue(range.first);
      end.value = utcInputValue(range.last);
    };
    const load = (autofill) => {
      const query = new URLSearchParams({ instrument: instrument.value, timeframe: timeframe.value });
      fetch(url + "?" + query.toString(), { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((response) => (response.ok ? response.json() : null))
        .then((data) => {
          range = data;
          if (!note) return;
          note.textContent = "";
          if (!data || !data.first) {
            note.textContent = "No " + timeframe.value + " candles stored for this instrument.";
            if (button) button.hidden = true;
            return;
          }
          note.append("Stored " + timeframe.value + " candles: ",
            window.Tradeapp.timeElement(Date.parse(data.first)), " – ",
            window.Tradeapp.timeElement(Date.parse(data.last)));
          if (button) button.hidden = false;
          if (autofill && !touched.value) fill();
        })
        .catch(() => { if (note) note.textContent = ""; });
    };
    instrument.addEventListener("change", () => load(true));
    timeframe.addEventListener("change", () => load(true));
    if (button) button.addEventListener("click", () => { fill(); touched.value = false; });
    load(!touched.value);
  }

  function bindRunProgress(section) {
    const path = section && section.dataset.ws;
    if (!path) return null;
    const status = document.getElementById("run-status");
    const bar = document.getElementById("run-progress");
    const text = document.getElementById("run-progress-text");
    let reloading = false;
    let stream = null;
    const apply = (state, progress) => {
      if (state) {
        status.textContent = state;
        status.dataset.status = state;
        status.className = "badge " + state;
      }
      if (typeof progress === "number") {
        bar.value = progress;
        text.textContent = Math.round(progress * 100) + "%";
      }
      if (FINISHED.includes(state) && !reloading) {
        reloading = true;
        if (stream) stream.close();
        window.location.reload();
      }
    };
    stream = new window.Tradeapp.LiveStream(path, {
      onSnapshot: (message) => { if (message.run) apply(message.run.status, message.run.progress); },
      onEvent: (event) => { if (event.type === "run.progress") apply(event.status, event.progress); },
    });
    window.Tradeapp.bindStreamBadge(stream, document.getElementById("stream-state"));
    return stream;
  }

  function drawEquityCharts() {
    const T = window.Tradeapp;
    const equity = document.getElementById("equity-chart");
    const drawdown = document.getElementById("drawdown-chart");
    if (equity && document.getElementById("equity-data")) {
      T.lineChart(equity, T.jsonData("equity-data") || []);
    }
    if (drawdown && document.getElementById("drawdown-data")) {
      T.lineChart(drawdown, T.jsonData("drawdown-data") || [], { area: true });
    }
  }

  window.BacktestPages = { bindStrategySwitch, bindCandleRange, bindRunProgress, drawEquityCharts };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form.run-form").forEach((form) => {
      bindStrategySwitch(form);
      bindCandleRange(form);
    });
    bindRunProgress(document.getElementById("run-live"));
    drawEquityCharts();
  });
})();
