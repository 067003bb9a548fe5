// Two fixes to Chainlit 2.12's chat page, loaded as the app's custom_js (.chainlit/config.toml).

// 1. Citations. An answer's [n] is a link to #source-<message id>-<n>, and the Sources element under
// the answer opens that source. The open source of each answer is kept in window.__sourcesOpen, so it
// survives the element being rendered again, and a citation clicked before the element has loaded
// never opens a new tab (Chainlit gives links target="_blank"): the element reads it when it mounts.
(function () {
  window.__sourcesOpen = window.__sourcesOpen || {};
  window.addEventListener(
    "click",
    function (event) {
      const link = event.target && event.target.closest ? event.target.closest('a[href^="#source-"]') : null;
      if (!link) return;
      event.preventDefault();
      event.stopPropagation();
      const target = link.getAttribute("href").slice("#source-".length);
      const cut = target.lastIndexOf("-");
      const anchor = target.slice(0, cut);
      const number = parseInt(target.slice(cut + 1), 10);
      window.__sourcesOpen[anchor] = number;
      window.dispatchEvent(new CustomEvent("open-source", { detail: { anchor, number } }));
    },
    true
  );
})();

// 2. Ratings. Chainlit keeps a thumbs rating only when "Submit" in its comment dialog is pressed:
// closing the dialog with Escape, its X or a click outside drops the rating. Here every way of closing
// the dialog submits it, with the comment if one was typed and without one otherwise.
(function () {
  function openFeedbackDialog() {
    const submit = document.getElementById("submit-feedback");
    return submit ? { submit, dialog: submit.closest('[role="dialog"]') } : null;
  }

  function submitInstead(event, open) {
    event.preventDefault();
    event.stopImmediatePropagation();
    open.submit.click();
  }

  window.addEventListener(
    "keydown",
    function (event) {
      const open = event.key === "Escape" ? openFeedbackDialog() : null;
      if (open) submitInstead(event, open);
    },
    true
  );

  // Outside the dialog: Radix closes it on pointerdown.
  window.addEventListener(
    "pointerdown",
    function (event) {
      const open = openFeedbackDialog();
      if (open && open.dialog && !open.dialog.contains(event.target)) submitInstead(event, open);
    },
    true
  );

  // The dialog's own close button (the X).
  window.addEventListener(
    "click",
    function (event) {
      const open = openFeedbackDialog();
      if (!open || !open.dialog) return;
      const button = event.target.closest ? event.target.closest("button") : null;
      if (button && button !== open.submit && open.dialog.contains(button)) {
        const label = button.querySelector(".sr-only");
        if (label && label.textContent === "Close") submitInstead(event, open);
      }
    },
    true
  );
})();
