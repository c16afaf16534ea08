/* The bot form (`/bots/new/`): show only the chosen strategy's parameters.
 *
 * Every strategy's parameters are on the page, each in `fieldset.strategy-params` with
 * `data-strategy="<name>"` (id `params-<name>`); without JavaScript they all show and the server
 * reads only the chosen strategy's. Here the others are hidden and disabled (a disabled input is
 * neither submitted nor in the tab order), and changing `#id_strategy` swaps them, keyboard
 * included (arrow keys on the select). The URL's `?strategy=` follows, so a reload keeps it.
 */
(function () {
  "use strict";

  function show(name) {
    document.querySelectorAll("fieldset.strategy-params").forEach(function (fieldset) {
      const chosen = fieldset.dataset.strategy === name;
      fieldset.hidden = !chosen;
      fieldset.disabled = !chosen;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const select = document.getElementById("id_strategy");
    if (!select) return;
    show(select.value);
    select.addEventListener("change", function () {
      show(select.value);
      const url = new URL(window.location.href);
      url.searchParams.set("strategy", select.value);
      window.history.replaceState(null, "", url);
    });
  });
})();
