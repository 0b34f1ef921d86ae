"""Render BENCHMARKS.md and the plots from the stored job results (see bench/run.py).

Everything between the ``<!-- generated -->`` markers is rewritten on each run; the hand-written
reading below the markers is kept as it is.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from bench.jobs import RESULTS, best_so_far

BENCHMARKS = RESULTS.parent.parent / "BENCHMARKS.md"
BEGIN, END = "<!-- generated: begin (python -m bench.run) -->", "<!-- generated: end -->"
NAMES = {"random": "random search", "tpe": "plain TPE", "guided": "slimscout (guided)"}
Results = dict[str, dict[str, Any]]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def by_part(results: Results, part: str) -> list[dict[str, Any]]:
    return [record for record in results.values() if record["part"] == part]


def searches(results: Results, part: str) -> dict[tuple[str, float, str, int], dict[str, Any]]:
    """Search jobs of ``part`` keyed by (operators, budget, strategy, seed)."""
    out = {}
    for record in by_part(results, part):
        kw = record["kwargs"]
        out["+".join(kw["operators"]), kw["budget"], kw["strategy"], kw["seed"]] = record
    return out


def environment(results: Results) -> list[str]:
    envs = [record["env"] for record in results.values()]
    if not envs:
        return []
    first, last = envs[0], envs[-1]
    loads = [env["load_avg_1m"] for env in envs] + [r["load_avg_1m_after"] for r in results.values()]
    wall = sum(record["wall_s"] for record in results.values())
    return [
        f"Machine: {first['cpu']}, {first['cores']} cores; Python {first['python']}, torch {first['torch']}, "
        f"transformers {first['transformers']}, optuna {first['optuna']}, xgboost {first['xgboost']}. "
        f"Commit {first['commit']}–{last['commit']}, {first['date']} to {last['date']}. "
        f"Wall time of the stored jobs: {wall / 60:.1f} min. Load average seen: {min(loads):.1f}–{max(loads):.1f} "
        "(the machine is shared; timings above a load of 2 on 2 cores are inflated).",
        "",
    ]


def quality(results: Results) -> list[str]:
    jobs = searches(results, "quality")
    cases = sorted({(ops, budget) for ops, budget, _, _ in jobs}, key=lambda c: (c[0], -c[1]))
    rows = []
    for ops, budget in cases:
        found = {s: jobs.get((ops, budget, s, 0)) for s in NAMES}
        anchor = found["guided"] or next(r for r in found.values() if r)
        holdout = anchor["result"]["summary"]["holdout"]
        metric = "ppl"
        baselines = {name: holdout[name][metric] for name in ("uniform", "owl", "sensitivity") if name in holdout}
        best = {s: r["result"]["summary"]["holdout"]["best"][metric] if r else None for s, r in found.items()}
        uniform = baselines.get("uniform")
        best_baseline = min(baselines.values()) if baselines else None
        ours = best["guided"]
        rows.append([
            f"{ops} {budget}", fmt(holdout["dense"][metric], 2), fmt(uniform), fmt(baselines.get("owl")),
            fmt(baselines.get("sensitivity")), fmt(best["random"]), fmt(best["tpe"]), f"**{fmt(ours)}**",
            fmt(ours / uniform if ours and uniform else None, 2) + "x",
            fmt(ours / best_baseline if ours and best_baseline else None, 2) + "x",
            str(anchor["kwargs"]["trials"]),
        ])
    if not rows:
        return ["Not run yet.", ""]
    kw = next(iter(jobs.values()))["kwargs"]
    return [
        f"Holdout perplexity (lee-news holdout split, {kw['holdout_tokens']:,} tokens; lower is better). Each search "
        f"chose on the search split ({kw['tokens']:,} tokens per evaluation, KL to dense) with the same number of "
        "real evaluations, baselines included as its first trials. Ratios are slimscout's against uniform and "
        "against the best of the baselines.",
        "",
        *table(["budget", "dense", "uniform", "OWL", "sensitivity", "random", "plain TPE", "slimscout",
                "vs uniform", "vs best baseline", "evaluations"], rows),
        "",
    ]


def curves_of(results: Results, part: str) -> dict[str, list[list[float]]]:
    """Best-so-far search objective per strategy (one curve per seed), for Wanda at 0.4."""
    out: dict[str, list[list[float]]] = {}
    for (ops, budget, strategy, _seed), record in sorted(searches(results, part).items()):
        if ops == "wanda" and budget == 0.4:
            out.setdefault(strategy, []).append(best_so_far(record["result"]["values"]))
    return out


def efficiency(results: Results, part: str, plot: Path) -> list[str]:
    jobs = searches(results, part)
    curves = curves_of(results, part)
    if not curves:
        return ["Not run yet.", ""]
    rows = []
    for strategy, runs in curves.items():
        finals = [run[-1] for run in runs]
        rows.append([NAMES[strategy], str(len(runs)), "/".join(sorted({str(len(r)) for r in runs})),
                     f"{statistics.median(finals):.4f} [{min(finals):.4f}, {max(finals):.4f}]"])
    reach = []
    for (ops, budget, strategy, seed), record in sorted(jobs.items()):
        tpe = jobs.get((ops, budget, "tpe", seed))
        if strategy != "guided" or tpe is None or ops != "wanda" or budget != 0.4:
            continue
        goal = min(tpe["result"]["values"])
        curve = best_so_far(record["result"]["values"])
        at = next((i + 1 for i, v in enumerate(curve) if v <= goal), None)
        reach.append(f"seed {seed}: plain TPE's best after {len(tpe['result']['values'])} evaluations "
                     f"(KL {goal:.4f}) reached by slimscout at evaluation **{at if at else 'never'}** "
                     f"of {len(curve)}")
    _plot_curves(curves, plot)
    return [
        "Best KL to dense so far (search split) against real evaluations, Wanda at keep 0.4; the median over "
        f"seeds is drawn, the band spans min to max. Plot: `{plot.relative_to(BENCHMARKS.parent)}`.",
        "",
        *table(["strategy", "seeds", "evaluations", "final best KL, median [min, max]"], rows),
        "",
        *(f"- {line}" for line in reach),
        "",
        *holdout_of_runs(jobs),
    ]


def holdout_of_runs(jobs: dict[tuple[str, float, str, int], dict[str, Any]]) -> list[str]:
    """Each run's winner re-measured on holdout, against the baselines it was seeded with."""
    rows = []
    for (ops, budget, strategy, seed), record in sorted(jobs.items(), key=lambda item: (item[0][3], item[0][2])):
        holdout = record["result"]["summary"]["holdout"]
        baselines = {name: holdout[name]["ppl"] for name in ("uniform", "owl", "sensitivity") if name in holdout}
        ours = holdout["best"]["ppl"]
        rows.append([f"{ops} {budget}", NAMES[strategy], str(seed), str(len(record["result"]["values"])),
                     fmt(holdout["dense"]["ppl"], 2), " / ".join(fmt(v) for v in baselines.values()),
                     f"**{fmt(ours)}**",
                     f"{ours / baselines['uniform']:.2f}x" if "uniform" in baselines else "–",
                     f"{ours / min(baselines.values()):.2f}x" if baselines else "–"])
    kw = next(iter(jobs.values()))["kwargs"]
    return [f"Each run's winner re-measured on the holdout split ({kw['holdout_tokens']:,} tokens), perplexity:", "",
            *table(["budget", "strategy", "seed", "evaluations", "dense", "uniform / OWL / sensitivity", "winner",
                    "vs uniform", "vs best baseline"], rows), ""]


def _plot_curves(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for strategy, runs in curves.items():
        n = min(len(r) for r in runs)
        data = np.array([r[:n] for r in runs])
        x = np.arange(1, n + 1)
        ax.plot(x, np.median(data, axis=0), label=f"{NAMES[strategy]} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(x, data.min(axis=0), data.max(axis=0), alpha=0.2)
    ax.set_xlabel("real evaluations")
    ax.set_ylabel("best KL to dense so far (search split)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predictor(results: Results) -> list[str]:
    records = by_part(results, "predictor")
    if not records:
        return ["Not run yet.", ""]
    result = records[0]["result"]
    rows = []
    for variant, variant_rows in result["variants"].items():
        for r in variant_rows:
            measured = "spearman_median" in r
            rows.append([variant, str(r["n_train"]), str(r.get("n_test", "–")),
                         f"{r['spearman_median']:.2f} [{r['spearman_min']:.2f}, {r['spearman_max']:.2f}]"
                         if measured else r["note"], f"{r['mae_log_median']:.3f}" if measured else "–"])
    in_search = []
    guided = {**searches(results, "quality"), **searches(results, "efficiency")}
    for (ops, budget, strategy, seed), record in sorted(guided.items()):
        report = record["result"]["summary"].get("predictor") or {}
        if strategy == "guided" and report.get("spearman") is not None:
            pairs = np.array(report.get("pairs") or [], dtype=float).reshape(-1, 2)
            screened = spearmanr(pairs[:, 0], pairs[:, 1]).statistic if len(pairs) > 2 else None
            in_search.append([f"{ops} {budget} seed {seed}", str(report.get("n_train")), f"{report['spearman']:.2f}",
                              f"{fmt(screened, 2)} ({len(pairs)})", str(report.get("n_screened"))])
    lines = [
        f"The predictor trained on N measured configs and scored on the other measured configs of the same "
        f"model and budget (Wanda 0.4; {result['n_measured']} configs from {len(result['studies'])} studies; "
        f"{result['repeats']} random splits, median [min, max]). Error: mean |log KL predicted − log KL measured|. "
        "Features: `proxies` = per-type and per-depth keep ratios and the per-layer error proxies from the caches; "
        "`proxies+scan` adds the sensitivity scan's measured block damage (what the guided search uses).",
        "",
        *table(["features", "training pairs", "held out", "Spearman", "error (log)"], rows),
        "",
    ]
    if in_search:
        lines += ["Inside the guided searches: 5-fold cross-validation on the study's own pairs near its end, and "
                  "the predicted against measured values of the candidates the predictor chose (a narrow, hard "
                  "range: all of them near the best):", "",
                  *table(["study", "pairs", "CV Spearman", "Spearman on its picks (n)",
                          "candidates screened, not measured"], in_search), ""]
    return lines


def trial_cost(results: Results) -> list[str]:
    rows = []
    studies = [r for r in by_part(results, "cost") if "cost" in r["result"]]
    for record in studies + by_part(results, "quality") + by_part(results, "efficiency"):
        cost, kw = record["result"]["cost"], record["kwargs"]
        n = max(cost["trials"], 1)
        overhead = 1 - cost["forward_s"] / cost["span_s"] if cost["span_s"] else None
        rows.append([f"{'+'.join(kw['operators'])} {kw['budget']} {kw['strategy']} s{kw['seed']}", str(kw["tokens"]),
                     str(cost["trials"]), fmt(cost["forward_s"] / n, 2), fmt(cost["apply_s"] / n, 2),
                     fmt(cost["span_s"] / n, 2), fmt(100 * overhead if overhead is not None else None, 0) + "%",
                     f"{record['env']['load_avg_1m']:.1f}–{record['load_avg_1m_after']:.1f}", record["env"]["commit"]])
    lines = [
        "Per evaluation, from the trials themselves: forward pass, applying the config, and the whole span from "
        "the first trial's start to the last one's end divided by the trials (so it includes predictor fits, "
        "Optuna's bookkeeping and restoring the weights). Overhead = 1 − forward / span. Load: the 1-minute load "
        "average when the job started and ended (2 cores; above 2, every time here is inflated). Commit: the code "
        "that ran.",
        "",
        *table(["study", "tokens", "trials", "forward s", "apply s", "span s", "overhead", "load", "commit"], rows),
        "",
    ]
    for record in by_part(results, "cost"):
        r = record["result"]
        if "calibration_s" not in r:
            continue
        built = r["calibration_s"] + r["svd_s"]
        lines += [f"Per-model caches (smollm2-135m): calibration Grams over {r['calibration_tokens']:,} tokens "
                  f"{r['calibration_s']:.1f} s, plain and whitened SVD of all 210 layers {r['svd_s']:.1f} s; loading "
                  f"both from disk {r['load_s']:.1f} s, so a reused cache saves {built - r['load_s']:.1f} s per "
                  f"process. Loading the model itself: {r['model_load_s']:.1f} s.", ""]
    return lines


def scale(results: Results) -> list[str]:
    records = sorted(by_part(results, "scale"),
                     key=lambda r: (r["result"]["workers"], -r["result"]["threads_per_worker"]))
    if not records:
        return ["Not run yet.", ""]
    base = {r["result"]["threads_per_worker"]: r["result"]["trials_per_min"] for r in records
            if r["result"]["workers"] == 1}
    rows = [[str(r["result"]["workers"]), str(r["result"]["threads_per_worker"]), str(r["result"]["trials"]),
             fmt(r["result"]["trials_per_min"], 2),
             " / ".join(f"{r['result']['trials_per_min'] / tpm:.2f}x vs 1 worker × {t} threads"
                        for t, tpm in sorted(base.items()) if r["result"]["workers"] > 1)]
            for r in records]
    return ["Random-search trials on smollm2-135m (Wanda 0.5), worker processes sharing one study on PostgreSQL; "
            "throughput from the first trial's start to the last one's end.", "",
            *table(["workers", "torch threads each", "trials", "trials / min", "speed-up"], rows), ""]


def speed(results: Results) -> list[str]:
    rows = []
    for record in by_part(results, "speed"):
        r = record["result"]
        rows.append([f"{r['operator']} {r['budget']} (uniform)", fmt(r["params_ratio"], 2),
                     fmt(r["dense"]["prefill"]["tokens_per_s"]), fmt(r["compressed"]["prefill"]["tokens_per_s"]),
                     f"**{r['prefill_speedup']:.2f}x**", fmt(r["dense"]["decode"]["tokens_per_s"]),
                     fmt(r["compressed"]["decode"]["tokens_per_s"]), f"**{r['decode_speedup']:.2f}x**"])
    if not rows:
        return ["Not run yet.", ""]
    dense = by_part(results, "speed")[0]["result"]["dense"]
    return [f"Exported checkpoint (factored low-rank layers) against the dense model, batch 1, {dense['tokens']} "
            f"prompt tokens, {dense['decode_tokens']} greedy decode steps, median of {dense['repeats']} runs.",
            "", *table(["export", "params vs dense", "dense prefill tok/s", "prefill tok/s", "prefill speed-up",
                        "dense decode tok/s", "decode tok/s", "decode speed-up"], rows), ""]


def encoder(results: Results) -> list[str]:
    records = by_part(results, "encoder")
    if not records:
        return ["Not run yet.", ""]
    lines = []
    for record in records:
        holdout = record["result"]["summary"]["holdout"]
        kw = record["kwargs"]
        lines += table(["minilm-l6, Wanda 0.5", "cosine to dense embeddings (holdout)", "1 − cosine"],
                       [[name, fmt(holdout[key]["cosine"], 4), fmt(1 - holdout[key]["cosine"], 4)]
                        for name, key in (("uniform", "uniform"), (f"slimscout ({kw['trials']} evaluations)", "best"))
                        if key in holdout])
    return ["Sentence-embedding fidelity of all-MiniLM-L6-v2 (BERT): mean cosine between compressed and dense "
            "embeddings of holdout passages (higher is better).", "", *lines, ""]


def suite_section(name: str, results: Results) -> list[str]:
    efficiency_part = "efficiency" if by_part(results, "efficiency") else "quality"
    plot = RESULTS / f"efficiency-{name}.png"
    return [
        f"## Suite `{name}`", "",
        f"Command: `python -m bench.run --suite {name}`. Results: `bench/results/jobs/`.", "",
        *environment(results),
        "### 1. Quality at equal budget", "", *quality(results),
        "### 2. Sample efficiency", "", *efficiency(results, efficiency_part, plot),
        "### 3. Predictor quality", "", *predictor(results),
        "### 4. Cost of a trial", "", *trial_cost(results),
        "### 5. Scale-out", "", *scale(results),
        "### 6. Compressed model speed", "", *speed(results),
        "### Encoder", "", *encoder(results),
    ]


def render(results: dict[str, Results], path: Path = BENCHMARKS) -> None:
    generated = [BEGIN, ""]
    for name, suite in results.items():
        generated += suite_section(name, suite) if suite else [f"## Suite `{name}`", "", "Not run yet.", ""]
    generated.append(END)
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip() + "\n\n", "\n"
    path.write_text(head + "\n".join(generated) + tail)
