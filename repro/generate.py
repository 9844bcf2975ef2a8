"""Step 2 of OSS-Instruct: a teacher model turns each seed into a problem and a solution.

The teacher is a local GGUF in llama.cpp (chat completion with the chat template stored in the
file). The prompt is our own wording of the paper's (data/prompts/oss_instruct.txt): take
inspiration from the snippet, write a self-contained `[Problem Description]` and a correct
`[Solution]`. Answers that did not finish ("length") or lack either section are dropped, with the
reason recorded.

Resumable: every answer is appended (and fsynced) to `pairs.jsonl` or `rejected.jsonl` as soon as
it exists; a rerun skips seeds already answered. Answers are in the order they finished (the
batched engine decodes several seeds at once, see repro/engine.py).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from repro.artifacts import DATA_DIR, ReproError, append_jsonl, read_jsonl, resume_jsonl
from repro.config import GenerateConfig

# A section starts at the bracketed name anywhere ("[Solution]"), or at a line that holds only
# the name as a heading ("### Problem Description", "**Solution:**"): small teachers often drop
# the brackets.
SECTION_RE = re.compile(
    r"\[\s*(problem\s+description|solution)\s*\]"
    r"|^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*(problem\s+description|solution)[ \t]*:?[ \t]*(?:\*\*)?:?[ \t]*$",
    re.IGNORECASE | re.MULTILINE)


def load_prompt(name: str) -> tuple[str, str]:
    """A prompt template: system text, a line `---`, then the user text with {language}/{snippet}."""
    p = Path(name) if Path(name).is_file() else DATA_DIR / "prompts" / name
    if not p.is_file():
        raise ReproError(f"generate.prompt={name!r}: no such template in data/prompts/ or on disk")
    system, sep, user = p.read_text(encoding="utf-8").partition("\n---\n")
    if not sep or "{snippet}" not in user:
        raise ReproError(f"{p}: a prompt template needs a system part, a line '---', and a user part "
                         "containing {snippet}")
    return system.strip(), user.strip()


def render(user: str, language: str, snippet: str) -> str:
    # Plain replacement, not str.format: snippets are code and full of braces.
    return user.replace("{language}", language).replace("{snippet}", snippet)


def parse(text: str) -> tuple[str, str] | None:
    """Split an answer into (problem, solution); None unless both sections appear, in order."""
    marks = [(m, (m.group(1) or m.group(2)).lower()) for m in SECTION_RE.finditer(text)]
    prob = next((m for m, name in marks if name.startswith("problem")), None)
    sol = next((m for m, name in marks if prob and m.start() > prob.start() and name == "solution"), None)
    if prob is None or sol is None:
        return None
    # Markdown decoration around a heading ("### [Solution]", "**[Solution]**") is not content.
    problem = _strip_heading_noise(text[prob.end():sol.start()])
    solution = _strip_heading_noise(text[sol.end():])
    if not problem or not solution:
        return None
    return problem, solution


def _strip_heading_noise(s: str) -> str:
    s = re.sub(r"^[\s*:#]+", "", s)
    s = re.sub(r"[\s*#]+$", "", s)
    return s.strip()


def item_seed(seed: int, key: str) -> int:
    """A random seed per item, so a sampled answer does not depend on what it was batched with."""
    return (seed * 1_000_003 + int(hashlib.md5(key.encode()).hexdigest()[:8], 16)) % 2**31


def run(cfg: GenerateConfig, seeds_path: Path, pairs_path: Path, rejected_path: Path,
        fp: str, progress=None) -> dict:
    """Answer every seed in `seeds_path` not yet answered; return counts and throughput.

    `fp` identifies the inputs and settings: answers left by an interrupted run are reused only
    when they were made with the same fingerprint.
    """
    import duckdb

    from repro.engine import Request, open_engine
    from repro.models import resolve

    system, user = load_prompt(cfg.prompt)
    seeds = duckdb.sql(f"SELECT seed_id, language, seed, path FROM read_parquet('{seeds_path}')").fetchall()
    resume_jsonl([pairs_path, rejected_path], pairs_path.with_name("generate.resume"), fp)
    done = {r["seed_id"] for r in read_jsonl(pairs_path) + read_jsonl(rejected_path)}
    todo = [s for s in seeds if s[0] not in done]

    stats = {"seeds": len(seeds), "resumed_from": len(done), "generated": 0, "completion_tokens": 0,
             "prompt_tokens": 0, "decode_seconds": 0.0}
    if todo:
        by_id = {s[0]: s for s in todo}
        requests = (Request(seed_id, messages=[{"role": "system", "content": system},
                                               {"role": "user", "content": render(user, language, snippet)}],
                            max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                            seed=item_seed(cfg.seed, seed_id))
                    for seed_id, language, snippet, path in todo)
        with open_engine(cfg.backend, resolve(cfg.teacher), n_ctx=cfg.n_ctx, parallel=cfg.parallel,
                         threads=cfg.threads, seed=cfg.seed) as engine:
            stats.update(threads=engine.threads, backend=cfg.backend, parallel=cfg.parallel)
            task = progress.add_task("generate", total=len(seeds), completed=len(done)) if progress else None
            with open(pairs_path, "a", encoding="utf-8") as ok, open(rejected_path, "a", encoding="utf-8") as bad:
                # Answers arrive as they finish; each is on disk before the next is awaited.
                for c in engine.run(requests):
                    seed_id, language, snippet, path = by_id[c.key]
                    row = {"seed_id": seed_id, "language": language, "path": path, "seed": snippet,
                           "raw": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                           "completion_tokens": c.completion_tokens, "seconds": round(c.seconds, 2)}
                    parsed = parse(c.text)
                    if c.finish_reason == "prompt_too_long":
                        append_jsonl(bad, {**row, "reason": "prompt_too_long"})
                    elif c.finish_reason != "stop":
                        append_jsonl(bad, {**row, "reason": f"finish_reason={c.finish_reason}"})
                    elif parsed is None:
                        append_jsonl(bad, {**row, "reason": "missing [Problem Description] or [Solution]"})
                    else:
                        append_jsonl(ok, {**row, "problem": parsed[0], "solution": parsed[1]})
                    stats["generated"] += 1
                    if progress:
                        tps = engine.stats.tokens_per_second or 0.0
                        progress.update(task, advance=1, description=f"generate ({tps:.1f} tok/s)")
            stats["completion_tokens"] = engine.stats.completion_tokens
            stats["prompt_tokens"] = engine.stats.prompt_tokens
            stats["decode_seconds"] = engine.stats.seconds
    pairs, rejected = read_jsonl(pairs_path), read_jsonl(rejected_path)
    stats["pairs"], stats["rejected"] = len(pairs), len(rejected)
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    stats["rejected_by_reason"] = reasons
    stats["tokens_per_second"] = round(stats["completion_tokens"] / stats["decode_seconds"], 2) \
        if stats["decode_seconds"] else None
    stats["decode_seconds"] = round(stats["decode_seconds"], 1)
    return stats
