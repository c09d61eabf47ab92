// Keyboard labeling for the compare page (comparisons and accuracy ratings). The page works without this file (plain form
// posts); this adds keys, the copy-highlight toggle, the timer and double-submit protection.
(function () {
  "use strict";
  const form = document.getElementById("label-form");
  if (!form) return;
  const k = Number(form.dataset.k);
  let submitting = false;
  // Accuracy-rating tasks (one sample): a accurate, i inaccurate, u unsure.
  const RATING_KEYS = { a: "accurate", i: "inaccurate", u: "unsure" };

  function submitWith(button) {
    if (!button || submitting) return;
    form.requestSubmit(button);
  }

  // One submission per page: a double click or a held key must not post twice
  // (the server would answer 409 for the second, but the labeler should never see that).
  form.addEventListener("submit", function (event) {
    if (submitting) { event.preventDefault(); return; }
    submitting = true;
    setTimeout(function () {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }, 0);
  });

  const toggle = document.getElementById("copy-toggle");
  function applyHighlight(on) {
    document.body.classList.toggle("show-copied", on);
    toggle.checked = on;
    try { localStorage.setItem("lmpref.showCopied", on ? "1" : "0"); } catch (e) { /* private mode */ }
  }
  toggle.addEventListener("change", function () { applyHighlight(toggle.checked); });
  try { applyHighlight(localStorage.getItem("lmpref.showCopied") === "1"); } catch (e) { applyHighlight(false); }

  // Enter in the flag field flags the task (instead of choosing sample 1, the form's first button).
  const flag = document.getElementById("flag");
  flag.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      if (flag.value.trim()) submitWith(document.getElementById("flag-button"));
    }
  });

  // Shortcuts can be switched off (screen-reader users, or anyone who types by accident);
  // the choice is kept in this browser.
  const keysToggle = document.getElementById("keys-toggle");
  function applyKeys(on) {
    keysToggle.checked = on;
    document.querySelectorAll("[aria-keyshortcuts], [data-keys]").forEach(function (el) {
      if (on && el.dataset.keys) el.setAttribute("aria-keyshortcuts", el.dataset.keys);
      if (!on) { el.dataset.keys = el.getAttribute("aria-keyshortcuts"); el.removeAttribute("aria-keyshortcuts"); }
    });
    try { localStorage.setItem("lmpref.keys", on ? "1" : "0"); } catch (e) { /* private mode */ }
  }
  keysToggle.addEventListener("change", function () { applyKeys(keysToggle.checked); });
  try { applyKeys(localStorage.getItem("lmpref.keys") !== "0"); } catch (e) { applyKeys(true); }

  document.addEventListener("keydown", function (event) {
    const tag = (event.target.tagName || "").toLowerCase();
    const typing = tag === "input" || tag === "textarea" || tag === "select" || event.target.isContentEditable;
    // Esc leaves a text field, so the next key is a shortcut again (the text stays).
    if (typing && event.key === "Escape") { event.target.blur(); return; }
    if (typing && event.target.type !== "checkbox") return;
    if (!keysToggle.checked) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const n = Number(event.key);
    if (Number.isInteger(n) && n >= 1 && n <= k) {
      submitWith(document.querySelector("#sample-" + n + " button.choose"));
    } else if (form.dataset.kind === "accuracy" && RATING_KEYS[event.key]) {
      submitWith(document.getElementById("rate-" + RATING_KEYS[event.key]));
    } else if (event.key === "t") {
      submitWith(document.getElementById("tie-button"));
    } else if (event.key === "s") {
      submitWith(document.getElementById("skip-button"));
    } else if (event.key === "f") {
      event.preventDefault();  // keep the "f" out of the field we focus
      document.getElementById("notes").open = true;
      flag.focus();
    } else if (event.key === "n") {
      event.preventDefault();  // keep the "n" out of the field we focus
      document.getElementById("notes").open = true;
      document.getElementById("critique").focus();
    } else if (event.key === "c") {
      applyHighlight(!toggle.checked);
    } else {
      return;
    }
  });

  const timer = document.getElementById("timer");
  const start = Date.now() - 1000 * Number(timer.dataset.elapsed || 0);
  setInterval(function () {
    timer.textContent = Math.floor((Date.now() - start) / 1000) + "s";
  }, 1000);
})();
