// Batch dashboard: small progressive enhancements. No inline script anywhere (CSP).
"use strict";

// Poll less while the tab is hidden: let one poll in six through (every 30 s at the default 5 s).
(function () {
  let skipped = 0;
  document.addEventListener("htmx:beforeRequest", function (evt) {
    const trigger = evt.detail.requestConfig && evt.detail.requestConfig.triggeringEvent;
    const isPoll = evt.detail.elt && evt.detail.elt.hasAttribute("data-poll");
    if (!isPoll || !document.hidden) return;
    skipped += 1;
    if (skipped % 6 !== 0) evt.preventDefault();
  });
})();

/* --- cancel --- */
// One shared <dialog id="cancel-dialog"> (outside the polled rows, so a poll cannot close it) asks
// for every Cancel button. The button carries data-cancel-url, data-batch-id, data-where and
// data-target-id; Confirm posts the dialog's form and swaps the answer into that element.
//
// fetch + htmx.swap rather than htmx.ajax: htmx resolves the target when the request starts, and a
// poll may replace the row while a slow upstream answers; the answer must land in the row that is
// on the page when it arrives, looked up by id then.
(function () {
  let pending = null; // { url, targetId, where } of the button that opened the dialog
  const FEEDBACK_KEEP_MS = 120000;

  function dialog() { return document.getElementById("cancel-dialog"); }
  function part(name) { const d = dialog(); return d && d.querySelector("[data-cancel-" + name + "]"); }

  function csrfToken() {
    const input = dialog() && dialog().querySelector("input[name=csrfmiddlewaretoken]");
    if (input && input.value) return input.value;
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function updateCount() {
    const reason = part("reason");
    const count = part("count");
    if (reason && count) count.textContent = String(reason.value.length);
  }

  function showProblem(text) {
    const problem = part("problem");
    if (!problem) return;
    problem.textContent = text; // text, never HTML
    problem.hidden = !text;
  }

  function openDialog(opener) {
    const d = dialog();
    if (!d) return;
    pending = { url: opener.dataset.cancelUrl, targetId: opener.dataset.targetId, where: opener.dataset.where };
    const form = part("form");
    form.action = pending.url;
    part("where").value = pending.where || "detail";
    part("batch-id").textContent = opener.dataset.batchId || "";
    part("reason").value = "";
    part("confirm").disabled = false;
    updateCount();
    showProblem("");
    d.showModal();
  }

  function closeDialog() {
    const d = dialog();
    if (d && d.open) d.close();
  }

  document.addEventListener("click", function (evt) {
    if (!(evt.target instanceof Element)) return;
    const opener = evt.target.closest("[data-cancel-url]");
    if (opener) {
      evt.preventDefault();
      openDialog(opener);
      return;
    }
    if (evt.target.closest("[data-cancel-keep]")) {
      evt.preventDefault();
      closeDialog();
      return;
    }
    const dismiss = evt.target.closest("[data-cancel-dismiss]");
    if (dismiss) {
      const feedback = dismiss.closest(".cancel-feedback");
      if (feedback) feedback.remove();
    }
  });

  document.addEventListener("input", function (evt) {
    if (evt.target instanceof Element && evt.target.matches("[data-cancel-reason]")) updateCount();
  });

  function problemFor(response) {
    if (response.redirected) return "Your session has ended: reload the page and sign in again. Nothing was sent.";
    if (response.status === 403) return "Refused by the dashboard (HTTP 403): you may not cancel batches, or the page is too old. Reload it.";
    if (response.status === 404) return "This batch is not in the dashboard (HTTP 404). Nothing was sent.";
    return "The dashboard answered HTTP " + response.status + ". Whether the cancel went through is unknown: check the audit page.";
  }

  document.addEventListener("submit", function (evt) {
    const form = evt.target;
    if (!(form instanceof HTMLFormElement) || !form.matches("[data-cancel-form]")) return;
    const confirm = part("confirm");
    const target = pending && document.getElementById(pending.targetId);
    if (!pending || !target || !window.htmx || !window.fetch) {
      // Nothing to swap into: let the browser post the form; the answer is a redirect with a message.
      if (confirm) setTimeout(function () { confirm.disabled = true; }, 0);
      return;
    }
    evt.preventDefault();
    if (confirm.disabled) return; // a second click while the first is on its way
    confirm.disabled = true;
    showProblem("");
    const request = pending;
    fetch(request.url, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "HX-Request": "true", "X-CSRFToken": csrfToken() },
    })
      .then(function (response) {
        return response.text().then(function (html) {
          // 200: the fragment with the outcome; 400: the fragment with what was wrong with the form.
          if (response.redirected || (response.status !== 200 && response.status !== 400)) {
            showProblem(problemFor(response));
            return;
          }
          const current = document.getElementById(request.targetId);
          if (current) window.htmx.swap(current, html, { swapStyle: "outerHTML" });
          closeDialog();
        });
      })
      .catch(function () {
        showProblem("The dashboard could not be reached. Whether the cancel went through is unknown: check the audit page.");
      })
      .finally(function () {
        confirm.disabled = false;
      });
  });

  // A poll re-renders the row without the outcome of a cancel: carry it over for a while, so
  // there is time to read (and copy the request id of) an upstream error.
  const carried = {};
  document.addEventListener("htmx:beforeSwap", function (evt) {
    const target = evt.detail && evt.detail.target;
    if (!target || !target.id) return;
    const feedback = target.querySelector(".cancel-feedback");
    if (!feedback) return;
    if (!feedback.dataset.shownAt) feedback.dataset.shownAt = String(Date.now());
    if (Date.now() - Number(feedback.dataset.shownAt) < FEEDBACK_KEEP_MS) carried[target.id] = feedback;
  });
  document.addEventListener("htmx:afterSettle", function (evt) {
    const fresh = evt.target;
    if (!(fresh instanceof Element) || !fresh.id || !carried[fresh.id]) return;
    const feedback = carried[fresh.id];
    delete carried[fresh.id];
    const slot = fresh.querySelector(".cancel-controls");
    if (slot && !slot.querySelector(".cancel-feedback")) slot.appendChild(feedback);
  });
})();
