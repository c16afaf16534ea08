/* The optimisation pages (loaded after backtest.js, which handles the strategy fieldsets, the
 * candle range, the live progress and the equity charts).
 *
 * Form (`#optimization-form`): `select#id_method` shows the options of the chosen method — the
 * blocks `[data-method=random]` (combinations, seed) and `[data-method=walk_forward]` (in-sample
 * and out-of-sample bars) are hidden and disabled unless their method is chosen.
 * Detail: `#heatmap` (`table.heatmap`, cells `td.cell[data-x][data-y][data-value]`, classes
 * `h0`..`h9` worst..best, `empty` for a refused combination), `#results-table`
 * (`table.sortable`, rows `tr[data-result-id]`), `#backtest-best` (link to the pre-filled
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

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("optimization-form");
    if (form) bindMethodSwitch(form);
  });
})();
