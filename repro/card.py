"""The dataset card: `runs/<name>/README.md`, a Hugging Face dataset card for `clean.parquet`.

The report stage writes it from what is on disk (stage manifests, seeds.parquet,
decontamination.json), so `repro report <run>` rebuilds it alone. Its YAML header names the data
files, so all of these load the kept pairs:

    datasets.load_dataset("parquet", data_files="runs/<name>/clean.parquet")
    datasets.load_dataset("json", data_files="runs/<name>/clean.jsonl")   # the same rows, JSON lines
    datasets.load_dataset("runs/<name>")                 # config `default`; `removed` = removed.parquet

The card reports what the stages recorded; it does not detect licences again, run the
solutions, or upload anything. A column that is null in every row is typed from the parquet file
but inferred as `null` from clean.jsonl. A run with no kept pairs gets a card, but `datasets`
cannot load an empty file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from repro.artifacts import sql_str, ROOT, ReproError, RunDir, atomic_path, write_text

CITATION = """@inproceedings{wei2024magicoder,
  title     = {Magicoder: Empowering Code Generation with {OSS-Instruct}},
  author    = {Wei, Yuxiang and Wang, Zhe and Liu, Jiawei and Ding, Yifeng and Zhang, Lingming},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  series    = {Proceedings of Machine Learning Research},
  volume    = {235},
  pages     = {52632--52657},
  year      = {2024},
  url       = {https://proceedings.mlr.press/v235/wei24h.html}
}"""

# What the columns of clean.parquet hold (generate's and clean's; others are described by type only).
COLUMNS = {
    "seed_id": "the seed's id in seeds.parquet",
    "language": "the seed's programming language",
    "path": "the seed's file, relative to its source",
    "seed": "the code snippet the teacher was shown (cut at its tail when it did not fit: `seed_truncated`)",
    "problem": "the teacher's problem description",
    "solution": "the teacher's solution",
    "raw": "the teacher's whole answer",
    "key": "the generate store's key: seed id and a hash of prompt, model and settings",
    "model": "the teacher's identity (sha256 of an embedded GGUF)",
    "finish_reason": "why decoding stopped",
    "prompt_tokens": "tokens in the prompt",
    "completion_tokens": "tokens in the answer",
    "code_blocks": "the solution's fenced code blocks with their language",
    "syntax": "the syntax check's verdict on the code blocks (null: not checked)",
    "syntax_ok": "true when every checked block parsed",
    "humaneval_similarity": "maximum TF-IDF cosine similarity to a HumanEval problem",
    "prompt_hash": "hash of the prompt sent", "params_hash": "hash of the sampling settings",
    "seed_truncated": "true when the seed was cut to fit the context",
    "seed_tokens": "the seed's tokens before the cut", "seed_tokens_kept": "its tokens after the cut",
    "max_tokens": "the answer's token budget", "backend": "the generate backend", "seconds": "time to answer",
}


def _size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
            + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows])


def _write_jsonl(clean: Path, out: Path) -> None:
    """clean.parquet's rows as JSON lines (nested columns stay nested) for load_dataset("json")."""
    import pyarrow.parquet as pq

    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for batch in pq.ParquetFile(clean).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Sections


def _size(run: RunDir, n_rows: int, n_removed: int) -> list[str]:
    rows = [["clean.parquet", n_rows, (run / "clean.parquet").stat().st_size, "the dataset (config `default`)"]]
    if (run / "clean.jsonl").exists():
        rows.append(["clean.jsonl", n_rows, (run / "clean.jsonl").stat().st_size, "the same rows as JSON lines"])
    if (run / "removed.parquet").exists():
        rows.append(["removed.parquet", n_removed, (run / "removed.parquet").stat().st_size,
                     "pairs the clean stage removed, with the reason" + (" (config `removed`)" if n_removed else "")])
    return ["## Size", "", *_table(["file", "rows", "bytes", "what"], rows), ""]


def _columns(run: RunDir) -> list[str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(run / "clean.parquet")
    return ["## Columns", "", *_table(["column", "type", "what"],
                                      [[f"`{f.name}`", f"`{f.type}`", COLUMNS.get(f.name, "")] for f in schema]), ""]


def _languages(run: RunDir, con, has_seeds: bool) -> tuple[list[str], dict[str, int]]:
    clean = sql_str(run / "clean.parquet")
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({clean})").fetchall()}
    if "language" not in cols:  # pairs brought from elsewhere (problem and solution only)
        return ["## Languages", "", "`clean.parquet` has no `language` column: the pairs' languages are not known.",
                ""], {}
    # Kept pairs per language, beside the seeds drawn for that language (when seeds.parquet is here).
    seeds = sql_str(run / "seeds.parquet")
    seeds_join = (f"FULL JOIN (SELECT language, count(*) AS seeds FROM read_parquet({seeds}) GROUP BY language) s "
                  "USING (language)" if has_seeds else "")
    seeds_col = "coalesce(s.seeds, 0)" if has_seeds else "NULL"
    rows = con.execute(f"""
        SELECT language, coalesce(p.pairs, 0) AS pairs, {seeds_col} AS seeds
        FROM (SELECT language, count(*) AS pairs FROM read_parquet({clean}) GROUP BY language) p {seeds_join}
        ORDER BY pairs DESC, language""").fetchall()
    counts = {lang: n for lang, n, _ in rows if n}
    header = ["language", "pairs kept"] + (["seeds drawn"] if has_seeds else [])
    return (["## Languages", "", *_table(header, [[lang, n] + ([s] if has_seeds else []) for lang, n, s in rows]), ""],
            counts)


def _seeds(run: RunDir, con, m: dict | None) -> tuple[list[str], list[str]]:
    """The seeds' sources and licences, and the licences of the seeds behind the kept pairs."""
    lines = ["## Seeds: provenance and licences", ""]
    cfg, stats = (m or {}).get("config", {}), (m or {}).get("stats", {})
    if m:
        sources = cfg.get("source")
        sources = ", ".join(sources) if isinstance(sources, list) else sources
        lines += [f"Each pair starts from a seed: 1 to {cfg.get('max_lines', '?')} consecutive lines cut at a random "
                  f"place from a source file, as the paper does. {stats.get('seeds', '?')} seeds were drawn "
                  f"(mode `{cfg.get('mode', 'paper')}`, quotas `{cfg.get('quotas', '?')}`, random seed "
                  f"{cfg.get('random_seed', '?')}) from {stats.get('files', '?')} files read from `seeds.source` = "
                  f"`{sources}`" + (f" (on this machine: {', '.join(f'`{x}`' for x in stats['installed_locations'])})"
                                    if stats.get("installed_locations") else "") + ".", ""]
        if stats.get("licenses"):
            lines += ["Licences of the files read (corpus.parquet, one row per distinct file): "
                      + ", ".join(f"{k} {v}" for k, v in stats["licenses"].items()) + ".", ""]
    if not (run / "seeds.parquet").exists():
        return lines + ["seeds.parquet is not in the run directory: the seeds' licences are unknown here.", ""], []
    import pyarrow.parquet as pq

    have = set(pq.read_schema(run / "seeds.parquet").names)  # seeds.parquet of older versions lack some
    col = {c: f"s.{c}" if c in have else "NULL" for c in ("license", "source", "path")}
    # Kept pairs per seed licence and source, with a few of the seeds' files; a pair whose seed is
    # not in seeds.parquet (the seeds were drawn again since) counts as unknown.
    rows = con.execute(f"""
        SELECT coalesce({col['license']}, CASE WHEN s.seed_id IS NULL THEN 'unknown (seed not in seeds.parquet)'
                                              ELSE 'unknown (not recorded)' END) AS license,
               coalesce({col['source']}, '-') AS source, count(*) AS pairs,
               list_slice(list(DISTINCT {col['path']} ORDER BY {col['path']}), 1, 3) AS paths,
               count(DISTINCT {col['path']}) AS files
        FROM read_parquet({sql_str(run / 'clean.parquet')}) c
        LEFT JOIN read_parquet({sql_str(run / 'seeds.parquet')}) s USING (seed_id)
        GROUP BY ALL ORDER BY pairs DESC, license, source""").fetchall()
    table = [[lic, f"`{src}`", n,
              ", ".join(f"`{p}`" for p in paths if p) + (f" … ({files} files)" if files > 3 else "")]
             for lic, src, n, paths, files in rows]
    lines += ["The kept pairs by their seed's licence (SPDX id from a tag or header in the file, a nearby "
              "LICENSE/COPYING file or the Python package's metadata; `unknown` when nothing said) and source; "
              "every seed's own row is in seeds.parquet (`license`, `source`, `path`, `start_line`):", "",
              *_table(["licence", "source", "pairs", "seed files"], table), ""]
    return lines, sorted({lic for lic, *_ in rows})


def _teacher(m: dict | None) -> tuple[list[str], dict]:
    from repro import models

    if not m:
        return ["## Teacher and generation", "", "The generate stage left no manifest: teacher unknown.", ""], {}
    cfg, s = m.get("config", {}), m.get("stats", {})
    spec, backend = cfg.get("teacher", ""), cfg.get("backend", s.get("backend", "llama"))
    ident = cfg.get("teacher_id") or s.get("model") or ""
    e = models.EMBEDDED.get(spec.removeprefix("embedded:")) if spec.startswith("embedded:") else None
    if backend == "openai":
        name = f"`{s.get('model', 'openai:?')}` served by `{cfg.get('base_url', '?')}`"
        sha = "not known (a served model)"
    else:
        name = f"{e.title} (`{spec}`)" if e else f"`{spec}`"
        sha = f"`{ident}`" if re.fullmatch(r"[0-9a-f]{64}", ident) else \
            f"not recorded (identified by path, size and mtime: `{ident}`)"
    teacher = {"name": e.title if e else (s.get("model") if backend == "openai" else spec),
               "sha256": ident if re.fullmatch(r"[0-9a-f]{64}", ident) else None,
               "licence": e.licence if e else None}
    max_tokens = cfg.get("max_tokens", 0)
    settings = [["backend", f"`{backend}`" + (f", {s['parallel']} sequences at a time" if s.get("parallel") else "")],
                ["prompt", f"`{cfg.get('prompt', '?')}` (sha256 `{str(cfg.get('prompt_hash', '?'))[:16]}…`)"],
                ["answer format", "JSON object (grammar-forced)" if cfg.get("structured") == "json" else
                 "free text with `[Problem Description]` and `[Solution]`"],
                ["max new tokens", max_tokens or "the paper's min(2500, n_ctx − prompt)"],
                ["temperature, top_p", f"{cfg.get('temperature', '?')}, {cfg.get('top_p', '?')}"
                 + (" (greedy, as the paper)" if cfg.get("temperature") == 0 else "")],
                ["context (n_ctx)", cfg.get("n_ctx", "?")], ["random seed", cfg.get("seed", "?")]]
    rejected = ", ".join(f"{k} {v}" for k, v in s.get("rejected_by_reason", {}).items()) or "none"
    lines = ["## Teacher and generation", "",
             f"- Teacher: {name}" + (f", licence {e.licence}" if e else ""),
             f"- sha256 of the teacher's file: {sha}",
             f"- {s.get('seeds', '?')} seeds asked; {s.get('pairs', '?')} answers kept, {s.get('rejected', '?')} "
             f"rejected ({rejected}); an answer is rejected when it did not finish or lacks a problem or a solution",
             f"- The last run answered {s.get('generated', '?')} of them ({s.get('resumed_from', 0)} were kept from "
             f"earlier runs): {s.get('completion_tokens', '?')} new tokens at {s.get('tokens_per_second') or '?'} "
             "tokens/s", "", *_table(["setting", "value"], settings), ""]
    return lines, teacher


def _cleaning(run: RunDir, m: dict | None) -> tuple[list[str], dict]:
    """Cleaning, decontamination per benchmark, syntax, and the similarity to HumanEval."""
    from repro.clean import PAPER_SIMILARITY

    path = run / "decontamination.json"
    r = json.loads(path.read_text()) if path.exists() else None
    s = (m or {}).get("stats", {})
    if r is None and not s:
        return ["## Cleaning and decontamination", "", "The clean stage left no report.", ""], {}
    r = r or {"pairs_in": s.get("pairs_in"), "kept": s.get("kept"), "removed": s.get("removed"),
              "removed_by_reason": s.get("removed_by_reason", {}), "benchmarks": {}, "syntax": s.get("syntax", {}),
              "similarity": None}
    by_reason = r.get("removed_by_reason") or {}
    lines = ["## Cleaning and decontamination", "",
             f"{r['pairs_in']} pairs in, {r['kept']} kept, {r['removed']} removed ("
             + (", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none") + "); each removed pair is counted "
             "under the first step that removed it: validation, decontamination, exact then near duplicates. "
             "Details: `decontamination.md`, `removed.parquet`.", ""]
    methods = (r.get("rules") or {}).get("methods") or []
    rows, decontam = [], {}
    for name, b in r.get("benchmarks", {}).items():
        checked = b["status"] == "checked"
        flagged = b.get("flagged", {})
        removed = by_reason.get(f"contaminated_{name}", 0)
        decontam[name] = {"status": b["status"], "flagged": flagged.get("either", 0) if checked else None,
                          "removed": removed if checked else None}
        rows.append([name, b["status"], b.get("problems") or "-",
                     *(flagged.get(k, 0) if checked else "-" for k in methods),
                     flagged.get("either", 0) if checked else "-", removed if checked else "-",
                     b.get("source", "") if checked else b.get("source", "").removeprefix("not checked: ")])
    if rows:
        lines += [f"Decontamination ({' and '.join(methods) or 'no method'}; a benchmark whose data was not here is "
                  "**not checked**, never passed as clean):", "",
                  *_table(["benchmark", "status", "problems", *(f"flagged by {k}" for k in methods),
                           "flagged", "removed", "data, or why not checked"], rows), ""]
        if rules := r.get("rules"):
            lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in rules.items()
                      if k in ("substring", "ngram", "near_duplicate")]
            lines.append("")
    else:
        lines += ["decontamination.json is not in the run directory: which benchmarks were checked is unknown "
                  "here.", ""]
    if syn := r.get("syntax"):
        lines += ["Syntax of the solutions' code blocks (checked, never run; the paper kept noisy pairs, so errors are "
                  "only recorded unless `clean.drop_syntax_errors` is set):", "",
                  *_table(["language", "ok", "error", "skipped"],
                          [[k, v["ok"], v["error"], v["skipped"]] for k, v in sorted(syn.items())]), ""]
    sim = r.get("similarity")
    ours = sim["mean_kept"] if sim else s.get("humaneval_similarity_mean")
    paper = (sim or {}).get("paper") or PAPER_SIMILARITY
    lines += ["## Similarity to HumanEval", "",
              "The paper's analysis: fit TF-IDF on the instruction data together with HumanEval's problems, take each "
              "pair's maximum cosine similarity to a HumanEval problem, and average.", "",
              *_table(["data", "mean similarity"],
                      [["this dataset (kept pairs)", ours if ours is not None else "not measured"]]
                      + [[f"{k} (paper)", v] for k, v in paper.items()]), "",
              "Few pairs from a small teacher make a small, noisy sample: the comparison is indicative only.", ""]
    return lines, decontam


def _uses(teacher: dict, licences: list[str]) -> list[str]:
    lic = ", ".join(licences) or "see seeds.parquet"
    teacher_terms = (f"The teacher, {teacher['name']}, is released under {teacher['licence']}"
                     + (", which sets no terms on what the model generates" if teacher.get("licence") == "Apache-2.0"
                        else "; check its terms for generated text") + "." if teacher.get("licence") else
                     "Check the teacher's licence for terms on generated text.")
    return ["## Intended use and limitations", "",
            "- Made to reproduce OSS-Instruct (Magicoder) on one machine: fine-tuning and studying small code models. "
            "Not a benchmark, and not checked for correctness.",
            "- Synthetic: every problem and solution was written by the teacher model"
            + (f" ({teacher['name']})" if teacher.get("name") else "") + "; the solutions were never run, only "
            "syntax-checked. A small teacher, such as the default 0.5B one, is often wrong, repetitive, or copies "
            "the seed.",
            f"- Seeds are verbatim code from their sources, and their licences apply to them and may apply to text "
            f"derived from them (here: {lic}). Licence detection is a cheap heuristic; `unknown` means nothing nearby "
            "said, not that the code is free to use.",
            f"- {teacher_terms}",
            "- Decontamination covers only the benchmarks marked checked above, by text overlap; paraphrases can "
            "pass it.",
            ""]


# ---------------------------------------------------------------------------------------------
# The card


def build(run: RunDir) -> tuple[str, dict]:
    """The card's text and its facts (rows, languages, teacher, licences, decontamination)."""
    import duckdb
    import yaml

    _require(run)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar=false")
    n_rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_str(run / 'clean.parquet')})").fetchone()[0]
    n_removed = con.execute(f"SELECT count(*) FROM read_parquet({sql_str(run / 'removed.parquet')})").fetchone()[0] \
        if (run / "removed.parquet").exists() else 0
    has_seeds = (run / "seeds.parquet").exists()
    lang_lines, languages = _languages(run, con, has_seeds)
    seed_lines, licences = _seeds(run, con, run.manifest("seeds"))
    teacher_lines, teacher = _teacher(run.manifest("generate"))
    clean_lines, decontam = _cleaning(run, run.manifest("clean"))
    profile = json.loads((run / "run.json").read_text()).get("profile") if (run / "run.json").exists() else None

    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "clean.parquet"}], "default": True}]
    if n_removed:  # datasets cannot load an empty parquet file
        configs.append({"config_name": "removed", "data_files": [{"split": "train", "path": "removed.parquet"}]})
    # A self-instruct run (the baseline variant) is not OSS-Instruct: its teacher wrote from a pool of
    # task descriptions, not from code.
    variant = json.loads((run / "run.json").read_text()).get("variant", "oss") if (run / "run.json").exists() else "oss"
    method = "Self-Instruct" if variant == "self-instruct" else "OSS-Instruct"
    meta = {"pretty_name": f"magicoder-repro {method} pairs ({run.path.name})",
            "language": ["en"], "license": "other", "license_name": "seed-licences",
            "license_details": "Each pair derives from a seed whose licence is in seeds.parquet; see the card.",
            "task_categories": ["text-generation"], "size_categories": [_size_category(n_rows)],
            "tags": ["code", "synthetic", method.lower(), "magicoder", *sorted(languages)],
            "configs": configs}
    name = run.path.name
    under_runs = run.path.resolve().parent == (ROOT / "runs").resolve()
    where, ref = (f"runs/{name}", name) if under_runs else (str(run.path), str(run.path))
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# magicoder-repro: {method} pairs from run `{name}`", "",
             f"{n_rows} instruction pairs (a coding problem and its solution) that a teacher model wrote "
             + ("from a pool of task descriptions, Self-Instruct's way: the baseline the paper compares OSS-Instruct "
                "(Magicoder, arXiv 2312.02120) with," if method == "Self-Instruct" else
                "from snippets of real code, following OSS-Instruct (Magicoder, arXiv 2312.02120),")
             + " made by magicoder-repro"
             + (f" with profile `{profile}`" if profile else "") + ". This card is rebuilt from the run's artifacts by "
             f"`repro report {ref}`.", "",
             "```python", "from datasets import load_dataset",
             f'pairs = load_dataset("parquet", data_files="{where}/clean.parquet")["train"]',
             f'pairs = load_dataset("json", data_files="{where}/clean.jsonl")["train"]   # the same rows',
             f'pairs = load_dataset("{where}")["train"]   # this card\'s configs: '
             + ", ".join(c["config_name"] for c in configs), "```", "",
             *_size(run, n_rows, n_removed), *lang_lines, *_columns(run), *seed_lines, *teacher_lines, *clean_lines,
             *_uses(teacher, licences), "## Citation", "", "```bibtex", CITATION, "```", ""]
    facts = {"rows": n_rows, "bytes": (run / "clean.parquet").stat().st_size, "languages": languages,
             "teacher": teacher, "licences": licences, "decontamination": decontam}
    return "\n".join(lines), facts


def _require(run: RunDir) -> None:
    if not (run / "clean.parquet").exists():
        raise ReproError(f"{run / 'clean.parquet'} is missing: no dataset to describe; run the clean stage "
                         "first (`repro clean`)")


def write_card(run: RunDir) -> Path:
    """Write clean.jsonl (from clean.parquet) and the dataset card README.md into the run directory."""
    _require(run)
    _write_jsonl(run / "clean.parquet", run / "clean.jsonl")
    text, _ = build(run)
    write_text(run / "README.md", text)
    return run / "README.md"
