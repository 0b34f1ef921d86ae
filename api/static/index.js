// The study list (polled) and the form that starts a study (or a group of them, one per budget).
"use strict";

(() => {
  const form = document.getElementById("start");

  async function loadChoices() {
    const models = await Slim.api("/v1/models");
    const select = document.getElementById("model_id");
    const options = models.catalog.map((m) => [m.model_id, m.model_id + " (" + m.kind + ")"])
      .concat(models.local.map((m) => [m.model_id, m.model_id]));
    select.innerHTML = options.map(([value, label]) =>
      `<option value="${Slim.esc(value)}"${value === "smollm2-135m" ? " selected" : ""}>${Slim.esc(label)}</option>`
    ).join("");
    document.getElementById("granularity").innerHTML = models.granularities.map((g) =>
      `<option${g === "type-block" ? " selected" : ""}>${Slim.esc(g)}</option>`).join("");
    document.getElementById("strategy").innerHTML = models.strategies.map((s) =>
      `<option${s === "guided" ? " selected" : ""}>${Slim.esc(s)}</option>`).join("");
    document.getElementById("operators").innerHTML = models.operators.map((op) =>
      `<label><input type="checkbox" name="operators" value="${Slim.esc(op)}"${op === "wanda" ? " checked" : ""}>` +
      `${Slim.esc(op)}</label>`).join("");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const budgets = String(data.get("budget")).split(",").map((b) => Number(b.trim()));
    const body = {
      model_id: data.get("model_id"), budget: budgets.length === 1 ? budgets[0] : budgets, granularity: data.get("granularity"),
      objective: data.get("objective"), n_trials: Number(data.get("n_trials")),
      eval_tokens: Number(data.get("eval_tokens")), dataset: data.get("dataset"), seed: Number(data.get("seed")),
      operators: data.getAll("operators"), strategy: data.get("strategy"), warm_start: data.get("warm_start") === "on",
    };
    try {
      const created = await Slim.api("/v1/studies", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      // A list of budgets answers with the group (one study per budget).
      window.location.href = (created.per_budget ? "/groups/" : "/studies/") + encodeURIComponent(created.id);
    } catch (err) {
      const detail = err.detail;
      Slim.showError(Array.isArray(detail)
        ? detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("\n")
        : String(err.message));
    }
  });

  async function refresh() {
    const list = await Slim.api("/v1/studies?limit=200");
    document.getElementById("study-total").textContent = list.total + " in all";
    document.getElementById("studies").innerHTML = list.studies.map((s) => {
      const best = s.best || {};
      return `<tr>
        <td><a href="/studies/${encodeURIComponent(s.id)}">${Slim.esc(s.id)}</a></td>
        <td><span class="badge ${Slim.esc(s.status)}">${Slim.esc(s.status)}</span></td>
        <td>${Slim.esc(s.spec.model_id)}</td><td class="num">${Slim.num(s.spec.budget, 3)}</td>
        <td>${Slim.esc(s.spec.operators.join(", "))}</td><td class="num">${s.spec.n_trials}</td>
        <td class="num">${Slim.num(best.ppl)}</td><td class="num">${Slim.pct(best.keep_ratio)}</td>
        <td>${Slim.when(s.created_at)}</td></tr>`;
    }).join("") || `<tr><td colspan="9" class="empty">No studies yet.</td></tr>`;
  }

  Slim.setupTokenBar();
  document.getElementById("token-save").addEventListener("click", () => loadChoices().catch(() => {}));
  loadChoices().catch(() => {});
  Slim.poll(refresh);
})();
