"""Data diversity: the report's "Data diversity" section for one run, and `repro compare RUN_A
RUN_B` for two runs side by side (issue 25).

    repro compare tiny tiny-self-instruct            # → runs/compare-tiny-tiny-self-instruct/compare.md

Both use repro/diversity.py's measures with bootstrap intervals. The embedding-based ones
(cosine distance, category entropy) come from the category analysis's own functions
(repro/report/categories.py): the teacher's embeddings where its GGUF is on this machine, else
TF-IDF, said in place. `compare` first brings the two sets to equal size (the larger one
subsampled with a fixed seed), because distinct-n falls as a set grows; then it lays each measure
side by side, says which differences hold (the difference's bootstrap interval excludes 0),
overlays the category counts and the similarity histograms (with the paper's three means), and
puts the fine-tuned students' pass@1 beside each other where both runs trained on the same
number of pairs. Output: `compare.md`, `compare.json` and `compare-figures/`, each written
atomically.

Does NOT: generate, train or evaluate anything; write into either run directory (its embedding
cache lives in the output folder); or say why a difference arises.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from repro import diversity
from repro.artifacts import ROOT, ReproError, RunDir, atomic_path, write_json, write_text
from repro.clean import PAPER_SIMILARITY
from repro.config import ReportConfig
from repro.report.categories import CATEGORIES, EMBED_CHARS
from repro.report.render import render_markdown
from repro.report.rundata import (BENCH_NAMES, CACHE_FILE, RunData, figure_block, local_gguf, model_sha,
                                  model_title, not_run, png_of)

FIGURE_DIR = "compare-figures"
CACHE = "compare-embeddings.npz"
COLORS = ("#4c72b0", "#dd8452")


def _method(r: RunData, cfg: ReportConfig) -> tuple[str, Path | None, str]:
    """(method, GGUF, why TF-IDF stands in): the category analysis's rule (report.categories)."""
    method, teacher, why = cfg.categories, r.teacher(), ""
    if method not in ("auto", "embedding", "tfidf"):
        why, method = f"report.categories={cfg.categories} is not auto, embedding or tfidf", "tfidf"
    gguf = local_gguf(teacher) if method != "tfidf" else None
    if method != "tfidf" and gguf is None:
        why, method = f"the teacher's GGUF ({teacher or 'none set'}) is not on this machine", "tfidf"
    return method, gguf, why


def _sample(n: int, cap: int) -> list[int]:
    """The category analysis's sample: all pairs, or a sorted random sample (seed 0) of `cap`."""
    idx = list(range(n))
    return sorted(random.Random(0).sample(idx, cap)) if n > cap else idx


def measure(r: RunData, cfg: ReportConfig, rows: list[dict], cache: Path | None, seed: int = diversity.SEED) -> dict:
    """Every measure of `rows` (kept pairs), the category counts and the similarities. The
    embedding-based measures use at most report.category_samples pairs."""
    sims = [x.get("humaneval_similarity") for x in rows]
    found = diversity.cheap([x.get("problem") or "" for x in rows], sims if all(s is not None for s in sims) else None,
                            seed=seed)
    idx = _sample(len(rows), cfg.category_samples)
    texts = [((rows[i].get("problem") or "") + "\n" + (rows[i].get("solution") or ""))[:EMBED_CHARS] for i in idx]
    method, gguf, why = _method(r, cfg)
    got = None
    if method != "tfidf":
        try:
            teacher = r.teacher()
            got = diversity.vectors_and_labels(texts, "embedding", gguf, cache, model_sha(teacher) or str(gguf))
        except Exception as e:  # llama.cpp failing costs the embeddings, never the section
            why = f"embedding failed ({type(e).__name__}: {e})"
    if got is None:
        got = diversity.vectors_and_labels(texts, "tfidf")
    vecs, labels, used = got
    found.update(diversity.embedded(vecs, labels, seed=seed))
    return {"measures": found, "method": used, "why": why, "pairs": len(rows), "sampled": len(idx),
            "counts": {c: labels.count(c) for c in CATEGORIES}, "unassigned": labels.count(None),
            "sims": [s for s in sims if s is not None]}


def _how(m: dict, r: RunData) -> str:
    return (f"teacher embeddings ({model_title(r.teacher())}, llama.cpp, last token)" if m["method"] == "embedding"
            else "TF-IDF over identifier-split words" + (f", because {m['why']}" if m["why"] else ""))


DEFINITIONS = ("Words are runs of word characters (`\\w+`) in the lower-cased problem. distinct-n: distinct word "
               "n-grams (not crossing problems) per 1,000 words over the problems; it falls as a set grows, so "
               "compare sets of equal size only. Opening: the first 4 words of the problem. Cosine distance: mean "
               "1 - cosine over pairs of different items; category entropy: Shannon entropy (bits, at most 3.32) "
               "of the ten categories' shares, unassigned items left out. Intervals: 95%, 1,000 bootstrap "
               "resamples of the pairs (fixed seed), percentiles shifted by the bootstrap's bias (resampling "
               "repeats items, which lowers every variety measure). Definitions in full: docs/diversity.md.")


def sec_diversity(r: RunData, cfg: ReportConfig, facts: dict) -> list:
    """The report's "Data diversity" section for one run."""
    clean = r.table("clean.parquet")
    if clean is None:
        return [not_run("clean", "clean.parquet")]
    if len(clean) < 2:
        return [("p", "Fewer than two pairs were kept: no diversity to measure.")]
    m = measure(r, cfg, clean, r.path / CACHE_FILE)
    facts["diversity"] = {"method": m["method"], "pairs": m["pairs"], "sampled": m["sampled"],
                          "measures": diversity.summary(m["measures"])}
    rows = [[diversity.MEASURES[k][0] + (f" (“{v['opening']}”)" if "opening" in v else ""),
             diversity.fmt(k, v), diversity.MEASURES[k][1]] for k, v in m["measures"].items()]
    return [("p", f"How varied the {m['pairs']} kept problems are, each measure with its 95% bootstrap interval. "
                  f"Cosine distance and category entropy use {m['sampled']} pairs and {_how(m, r)}. "
                  "Alone these numbers say little; `repro compare RUN_A RUN_B` sets two runs side by side at equal "
                  "size (docs/diversity.md). " + DEFINITIONS),
            ("table", ["measure", "value (95% interval)", "more diverse when"], rows)]


# ---------------------------------------------------------------------------------------------
# Two runs


def find(spec: str) -> Path:
    """A run named on the command line: a directory, else a name under runs/; it must hold clean.parquet."""
    for p in (Path(spec).expanduser(), ROOT / "runs" / spec):
        if p.is_dir():
            if not (p / "clean.parquet").is_file():
                raise ReproError(f"repro compare {spec}: {p} has no clean.parquet; run `repro clean` for that run first")
            return p
    raise ReproError(f"repro compare {spec}: no such run directory (neither {Path(spec).expanduser().resolve()} "
                     f"nor {ROOT / 'runs' / spec}); give a name under runs/ or a run's directory")


def _pass_at_1(r: RunData) -> tuple[dict, int | None]:
    import json

    try:
        res = json.loads((r.path / "eval" / "results.json").read_text())
    except (OSError, ValueError):
        return {}, None
    tuned = (res.get("models") or {}).get("finetuned") or {}
    out = {}
    for b in ("humaneval", "mbpp"):
        for split in ("base", "plus"):
            x = (tuned.get(b) or {}).get(split)
            if isinstance(x, dict) and "pass@1" in x:
                out[BENCH_NAMES.get(b, b) + ("+" if split == "plus" else "")] = x
    return out, r.stats("train").get("examples")


def _brief(p: dict) -> dict:
    return {k: {"pass@1": x["pass@1"], "ci95": x.get("ci95")} for k, x in p.items()}


def _pct(x: dict | None) -> str:
    return f"{100 * x['pass@1']:.1f} ({100 * x['ci95'][0]:.0f}–{100 * x['ci95'][1]:.0f})" if x else "-"


def compare(path_a: Path, path_b: Path, stages: list, out: Path | None = None) -> dict:
    """Write compare.md, compare.json and compare-figures/ for two runs into `out`
    (default runs/compare-<a>-<b>/); returns what was written."""
    ra, rb = RunData(RunDir(path_a), stages), RunData(RunDir(path_b), stages)
    out = Path(out) if out else ROOT / "runs" / f"compare-{ra.path.name}-{rb.path.name}"
    out.mkdir(parents=True, exist_ok=True)
    title, sections, figs, data = build(ra, rb, out / CACHE)
    with atomic_path(out / FIGURE_DIR) as tmp:
        tmp.mkdir()
        for b in figs:
            (tmp / f"{b[1]}.png").write_bytes(b[2])
    write_text(out / "compare.md", render_markdown(title, sections, FIGURE_DIR))
    write_json(out / "compare.json", data)
    return {"out": out, "pairs": data["pairs"],
            "holds": [k for k, v in data["measures"].items() if v["difference"]["holds"]],
            "figures": [b[1] for b in figs]}


def twin(r: RunData) -> Path | None:
    """The run's Self-Instruct twin (runs/<name>-self-instruct beside runs/<name>), or for a
    Self-Instruct run its OSS-Instruct one, when that has kept pairs."""
    name = r.path.name
    other = (r.path.parent / name.removesuffix("-self-instruct") if name.endswith("-self-instruct")
             else r.path.parent / f"{name}-self-instruct")
    return other if (other / "clean.parquet").is_file() else None


def sec_versus(r: RunData, stages: list) -> list:
    """The report's comparison with the run's twin (`twin`): the measures side by side, the
    overlaid charts, pass@1 at equal size. Its embedding cache is the run's own report cache."""
    other = twin(r)
    if other is None:
        return [("p", f"No Self-Instruct twin of this run (`{r.path.name}-self-instruct/` with kept pairs). "
                      f"`repro run --profile {r.run_json.get('profile', 'tiny')} --variant self-instruct` makes one "
                      "from the same teacher; this section then sets the two side by side (docs/diversity.md).")]
    a, b = (RunData(RunDir(other), stages), r) if r.path.name.endswith("-self-instruct") else (r, RunData(RunDir(other), stages))
    _, sections, _, data = build(a, b, r.path / CACHE, fig_prefix="versus_")
    blocks = [("p", f"OSS-Instruct (`{a.path.name}`) against Self-Instruct from the same teacher (`{b.path.name}`), "
                    f"at {data['pairs']} pairs each: the paper's data claim, measured here.")]
    for head, bl in sections[1:]:
        blocks += [("p", f"**{head}.**")] + bl
    return blocks


def build(ra: RunData, rb: RunData, cache: Path, fig_prefix: str = "") -> tuple[str, list, list, dict]:
    """(title, sections, figure blocks, compare.json's content) for runs A and B, embedding into `cache`."""
    na, nb = ra.path.name, rb.path.name
    if na == nb:
        na, nb = f"A ({na})", f"B ({nb})"
    ca, cb = ra.table("clean.parquet") or [], rb.table("clean.parquet") or []
    if len(ca) < 2 or len(cb) < 2:
        raise ReproError(f"repro compare: {ra.path if len(ca) < 2 else rb.path}/clean.parquet keeps fewer than two "
                         "pairs; nothing to compare")
    ia, ib = diversity.equal_size(len(ca), len(cb))
    cfg_a, cfg_b = (ReportConfig(categories=r.setting("report", "categories"),
                                 category_samples=r.setting("report", "category_samples")) for r in (ra, rb))
    cap = min(cfg_a.category_samples, cfg_b.category_samples)
    ma = measure(ra, dataclasses.replace(cfg_a, category_samples=cap), [ca[i] for i in ia], cache, 0)
    mb = measure(rb, dataclasses.replace(cfg_b, category_samples=cap), [cb[i] for i in ib], cache, 1)
    n = len(ia)
    rows, facts = [], {}
    for k, (label, better) in diversity.MEASURES.items():
        if k not in ma["measures"] or k not in mb["measures"]:
            continue
        a, b = ma["measures"][k], mb["measures"][k]
        d = diversity.difference(a, b)
        lead = (na if (d["value"] > 0) == (better == "higher") else nb) if d["holds"] else "neither (interval spans 0)"
        rows.append([label, diversity.fmt(k, a) + (f" “{a['opening']}”" if "opening" in a else ""),
                     diversity.fmt(k, b) + (f" “{b['opening']}”" if "opening" in b else ""),
                     f"{d['value']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})", "yes" if d["holds"] else "no",
                     better, lead])
        facts[k] = {"a": diversity.summary({k: a})[k], "b": diversity.summary({k: b})[k],
                    "difference": {"value": round(d["value"], 4), "ci95": [round(x, 4) for x in d["ci95"]],
                                   "holds": d["holds"]}}
    sized = (f"both sets at {n} pairs (the smaller set whole, the larger one ({max(len(ca), len(cb))} pairs) "
             "subsampled with a fixed seed)" if len(ca) != len(cb) else f"both sets have {n} kept pairs")
    same_method = ma["method"] == mb["method"]
    sections = [("Runs", [("table", ["", "run directory", "kept pairs", "compared", "embedding measures from"],
                           [[na, str(ra.path), len(ca), n, f"{ma['sampled']} pairs, {_how(ma, ra)}"],
                            [nb, str(rb.path), len(cb), n, f"{mb['sampled']} pairs, {_how(mb, rb)}"]])]
                 + ([] if same_method else [("p", "**The two runs' embedding measures come from different methods**, "
                                                  "so cosine distance and category entropy are not comparable here.")])),
                ("Measures", [("p", f"Each measure with its 95% bootstrap interval, {sized}. A difference holds when "
                                    f"the bootstrap interval of {na} − {nb} excludes 0; seven measures are tested at once, so "
                                    "one borderline difference may be chance. " + DEFINITIONS),
                              ("table", ["measure", na, nb, f"{na} − {nb} (95%)", "holds", "more diverse when", "more diverse"],
                               rows)])]
    figs = []

    def draw_categories(fig):
        import numpy as np
        ax = fig.add_subplot()
        names = list(CATEGORIES)[::-1]
        y = np.arange(len(names))
        for j, (m, name) in enumerate(((ma, na), (mb, nb))):
            ax.barh(y + (0.2 if j == 0 else -0.2), [m["counts"][c] for c in names], height=0.4, color=COLORS[j],
                    label=name)
        ax.set_yticks(y, names)
        ax.set_xlabel("pairs")
        ax.legend(fontsize=8)
    figs.append(figure_block(fig_prefix + "categories", png_of(draw_categories, (8, 3.6)),
                             f"Pairs per category, {na} and {nb} ({ma['sampled']} pairs each)."))

    def draw_similarity(fig):
        ax = fig.add_subplot()
        top = max([0.5] + ma["sims"] + mb["sims"])
        for j, (m, name) in enumerate(((ma, na), (mb, nb))):
            if m["sims"]:
                mean = sum(m["sims"]) / len(m["sims"])
                ax.hist(m["sims"], bins=20, range=(0, top), histtype="stepfilled", alpha=0.45, color=COLORS[j],
                        label=f"{name}: mean {mean:.3f}")
                ax.axvline(mean, color=COLORS[j], lw=2)
        for (name, v), color in zip(PAPER_SIMILARITY.items(), ("#55a868", "#8172b2", "#c44e52")):
            ax.axvline(v, color=color, ls="--", lw=1.5, label=f"paper, {name}: {v}")
        ax.set_xlabel("maximum TF-IDF cosine similarity to a HumanEval problem")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=7)
    if ma["sims"] or mb["sims"]:
        figs.append(figure_block(fig_prefix + "similarity", png_of(draw_similarity, (8, 3.2)),
                                 "Similarity to HumanEval (clean stage), with the paper's three means dashed."))
    sections.append(("Figures", figs))
    (pa, ea), (pb, eb) = _pass_at_1(ra), _pass_at_1(rb)
    if not pa or not pb:
        text = [("p", "pass@1: " + " and ".join(f"{name} has no fine-tuned student's results (`eval/results.json`)"
                                                 for name, p in ((na, pa), (nb, pb)) if not p) + ".")]
    else:
        equal = ea is not None and ea == eb
        text = [("p", (f"The fine-tuned students' pass@1 in % (95% interval); both trained on {ea} pairs, so at equal "
                       "size." if equal else f"**Not at equal size**: {na} trained on {ea} pairs, {nb} on {eb}; the "
                       "numbers are shown, not compared.")),
                ("table", ["benchmark", na, nb], [[k, _pct(pa.get(k)), _pct(pb.get(k))]
                                                  for k in dict.fromkeys(list(pa) + list(pb))])]
    sections.append(("pass@1", text))
    title = f"Data diversity: `{ra.path.name}` against `{rb.path.name}`"
    return title, sections, figs, {"a": str(ra.path), "b": str(rb.path), "pairs": n, "kept": [len(ca), len(cb)],
                                   "methods": [ma["method"], mb["method"]], "measures": facts,
                                   "pass@1": {"a": _brief(pa), "b": _brief(pb), "train_pairs": [ea, eb]}}
