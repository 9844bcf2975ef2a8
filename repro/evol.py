"""Evol: harder versions of the clean problems, answered by the teacher (beyond the paper).

The paper's best models, MagicoderS, are Magicoder further fine-tuned on evol-codealpaca: problems
made harder by Code Evol-Instruct (WizardCoder, Luo et al., 2023). Here the problems evolved are our
own clean OSS-Instruct problems (a problem needs no solution to be evolved, so the result is the
same for every variant), each with one of Code Evol-Instruct's five heuristics, in our wording:

1. evolve: the teacher rewrites the problem harder in the chosen way (data/prompts/evol_instruct.txt);
2. answer: the teacher solves the new problem (data/prompts/evol_answer.txt);
3. the pairs go to `evol_pairs.jsonl` in generate's format, and the CLI cleans them with the clean
   stage's own code (parse, exact and near duplicates, decontamination) into evol.parquet.

Training then runs a second stage on evol.parquet from the OSS-Instruct adapter (repro/train.py).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from repro.artifacts import sql_str, ReproError, append_jsonl, atomic_path
from repro.config import EvolConfig, GenerateConfig
from repro.generate import ask, fill, item_seed, load_template, request_key

# Code Evol-Instruct's five ways to make a problem harder (Luo et al., 2023), in our words.
HEURISTICS = {
    "constraints": "add one or two new constraints or requirements that the solution must meet.",
    "rarer": "replace a common requirement in the problem with a less common, more specific one.",
    "reasoning": "if the problem can be solved with only a few logical steps, require more reasoning steps.",
    "misleading_code": "include a short piece of erroneous code as a reference, to increase misdirection; "
                       "the solver must notice and avoid its mistake.",
    "complexity": "require a solution with a lower time or space complexity than the obvious one, and say "
                  "which; do not do this often.",
}

# A heading the teacher puts before the new problem ("[Problem]", "**Rewritten problem:**", ...).
LEAD_RE = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?\[?(?:(?:new|rewritten|revised|evolved|harder|more difficult)\s+)?"
                     r"(?:programming\s+)?(?:problem|question|version|task)(?:\s+statement)?\]?:?(?:\*\*)?:?[ \t]*\n",
                     re.IGNORECASE)
# Where a rewrite stops being the problem: a solution, or the small teacher starting over.
END_RE = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?\[?(?:solution|answer|explanation|new problem)\b.*$",
                    re.IGNORECASE | re.MULTILINE)
SAME = 0.9  # a rewrite this similar to the original (difflib's ratio) is not an evolution


def evolved_problem(text: str, original: str, truncated: bool = False) -> tuple[bool, str]:
    """(True, the new problem) or (False, why it is rejected). A rewrite cut at the token limit is
    kept only when it had ended before (the rest is a solution, or the same problem again)."""
    import difflib

    # The prompt asks for a line [New Problem] first; what precedes it is talk, not the problem.
    head = re.search(r"^.*\[New Problem\].*$", text, re.IGNORECASE | re.MULTILINE)
    p = text[head.end():] if head else text
    end = END_RE.search(p)
    if end:
        p = p[:end.start()]
    elif truncated:
        return False, "the rewrite ran to evol.max_tokens"
    p = LEAD_RE.sub("", p.strip(), count=1).strip()
    if not p:
        return False, "empty rewrite"
    ratio = difflib.SequenceMatcher(None, " ".join(p.split()), " ".join(original.split()), autojunk=False).ratio()
    if ratio >= SAME:
        return False, f"the rewrite is the original problem, nearly unchanged (similarity {ratio:.2f})"
    return True, p


def check(cfg: EvolConfig) -> None:
    load_template("evol_instruct.txt", ("method", "problem"), "evol (data/prompts/evol_instruct.txt)")
    load_template("evol_answer.txt", ("problem",), "evol (data/prompts/evol_answer.txt)")


def choose(rows: list[dict], cfg: EvolConfig) -> list[tuple[dict, str]]:
    """The problems to evolve (all, or a fixed random evol.num of them) with each one's heuristic."""
    rng = random.Random(cfg.seed)
    rows = sorted(rows, key=lambda r: r["seed_id"])
    if cfg.num and cfg.num < len(rows):
        rows = sorted(rng.sample(rows, cfg.num), key=lambda r: r["seed_id"])
    names = list(HEURISTICS)
    return [(r, names[random.Random(f"{cfg.seed}/{r['seed_id']}").randrange(len(names))]) for r in rows]


def run(cfg: EvolConfig, gen: GenerateConfig, clean_path: Path, pairs_path: Path, rejected_path: Path,
        store: Path, progress=None) -> dict:
    """Evolve and answer; write `pairs_path` and `rejected_path` (generate's formats) whole."""
    import duckdb

    from repro.engine import Request

    check(cfg)
    t0 = time.perf_counter()
    rel = duckdb.sql(f"SELECT seed_id, language, path, seed, problem FROM read_parquet({sql_str(clean_path)})")
    rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
    if not rows:
        raise ReproError(f"evol: {clean_path} has no pairs to evolve; run the clean stage on more pairs first")
    chosen = choose(rows, cfg)
    e_sys, e_user = load_template("evol_instruct.txt", ("method", "problem"), "evol")
    a_sys, a_user = load_template("evol_answer.txt", ("problem",), "evol")

    def req(item: str, messages: list[dict]) -> Request:
        r = Request("", messages=messages, max_tokens=cfg.max_tokens, temperature=gen.temperature,
                    top_p=gen.top_p, seed=item_seed(cfg.seed, item))
        r.key = request_key(item, gen, r)
        return r

    # 1. Harder problems.
    ereqs = {r["seed_id"]: req(f"evolve/{r['seed_id']}/{h}", fill(e_sys, e_user, method=HEURISTICS[h],
                                                                   problem=r["problem"])) for r, h in chosen}
    evolved, st_evolve = ask(gen, list(ereqs.values()), store, progress, "evol: teacher rewrites problems")
    ok, bad = [], []
    for r, h in chosen:
        a = evolved[ereqs[r["seed_id"]].key]
        base = {"key": f"evol-{r['seed_id']}", "seed_id": f"evol-{r['seed_id']}", "parent": r["seed_id"],
                "language": r["language"], "path": r["path"], "seed": r["seed"], "heuristic": h,
                "parent_problem": r["problem"], "backend": gen.backend}
        if a["finish_reason"] not in ("stop", "length"):
            bad.append({**base, "raw": a["text"], "reason": f"evolve: finish_reason={a['finish_reason']}"})
            continue
        good, p = evolved_problem(a["text"], r["problem"], truncated=a["finish_reason"] == "length")
        if not good:
            bad.append({**base, "raw": a["text"], "reason": f"evolve: {p}"})
            continue
        ok.append({**base, "problem": p})
    # 2. Their answers.
    areqs = {x["seed_id"]: req(f"answer/{x['seed_id']}", fill(a_sys, a_user, problem=x["problem"])) for x in ok}
    answered, st_answer = ask(gen, list(areqs.values()), store, progress, "evol: teacher answers them")
    pairs = []
    for x in ok:
        a = answered[areqs[x["seed_id"]].key]
        if a["finish_reason"] != "stop" or not a["text"].strip():
            bad.append({**x, "raw": a["text"], "reason": f"answer: finish_reason={a['finish_reason']}"
                        if a["finish_reason"] != "stop" else "answer: empty"})
            continue
        # No `raw`: clean checks a raw answer for generate's two headings, which this one lacks.
        pairs.append({**x, "solution": a["text"].strip(), "finish_reason": "stop",
                      "completion_tokens": a["completion_tokens"]})
    for path, data in ((pairs_path, pairs), (rejected_path, bad)):
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in data:
                append_jsonl(f, row)
    tokens = st_evolve["completion_tokens"] + st_answer["completion_tokens"]
    secs = st_evolve["seconds"] + st_answer["seconds"]
    by_h: dict[str, int] = {}
    for x in pairs:
        by_h[x["heuristic"]] = by_h.get(x["heuristic"], 0) + 1
    reasons: dict[str, int] = {}
    for x in bad:
        why = re.sub(r" \(similarity [0-9.]+\)$", "", x["reason"])  # one count for all the unchanged
        reasons[why] = reasons.get(why, 0) + 1
    return {"problems": len(rows), "evolved": len(chosen), "pairs": len(pairs), "rejected": len(bad),
            "rejected_by_reason": reasons, "pairs_by_heuristic": by_h,
            "teacher": {"evolve": st_evolve, "answer": st_answer, "completion_tokens": tokens,
                        "tokens_per_second": round(tokens / secs, 2) if secs else None},
            "wall_seconds": round(time.perf_counter() - t0, 1)}
