"""MultiPL-E: HumanEval translated to Java, JavaScript, C++, PHP, Swift and Rust, run as MultiPL-E runs it.

Data: the "reworded" files (MultiPL-E's standard variant), `humaneval-<lang>-reworded.jsonl`, from
data/benchmarks/multipl-e/ (else the cache, else MultiPL-E's repository at the commit they come
from; `repro.data.benchmarks.locate`), each checked against its sha256 (data/benchmarks/README.md says
where they come from). These are the files Magicoder's evaluation used (bigcode-evaluation-harness
at the revision it pinned; same problems and counts).
MultiPL-E's licence forbids training on them: evaluation (and decontamination) only.

Protocol (bigcode-evaluation-harness `multiple.py` + MultiPL-E's `eval_<lang>.py`):
- the model continues `prompt.strip()` (a completion prompt, for every model);
- its output is cut at the first of the row's `stop_tokens`;
- the program is the prompt + that output + "\\n" + the row's `tests`; it passes if it compiles and
  exits with status 0 (for PHP, a "PHP Parse error" on stdout is a failure whatever the status).
- Java needs the javatuples jar (every prompt imports org.javatuples) and `-ea` (the tests are
  `assert` statements); the default Rust edition (2015, no Cargo); C++17 with GCC's bits/stdc++.h.

A language whose toolchain is missing is "not run" with the reason, never scored as 0. Problems
HumanEval/32, 38 and 50 (and a few more per language) do not translate and are absent.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from repro import languages, sandbox
from repro.artifacts import ReproError
from repro.data.benchmarks import locate

TIMEOUT_S = 15.0  # MultiPL-E's per-program limit (its containers' --timeout default), compile included
JAVATUPLES = languages.JAVATUPLES


# MultiPL-E's language keys -> our language records (repro/languages.py: title, program file,
# tools, install hint, run command).
LANGS = languages.MULTIPL_E


@dataclass
class Problems:
    lang: str
    path: str
    sha256: str
    rows: dict[str, dict]  # name (HumanEval_<id>_<entry>) -> row


def humaneval_id(name: str) -> int:
    """HumanEval_23_strlen -> 23: problems are chosen by their HumanEval number in every language."""
    return int(name.split("_")[1])


def load(lang: str, fetch: bool = True) -> Problems:
    """One language's problems, checked against the published file's sha256 (`repro.data.benchmarks.locate`);
    `benchmarks.Missing` when the file is nowhere."""
    if lang not in LANGS:
        raise ReproError(f"evaluate.multipl_e_langs: {lang!r} is unknown; choose among {', '.join(LANGS)}")
    found = locate(f"multipl-e/{lang}", fetch=fetch, fetch_setting="evaluate.fetch")
    rows = {}
    for line in found.path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["name"]] = r
    return Problems(lang, str(found.path), found.sha256,
                    dict(sorted(rows.items(), key=lambda kv: humaneval_id(kv[0]))))


def missing_tools(lang: str) -> str:
    """'' if the language can run here, else why not (for the "not run" line)."""
    need = sandbox.missing(LANGS[lang].multipl_e.tools)
    if lang == "java" and not need and not any(os.path.isfile(j) for j in JAVATUPLES):
        need = ["the javatuples jar"]
    if need:
        return f"{', '.join(need)} not installed: {LANGS[lang].multipl_e.install}"
    return ""


def prompt_of(row: dict) -> str:
    return row["prompt"].strip()  # bigcode-evaluation-harness strips it


def cut(row: dict, completion: str) -> str:
    """The completion up to the first stop token (MultiPL-E's stop_at_stop_token)."""
    ends = [i for s in row["stop_tokens"] if (i := completion.find(s)) != -1]
    return completion[:min(ends)] if ends else completion


def program(row: dict, completion: str) -> str:
    return prompt_of(row) + cut(row, completion) + "\n" + row["tests"]


# ---------------------------------------------------------------------------------------------
# Running one program


def run_program(lang: str, code: str, timeout_s: float = TIMEOUT_S) -> dict:
    """{"status": pass|fail|timeout, "reason": ...} for one whole program."""
    argv, limits, show = languages.multipl_e_command(lang)
    r = sandbox.run(argv, files={LANGS[lang].multipl_e.file: code.encode("utf-8")}, timeout_s=timeout_s, show=show, **limits)
    if r.status == "timeout":
        return {"status": "timeout", "reason": f"past the {timeout_s:g} s limit"}
    if lang == "php" and "PHP Parse error" in r.output:
        return {"status": "fail", "reason": "syntax error: " + _first_line(r.output, "Parse error")}
    if r.status == "passed":
        return {"status": "pass", "reason": ""}
    if r.returncode == 3 and lang in ("java", "cpp", "rs", "swift"):
        return {"status": "fail", "reason": "compile error: " + _first_line(r.output, "error")}
    if r.returncode is not None and r.returncode < 0:  # undefined behaviour (a missing return) often ends here
        return {"status": "fail", "reason": f"killed by signal {-r.returncode}: " + _first_line(r.output, "ssert")}
    return {"status": "fail", "reason": f"exit status {r.returncode}: " + _first_line(r.output, "rror")}


def _first_line(output: str, word: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return next((ln for ln in lines if word in ln), lines[0] if lines else "no output")[:200]


def judge(problems: Problems, completions: dict[str, str], workers: int = 0,
          progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Verdicts for {name: completion}, in parallel sandboxed runs: {name: {status, reason, program}}."""
    names = list(completions)
    out: dict[str, dict] = {}

    def one(name):
        code = program(problems.rows[name], completions[name])
        return name, {**run_program(problems.lang, code), "program": code}

    with ThreadPoolExecutor(sandbox.workers(workers)) as pool:
        for done, (name, v) in enumerate(pool.map(one, names), 1):
            out[name] = v
            if progress:
                progress(done, len(names))
    return {n: out[n] for n in names}


def select(problems: Problems, stride: int = 1, limit: int = 0) -> list[str]:
    """Every `stride`-th HumanEval number (the same numbers in every language), at most `limit`."""
    names = [n for n in problems.rows if humaneval_id(n) % stride == 0]
    return names[:limit] if limit else names


