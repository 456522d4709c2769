// Shared by the status and chat pages: the API key, fetch with it, the login form, formatting.
// The key lives in this browser's localStorage and travels only as `Authorization: Bearer`,
// never in a URL (URLs end up in logs and history).
"use strict";

const Covey = (() => {
  const KEY_NAME = "covey.apiKey";
  const loginWaiters = [];

  function storedKey() {
    try { return localStorage.getItem(KEY_NAME) || ""; } catch { return ""; }
  }

  function withKey(headers) {
    const all = { ...(headers || {}) };
    const key = storedKey();
    if (key) all.Authorization = "Bearer " + key;
    return all;
  }

  class NeedsKey extends Error {}

  /** fetch() with the stored key; a 401 opens the login form and throws NeedsKey. */
  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: withKey(options.headers) });
    if (response.status === 401) {
      showLogin(storedKey() ? "This node refused that key. Check it and try again." : "");
      throw new NeedsKey("this node needs an API key");
    }
    return response;
  }

  /** Resolves once the user has entered a key (the caller then retries). */
  function loggedIn() {
    return new Promise((resolve) => loginWaiters.push(resolve));
  }

  function showLogin(message) {
    let box = document.getElementById("login");
    if (!box) {
      box = document.createElement("div");
      box.id = "login";
      box.className = "login-backdrop";
      box.innerHTML = `
        <form class="login card" autocomplete="off">
          <h2>This node needs an API key</h2>
          <p class="muted">It was started with <code>--api-key</code>. The key stays in this
            browser and is sent as <code>Authorization: Bearer</code>.</p>
          <p class="login-error" role="alert"></p>
          <label for="login-key">API key</label>
          <input id="login-key" name="key" type="password" required spellcheck="false">
          <button class="primary" type="submit">Unlock</button>
        </form>`;
      box.querySelector("form").addEventListener("submit", (event) => {
        event.preventDefault();
        const key = box.querySelector("input").value.trim();
        if (!key) return;
        try { localStorage.setItem(KEY_NAME, key); } catch { /* private mode: session only */ }
        box.hidden = true;
        updateForget();
        loginWaiters.splice(0).forEach((resolve) => resolve());
      });
      document.body.append(box);
    }
    box.querySelector(".login-error").textContent = message || "";
    const wasHidden = box.hidden || !box.isConnected;
    box.hidden = false;
    if (wasHidden) box.querySelector("input").value = "";
    box.querySelector("input").focus();
  }

  function updateForget() {
    const button = document.getElementById("forget-key");
    if (button) button.hidden = !storedKey();
  }

  function wireForget() {
    const button = document.getElementById("forget-key");
    if (!button) return;
    button.addEventListener("click", () => {
      try { localStorage.removeItem(KEY_NAME); } catch { /* nothing stored */ }
      location.reload();
    });
    updateForget();
  }

  // ---- formatting: missing numbers are words, never 0 ------------------------------------

  const NONE = "no measurement yet";

  function esc(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => (
      { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function bytes(n) {
    if (!isNum(n)) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
  }

  function ms(v) {
    if (!isNum(v)) return null;
    return v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`;
  }

  function rate(v) {
    return isNum(v) ? `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} tok/s` : null;
  }

  function duration(seconds) {
    if (!isNum(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  const ago = (seconds) => (isNum(seconds) ? `${duration(seconds)} ago` : "");

  const shortId = (id) => String(id || "").slice(0, 8);

  return { api, NeedsKey, loggedIn, wireForget, storedKey, esc, isNum, bytes, ms, rate,
           duration, ago, shortId, NONE };
})();
