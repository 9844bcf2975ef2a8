"""Step 6: `report.md` — what went in and out of every stage, how long it took, and pass@1.

Everything is read from the stage manifests and artifacts on disk, so the report can be rebuilt
alone (`repro report`).
"""

from __future__ import annotations

import json
from pathlib import Path

from repro import versions
from repro.artifacts import RunDir, write_text

# The paper's own numbers (Magicoder README, EvalPlus pass@1, greedy): 7B models trained on the
# full 75K OSS-Instruct set — a scale reference, not something a 270M student can reach.
PAPER_ROWS = [  # HumanEval, HumanEval+, MBPP, MBPP+
    ("Magicoder-CL-7B (paper)", 60.4, 55.5, 64.2, 52.6),
    ("Magicoder-S-CL-7B (paper)", 70.7, 66.5, 68.4, 56.6),
    ("Magicoder-DS-6.7B (paper)", 66.5, 60.4, 75.4, 61.9),
    ("Magicoder-S-DS-6.7B (paper)", 76.8, 70.7, 75.7, 64.4),
]
BENCH_NAMES = {"humaneval": "HumanEval", "mbpp": "MBPP"}

STAGE_ORDER = ["seeds", "generate", "clean", "train", "export", "evaluate"]


def _funnel(m: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    rows = []
    if s := m.get("seeds", {}).get("stats"):
        rows.append(("seeds", f"{s.get('files', 0)} files", f"{s.get('seeds', 0)} seeds",
                     ", ".join(f"{k.removeprefix('skipped_')}: {v}" for k, v in s.items()
                               if k.startswith("skipped_")) or "-"))
    if s := m.get("generate", {}).get("stats"):
        rows.append(("generate", f"{s['seeds']} seeds", f"{s['pairs']} pairs",
                     ", ".join(f"{k}: {v}" for k, v in s.get("rejected_by_reason", {}).items()) or "-"))
    if s := m.get("clean", {}).get("stats"):
        rows.append(("clean", f"{s['pairs_in']} pairs", f"{s['kept']} pairs",
                     ", ".join(f"{k}: {v}" for k, v in s.get("removed_by_reason", {}).items()) or "-"))
    if s := m.get("train", {}).get("stats"):
        rows.append(("train", f"{s['examples']} examples", f"{s['steps']} steps, loss "
                     f"{s['first_loss']:.3f} → {s['final_loss']:.3f}",
                     f"truncated: {s['truncated']}, prompt too long: {s['dropped_prompt_too_long']}"))
    if s := m.get("export", {}).get("stats"):
        rows.append(("export", "adapter + student", f"{s['quant']} GGUF, {s['bytes'] / 2**20:.0f} MiB", "-"))
    if s := m.get("evaluate", {}).get("stats"):
        rows.append(("evaluate", ", ".join(f"{v['n']} {k}" for k, v in s["benchmarks"].items()) + " problems",
                     f"{len(s['models'])} models", "-"))
    return rows


def build(run: RunDir) -> str:
    m = {s: run.manifest(s) or {} for s in STAGE_ORDER}
    lines = [f"# magicoder-repro report: `{run.path.name}`", ""]
    if (run.path / "run.json").exists():
        lines += [f"Profile: `{json.loads((run.path / 'run.json').read_text())['profile']}`", ""]

    lines += ["## Pipeline", "", "| stage | in | out | removed / notes | seconds | peak RSS so far, MiB |",
              "| --- | --- | --- | --- | --- | --- |"]
    for stage, cin, cout, notes in _funnel(m):
        lines.append(f"| {stage} | {cin} | {cout} | {notes} | {m[stage].get('seconds', '-')} | "
                     f"{m[stage].get('peak_rss_mib', '-')} |")
    total = sum(m[s].get("seconds", 0) for s in STAGE_ORDER)
    lines += ["", f"Total stage time: {total / 60:.1f} min.", ""]

    if g := m.get("generate", {}).get("stats"):
        lines += [f"Teacher throughput: {g.get('tokens_per_second')} tokens/s over "
                  f"{g.get('completion_tokens')} generated tokens, {g.get('backend', 'llama')} backend with "
                  f"{g.get('parallel', 1)} sequences at a time and {g.get('threads', '?')} llama.cpp "
                  "threads (this run's new answers).", ""]
    if (c := m.get("clean", {}).get("stats")) and "benchmarks" in c:  # details: decontamination.md
        lines += ["Decontamination (pairs flagged, see `decontamination.md`): " + "; ".join(
                      f"{b} {v if isinstance(v, str) else v.get('either', 0)}" for b, v in c["benchmarks"].items())
                  + f". TF-IDF similarity to HumanEval (mean of each pair's maximum): "
                  f"{c.get('humaneval_similarity_mean')} (paper: OSS-Instruct 0.105).", ""]
    if t := m.get("train", {}).get("stats"):
        lines += [f"Training: {t['tokens_per_second']} tokens/s, {t['precision']}, "
                  f"{t['trainable_parameters']:,} LoRA parameters, {t['threads']} threads."
                  + (f" Greedy next-token agreement with the targets of {g['examples']} training examples: "
                     f"{100 * g['adapter_off']:.1f}% without the adapter, {100 * g['adapter_on']:.1f}% with it."
                     if (g := t.get("greedy_agreement")) else ""), ""]

    if (x := m.get("export", {}).get("stats")) and (rt := x.get("roundtrip")):
        lines += [f"Export round trip ({rt['text_tokens']}-token text, llama.cpp against the merged PyTorch model): "
                  f"tokenizer ids {'match' if rt['tokenizer_match'] else 'DIFFER'}; greedy next-token agreement "
                  + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rt["agreement"].items())
                  + (f". LoRA GGUF: `{x['lora_gguf']}`." if x.get("lora_gguf") else "."), ""]
    lines += _evaluation(m.get("evaluate", {}).get("stats"))
    lines += ["", "## Environment", "", "```", json.dumps(versions(), indent=1), "```", ""]
    return "\n".join(lines)


def _pct(r: dict) -> str:
    return f"{100 * r['pass@1']:.1f} ({100 * r['ci95'][0]:.0f}–{100 * r['ci95'][1]:.0f})"


def _evaluation(ev: dict | None) -> list[str]:
    lines = ["## pass@1: HumanEval(+) and MBPP(+)", ""]
    if not ev:
        return lines + ["Not evaluated yet."]
    cols = [(b, split) for b, info in ev["benchmarks"].items() for split in (("base", "plus") if info["plus"] else ("base",))]
    name = {(b, s): BENCH_NAMES.get(b, b) + ("+" if s == "plus" else "") for b, s in cols}
    lines += [f"Greedy, at most {ev['max_tokens']} new tokens, one answer per problem, through llama.cpp on the "
              "GGUF files (the students quantized), judged with EvalPlus's rules; pass@1 in % with its 95% Wilson "
              "interval. A plus pass needs the base tests too.", ""]
    if iso := ev.get("sandbox"):
        lines += [f"Every program ran in our sandbox, {iso['level']} isolation"
                  + (", each run under its own uid" if iso["uid"] == "own" else "")
                  + (f" ({iso['why']})" if iso["why"] else "")
                  + " — what that contains and what it does not: README, section Sandbox.", ""]
    for b, info in ev["benchmarks"].items():
        lines.append(f"- {BENCH_NAMES.get(b, b)}: {'all problems' if info['subset'] == 'all' else info['subset']}; "
                     f"{info['version']}, "
                     f"sha256 `{info['sha256'][:16]}…`" + (f" ({info['note']})" if info.get("note") else ""))
    lines += ["", "| model | prompt | " + " | ".join(name[c] for c in cols) + " | answers decoded now / reused |",
              "| --- | --- | " + " | ".join("---" for _ in cols) + " | --- |"]
    for label, r in ev["models"].items():
        lines.append(f"| {label} | {r['prompt_style']} | " + " | ".join(_pct(r[b][s]) for b, s in cols)
                     + f" | {r.get('generated', '-')} / {r.get('reused', '-')} |")
    if ev.get("comparisons"):
        lines += ["", "Differences on the same problems, in points, with a paired bootstrap 95% interval "
                  "(an interval holding 0 is no evidence of a difference):", "",
                  "| difference | " + " | ".join(name[c] for c in cols) + " |", "| --- | " + " | ".join("---" for _ in cols) + " |"]
        pairs = dict.fromkeys((c["a"], c["b"]) for c in ev["comparisons"])
        by = {(c["a"], c["b"], c["benchmark"], c["split"]): c for c in ev["comparisons"]}
        for a, b in pairs:
            cells = []
            for bench, split in cols:
                c = by.get((a, b, bench, split))
                cells.append(f"{100 * c['diff']:+.1f} ({100 * c['ci95'][0]:+.0f} to {100 * c['ci95'][1]:+.0f})" if c else "-")
            lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    lines += ["", "For scale, the paper's 7B models (full fine-tuning on 75K OSS-Instruct pairs, S = plus "
              "Evol-Instruct; EvalPlus pass@1, greedy; from the Magicoder README) — not comparable with a 270M "
              "student trained on a few dozen pairs:", "",
              "| model | HumanEval | HumanEval+ | MBPP | MBPP+ |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {row[0]} | " + " | ".join(str(x) for x in row[1:]) + " |" for row in PAPER_ROWS]
    return lines


def run(run_dir: RunDir, out: Path) -> dict:
    text = build(run_dir)
    write_text(out, text)
    return {"bytes": len(text)}
