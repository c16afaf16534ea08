/* The dashboard (`/`): the bots of the page and the totals, kept live.
 *
 * One WebSocket, `/ws/dashboard?bots=<ids of this page>[&all=1]` (bots.consumers.DashboardConsumer):
 * the snapshot carries each bot's row and the totals; then `bot.status`, `signal.created` and
 * `portfolio.updated` of those bots (and, for staff, `system_events`) update them in place.
 *
 * Stable hooks for tests:
 * - `#stream-state-dashboard`: the stream's state (`data-stream-state="live"` once the snapshot came);
 * - `#dashboard-bots tbody tr[data-bot-id]`, cells `[data-field=status|equity|pnl|pnl_pct|position|
 *   entry_price|unrealized_pnl|last_signal]` (numbers also in `data-value`);
 * - `#total-running`, `#total-bots`, `#total-equity`, `#total-pnl`, `#total-unrealized`;
 * - `#events tbody tr` (newest first; live ones carry `data-live`).
 */
(function () {
  "use strict";
  const T = window.Tradeapp;
  const MAX_EVENTS = 50;

  document.addEventListener("DOMContentLoaded", function () {
    const data = T.jsonData("dashboard-data");
    if (!data) return;
    const rows = {};
    (data.bots || []).forEach((row) => { rows[row.id] = row; });
    const totals = {};
    const badge = document.getElementById("stream-state-dashboard");
    if (!data.bots.length && !data.staff) return; // nothing to follow

    function setNumber(cell, value, places, isSigned) {
      if (!cell) return;
      cell.dataset.value = value === null || value === undefined ? "" : String(value);
      cell.textContent = isSigned ? T.signed(value, places) : T.num(value, places);
      if (isSigned) {
        cell.classList.remove("pos", "neg");
        const cls = T.pnlClass(value);
        if (cls) cell.classList.add(cls);
      }
    }

    function unrealized(row) {
      if (!row.position || row.entry_price === null || row.mark_price === null) return 0;
      // As the server marks it (bots.brokers.position_fields): the entry fee counts.
      return row.position * (row.mark_price - row.entry_price) - row.position * row.entry_price * (row.fee || 0);
    }

    function render(row) {
      const tr = document.querySelector('#dashboard-bots tr[data-bot-id="' + row.id + '"]');
      if (!tr) return;
      const cell = (name) => tr.querySelector('[data-field="' + name + '"]');
      const status = cell("status");
      status.textContent = row.status;
      status.className = "badge " + row.status;
      status.title = row.status_reason || "";
      status.parentElement.dataset.value = row.status;
      row.pnl = row.equity === null || row.capital === null ? null : row.equity - row.capital;
      row.pnl_pct = row.pnl === null || !row.capital ? null : (row.pnl / row.capital) * 100;
      setNumber(cell("equity"), row.equity, 2, false);
      setNumber(cell("pnl"), row.pnl, 2, true);
      setNumber(cell("pnl_pct"), row.pnl_pct, 2, true);
      setNumber(cell("position"), row.position, 6, false);
      setNumber(cell("entry_price"), row.entry_price, 4, false);
      setNumber(cell("unrealized_pnl"), row.unrealized_pnl, 2, true);
      const last = cell("last_signal");
      last.replaceChildren();
      if (row.last_signal) {
        const action = document.createElement("span");
        action.className = "action-" + row.last_signal.action.toLowerCase();
        action.textContent = row.last_signal.action;
        last.append(action, " ", T.timeElement(row.last_signal.time_ms));
      } else {
        const none = document.createElement("span");
        none.className = "muted";
        none.textContent = "none yet";
        last.append(none);
      }
    }

    function renderTotals() {
      document.getElementById("total-running").textContent = String(totals.running);
      document.getElementById("total-bots").textContent = String(totals.bots);
      setNumber(document.getElementById("total-equity"), totals.equity, 2, false);
      setNumber(document.getElementById("total-unrealized"), totals.unrealized, 2, true);
      const pnl = totals.equity - totals.capital;
      const el = document.getElementById("total-pnl");
      setNumber(el, pnl, 2, true);
      if (totals.capital) el.textContent += " (" + T.signed((pnl / totals.capital) * 100, 2) + " %)";
    }

    function addEvent(event) {
      const body = document.querySelector("#events tbody");
      if (!body) return;
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      const tr = document.createElement("tr");
      tr.dataset.live = "1";
      const cells = [0, 1, 2, 3, 4].map(() => document.createElement("td"));
      cells[0].append(T.timeElement(event.ts));
      if (event.bot_id) {
        const link = document.createElement("a");
        link.href = "/bots/" + event.bot_id + "/";
        link.textContent = rows[event.bot_id] ? rows[event.bot_id].name : (event.name || "bot " + event.bot_id);
        cells[1].append(link);
      } else {
        cells[1].textContent = event.owner_id ? "user " + event.owner_id : "—";
      }
      const kind = document.createElement("span");
      const label = event.type === "bot.status" ? event.status : event.type.replace(/^bot\./, "");
      kind.className = "badge " + label;
      kind.textContent = label;
      cells[2].append(kind);
      cells[3].className = "wrap";
      cells[3].textContent = event.message
        || (event.type === "kill_switch" ? event.bots_stopped + " bot(s) stopped, " + event.orders_cancelled + " order(s) cancelled" : "");
      cells[4].textContent = event.actor || "system";
      tr.append(...cells);
      body.prepend(tr);
      while (body.rows.length > MAX_EVENTS) body.deleteRow(body.rows.length - 1);
    }

    function onEvent(event) {
      const row = rows[event.bot_id];
      if (event.channel === "system_events") { addEvent(event); return; }
      if (!row) return;
      if (event.type === "bot.status") {
        if (row.status === "running") totals.running -= 1;
        if (event.status === "running") totals.running += 1;
        row.status = event.status;
        row.status_reason = event.status === "running" ? "" : event.message;
        if (!data.staff) addEvent(event); // staff get it from system_events
      } else if (event.type === "signal.created") {
        row.last_signal = { action: event.action, time_ms: event.time_ms };
      } else if (event.type === "portfolio.updated") {
        const before = { equity: row.equity || 0, unrealized: row.unrealized_pnl || 0 };
        row.equity = event.equity;
        row.position = event.position;
        row.entry_price = event.entry_price;
        row.mark_price = event.mark_price;
        row.unrealized_pnl = unrealized(row);
        totals.equity += row.equity - before.equity;
        totals.unrealized += row.unrealized_pnl - before.unrealized;
      } else {
        return;
      }
      render(row);
      renderTotals();
    }

    const stream = new T.LiveStream(data.stream, {
      onSnapshot(message) {
        (message.bots || []).forEach((row) => { rows[row.id] = row; render(row); });
        const t = message.totals || {};
        Object.assign(totals, {
          running: t.running, bots: t.bots, equity: Number(t.equity), capital: Number(t.capital),
          unrealized: Number(t.unrealized_pnl),
        });
        renderTotals();
      },
      onEvent: onEvent,
    });
    T.bindStreamBadge(stream, badge);
  });
})();
