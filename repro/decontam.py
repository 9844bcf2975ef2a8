"""Benchmark decontamination of the generated pairs: the paper's substring rule, and word n-gram
overlap in DuckDB.

Both look at a pair's `problem + "\n" + solution` (what the student is trained on).

- `substring` (the paper's rule: BigCode's find_substrings.py, which Magicoder ran on
  `problem` and `solution`): a pair is flagged when a benchmark text (a HumanEval docstring or
  canonical solution, an MBPP test problem or its code, a DS-1000 prompt up to its solution
  marker, a GSM8K or APPS test question; see repro/data/benchmarks.py and `substring_needles`)
  occurs in it, both lower-cased with Python's `str.lower`, whitespace as it is.
  `substring_flags` finds them with an Aho-Corasick automaton; `substring_reference` is
  BigCode's one-by-one loop, in plain Python.
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
that both flag the same pairs for the same problems (and the same for the two substring paths).

What it does not do: catch, by substring, a copy whose whitespace or line ends differ (499 of
MBPP's 500 test solutions have \r\n line ends: BigCode's rule, kept as it is; the n-gram rule
ignores both), paraphrase that keeps too few runs of n words (fewer than `min_matches`, or under
`min_coverage` of the text), a copy of only the generic part of a problem (6 of the bench's 300
planted DS-1000 prompt prefixes held no specific n-gram: data tables and boilerplate),
translation into another language, or contamination through the seed snippets (they are not
training text).
"""

from __future__ import annotations

import re
from collections import defaultdict

from repro.artifacts import ReproError
from repro.data.benchmarks import Reference

# One normalization, two implementations: the SQL below and `words` must agree exactly.
# RE2's \W is ASCII-only ([^0-9A-Za-z_]), as is Python's with re.ASCII; after the replacement
# the text is ASCII, so DuckDB's lower() and Python's agree.
WORDS_SQL = "string_split(trim(lower(regexp_replace({text}, '\\W+', ' ', 'g'))), ' ')"
_NONWORD = re.compile(r"\W+", re.ASCII)
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
    (`ref_gram`). One pass over all windows; without `ref_gram` (no n-gram method) it does nothing."""
    if "ref_gram" not in {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}:
        return 0
    con.execute(f"""CREATE OR REPLACE TEMP TABLE doc_hit AS
                    SELECT id, pos, h FROM (SELECT id, pos, {_hash_sql(n)} AS h FROM ({_windows_sql(n, 'doc_wh', 'id')}))
                    SEMI JOIN ref_gram USING (h)""")
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


# ---------------------------------------------------------------------------------------------
# The paper's substring rule

# Which substring rule a clean stage ran (in its fingerprint): BigCode's, as below. Before it, the
# texts' whitespace runs were collapsed.
SUBSTRING_RULE = "bigcode-find-substrings"
# BigCode cuts a DS-1000 prompt before its solution marker (benchmark_data.py, extract_ds_1000_prompt).
DS1000_MARKERS = ("SOLUTION START", "BEGIN SOLUTION")
# BigCode strips these columns (load_dataset_column); MBPP and DS-1000 texts it takes as they are.
STRIPPED = ("gsm8k", "apps")
# Characters of each needle the automaton looks for; a hit is then checked for the whole needle
# at that place. 64 keeps the trie small (the bench's 3,644 needles run from 18 characters to
# 4.7 K) and the false hits few: 1,461 anchor occurrences for 303 whole ones in its 75,000 pairs.
ANCHOR = 64


def substring_needles(refs: list[Reference]) -> list[tuple[int, str]]:
    """(index in `refs`, needle) for every text the paper's rule uses, prepared as BigCode's
    benchmark_data.py does: a DS-1000 prompt cut before its solution marker, GSM8K and APPS
    questions stripped (HumanEval docstrings and solutions come stripped from
    repro/data/benchmarks.py), then lower-cased. No whitespace is changed and there is no
    minimum length. A needle left empty is dropped: BigCode would flag every file with it."""
    out = []
    for i, r in enumerate(refs):
        if not r.substring:
            continue
        text = r.text
        if r.bench == "ds1000":
            text = next((text.split(m)[0] for m in DS1000_MARKERS if m in text), text)
        elif r.bench in STRIPPED:
            text = text.strip()
        if text:
            out.append((i, text.lower()))
    return out


def _fold_substring(i: int, found, refs: list[Reference], needle: dict[int, str]) -> list[dict]:
    # One flag per (pair, problem), naming the first kind of text that matched (by name, then order).
    best: dict[tuple[str, str], int] = {}
    for rid in sorted(found, key=lambda rid: (refs[rid].kind, rid)):
        best.setdefault((refs[rid].bench, refs[rid].task_id), rid)
    return [{"id": i, "bench": b, "task_id": t, "method": "substring", "kind": refs[rid].kind,
             "matches": 1, "of": 1, "match": needle[rid]} for (b, t), rid in sorted(best.items())]


def substring_flags(texts: list[str], refs: list[Reference]) -> list[dict]:
    """The paper's rule over `texts` (ids are positions): one flag per (pair, problem), naming
    the text kind. Every needle's first `ANCHOR` characters go into one Aho-Corasick automaton
    (pyahocorasick), which finds all of them in one pass over each lower-cased text; each hit is
    then compared in full at its place. Gives exactly `substring_reference`'s flags (tests and
    bench/decontam.py check it); it does not look for anything the reference would not."""
    try:
        import ahocorasick
    except ImportError:
        raise ReproError("clean.methods substring needs the pyahocorasick package: run make setup "
                         "(or .venv/bin/pip install -c requirements.lock pyahocorasick)") from None
    needles = substring_needles(refs)
    if not needles:
        return []
    by_anchor: dict[str, list[int]] = defaultdict(list)
    for k, (_, s) in enumerate(needles):
        by_anchor[s[:ANCHOR]].append(k)
    auto = ahocorasick.Automaton()
    for anchor, ks in by_anchor.items():
        auto.add_word(anchor, (len(anchor), ks))
    auto.make_automaton()
    needle = dict(needles)
    out = []
    for i, text in enumerate(texts):
        content = text.lower()
        found = set()
        # Every occurrence of every anchor, overlapping ones included; the needle is there iff
        # one of its anchor's occurrences goes on into the whole needle.
        for end, (n, ks) in auto.iter(content):
            for k in ks:
                rid, s = needles[k]
                if rid not in found and (len(s) == n or content.startswith(s, end + 1 - n)):
                    found.add(rid)
        if found:
            out += _fold_substring(i, found, refs, needle)
    return out


def substring_reference(texts: list[str], refs: list[Reference]) -> list[dict]:
    """BigCode's find_substrings (as Magicoder ran it), re-implemented in plain Python: each
    pair's text lower-cased, then `needle in text` for every needle, one by one. BigCode stops
    at a file's first match (the file is dropped either way); this tries every needle, to name
    every problem, which costs the same on a clean pair. Same output as `substring_flags`."""
    needles = substring_needles(refs)
    needle = dict(needles)
    out = []
    for i, text in enumerate(texts):
        content = text.lower()
        found = [rid for rid, s in needles if s in content]
        if found:
            out += _fold_substring(i, found, refs, needle)
    return out


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
