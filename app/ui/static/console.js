// The console's only script (CSP: script-src 'self'). It copies a new secret to the clipboard
// and asks before a revoke; every page works without it.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent).then(function () {
    button.textContent = "Copied";
  });
});
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form.classList.contains("confirm") && !window.confirm(form.getAttribute("data-confirm"))) {
    event.preventDefault();
  }
});
