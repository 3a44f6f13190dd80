// Batch dashboard: small progressive enhancements. No inline script anywhere (CSP).
"use strict";

// The CSRF token for a fetch(): the form's own field, else the one htmx sends from <body>.
function csrfTokenIn(container) {
  const input = container && container.querySelector("input[name=csrfmiddlewaretoken]");
  if (input && input.value) return input.value;
  try {
    return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
  } catch (e) {
    return "";
  }
}

// A dialog's problem line: text only (never HTML), hidden while empty.
function showProblemIn(element, text) {
  if (!element) return;
  element.textContent = text;
  element.hidden = !text;
}

// Why a cancel request got no fragment back; `unknown`: what to say when the outcome is unknown.
function cancelProblem(response, unknown) {
  if (response.redirected) return "Your session has ended: reload the page and sign in again. Nothing was sent.";
  if (response.status === 403) return "Refused by the dashboard (HTTP 403): you may not cancel batches, or the page is too old. Reload it.";
  if (response.status === 404) return "This batch is not in the dashboard (HTTP 404). Nothing was sent.";
  return "The dashboard answered HTTP " + response.status + ". " + unknown;
}

// Poll less while the tab is hidden: let one poll in six through (every 30 s at the default 5 s).
(function () {
  let skipped = 0;
  document.addEventListener("htmx:beforeRequest", function (evt) {
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

  function csrfToken() { return csrfTokenIn(dialog()); }

  function updateCount() {
    const reason = part("reason");
    const count = part("count");
    if (reason && count) count.textContent = String(reason.value.length);
  }

  function showProblem(text) { showProblemIn(part("problem"), text); }

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
    return cancelProblem(response, "Whether the cancel went through is unknown: check the audit page.");
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

/* --- theme toggle --- */
// theme.js (in <head>) applied the stored choice before the first paint; this wires the select.
(function () {
  function init() {
    const prefs = document.querySelector("[data-prefs]");
    const select = document.querySelector("[data-theme-select]");
    if (prefs) prefs.hidden = false;
    if (!select || !window.batchTheme) return;
    select.value = window.batchTheme.choice();
    select.addEventListener("change", function () { window.batchTheme.choose(select.value); });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

/* --- keyboard shortcuts --- */
// `/` search, `j`/`k` move a selection through the list's rows, Enter opens it, `?` help, Esc closes
// a dialog. Off while typing in a field, with a modifier held, or behind an open dialog.
(function () {
  let selectedId = "";
  let refocus = false;

  function typing(el) {
    if (!(el instanceof Element)) return false;
    if (el.isContentEditable || el.matches("textarea, select")) return true;
    return el.matches("input") && !el.matches("[type=checkbox], [type=radio], [type=button], [type=submit], [type=reset]");
  }
  function rows() { return Array.from(document.querySelectorAll("table.batches tbody tr[id^='batch-row-']")); }
  function rowLink(row) { return row && row.querySelector("a[href]"); }
  function help() { return document.getElementById("shortcuts-dialog"); }

  function select(row) {
    document.querySelectorAll("tr.kb-selected").forEach(function (r) { r.classList.remove("kb-selected"); });
    if (!row) { selectedId = ""; return; }
    selectedId = row.id;
    row.classList.add("kb-selected");
    row.scrollIntoView({ block: "nearest" });
    const link = rowLink(row);
    if (link) link.focus({ preventScroll: true });
  }

  function move(step) {
    const list = rows();
    if (!list.length) return;
    const current = list.findIndex(function (r) { return r.id === selectedId; });
    const next = current < 0 ? (step > 0 ? 0 : list.length - 1) : Math.min(list.length - 1, Math.max(0, current + step));
    select(list[next]);
  }

  function openHelp() {
    const d = help();
    if (d && !d.open) d.showModal();
  }

  document.addEventListener("keydown", function (evt) {
    if (evt.defaultPrevented || evt.ctrlKey || evt.metaKey || evt.altKey) return;
    const open = document.querySelector("dialog[open]");
    if (evt.key === "Escape") {
      if (open) { evt.preventDefault(); open.close(); }
      return;
    }
    if (open || typing(evt.target)) return;
    if (evt.key === "/") {
      const search = document.querySelector("main input[type=search]");
      if (!search) return;
      evt.preventDefault();
      search.focus();
      search.select();
    } else if (evt.key === "?") {
      evt.preventDefault();
      openHelp();
    } else if (evt.key === "j" || evt.key === "k") {
      evt.preventDefault();
      move(evt.key === "j" ? 1 : -1);
    } else if (evt.key === "Enter" && selectedId) {
      // On the focused link Enter follows it natively; anywhere else it opens the selected batch.
      if (evt.target instanceof Element && evt.target.closest("a, button, input, summary")) return;
      const link = rowLink(document.getElementById(selectedId));
      if (link) { evt.preventDefault(); window.location.assign(link.href); }
    }
  });

  document.addEventListener("click", function (evt) {
    if (!(evt.target instanceof Element)) return;
    if (evt.target.closest("[data-shortcuts-open]")) openHelp();
    else if (evt.target.closest("[data-shortcuts-close]")) { const d = help(); if (d) d.close(); }
  });

  // A poll replaces the selected row: keep the selection (and the focus, if it was there).
  document.addEventListener("htmx:beforeSwap", function (evt) {
    const target = evt.detail && evt.detail.target;
    if (target && selectedId && target.id === selectedId) refocus = target.contains(document.activeElement);
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!selectedId) return;
    const row = document.getElementById(selectedId);
    if (!row) { selectedId = ""; return; }
    row.classList.add("kb-selected");
    if (refocus && (document.activeElement === document.body || !document.activeElement)) {
      const link = rowLink(row);
      if (link) link.focus({ preventScroll: true });
    }
    refocus = false;
  });
})();

/* --- status changes, read out --- */
// Before a polled row or live panel is swapped, note its status ([data-status] inside); after the
// swap, a different one is written into the polite live region in base.html.
(function () {
  const before = {};
  let queue = [];
  let timer = 0;

  function statusOf(el) {
    const holder = el && (el.matches("[data-status]") ? el : el.querySelector("[data-status]"));
    return holder ? holder.getAttribute("data-status") : null;
  }
  function nameOf(el) {
    if (el.id === "batch-live") {
      const title = document.querySelector(".batch-title .mono");
      return title ? title.textContent.trim().replace(/^batch_/, "").slice(0, 10) : "";
    }
    const link = el.querySelector("a.mono");
    return link ? link.textContent.trim() : "";
  }
  function announce(text) {
    const region = document.getElementById("live-status");
    if (!region) return;
    queue.push(text);
    clearTimeout(timer);
    // Emptied first, then filled: the same sentence twice in a row is still read out.
    region.textContent = "";
    timer = setTimeout(function () {
      region.textContent = queue.join(". ");
      queue = [];
    }, 100);
  }

  document.addEventListener("htmx:beforeSwap", function (evt) {
    const target = evt.detail && evt.detail.target;
    if (!target || !target.id || !(target.id === "batch-live" || target.id.indexOf("batch-row-") === 0)) return;
    const status = statusOf(target);
    if (status) before[target.id] = status;
  });
  document.addEventListener("htmx:afterSettle", function () {
    Object.keys(before).forEach(function (id) {
      const fresh = document.getElementById(id);
      const old = before[id];
      delete before[id];
      const now = statusOf(fresh);
      if (fresh && now && now !== old) announce("Batch " + nameOf(fresh) + "… is now " + now.replace(/_/g, " "));
    });
  });
})();

/* --- bulk cancel --- */
// Checkboxes on cancellable rows (kept across row polls), a select-all, and "Cancel all N matching"
// open #bulk-dialog with the exact count; Confirm posts to /batches/cancel/ and puts the progress
// panel (which polls itself) into #bulk-progress-slot.
(function () {
  const picked = new Set();
  let pending = null; // { mode: "selected", ids } or { mode: "filter", filter, expected, opener }
  const LIST_SHOWN = 8;

  function dialog() { return document.getElementById("bulk-dialog"); }
  function part(name) { const d = dialog(); return d && d.querySelector("[data-bulk-" + name + "]"); }
  function parts(name) { const d = dialog(); return d ? Array.from(d.querySelectorAll("[data-bulk-" + name + "]")) : []; }
  function boxes() { return Array.from(document.querySelectorAll("input[data-bulk-pick]")); }

  function csrfToken() { return csrfTokenIn(dialog()); }

  function refresh() {
    const n = picked.size;
    document.querySelectorAll("[data-bulk-open=selected]").forEach(function (button) {
      button.hidden = n === 0;
      const count = button.querySelector("[data-bulk-selected]");
      if (count) count.textContent = String(n);
    });
    const all = document.querySelector("input[data-bulk-all]");
    if (all) {
      const total = boxes().length;
      all.checked = total > 0 && n === total;
      all.indeterminate = n > 0 && n < total;
      all.disabled = total === 0;
    }
  }

  // After any swap: boxes take their state from the selection, and a box that went away (its batch
  // is no longer cancellable, or another page is shown) leaves it, so the count stays exact.
  function sync() {
    const present = boxes();
    present.forEach(function (box) { box.checked = picked.has(box.value); });
    picked.clear();
    present.forEach(function (box) { if (box.checked) picked.add(box.value); });
    refresh();
  }

  function setCount(n) {
    parts("count").forEach(function (el) { el.textContent = String(n); });
    parts("noun").forEach(function (el) { el.textContent = n === 1 ? "batch" : "batches"; });
    const confirm = part("confirm");
    if (confirm) confirm.disabled = n === 0;
  }

  function showProblem(text) { showProblemIn(part("problem"), text); }

  function fillList(ids) {
    const list = part("list");
    if (!list) return;
    list.replaceChildren();
    ids.slice(0, LIST_SHOWN).forEach(function (id) {
      const item = document.createElement("li");
      item.textContent = id.split("/").slice(1).join("/") || id;
      list.appendChild(item);
    });
    if (ids.length > LIST_SHOWN) {
      const more = document.createElement("li");
      more.textContent = "and " + (ids.length - LIST_SHOWN) + " more";
      list.appendChild(more);
    }
    list.hidden = ids.length === 0;
  }

  function open(opener) {
    const d = dialog();
    if (!d) return;
    if (opener.dataset.bulkOpen === "filter") {
      pending = { mode: "filter", filter: opener.dataset.bulkFilter || "", expected: Number(opener.dataset.bulkTotal) || 0, opener: opener };
      part("scope").textContent = "Every cancellable batch matching the current filter, on every page of the list.";
      fillList([]);
    } else {
      pending = { mode: "selected", ids: Array.from(picked) };
      part("scope").textContent = "The batches selected on this page:";
      fillList(pending.ids);
    }
    const n = pending.mode === "filter" ? pending.expected : pending.ids.length;
    if (!n) return;
    setCount(n);
    part("reason").value = "";
    part("reason-count").textContent = "0";
    showProblem("");
    d.showModal();
  }

  function textOf(html) {
    const doc = new DOMParser().parseFromString(html, "text/html"); // parsed, never run or inserted
    const message = doc.querySelector("[data-bulk-message]");
    return (message || doc.body).textContent.trim();
  }

  function problemFor(response) {
    return cancelProblem(response, "Check the audit page before trying again.");
  }

  document.addEventListener("change", function (evt) {
    const el = evt.target;
    if (!(el instanceof HTMLInputElement)) return;
    if (el.matches("[data-bulk-pick]")) {
      if (el.checked) picked.add(el.value); else picked.delete(el.value);
      refresh();
    } else if (el.matches("[data-bulk-all]")) {
      boxes().forEach(function (box) {
        box.checked = el.checked;
        if (el.checked) picked.add(box.value); else picked.delete(box.value);
      });
      refresh();
    }
  });

  document.addEventListener("input", function (evt) {
    if (evt.target instanceof Element && evt.target.matches("[data-bulk-reason]")) {
      part("reason-count").textContent = String(evt.target.value.length);
    }
  });

  document.addEventListener("click", function (evt) {
    if (!(evt.target instanceof Element)) return;
    const opener = evt.target.closest("[data-bulk-open]");
    if (opener) { evt.preventDefault(); open(opener); return; }
    if (evt.target.closest("[data-bulk-keep]")) { evt.preventDefault(); const d = dialog(); if (d) d.close(); return; }
    const dismiss = evt.target.closest("[data-bulk-dismiss]");
    if (dismiss) { const panel = dismiss.closest(".bulk-progress"); if (panel) panel.remove(); }
  });

  document.addEventListener("submit", function (evt) {
    const form = evt.target;
    if (!(form instanceof HTMLFormElement) || !form.matches("[data-bulk-form]")) return;
    evt.preventDefault();
    const confirm = part("confirm");
    if (!pending || !window.fetch || confirm.disabled) return;
    confirm.disabled = true;
    showProblem("");
    const body = new FormData(form);
    if (pending.mode === "filter") {
      body.set("filter", pending.filter);
      body.set("expected", String(pending.expected));
    } else {
      pending.ids.forEach(function (id) { body.append("ids", id); });
    }
    let keepDisabled = false;
    fetch(form.action, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "HX-Request": "true", "X-CSRFToken": csrfToken() },
    })
      .then(function (response) {
        return response.text().then(function (html) {
          if (response.redirected) { showProblem(problemFor(response)); return; }
          if (response.status === 200) {
            const slot = document.getElementById("bulk-progress-slot");
            if (slot && window.htmx) window.htmx.swap(slot, html, { swapStyle: "innerHTML" });
            picked.clear();
            sync();
            dialog().close();
            return;
          }
          if (response.status === 409 && pending && pending.mode === "filter") {
            // The matching set changed: nothing was sent; confirm again with the new exact count.
            const n = Number(response.headers.get("X-Bulk-Count")) || 0;
            pending.expected = n;
            if (pending.opener) {
              pending.opener.dataset.bulkTotal = String(n);
              pending.opener.textContent = "Cancel all " + n + " active " + (n === 1 ? "batch" : "batches") + " matching this filter";
              pending.opener.hidden = n === 0;
            }
            setCount(n);
            keepDisabled = n === 0;
            showProblem(textOf(html));
            return;
          }
          showProblem(response.status === 400 ? textOf(html) : problemFor(response));
        });
      })
      .catch(function () {
        showProblem("The dashboard could not be reached. Check the audit page before trying again.");
      })
      .finally(function () {
        confirm.disabled = keepDisabled;
      });
  });

  document.addEventListener("htmx:afterSettle", sync);
  function init() {
    boxes().forEach(function (box) { if (box.checked) picked.add(box.value); });
    refresh();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
