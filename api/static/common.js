// Shared by the dashboard pages: the API token (kept in localStorage), fetch helpers, formatting.
"use strict";

const Slim = (() => {
  const TOKEN_KEY = "slimscout.token";
  const POLL_MS = 2000;

  function token() {
    return localStorage.getItem(TOKEN_KEY) || "";
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h["Authorization"] = "Bearer " + t;
    return h;
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
      this.detail = detail;
    }
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = text; }
    if (!response.ok) {
      const detail = body && body.detail !== undefined ? body.detail : (text || response.statusText);
      if (response.status === 401) showError("This server needs an API token: enter it above.");
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  // Download an API file with the token attached; without a token the browser streams it to disk itself.
  async function download(path, fallbackName) {
    if (!token()) {
      const a = document.createElement("a");
      a.href = path;
      a.download = fallbackName;
      document.body.appendChild(a);
      a.click();
      a.remove();
      return;
    }
    const response = await fetch(path, {headers: headers()});
    if (!response.ok) throw new ApiError(response.status, await response.text());
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = match ? match[1] : fallbackName;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function showError(message) {
    const box = document.getElementById("error");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function setupTokenBar() {
    const input = document.getElementById("token");
    const state = document.getElementById("token-state");
    const render = () => { state.textContent = token() ? "token saved in this browser" : "no token"; };
    document.getElementById("token-save").addEventListener("click", () => {
      if (input.value.trim()) localStorage.setItem(TOKEN_KEY, input.value.trim());
      else localStorage.removeItem(TOKEN_KEY);
      input.value = "";
      showError("");
      render();
    });
    render();
  }

  // Call fn now and then every POLL_MS after it settles; pause while the tab is hidden.
  function poll(fn) {
    let timer = null;
    const run = async () => {
      timer = null;
      if (document.hidden) return;
      try {
        await fn();
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) showError(String(err.message || err));
      }
      timer = setTimeout(run, POLL_MS);
    };
    document.addEventListener("visibilitychange", () => { if (!document.hidden && timer === null) run(); });
    run();
  }

  function esc(value) {
    return String(value === null || value === undefined ? "" : value).replace(/[&<>"']/g,
      (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  }

  function num(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const d = digits === undefined ? 4 : digits;
    const abs = Math.abs(value);
    if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2);
    return String(parseFloat(Number(value).toFixed(d)));
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + "%";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  return {api, download, showError, setupTokenBar, poll, esc, num, pct, duration, when, token, ApiError};
})();
