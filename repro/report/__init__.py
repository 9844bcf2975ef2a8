"""The report stage: the report — `report.md` and a self-contained `report.html` for one run directory.

    repro report --profile tiny          # rebuild runs/tiny/report.{md,html} from what is on disk

Everything is read from the stage manifests and artifacts on disk, so the report can be rebuilt
alone, at any point of a run: a section whose stage has not run says "not run yet". Sections:
a summary for newcomers; the pipeline funnel (rows in and out, removal reasons, wall time, peak
memory, throughput); the seeds' languages and licences and the solutions' languages; length
histograms; the paper's category analysis; TF-IDF similarity to HumanEval; data diversity with
bootstrap intervals (repro/report/compare.py, docs/diversity.md); the training loss;
pass@1 with intervals beside the paper's Table 1; the environment.

The category analysis (the paper's Figure 2) assigns each pair (problem + solution) the nearest
of ten categories, each described by a sentence of ours that is embedded the same way. The
embeddings are the teacher's own, through llama.cpp: the hidden state of the last token of a
prompt asking for the text's topic (the paper used INSTRUCTOR, which is not here offline), for at
most `report.category_samples` pairs, cached in the run dir by content hash; without the
teacher's GGUF, or with `report.categories=tfidf`, TF-IDF over identifier-split words stands in.
Either is a rough picture of a small sample, not a classifier anyone validated.

Figures are matplotlib PNGs (Agg backend): files under `report-figures/` for the Markdown, base64
data URIs inside the HTML (no external CSS, JS or images). `report.json` records what the category
analysis used and found, and which tokenizer counted the lengths.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from repro.artifacts import RunDir, atomic_path, write_json, write_text
from repro.config import ReportConfig
from repro.report.compare import sec_diversity, sec_versus
from repro.report.curve import sec_curve
from repro.report.render import render_html, render_markdown
from repro.report.rundata import FIGURE_DIR, RunData, token_counter
from repro.report.sections import (sec_beyond, sec_categories, sec_data, sec_environment, sec_evaluation,
                                   sec_lengths, sec_multilingual, sec_pipeline, sec_similarity, sec_summary,
                                   sec_training)


# ---------------------------------------------------------------------------------------------
# The stage


def settings_of(run: RunDir) -> ReportConfig:
    """The report settings of the run's last command (run.json), else the defaults."""
    try:
        d = json.loads((run.path / "run.json").read_text()).get("config", {}).get("report") or {}
    except (OSError, json.JSONDecodeError):
        d = {}
    known = ReportConfig.__dataclass_fields__
    return ReportConfig(**{k: v for k, v in d.items() if k in known})


def build(run: RunDir, stages: list, cfg: ReportConfig | None = None) -> tuple[str, list[tuple[str, list]], dict]:
    """(title, sections, facts): every section from what is on disk now. A section that fails on
    an artifact it does not expect says so in place; the rest of the report still appears."""
    cfg = cfg or settings_of(run)
    r, facts = RunData(run, stages), {}
    count, counted = token_counter([r.teacher(), r.student()])
    facts["tokens"] = counted
    title = f"magicoder-repro report: `{run.path.name}`"
    parts = [("Pipeline", lambda: sec_pipeline(r)),
             ("Seeds and generated problems", lambda: sec_data(r)),
             ("Lengths", lambda: sec_lengths(r, count, counted)),
             ("Categories", lambda: sec_categories(r, cfg, facts)),
             ("Similarity to HumanEval", lambda: sec_similarity(r)),
             ("Data diversity", lambda: sec_diversity(r, cfg, facts)),
             ("OSS-Instruct against Self-Instruct", lambda: sec_versus(r, stages)),
             ("Training", lambda: sec_training(r)),
             ("Beyond the paper: validation and Evol-Instruct", lambda: sec_beyond(r)),
             ("pass@1: HumanEval(+) and MBPP(+)", lambda: sec_evaluation(r)),
             ("Other languages and data science: MultiPL-E and DS-1000", lambda: sec_multilingual(r))]
    if (run.path / "curve" / "curve.json").exists():  # `repro curve` ran on this run
        parts.append(("Learning curve", lambda: sec_curve(r)))
    parts.append(("Environment", lambda: sec_environment(r)))
    sections = []
    for head, make in parts:
        try:
            sections.append((head, make()))
        except Exception as e:  # an old or damaged artifact costs its section, never the report
            sections.append((head, [("p", f"This section could not be built: {type(e).__name__}: {e}.")]))
    try:
        summary = sec_summary(r, facts)
    except Exception as e:
        summary = [("p", f"The summary could not be built: {type(e).__name__}: {e}.")]
    return title, [("Summary", summary)] + sections, facts


def run(run_dir: RunDir, out: Path, stages: list, cfg: ReportConfig | None = None) -> dict:
    """Write `out` (report.md), its figures beside it, `report.html` (self-contained) and
    `report.json` (what the category analysis used and found). Each file is written atomically."""
    t0 = time.perf_counter()
    out = Path(out)
    title, sections, facts = build(run_dir, stages, cfg)
    figures = [b for _, blocks in sections for b in blocks if b[0] == "fig"]
    figure_dir = out.parent / FIGURE_DIR
    with atomic_path(figure_dir) as tmp:
        tmp.mkdir()
        for b in figures:
            (tmp / f"{b[1]}.png").write_bytes(b[2])
    text = render_markdown(title, sections, FIGURE_DIR)
    page = render_html(title, sections)
    write_text(out, text)
    write_text(out.with_suffix(".html"), page)
    facts.update(figures=[b[1] for b in figures], sections=[h for h, _ in sections],
                 seconds=round(time.perf_counter() - t0, 2))
    write_json(out.parent / "report.json", facts)
    return {"bytes": len(text), "html_bytes": len(page), "figures": len(figures), "seconds": facts["seconds"],
            "categories": (facts.get("categories") or {}).get("method")}
