"""The report's sections: each `sec_*` returns its blocks — ("p", text), ("table", header, rows),
("ul", items), ("pre", text) or ("fig", name, png, caption) — which render.py turns into Markdown
and HTML. A section reads the run through `RunData` and computes nothing that a stage should have
recorded (the category analysis is the one computation, in categories.py)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from repro import versions
from repro.artifacts import sql_str, read_jsonl
from repro.clean import PAPER_SIMILARITY
from repro.config import ReportConfig
from repro.languages import MULTIPL_E
from repro.report.categories import CATEGORIES, EMBED_CHARS, categorize
from repro.report.effects import control_sentences
from repro.report.rundata import (BENCH_NAMES, CACHE_FILE, NOT_RUN, PAPER_PAIRS, PAPER_ROWS, RunData, columns,
                                  counts, error_bars, figure_block, join, local_gguf, model_sha, model_title,
                                  not_run, pct, png_of)

def _funnel(r: RunData) -> list[tuple[str, str, str, str]]:
    rows = []
    if s := r.stats("seeds"):
        rows.append(("seeds", f"{s.get('files', 0)} files", f"{s.get('seeds', 0)} seeds",
                     ", ".join(f"{k.removeprefix('skipped_')}: {v}" for k, v in s.items()
                               if k.startswith("skipped_")) or "-"))
    if s := r.stats("generate"):
        rows.append(("generate", f"{s.get('seeds', '?')} seeds", f"{s.get('pairs', '?')} pairs",
                     ", ".join(f"{k}: {v}" for k, v in s.get("rejected_by_reason", {}).items()) or "-"))
    if s := r.stats("clean"):
        rows.append(("clean", f"{s.get('pairs_in', '?')} pairs", f"{s.get('kept', '?')} pairs",
                     ", ".join(f"{k}: {v}" for k, v in s.get("removed_by_reason", {}).items()) or "-"))
    if s := r.stats("validate"):
        rows.append(("validate", f"{s.get('pairs_in', '?')} pairs", f"{s.get('kept', '?')} pairs",
                     f"passed {s.get('passed')}, failed {s.get('failed')}, timeout {s.get('timeout')}, no usable tests "
                     f"{s.get('no_tests')}, not testable here {s.get('not_run')} ({'kept' if r.setting('validate', 'untested') == 'keep' else 'dropped'})"))
    if s := r.stats("evol"):
        rows.append(("evol", f"{s.get('evolved', '?')} problems evolved", f"{s.get('kept', '?')} evolved pairs",
                     ", ".join(f"{k}: {v}" for k, v in s.get("rejected_by_reason", {}).items()) or "-"))
    if s := r.stats("train"):
        first, final = s.get("first_loss"), s.get("final_loss")
        loss = (f", loss {first:.3f} → {final:.3f}"
                if isinstance(first, (int, float)) and isinstance(final, (int, float)) else "")
        rows.append(("train", f"{s.get('examples', '?')} examples", f"{s.get('steps', '?')} steps{loss}",
                     f"truncated: {s.get('truncated', '-')}, prompt too long: {s.get('dropped_prompt_too_long', '-')}"))
    if s := r.stats("export"):
        rows.append(("export", "adapter + student",
                     f"{s.get('quant', '?')} GGUF, {s.get('bytes', 0) / 2**20:.0f} MiB", "-"))
    if s := r.stats("evaluate"):
        rows.append(("evaluate", ", ".join(f"{v.get('n', '?')} {k}" for k, v in s.get("benchmarks", {}).items())
                     + " problems", f"{len(s.get('models', {}))} models", "-"))
    done = {row[0] for row in rows}
    order = {s: i for i, s in enumerate(r.order)}
    from repro.config import variant_stages

    extra = variant_stages(r.run_json.get("variant", "oss"))
    wanted = [s for s in r.order if s not in r.optional or s in extra]
    rows += [(s, NOT_RUN, "-", "-") for s in wanted if s not in done]
    return sorted(rows, key=lambda row: order[row[0]])


def _throughput(r: RunData, stage: str) -> str:
    s, secs = r.stats(stage), r.m[stage].get("seconds")
    if not s or not secs:
        return "-"
    if stage == "generate" and s.get("tokens_per_second"):
        return f"{s['tokens_per_second']} tokens/s"
    if stage == "train" and s.get("tokens_per_second"):
        return f"{s['tokens_per_second']} tokens/s"
    if stage == "validate" and s.get("pairs_per_minute"):
        return f"{s['pairs_per_minute']} pairs/min"
    if stage == "evol" and (s.get("teacher") or {}).get("tokens_per_second"):
        return f"{s['teacher']['tokens_per_second']} tokens/s"
    if stage == "evaluate":
        answers = sum(v.get("n", 0) for v in s.get("benchmarks", {}).values()) * len(s.get("models", {}))
        work = (answers, "answers judged")
    else:
        work = {"seeds": (s.get("files"), "files"), "generate": (s.get("seeds"), "seeds"),
                "clean": (s.get("pairs_in"), "pairs"), "train": (s.get("examples"), "examples"),
                "export": ((s.get("bytes") or 0) / 2**20, "MiB of GGUF")}[stage]
    rate = work[0] / secs if work[0] else 0
    return f"{rate:.0f} {work[1]}/s" if rate >= 100 else f"{rate:.3g} {work[1]}/s" if rate else "-"


def sec_pipeline(r: RunData) -> list:
    m = r.m
    rows = [[stage, cin, cout, notes, str(m[stage].get("seconds", "-")), str(m[stage].get("peak_rss_mib", "-")),
             _throughput(r, stage)] for stage, cin, cout, notes in _funnel(r)]
    out = [("p", "Rows in and out of every stage, with what was removed and why. Peak RSS is the process's peak "
                 "resident memory when the stage finished: where stages ran in one `repro run`, it includes what "
                 "earlier stages needed. Throughput is tokens/s where the stage counts tokens, else items/s over "
                 "the stage's wall time."),
           ("table", ["stage", "in", "out", "removed / notes", "seconds", "peak RSS so far, MiB", "throughput"], rows)]
    times = [(s, m[s]["seconds"]) for s in r.order if isinstance(m[s].get("seconds"), (int, float))]
    if times:
        total = sum(t for _, t in times)
        out.append(("p", f"Total stage time: {total / 60:.1f} min."))

        def draw(fig):
            ax = fig.add_subplot()
            ax.barh([s for s, _ in times][::-1], [t / 60 for _, t in times][::-1], color="#4c72b0")
            for i, (_, t) in enumerate(times[::-1]):
                ax.text(t / 60, i, f" {t / 60:.1f} min" if t >= 60 else f" {t:.0f} s", va="center", fontsize=8)
            ax.set_xlabel("wall time, minutes")
            ax.set_xlim(0, max(t for _, t in times) / 60 * 1.2 or 1)
        out.append(figure_block("wall_time", png_of(draw, (8, 2.6)), "Wall time per stage (from the stage manifests)."))
    if g := r.stats("generate"):
        out.append(("p", f"Teacher throughput: {g.get('tokens_per_second')} tokens/s over "
                         f"{g.get('completion_tokens')} generated tokens, {g.get('backend', 'llama')} backend with "
                         f"{g.get('parallel', 1)} sequences at a time and {g.get('threads', '?')} llama.cpp "
                         "threads (this run's new answers)."))
    if (c := r.stats("clean")) and "benchmarks" in c:  # details: decontamination.md
        out.append(("p", "Decontamination (pairs flagged, see `decontamination.md`): " + "; ".join(
            f"{b} {v if isinstance(v, str) else v.get('either', 0)}" for b, v in c["benchmarks"].items()) + "."))
    if t := r.stats("train"):
        g = t.get("greedy_agreement")
        out.append(("p", f"Training: {t.get('tokens_per_second')} tokens/s, {t.get('precision')}, "
                         f"{t.get('trainable_parameters', 0):,} LoRA parameters, {t.get('threads')} threads."
                         + (f" Greedy next-token agreement with the targets of {g['examples']} training examples: "
                            f"{100 * g['adapter_off']:.1f}% without the adapter, {100 * g['adapter_on']:.1f}% with it."
                            if g else "")))
    if (x := r.stats("export")) and (rt := x.get("roundtrip")):
        out.append(("p", f"Export round trip ({rt['text_tokens']}-token text, llama.cpp against the merged PyTorch "
                         f"model): tokenizer ids {'match' if rt['tokenizer_match'] else 'DIFFER'}; greedy next-token "
                         "agreement " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rt["agreement"].items())
                         + (f". LoRA GGUF: `{x['lora_gguf']}`." if x.get("lora_gguf") else ".")))
    return out


def sec_data(r: RunData) -> list:
    out = []
    seeds = r.path / "seeds.parquet"
    if seeds.exists():
        # Seeds per language and per detected licence, most first.
        langs = counts(f"SELECT language, count(*) AS n FROM read_parquet({sql_str(seeds)}) "
                        "GROUP BY language ORDER BY n DESC, language")
        lic = counts(f"SELECT coalesce(license, 'unknown') AS l, count(*) AS n FROM read_parquet({sql_str(seeds)}) "
                      "GROUP BY l ORDER BY n DESC, l")
        n = sum(k for _, k in langs)
        out += [("p", f"**Seeds**: {n} snippets in {len(langs)} languages, with the licence detected for their file "
                      "(`unknown`: none found; the paper's seeds are permissively licensed The Stack files)."),
                ("table", ["licence", "seeds"], [[k, str(v)] for k, v in lic[:12]]
                 + ([[f"{len(lic) - 12} others", str(sum(v for _, v in lic[12:]))]] if len(lic) > 12 else []))]
    else:
        langs = []
        out.append(not_run("seeds", "seeds.parquet"))
    clean = r.path / "clean.parquet"
    if clean.exists():
        # Kept pairs per seed language, and the solutions' fenced code blocks per declared language.
        pairs = dict(counts(f"SELECT language, count(*) FROM read_parquet({sql_str(clean)}) GROUP BY language"))
        blocks = dict(counts(f"SELECT coalesce(nullif(b.language, ''), 'unlabelled'), count(*) FROM "
                              f"(SELECT unnest(code_blocks) AS b FROM read_parquet({sql_str(clean)})) GROUP BY 1"))
        names = list(dict.fromkeys([k for k, _ in langs] + sorted(pairs, key=lambda k: -pairs[k])
                                   + sorted(blocks, key=lambda k: -blocks[k])))
        out += [("p", f"**Generated problems**: {sum(pairs.values())} pairs kept by the clean stage. By language: the "
                      "seeds, the kept pairs (by their seed's language), and the fenced code blocks of the solutions "
                      "by the language their fence declares (a teacher may answer a C seed in Python)."),
                ("table", ["language", "seeds", "kept pairs", "code blocks in solutions"],
                 [[k, str(dict(langs).get(k, 0)), str(pairs.get(k, 0)), str(blocks.get(k, 0))] for k in names])]
    else:
        if langs:
            out.append(("table", ["language", "seeds"], [[k, str(v)] for k, v in langs]))
        out.append(not_run("clean", "clean.parquet"))
    return out


def sec_lengths(r: RunData, count, counted: str) -> list:
    series = []
    if (seeds := r.table("seeds.parquet")) is not None:
        series.append(("seeds", [count(x["seed"] or "") for x in seeds]))
    if (clean := r.table("clean.parquet")) is not None:
        series.append(("problems", [count(x["problem"] or "") for x in clean]))
        series.append(("solutions", [count(x["solution"] or "") for x in clean]))
    if not series:
        return [not_run("seeds", "seeds.parquet")]

    def draw(fig):
        for i, (name, xs) in enumerate(series, 1):
            ax = fig.add_subplot(1, len(series), i)
            if xs:
                ax.hist(xs, bins=min(20, max(1, len(set(xs)))), color="#55a868")
                med = sorted(xs)[len(xs) // 2]
                ax.axvline(med, color="k", ls="--", lw=1, label=f"median {med}")
                ax.legend(fontsize=7)
            ax.set_title(f"{name} (n={len(xs)})", fontsize=9)
            ax.set_xlabel("tokens", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.axes[0].set_ylabel("count", fontsize=8)
    out = [("table", ["text", "n", "median", "mean", "max"],
            [[name, str(len(xs)), str(sorted(xs)[len(xs) // 2]), f"{sum(xs) / len(xs):.0f}", str(max(xs))]
             for name, xs in series if xs]),
           figure_block("lengths", png_of(draw, (9, 2.8)),
                f"Lengths in {counted}: the seed snippets, and the kept pairs' problems and solutions.")]
    if clean is None:
        out.append(not_run("clean", "clean.parquet"))
    return out


def sec_categories(r: RunData, cfg: ReportConfig, facts: dict) -> list:
    clean = r.table("clean.parquet")
    if clean is None:
        return [not_run("clean", "clean.parquet")]
    if not clean:
        return [("p", "No pairs were kept, so there is nothing to categorize.")]
    idx = list(range(len(clean)))
    if len(idx) > cfg.category_samples:
        idx = sorted(random.Random(0).sample(idx, cfg.category_samples))
    texts = [((clean[i]["problem"] or "") + "\n" + (clean[i]["solution"] or ""))[:EMBED_CHARS] for i in idx]
    why, teacher = "", r.teacher()
    method = cfg.categories
    if method not in ("auto", "embedding", "tfidf"):
        why, method = f"report.categories={cfg.categories} is not auto, embedding or tfidf", "tfidf"
    gguf = local_gguf(teacher) if method != "tfidf" else None
    if method != "tfidf" and gguf is None:
        why = f"the teacher's GGUF ({teacher or 'none set'}) is not on this machine"
        method = "tfidf"
    res = None
    if method != "tfidf":
        try:
            res = categorize(texts, "embedding", gguf, r.path / CACHE_FILE, model_sha(teacher) or str(gguf))
        except Exception as e:  # llama.cpp failing here must not cost the rest of the report
            why = f"embedding failed ({type(e).__name__}: {e})"
    if res is None:
        res = categorize(texts, "tfidf")
    counts = {c: res["assigned"].count(c) for c in CATEGORIES}
    unassigned = res["assigned"].count(None)
    how = (f"embeddings of the teacher ({model_title(teacher)}, llama.cpp: the last token's hidden state after a "
           f"prompt asking for the topic, cosine), "
           f"{res['embedded_now']} of {len(texts) + len(CATEGORIES)} texts (the pairs and the ten descriptions) "
           f"embedded by this build, the others read from the cache `{CACHE_FILE}`"
           if res["method"] == "embedding" else
           "TF-IDF over identifier-split words (cosine)" + (f", because {why}" if why else ""))
    facts["categories"] = {"method": res["method"], "why_fallback": why or None, "cap": cfg.category_samples,
                           "samples": len(idx), "of": len(clean), "seconds": res["seconds"],
                           "embedded_now": res["embedded_now"],
                           "model": teacher if res["method"] == "embedding" else None,
                           "counts": counts, "unassigned": unassigned,
                           "assigned": {clean[i].get("seed_id") or str(i): c for i, c in zip(idx, res["assigned"])}}

    def draw(fig):
        ax = fig.add_subplot()
        names = list(CATEGORIES)[::-1]
        ax.barh(names, [counts[c] for c in names], color="#8172b2")
        for i, c in enumerate(names):
            ax.text(counts[c], i, f" {counts[c]}", va="center", fontsize=8)
        ax.set_xlabel("pairs")
        ax.set_xlim(0, max(counts.values() or [1]) * 1.15 + 0.5)
    sample = (f"all {len(idx)} kept pairs" if len(idx) == len(clean) else
              f"{len(idx)} of {len(clean)} kept pairs (a fixed random sample; cap report.category_samples="
              f"{cfg.category_samples})")
    return [("p", f"The paper's category analysis (its Figure 2): each pair (the first {EMBED_CHARS:,} characters of "
                  f"problem + solution) gets the nearest of ten categories, each described by one sentence of ours "
                  f"(`repro/report/categories.py`, CATEGORIES). Method: {how}. Sample: {sample}, categorized in "
                  f"{res['seconds']} s." + (f" {unassigned} pairs share no word with any description and are left "
                                              "unassigned." if unassigned else "")
                  + " A rough picture of a small sample, not a validated classifier."),
            figure_block("categories", png_of(draw, (8, 3.2)),
                 f"Pairs per category ({'teacher embeddings' if res['method'] == 'embedding' else 'TF-IDF'}, "
                 f"{len(idx)} pairs).")]


def sec_similarity(r: RunData) -> list:
    clean = r.table("clean.parquet")
    if clean is None:
        return [not_run("clean", "clean.parquet")]
    sims = [x["humaneval_similarity"] for x in clean if x.get("humaneval_similarity") is not None]
    if not sims:
        return [("p", "No per-pair similarity in `clean.parquet` (clean.similarity=false, or no pairs kept).")]
    mean = sum(sims) / len(sims)

    def draw(fig):
        ax = fig.add_subplot()
        ax.hist(sims, bins=20, range=(0, max(0.5, max(sims))), color="#c0c0c0", edgecolor="#808080")
        ax.axvline(mean, color="k", lw=2, label=f"this run: mean {mean:.3f}")
        for (name, v), color in zip(PAPER_SIMILARITY.items(), ("#4c72b0", "#dd8452", "#c44e52")):
            ax.axvline(v, color=color, ls="--", lw=1.5, label=f"paper, {name}: {v}")
        ax.set_xlabel("maximum TF-IDF cosine similarity to a HumanEval problem")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=7)
    return [("p", f"Each kept pair's maximum TF-IDF cosine similarity to a HumanEval problem (prompt + canonical "
                  f"solution), as computed by the clean stage (`humaneval_similarity`). Mean {mean:.3f} over "
                  f"{len(sims)} pairs; the paper's means: " + ", ".join(f"{k} {v}" for k, v in PAPER_SIMILARITY.items())
                  + ". Our TF-IDF is fit on our few pairs plus HumanEval, so its vocabulary and weights differ from "
                    "the paper's; compare the shapes more than the third decimal."),
            figure_block("similarity", png_of(draw, (8, 3.2)),
                 "Similarity to HumanEval, with the paper's three reference means as dashed lines.")]


def sec_training(r: RunData) -> list:
    log = read_jsonl(r.path / "train_log.jsonl")
    steps = [x for x in log if isinstance(x.get("loss"), (int, float)) and "step" in x]
    if not steps:
        return [not_run("train", "train_log.jsonl")]
    t = r.stats("train")

    def draw(fig):
        ax = fig.add_subplot()
        ax.plot([x["step"] for x in steps], [x["loss"] for x in steps], "o-", ms=3, color="#c44e52", label="loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (per target token)")
        lines = ax.get_lines()
        if any("lr" in x for x in steps):
            ax2 = ax.twinx()
            lines += ax2.plot([x["step"] for x in steps], [x.get("lr", 0) for x in steps], ":", color="#4c72b0",
                              label="learning rate (right axis)")
            ax2.set_ylabel("learning rate")
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    tps = [x["tokens_per_second"] for x in steps if x.get("tokens_per_second")]
    return [("p", f"{len(steps)} optimizer steps from `train_log.jsonl`"
                  + (f" ({t.get('backend')} on {t.get('device')}, {t.get('precision')})" if t else "")
                  + f"; loss {steps[0]['loss']:.3f} at the first step, {steps[-1]['loss']:.3f} at the last"
                  + (f"; {sum(tps) / len(tps):.1f} tokens/s on average" if tps else "") + ". A training loss "
                    "says the student fits its pairs, not that it codes better: see pass@1 below."),
            figure_block("loss", png_of(draw, (8, 3)), "Training loss and learning rate per optimizer step.")]


def sec_beyond(r: RunData) -> list:
    """The validation and Evol-Instruct stages of a variant run (repro/validate.py, repro/evol.py)."""
    v, e = r.stats("validate"), r.stats("evol")
    variant = r.run_json.get("variant", "oss")
    if not v and not e:
        return [("p", f"This run's variant is `{variant}`: no validation or Evol-Instruct stage. `repro run --variant "
                      "oss+validated` (or +evol) adds them, and `repro ablate` compares the variants at equal "
                      "training-set size.")]
    out = [("p", f"Variant `{variant}`.")]
    if v:
        secs = r.m["validate"].get("seconds")
        t = v.get("teacher") or {}
        out.append(("p", f"Validation (SelfCodeAlign-style; `validation.jsonl` has every verdict): the teacher wrote "
                         f"tests for the {v['pairs_in'] - v['not_run']} pairs with Python or JavaScript code, each "
                         f"solution ran with its tests in the sandbox; {v['passed']} passed ({100 * (v['pass_rate'] or 0):.1f}% "
                         f"of those tested), {v['failed']} failed, {v['timeout']} timed out and {v['no_tests']} got no "
                         f"usable tests. {v['kept']} of {v['pairs_in']} pairs kept"
                         + (f", {v['rescued_by_sampling']} of them with a resampled solution ({v['samples']} candidates "
                            "per failing problem)" if v.get("samples", 1) > 1 else "")
                         + f". Throughput: {v.get('pairs_per_minute')} pairs per minute"
                         + (f" ({secs:.0f} s)" if secs else "") + f", teacher {t.get('tokens_per_second')} tokens/s, "
                         f"{v.get('programs_per_second')} programs per second"
                         + (f" ({reused} teacher answers reused from an earlier, interrupted or forced, run)"
                            if (reused := (t.get("tests") or {}).get("reused", 0)) else "") + "."))
        rows = [[lang, str(d["passed"]), str(d["failed"]), str(d["timeout"]), str(d["no_tests"]), str(d["not_run"]),
                 "-" if d["pass_rate"] is None else f"{100 * d['pass_rate']:.1f}%"]
                for lang, d in sorted(v["per_language"].items(), key=lambda kv: -sum(
                    x for k, x in kv[1].items() if k != "pass_rate"))]
        out.append(("table", ["solution language", "passed", "failed", "timeout", "no usable tests",
                              "not testable here", "pass rate of the tested"], rows))
    if e:
        out.append(("p", f"Evol-Instruct (MagicoderS-style): {e['evolved']} of {e['problems']} clean problems "
                         f"rewritten harder by the teacher, {e['pairs']} answered, {e['kept']} pairs kept after "
                         f"cleaning (`evol_decontamination.md`); by heuristic: "
                         + (", ".join(f"{k} {n}" for k, n in e.get("pairs_by_heuristic", {}).items()) or "none")
                         + f". Teacher {(e.get('teacher') or {}).get('tokens_per_second')} tokens/s."))
    if (t := r.stats("train")).get("stage2"):
        out.append(("p", f"Training in two stages: {t['stage1']['examples']} OSS-Instruct pairs "
                         f"({t['stage1']['steps']} steps), then {t['stage2']['examples']} evolved pairs "
                         f"({t['stage2']['steps']} steps) from that adapter; the loss curve above is the first stage's "
                         "(`train_log_evol.jsonl` has the second)."))
    elif t.get("stage2_skipped"):
        out.append(("p", f"**No second training stage:** the evol stage kept no pairs, so the model is the "
                         f"OSS-Instruct stage's ({t['stage1']['examples']} pairs, {t['stage1']['steps']} steps) "
                         "alone, trained as the variant without `+evol` would be. Raise `evol.num` for more evolved "
                         "problems."))
    return out




def sec_evaluation(r: RunData) -> list:
    ev = r.stats("evaluate")
    paper = [("p", "For scale, **the paper's 7B models** (Table 1 of the paper: full fine-tuning on 75K OSS-Instruct "
                   "pairs, S = plus Evol-Instruct; EvalPlus pass@1, greedy; from the Magicoder README) — the paper's "
                   "numbers, not this run's, and not comparable with a small student trained on a few dozen pairs:"),
             ("table", ["model", "HumanEval", "HumanEval+", "MBPP", "MBPP+"],
              [[row[0]] + [str(x) for x in row[1:]] for row in PAPER_ROWS])]
    if not ev:
        return [("p", f"The evaluate stage has {NOT_RUN} (no `manifests/evaluate.json`).")] + paper
    cols = columns(ev)
    out = [("p", f"Greedy, at most {ev.get('max_tokens')} new tokens, one answer per problem, through llama.cpp on the "
                 "GGUF files (the students quantized), judged with EvalPlus's rules; pass@1 in % with its 95% Wilson "
                 "interval. A plus pass needs the base tests too.")]
    filled = {label: [x["filled"] for x in res.values() if isinstance(x, dict) and "filled" in x]
              for label, res in ev["models"].items()}
    if any(filled.values()):
        rows = ", ".join(f"{label} {sum(f['answers'] for f in fs)} ({sum(f['tokens'] for f in fs)} tokens)"
                         for label, fs in filled.items() if fs)
        out.append(("p", f"Answers that fell into a verbatim loop were completed by repeating it to the limit "
                         f"instead of decoding it (`evaluate.fill_loops={ev.get('fill_loops')}`: the last "
                         f"{ev.get('fill_loops')} tokens a cycle repeated 3 times over at least): {rows}. Decoding "
                         "them gives the same text while the model stays in its loop; docs/evaluate.md says how often "
                         "that held when measured, and `--set evaluate.fill_loops=0` decodes every token."))
    if iso := ev.get("sandbox"):
        out.append(("p", f"Every program ran in our sandbox, {iso['level']} isolation"
                         + (", each run under its own uid" if iso.get("uid") == "own" else "")
                         + (f" ({iso['why']})" if iso.get("why") else "")
                         + " — what that contains and what it does not: docs/sandbox.md in the project."))
    out.append(("ul", [f"{BENCH_NAMES.get(b, b)}: "
                       f"{'all problems' if info.get('subset') == 'all' else info.get('subset')}; "
                       f"{info.get('version')}, sha256 `{(info.get('sha256') or '')[:16]}…`"
                       + (f" ({info['note']})" if info.get("note") else "")
                       for b, info in ev.get("benchmarks", {}).items()]))
    out.append(("table", ["model", "prompt"] + [c[2] for c in cols] + ["answers decoded now / reused"],
                [[label, res.get("prompt_style", "-")] + [pct(res[b][s]) if s in res.get(b, {}) else "-"
                                                          for b, s, _ in cols]
                 + [f"{res.get('generated', '-')} / {res.get('reused', '-')}"] for label, res in ev["models"].items()]))
    if ev.get("comparisons"):
        pairs = dict.fromkeys((c["a"], c["b"]) for c in ev["comparisons"])
        by = {(c["a"], c["b"], c["benchmark"], c["split"]): c for c in ev["comparisons"]}
        rows = []
        for a, b in pairs:
            cells = []
            for bench, split, _ in cols:
                c = by.get((a, b, bench, split))
                cells.append(f"{100 * c['diff']:+.1f} ({100 * c['ci95'][0]:+.0f} to {100 * c['ci95'][1]:+.0f})"
                             if c else "-")
            rows.append([f"{a} − {b}"] + cells)
        out += [("p", "Differences on the same problems, in points, with a paired bootstrap 95% interval (an interval "
                      "holding 0 is no evidence of a difference)"
                      + (". `base-instruct` is the control row: the base student given the fine-tuned student's "
                         "instruction prompt and template. `finetuned − base-instruct` is what the training did at "
                         "an equal prompt; `base-instruct − base` is what the prompt alone does; `finetuned − base` "
                         "is the paper's comparison, both at once:" if "base-instruct" in ev["models"] else ":")),
                ("table", ["difference"] + [c[2] for c in cols], rows)]

    def draw(fig):
        import numpy as np

        ax = fig.add_subplot()
        models = list(ev["models"])
        width = 0.8 / max(1, len(models))
        x = np.arange(len(cols))
        for i, label in enumerate(models):
            res = [ev["models"][label].get(b, {}).get(s) for b, s, _ in cols]
            p = [100 * v["pass@1"] if v else 0 for v in res]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, p, width, yerr=error_bars(res), capsize=3,
                   label=label)
        ax.set_xticks(x, [c[2] for c in cols])
        ax.set_ylabel("pass@1, %")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    out.append(figure_block("pass_at_1", png_of(draw, (8, 3.4)),
                    "pass@1 of each model with its 95% Wilson interval (this run's problems only)."))
    return out + paper


# MultiPL-E's language keys -> the language names the seeds and pairs use.
PAIR_LANGUAGE = {key: lang.name for key, lang in MULTIPL_E.items()}


def sec_multilingual(r: RunData) -> list:
    """MultiPL-E per language and DS-1000 per library, each model with its interval, beside the
    share of training pairs in each language (the paper's ablation: non-Python seeds raised MultiPL-E)."""
    ev = r.stats("evaluate")
    if not ev:
        return [("p", f"The evaluate stage has {NOT_RUN} (no `manifests/evaluate.json`).")]
    sets = ev.get("multilingual") or {}
    if not sets:
        return [("p", "Not evaluated in this run (`evaluate.multilingual` was empty; the `tiny` profile leaves "
                      "them out, where both students scored 0 on every problem). Add them with "
                      "`--set evaluate.multilingual=multipl-e,ds1000` (every `evaluate.multilingual_stride`-th "
                      "problem) or `--full-eval` (all of them).")]
    models = [m for m in ev["models"] if any(n in ev["models"][m] for n in sets)]  # not the control row
    out = []
    langs = [n for n in sets if n.startswith("multipl-e/")]
    if langs:
        try:
            pairs = r.table("clean.parquet") or []
        except Exception:  # a damaged clean.parquet costs its own sections; here only the pair counts
            pairs = []
        by_lang: dict[str, int] = {}
        for row in pairs:
            by_lang[row.get("language") or "?"] = by_lang.get(row.get("language") or "?", 0) + 1
        non_py = sum(v for k, v in by_lang.items() if k != "python")
        out.append(("p", "**MultiPL-E** (HumanEval translated; a completion prompt for every model, as the bigcode "
                         "harness the paper used; pass@1 in % with its 95% Wilson interval). The paper trained on "
                         "seeds of nine languages and found that the non-Python pairs alone raised the MultiPL-E "
                         "average (CodeLlama-Python-7B: 29.6 base, 38.3 with the non-Python pairs only, 37.8 with "
                         "all 75K). Here, " + (f"{non_py} of {len(pairs)} training pairs ({100 * non_py / len(pairs):.0f}%) "
                                                "are not Python" if pairs else "no training pairs are on disk yet")
                         + "; the last column is how many are in each language."))
        rows = []
        for n in langs:
            x = sets[n]
            key = n.split("/", 1)[1]
            cells = []
            for m in models:
                res = ev["models"][m].get(n)
                cells.append(pct(res["base"]) if res else "not run")
            diff = next((c for c in ev.get("comparisons", []) if c["benchmark"] == n and
                         {c["a"], c["b"]} == {"finetuned", "base"}), None)
            sign = 1 if diff and diff["a"] == "finetuned" else -1
            d = (f"{100 * sign * diff['diff']:+.1f} ({100 * min(sign * diff['ci95'][0], sign * diff['ci95'][1]):+.0f} "
                 f"to {100 * max(sign * diff['ci95'][0], sign * diff['ci95'][1]):+.0f})") if diff else "-"
            what = x["subset"] if not x.get("not_run") else f"not run: {x['not_run']}"
            rows.append([x["title"].removeprefix("MultiPL-E "), what] + cells + [d, str(by_lang.get(PAIR_LANGUAGE[key], 0))])
        out.append(("table", ["language", "problems"] + models + ["fine-tuned − base", "training pairs"], rows))
    if ds := sets.get("ds1000"):
        out.append(("p", "**DS-1000** (data-science problems, run with each problem's own test context; completion "
                         "for the base student, Magicoder's instruction split for the others): pass@1 per library "
                         "over the problems evaluated. "
                         + (f"Not run here: {ds['not_run']}. " if ds.get("not_run") else "")
                         + (f"Of the {ds.get('n')} problems chosen, {left} have a test that fails here before it "
                            "judges anything (an API our library versions no longer have, or a download): they are "
                            "left out of pass@1, not counted as failures."
                            if (left := max([(ev["models"][m].get("ds1000") or {}).get("not_run", 0) for m in models]
                                            or [0])) else "")))
        libs = sorted({lib for m in models for lib in (ev["models"][m].get("ds1000") or {}).get("per_library", {})})
        rows = []
        for lib in libs + ["all"]:
            row = [lib]
            for m in models:
                res = ev["models"][m].get("ds1000")
                v = (res or {}).get("per_library", {}).get(lib) if lib != "all" else (res or {}).get("base")
                row.append(pct(v) + f" of {len(v['per_task'])}" if v else "-")
            rows.append(row)
        out.append(("table", ["library"] + models, rows) if libs else ("p", f"DS-1000: {ds.get('subset') or 'not run'}."))
    return out


def _machine() -> list[list[str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        total = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        kib = int(total.split()[1])
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    gpu = "none found (no nvidia-smi)"
    if shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip() \
                or "nvidia-smi lists none"
        except (OSError, subprocess.SubprocessError):
            gpu = "nvidia-smi failed"
    return [["CPU", f"{cpu}, {os.cpu_count()} logical cores"], ["memory", mem], ["GPU", gpu]]


def sec_environment(r: RunData) -> list:
    here = versions()
    at_run = {}
    for s in r.order:
        for k, v in (r.m[s].get("versions") or {}).items():
            at_run.setdefault(k, set()).add(str(v))
    out = [("p", "Library versions where this report was built, and those the stage manifests recorded "
                 "(a difference means the artifacts were made with other versions):"),
           ("table", ["package", "here", "in the manifests"],
            [[k, str(v), ", ".join(sorted(at_run.get(k, []))) or "-"] for k, v in here.items()]),
           ("p", "The machine building this report (the manifests do not record the run's CPU):"),
           ("table", ["part", "this machine"], _machine())]
    if t := r.stats("train"):
        out.append(("p", f"Training ran on {t.get('device', '?')} with the {t.get('backend', '?')} backend, "
                         f"{t.get('threads', '?')} threads, {t.get('precision', '?')}."))
    ev = r.stats("evaluate").get("models", {})
    roles = [("teacher", r.teacher(), model_sha(r.teacher()) or ev.get("teacher", {}).get("sha256", "")),
             ("student (base)", r.student(), model_sha(r.student()) or ev.get("base", {}).get("sha256", "")),
             ("fine-tuned student", "export: " + (r.stats("export").get("quant") or "-") + " GGUF",
              r.stats("export").get("sha256") or ev.get("finetuned", {}).get("sha256", ""))]
    out.append(("table", ["model", "spec", "sha256"],
                [[role, f"{model_title(spec)} (`{spec}`)" if spec and not spec.startswith("export") else spec or "-",
                  f"`{sha}`" if sha else "-"] for role, spec, sha in roles]))
    times = [f"{s} {r.m[s]['seconds']:.0f} s" for s in r.order if isinstance(r.m[s].get("seconds"), (int, float))]
    out.append(("p", "Wall time per stage: " + (", ".join(times) if times else NOT_RUN) + "."))
    return out


def sec_summary(r: RunData, facts: dict) -> list:
    s, g, c, t, ev = (r.stats(x) for x in ("seeds", "generate", "clean", "train", "evaluate"))
    if not any((s, g, c, t, ev)):
        return [("p", f"Nothing has run in `{r.path.name}` yet: every stage is {NOT_RUN}. Start with "
                      "`repro run --profile tiny`.")]
    teacher, student = model_title(r.teacher()), model_title(r.student())
    made = []
    if s:
        langs = sorted(((k.removeprefix("seeds_"), v) for k, v in s.items() if k.startswith("seeds_") and v),
                       key=lambda kv: -kv[1])
        made.append(f"took {s.get('seeds', '?')} seed snippets of real code"
                    + (f" in {len(langs)} languages ({', '.join(f'{k} {v}' for k, v in langs[:4])}"
                       f"{', …' if len(langs) > 4 else ''})" if langs else ""))
    if g:
        made.append(f"had the teacher {teacher} write {g.get('pairs', '?')} problem–solution pairs from them "
                    f"({g.get('rejected', 0)} answers rejected)")
    if c:
        made.append(f"kept {c.get('kept', '?')} after format checks, decontamination and deduplication")
    if v := r.stats("validate"):
        made.append(f"kept the {v.get('kept', '?')} of them whose solution passed the teacher's tests or could not "
                    "be tested here (validation, beyond the paper)")
    if t:
        on = "them" if t.get("examples") in (None, (v or c or {}).get("kept")) and "stage2" not in t else \
            f"{t.get('examples')} of them" if "stage2" not in t else \
            (f"{t['stage1'].get('examples')} of them, then on {t['stage2'].get('examples')} pairs evolved from the "
             "clean problems (Evol-Instruct, beyond the paper)")
        if t.get("stage2_skipped"):
            on += " (no evolved pairs survived, so no second stage)"
        made.append(f"LoRA-fine-tuned the student {student} on {on} for {t.get('steps', '?')} steps")
    variant = r.run_json.get("variant", "oss")
    text = [f"This run (`{r.path.name}`, profile `{r.run_json.get('profile', '?')}`"
            + (f", variant `{variant}`" if variant != "oss" else "") + ") " + join(made) + "."]
    if not g:
        text.append(f"Generation has {NOT_RUN}.")
    if ev and "finetuned" in ev.get("models", {}) and "base" in ev.get("models", {}):
        by = {(x["a"], x["b"], x["benchmark"], x["split"]): x for x in ev.get("comparisons", [])}
        parts, verdicts = [], []
        for b, info in ev.get("benchmarks", {}).items():
            ft, base = ev["models"]["finetuned"].get(b, {}).get("base"), ev["models"]["base"].get(b, {}).get("base")
            d = by.get(("finetuned", "base", b, "base"))
            if not ft or not base:
                continue
            name = BENCH_NAMES.get(b, b)
            parts.append(f"on {name} ({info.get('n', '?')} of {info.get('of', '?')} problems) the fine-tuned student "
                         f"passes {100 * ft['pass@1']:.1f}% against the base model's {100 * base['pass@1']:.1f}%"
                         + (f", a difference of {100 * d['diff']:+.1f} points (95% interval {100 * d['ci95'][0]:+.0f} "
                            f"to {100 * d['ci95'][1]:+.0f})" if d else ""))
            if d:
                verdicts.append((name, "better" if d["ci95"][0] > 0 else "worse" if d["ci95"][1] < 0 else None))
        text += [p[:1].upper() + p[1:] + "." for p in parts]
        if "base-instruct" in ev["models"]:
            text += control_sentences(ev)
        better = [n for n, v in verdicts if v == "better"]
        worse = [n for n, v in verdicts if v == "worse"]
        if verdicts and not better and not worse:
            text.append("Every interval holds 0: at this size the run shows no measurable effect of the fine-tuning, "
                        "up or down. It shows that the pipeline works end to end, not that OSS-Instruct helps.")
        else:
            if better:
                text.append(f"The fine-tuned student is measurably better on {join(better)} "
                            "(its interval excludes 0).")
            if worse:
                text.append(f"The fine-tuned student is measurably worse on {join(worse)} (its interval excludes 0): "
                            "the pairs taught it something that costs it there.")
        if (tr := ev["models"].get("teacher")) and (he := next(iter(ev.get("benchmarks", {})), None)):
            if tr.get(he, {}).get("base"):
                text.append(f"The teacher itself passes {100 * tr[he]['base']['pass@1']:.1f}% on "
                            f"{BENCH_NAMES.get(he, he)}: the ceiling its data could carry.")
        ml = {n: x for n, x in (ev.get("multilingual") or {}).items() if x.get("task_ids")}
        if ml and (ft := ev["models"].get("finetuned")) and (bs := ev["models"].get("base")):
            def mean(res):
                vals = [res[n]["base"]["pass@1"] for n in ml if n in res]
                return 100 * sum(vals) / len(vals) if vals else 0.0
            text.append(f"On the other axes ({len([n for n in ml if n.startswith('multipl-e/')])} MultiPL-E languages"
                        + (" and DS-1000" if "ds1000" in ml else "") + f"; a few problems each, see below) the "
                        f"fine-tuned student averages {mean(ft):.1f}% against the base's {mean(bs):.1f}%"
                        + (f" and the teacher's {mean(tr):.1f}%" if (tr := ev["models"].get("teacher")) else "") + ".")
    elif not ev:
        text.append(f"Evaluation has {NOT_RUN}, so there is no pass@1 yet.")
    kept = c.get("kept") if c else None
    cmp = ("**Compared with the paper**: it fine-tunes 7B models on 75K OSS-Instruct pairs and reports 60.4–76.8% "
           "HumanEval pass@1 (its Table 1, reproduced below)")
    if isinstance(kept, int):
        cmp += (f"; this run has {kept} pairs ({100 * kept / PAPER_PAIRS:.2f}% of that) and a far smaller student, "
                "so its pass@1 is not comparable with the paper's")
    if c and c.get("humaneval_similarity_mean") is not None:
        cmp += (f". What can be compared is the data's distance from the benchmark: mean TF-IDF similarity to "
                f"HumanEval {c['humaneval_similarity_mean']:.3f} here against the paper's "
                f"{PAPER_SIMILARITY['OSS-Instruct']} "
                f"for OSS-Instruct")
    if (cat := facts.get("categories")) and cat["samples"]:
        top = sorted(cat["counts"].items(), key=lambda kv: -kv[1])[:2]
        cmp += (f"; the most frequent categories here are {join([f'{k} ({v})' for k, v in top])} "
                f"({'teacher embeddings' if cat['method'] == 'embedding' else 'TF-IDF'})")
    return [("p", " ".join(text)), ("p", cmp + ".")]
