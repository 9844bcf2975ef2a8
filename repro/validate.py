"""Validate: keep the pairs whose solution passes tests the teacher wrote (beyond the paper).

Magicoder never runs its generated solutions. SelfCodeAlign (Wei et al., 2024) has the model write
tests for each of its responses, runs them in a sandbox, and keeps only responses that pass; at
equal data size that was worth +3.6 HumanEval+ points. This stage does the same to clean.parquet:

1. For each pair whose solution has code in a language we can run tests for (Python, JavaScript),
   the teacher writes a few assertions against it (data/prompts/validate_tests.txt, greedy).
2. Solution + tests run in the sandbox (repro/sandbox.py); the verdict is passed, failed, timeout,
   or no_tests (no assertion, tests that do not parse; `prepare_tests` says which, and what it
   salvages: copies of the solution dropped, complete statements of an answer cut short).
3. With validate.samples = k > 1 (SelfCodeAlign's scheme), a pair that fails gets k-1 more
   solutions sampled from the teacher (data/prompts/validate_solve.txt) and keeps the first one
   that passes the same tests. (SelfCodeAlign samples tests with each response; here the tests are
   written once, from the problem and the teacher's first solution.)
4. validated.parquet keeps the passing pairs (their solution replaced by the passing candidate),
   and those in a language with no runner unless validate.untested=drop; validation.jsonl has
   every pair's verdict, its tests and the program's last output line.

Several answers per seed (`generate.samples=k > 1`, SelfCodeAlign's scheme): every answer of a
seed is a candidate with its own problem and solution, and the teacher writes tests for each (the
tests are per response, as SelfCodeAlign's). The clean stage keeps one answer per seed
(their seed text is the same) and lists the others in removed.parquet as `duplicate_seed` of it;
those, once valid and not contaminated, are the other candidates. Per seed ONE is kept: the first
in sample order that passed (else, with validate.untested=keep, the first that could not be
tested here). Verdict counts are then per answer. Such a candidate was deduplicated against the
other seeds' pairs only through its own seed (clean compared it no further: a near duplicate of
another seed's pair can be kept).

generate.samples and validate.samples differ: generate.samples=k asks for k whole answers (problem
and solution) per seed, each tested by its own tests; validate.samples=k asks, for an answer that
failed, k-1 more solutions to the same problem, tested by the tests written for the first. Both
may be set: a failed answer of any sample is then re-solved too.

The Python solution runs as a module named `solution`, so its `if __name__ == "__main__":` demo
(which often reads input) does not run; the tests run in its namespace, and test functions or
unittest cases they define are run too. Tests are as good as a 0.5B teacher writes them: a wrong
test removes a right solution. The report gives pass rates per language, and the ablation
(`repro ablate`) says what keeping only passing pairs is worth.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repro import languages, sandbox
from repro.artifacts import sql_str, ReproError, atomic_path, write_text
from repro.clean import code_blocks
from repro.config import GenerateConfig, ValidateConfig
from repro.generate import ask, base_seed_id, fill, item_seed, load_template, request_key

STATUSES = ("passed", "failed", "timeout", "no_tests", "not_run")

# How the tests call the solution, said in the test-writing prompt.
ASSERT_HINT = {"python": "Python `assert` statements at the top level",
               "javascript": "calls of Node's `assert` (assert.strictEqual, assert.deepStrictEqual, ...) at the "
                             "top level; `assert` is already defined"}


# ---------------------------------------------------------------------------------------------
# Programs: solution + tests, per language


PY_MAIN = r'''
import sys, types, unittest
# The solution as a module named "solution": its `if __name__ == "__main__":` demo does not run.
_m = types.ModuleType("solution")
_m.__file__ = "solution.py"
sys.modules["solution"] = _m
exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), _m.__dict__)
globals().update({k: v for k, v in vars(_m).items() if not k.startswith("__")})
del _m
exec(compile(open("tests.py", encoding="utf-8").read(), "tests.py", "exec"), globals())
# Test functions and unittest cases the tests defined but did not call.
for _k, _v in list(globals().items()):
    if _k.startswith("test") and callable(_v) and not isinstance(_v, type) \
            and getattr(_v, "__module__", None) == "__main__" and not getattr(_v, "__code__", None) is None \
            and _v.__code__.co_argcount == 0:
        _v()
_cases = [v for v in list(globals().values()) if isinstance(v, type) and issubclass(v, unittest.TestCase)
          and v is not unittest.TestCase and v.__module__ == "__main__"]
if _cases:
    _suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in _cases)
    if not unittest.TextTestRunner(verbosity=0).run(_suite).wasSuccessful():
        raise SystemExit(1)
'''

# console.assert only prints in Node: here it throws, as a test means it to.
JS_PRELUDE = ("globalThis.assert = require('assert');\n"
              "console.assert = (c, ...m) => { if (!c) throw new Error('Assertion failed' + "
              "(m.length ? ': ' + m.join(' ') : '')); };\n")
ESM_PRELUDE = ("import __assert from 'node:assert';\nglobalThis.assert = __assert;\n"
               "console.assert = (c, ...m) => { if (!c) throw new Error('Assertion failed'); };\n")
JS_DEF_RE = re.compile(r"^\s*(?:export\s+(?:default\s+)?)?(?:async\s+)?(?:function\s*\*?\s*|class\s+|(?:const|let|var)\s+)"
                       r"([A-Za-z_$][\w$]*)", re.MULTILINE)


def _py_names(tree: ast.AST) -> set[str]:
    return {n.name for n in getattr(tree, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _complete_prefix(tests: str) -> str:
    """The longest run of leading lines that parses: an answer cut at the token limit (the small
    teacher often repeats its asserts until then) keeps its complete statements."""
    lines = tests.splitlines()
    for k in range(len(lines), 0, -1):
        try:
            ast.parse("\n".join(lines[:k]))
            return "\n".join(lines[:k])
        except (SyntaxError, ValueError):
            continue
    return ""


def prepare_tests(language: str, code: str, tests: str, truncated: bool = False) -> tuple[str, str]:
    """(the tests to run, '') or ('', why they cannot test `code`: a `no_tests` verdict).

    Python: an answer cut at the token limit keeps its complete leading statements, and top-level
    functions or classes the tests define again under the solution's names (the small teacher
    often copies the solution into its tests) are dropped, so the tests call the solution's own.
    JavaScript: such a copy makes the tests useless, and they are refused."""
    if language == "python":
        if truncated:
            tests = _complete_prefix(tests)
        try:
            t = ast.parse(tests)
        except (SyntaxError, ValueError) as e:
            return "", f"the tests do not parse (line {getattr(e, 'lineno', '?')}: {getattr(e, 'msg', e)})"
        try:
            ours = _py_names(ast.parse(code))
        except (SyntaxError, ValueError):
            ours = set()
        copies = [n for n in t.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.name in ours]
        if copies:
            t.body = [n for n in t.body if n not in copies]
            tests = ast.unparse(t)
        asserts = any(isinstance(n, ast.Assert) or (isinstance(n, ast.Call) and (
            getattr(n.func, "attr", "") or getattr(n.func, "id", "")).startswith("assert")) for n in ast.walk(t))
        if not asserts:
            return "", "the tests hold no assertion" + (" once their copies of the solution are dropped" if copies else "")
        return tests, ""
    if truncated:
        return "", "the test answer was cut at validate.max_tokens"
    if not re.search(r"\bassert\b", tests):
        return "", "the tests hold no assertion"
    same = set(JS_DEF_RE.findall(code)) & set(JS_DEF_RE.findall(tests))
    if same:
        return "", f"the tests define {', '.join(sorted(same))} again instead of testing the solution's"
    return tests, ""


def program(language: str, code: str, tests: str) -> tuple[list[str], dict[str, bytes], dict]:
    """(argv, files, sandbox limits) that run `tests` against `code`."""
    if language == "python":
        import sys
        return ([sys.executable, "-I", "main.py"],
                {"main.py": PY_MAIN.encode(), "solution.py": code.encode("utf-8"), "tests.py": tests.encode("utf-8")},
                {})
    node, show = sandbox.tool("node")
    # A solution written as an ES module exports its functions: here they are plain definitions.
    code = re.sub(r"^(\s*)export\s+(?:default\s+)?(?=(?:async\s+)?(?:function|class|const|let|var)\b)", r"\1",
                  code, flags=re.MULTILINE)
    esm = re.search(r"^\s*import\s.+\sfrom\s|^\s*import\s+['\"]", code + "\n" + tests, re.MULTILINE) is not None
    name = "program.mjs" if esm else "program.js"
    src = (ESM_PRELUDE if esm else JS_PRELUDE) + code + "\n;\n" + tests + "\n"
    return ([node, "--max-old-space-size=512", name], {name: src.encode("utf-8")},
            {"mem_bytes": None, "show": show, "nproc": 256, "nofile": 256})


# language -> the tools its tests need (repro/languages.py; a runner here for each: `program`)
RUNNERS = {n: lang.test_tools for n, lang in languages.LANGUAGES.items() if lang.test_tools is not None}


def runnable() -> dict[str, str]:
    """language -> '' if tests can run here, else why not."""
    out = {}
    for lang, tools in RUNNERS.items():
        missing = sandbox.missing(tools)
        out[lang] = f"{', '.join(missing)} is not installed" if missing else ""
    return out


def execute(language: str, code: str, tests: str, timeout_s: float) -> tuple[str, str]:
    """(passed | failed | timeout, the program's last output line)."""
    argv, files, limits = program(language, code, tests)
    r = sandbox.run(argv, files=files, timeout_s=timeout_s, **{"mem_bytes": 2 << 30, **limits})
    lines = [ln.strip() for ln in r.output.splitlines() if ln.strip()]
    return r.status, (lines[-1][:300] if lines else "")


# ---------------------------------------------------------------------------------------------
# Answers → code


def solution_code(solution: str, language: str) -> tuple[str, str]:
    """(language, code) of the runnable part of a solution: every fenced block in the first
    language we have a test runner for, joined. Without one: (the first block's language, ''),
    or ('', '') when the solution has no code block at all."""
    blocks = code_blocks(solution, language)
    for b in blocks:
        if b["language"] in RUNNERS:
            return b["language"], "\n\n".join(x["code"] for x in blocks if x["language"] == b["language"])
    return (blocks[0]["language"] if blocks else ""), ""


def tests_of(text: str, language: str) -> str:
    """The tests in a teacher answer: its first code block (in `language` or unlabelled), else the
    whole answer when it has no fence at all."""
    blocks = code_blocks(text, language)
    if blocks:
        ours = [b for b in blocks if b["language"] in (language, "")] or blocks
        return ours[0]["code"].strip()
    return text.strip()


# ---------------------------------------------------------------------------------------------
# The stage


def check(cfg: ValidateConfig) -> None:
    if cfg.untested not in ("keep", "drop"):
        raise ReproError(f"validate.untested={cfg.untested!r}: use keep or drop")
    load_template(cfg.prompt, ("problem", "language", "code", "assert_hint"), "validate.prompt")
    if cfg.samples > 1:
        load_template(cfg.solve_prompt, ("problem", "language"), "validate.solve_prompt")


def sample_index(seed_id: str) -> int:
    """j of a stored seed_id `<id>#j` (generate.samples > 1); 0 for a seed's own id."""
    _, sep, j = seed_id.partition("#")
    return int(j) if sep and j.isdigit() else 0


def other_samples(removed_path: Path, rows: list[dict], columns: list[str]) -> dict[str, list[dict]]:
    """seed_id of a clean row -> the other answers of its seed that clean removed only as its
    duplicate_seed (valid, not contaminated), as rows of clean.parquet's columns, in sample order.
    Not the answers of another seed with the same seed text, nor those removed for another reason."""
    import duckdb

    ids = {r["seed_id"] for r in rows}
    rel = duckdb.sql(f"SELECT * FROM read_parquet({sql_str(removed_path)}) WHERE reason = 'duplicate_seed'")
    out: dict[str, list[dict]] = {}
    for values in rel.fetchall():
        r = dict(zip(rel.columns, values))
        of = r.get("duplicate_of")
        if of in ids and base_seed_id(r["seed_id"]) == base_seed_id(of):
            out.setdefault(of, []).append({c: r.get(c) for c in columns})
    for v in out.values():
        v.sort(key=lambda r: sample_index(r["seed_id"]))
    return out


def run(cfg: ValidateConfig, gen: GenerateConfig, clean_path: Path, out_path: Path, log_path: Path,
        store: Path, progress=None, removed_path: Path | None = None) -> dict:
    """Validate every pair of `clean_path`; write `out_path` (the kept pairs) and `log_path`.

    With generate.samples > 1 and `removed_path` (clean's removed.parquet), every answer of a seed
    is a candidate and at most one per seed is kept. It does not ask the teacher for answers
    generate did not make (validate.samples re-solves a failed one's problem, as with one sample)."""
    import duckdb

    check(cfg)
    t0 = time.perf_counter()
    rel = duckdb.sql(f"SELECT * FROM read_parquet({sql_str(clean_path)})")
    columns = rel.columns
    rows = [dict(zip(columns, r)) for r in rel.fetchall()]
    several = gen.samples > 1 and removed_path is not None
    # Candidates, seed by seed (each seed's answers in sample order): clean's rows alone with one sample.
    groups = [[r] for r in rows]
    if several:
        others = other_samples(removed_path, rows, columns)
        groups = [sorted([r, *others.get(r["seed_id"], [])], key=lambda x: sample_index(x["seed_id"])) for r in rows]
    cands = [c for g in groups for c in g]
    row_of = {r["seed_id"]: r for r in cands}  # seed ids are unique in clean.parquet, and `<id>#j` per sample
    can_run = runnable()
    system, user = load_template(cfg.prompt, ("problem", "language", "code", "assert_hint"), "validate.prompt")
    items = []
    for r in cands:
        lang, code = solution_code(r["solution"] or "", r["language"])
        it = {"seed_id": r["seed_id"], "language": r["language"], "test_language": lang or "none",
              "code": code, "status": "", "detail": "", "tests": "", "candidate": 0}
        if not code:
            it.update(status="not_run", detail=f"no test runner for {lang} code" if lang else
                      "the solution has no code block")
        elif can_run[lang]:
            it.update(status="not_run", detail=f"{lang}: {can_run[lang]}")
        items.append(it)
    todo = [it for it in items if not it["status"]]

    # 1. Tests, written greedily by the teacher.
    from repro.engine import Request

    reqs = {}
    for it in todo:
        m = fill(system, user, problem=row_of[it["seed_id"]]["problem"], language=it["test_language"], code=it["code"],
                 assert_hint=ASSERT_HINT[it["test_language"]])
        r = Request("", messages=m, max_tokens=cfg.max_tokens, temperature=0.0,
                    seed=item_seed(gen.seed, f"tests/{it['seed_id']}"))
        r.key = request_key(f"tests/{it['seed_id']}", gen, r)
        reqs[it["seed_id"]] = r
    answers, st_tests = ask(gen, list(reqs.values()), store, progress, "validate: teacher writes tests")
    for it in todo:
        a = answers[reqs[it["seed_id"]].key]
        it["test_tokens"] = a["completion_tokens"]
        if a["finish_reason"] not in ("stop", "length"):
            it.update(status="no_tests", detail=f"the test answer ended with finish_reason={a['finish_reason']}")
            continue
        it["tests"], why = prepare_tests(it["test_language"], it["code"], tests_of(a["text"], it["test_language"]),
                                         truncated=a["finish_reason"] == "length")
        if why:
            it.update(status="no_tests", detail=why)

    # 2. Run solution + tests.
    t_exec = time.perf_counter()
    workers = cfg.workers or os.cpu_count() or 1
    runs = 0

    def judge(pairs):
        nonlocal runs
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(lambda p: execute(p[0]["test_language"], p[1], p[0]["tests"], cfg.timeout_s), pairs))
        runs += len(pairs)
        return out

    ready = [it for it in todo if not it["status"]]
    task = progress.add_task("validate: run solutions + tests", total=len(ready)) if progress else None
    for it, (status, detail) in zip(ready, judge([(it, it["code"]) for it in ready])):
        it.update(status=status, detail=detail)
    if progress:
        progress.update(task, completed=len(ready))

    # 3. SelfCodeAlign: more candidates for a pair that failed, the first passing one kept.
    st_solve = None
    if cfg.samples > 1:
        retry = [it for it in ready if it["status"] in ("failed", "timeout")]
        s_sys, s_user = load_template(cfg.solve_prompt, ("problem", "language"), "validate.solve_prompt")
        sreqs = {}
        for it in retry:
            for k in range(1, cfg.samples):
                m = fill(s_sys, s_user, problem=row_of[it["seed_id"]]["problem"], language=it["test_language"])
                r = Request("", messages=m, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                            seed=item_seed(gen.seed, f"solve/{it['seed_id']}/{k}"))
                r.key = request_key(f"solve/{it['seed_id']}/{k}", gen, r)
                sreqs[it["seed_id"], k] = r
        sanswers, st_solve = ask(gen, list(sreqs.values()), store, progress, "validate: teacher samples solutions")
        for k in range(1, cfg.samples):
            cands = []
            for it in retry:
                if it["status"] == "passed":
                    continue
                a = sanswers[sreqs[it["seed_id"], k].key]
                lang, code = solution_code(a["text"], it["test_language"])
                if a["finish_reason"] == "stop" and code and lang == it["test_language"]:
                    cands.append((it, code, a["text"]))
            for (it, code, text), (status, detail) in zip(cands, judge([(c[0], c[1]) for c in cands])):
                if status == "passed":
                    it.update(status="passed", detail=detail, candidate=k, solution=text.strip())

    # 4. The kept pairs (with several answers per seed: the first that passed, else the first
    # untested one kept), and every verdict.
    keep_status = {"passed"} | ({"not_run"} if cfg.untested == "keep" else set())
    by_id = {it["seed_id"]: it for it in items}
    kept = []
    for group in groups:
        chosen = next((r for r in group if by_id[r["seed_id"]]["status"] == "passed"), None) or \
            next((r for r in group if by_id[r["seed_id"]]["status"] in keep_status), None)
        if several:
            for r in group:
                by_id[r["seed_id"]].update(sample=sample_index(r["seed_id"]), kept=r is chosen)
        if chosen is not None:
            kept.append({**chosen, "solution": by_id[chosen["seed_id"]].get("solution", chosen["solution"])})
    write_rows(kept, columns, out_path, clean_path)
    write_text(log_path, "".join(json.dumps({k: v for k, v in it.items() if k not in ("code", "solution")}
                                            | {"replaced_solution": "solution" in it}, ensure_ascii=False) + "\n"
                                 for it in items))
    stats = summarize(items, kept, rows, cfg, st_tests, st_solve, runs, time.perf_counter() - t_exec,
                      time.perf_counter() - t0, can_run)
    if several:  # the verdict counts are per answer; pairs_in and kept per seed
        stats.update(generate_samples=gen.samples, answers=len(items),
                     seeds_with_a_pass=sum(any(by_id[r["seed_id"]]["status"] == "passed" for r in g) for g in groups))
    return stats


def write_rows(kept: list[dict], columns: list[str], out_path: Path, like: Path) -> None:
    """`kept` as parquet with clean.parquet's own schema (an empty result too)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(like)
    table = pa.Table.from_pylist([{c: r[c] for c in columns} for r in kept], schema=schema)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)


def summarize(items, kept, rows, cfg, st_tests, st_solve, runs, exec_s, wall_s, can_run) -> dict:
    per_lang: dict[str, dict] = {}
    for it in items:
        d = per_lang.setdefault(it["test_language"], {s: 0 for s in STATUSES})
        d[it["status"]] += 1
    for d in per_lang.values():
        tested = d["passed"] + d["failed"] + d["timeout"] + d["no_tests"]
        d["pass_rate"] = round(d["passed"] / tested, 4) if tested else None
    counts = {s: sum(it["status"] == s for it in items) for s in STATUSES}
    tested = len(items) - counts["not_run"]
    teacher_s = st_tests["seconds"] + (st_solve["seconds"] if st_solve else 0.0)
    tokens = st_tests["completion_tokens"] + (st_solve["completion_tokens"] if st_solve else 0)
    return {"pairs_in": len(rows), "kept": len(kept), "removed": len(rows) - len(kept), **counts,
            "pass_rate": round(counts["passed"] / tested, 4) if tested else None,
            "rescued_by_sampling": sum(it["candidate"] > 0 for it in items), "samples": cfg.samples,
            "per_language": per_lang, "runners": {k: v or "available" for k, v in can_run.items()},
            "teacher": {"tests": st_tests, "solutions": st_solve, "completion_tokens": tokens,
                        "tokens_per_second": round(tokens / teacher_s, 2) if teacher_s else None},
            "programs_run": runs, "exec_seconds": round(exec_s, 1),
            "programs_per_second": round(runs / exec_s, 2) if exec_s and runs else None,
            "pairs_per_minute": round(60 * len(rows) / wall_s, 1) if wall_s else None,
            "wall_seconds": round(wall_s, 1),
            "notes": [f"{per_lang[lang]['not_run']} pairs in {lang}: {why}, not tested"
                      for lang, why in can_run.items() if why and lang in per_lang]}
