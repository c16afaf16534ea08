/* The optimisation pages (loaded after backtest.js, which handles the strategy fieldsets, the
 * candle range, the live progress and the equity charts).
 *
 * Form (`#optimization-form`): `select#id_method` shows the options of the chosen method — the
 * blocks `[data-method=random]` (combinations, seed) and `[data-method=walk_forward]` (in-sample
 * and out-of-sample bars) are hidden and disabled unless their method is chosen.
 * Detail: `#heatmap` (`table.heatmap`, at most 60 x 60 cells `td.cell[data-x][data-y][data-value]`
 * whose labels may be ranges `first–last`, classes `h0`..`h9` worst..best, `empty` for a refused
 * combination), `#results-table` (one page of the ranked combinations, rows
 * `tr[data-result-id]`; its headings' links `a[data-server-sort]` sort every combination on the
 * server), `nav.pager` (pages of the table), `#backtest-best` (link to the pre-filled
 * backtest form), `#walk-forward-table` (rows `tr[data-window]`), `#equity-chart` /
 * `#drawdown-chart` for a walk-forward run's stitched out-of-sample equity.
 */
(function () {
  "use strict";

  function bindMethodSwitch(form) {
    const select = form.querySelector("#id_method");
    if (!select) return;
    const show = () => {
      form.querySelectorAll("[data-method]").forEach((block) => {
        const on = block.dataset.method === select.value;
        block.hidden = !on;
        block.querySelectorAll("input, select, textarea").forEach((input) => { input.disabled = !on; });
      });
    };
    select.addEventListener("change", show);
    show();
  }

  /** The results table shows one page of a ranking done on the server: a heading with a
   * server-sort link must follow the link, not re-sort the page's rows in place (app.js binds
   * every `table.sortable` heading), and is reached by its link alone from the keyboard. */
  function serverSortHeadings(table) {
    table.querySelectorAll("th a[data-server-sort]").forEach(function (link) {
      const th = link.closest("th");
      th.removeAttribute("tabindex");
      th.removeAttribute("role");
      ["click", "keydown"].forEach((type) => link.addEventListener(type, (e) => e.stopPropagation()));
      th.addEventListener("click", function (event) {
        if (event.target === th) { event.stopImmediatePropagation(); link.click(); }
      }, true);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("optimization-form");
    if (form) bindMethodSwitch(form);
    const results = document.getElementById("results-table");
    if (results) serverSortHeadings(results);
  });
})();
