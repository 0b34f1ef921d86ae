// One study, live: polls the JSON API every 2 s and redraws the numbers and the Plotly figures in place.
"use strict";

(() => {
  const studyId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop());
  const base = "/v1/studies/" + encodeURIComponent(studyId);
  const plotConfig = {displaylogo: false, responsive: true};
  const SOURCE_COLORS = {baseline: "#d64545", sampler: "#2f6fde", predictor: "#1f9d55", other: "#8a8f98"};
  const TABLE_ROWS = 200;

  let detail = null;
  let trials = [];
  let trialsKey = null;
  let profileKey;  // undefined until the first fetch
  const $ = (id) => document.getElementById(id);

  function sourceKind(source) {
    if (!source) return "other";
    const kind = source.split(":")[0];  // "baseline:owl", "sampler:tpe"
    return kind in SOURCE_COLORS ? kind : "other";
  }

  async function fetchAllTrials() {
    const all = [];
    for (;;) {
      const page = await Slim.api(`${base}/trials?offset=${all.length}&limit=1000`);
      all.push(...page.trials);
      if (!page.trials.length || all.length >= page.total) return all;
    }
  }

  // ---- numbers -------------------------------------------------------------------------------------
  function renderDetail(d) {
    $("study-id").textContent = d.id;
    document.title = "slimscout " + d.id + " (" + d.status + ")";
    const status = $("status");
    status.textContent = d.status;
    status.className = "badge " + d.status;
    const s = d.spec;
    $("spec").textContent = `${s.model_id} · budget ${Slim.num(s.budget, 3)} · ${s.operators.join(", ")} · ` +
      `${s.granularity} · objective ${s.objective} · ${s.eval_tokens} tokens of ${s.dataset}`;
    $("spec-options").textContent = `strategy ${s.strategy} · baselines ${s.baselines.join(", ") || "none"} · ` +
      `pruning ${s.prune ? "on" : "off"} · holdout ${s.holdout_tokens} tokens · ` +
      `warm start ${s.warm_start ? "on" : "off"} · seed ${s.seed}` +
      (s.objective === "kl-recovered" ? ` · ${s.recover_trial_steps} distillation steps per trial` : "") +
      (s.recover_steps ? ` · recover the winner ${s.recover_steps} steps` : "");
    const p = d.progress;
    $("trial-count").textContent = p.done;
    $("trial-total").textContent = p.total;
    $("progress-bar").style.width = (100 * p.fraction).toFixed(1) + "%";
    const c = d.counts;
    $("counts").textContent = `${c.n_complete} complete · ${c.n_pruned} pruned · ${c.n_running} running · ` +
      `${c.n_waiting} waiting · ${c.n_failed} failed · ${p.active_workers} active worker(s)` +
      (p.mean_trial_s !== null ? ` · ${Slim.duration(p.mean_trial_s)} per trial` : "");
    $("eta").textContent = d.status === "completed" ? "done" : Slim.duration(p.eta_s);
    renderSetup(d.setup);
    $("study-error").textContent = d.error ? "error: " + d.error : "";
    $("cancel").hidden = !(d.status === "queued" || d.status === "running");
    $("download-config").disabled = !d.best;
    $("download-checkpoint").hidden = !d.has_checkpoint;
    $("download-recovered").hidden = !d.has_recovered_checkpoint;

    const b = d.best;
    $("best-value").textContent = b ? `${d.spec.objective} ${Slim.num(b.value !== null ? b.value : b[d.spec.objective])}` : "–";
    $("best").innerHTML = b ? [["ppl", Slim.num(b.ppl)], ["kl", Slim.num(b.kl)], ["kept", Slim.pct(b.keep_ratio)],
      ["trial", b.trial === null ? "–" : "#" + b.trial], ["source", Slim.esc(b.source || "–")]]
      .map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("") : `<dt>no measured trial yet</dt><dd></dd>`;

    const names = Object.keys(d.baselines).sort();
    $("baselines").innerHTML = names.map((name) => {
      const x = d.baselines[name];
      return `<tr><td>${Slim.esc(name)}</td><td class="num">${Slim.num(x.ppl)}</td>` +
        `<td class="num">${Slim.num(x.kl)}</td><td class="num">${Slim.pct(x.keep_ratio)}</td></tr>`;
    }).join("") || `<tr><td colspan="4" class="muted">none measured yet</td></tr>`;

    const h = d.holdout || {};
    $("holdout").innerHTML = Object.keys(h).filter((k) => h[k] && typeof h[k] === "object").map((k) =>
      `<tr><td>${Slim.esc(k)}</td><td class="num">${Slim.num(h[k].ppl)}</td><td class="num">${Slim.num(h[k].kl)}</td></tr>`
    ).join("") || `<tr><td colspan="3" class="muted">after the search</td></tr>`;
    $("recovery").innerHTML = recoveryHtml(d.summary && d.summary.recovery, d.spec);

    const q = d.predictor;
    $("predictor").innerHTML = q ? [["spearman", Slim.num(q.spearman, 3)], ["mae", Slim.num(q.mae)],
      ["trained on", q.n_train ?? "–"], ["screened", q.n_screened ?? "–"]]
      .map(([k, v]) => `<dt>${k}</dt><dd>${Slim.esc(v)}</dd>`).join("") : `<dt>not trained yet</dt><dd></dd>`;
  }

  // The setup (baselines, their scans, the caches they build): which step runs and how far, until it is over.
  function renderSetup(s) {
    $("setup").hidden = !s;
    if (!s) return;
    $("setup-progress").hidden = s.finished;
    if (s.finished) {
      $("setup-text").innerHTML = `<span class="muted">Setup done in ${Slim.duration(s.seconds)}</span>`;
      return;
    }
    $("setup-text").innerHTML = `<strong>Setting up</strong>: ${Slim.esc(s.step || "starting")}` +
      (s.total ? ` · ${s.done} / ${s.total}` : "") + ` · ${Slim.duration(s.seconds)} so far`;
    $("setup-bar").style.width = (100 * s.fraction).toFixed(1) + "%";
  }

  // The winner's recovery (spec.recover_steps): progress while it runs, holdout before → after once done.
  function recoveryHtml(r, spec) {
    if (!r || typeof r !== "object") {
      return spec.recover_steps ? `<span class="muted">recovery of the winner (${spec.recover_steps} steps) after the search</span>` : "";
    }
    if (r.status === "running") {
      return `<strong>Recovering the winner</strong>: step ${Slim.esc(r.step)} / ${Slim.esc(r.steps)}` +
        (r.loss !== null && r.loss !== undefined ? ` · loss ${Slim.num(r.loss)}` : "") +
        (r.eta_s !== null && r.eta_s !== undefined ? ` · ETA ${Slim.duration(r.eta_s)}` : "");
    }
    if (r.status === "failed") return `<span class="muted">recovery failed: ${Slim.esc(r.error)}</span>`;
    const b = r.holdout_before || {}, a = r.holdout_after || {};
    return `<strong>Recovered</strong> (${Slim.esc(r.steps_run)} steps, ${Slim.duration(r.seconds)}): ` +
      `holdout ppl ${Slim.num(b.ppl)} → ${Slim.num(a.ppl)} · kl ${Slim.num(b.kl)} → ${Slim.num(a.kl)}`;
  }

  function renderTrials() {
    const rows = trials.slice().reverse().slice(0, TABLE_ROWS);
    $("trials-note").textContent = trials.length > TABLE_ROWS
      ? `latest ${TABLE_ROWS} of ${trials.length}` : `${trials.length} in all`;
    $("trials-body").innerHTML = rows.map((t) => `<tr>
      <td class="num">${t.number}</td><td><span class="badge ${Slim.esc(t.state)}">${Slim.esc(t.state)}</span></td>
      <td class="num">${Slim.num(t.value)}</td><td class="num">${Slim.num(t.ppl)}</td><td class="num">${Slim.num(t.kl)}</td>
      <td class="num">${Slim.pct(t.keep_ratio)}</td><td>${Slim.esc(t.source || "")}</td>
      <td class="num">${Slim.num(t.predicted)}</td><td class="num">${Slim.duration(t.duration_s)}</td>
      <td class="muted">${Slim.esc(t.worker || "")}</td></tr>`).join("");
  }

  // ---- figures -------------------------------------------------------------------------------------
  function layout(extra) {
    return Object.assign({margin: {l: 56, r: 16, t: 8, b: 44}, legend: {orientation: "h", y: -0.2},
      hovermode: "closest", uirevision: "keep"}, extra);
  }

  function empty(id, message) {
    Plotly.react($(id), [], layout({xaxis: {visible: false}, yaxis: {visible: false},
      annotations: [{text: message, showarrow: false, font: {color: "#667085"}}]}), plotConfig);
  }

  function measured() {
    return trials.filter((t) => t.state === "complete" && t.value !== null);
  }

  function bySource(points, x, y, extra) {
    const groups = {};
    for (const t of points) (groups[sourceKind(t.source)] ||= []).push(t);
    return Object.entries(groups).map(([kind, group]) => Object.assign({
      type: "scatter", mode: "markers", name: kind, x: group.map(x), y: group.map(y),
      text: group.map((t) => `trial #${t.number} (${t.source || "?"})`),
      marker: {color: SOURCE_COLORS[kind], size: 7, opacity: 0.8},
    }, extra || {}));
  }

  function renderBestSoFar() {
    const points = measured();
    if (!points.length) return empty("chart-best", "waiting for the first measured trial");
    let best = Infinity;
    const running = points.map((t) => (best = Math.min(best, t.value)));
    const values = points.map((t) => t.value).filter((v) => v > 0);
    const wide = values.length === points.length && Math.max(...values) / Math.min(...values) > 30;
    const baselineLines = Object.entries(detail.baselines).filter(([, b]) => b.value !== null).map(([name, b]) => ({
      type: "line", xref: "paper", x0: 0, x1: 1, y0: b.value, y1: b.value,
      line: {color: SOURCE_COLORS.baseline, width: 1, dash: "dot"}, label: {text: name, textposition: "end",
        font: {size: 10, color: SOURCE_COLORS.baseline}}}));
    Plotly.react($("chart-best"), [
      ...bySource(points, (t) => t.number, (t) => t.value),
      {type: "scatter", mode: "lines", name: "best so far", x: points.map((t) => t.number), y: running,
        line: {shape: "hv", color: "#16213a", width: 2}},
    ], layout({xaxis: {title: {text: "trial number"}}, shapes: baselineLines,
      yaxis: {title: {text: detail.spec.objective + " (search split)"}, type: wide ? "log" : "linear"}}), plotConfig);
  }

  function renderPareto() {
    const points = measured().filter((t) => t.keep_ratio !== null && t.ppl !== null);
    if (!points.length) return empty("chart-pareto", "waiting for the first measured trial");
    const sorted = points.slice().sort((a, b) => a.keep_ratio - b.keep_ratio || a.ppl - b.ppl);
    const front = [];
    for (const t of sorted) if (!front.length || t.ppl < front[front.length - 1].ppl) front.push(t);
    const baselines = Object.entries(detail.baselines).filter(([, b]) => b.keep_ratio !== null && b.ppl !== null);
    const data = [
      ...bySource(points, (t) => t.keep_ratio, (t) => t.ppl),
      {type: "scatter", mode: "lines", name: "Pareto front", x: front.map((t) => t.keep_ratio),
        y: front.map((t) => t.ppl), line: {shape: "hv", color: "#16213a", width: 2}},
      {type: "scatter", mode: "markers+text", name: "baselines", x: baselines.map(([, b]) => b.keep_ratio),
        y: baselines.map(([, b]) => b.ppl), text: baselines.map(([name]) => name), textposition: "top center",
        marker: {symbol: "diamond", size: 13, color: SOURCE_COLORS.baseline, line: {color: "#fff", width: 1}}},
    ];
    if (detail.best && detail.best.keep_ratio !== null && detail.best.ppl !== null) {
      data.push({type: "scatter", mode: "markers", name: "best", x: [detail.best.keep_ratio], y: [detail.best.ppl],
        marker: {symbol: "star", size: 16, color: "#f2b705", line: {color: "#16213a", width: 1}}});
    }
    Plotly.react($("chart-pareto"), data, layout({
      xaxis: {title: {text: "kept fraction of linear-layer parameters"}}, yaxis: {title: {text: "perplexity"}},
      shapes: [{type: "line", yref: "paper", x0: detail.spec.budget, x1: detail.spec.budget, y0: 0, y1: 1,
        line: {color: "#667085", dash: "dash", width: 1}, label: {text: "budget", textposition: "end",
          font: {size: 10}}}]}), plotConfig);
  }

  function renderProfile(profile) {
    const kinds = Object.keys(profile.traces);
    if (!kinds.length) {
      return empty("chart-layers", profile.trial === null && !detail.best ? "waiting for the first measured trial"
        : "the best config has no per-layer keep ratios");
    }
    Plotly.react($("chart-layers"), kinds.map((kind) => ({
      type: "scatter", mode: "lines+markers", name: kind, x: profile.blocks, y: profile.traces[kind],
      connectgaps: false, marker: {size: 5}})),
    layout({xaxis: {title: {text: "block"}, dtick: profile.blocks.length > 16 ? 2 : 1},
      yaxis: {title: {text: "kept fraction"}, range: [0, 1.05]}}), plotConfig);
  }

  function renderPredictor() {
    const pairs = (detail.predictor && detail.predictor.pairs) || [];
    $("predictor-card").hidden = !pairs.length;
    if (!pairs.length) return;
    const all = pairs.flat().filter((v) => v !== null && Number.isFinite(v));
    const lo = Math.min(...all), hi = Math.max(...all);
    Plotly.react($("chart-predictor"), [
      {type: "scatter", mode: "markers", name: "screened trials", x: pairs.map((p) => p[0]), y: pairs.map((p) => p[1]),
        marker: {color: SOURCE_COLORS.predictor, size: 7}},
      {type: "scatter", mode: "lines", name: "predicted = measured", x: [lo, hi], y: [lo, hi],
        line: {color: "#667085", dash: "dot"}},
    ], layout({xaxis: {title: {text: "predicted " + detail.spec.objective}},
      yaxis: {title: {text: "measured " + detail.spec.objective}}}), plotConfig);
  }

  // ---- the loop ------------------------------------------------------------------------------------
  async function tick() {
    detail = await Slim.api(base);
    renderDetail(detail);
    const key = JSON.stringify([detail.counts, detail.best, detail.baselines, detail.status]);
    if (key !== trialsKey) {
      trials = await fetchAllTrials();
      trialsKey = key;
      renderTrials();
      renderBestSoFar();
      renderPareto();
    }
    const bestKey = JSON.stringify([detail.best && detail.best.trial, detail.status]);
    if (bestKey !== profileKey) {
      renderProfile(await Slim.api(`${base}/layer-profile`));
      profileKey = bestKey;
    }
    renderPredictor();
    Slim.showError("");
  }

  $("download-config").addEventListener("click", () =>
    Slim.download(`${base}/best-config`, `slimscout-${studyId}-best-config.json`).catch((e) => Slim.showError(e.message)));
  $("download-checkpoint").addEventListener("click", () =>
    Slim.download(`${base}/checkpoint`, `slimscout-${studyId}-checkpoint.tar`).catch((e) => Slim.showError(e.message)));
  $("download-recovered").addEventListener("click", () =>
    Slim.download(`${base}/recovered-checkpoint`, `slimscout-${studyId}-recovered.tar`).catch((e) => Slim.showError(e.message)));
  $("cancel").addEventListener("click", async () => {
    if (!window.confirm("Cancel study " + studyId + "? Workers stop after their current trial.")) return;
    try {
      renderDetail(Object.assign({}, detail, await Slim.api(`${base}/cancel`, {method: "POST"})));
    } catch (e) {
      Slim.showError(e.message);
    }
  });

  Slim.setupTokenBar();
  $("token-save").addEventListener("click", () => { trialsKey = null; profileKey = undefined; });
  Slim.poll(tick);
})();
