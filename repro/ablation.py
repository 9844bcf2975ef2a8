"""`repro ablate`: which of validation and Evol-Instruct pays, and whether OSS-Instruct's seeds
beat the Self-Instruct baseline from the same teacher, at equal training-set size.

Every variant (config.VARIANTS) is its own run under runs/<name>-ablation/<oss|validated|evol|
validated-evol|self-instruct>/, sharing what it can: seeds, pairs and cleaning are made once (or
copied from runs/<name>/ when `repro run` made them already), validation once, evolution once (it
evolves the clean problems, the same for every variant). The self-instruct variant shares only the
seeds (their ids and languages); it generates and cleans its own pairs.

Equal size: every variant trains on N pairs in all, N = the smallest first-stage pool (the
validated pairs, usually). A variant with an Evol-Instruct stage gives M = min(evolved pairs, N/2)
of them to its second stage and N - M OSS-Instruct pairs to the first; the others take a fixed
random N. With the same epochs and batch size, every variant then also takes the same number of
optimizer steps. Each fine-tuned model is evaluated as in `repro evaluate` (HumanEval(+) and
MBPP(+); MultiPL-E and DS-1000 only when evaluate.multilingual is --set), and each variant's
pass@1 is compared with the oss variant's on the same problems: the difference with a paired
bootstrap 95% interval (repro/eval/stats.py).

Writes ablation.json and ablation.md in runs/<name>-ablation/, the conclusion included, whatever it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from repro import config as config_mod
from repro import pipeline
from repro.artifacts import ReproError, RunDir, parquet_rows, write_json, write_text
from repro.eval.stats import paired_bootstrap, wilson

DATA_STAGES = tuple(pipeline.NAMES[:pipeline.NAMES.index("train")])  # what the variants share: the data
NAMES = {"humaneval": "HumanEval", "mbpp": "MBPP"}


def sizes(pools: dict[str, int], evolved: int | None) -> tuple[int, int]:
    """(N pairs per variant in all, M of them from the evol stage) for the variants' pools."""
    n = min(pools.values())
    if n == 0:
        raise ReproError("ablate: a variant has no training pairs (" + ", ".join(f"{v}: {k}" for v, k in pools.items())
                         + "); generate more seeds (seeds.num_seeds), or see the validate stage's validation.jsonl")
    m = min(evolved, n // 2) if evolved is not None else 0
    if evolved is not None and m == 0:
        raise ReproError(f"ablate: the evol stage kept {evolved} pairs, so an evol variant would train on none; "
                         "raise evol.num, or leave the evol variants out with --variants")
    return n, m


def run(profile: str, sets: list[str], variants: list[str], top: Path, plain: list[Path],
        opts: pipeline.Options, full_eval: bool = False) -> dict:
    """Run every variant in `variants` (oss first) under `top`, copying finished stages from
    `plain` (the runs `repro run` made) where the same, and write ablation.json and ablation.md
    there; returns the comparison."""
    for v in variants:
        config_mod.check_variant(v)
    variants = ["oss"] + [v for v in variants if v != "oss"]
    if not any(x.startswith("evaluate.multilingual=") for x in sets):
        sets = [*sets, "evaluate.multilingual="]  # the issue's benchmarks; MultiPL-E/DS-1000 when --set
    dirs = {v: top / (config_mod.variant_slug(v) or "oss") for v in variants}
    cfgs, runs = {}, {}
    for v in variants:
        cfgs[v] = pipeline.load_config(profile, sets, v, full_eval)
        runs[v] = RunDir(dirs[v], share=[RunDir(d) for d in [*dirs.values(), *plain]])
        pipeline.check(cfgs[v], pipeline.stages_of(v))

    # 1. The data of every variant (shared where the same).
    for v in variants:
        pipeline.run_stages(cfgs[v], runs[v], [s for s in pipeline.stages_of(v) if s in DATA_STAGES], opts)
    # 2. Equal training-set size.
    pools = {v: parquet_rows(runs[v] / pipeline.train_inputs(cfgs[v])[0]) for v in variants}
    evol_runs = [v for v in variants if "evol" in config_mod.variant_stages(v)]
    evolved = min(parquet_rows(runs[v] / "evol.parquet") for v in evol_runs) if evol_runs else None
    n, m = sizes(pools, evolved)
    for v in variants:
        cfgs[v].train.max_pairs = n - m if v in evol_runs else n
        if v in evol_runs:
            cfgs[v].evol.train_pairs = m
    # 3. Train, export, evaluate, report each.
    for v in variants:
        pipeline.run_stages(cfgs[v], runs[v], [s for s in pipeline.stages_of(v) if s not in DATA_STAGES], opts)
    # 4. Compare.
    result = compare({v: runs[v] for v in variants}, pools, n, m)
    write_json(top / "ablation.json", result)
    write_text(top / "ablation.md", render(result))
    return result


def compare(runs: dict[str, RunDir], pools: dict[str, int], n: int, m: int) -> dict:
    """pass@1 per variant, and each variant minus oss on the same problems."""
    res, val, evo, train = {}, None, None, {}
    for v, run in runs.items():
        ev = run.manifest("evaluate")
        if ev is None:
            raise ReproError(f"ablate: {run.path} has no evaluation; rerun `repro ablate`")
        res[v] = ev["stats"]
        t = run.manifest("train")["stats"]
        train[v] = {"pairs": t["examples"], "steps": t["steps"],
                    "stage2_pairs": t["stage2"]["examples"] if "stage2" in t else 0,
                    "final_loss": round(t["final_loss"], 4)}
        if val is None and run.manifest("validate"):
            val = run.manifest("validate")["stats"]
            val = {k: val[k] for k in ("pairs_in", "kept", "passed", "failed", "timeout", "no_tests", "not_run",
                                       "pass_rate", "per_language", "pairs_per_minute", "programs_per_second",
                                       "rescued_by_sampling", "samples", "teacher")}
            val["seconds"] = run.manifest("validate")["seconds"]
        if evo is None and run.manifest("evol"):
            e = run.manifest("evol")["stats"]
            evo = {"evolved": e["evolved"], "kept": e["kept"], "pairs_by_heuristic": e["pairs_by_heuristic"],
                   "seconds": run.manifest("evol")["seconds"]}
    oss = res["oss"]
    rows, diffs = [], []
    for b, info in oss["benchmarks"].items():
        for split in ("base", "plus") if info["plus"] else ("base",):
            label = NAMES.get(b, b) + ("+" if split == "plus" else "")
            for v in runs:
                r = res[v]["models"]["finetuned"][b][split]
                if res[v]["benchmarks"][b]["task_ids"] != info["task_ids"]:
                    raise ReproError(f"ablate: {runs[v].path} evaluated other {b} problems than the oss run; "
                                     "rerun `repro ablate` with the same evaluate settings")
                lo, hi = wilson(r["passed"], len(r["per_task"]))
                rows.append({"benchmark": label, "variant": v, "passed": r["passed"], "n": len(r["per_task"]),
                             "pass@1": r["pass@1"], "ci95": [lo, hi]})
                if v != "oss":
                    d, dlo, dhi = paired_bootstrap(r["per_task"], oss["models"]["finetuned"][b][split]["per_task"])
                    diffs.append({"benchmark": label, "variant": v, "diff": d, "ci95": [dlo, dhi]})
    context = {label: {b: oss["models"][label][b]["base"]["pass@1"] for b in oss["benchmarks"]}
               for label in ("base", "teacher") if label in oss["models"]}
    return {"n_pairs": n, "evol_pairs": m, "pools": pools, "train": train, "pass@1": rows, "vs_oss": diffs,
            "validation": val, "evol": evo, "context": context, "runs": {v: str(r.path) for v, r in runs.items()},
            "conclusion": conclusion(diffs, n, m, val, evo)}


def conclusion(diffs: list[dict], n: int, m: int, val: dict | None, evo: dict | None = None) -> str:
    above = [d for d in diffs if d["ci95"][0] > 0]
    below = [d for d in diffs if d["ci95"][1] < 0]
    def say(d):
        return f"{d['variant']} on {d['benchmark']} ({100 * d['diff']:+.1f} points)"
    if not above and not below:
        best = max(diffs, key=lambda d: d["diff"]) if diffs else None
        text = (f"At this size ({n} training pairs per variant) no variant differs from oss beyond chance: every "
                "95% interval of the paired difference contains 0")
        text += f"; the largest point estimate is {say(best)}." if best else "."
        text += (" The comparison cannot tell whether validation or Evol-Instruct pays here; it takes more pairs "
                 "and more problems (a larger profile, --full-eval) to separate effects of a few points.")
    else:
        text = ""
        if above:
            text += "Better than oss beyond chance: " + "; ".join(map(say, above)) + ". "
        if below:
            text += "Worse than oss beyond chance: " + "; ".join(map(say, below)) + ". "
        text += "Every other paired difference's 95% interval contains 0."
    if val:
        text += (f" Validation kept {val['kept']} of {val['pairs_in']} pairs: {val['passed']} passed the teacher's tests, "
                 f"{val['not_run']} could not be tested here (no test runner for their language) and were kept.")
        if val["not_run"] > val["passed"]:
            text += (" The validated training set is therefore mostly the untested languages: oss+validated differs "
                     "from oss as much in its language mix as in tested correctness, and says little about "
                     "SelfCodeAlign's selection itself.")
    if evo:
        text += (f" Evol-Instruct kept {evo['kept']} of {evo['evolved']} evolved problems (the rest were rejected, most "
                 f"as the original nearly unchanged: see evol_rejected.jsonl); the evol variants' second stage "
                 f"trained on {m} of them.")
    return text


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(r: dict) -> str:
    variants = list(r["runs"])
    benches = list(dict.fromkeys(x["benchmark"] for x in r["pass@1"]))
    out = ["# Ablation: validation and Evol-Instruct at equal training-set size", "",
           f"Every variant is trained on **{r['n_pairs']} pairs** in all (the smallest pool: "
           + ", ".join(f"{v} {k}" for v, k in r["pools"].items()) + ")"
           + (f"; the evol variants take {r['n_pairs'] - r['evol_pairs']} OSS-Instruct pairs, then "
              f"{r['evol_pairs']} evolved ones in a second stage" if r["evol_pairs"] else "") + ".", "",
           "## Conclusion", "", r["conclusion"], "", "## pass@1 of the fine-tuned student, % (95% Wilson interval)", "",
           "| variant | training pairs (stage 2) | steps | " + " | ".join(benches) + " |",
           "|---|---|---|" + "---|" * len(benches)]
    cell = {(x["variant"], x["benchmark"]): x for x in r["pass@1"]}
    for v in variants:
        t = r["train"][v]
        out.append(f"| {v} | {t['pairs']} ({t['stage2_pairs']}) | {t['steps']} | " + " | ".join(
            f"{_pct(c['pass@1'])} ({c['passed']}/{c['n']}; {_pct(c['ci95'][0])}–{_pct(c['ci95'][1])})"
            for c in (cell[v, b] for b in benches)) + " |")
    out += ["", "## Difference from oss on the same problems, points (paired bootstrap 95% interval)", "",
            "| variant | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    dcell = {(x["variant"], x["benchmark"]): x for x in r["vs_oss"]}
    for v in variants[1:]:
        out.append(f"| {v} | " + " | ".join(
            f"{100 * d['diff']:+.1f} ({100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})"
            for d in (dcell[v, b] for b in benches)) + " |")
    if r["context"]:
        out += ["", "For context, on the same problems (pass@1, %, base split): " + "; ".join(
            f"{label} " + ", ".join(f"{NAMES.get(b, b)} {_pct(x)}" for b, x in v.items())
            for label, v in r["context"].items()) + "."]
    if r["validation"]:
        val = r["validation"]
        out += ["", "## Validation", "",
                f"{val['pairs_in']} pairs: {val['passed']} passed, {val['failed']} failed, {val['timeout']} timed out, "
                f"{val['no_tests']} without usable tests, {val['not_run']} not testable here (kept); overall pass rate "
                f"{_pct(val['pass_rate'] or 0)}% of the tested. {val['pairs_per_minute']} pairs per minute "
                f"({val['seconds']:.0f} s, teacher {val['teacher']['tokens_per_second']} tokens/s, "
                f"{val['programs_per_second']} programs/s)"
                + (f"; {val['rescued_by_sampling']} rescued by sampling {val['samples']} solutions" if val["samples"] > 1 else "")
                + ".", "", "| language | passed | failed | timeout | no tests | not run | pass rate |", "|---|---|---|---|---|---|---|"]
        for lang, d in val["per_language"].items():
            rate = "-" if d["pass_rate"] is None else f"{_pct(d['pass_rate'])}%"
            out.append(f"| {lang} | {d['passed']} | {d['failed']} | {d['timeout']} | {d['no_tests']} | {d['not_run']} | {rate} |")
    if r["evol"]:
        e = r["evol"]
        out += ["", "## Evol-Instruct", "", f"{e['evolved']} problems evolved, {e['kept']} pairs kept after cleaning "
                f"({e['seconds']:.0f} s); kept by heuristic: " + json.dumps(e["pairs_by_heuristic"]) + "."]
    out += ["", "Runs: " + ", ".join(f"{v} `{p}`" for v, p in r["runs"].items()), ""]
    return "\n".join(out)
