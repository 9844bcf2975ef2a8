"""Benchmark decontamination of the generated pairs, in DuckDB: the paper's substring rule and
word n-gram overlap.

Both look at a pair's `problem + "\n" + solution` (what the student is trained on).

- `substring` (the paper's rule, after BigCode): a pair is flagged when a reference text (a
  HumanEval docstring or canonical solution, an MBPP test problem or its code, a DS-1000 prompt,
  a GSM8K or APPS test question; see repro/data/benchmarks.py) occurs in it, compared in lower case
  with every run of whitespace made one space.
- `ngram`: text is cut into *normalized words*: maximal runs of ASCII letters, digits and `_`,
  lower-cased (everything else, non-ASCII letters included, separates words). A pair is flagged
  for a benchmark problem when, for one of its reference texts, the pair holds at least
  `min_matches` of the text's distinct *specific* word n-grams and at least `min_coverage` of
  them. Specific n-grams occur in one benchmark problem only (one DS-1000 perturbation family) and
  have at least n/2 words holding a letter: tables of numbers ("0 1 2 3 4 5 6 7 8 9") and text
  shared by many problems say nothing. On clean pairs built from stdlib text (bench/decontam.py),
  one shared specific 10-gram flagged 0.79% of pairs, two 0.33% (import lines, tracebacks,
  library docs that DS-1000 quotes), two that are also 20% of the text 0.003% (2 of 74,700).

`ngram_reference` is the same n-gram rule in plain Python; tests and bench/decontam.py check
that both flag the same pairs for the same problems.

What it does not do: catch paraphrase that keeps too few runs of n words (fewer than
`min_matches`, or under `min_coverage` of the text), a copy of only the generic part of a problem
(6 of the bench's 300 planted DS-1000 prompt prefixes held no specific n-gram: data tables and
boilerplate), translation into another language, or contamination through the seed snippets
(they are not training text).
"""

from __future__ import annotations

import re
from collections import defaultdict

from repro.data.benchmarks import Reference

# One normalization, two implementations: the SQL below and `words` must agree exactly.
# RE2's \W is ASCII-only ([^0-9A-Za-z_]), as is Python's with re.ASCII; after the replacement
# the text is ASCII, so DuckDB's lower() and Python's agree.
WORDS_SQL = "string_split(trim(lower(regexp_replace({text}, '\\W+', ' ', 'g'))), ' ')"
_NONWORD = re.compile(r"\W+", re.ASCII)
# The only characters whose lower case (in DuckDB and Python) is ASCII: İ and the Kelvin sign.
ODD = re.compile("[\u0130\u212a]")


def _odd_sql(col: str) -> str:
    return " OR ".join(f"contains({col}, '{c}')" for c in "\u0130\u212a")


def words(text: str) -> list[str]:
    return _NONWORD.sub(" ", text).lower().strip(" ").split(" ")


def _specific(gram_words: list[str], n: int) -> bool:
    return sum(any(c.isalpha() for c in w) for w in gram_words) * 2 >= n


# ---------------------------------------------------------------------------------------------
# The DuckDB path


def _shifted(n: int, col: str, prefix: str) -> str:
    # n shifted copies of a list unnested side by side: row k holds items k..k+n-1. One pass, no
    # list per window (list_slice per window was 10x slower, measured).
    return ", ".join(f"unnest(list_slice({col}, {j + 1}, len({col}) - {n - 1 - j})) AS {prefix}{j}" for j in range(n))


def _windows_sql(n: int, table: str, id_col: str) -> str:
    """Every n-word window of every row of `table(<id_col>, wh)`: its start pos and word hashes a0..a{n-1}."""
    return f"SELECT {id_col}, unnest(range(1, len(wh) - {n - 2})) AS pos, {_shifted(n, 'wh', 'a')} FROM {table} WHERE len(wh) >= {n}"


def _hash_sql(n: int, prefix: str = "a") -> str:
    """A window's hash: of its words' hashes (hashing 10 integers per window, not 10 strings,
    made the pass over all windows 2.5-8x faster, measured; the word hashes take a pass of their own)."""
    return "hash(" + ", ".join(f"{prefix}{j}" for j in range(n)) + ")"


def prepare_docs(con, texts: list[str]) -> None:
    """Create `docs(id, text)` and `doc_wh(id, wh)`: each pair's training text and the hashes of
    its words, in order (the words themselves are cut again only for pairs with a match)."""
    import pyarrow as pa

    # DuckDB parallelizes a scan of its own tables by row groups of 122,880 rows (its "Tuning
    # Workloads" guide), so 75K pairs in a table are cut on one core; Arrow batches of 1,024 rows
    # go to every core (the bench's 2-thread run used 1.3 CPU-s per second).
    def batches(t):
        return pa.Table.from_batches(t.to_batches(max_chunksize=1024)) if t.num_rows else t

    table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
    con.register("docs_in", batches(table))
    con.execute("CREATE OR REPLACE TEMP TABLE docs AS SELECT * FROM docs_in")
    wh = con.execute(f"SELECT id, list_transform({WORDS_SQL.format(text='text')}, x -> hash(x)) AS wh FROM docs_in")
    wh = wh.arrow()  # a RecordBatchReader in DuckDB 1.4+, a Table before
    con.register("doc_wh", batches(wh.read_all() if hasattr(wh, "read_all") else wh))
    con.unregister("docs_in")


def build_reference_grams(con, refs: list[Reference], n: int) -> dict:
    """Create `ref_gram(h, gram, bench, grp)` (the specific n-grams), `ref_gram_text(h, rid)` and
    `ref_size(rid, bench, grp, size)` (each reference text's specific n-grams and their number)."""
    import pyarrow as pa

    con.register("refs_in", pa.Table.from_pylist(
        [{"rid": i, "bench": r.bench, "grp": r.group, "text": r.text} for i, r in enumerate(refs)],
        schema=pa.schema([("rid", pa.int64()), ("bench", pa.string()), ("grp", pa.string()), ("text", pa.string())])))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ref_words AS
                    SELECT rid, bench, grp, w, list_transform(w, x -> hash(x)) AS wh
                    FROM (SELECT *, {WORDS_SQL.format(text='text')} AS w FROM refs_in)""")
    con.unregister("refs_in")
    # Each window with its text and how many of its words hold a letter (the words are ASCII
    # [a-z0-9_], so a word holds one when upper-casing changes it).
    letters = " + ".join(f"(upper(a{j}) <> a{j})::INT" for j in range(n))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ref_win AS
        SELECT DISTINCT rid, bench, grp, {_hash_sql(n, 'b')} AS h, concat_ws(' ', {', '.join(f'a{j}' for j in range(n))}) AS gram,
               {letters} AS letter_words
        FROM (SELECT rid, bench, grp, {_shifted(n, 'w', 'a')}, {_shifted(n, 'wh', 'b')} FROM ref_words WHERE len(w) >= {n})
    """)
    # Specific: the gram belongs to one problem (family) only, and half its words hold a letter.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ref_gram AS
        SELECT h, any_value(gram) AS gram, any_value(bench) AS bench, any_value(grp) AS grp
        FROM ref_win GROUP BY h
        HAVING count(DISTINCT (bench, grp)) = 1 AND 2 * any_value(letter_words) >= {n}
    """)
    con.execute("CREATE OR REPLACE TEMP TABLE ref_gram_text AS SELECT DISTINCT h, rid FROM ref_win SEMI JOIN ref_gram USING (h)")
    con.execute("""CREATE OR REPLACE TEMP TABLE ref_size AS
                    SELECT rid, any_value(bench) AS bench, any_value(grp) AS grp, count(*) AS size
                    FROM ref_gram_text JOIN (SELECT DISTINCT rid, bench, grp FROM ref_win) USING (rid) GROUP BY rid""")
    return {"grams": con.execute("SELECT count(*) FROM ref_gram").fetchone()[0]}


def match_windows(con, n: int) -> int:
    """Create `doc_hit(id, pos, h)`: the windows of the pairs whose hash is a reference n-gram's
    (`ref_gram`) or a substring key's (`sub_ref`), whichever exist. One pass over all windows."""
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    keys = " UNION ".join([q for t, q in (("ref_gram", "SELECT h FROM ref_gram"),
                                          ("sub_ref", "SELECT key AS h FROM sub_ref WHERE key IS NOT NULL")) if t in have])
    con.execute(f"CREATE OR REPLACE TEMP TABLE win_key AS {keys}")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE doc_hit AS
                    SELECT id, pos, h FROM (SELECT id, pos, {_hash_sql(n)} AS h FROM ({_windows_sql(n, 'doc_wh', 'id')}))
                    SEMI JOIN win_key USING (h)""")
    return con.execute("SELECT count(*) FROM doc_hit").fetchone()[0]


def ngram_flags(con, n: int, min_matches: int, min_coverage: float, kinds: list[str] | None = None) -> list[dict]:
    """Flags for the pairs in `docs` against `ref_gram`, from `doc_hit` (see `prepare_docs`,
    `build_reference_grams`, `match_windows`): one per (pair, benchmark problem), from its
    reference text with the best coverage. `kinds[rid]` names each text's kind.
    """
    # Per pair and reference text: the distinct grams shared, and the share of the text's
    # specific grams they are. A hash match is confirmed on the words, cut again for those pairs
    # only. The rule: at least min_matches grams and min_coverage of the text.
    rows = con.execute(f"""
        WITH x AS (SELECT * FROM doc_hit SEMI JOIN ref_gram USING (h)),
        hit_words AS (SELECT id, {WORDS_SQL.format(text='text')} AS w FROM docs WHERE id IN (SELECT id FROM x)),
        hit AS (
            SELECT DISTINCT x.id, r.h, r.gram FROM x JOIN ref_gram r USING (h) JOIN hit_words d USING (id)
            WHERE array_to_string(list_slice(d.w, x.pos, x.pos + {n - 1}), ' ') = r.gram
        ), per_text AS (
            SELECT hit.id, t.rid, count(*) AS k, min(hit.gram) AS example
            FROM hit JOIN ref_gram_text t USING (h) GROUP BY hit.id, t.rid
        )
        SELECT p.id, s.bench, s.grp, p.rid, p.k, s.size, p.example
        FROM per_text p JOIN ref_size s USING (rid)
        WHERE p.k >= {min_matches} AND p.k / s.size >= {float(min_coverage)!r}
        QUALIFY row_number() OVER (PARTITION BY p.id, s.bench, s.grp ORDER BY p.k / s.size DESC, p.k DESC, p.rid) = 1
        ORDER BY p.id, s.bench, s.grp
    """).fetchall()
    return [_flag(i, b, g, rid, k, size, ex, kinds) for i, b, g, rid, k, size, ex in rows]


def _flag(i, bench, grp, rid, k, size, example, kinds):
    return {"id": i, "bench": bench, "task_id": grp, "method": "ngram",
            "kind": kinds[rid] if kinds else str(rid), "matches": k, "of": size, "match": example}


def prepare_substring(con, refs: list[Reference], n: int) -> int:
    """Create `sub_ref`: the references of the paper's rule, with what picks their candidates.

    Comparing every pair with every reference would be ~270M `contains` calls at the paper's
    75K pairs. If a reference occurs in a pair, its inner words (all but the first and last,
    which may be cut) are whole words of the pair. So a reference of n + 2 words or more is
    compared only with the pairs holding its words 2..n+1 as an n-gram (`key`, found by
    `match_windows`), a shorter one only with the pairs holding its rarest inner word (rarest in
    every 8th pair), and one without inner words with every pair. Exact: a test compares it
    with the plain product.
    """
    import pyarrow as pa

    rows = []
    for i, r in enumerate(refs):
        if not r.substring:
            continue
        w = words(r.text)
        odd = bool(ODD.search(r.text))  # see below
        inner = w[1:-1]
        rows.append({"rid": i, "bench": r.bench, "task_id": r.task_id, "kind": r.kind, "text": r.text,
                     "key_words": inner[:n] if len(inner) >= n and not odd else None,
                     "inner_words": sorted(set(inner)) if inner and len(inner) < n and not odd else None})
    con.register("sub_in", pa.Table.from_pylist(rows, schema=pa.schema(
        [("rid", pa.int64()), ("bench", pa.string()), ("task_id", pa.string()), ("kind", pa.string()),
         ("text", pa.string()), ("key_words", pa.list_(pa.string())), ("inner_words", pa.list_(pa.string()))])))
    # The needle as the paper compares it. Lower-casing before cutting words changes them only
    # for U+0130 and U+212A, whose lower case is ASCII: pairs holding either are compared with
    # every reference (and such references with every pair).
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE sub_ref AS
        SELECT rid, bench, task_id, kind, inner_words, lower(regexp_replace(trim(text), '\\s+', ' ', 'g')) AS needle,
               CASE WHEN key_words IS NOT NULL THEN hash({', '.join(f'hash(key_words[{j + 1}])' for j in range(n))}) END AS key
        FROM sub_in
    """)
    con.unregister("sub_in")
    return len(rows)


def substring_flags(con) -> list[dict]:
    """The paper's rule over `docs(id, text)`: one flag per (pair, problem), naming the text kind.
    Needs `docs`, `doc_wh`, `sub_ref` and `doc_hit` (`prepare_docs`, `prepare_substring`, `match_windows`)."""
    flags = con.execute(f"""
        WITH keyed AS (
            SELECT DISTINCT x.id, s.rid FROM doc_hit x JOIN sub_ref s ON s.key = x.h
        ), inner_word AS (
            SELECT rid, word, hash(word) AS word_h FROM (SELECT rid, unnest(inner_words) AS word FROM sub_ref)
        ), sample_df AS (  -- in how many of every 8th pair each inner word occurs
            SELECT word_h, count(DISTINCT id) AS df
            FROM (SELECT id, unnest(wh) AS word_h FROM doc_wh WHERE id % 8 = 0) SEMI JOIN inner_word USING (word_h)
            GROUP BY word_h
        ), anchor AS (
            SELECT rid, word_h FROM inner_word LEFT JOIN sample_df USING (word_h)
            QUALIFY row_number() OVER (PARTITION BY rid ORDER BY coalesce(df, 0), length(word) DESC, word) = 1
        ), anchored AS (
            SELECT DISTINCT d.id, a.rid FROM (SELECT id, unnest(wh) AS word_h FROM doc_wh) d JOIN anchor a USING (word_h)
        ), cand AS (
            SELECT * FROM keyed UNION SELECT * FROM anchored
            UNION SELECT d.id, s.rid FROM docs d, sub_ref s WHERE s.key IS NULL AND s.inner_words IS NULL
            UNION SELECT d.id, s.rid FROM docs d, sub_ref s WHERE {_odd_sql('d.text')}
        ), hay AS (
            SELECT id, lower(regexp_replace(text, '\\s+', ' ', 'g')) AS hay FROM docs SEMI JOIN cand USING (id)
        )
        SELECT c.id, s.bench, s.task_id, s.kind, s.needle
        FROM cand c JOIN sub_ref s USING (rid) JOIN hay h USING (id)
        WHERE contains(h.hay, s.needle)
        QUALIFY row_number() OVER (PARTITION BY c.id, s.bench, s.task_id ORDER BY s.kind, s.rid) = 1
        ORDER BY c.id, s.bench, s.task_id
    """).fetchall()
    return [{"id": i, "bench": b, "task_id": t, "method": "substring", "kind": k, "matches": 1, "of": 1, "match": m}
            for i, b, t, k, m in flags]


# ---------------------------------------------------------------------------------------------
# The plain-Python reference of the n-gram rule


def reference_grams(refs: list[Reference], n: int) -> tuple[dict[str, list[int]], list[int], list[tuple[str, str]]]:
    """The specific n-grams: (gram -> reference texts holding it, specific grams per text,
    (bench, group) per text)."""
    per_text = []
    owners: dict[str, set] = defaultdict(set)
    for r in refs:
        w = words(r.text)
        grams = {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
        per_text.append(grams)
        for g in grams:
            owners[g].add((r.bench, r.group))
    specific = {g for g, o in owners.items() if len(o) == 1 and _specific(g.split(" "), n)}
    index: dict[str, list[int]] = defaultdict(list)
    sizes = []
    for rid, grams in enumerate(per_text):
        mine = grams & specific
        sizes.append(len(mine))
        for g in mine:
            index[g].append(rid)
    return dict(index), sizes, [(r.bench, r.group) for r in refs]


def ngram_reference(texts: list[str], table, n: int, min_matches: int, min_coverage: float,
                    kinds: list[str] | None = None) -> list[dict]:
    """The n-gram rule, pair by pair in plain Python; the same output as `ngram_flags`."""
    index, sizes, owner = table
    out = []
    for i, text in enumerate(texts):
        w = words(text)
        found: dict[int, set[str]] = defaultdict(set)
        for k in range(len(w) - n + 1):
            g = " ".join(w[k:k + n])
            for rid in index.get(g, ()):
                found[rid].add(g)
        best: dict[tuple[str, str], tuple] = {}
        for rid, gs in found.items():
            k, size = len(gs), sizes[rid]
            if k >= min_matches and k / size >= min_coverage:
                key = (-(k / size), -k, rid)
                if owner[rid] not in best or key < best[owner[rid]][0]:
                    best[owner[rid]] = (key, rid, k, size, min(gs))
        for (bench, grp), (_, rid, k, size, ex) in sorted(best.items()):
            out.append(_flag(i, bench, grp, rid, k, size, ex, kinds))
    return out
