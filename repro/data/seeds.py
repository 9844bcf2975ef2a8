"""The seeds stage (OSS-Instruct's input): seed snippets cut from real open-source code.

The paper drew 80K seeds from starcoderdata: 40K Python and 5K each of C++, Java, TypeScript,
Shell, C#, Rust, PHP and Swift, each seed 1-15 consecutive lines of a random document (start line
uniform over the file's lines, length uniform in 1..15, shorter if it runs past the end; no
content filter; a fixed random seed). This module does the same from whatever code there is.

1. Corpus (`corpus.parquet`, one row per distinct file): built by repro/data/corpus.py from the sources
   in `seeds.source`, every skipped file counted by reason.
2. Seeds (`seeds.parquet`): per-language quotas, sampled and cut in DuckDB SQL with md5-keyed
   pseudo-random numbers, so that the same corpus, settings and random seed give byte-identical
   seeds on any machine, connection or thread count. `sample(..., engine="python")` is the same
   sampling in plain Python: a test and `bench/seeds.py` check that both write the same bytes.

What it does not do: near-duplicate detection of seeds (only whitespace-insensitive duplicates
within a language count once).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

from repro.artifacts import sql_str, ReproError, atomic_path
from repro.config import SeedsConfig
from repro.data.corpus import build_corpus, known_languages

# The paper's quotas (starcoderdata; Swift from the-stack), and the tiny profile's: mostly Python,
# plus the other languages a typical Linux machine with Python, a C toolchain, Node and a JDK has.
PRESETS = {
    "paper": {"python": 40000, "cpp": 5000, "java": 5000, "typescript": 5000, "shell": 5000,
              "csharp": 5000, "rust": 5000, "php": 5000, "swift": 5000},
    "tiny": {"python": 24, "c": 6, "cpp": 6, "java": 6, "javascript": 4, "shell": 2},
}
# "files" is the third preset: no per-language quotas, languages in proportion to their files.



# ---------------------------------------------------------------------------------------------
# Quotas


def _largest_remainder(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` in proportion to `weights`; leftover units to the largest remainders (ties: name)."""
    w = sum(weights.values())
    if w <= 0 or total <= 0:
        return {k: 0 for k in weights}
    share = {k: total * v // w for k, v in weights.items()}
    rest = total - sum(share.values())
    for k in sorted(weights, key=lambda k: (-(total * weights[k] % w), k))[:rest]:
        share[k] += 1
    return share


def parse_quotas(cfg: SeedsConfig, files_per_language: dict[str, int]) -> dict[str, int]:
    """`seeds.quotas` (a preset or lang=n,...) scaled to `seeds.num_seeds` when that is > 0."""
    spec = cfg.quotas.strip()
    known = known_languages()
    if spec == "files":
        if cfg.num_seeds < 1:
            raise ReproError("seeds.quotas=files needs seeds.num_seeds >= 1 (how many seeds in all)")
        return {k: v for k, v in _largest_remainder(cfg.num_seeds, files_per_language).items() if v}
    if spec in PRESETS:
        q = dict(PRESETS[spec])
    else:
        q = {}
        for item in spec.split(","):
            lang, sep, n = item.partition("=")
            lang = lang.strip().lower()
            if not sep or lang not in known or not n.strip().isdigit():
                raise ReproError(f"seeds.quotas={cfg.quotas!r}: expected a preset ({', '.join([*PRESETS, 'files'])}) "
                                 f"or language=count pairs like python=8,rust=2 with languages from: {', '.join(known)}")
            q[lang] = int(n)
    if cfg.num_seeds > 0:
        q = _largest_remainder(cfg.num_seeds, q)
    return {k: v for k, v in q.items() if v > 0}


def quota_languages(cfg: SeedsConfig) -> list[str] | None:
    """The languages the quotas name (None for `files`, which follows the corpus)."""
    return None if cfg.quotas.strip() == "files" else sorted(parse_quotas(cfg, {}))


# ---------------------------------------------------------------------------------------------
# Sampling

# Lines that carry no code: blank, a comment, or an import. Only `clean` mode skips seeds made of
# nothing else; every seed records it in `trivial`. Written in the regex syntax that RE2 (DuckDB)
# and Python's `re` read alike: no \s, \w or \b, and `.` never crosses a line.
_C_LIKE = r"//.*|/\*.*|\*|\*[ \t/].*"
TRIVIAL_LINE = {
    "python": r"#.*|import[ \t].*|from[ \t]+[A-Za-z0-9_.]+[ \t]+import[ \t].*",
    "shell": r"#.*|(source|\.)[ \t].*",
    "c": _C_LIKE + r"|#[ \t]*include.*",
    "cpp": _C_LIKE + r"|#[ \t]*include.*|import[ \t].*|using[ \t]+namespace[ \t].*",
    "java": _C_LIKE + r"|import[ \t].*|package[ \t].*",
    "javascript": _C_LIKE + r"|import[ \t].*|.*=[ \t]*require\(.*|.use strict.;?",
    "typescript": _C_LIKE + r"|import[ \t].*|.*=[ \t]*require\(.*|.use strict.;?",
    "csharp": _C_LIKE + r"|using[ \t]+[A-Za-z0-9_.= \t]+;",
    "rust": _C_LIKE + r"|use[ \t].*|extern[ \t]+crate[ \t].*|mod[ \t]+[A-Za-z0-9_]+;",
    "php": _C_LIKE + r"|#.*|<\?php|use[ \t].*|namespace[ \t].*|(require|include)(_once)?([^A-Za-z0-9_].*)?",
    "swift": _C_LIKE + r"|import[ \t].*",
    "go": _C_LIKE + r"|import[ \t].*|package[ \t].*|([A-Za-z0-9_.]+[ \t]+)?\"[^\"]*\"",
}
_TRIVIAL_OTHER = _C_LIKE + r"|#.*"


def trivial_pattern(language: str) -> str:
    """A whole seed made only of trivial lines."""
    line = r"[ \t\r\f]*(" + TRIVIAL_LINE.get(language, _TRIVIAL_OTHER) + r")?[ \t\r\f]*"
    return f"{line}(\\n{line})*"


def _trivial_sql() -> str:
    whens = " ".join(f"WHEN {sql_str(lang)} THEN regexp_full_match(seed, {sql_str(trivial_pattern(lang))})"
                     for lang in sorted(TRIVIAL_LINE))
    return f"CASE language {whens} ELSE regexp_full_match(seed, {sql_str(trivial_pattern(''))}) END"


# Seed text with whitespace runs folded to one space: two seeds are duplicates when this is equal.
NORMALIZE = re.compile(r"[ \t\n\r\f]+")


def _normalized(seed: str) -> str:
    return NORMALIZE.sub(" ", seed).strip(" ")


# The seeded shuffle: each language's files in order of a keyed hash of (file id, round, random
# seed), every file once before any file twice; the first `draws` of that order are the picks.
PICKS_SQL = """
CREATE OR REPLACE TEMP TABLE picks AS
SELECT id, language, lines, round,
       row_number() OVER (PARTITION BY language
                          ORDER BY round, md5_number_lower(id || ':' || round || ':' || $seed), id) AS pick
FROM (SELECT c.id, c.language, c.lines, q.draws, unnest(range(q.rounds)) AS round
      FROM read_parquet({corpus}) c JOIN plan q USING (language))
QUALIFY pick <= draws
"""

# One seed per pick, as the paper cuts it: start line uniform over the file's lines, length
# uniform in 1..max_lines, clipped at the end of the file. The numbers come from md5 of the pick.
# Lines split at LF, each losing one CR before it (CRLF files), without copying whole files.
CUT_SQL = """
CREATE OR REPLACE TEMP TABLE cut AS
WITH p AS (
    SELECT p.*, c.source, c.path, c.license, c.content,
           (md5_number_lower(p.id || ':start:' || p.round || ':' || $seed) % p.lines)::BIGINT AS start0,
           (1 + md5_number_lower(p.id || ':len:' || p.round || ':' || $seed) % $max_lines)::BIGINT AS want
    FROM picks p JOIN read_parquet({corpus}) c ON c.id = p.id
), s AS (
    SELECT * EXCLUDE (content, want), least(want, lines - start0) AS n_lines,
           array_to_string(list_transform(
               list_slice(string_split(content, chr(10)), start0 + 1, start0 + least(want, lines - start0)),
               x -> CASE WHEN suffix(x, chr(13)) THEN left(x, -1) ELSE x END), chr(10)) AS seed
    FROM p
)
SELECT *, {trivial} AS trivial,
       trim(regexp_replace(seed, '[ \\t\\n\\r\\f]+', ' ', 'g')) AS normalized
FROM s
"""

# Per language, keep the first pick of each normalized text (and, in clean mode, no trivial seed),
# then the language's target in pick order.
CHOOSE_SQL = """
WITH kept AS (
    SELECT * FROM cut
    WHERE NOT ($clean AND trivial)
    QUALIFY row_number() OVER (PARTITION BY language, normalized ORDER BY pick) = 1
)
SELECT md5(id || ':' || round || ':' || $seed) AS seed_id, language, seed, path, source,
       id AS corpus_id, license, start0 + 1 AS start_line, n_lines, lines AS file_lines,
       $seed_int AS random_seed, $mode AS mode, trivial, pick
FROM kept JOIN plan q USING (language)
QUALIFY row_number() OVER (PARTITION BY language ORDER BY pick) <= q.target
"""


def _seed_schema():
    import pyarrow as pa
    return pa.schema([("seed_id", pa.string()), ("language", pa.string()), ("seed", pa.string()),
                      ("path", pa.string()), ("source", pa.string()), ("corpus_id", pa.string()),
                      ("license", pa.string()), ("start_line", pa.int64()), ("n_lines", pa.int64()),
                      ("file_lines", pa.int64()), ("random_seed", pa.int64()), ("mode", pa.string()),
                      ("trivial", pa.bool_())])


def _first_draws(target: int) -> int:
    """Picks drawn for a target: a tenth more, for duplicates (and trivial seeds in clean mode)."""
    return target + target // 10 + 16


def _max_draws(target: int, n_files: int) -> int:
    """When this many picks still give too few distinct seeds, the language is out of seeds."""
    return max(n_files, 4 * target + 16)


class _DuckDBSampler:
    def __init__(self, corpus: Path, cfg: SeedsConfig):
        import duckdb
        self.con = duckdb.connect()
        self.corpus, self.cfg = sql_str(str(corpus)), cfg

    def files_per_language(self) -> dict[str, int]:
        # How many files each language has in the corpus.
        return dict(self.con.execute(f"SELECT language, count(*) FROM read_parquet({self.corpus}) "
                                     "GROUP BY language ORDER BY language").fetchall())

    def draw(self, plan: list[tuple[str, int, int, int]]):
        import pyarrow as pa
        self.con.register("plan_rows", pa.table({k: [r[i] for r in plan] for i, k in
                                                 enumerate(("language", "target", "draws", "rounds"))}))
        self.con.execute("CREATE OR REPLACE TEMP TABLE plan AS SELECT * FROM plan_rows")
        s = str(self.cfg.random_seed)
        self.con.execute(PICKS_SQL.format(corpus=self.corpus), {"seed": s})
        self.con.execute(CUT_SQL.format(corpus=self.corpus, trivial=_trivial_sql()),
                         {"seed": s, "max_lines": self.cfg.max_lines})
        rel = self.con.execute(CHOOSE_SQL, {"seed": s, "seed_int": self.cfg.random_seed, "mode": self.cfg.mode,
                                            "clean": self.cfg.mode == "clean"})
        table = rel.arrow()
        table = table.read_all() if hasattr(table, "read_all") else table  # newer DuckDB: a reader
        return table


class _PythonSampler:
    """The same sampling, written plainly in Python (pyarrow only reads the parquet)."""

    def __init__(self, corpus: Path, cfg: SeedsConfig):
        import pyarrow.parquet as pq
        self.corpus, self.cfg = corpus, cfg
        meta = pq.read_table(corpus, columns=["id", "language", "lines"])
        self.ids = meta.column("id").to_pylist()
        self.langs = meta.column("language").to_pylist()
        self.lines = meta.column("lines").to_pylist()

    def files_per_language(self) -> dict[str, int]:
        return dict(sorted(Counter(self.langs).items()))

    @staticmethod
    def _key(s: str) -> int:  # = DuckDB's md5_number_lower
        return int.from_bytes(hashlib.md5(s.encode()).digest()[8:], "little")

    def draw(self, plan: list[tuple[str, int, int, int]]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        seed, cfg = str(self.cfg.random_seed), self.cfg
        rows_by_lang = {lang: [] for lang, *_ in plan}
        for i, lang in enumerate(self.langs):
            if lang in rows_by_lang:
                rows_by_lang[lang].append(i)
        picks = []  # (language, pick number, row index, round)
        for lang, target, draws, rounds in plan:
            order = sorted((r, self._key(f"{self.ids[i]}:{r}:{seed}"), self.ids[i], i)
                           for r in range(rounds) for i in rows_by_lang[lang])
            picks += [(lang, n + 1, i, r) for n, (r, _, _, i) in enumerate(order[:draws])]
        wanted = {self.ids[i] for _, _, i, _ in picks}
        files = {}
        for batch in pq.ParquetFile(self.corpus).iter_batches(columns=["id", "source", "path", "license", "content"]):
            for j, cid in enumerate(batch.column("id").to_pylist()):
                if cid in wanted:
                    files[cid] = [batch.column(k)[j].as_py() for k in ("source", "path", "license", "content")]
        trivial_re = {lang: re.compile(trivial_pattern(lang)) for lang, *_ in plan}
        targets = {lang: target for lang, target, *_ in plan}
        out, seen, taken = [], set(), Counter()
        for lang, pick, i, r in sorted(picks):
            cid, n = self.ids[i], self.lines[i]
            source, path, lic, content = files[cid]
            start0 = self._key(f"{cid}:start:{r}:{seed}") % n
            length = min(1 + self._key(f"{cid}:len:{r}:{seed}") % cfg.max_lines, n - start0)
            text = "\n".join(line[:-1] if line.endswith("\r") else line
                             for line in content.split("\n")[start0:start0 + length])
            trivial = trivial_re[lang].fullmatch(text) is not None
            norm = (lang, _normalized(text))
            if (cfg.mode == "clean" and trivial) or norm in seen or taken[lang] >= targets[lang]:
                continue
            seen.add(norm)
            taken[lang] += 1
            out.append({"seed_id": hashlib.md5(f"{cid}:{r}:{seed}".encode()).hexdigest(), "language": lang,
                        "seed": text, "path": path, "source": source, "corpus_id": cid, "license": lic,
                        "start_line": start0 + 1, "n_lines": length, "file_lines": n,
                        "random_seed": cfg.random_seed, "mode": cfg.mode, "trivial": trivial})
        return pa.Table.from_pylist(out, schema=_seed_schema())


def sample(corpus: Path, out: Path, cfg: SeedsConfig, engine: str = "duckdb") -> dict:
    """Sample seeds from `corpus` into `out` (parquet) under the quotas; return counts and notes.

    Rebalancing rule: a language that cannot meet its target (no files, or too few distinct
    seeds) keeps what it has; the shortfall is shared among the languages that can still give
    seeds in proportion to their quotas (largest remainder, ties by name), repeated until the
    total is met. Only when no quota language can give more do languages outside the quotas
    take the rest, in proportion to their file counts.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    check_settings(cfg)
    sampler = (_DuckDBSampler if engine == "duckdb" else _PythonSampler)(corpus, cfg)
    n_files = sampler.files_per_language()
    quotas = parse_quotas(cfg, n_files)
    want_total = sum(quotas.values())
    notes, got, chosen, exhausted = [], {}, {}, set()
    for lang, q in sorted(quotas.items()):
        if not n_files.get(lang):
            notes.append(f"quota {lang}={q} unmet: no {lang} files in the corpus")
            exhausted.add(lang)
            got[lang] = 0
    targets = {lang: q for lang, q in quotas.items() if lang not in exhausted}
    draws = {lang: _first_draws(t) for lang, t in targets.items()}
    weights = dict(quotas)
    while True:
        retry = {}
        if targets:
            table = sampler.draw([(lang, t, draws[lang], -(-draws[lang] // n_files[lang]))
                                  for lang, t in sorted(targets.items())])
            for lang, t in targets.items():
                chosen[lang] = table.filter(pc.equal(table["language"], lang))
                got[lang] = chosen[lang].num_rows
                if got[lang] < t and draws[lang] < _max_draws(t, n_files[lang]):
                    retry[lang] = t  # more picks: the target is a prefix of a longer draw
                    draws[lang] = min(4 * draws[lang], _max_draws(t, n_files[lang]))
                elif got[lang] < t:
                    exhausted.add(lang)
                    notes.append(f"quota {lang}={t} unmet: only {got[lang]} distinct seeds from "
                                 f"{n_files[lang]} files")
        if retry:
            targets = retry
            continue
        short = want_total - sum(got.values())
        open_ = {lang: weights[lang] for lang in weights if lang not in exhausted and n_files.get(lang)}
        if short <= 0:
            break
        if not open_:  # no quota language can give more: others, by their file counts
            weights = {lang: n for lang, n in n_files.items() if lang not in quotas and lang not in exhausted}
            open_ = dict(weights)
            if not open_:
                notes.append(f"{short} seeds short of {want_total}: the corpus has no more distinct seeds")
                break
            notes.append(f"{short} seeds go to languages outside the quotas, by their file counts")
        extra = _largest_remainder(short, open_)
        targets = {lang: got.get(lang, 0) + k for lang, k in extra.items() if k}
        draws.update({lang: max(draws.get(lang, 0), _first_draws(t)) for lang, t in targets.items()})
        notes.append("rebalanced: " + ", ".join(f"{lang} +{k}" for lang, k in sorted(extra.items()) if k))
    table = pa.concat_tables([t.select(_seed_schema().names).cast(_seed_schema()) for t in chosen.values()]
                             or [_seed_schema().empty_table()])
    table = table.sort_by("seed_id").combine_chunks()
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    seeds = table.column("seed").to_pylist()
    stats = {"seeds": table.num_rows, "mode": cfg.mode,
             **{f"quota_{lang}": q for lang, q in sorted(quotas.items())},
             **{f"seeds_{lang}": n for lang, n in sorted(got.items()) if n},
             "blank_seeds": sum(1 for s in seeds if not s.strip()),
             "trivial_seeds": sum(table.column("trivial").to_pylist()),
             "notes": notes}
    return stats


def check_settings(cfg: SeedsConfig) -> None:
    """Settings errors, before any file is read."""
    if cfg.num_seeds < 0 or cfg.max_lines < 1:
        raise ReproError("seeds.num_seeds must be >= 0 and seeds.max_lines >= 1")
    if cfg.mode not in ("paper", "clean"):
        raise ReproError(f"seeds.mode={cfg.mode!r}: choose paper (no content filter, as the paper) or clean")
    if not parse_quotas(cfg, {"python": 1}):  # raises on a malformed seeds.quotas
        raise ReproError(f"seeds.quotas={cfg.quotas!r} with seeds.num_seeds={cfg.num_seeds} asks for no seeds")


def run(cfg: SeedsConfig, out_seeds: Path, out_corpus: Path) -> dict:
    """Build the corpus into `out_corpus`, then sample the seeds into `out_seeds`; return counts."""
    check_settings(cfg)
    corpus = build_corpus(cfg, out_corpus, quota_languages(cfg))
    sampled = sample(out_corpus, out_seeds, cfg)
    return {**{k: v for k, v in corpus.items() if k != "notes"},
            **{k: v for k, v in sampled.items() if k != "notes"},
            "notes": corpus["notes"] + sampled["notes"]}
