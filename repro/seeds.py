"""Step 1 of OSS-Instruct: seed snippets cut from real open-source code.

The paper cuts each seed as 1-15 consecutive lines of a random document: the start line uniform
over the file's lines, the length uniform in 1..15, shorter if it runs past the end, with no
content filter and a fixed random seed. We read a source tree into DuckDB and do the sampling and
the cutting in SQL, with md5-derived pseudo-random numbers so that the same tree, seed and
DuckDB give the same seeds on any machine.

Output: `seeds.parquet` (seed_id, source, path, language, file_lines, start_line, n_lines, seed).
"""

from __future__ import annotations

import os
import sysconfig
from collections import Counter
from pathlib import Path

from repro.artifacts import DATA_DIR, ReproError, atomic_path, fingerprint
from repro.config import SeedsConfig

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", "node_modules", ".venv", "venv"}


def language_table() -> dict[str, str]:
    table = {}
    for line in (DATA_DIR / "languages.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            ext, lang = line.split("\t")[:2]
            table[ext.strip()] = lang.strip()
    return table


def source_root(source: str) -> Path:
    if source == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    root = Path(source).expanduser()
    if not root.is_dir():
        raise ReproError(f"seeds.source={source!r}: not a directory; give a directory of source code "
                         "or 'stdlib'")
    return root.resolve()


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def scan(root: Path, max_file_bytes: int) -> tuple[list[dict], Counter]:
    """Read every file with a known extension; count (never silently drop) what is filtered."""
    langs = language_table()
    files, counts = [], Counter()
    for p in _walk(root):
        lang = langs.get(p.suffix.lower())
        if lang is None:
            counts["skipped_unknown_extension"] += 1
            continue
        if not p.is_file() or p.is_symlink():
            counts["skipped_not_regular_file"] += 1
            continue
        size = p.stat().st_size
        if size > max_file_bytes:
            counts["skipped_too_large"] += 1
            continue
        data = p.read_bytes()
        if b"\0" in data:
            counts["skipped_binary"] += 1
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            counts["skipped_undecodable"] += 1
            continue
        if not text.strip():
            counts["skipped_empty"] += 1
            continue
        files.append({"path": str(p.relative_to(root)), "language": lang, "content": text})
        counts[f"files_{lang}"] += 1
    counts["files"] = len(files)
    return files, counts


def tree_fingerprint(root: Path) -> str:
    """Cheap identity of a source tree: names, sizes and mtimes of its files."""
    return fingerprint([(str(p.relative_to(root)), p.stat().st_size, int(p.stat().st_mtime))
                        for p in _walk(root) if p.is_file()])


# Pick files uniformly without replacement (several rounds only when there are fewer files than
# seeds wanted), then cut one seed per pick: start line uniform over the file's lines, length
# uniform in 1..max_lines, clipped at the end of the file.
SEED_SQL = """
WITH f AS (
    SELECT path, language, content,
           string_split(rtrim(replace(content, chr(13) || chr(10), chr(10)), chr(10)), chr(10)) AS lines
    FROM files
), picks AS (
    SELECT f.*, r.round AS round, len(lines) AS file_lines
    FROM f, range(?) AS r(round)
    ORDER BY round, md5(path || ':pick:' || round || ':' || ?)
    LIMIT ?
), cut AS (
    SELECT *,
           (md5_number_lower(path || ':start:' || round || ':' || ?) % file_lines)::INTEGER AS start0,
           (1 + md5_number_lower(path || ':len:' || round || ':' || ?) % ?)::INTEGER AS want
    FROM picks
)
SELECT md5(path || ':' || round || ':' || start0 || ':' || want) AS seed_id,
       ? AS source, path, language, file_lines,
       start0 + 1 AS start_line,
       least(want, file_lines - start0) AS n_lines,
       array_to_string(list_slice(lines, start0 + 1, start0 + want), chr(10)) AS seed
FROM cut
ORDER BY round, md5(path || ':pick:' || round || ':' || ?)
"""


def run(cfg: SeedsConfig, out: Path) -> dict:
    """Sample `cfg.num_seeds` seeds from `cfg.source` into `out` (parquet); return counts."""
    import duckdb
    import pyarrow as pa

    if cfg.num_seeds < 1 or cfg.max_lines < 1:
        raise ReproError("seeds.num_seeds and seeds.max_lines must be at least 1")
    root = source_root(cfg.source)
    files, counts = scan(root, cfg.max_file_bytes)
    if not files:
        raise ReproError(f"seeds.source={cfg.source!r} ({root}): no readable source files with a known "
                         "extension (data/languages.tsv); point seeds.source at a directory of code")
    con = duckdb.connect()
    con.register("files", pa.Table.from_pylist(files))
    rounds = -(-cfg.num_seeds // len(files))
    s = str(cfg.random_seed)
    source = "stdlib" if cfg.source == "stdlib" else str(root)
    rel = con.execute(SEED_SQL, [rounds, s, cfg.num_seeds, s, s, cfg.max_lines, source, s])
    table = rel.arrow()
    if hasattr(table, "read_all"):  # newer DuckDB returns a RecordBatchReader
        table = table.read_all()
    with atomic_path(out) as tmp:
        con.register("seeds", table)
        con.execute(f"COPY seeds TO '{tmp}' (FORMAT parquet)")
    counts["seeds"] = table.num_rows
    counts["blank_seeds"] = sum(1 for s in table.column("seed").to_pylist() if not s.strip())
    return {"root": str(root), **dict(sorted(counts.items()))}
