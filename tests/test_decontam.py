import duckdb

from repro import decontam
from repro.data.benchmarks import Reference, humaneval, references, resolve

N = 10
TRICKY = ["Héllo wörld_1 İK naïve—x\u00a0y\tz\n日本 ab", "", "   ", "a", "snake_case CamelCase 3.14 x+=1",
          "KELVIN \u212a and İSTANBUL", "tabs\tand\r\nnewlines"]


def _con(texts, refs):
    con = duckdb.connect()
    decontam.prepare_docs(con, texts)
    decontam.build_reference_grams(con, refs, N)
    decontam.match_windows(con, N)
    return con


def test_sql_and_python_cut_the_same_words():
    con = duckdb.connect()
    decontam.prepare_docs(con, TRICKY)
    got = [w for _, w in con.execute(f"SELECT id, {decontam.WORDS_SQL.format(text='text')} FROM docs ORDER BY id").fetchall()]
    assert got == [decontam.words(t) for t in TRICKY]


def test_only_specific_ngrams_count():
    numbers = " ".join(str(i % 10) for i in range(30))
    shared = "compute the running median of a stream of integers using two heaps"
    refs = [Reference("b", "1", "text", numbers + " " + shared + " then report the unique answer for task one please"),
            Reference("b", "2", "text", shared + " and print the result in a format that task two specifies")]
    grams = decontam.reference_grams(refs, N)
    assert all(sum(any(c.isalpha() for c in w) for w in g.split()) >= N // 2 for g in grams[0])  # not mostly numbers
    assert " ".join(shared.split()[:N]) not in grams[0]                                      # not in two problems
    docs = [numbers, shared, "using two heaps then report the unique answer for task one please"]
    want = [{"id": 2, "bench": "b", "task_id": "1", "method": "ngram", "kind": "0", "matches": 3, "of": 14,
             "match": "heaps then report the unique answer for task one please"}]
    assert decontam.ngram_reference(docs, grams, N, 1, 0.0) == want
    assert decontam.ngram_flags(_con(docs, refs), N, 1, 0.0) == want
    assert decontam.ngram_reference(docs, grams, N, 1, 0.25) == []  # 3 of 14 is under 25%


def _planted_docs():
    he = humaneval()
    docs = [t * 3 for t in TRICKY]
    for i, p in enumerate(he[:40]):
        body = p["prompt"] + p["canonical_solution"]
        words = body.split()
        if i % 4 == 0:
            docs.append("Intro text. " + body.upper())                      # whole copy
        elif i % 4 == 1:
            docs.append(" ".join(words[: len(words) // 2]) + " and then")   # half
        elif i % 4 == 2:
            docs.append(" ".join(w for k, w in enumerate(words) if k % 9))  # every 9th word dropped
        else:
            docs.append(" ".join(words[:11]))                               # one 10-gram or two at most
    return docs


def test_duckdb_ngram_path_matches_the_python_reference():
    refs = references(resolve("humaneval", {}))
    docs = _planted_docs()
    con = _con(docs, refs)
    grams = decontam.reference_grams(refs, N)
    assert con.execute("SELECT count(*) FROM ref_gram").fetchone()[0] == len(grams[0])
    for k, cov in ((1, 0.0), (2, 0.2), (5, 0.5)):
        got = decontam.ngram_flags(con, N, k, cov)
        assert got == decontam.ngram_reference(docs, grams, N, k, cov)
    assert len({f["id"] for f in decontam.ngram_flags(con, N, 2, 0.2)}) >= 20  # the whole and half copies


def test_substring_fast_path_equals_bigcode_loop_on_humaneval():
    refs = references(resolve("humaneval", {}))
    docs = _planted_docs()
    got = decontam.substring_flags(docs, refs)
    assert got == decontam.substring_reference(docs, refs)
    he = humaneval()
    whole = {(7 + i, p["task_id"]) for i, p in enumerate(he[:40]) if i % 4 == 0}  # the upper-cased whole copies
    assert whole <= {(f["id"], f["task_id"]) for f in got}
