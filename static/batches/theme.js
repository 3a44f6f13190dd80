// Batch dashboard: the colour theme, set on <html data-theme> before the first paint (loaded in
// <head> without defer, so a dark page never flashes light). The choice (light / dark / system)
// is kept in localStorage; "system" follows prefers-color-scheme, live. app.js wires the toggle.
"use strict";
(function () {
  var KEY = "batch-dashboard-theme";
  var root = document.documentElement;
  var media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function stored() {
    try {
      var value = window.localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : "system";
    } catch (e) {
      return "system"; // storage blocked: follow the system
    }
  }

  function apply(choice) {
    var dark = choice === "dark" || (choice === "system" && !!media && media.matches);
    root.setAttribute("data-theme", dark ? "dark" : "light");
    root.setAttribute("data-theme-choice", choice);
  }

  function choose(choice) {
    if (choice !== "light" && choice !== "dark") choice = "system";
    try {
      if (choice === "system") window.localStorage.removeItem(KEY);
      else window.localStorage.setItem(KEY, choice);
    } catch (e) {
      // not persisted, still applied to this page
    }
    apply(choice);
  }

  apply(stored());
  if (media) {
    var follow = function () { if (stored() === "system") apply("system"); };
    if (media.addEventListener) media.addEventListener("change", follow);
    else if (media.addListener) media.addListener(follow);
  }
  window.batchTheme = { choice: stored, choose: choose };
})();
