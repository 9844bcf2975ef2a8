"""`repro curve RUN --sizes 0,50,100,...`: pass@1 against the number of training pairs.

For each size N > 0 the student is trained on the first N pairs of one seeded permutation of the
run's training pairs (train.subset: the same order and seed, so every smaller set is inside every
larger one), with the run's own training settings (the same epochs, so the same steps per
example), exported and evaluated; size 0 is the base student, on its completion prompt and on the
fine-tuned student's instruction prompt (the control row). Each size is a run of its own under
RUN/curve/<N>/ (train, export, evaluate; the training pairs and their manifest copied from RUN),
so a size already done is skipped and a larger size added later reuses the smaller ones' models
and answers. Evaluation covers every HumanEval(+) and MBPP(+) problem unless --set says otherwise
(evaluate.stride, evaluate.mbpp_stride, evaluate.limit); MultiPL-E and DS-1000 are left out.

Writes RUN/curve/curve.json, curve.md and curve.png: pass@1 per size with its Wilson interval,
each size against both base rows (paired bootstrap), and the slope in points per doubling of the
pairs with a bootstrap interval over problems. It does not run the data stages: RUN must have
its training pairs (`repro run` up to clean, or validate for a validated variant).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from repro import config as config_mod
from repro import pipeline
from repro.artifacts import ReproError, RunDir, parquet_rows, write_json, write_text
from repro.eval.stats import paired_bootstrap, wilson
from repro.report.rundata import BENCH_NAMES as NAMES

# What the curve sets before the user's --set: every EvalPlus problem, no other benchmarks.
CURVE_SETS = ["evaluate.stride=1", "evaluate.mbpp_stride=0", "evaluate.limit=0", "evaluate.multilingual=", "evaluate.samples=1"]
BASE_ROWS = ["base", "base-instruct"]
N_BOOT = 2000


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ReproError(f"--sizes {text}: expected comma-separated pair counts, e.g. 0,50,100,200") from None
    if not sizes or sizes[0] < 0:
        raise ReproError(f"--sizes {text}: expected comma-separated pair counts >= 0, e.g. 0,50,100,200")
    return sizes


def from_run(run: Path, sets: list[str]) -> config_mod.Config:
    """The run's own settings (run.json, written by its last command), then CURVE_SETS, then `sets`
    (train., export. and evaluate. keys only: the others would make other training pairs)."""
    try:
        saved = json.loads((run / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ReproError(f"{run / 'run.json'} is missing or unreadable; make the run with `repro run` first") from None
    cfg = config_mod.Config(profile=saved.get("profile", "tiny"), variant=saved.get("variant", "oss"))
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            known = {x.name for x in dataclasses.fields(section)}
            for k, v in (saved.get("config", {}).get(f.name) or {}).items():
                if k in known:
                    setattr(section, k, v)
    bad = [s for s in sets if s.split(".", 1)[0] not in ("train", "export", "evaluate")]
    if bad:
        raise ReproError(f"repro curve --set {bad[0]}: only train., export. and evaluate. settings can change along "
                         "a curve (the others make other pairs); make another run for those")
    for item in CURVE_SETS + list(sets):
        config_mod.apply_override(cfg, item)
    config_mod.check_ranges(cfg)
    if "evol" in config_mod.variant_stages(cfg.variant):
        raise ReproError(f"repro curve {run}: variant {cfg.variant} trains in two stages; a curve takes one stage's "
                         "pairs (use the oss or oss+validated run)")
    return cfg


def size_config(cfg: config_mod.Config, n: int) -> config_mod.Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_pairs=n),
                               evaluate=dataclasses.replace(cfg.evaluate,
                                                            models=BASE_ROWS if n == 0 else ["finetuned"]))


def _bring(parent: Path, d: Path, names: list[str]) -> None:
    """Copy files from the run into a size's directory where missing or different (the training
    pairs with their producer's manifest, so that they count as finished)."""
    for name in names:
        src, dst = parent / name, d / name
        if not src.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copy2(src, dst)


def run(parent: Path, sizes: list[int], sets: list[str], opts: pipeline.Options) -> dict:
    cfg = from_run(parent, sets)
    inputs = pipeline.train_inputs(cfg)
    if not (parent / inputs[0]).exists():
        raise ReproError(f"{parent / inputs[0]} is missing: the curve trains on the run's pairs; make them with "
                         f"`repro run --profile {cfg.profile}` first")
    pool = parquet_rows(parent / inputs[0])
    if sizes[-1] > pool:
        raise ReproError(f"--sizes {','.join(map(str, sizes))}: {parent.name} has {pool} training pairs "
                         f"({inputs[0]}); use sizes up to {pool}")
    from repro import models
    needed = [inputs[0], f"manifests/{pipeline.manifest_name(pipeline.producer(inputs[0], cfg), cfg)}.json"]
    base_file = pipeline._base_files(cfg)  # a checkpoint student's own GGUF, made by the run's export
    if base_file and 0 in sizes and not (parent / base_file[0]).exists():
        raise ReproError(f"{parent / base_file[0]} is missing: a checkpoint student's base rows use the run's export; "
                         f"run `repro export --profile {cfg.profile}` first")
    if not models.is_checkpoint(cfg.train.student):
        models.resolve(cfg.train.student)
    top = parent / "curve"
    for n in sizes:
        c = size_config(cfg, n)
        stages = ["evaluate"] if n == 0 else ["train", "export", "evaluate"]
        pipeline.check(c, stages)
        d = top / str(n)
        _bring(parent, d, base_file if n == 0 else needed)
        opts.logged = False
        pipeline.run_stages(c, RunDir(d), stages, opts)
    result = summarize(top, sizes, pool)
    write_json(top / "curve.json", result)
    write_text(top / "curve.md", render(result))
    from repro.report.curve import curve_png
    (top / "curve.png").write_bytes(curve_png(result))
    return result


def _evaluation(d: Path) -> dict:
    m = RunDir(d).manifest("evaluate")
    if m is None:
        raise ReproError(f"{d} has no evaluation; rerun `repro curve`")
    return m["stats"]


def summarize(top: Path, sizes: list[int], pool: int) -> dict:
    """Per size and benchmark split: pass@1 with its Wilson interval, the paired differences from
    the base rows, and the slope per doubling (sizes > 0) with a bootstrap interval over problems."""
    import numpy as np

    evs = {n: _evaluation(top / str(n)) for n in sizes if (top / str(n) / "manifests" / "evaluate.json").exists()}
    train = {}
    for n in sizes:
        if n and (m := RunDir(top / str(n)).manifest("train")):
            train[n] = {"pairs": m["stats"]["examples"], "steps": m["stats"]["steps"],
                        "final_loss": round(m["stats"]["final_loss"], 4)}
    rows: dict[str, dict[str, list]] = {}  # "label" -> size/base row -> per-task results
    benchmarks = {}
    for n, ev in evs.items():
        for b, info in ev["benchmarks"].items():
            if b not in benchmarks:
                benchmarks[b] = info["task_ids"]
            elif benchmarks[b] != info["task_ids"]:
                raise ReproError(f"{top / str(n)} evaluated other {b} problems than the other sizes; rerun "
                                 "`repro curve` with the same evaluate settings")
            for split in ("base", "plus") if info["plus"] else ("base",):
                label = NAMES.get(b, b) + ("+" if split == "plus" else "")
                rows.setdefault(label, {})
                for model, res in ev["models"].items():
                    key = model if n == 0 else str(n)
                    rows[label][key] = [bool(x) for x in res[b][split]["per_task"]]
    points, diffs, slopes = [], [], {}
    for label in rows:
        r = rows[label]
        for key, passed in r.items():
            lo, hi = wilson(sum(passed), len(passed))
            points.append({"benchmark": label, "row": key, "pairs": 0 if key in BASE_ROWS else int(key),
                           "passed": sum(passed), "n": len(passed), "pass@1": sum(passed) / max(1, len(passed)),
                           "ci95": [lo, hi]})
        for key in [k for k in r if k not in BASE_ROWS]:
            for base in BASE_ROWS:
                if base in r:
                    d, dlo, dhi = paired_bootstrap(r[key], r[base])
                    diffs.append({"benchmark": label, "pairs": int(key), "vs": base, "diff": d, "ci95": [dlo, dhi]})
        trained = sorted(int(k) for k in r if k not in BASE_ROWS)
        if len(trained) >= 2:
            x = np.log2(np.asarray(trained, dtype=float))
            y = np.asarray([r[str(n)] for n in trained], dtype=float)  # sizes x problems
            def fit(ys):
                return float(np.polyfit(x, ys.mean(axis=1), 1)[0])
            rng = np.random.default_rng(0)
            boot = [fit(y[:, rng.integers(0, y.shape[1], y.shape[1])]) for _ in range(N_BOOT)]
            lo, hi = np.quantile(boot, [0.025, 0.975])
            slopes[label] = {"per_doubling": fit(y), "ci95": [float(lo), float(hi)], "sizes": trained}
    return {"pool": pool, "sizes": sizes, "train": {str(k): v for k, v in train.items()},
            "benchmarks": {b: len(ids) for b, ids in benchmarks.items()}, "points": points, "vs_base": diffs,
            "slopes": slopes, "conclusion": conclusion(diffs, slopes)}


def conclusion(diffs: list[dict], slopes: dict) -> str:
    def say(d):
        return f"{d['pairs']} pairs on {d['benchmark']} ({100 * d['diff']:+.1f} points against {d['vs']})"
    above = [d for d in diffs if d["ci95"][0] > 0]
    below = [d for d in diffs if d["ci95"][1] < 0]
    text = []
    if not diffs:
        text.append("No fine-tuned size was evaluated beside a base row, so nothing is compared.")
    elif not above and not below:
        text.append("No size differs from the base student beyond chance, on either prompt: every paired 95% "
                    "interval holds 0.")
    else:
        if above:
            text.append("Better than a base row beyond chance: " + "; ".join(map(say, above)) + ".")
        if below:
            text.append("Worse than a base row beyond chance: " + "; ".join(map(say, below)) + ".")
    for label, s in slopes.items():
        holds = s["ci95"][0] > 0 or s["ci95"][1] < 0
        text.append(f"{label}: {100 * s['per_doubling']:+.1f} points per doubling of the pairs (95% interval "
                    f"{100 * s['ci95'][0]:+.1f} to {100 * s['ci95'][1]:+.1f}; "
                    + ("the slope holds" if holds else "no slope is measurable") + ").")
    if not slopes:
        text.append("A slope needs at least two sizes above 0.")
    return " ".join(text)


def render(r: dict) -> str:
    rows = list(dict.fromkeys(p["row"] for p in r["points"]))
    benches = list(dict.fromkeys(p["benchmark"] for p in r["points"]))
    cell = {(p["row"], p["benchmark"]): p for p in r["points"]}
    out = ["# Learning curve: pass@1 against training pairs", "",
           f"Nested subsets of the run's {r['pool']} training pairs; problems: "
           + ", ".join(f"{NAMES.get(b, b)} {n}" for b, n in r["benchmarks"].items()) + ".", "",
           "## Conclusion", "", r["conclusion"], "", "## pass@1, % (95% Wilson interval)", "",
           "| pairs | steps | final loss | " + " | ".join(benches) + " |", "|---|---|---|" + "---|" * len(benches)]
    for row in rows:
        t = r["train"].get(row, {})
        name = f"0 ({row})" if row in BASE_ROWS else row
        out.append(f"| {name} | {t.get('steps', '-')} | {t.get('final_loss', '-')} | " + " | ".join(
            f"{100 * c['pass@1']:.1f} ({c['passed']}/{c['n']}; {100 * c['ci95'][0]:.1f}–{100 * c['ci95'][1]:.1f})"
            if (c := cell.get((row, b))) else "-" for b in benches) + " |")
    if r["vs_base"]:
        out += ["", "## Difference from the base rows on the same problems, points (paired bootstrap 95% interval)",
                "", "| pairs | against | " + " | ".join(benches) + " |", "|---|---|" + "---|" * len(benches)]
        dcell = {(d["pairs"], d["vs"], d["benchmark"]): d for d in r["vs_base"]}
        for n, vs in dict.fromkeys((d["pairs"], d["vs"]) for d in r["vs_base"]):
            out.append(f"| {n} | {vs} | " + " | ".join(
                f"{100 * d['diff']:+.1f} ({100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})"
                if (d := dcell.get((n, vs, b))) else "-" for b in benches) + " |")
    if r["slopes"]:
        out += ["", "## Slope: points per doubling of the pairs (least squares on log2 pairs, sizes > 0; "
                "95% bootstrap interval over problems)", "", "| benchmark | slope | interval |", "|---|---|---|"]
        out += [f"| {b} | {100 * s['per_doubling']:+.2f} | {100 * s['ci95'][0]:+.2f} to {100 * s['ci95'][1]:+.2f} |"
                for b, s in r["slopes"].items()]
    out += ["", "![pass@1 against training pairs](curve.png)", ""]
    return "\n".join(out)
