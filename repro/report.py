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
PAPER_ROWS = [
    ("Magicoder-CL-7B (paper)", 60.4, 55.5),
    ("Magicoder-DS-6.7B (paper)", 66.5, 60.4),
]

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
        rows.append(("evaluate", f"{s['limit']} problems", f"{len(s['models'])} models", "-"))
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
                  f"{t['trainable_parameters']:,} LoRA parameters, {t['threads']} threads.", ""]

    lines += ["## HumanEval pass@1", ""]
    ev = m.get("evaluate", {}).get("stats")
    if ev:
        lines += [f"Greedy, {ev['max_tokens']} new tokens, {ev['limit']} problems, through llama.cpp on the "
                  f"quantized GGUF. HumanEval data sha256 `{ev['data_sha256'][:16]}…`. "
                  "95% Wilson intervals.", "",
                  "| model | prompt | passed | pass@1 | 95% interval | decode tokens/s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for label, r in ev["models"].items():
            tps = r.get("tokens_per_second")
            how = f"{tps} ({r.get('backend', 'llama')}, {r.get('parallel', 1)} seq)" if tps else "-"
            lines.append(f"| {label} student | {r['prompt_style']} | {r['passed']}/{r['n']} | "
                         f"{100 * r['pass@1']:.1f} | {100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f} | {how} |")
        lines += ["", "For scale, the paper's 7B models (full fine-tuning on 75K pairs; HumanEval / HumanEval+):", "",
                  "| model | HumanEval | HumanEval+ |", "| --- | --- | --- |"]
        lines += [f"| {name} | {he} | {hp} |" for name, he, hp in PAPER_ROWS]
    else:
        lines.append("Not evaluated yet.")

    lines += ["", "## Environment", "", "```", json.dumps(versions(), indent=1), "```", ""]
    return "\n".join(lines)


def run(run_dir: RunDir, out: Path) -> dict:
    text = build(run_dir)
    write_text(out, text)
    return {"bytes": len(text)}
