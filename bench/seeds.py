"""Seed sampling at paper scale: DuckDB SQL against the same sampling in plain Python, one run.

    .venv/bin/python bench/seeds.py [--files 1000000] [--seeds 80000] [--repeat 3] [--workdir DIR] [--keep]
    .venv/bin/python bench/seeds.py --corpus runs/x/corpus.parquet   # time an existing corpus

Why: the paper drew 80K seeds (40K Python, 5K each of eight other languages) from a corpus of
millions of files; `repro.data.seeds.sample` does it in DuckDB. This builds a corpus.parquet of
`--files` files, samples `--seeds` seeds with the paper's quotas (scaled to --seeds) with both
engines of `repro.data.seeds.sample`, checks that they wrote byte-identical seeds.parquet, and prints
both times, their ratio and each engine's peak memory. Each engine runs in its own fresh process,
so that its peak RSS is its own; its time is taken inside that process, imports excluded.

What is built: the corpus table itself (corpus.parquet, the file `repro seeds` samples from),
not a million files on disk. `repro.data.corpus.build_corpus` first reads this machine's installed code
(up to 3,000 files per language); every file is cut into chunks of up to 120 lines, and file i
of the big corpus is a spread-out chunk under a first comment line naming i, so every file's
content (and id) is distinct. Half the files are labelled Python and 1/16 each of the paper's
eight other languages. A language is replicated from its own installed code when the machine has
at least 1,000 chunks of it; otherwise (C#, Rust, PHP, Swift, TypeScript on most Linux machines)
from the whole installed pool under that label. The label then is not the code's real language,
which matters for timing only through `clean` mode's per-language patterns.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

LABELS = ["python"] * 8 + ["cpp", "java", "typescript", "shell", "csharp", "rust", "php", "swift"]
EXT = {"python": "py", "cpp": "cpp", "java": "java", "typescript": "ts", "shell": "sh", "csharp": "cs",
       "rust": "rs", "php": "php", "swift": "swift"}
COMMENT = {"python": "#", "shell": "#"}  # others: //
OWN_POOL_MIN = 1000  # chunks of a language's own code needed to replicate from it alone

# Cut every installed file into chunks of up to 120 lines, numbered within the file's language
# (its own pool) and within all languages (the pool "any"). Blank chunks are left out before
# numbering, so that the numbers have no gaps.
CHUNKS_SQL = """
CREATE TABLE chunks AS
WITH c AS (
    SELECT language, id, off, source, path, license,
           array_to_string(list_slice(l, off + 1, off + 120), chr(10)) AS text
    FROM (SELECT *, unnest(range(0, len(l), 120)) AS off
          FROM (SELECT *, string_split(replace(content, chr(13) || chr(10), chr(10)), chr(10)) AS l
                FROM read_parquet({base})))
    WHERE length(trim(text, chr(10) || chr(32))) > 0
)
SELECT language AS pool, row_number() OVER (PARTITION BY language ORDER BY id, off) - 1 AS k,
       source, path, license, text FROM c
UNION ALL
SELECT 'any' AS pool, row_number() OVER (ORDER BY id, off) - 1 AS k, source, path, license, text FROM c
"""

# File i: the i-th label of LABELS, a spread-out chunk of that label's pool under a comment line
# naming i. Row groups as large as repro.data.corpus.build_corpus writes them (8,192 rows).
COPIES_SQL = """
COPY (
    SELECT md5(content) AS id, 'bench:' || source AS source, 'copy' || i || '/' || path || '.' || ext AS path,
           language, license, strlen(content)::BIGINT AS bytes, {lines}::BIGINT AS lines, content
    FROM (SELECT r.i, r.language, r.ext, c.source, c.path, c.license,
                 r.comment || ' copy ' || r.i || chr(10) || c.text AS content
          FROM (SELECT i, $labels[i % 16 + 1] AS language, $exts[i % 16 + 1] AS ext,
                       $comments[i % 16 + 1] AS comment, $pools[i % 16 + 1] AS pool,
                       (i * 2654435761) % $sizes[i % 16 + 1] AS k
                FROM range($n) t(i)) r
          JOIN chunks c USING (pool, k))
) TO {out} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 8192)
"""


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_corpus(workdir: Path, n_files: int) -> tuple[Path, str, float]:
    import duckdb

    from repro.data import corpus
    from repro.config import SeedsConfig

    base, out = workdir / "base.parquet", workdir / "corpus.parquet"
    cap = max(200, min(3000, n_files // 300))  # installed files read per language
    stats = corpus.build_corpus(SeedsConfig(source=["installed"], max_files_per_language=cap), base)
    con = duckdb.connect()
    con.execute(CHUNKS_SQL.format(base=_sql_str(str(base))))
    sizes = dict(con.execute("SELECT pool, count(*) FROM chunks GROUP BY pool").fetchall())
    pools = [lang if sizes.get(lang, 0) >= OWN_POOL_MIN else "any" for lang in LABELS]
    con.execute(COPIES_SQL.format(lines=corpus.LINES_SQL.format(c="content"), out=_sql_str(str(out))),
                {"labels": LABELS, "exts": [EXT[x] for x in LABELS], "comments": [COMMENT.get(x, "//") for x in LABELS],
                 "pools": pools, "sizes": [sizes[p] for p in pools], "n": n_files})
    own = sorted({lang for lang, p in zip(LABELS, pools) if p == lang})
    what = (f"from {stats['files']:,} installed files ({sizes['any']:,} chunks); "
            f"own code for {', '.join(own) or 'none'}, the whole pool relabelled for the rest")
    return out, what, _peak_rss_gib()


def time_engine(corpus: str, out: str, n_seeds: int, engine: str) -> tuple[float, dict, float]:
    from repro.data import seeds
    from repro.config import SeedsConfig

    cfg = SeedsConfig(quotas="paper", num_seeds=n_seeds)
    t0 = time.perf_counter()
    stats = seeds.sample(Path(corpus), Path(out), cfg, engine=engine)
    return time.perf_counter() - t0, stats, _peak_rss_gib()


def read_floor(corpus: str) -> tuple[float, int, int]:
    """Reading every file's content once: a floor for any engine when the picks touch every page."""
    import duckdb

    t0 = time.perf_counter()
    n, total = duckdb.sql(f"SELECT count(*), sum(strlen(content)) FROM read_parquet({_sql_str(corpus)})").fetchone()
    return time.perf_counter() - t0, n, total


def in_child(fn, *args):
    """Run fn in a fresh process: its peak RSS is then its own."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, default=80_000)
    ap.add_argument("--corpus", help="sample from this corpus.parquet instead of building one")
    ap.add_argument("--workdir", help="where the corpus and seeds go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--repeat", type=int, default=1, help="time each engine this many times; report the best")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="seeds-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.corpus:
            corpus = Path(args.corpus)
        else:
            t0 = time.perf_counter()
            corpus, what, rss = in_child(build_corpus, workdir, args.files)
            print(f"corpus built in {time.perf_counter() - t0:.0f} s (peak RSS {rss:.1f} GiB) {what}")
        floor, n_files, n_bytes = in_child(read_floor, str(corpus))
        print(f"corpus: {n_files:,} files, {n_bytes / 1e9:.2f} GB of content, "
              f"{corpus.stat().st_size / 2**20:,.0f} MiB parquet; reading all content once: {floor:.1f} s")
        times, rss = {}, {}
        for attempt in range(args.repeat):  # interleaved, so that a busy spell hits both engines
            for engine in ("duckdb", "python"):
                t, stats, peak = in_child(time_engine, str(corpus), str(workdir / f"seeds-{engine}.parquet"),
                                          args.seeds, engine)
                times[engine], rss[engine] = min(t, times.get(engine, t)), max(peak, rss.get(engine, peak))
                print(f"{engine}: {stats['seeds']:,} seeds in {t:.1f} s, peak RSS {peak:.1f} GiB"
                      + "".join(f"; {n}" for n in stats["notes"] if attempt == 0))
        load = os.getloadavg()[0]
        same = (workdir / "seeds-duckdb.parquet").read_bytes() == (workdir / "seeds-python.parquet").read_bytes()
        print(f"byte-identical seeds.parquet from both engines: {same}")
        cores = len(os.sched_getaffinity(0))
        print(f"| seeds: {args.seeds:,} seeds (paper quotas) from {n_files:,} files, {cores} cores, "
              f"best of {args.repeat}, load average {load:.1f} | DuckDB {times['duckdb']:.1f} s "
              f"({rss['duckdb']:.1f} GiB) | plain Python {times['python']:.1f} s ({rss['python']:.1f} GiB) "
              f"| {times['python'] / times['duckdb']:.1f}x |")
        if not same:
            raise SystemExit("the two engines disagree")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
