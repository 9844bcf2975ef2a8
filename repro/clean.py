"""Step 3: clean the generated pairs — exact dedup and benchmark decontamination, in DuckDB.

- Exact dedup as the paper: a pair whose seed, problem or solution equals (ignoring all
  whitespace) that of an earlier kept pair is removed, naming the pair it duplicates.
- Decontamination with the paper's rule: a pair is removed when a benchmark's docstring or
  canonical solution appears in it as a case-insensitive substring (whitespace runs collapsed,
  BigCode's allow-list of generic one-line solutions exempt). Each removal names the task id.

Outputs: `clean.parquet` (kept pairs) and `removed.parquet` (seed_id, reason, detail).
"""

from __future__ import annotations

from pathlib import Path

from repro.artifacts import atomic_path, read_jsonl
from repro.benchmarks import contamination_strings
from repro.config import CleanConfig

COLUMNS = ["seed_id", "language", "path", "seed", "problem", "solution"]

# For each key in turn, keep the first pair (in generation order) of every group of pairs
# whose key is equal ignoring whitespace; the others are duplicates of that first one.
DEDUP_SQL = """
INSERT INTO removed
SELECT seed_id, 'duplicate_{key}', first_value(seed_id) OVER w
FROM pairs WHERE seed_id NOT IN (SELECT seed_id FROM removed)
WINDOW w AS (PARTITION BY regexp_replace({key}, '\\s+', '', 'g') ORDER BY ord)
QUALIFY row_number() OVER w > 1
"""

# The paper's substring rule: remove a pair whose problem or solution contains a benchmark
# string, compared case-insensitively with whitespace runs collapsed. One match per pair is named.
DECON_SQL = """
INSERT INTO removed
SELECT seed_id, 'contaminated_' || bench, task_id || ' (' || kind || ')'
FROM (
    SELECT p.seed_id, r.bench, r.task_id, r.kind,
           row_number() OVER (PARTITION BY p.seed_id ORDER BY r.bench, r.task_id, r.kind) AS n
    FROM pairs p JOIN refs r
      ON contains(lower(regexp_replace(p.problem || ' ' || p.solution, '\\s+', ' ', 'g')),
                  lower(regexp_replace(trim(r.text), '\\s+', ' ', 'g')))
    WHERE p.seed_id NOT IN (SELECT seed_id FROM removed)
)
WHERE n = 1
"""


def run(cfg: CleanConfig, pairs_path: Path, clean_path: Path, removed_path: Path) -> dict:
    import duckdb
    import pyarrow as pa

    rows = [{c: r.get(c) for c in COLUMNS} | {"ord": i} for i, r in enumerate(read_jsonl(pairs_path))]
    schema = pa.schema([(c, pa.string()) for c in COLUMNS] + [("ord", pa.int64())])
    con = duckdb.connect()
    con.register("pairs_in", pa.Table.from_pylist(rows, schema=schema))
    con.execute("CREATE TABLE pairs AS SELECT * FROM pairs_in")
    con.execute("CREATE TABLE removed (seed_id VARCHAR, reason VARCHAR, detail VARCHAR)")
    for key in ("seed", "problem", "solution"):
        con.execute(DEDUP_SQL.format(key=key))
    refs = [(b, t, k, s) for b in cfg.benchmarks for t, k, s in contamination_strings(b)]
    con.register("refs", pa.Table.from_pylist([dict(zip(["bench", "task_id", "kind", "text"], r)) for r in refs]))
    con.execute(DECON_SQL)

    with atomic_path(removed_path) as tmp:
        con.execute(f"COPY (SELECT * FROM removed ORDER BY reason, seed_id) TO '{tmp}' (FORMAT parquet)")
    with atomic_path(clean_path) as tmp:
        con.execute(f"""COPY (SELECT {', '.join(COLUMNS)} FROM pairs
                              WHERE seed_id NOT IN (SELECT seed_id FROM removed) ORDER BY ord)
                        TO '{tmp}' (FORMAT parquet)""")
    by_reason = dict(con.execute("SELECT reason, count(*) FROM removed GROUP BY reason ORDER BY reason").fetchall())
    kept = con.execute("SELECT count(*) FROM pairs WHERE seed_id NOT IN (SELECT seed_id FROM removed)").fetchone()[0]
    return {"pairs_in": len(rows), "kept": kept, "removed": sum(by_reason.values()),
            "removed_by_reason": by_reason, "benchmarks": cfg.benchmarks,
            "benchmark_strings": len(refs)}
