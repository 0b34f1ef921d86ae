// A multi-budget group, live: polls GET /v1/groups/{id} every 2 s; each budget's winner on one frontier.
"use strict";

(() => {
  const groupId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop());
  const base = "/v1/groups/" + encodeURIComponent(groupId);
  const plotConfig = {displaylogo: false, responsive: true};
  const COLORS = {best: "#16213a", search: "#2f6fde", dense: "#667085",
    baselines: ["#d64545", "#e08a1e", "#8a5cd6", "#1f9d55"]};
  const $ = (id) => document.getElementById(id);
  let frontierKey = null;

  // The number a member's holdout reports for the study's objective (kl-recovered is judged on kl).
  function metric(spec) {
    return spec.objective === "kl-recovered" ? "kl" : spec.objective;
  }

  function unit(group) {
    return group.budget_field === "budget_bits" ? "bits per weight" : "kept fraction of linear-layer parameters";
  }

  function holdoutOf(member, key) {
    const h = member.holdout && member.holdout.best;
    return h && typeof h[key] === "number" ? h[key] : null;
  }

  function render(g) {
    $("group-id").textContent = g.id;
    document.title = "slimscout group " + g.id + " (" + g.status + ")";
    $("status").textContent = g.status;
    $("status").className = "badge " + g.status;
    const s = g.spec;
    $("spec").textContent = `${s.model_id} · ${g.budget_field} ${g.budgets.map((b) => Slim.num(b, 4)).join(", ")} · ` +
      `${s.operators.join(", ")} · ${s.granularity} · objective ${s.objective} · ${s.n_trials} trials per budget`;
    const finished = g.per_budget.filter((m) => ["completed", "failed", "cancelled"].includes(m.status)).length;
    $("done-count").textContent = finished;
    $("budget-count").textContent = g.per_budget.length;
    const done = g.per_budget.reduce((n, m) => n + (m.progress ? m.progress.done : 0), 0);
    const total = g.per_budget.reduce((n, m) => n + (m.progress ? m.progress.total : 0), 0);
    $("trial-note").textContent = `${done} / ${total} trials measured in all`;
    $("progress-bar").style.width = (total ? (100 * done / total) : 0).toFixed(1) + "%";
    const key = metric(s);
    $("members").innerHTML = g.per_budget.map((m) => `<tr>
      <td class="num">${Slim.num(m.budget, 4)}</td>
      <td><span class="badge ${Slim.esc(m.status)}">${Slim.esc(m.status)}</span></td>
      <td class="num">${m.progress ? m.progress.done + " / " + m.progress.total : "–"}</td>
      <td class="num">${Slim.num(m.best ? m.best.value : null)}</td>
      <td class="num">${key} ${Slim.num(holdoutOf(m, key))}</td>
      <td class="num">${Slim.pct(m.best ? m.best.keep_ratio : null)}</td>
      <td><a href="/studies/${encodeURIComponent(m.study_id)}">${Slim.esc(m.study_id)}</a></td>
      <td>${m.has_checkpoint ? `<button class="secondary checkpoint" data-study="${Slim.esc(m.study_id)}">Checkpoint</button>` : ""}</td>
    </tr>`).join("") || `<tr><td colspan="8" class="muted">every study of this group was deleted</td></tr>`;
    const next = JSON.stringify(g.per_budget.map((m) => [m.status, m.best, m.holdout]));
    if (next !== frontierKey) {
      renderFrontier(g);
      frontierKey = next;
    }
  }

  // Holdout of each budget's winner (and of the baselines at that budget); the frontier joins the winners
  // that no smaller budget beats. Until a budget's holdout exists its search-split best stands in, hollow.
  function renderFrontier(g) {
    const key = metric(g.spec);
    const measured = g.per_budget.filter((m) => holdoutOf(m, key) !== null);
    const searching = g.per_budget.filter((m) => holdoutOf(m, key) === null && m.best && m.best.value !== null);
    const chart = $("chart-frontier");
    if (!measured.length && !searching.length) {
      Plotly.react(chart, [], {xaxis: {visible: false}, yaxis: {visible: false}, annotations: [{
        text: "waiting for the first measured trial", showarrow: false, font: {color: "#667085"}}]}, plotConfig);
      return;
    }
    const front = [];
    for (const m of measured) {
      if (!front.length || holdoutOf(m, key) < holdoutOf(front[front.length - 1], key)) front.push(m);
    }
    const data = [
      {type: "scatter", mode: "lines+markers", name: "frontier (holdout)", x: front.map((m) => m.budget),
        y: front.map((m) => holdoutOf(m, key)), line: {color: COLORS.best, width: 2},
        marker: {symbol: "star", size: 14, color: "#f2b705", line: {color: COLORS.best, width: 1}}},
      {type: "scatter", mode: "markers", name: "winner per budget (holdout)", x: measured.map((m) => m.budget),
        y: measured.map((m) => holdoutOf(m, key)), text: measured.map((m) => "study " + m.study_id),
        marker: {size: 9, color: COLORS.best}},
    ];
    if (searching.length) {
      data.push({type: "scatter", mode: "markers", name: "best so far (search split)",
        x: searching.map((m) => m.budget), y: searching.map((m) => m.best.value),
        marker: {size: 10, color: COLORS.search, symbol: "circle-open", line: {width: 2}}});
    }
    const baselines = [...new Set(measured.flatMap((m) => Object.keys(m.holdout)))]
      .filter((name) => !["best", "dense", "tokens"].includes(name)).sort();
    baselines.forEach((name, i) => {
      const at = measured.filter((m) => m.holdout[name] && typeof m.holdout[name][key] === "number");
      data.push({type: "scatter", mode: "lines+markers", name: name + " (holdout)", x: at.map((m) => m.budget),
        y: at.map((m) => m.holdout[name][key]), line: {dash: "dot", width: 1,
          color: COLORS.baselines[i % COLORS.baselines.length]}, marker: {size: 6}});
    });
    const dense = measured.map((m) => m.holdout.dense && m.holdout.dense[key]).find((v) => typeof v === "number");
    const shapes = dense === undefined ? [] : [{type: "line", xref: "paper", x0: 0, x1: 1, y0: dense, y1: dense,
      line: {color: COLORS.dense, dash: "dash", width: 1}, label: {text: "dense", textposition: "end",
        font: {size: 10}}}];
    Plotly.react(chart, data, {margin: {l: 56, r: 16, t: 8, b: 44}, legend: {orientation: "h", y: -0.2},
      hovermode: "closest", uirevision: "keep", shapes,
      xaxis: {title: {text: unit(g)}, tickvals: g.budgets}, yaxis: {title: {text: key + " (holdout)"}}}, plotConfig);
  }

  async function tick() {
    render(await Slim.api(base));
    Slim.showError("");
  }

  $("members").addEventListener("click", (event) => {
    const button = event.target.closest("button.checkpoint");
    if (!button) return;
    const study = button.dataset.study;
    Slim.download(`/v1/studies/${encodeURIComponent(study)}/checkpoint`, `slimscout-${study}-checkpoint.tar`)
      .catch((e) => Slim.showError(e.message));
  });

  Slim.setupTokenBar();
  $("token-save").addEventListener("click", () => { frontierKey = null; });
  Slim.poll(tick);
})();
