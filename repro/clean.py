"""The clean stage: clean the generated pairs — validate, decontaminate, deduplicate — and measure how
close the data is to HumanEval.

In this order, each pair removed at the first step that removes it:

1. **Validate**: a pair needs a seed id, a problem and a solution; where the teacher's answer
   (`raw`) is kept, both sections must be in it, in order. Fenced code blocks are extracted with
   their language and checked for syntax (`syntax`, `syntax_ok` columns): Python `compile`,
   JavaScript `node --check`, C/C++ `gcc/g++ -fsyntax-only`, Java the javac parser (syntax only,
   names not resolved), Rust `rustc --emit=metadata` (a library crate; unresolved external crates
   count as errors), Shell `bash -n`; a language whose tool is missing is skipped with that reason.
   The checkers parse the code, never run it, each call in a temp dir under a timeout, two at a
   time. The paper kept noisy samples on purpose, so syntax errors are only recorded unless
   `clean.drop_syntax_errors` is set (then such pairs are removed after decontamination).
2. **Decontaminate** against HumanEval, MBPP (test split), DS-1000, GSM8K and APPS, by the
   paper's substring rule and by word n-grams (repro/decontam.py). A benchmark whose data is not
   here is reported "not checked", never passed as clean.
3. **Deduplicate**, as the paper: a pair whose seed, problem or solution equals (ignoring all
   whitespace) that of an earlier kept pair; then near duplicates: MinHash (datasketch) over
   word 5-grams of problem + solution, LSH at Jaccard `clean.near_dup_threshold`, each candidate
   confirmed by its estimated Jaccard. A removed pair names the kept pair it duplicates.
4. **Similarity to HumanEval** (the paper's analysis): TF-IDF (scikit-learn) fit on the pairs
   plus HumanEval's prompts with canonical solutions; each pair's maximum cosine similarity to
   a HumanEval problem is the `humaneval_similarity` column; the paper's figure is the mean.
5. **Diversity** of the kept problems (the stage's stats only, `diversity`; repro/diversity.py):
   distinct word n-grams, the most frequent opening's share, the mean similarity, with bootstrap
   intervals. The embedding-based measures need the teacher and are left to the report.

Outputs: `clean.parquet` (kept pairs, every input column plus the ones above),
`removed.parquet` (every removed pair with its reason and what it matched or duplicated),
`decontamination.json` and `decontamination.md`.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from repro import languages, sandbox
from repro.artifacts import ReproError, atomic_path, write_json, write_text
from repro.config import CleanConfig

BASE_COLUMNS = ["seed_id", "language", "path", "seed", "problem", "solution"]
METHODS = ("substring", "ngram")
# The paper's TF-IDF similarity to HumanEval (mean of each sample's maximum cosine).
PAPER_SIMILARITY = {"OSS-Instruct": 0.105, "evol-codealpaca": 0.131, "Code Alpaca": 0.169}


def check_settings(cfg: CleanConfig) -> None:
    """Bad settings fail before anything is written (called by pipeline.check)."""
    from repro.data.benchmarks import DECONTAM_BENCHMARKS, parse_paths

    for b in cfg.benchmarks:
        if b not in DECONTAM_BENCHMARKS:
            raise ReproError(f"clean.benchmarks: {b!r} is unknown; choose among {', '.join(DECONTAM_BENCHMARKS)}")
    for m in cfg.methods:
        if m not in METHODS:
            raise ReproError(f"clean.methods: {m!r} is unknown; choose among {', '.join(METHODS)}")
    if not 0 <= cfg.ngram_min_coverage <= 1:
        raise ReproError(f"clean.ngram_min_coverage={cfg.ngram_min_coverage}: use 0..1 (default 0.2)")
    if not 3 <= cfg.ngram_n <= 50:
        raise ReproError(f"clean.ngram_n={cfg.ngram_n}: use 3..50 words (default 10)")
    if cfg.ngram_min_matches < 1:
        raise ReproError(f"clean.ngram_min_matches={cfg.ngram_min_matches}: use 1 or more")
    if not 0 <= cfg.near_dup_threshold <= 1:
        raise ReproError(f"clean.near_dup_threshold={cfg.near_dup_threshold}: use 0..1 (0 turns it off)")
    parse_paths(cfg.benchmark_paths)


def sources(cfg: CleanConfig) -> dict:
    """Where each configured benchmark's data is (files are hashed, not read)."""
    from repro.data.benchmarks import parse_paths, resolve

    paths = parse_paths(cfg.benchmark_paths)
    return {b: resolve(b, paths, cfg.fetch_benchmarks) for b in cfg.benchmarks}


def source_fingerprints(cfg: CleanConfig) -> dict:
    return {b: s.sha256 or s.describe() for b, s in sources(cfg).items()}


# ---------------------------------------------------------------------------------------------
# Reading and validating pairs


def read_pairs(path: Path) -> list[dict]:
    """pairs.jsonl as dicts; a line that is not a JSON object is an error (a torn last line, left
    by an interrupted generate, is ignored as generate itself does)."""
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ReproError(f"{path}: line {i} is not UTF-8 (byte {e.start + 1}); the file is damaged — "
                                 "rerun `repro generate --force`, or remove that line") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise ReproError(f"{path}: line {i} is not a JSON object; the file is damaged — "
                                 "rerun `repro generate --force`, or remove that line")
            rows.append(row)
    return rows


def validate(row: dict) -> str:
    """Why a pair is unusable ("" if it is fine)."""
    from repro.generate import parse

    for k in ("seed_id", "problem", "solution"):
        if not isinstance(row.get(k), str) or not row[k].strip():
            return f"missing or empty {k}"
    if row.get("language") is not None and not isinstance(row["language"], str):
        return "language is not a string"
    if row.get("raw") is not None and not isinstance(row["raw"], str):
        return "raw is not a string"
    if isinstance(row.get("raw"), str) and parse(row["raw"]) is None:
        return "the answer lacks [Problem Description] then [Solution]"
    return ""


FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
def code_blocks(solution: str, language: str | None) -> list[dict]:
    """Fenced code blocks of a solution with their language (the pair's own where unlabelled)."""
    out = []
    for m in FENCE_RE.finditer(solution):
        out.append({"language": languages.fence_language(m.group(1), language), "code": m.group(2)})
    return out


# ---------------------------------------------------------------------------------------------
# Syntax checks: each language's checker is in repro/languages.py; here, the column.


def check_syntax(blocks_per_pair: list[list[dict]], timeout: float) -> list[tuple[str, bool | None]]:
    """(status, ok) per pair: 'ok', 'error (<language>): <message>', or 'skipped: <why>'."""
    by_lang: dict[str, list[tuple[int, int]]] = {}
    for i, blocks in enumerate(blocks_per_pair):
        for j, b in enumerate(blocks):
            if languages.syntax_checker(b["language"]) is not None:
                by_lang.setdefault(b["language"], []).append((i, j))
    result: dict[tuple[int, int], str] = {}
    for lang, keys in by_lang.items():
        tools, fn = languages.syntax_checker(lang)
        missing = sandbox.missing(tools)
        if missing:
            statuses = [f"skipped: {missing[0]} not installed"] * len(keys)
        else:
            statuses = fn([blocks_per_pair[i][j]["code"] for i, j in keys], timeout)
        result.update(zip(keys, statuses))
    out = []
    for i, blocks in enumerate(blocks_per_pair):
        if not blocks:
            out.append(("skipped: no code block", None))
            continue
        checked = [(b["language"], result[(i, j)]) for j, b in enumerate(blocks) if (i, j) in result]
        errors = [(lang, s) for lang, s in checked if s and not s.startswith("skipped:")]
        if errors:
            out.append((f"error ({errors[0][0]}): {errors[0][1]}", False))
        elif any(s == "" for _, s in checked):
            out.append(("ok", True))
        elif checked:
            out.append((checked[0][1], None))
        else:
            langs = sorted({b["language"] or "unlabelled" for b in blocks})
            out.append((f"skipped: no checker for {', '.join(langs)}", None))
    return out


# ---------------------------------------------------------------------------------------------
# Duplicates


# For each key in turn, keep the first pair (in generation order) of every group of pairs whose
# key is equal ignoring whitespace; the others are duplicates of that first one.
DEDUP_SQL = """
SELECT ord, first_value(ord) OVER w AS kept
FROM pairs WHERE ord NOT IN (SELECT ord FROM gone)
WINDOW w AS (PARTITION BY regexp_replace({key}, '\\s+', '', 'g') ORDER BY ord)
QUALIFY row_number() OVER w > 1
"""


def near_duplicates(texts: dict[int, str], threshold: float, ngram: int = 5, num_perm: int = 128) -> dict[int, tuple[int, float]]:
    """ord -> (kept ord it nearly duplicates, estimated Jaccard), greedy in generation order."""
    import zlib

    from datasketch import MinHash, MinHashLSH

    from repro.decontam import words

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[int, MinHash] = {}
    out = {}
    for o in sorted(texts):
        w = words(texts[o])
        shingles = {" ".join(w[i:i + ngram]) for i in range(max(1, len(w) - ngram + 1))}
        m = MinHash(num_perm=num_perm, seed=1, hashfunc=lambda s: zlib.crc32(s.encode()))
        m.update_batch(shingles)
        best = None
        for k in sorted(lsh.query(m)):
            j = m.jaccard(kept[k])
            if j >= threshold:
                best = (k, round(float(j), 3))
                break
        if best:
            out[o] = best
        else:
            lsh.insert(o, m)
            kept[o] = m
    return out


# ---------------------------------------------------------------------------------------------
# Similarity to HumanEval


def humaneval_similarity(texts: list[str]) -> list[float]:
    """Each text's maximum TF-IDF cosine similarity to a HumanEval problem (prompt + solution)."""
    if not texts:
        return []
    from sklearn.feature_extraction.text import TfidfVectorizer

    from repro.data.benchmarks import humaneval

    he = [p["prompt"] + p["canonical_solution"] for p in humaneval()]
    vec = TfidfVectorizer().fit(texts + he)
    sims = vec.transform(texts) @ vec.transform(he).T  # rows are L2-normalized: cosine
    return [round(float(x), 4) for x in sims.max(axis=1).toarray().ravel()]


def decontaminate(con, cfg: CleanConfig, texts: list[str], notes: list[str]) -> tuple[list[dict], dict, int | None]:
    """Flags of both methods for `texts` (ids are positions in it), the per-benchmark report
    (flag counts filled in later) and the number of specific reference n-grams."""
    from repro import decontam
    from repro.data.benchmarks import references

    bench_report, refs = {}, []
    for name, src in sources(cfg).items():
        r = references(src)  # a file that is not what it should be: an error the user must fix
        if not src.checked:
            notes.append(f"benchmark {name}: not checked — {src.reason}")
        refs += r
        bench_report[name] = {"status": "checked" if src.checked else "not checked", "source": src.describe(),
                              "sha256": src.sha256 or None, "problems": len({x.task_id for x in r}),
                              "reference_texts": len(r), "flagged": {m: 0 for m in cfg.methods}}
    flags, ngram_grams = [], None
    if not (texts and refs and cfg.methods):
        return flags, bench_report, ngram_grams
    decontam.prepare_docs(con, texts)
    # The n-gram rule's windows in DuckDB; the substring rule scans the texts itself (Aho-Corasick).
    if "ngram" in cfg.methods:
        ngram_grams = decontam.build_reference_grams(con, refs, cfg.ngram_n)["grams"]
    decontam.match_windows(con, cfg.ngram_n)
    if "ngram" in cfg.methods:
        flags += decontam.ngram_flags(con, cfg.ngram_n, cfg.ngram_min_matches, cfg.ngram_min_coverage,
                                      kinds=[r.kind for r in refs])
    if "substring" in cfg.methods:
        flags += decontam.substring_flags(texts, refs)
    return flags, bench_report, ngram_grams


# ---------------------------------------------------------------------------------------------
# The stage


def run(cfg: CleanConfig, pairs_path: Path, clean_path: Path, removed_path: Path,
        report_json: Path | None = None, report_md: Path | None = None) -> dict:
    import duckdb
    import pyarrow as pa

    check_settings(cfg)
    report_json = report_json or clean_path.with_name("decontamination.json")
    report_md = report_md or clean_path.with_name("decontamination.md")
    clock, seconds = time.perf_counter(), {}

    def lap(step):
        nonlocal clock
        seconds[step], clock = round(time.perf_counter() - clock, 2), time.perf_counter()

    rows = read_pairs(pairs_path)
    notes = [] if rows else [f"{pairs_path} has no pairs: {clean_path.name} is empty (more input: seeds.num_seeds for "
                              "clean.parquet, evol.num for evol.parquet)"]
    removal: dict[int, dict] = {}  # ord -> reason and what it matched / duplicated

    # 1. Validate, extract code, check syntax.
    seen_ids: dict[str, int] = {}
    for o, r in enumerate(rows):
        if why := validate(r):
            removal[o] = {"reason": "invalid", "detail": why}
        elif r["seed_id"] in seen_ids:
            removal[o] = {"reason": "duplicate_seed_id", "duplicate_of": r["seed_id"],
                          "detail": f"seed_id repeats line {seen_ids[r['seed_id']] + 1}"}
        else:
            seen_ids[r["seed_id"]] = o
    valid = [o for o in range(len(rows)) if o not in removal]
    blocks = [code_blocks(rows[o]["solution"], rows[o].get("language")) if o not in removal else [] for o in range(len(rows))]
    syntax: list[tuple[str | None, bool | None]] = [(None, None)] * len(rows)
    if cfg.syntax_check:
        for o, s in zip(valid, check_syntax([blocks[o] for o in valid], cfg.syntax_timeout_s)):
            syntax[o] = s
    text = {o: rows[o]["problem"] + "\n" + rows[o]["solution"] for o in valid}
    lap("validate_and_syntax")

    # 2. Decontaminate every valid pair (so the report counts all of them).
    con = duckdb.connect()
    con.execute(f"SET threads={max(1, min(os.cpu_count() or 1, 8))}")
    con.execute("SET enable_progress_bar=false")
    valid_texts = [text[o] for o in valid]
    flags, bench_report, ngram_grams = decontaminate(con, cfg, valid_texts, notes)
    lap("decontaminate")
    for f in flags:
        f["ord"] = valid[f.pop("id")]
        f["seed_id"] = rows[f["ord"]]["seed_id"]
    per_bench: dict[tuple[str, str], set[int]] = {}
    for f in sorted(flags, key=lambda f: (f["ord"], f["method"] != "substring", f["bench"], f["task_id"])):
        per_bench.setdefault((f["bench"], f["method"]), set()).add(f["ord"])
        if f["ord"] not in removal:
            removal[f["ord"]] = {"reason": f"contaminated_{f['bench']}", "bench": f["bench"], "task_id": f["task_id"],
                                 "method": f["method"], "match": f["match"][:500],
                                 "detail": f"{f['method']}: {f['bench']} {f['task_id']} ({f['kind']}"
                                           + (f", {f['matches']} of its {f['of']} n-grams" if f["method"] == "ngram" else "")
                                           + ")"}
    for name, b in bench_report.items():
        for m in cfg.methods:
            b["flagged"][m] = len(per_bench.get((name, m), ()))
        b["flagged"]["either"] = len(set().union(*(per_bench.get((name, m), set()) for m in cfg.methods)))

    if cfg.drop_syntax_errors:
        for o in valid:
            if o not in removal and syntax[o][1] is False:
                removal[o] = {"reason": "syntax_error", "detail": syntax[o][0]}

    # 3. Exact duplicates (whitespace-insensitive seed, problem, solution), then near duplicates.
    con.register("pairs_in", pa.table({"ord": pa.array(valid, pa.int64()),
                                       **{k: pa.array([rows[o][k] if isinstance(rows[o].get(k), str) else "" for o in valid],
                                                      pa.string()) for k in ("seed", "problem", "solution")}}))
    con.execute("CREATE TEMP TABLE pairs AS SELECT * FROM pairs_in")
    con.register("gone_in", pa.table({"ord": pa.array(sorted(removal), pa.int64())}))
    con.execute("CREATE TEMP TABLE gone AS SELECT * FROM gone_in")
    for key in ("seed", "problem", "solution"):
        for o, kept in con.execute(DEDUP_SQL.format(key=key)).fetchall():
            removal[o] = {"reason": f"duplicate_{key}", "duplicate_of": rows[kept]["seed_id"],
                          "detail": f"{key} equals that of {rows[kept]['seed_id']} ignoring whitespace"}
            con.execute("INSERT INTO gone VALUES (?)", [o])
    if cfg.near_dup_threshold > 0:
        near = near_duplicates({o: text[o] for o in valid if o not in removal}, cfg.near_dup_threshold,
                               cfg.near_dup_ngram, cfg.near_dup_perms)
        for o, (kept, j) in near.items():
            removal[o] = {"reason": "near_duplicate", "duplicate_of": rows[kept]["seed_id"],
                          "detail": f"estimated Jaccard {j} with {rows[kept]['seed_id']} "
                                    f"(word {cfg.near_dup_ngram}-grams, MinHash {cfg.near_dup_perms})"}

    lap("deduplicate")

    # 4. Similarity to HumanEval, for every valid pair.
    sim = dict(zip(valid, humaneval_similarity(valid_texts))) if cfg.similarity else {}
    lap("similarity")

    # Outputs: every input column, then ours.
    columns = list(dict.fromkeys(BASE_COLUMNS + [k for r in rows for k in r]))
    ours = {"code_blocks": [[{"language": b["language"], "code": b["code"]} for b in blocks[o]] for o in range(len(rows))],
            "syntax": [s for s, _ in syntax], "syntax_ok": [ok for _, ok in syntax],
            "humaneval_similarity": [sim.get(o) for o in range(len(rows))]}
    table = pa.table({**{c: _column([r.get(c) for r in rows]) for c in columns},
                      "code_blocks": pa.array(ours["code_blocks"], pa.list_(pa.struct([("language", pa.string()), ("code", pa.string())]))),
                      "syntax": pa.array(ours["syntax"], pa.string()), "syntax_ok": pa.array(ours["syntax_ok"], pa.bool_()),
                      "humaneval_similarity": pa.array(ours["humaneval_similarity"], pa.float64())})
    kept_ords = [o for o in range(len(rows)) if o not in removal]
    removed_ords = sorted(removal)
    extra = {k: pa.array([removal[o].get(k) for o in removed_ords], pa.string())
             for k in ("reason", "duplicate_of", "bench", "task_id", "method", "match", "detail")}
    removed_table = table.take(pa.array(removed_ords, pa.int64()))
    for k, v in extra.items():
        removed_table = removed_table.append_column(k, v)
    import pyarrow.parquet as pq
    with atomic_path(clean_path) as tmp:
        pq.write_table(table.take(pa.array(kept_ords, pa.int64())), tmp)
    with atomic_path(removed_path) as tmp:
        pq.write_table(removed_table, tmp)

    by_reason: dict[str, int] = {}
    for o in removed_ords:
        by_reason[removal[o]["reason"]] = by_reason.get(removal[o]["reason"], 0) + 1
    syntax_counts: dict[str, dict[str, int]] = {}
    for o in valid:
        if syntax[o][0] is None:
            continue
        langs = sorted({b["language"] for b in blocks[o] if languages.syntax_checker(b["language"])}) or ["-"]
        state = {True: "ok", False: "error"}.get(syntax[o][1], "skipped")
        for lang in langs:
            syntax_counts.setdefault(lang, {"ok": 0, "error": 0, "skipped": 0})[state] += 1
    kept_sims = [sim[o] for o in kept_ords if o in sim]
    report = {
        "pairs_in": len(rows), "kept": len(kept_ords), "removed": len(removed_ords), "removed_by_reason": by_reason,
        "benchmarks": bench_report,
        "rules": {"methods": cfg.methods,
                  "substring": "a benchmark string occurs in problem + solution, both lower-cased, whitespace as is (BigCode's rule)",
                  "ngram": f"a pair shares at least {cfg.ngram_min_matches} distinct word {cfg.ngram_n}-grams, "
                           f"and at least {cfg.ngram_min_coverage:.0%} of them, with one reference text (a "
                           "docstring, prompt, solution, question); only n-grams specific to one benchmark "
                           "problem, with at least n/2 words holding a letter, count",
                  "ngram_reference_grams": ngram_grams,
                  "near_duplicate": f"MinHash ({cfg.near_dup_perms} permutations) over word {cfg.near_dup_ngram}-grams, "
                                    f"LSH at Jaccard {cfg.near_dup_threshold}" if cfg.near_dup_threshold > 0 else "off"},
        "flagged": [{k: f[k] for k in ("seed_id", "bench", "task_id", "method", "kind", "matches", "of", "match")}
                    for f in sorted(flags, key=lambda f: (f["ord"], f["bench"], f["method"]))],
        "syntax": syntax_counts,
        "similarity": {"mean_kept": round(sum(kept_sims) / len(kept_sims), 4) if kept_sims else None,
                       "mean_all": round(sum(sim.values()) / len(sim), 4) if sim else None,
                       "histogram": _histogram(kept_sims), "paper": PAPER_SIMILARITY} if cfg.similarity else None,
        "notes": notes, "seconds": seconds,
    }
    if report_json is not None:
        write_json(report_json, report)
    if report_md is not None:
        write_text(report_md, render_markdown(report))
    return {"pairs_in": len(rows), "kept": len(kept_ords), "removed": len(removed_ords),
            "removed_by_reason": by_reason, "benchmarks": {b: (v["status"] if v["status"] != "checked" else v["flagged"])
                                                           for b, v in bench_report.items()},
            "humaneval_similarity_mean": report["similarity"]["mean_kept"] if cfg.similarity else None,
            "syntax": syntax_counts, "seconds": seconds, "notes": notes,
            "diversity": diversity_stats([rows[o]["problem"] for o in kept_ords],
                                         [sim.get(o) for o in kept_ords] if cfg.similarity else None)}


def diversity_stats(problems: list[str], sims: list[float | None] | None) -> dict:
    """The kept problems' model-free diversity measures with bootstrap intervals (repro/diversity.py):
    distinct 1/2/3-grams per 1,000 words, the most frequent opening's share, the mean similarity
    to HumanEval. Does NOT compute the embedding-based ones (the report and `repro compare` do)."""
    from repro import diversity

    return {"measures": diversity.summary(diversity.cheap(problems, sims)), "pairs": len(problems),
            "resamples": diversity.RESAMPLES,
            "note": "distinct-n depends on the number of pairs: compare sets at equal size (repro compare)"}


def _column(values: list):
    """An input column typed from its values: strings, integers, floats, booleans, else JSON text."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    for typ, ok in ((pa.string(), lambda v: isinstance(v, str)), (pa.bool_(), lambda v: isinstance(v, bool)),
                    (pa.int64(), lambda v: isinstance(v, int) and not isinstance(v, bool)),
                    (pa.float64(), lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))):
        if all(ok(v) for v in present):
            return pa.array(values, typ)
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())


def _histogram(values: list[float], bins: int = 10) -> dict[str, int]:
    out = {f"{i / bins:.1f}-{(i + 1) / bins:.1f}": 0 for i in range(bins)}
    for v in values:
        i = min(int(v * bins), bins - 1)
        out[f"{i / bins:.1f}-{(i + 1) / bins:.1f}"] += 1
    return out


def render_markdown(r: dict) -> str:
    lines = ["# Decontamination and cleaning", "",
             f"{r['pairs_in']} pairs in, {r['kept']} kept, {r['removed']} removed "
             f"({', '.join(f'{k}: {v}' for k, v in r['removed_by_reason'].items()) or 'none'}).", "",
             "## Benchmarks", "", "| benchmark | status | problems | " + " | ".join(f"flagged by {m}" for m in r["rules"]["methods"])
             + " | flagged by either | data |", "| --- | --- | --- | " + "--- | " * len(r["rules"]["methods"]) + "--- | --- |"]
    for name, b in r["benchmarks"].items():
        counts = " | ".join(str(b["flagged"].get(m, 0)) if b["status"] == "checked" else "-" for m in r["rules"]["methods"])
        either = b["flagged"].get("either", 0) if b["status"] == "checked" else "-"
        lines.append(f"| {name} | {b['status']} | {b['problems'] or '-'} | {counts} | {either} | "
                     f"{b['source'] if b['status'] == 'checked' else b['source'].removeprefix('not checked: ')} |")
    lines += ["", "Rules:", ""] + [f"- {k}: {v}" for k, v in r["rules"].items() if k != "methods"]
    if r["flagged"]:
        lines += ["", "## Flagged pairs", "", "| pair | benchmark | problem | method | what | matched text (an n-gram, or the start of the substring) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for f in r["flagged"][:200]:
            m = f["match"].replace("|", "\\|").replace("\n", " ")
            what = f"{f['matches']} of {f['of']} n-grams of its {f['kind']}" if f["method"] == "ngram" else f["kind"]
            lines.append(f"| {f['seed_id']} | {f['bench']} | {f['task_id']} | {f['method']} | {what} | {m[:120]} |")
        if len(r["flagged"]) > 200:
            lines.append(f"| … {len(r['flagged']) - 200} more in decontamination.json | | | | | |")
    if r["syntax"]:
        lines += ["", "## Syntax of the solutions' code blocks", "", "| language | ok | error | skipped |", "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['ok']} | {v['error']} | {v['skipped']} |" for k, v in sorted(r["syntax"].items())]
    if s := r["similarity"]:
        lines += ["", "## TF-IDF similarity to HumanEval", "",
                  f"Mean of each kept pair's maximum cosine similarity to a HumanEval problem: **{s['mean_kept']}** "
                  f"(all valid pairs: {s['mean_all']}). The paper: "
                  + ", ".join(f"{k} {v}" for k, v in s["paper"].items()) + ".", "",
                  "| similarity | pairs |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in s["histogram"].items()]
    lines += ["", "Seconds per step: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["seconds"].items()) + "."]
    if r["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
