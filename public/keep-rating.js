// Chainlit 2.12 keeps a thumbs rating only when "Submit" in its comment dialog is pressed: closing the
// dialog with Escape, its X or a click outside drops the rating. Here every way of closing the dialog
// submits it, with the comment if one was typed and without one otherwise.
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
      if (button && button !== open.submit && open.dialog.contains(button) && !button.closest("form")) {
        const label = button.querySelector(".sr-only");
        if (label && label.textContent === "Close") submitInstead(event, open);
      }
    },
    true
  );
})();
