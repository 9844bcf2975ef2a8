"""The generate stage (OSS-Instruct's core): a teacher model turns each seed into a problem and a solution.

The teacher is a local GGUF in llama.cpp (chat completion with the chat template stored in the
file), or any OpenAI-compatible server (`generate.backend=openai`, see repro/engine/). The
prompt is our own wording of the paper's (data/prompts/oss_instruct.txt): take inspiration from
the snippet, write a self-contained `[Problem Description]` and a correct `[Solution]`. With
`generate.structured=json` the answer is instead a JSON object {problem, solution}, forced by a
grammar. Answers that did not finish ("length"), are empty, or lack either part are rejected,
with the reason recorded.

Sampling as the paper: greedy, up to min(2500, n_ctx - prompt) new tokens, a random seed per
item. A seed whose prompt would not leave the answer its room is cut at its tail, by tokens (the
template is kept whole), and the record says so (`seed_truncated`).

Several samples per seed (`generate.samples=k`, SelfCodeAlign's 10 at temperature 0.7): sample 0 is
stored exactly as a one-sample run stores it; sample j > 0 has seed_id `<id>#j`, a field `sample`,
its own key and the random seed generate.seed + j, and is asked right after sample j - 1 of the
same seed. The store does not choose between them: the clean stage keeps one per seed (the same
seed text), and validate (repro/validate.py) picks one that passes its tests.

Shards (`generate.shard=I/N`, `repro generate --shard I/N`): only the seeds whose id hashes to
shard I (`shard_of`, stable across machines) are answered, into `pairs.shard-I-of-N.jsonl` and
`rejected.shard-I-of-N.jsonl`; `merge` joins N finished shards into `pairs.jsonl` and
`rejected.jsonl` in the order an unsharded run asks (seed by seed, sample by sample), so that with
one request at a time and deterministic answers the files are byte for byte the unsharded run's.

Self-Instruct (`--variant self-instruct`, i.e. `generate.tasks=self_instruct_tasks.txt` and
`generate.prompt=self_instruct.txt`): the paper's baseline from the same teacher, with the same
decoding and budget. No seed code is sent: each seed row (its id and language only, so that both
variants ask as many questions in the same languages) gets `generate.tasks_per_request` task
descriptions sampled from a fixed pool with that item's own random seed, and the teacher invents a
new task and solves it, in the same two-part format. The stored `seed` is the task list as sent,
`path` the pool's file name. As Self-Instruct, an answer whose task is a pool task again is
rejected ("copies a pool task"): the ROUGE-L F-measure (word LCS) of the problem's first sentence
and a pool task is at least 0.7 (small teachers often restate the first example). It does not grow
the pool from the teacher's own tasks, nor compare new tasks with each other here (the clean
stage's deduplication does, as for OSS-Instruct).

The store is `pairs.jsonl` (kept) and `rejected.jsonl`, append-only: each answer is appended and
fsynced as soon as it exists, keyed by (seed id, prompt hash, model fingerprint, params hash). A
rerun keeps the rows whose key it would ask for again and asks only for the missing ones; rows of
other settings, duplicates and a torn last line (kill -9 mid-append) are dropped first. Requests
that failed (a server that went away) are not stored: they are listed in `errors.jsonl`, the stage
fails with one line, and the next run asks again. Answers are in the order they finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from repro.artifacts import sql_str, DATA_DIR, ReproError, append_jsonl, atomic_path, read_jsonl
from repro.config import GenerateConfig

PAPER_MAX_TOKENS = 2500
# The server may render the chat template a little differently from our copy of it: leave it room.
SERVER_MARGIN = 16

# A section starts at the bracketed name anywhere ("[Solution]"), or at a line that holds only
# the name as a heading ("### Problem Description", "**Solution:**"): small teachers often drop
# the brackets.
SECTION_RE = re.compile(
    r"\[\s*(problem\s+description|solution)\s*\]"
    r"|^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*(problem\s+description|solution)[ \t]*:?[ \t]*(?:\*\*)?:?[ \t]*$",
    re.IGNORECASE | re.MULTILINE)

ANSWER_SCHEMA = {"type": "object",
                 "properties": {"problem": {"type": "string"}, "solution": {"type": "string"}},
                 "required": ["problem", "solution"], "additionalProperties": False}
JSON_INSTRUCTION = ("\n\nGive your answer as one JSON object with two string fields: \"problem\" (the "
                    "[Problem Description]) and \"solution\" (the [Solution], its code in a fenced code block).")


def load_prompt(name: str, tasks: str = "") -> tuple[str, str]:
    """A prompt template: system text, a line `---`, then the user text with {language}/{snippet};
    with a task pool (generate.tasks) {tasks} instead of {snippet}, which fills the same slot."""
    if not tasks:
        return load_template(name, ("snippet",), "generate.prompt")
    system, user = load_template(name, ("tasks",), "generate.prompt (with generate.tasks)")
    return system, user.replace("{tasks}", "{snippet}")


def load_tasks(name: str, k: int) -> list[str]:
    """The task pool: one description a line, blank lines and `#` comments left out. Raises
    ReproError when it is missing or holds fewer than `k` tasks. Does not check their wording."""
    p = Path(name) if Path(name).is_file() else DATA_DIR / "prompts" / name
    if not p.is_file():
        raise ReproError(f"generate.tasks={name!r}: no such task pool in data/prompts/ or on disk")
    pool = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip() and not x.lstrip().startswith("#")]
    if k < 1 or len(pool) < k:
        raise ReproError(f"generate.tasks_per_request={k}: must be 1 to the pool's {len(pool)} tasks ({p})")
    return pool


def pick_tasks(pool: list[str], k: int, seed: int, seed_id: str) -> list[str]:
    """The k pool tasks shown for one item: a fixed sample per (generate.seed, seed id), whatever
    the other items, the shard or the batch; in the sampled order, without repeats."""
    import random

    return random.Random(item_seed(seed, seed_id)).sample(pool, k)


def task_list(tasks: list[str]) -> str:
    # A plain list, not "Task 1: ... Task 3:": the 0.5B teacher continued a numbering with
    # "**Task 4: ...**" as its problem's first words (the tiny run, 8 of 13 kept problems).
    return "\n".join(f"- {t}" for t in tasks)


COPY_ROUGE_L = 0.7  # Self-Instruct's threshold: a new task this close to a pool task is not new
_WORD = re.compile(r"[a-z0-9]+")
_FIRST_SENTENCE = re.compile(r"(.+?[.!?])(?:\s|$)", re.S)


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F-measure of two word lists (their longest common subsequence); 0 if either is empty."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


def copied_task(problem: str, pool: list[str]) -> tuple[str, float] | None:
    """(the pool task, its ROUGE-L) when the problem's first sentence restates one (>= COPY_ROUGE_L),
    else None. Only the first sentence: the teacher's own details after it do not hide a copy."""
    m = _FIRST_SENTENCE.match(problem.strip())
    first = _WORD.findall((m.group(1) if m else problem).lower())
    best = max(((t, rouge_l(first, _WORD.findall(t.lower()))) for t in pool), key=lambda x: x[1])
    return best if best[1] >= COPY_ROUGE_L else None


def task_items(cfg: GenerateConfig, seeds: list[tuple]) -> list[tuple]:
    """Seed rows as Self-Instruct items: (seed_id, language, the task list as sent, the pool's
    name); the seed's code and path are not used."""
    pool = load_tasks(cfg.tasks, cfg.tasks_per_request)
    name = Path(cfg.tasks).name
    return [(sid, lang, task_list(pick_tasks(pool, cfg.tasks_per_request, cfg.seed, sid)), name)
            for sid, lang, _code, _path in seeds]


def render(user: str, language: str, snippet: str) -> str:
    # Plain replacement, not str.format: snippets are code and full of braces.
    return user.replace("{language}", language).replace("{snippet}", snippet)


def messages_for(system: str, user: str, language: str, snippet: str, structured: str = "") -> list[dict]:
    text = render(user, language, snippet) + (JSON_INSTRUCTION if structured == "json" else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def parse(text: str) -> tuple[str, str] | None:
    """Split an answer into (problem, solution); None unless both sections appear, in order."""
    marks = [(m, (m.group(1) or m.group(2)).lower()) for m in SECTION_RE.finditer(text)]
    prob = next((m for m, name in marks if name.startswith("problem")), None)
    sol = next((m for m, name in marks if prob and m.start() > prob.start() and name == "solution"), None)
    if prob is None or sol is None:
        return None
    problem = section_text(text[prob.end():sol.start()])
    solution = section_text(text[sol.end():])
    if not problem or not solution:
        return None
    return problem, solution


def parse_json(text: str) -> tuple[str, str] | None:
    """A structured answer: one JSON object with non-empty string fields problem and solution."""
    try:
        # strict=False: a server whose grammar lets raw newlines into strings (llama-cpp-python's
        # stock server) still gives a usable answer; our own grammar allows escapes only.
        obj = json.loads(text, strict=False)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    problem, solution = obj.get("problem"), obj.get("solution")
    if not (isinstance(problem, str) and isinstance(solution, str) and problem.strip() and solution.strip()):
        return None
    return problem.strip(), solution.strip()


def judge(text: str, finish_reason: str, structured: str) -> tuple[str, str] | str:
    """(problem, solution), or the reason the answer is rejected."""
    if finish_reason != "stop":
        return f"finish_reason={finish_reason}"
    if not text.strip():
        return "empty answer"
    if structured == "json":
        return parse_json(text) or "not a JSON object with a non-empty problem and solution"
    return parse(text) or "missing [Problem Description] or [Solution]"


# Markdown decoration around a heading ("### [Solution]", "**[Solution]**:", a "---" rule before
# it) is not content; everything else is, byte for byte: a problem that starts "**Task**:" keeps
# its "**". After the heading: the closing marks and colon on its own line, then blank lines.
_AFTER_HEADING = re.compile(r"\A(?:\*\*|__)?[ \t]*:?[ \t]*(?:\*\*|__)?[ \t]*(?:\n[ \t]*)*")
# Before the next heading: the part of its line in front of it ("### ", "**"), and rules and blank
# lines above it. At the end of the answer: only trailing rules and whitespace.
_BEFORE_HEADING = re.compile(r"(?:(?:\A|\n)[ \t>]*(?:#{1,6}|\*\*|__|-{3,}|\*{3,}|_{3,})?[ \t]*)+\Z")


def section_text(s: str) -> str:
    """The text of one section, between its heading and the next (or the end)."""
    s = _AFTER_HEADING.sub("", s, count=1)
    return _BEFORE_HEADING.sub("", s, count=1).strip()


def item_seed(seed: int, key: str) -> int:
    """A random seed per item, so a sampled answer does not depend on what it was batched with."""
    return (seed * 1_000_003 + int(hashlib.md5(key.encode()).hexdigest()[:8], 16)) % 2**31


def sample_id(seed_id: str, j: int) -> str:
    """The stored seed_id of sample j of a seed: the seed's own for j = 0, else `<id>#j`."""
    return seed_id if j == 0 else f"{seed_id}#{j}"


def base_seed_id(seed_id: str) -> str:
    """The seed a stored seed_id (`<id>` or `<id>#j`) belongs to."""
    return seed_id.split("#", 1)[0]


def parse_shard(spec: str) -> tuple[int, int]:
    """(I, N) of `generate.shard=I/N`, 1 <= I <= N; raises ReproError otherwise."""
    i, sep, n = spec.partition("/")
    if sep and i.strip().isdigit() and n.strip().isdigit() and 1 <= int(i) <= int(n):
        return int(i), int(n)
    raise ReproError(f"generate.shard={spec!r}: give I/N with 1 <= I <= N (e.g. --shard 1/4 on the first of "
                     "4 machines), or leave it empty for every seed")


def shard_tag(spec: str) -> str:
    """`shard-I-of-N`: the part of a shard's file and manifest names after `pairs.` / `generate.`."""
    i, n = parse_shard(spec)
    return f"shard-{i}-of-{n}"


def shard_of(seed_id: str, n: int) -> int:
    """Which of n shards (1..n) a seed belongs to: a stable hash of its id, the same on every
    machine and Python (not `hash()`), so N shards are disjoint and cover every seed."""
    return int(hashlib.sha256(base_seed_id(seed_id).encode()).hexdigest()[:16], 16) % n + 1


# ---------------------------------------------------------------------------------------------
# Settings → teacher


def check(cfg: GenerateConfig) -> None:
    """Every generate setting, the model file and the server, before anything is written."""
    from repro.engine import BACKENDS, check_settings, probe

    check_settings("generate", cfg.backend, cfg.parallel, cfg.n_ctx, BACKENDS)
    if cfg.structured not in ("", "json"):
        raise ReproError(f"generate.structured={cfg.structured!r}: use json, or leave it empty for free text")
    if cfg.samples > 1 and cfg.temperature == 0:
        raise ReproError(f"generate.samples={cfg.samples} with generate.temperature=0 (greedy) would give "
                         f"{cfg.samples} identical answers per seed; set generate.temperature (SelfCodeAlign: 0.7) "
                         "or generate.samples=1")
    if cfg.shard:
        parse_shard(cfg.shard)
    if not 0 <= cfg.max_tokens < cfg.n_ctx:
        raise ReproError(f"generate.max_tokens={cfg.max_tokens}: must leave room for the prompt in "
                         f"generate.n_ctx={cfg.n_ctx}; 0 = the paper's min(2500, n_ctx - prompt)")
    load_prompt(cfg.prompt, cfg.tasks)
    if cfg.tasks:
        load_tasks(cfg.tasks, cfg.tasks_per_request)
    srv = server(cfg)  # parses generate.extra_body
    if cfg.backend == "openai":
        if not cfg.base_url:
            raise ReproError("generate.base_url is empty: backend=openai needs the server's URL, "
                             "e.g. http://127.0.0.1:8000/v1")
        probe(srv)
    teacher_path(cfg)


def teacher_path(cfg: GenerateConfig) -> Path | None:
    from repro.models import check_gguf
    from repro.models import resolve

    if not cfg.teacher:
        if cfg.backend == "openai":
            return None  # no local tokenizer: no seed truncation, the server picks the answer budget
        raise ReproError(f"generate.teacher is empty; backend={cfg.backend} needs a GGUF model")
    path = resolve(cfg.teacher)
    check_gguf(path, "generate.teacher")
    return path


def server(cfg: GenerateConfig):
    """The openai backend's endpoints: `generate.base_url` is one URL or several, comma-separated
    (`generate.parallel` requests in flight on each). Does not contact them (`probe` does)."""
    from repro.engine import Server

    urls = [u.strip() for u in cfg.base_url.split(",") if u.strip()]
    twice = next((u for u in urls if urls.count(u) > 1), None)
    if twice:
        raise ReproError(f"generate.base_url lists {twice} twice; list each server once "
                         "(generate.parallel is the number of requests in flight on each)")
    try:
        extra = json.loads(cfg.extra_body) if cfg.extra_body else {}
    except json.JSONDecodeError:
        extra = None
    if not isinstance(extra, dict):
        raise ReproError(f"generate.extra_body={cfg.extra_body!r}: must be a JSON object, "
                         "e.g. {\"repeat_penalty\": 1.0}")
    return Server(",".join(urls), model=cfg.model_name, api_key=os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "",
                  timeout_s=cfg.timeout_s, retries=cfg.retries, extra_body=extra)


def open_teacher(cfg: GenerateConfig):
    from repro.engine import open_engine

    return open_engine(cfg.backend, teacher_path(cfg), n_ctx=cfg.n_ctx, parallel=cfg.parallel,
                       threads=cfg.threads, seed=cfg.seed, n_gpu_layers=cfg.n_gpu_layers,
                       flash_attn=cfg.flash_attn, section="generate",
                       server=server(cfg) if cfg.backend == "openai" else None)


def model_fingerprint(cfg: GenerateConfig, engine) -> str:
    """What answers: the GGUF's sha256 (embedded models) or path/size/mtime, or the served model's id."""
    from repro.models import model_id

    if cfg.backend == "openai":
        return f"openai:{engine.model_name}"
    return model_id(cfg.teacher)


def params_hash(cfg: GenerateConfig) -> str:
    """The settings that shape an answer, beyond the prompt and the model (not speed settings)."""
    p = {k: getattr(cfg, k) for k in ("max_tokens", "temperature", "top_p", "n_ctx", "seed", "structured")}
    if cfg.fill_loops:  # only when on: answers made before the setting existed keep their hash
        p["fill_loops"] = cfg.fill_loops
    return hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Fitting a prompt into the context


@dataclass
class Fitted:
    messages: list[dict]
    seed: str                  # the snippet as sent: the seed, or its head
    prompt_tokens: int | None  # None: no tokenizer at hand (openai without generate.teacher)
    seed_tokens: int | None = None       # set when the seed was cut
    seed_tokens_kept: int | None = None


def prompt_limit(cfg: GenerateConfig) -> int:
    """The most prompt tokens that still leave the answer its room."""
    return cfg.n_ctx - (cfg.max_tokens or cfg.n_ctx // 2)


def fit(tok, cfg: GenerateConfig, system: str, user: str, language: str, snippet: str) -> Fitted | None:
    """The prompt for a seed, its seed cut at the tail (by tokens) if it would not fit; None if even
    an empty seed would not (the template alone is too long for generate.n_ctx)."""
    from repro.engine import Request

    def build(s: str) -> Fitted:
        m = messages_for(system, user, language, s, cfg.structured)
        return Fitted(m, s, len(tok.prompt(Request("", messages=m))[0]) if tok else None)

    f = build(snippet)
    limit = prompt_limit(cfg)
    if tok is None or f.prompt_tokens <= limit:
        return f
    toks = tok.tokenize(snippet)
    keep = len(toks) - (f.prompt_tokens - limit)
    while keep > 0:
        # Tokens at the cut may merge differently once detokenized: recount, and cut more if needed.
        f = build(tok.detokenize(toks[:keep]))
        if f.prompt_tokens <= limit:
            f.seed_tokens, f.seed_tokens_kept = len(toks), keep
            return f
        keep -= f.prompt_tokens - limit
    return None


def max_new_tokens(cfg: GenerateConfig, prompt_tokens: int | None) -> int:
    """The paper's min(2500, context - prompt) unless generate.max_tokens says otherwise; 0 = let the
    server decide (no tokenizer to count the prompt with)."""
    if cfg.max_tokens:
        return cfg.max_tokens
    if prompt_tokens is None:
        return 0
    margin = SERVER_MARGIN if cfg.backend == "openai" else 0
    return max(1, min(PAPER_MAX_TOKENS, cfg.n_ctx - prompt_tokens - margin))


# ---------------------------------------------------------------------------------------------
# The store


def open_store(paths: list[Path], keys: set[str]) -> set[str]:
    """The keys already answered; each file is first rewritten without rows of other keys,
    repeated keys, undecodable lines, or a torn last line, so appends start clean."""
    done: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline; else a torn write
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict) and row.get("key") in keys and row["key"] not in done:
                done.add(row["key"])
                keep.append(line)
        if tail or len(keep) != len(lines):
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"".join(x + b"\n" for x in keep))
    return done


# ---------------------------------------------------------------------------------------------
# The stage


def read_seeds(seeds_path: Path) -> list[tuple]:
    """(seed_id, language, seed, path) of every seed, in the file's order: the order of requests."""
    import duckdb

    return duckdb.sql(f"SELECT seed_id, language, seed, path FROM read_parquet({sql_str(seeds_path)})").fetchall()


def store_items(cfg: GenerateConfig, seeds: list[tuple], model: str, system: str, user: str) -> dict[str, dict]:
    """key -> the stored fields of each answer asked for, in the order of requests: seed by seed,
    its samples 0..k-1 in a row; only shard I's seeds with generate.shard=I/N. With a task pool
    (generate.tasks) each item's "snippet" is its task list (`task_items`)."""
    params = params_hash(cfg)
    if cfg.tasks:
        seeds = task_items(cfg, seeds)
    shard = parse_shard(cfg.shard) if cfg.shard else None
    items = {}
    for seed_id, language, snippet, path in seeds:
        if shard and shard_of(seed_id, shard[1]) != shard[0]:
            continue
        ph = _sha(messages_for(system, user, language, snippet, cfg.structured))[:16]
        for j in range(cfg.samples):
            # Sample 0's key and fields are a one-sample run's, so that k = 1 stays what it was.
            key = f"{sample_id(seed_id, j)}/{_sha([seed_id, ph, model, params] + ([j] if j else []))[:12]}"
            items[key] = {"key": key, "seed_id": sample_id(seed_id, j), "language": language, "path": path,
                          "prompt_hash": ph, "model": model, "params_hash": params, "snippet": snippet,
                          **({"sample": j} if j else {})}
    return items


def store_paths(pairs_path: Path, rejected_path: Path, shard: str) -> tuple[Path, Path]:
    """The store a run appends to: pairs.jsonl and rejected.jsonl, or a shard's own."""
    if not shard:
        return pairs_path, rejected_path
    tag = shard_tag(shard)
    return (pairs_path.with_name(f"{pairs_path.stem}.{tag}.jsonl"),
            rejected_path.with_name(f"{rejected_path.stem}.{tag}.jsonl"))


def run(cfg: GenerateConfig, seeds_path: Path, pairs_path: Path, rejected_path: Path, progress=None) -> dict:
    """Answer every seed in `seeds_path` whose key is not in the store yet; return counts and speed.

    With generate.shard=I/N, only shard I's seeds, into that shard's store (`store_paths`): it does
    not touch `pairs_path` or `rejected_path` then. Raises ReproError (after storing every answer
    that came) when some requests failed.
    """
    from repro.engine import Request

    t_start = time.perf_counter()
    system, user = load_prompt(cfg.prompt, cfg.tasks)
    seeds = read_seeds(seeds_path)
    pairs_path, rejected_path = store_paths(pairs_path, rejected_path, cfg.shard)
    # The teacher first: a bad model or an unreachable server fails before the store is touched.
    with open_teacher(cfg) as engine:
        model = model_fingerprint(cfg, engine)
        items = store_items(cfg, seeds, model, system, user)
        done = open_store([pairs_path, rejected_path], set(items))
        pairs_path.with_name("generate.resume").unlink(missing_ok=True)  # the store's earlier scheme
        errors_path = pairs_path.with_name(f"errors.{shard_tag(cfg.shard)}.jsonl" if cfg.shard else "errors.jsonl")
        errors_path.unlink(missing_ok=True)
        todo = [k for k in items if k not in done]
        pool = load_tasks(cfg.tasks, cfg.tasks_per_request) if cfg.tasks else None
        n = {"kept": 0, "rejected": 0, "failed": 0, "truncated": 0}
        first_error = ""
        task = progress.add_task("generate", total=len(items), completed=len(done)) if progress else None
        with open(pairs_path, "a", encoding="utf-8") as ok, open(rejected_path, "a", encoding="utf-8") as bad, \
                open(errors_path, "a", encoding="utf-8") as err:

            def requests():
                # Lazily: each prompt is fitted when the engine has room for it, and one that cannot
                # fit at all is rejected here, in the same thread that writes the others.
                for key in todo:
                    it = items[key]
                    f = fit(engine.tokenizer, cfg, system, user, it["language"], it["snippet"])
                    if f is None:
                        store(bad, it, {"reason": "prompt_too_long: the template alone does not fit "
                                                  f"generate.n_ctx={cfg.n_ctx}", "finish_reason": "prompt_too_long"})
                        continue
                    it.update(seed=f.seed, seed_truncated=f.seed_tokens is not None,
                              max_tokens=max_new_tokens(cfg, f.prompt_tokens))
                    if f.seed_tokens is not None:
                        it.update(seed_tokens=f.seed_tokens, seed_tokens_kept=f.seed_tokens_kept)
                        n["truncated"] += 1
                    yield Request(key, messages=f.messages, max_tokens=it["max_tokens"],
                                  temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=item_seed(cfg.seed + it.get("sample", 0), base_seed_id(it["seed_id"])),
                                  json_schema=ANSWER_SCHEMA if cfg.structured == "json" else None,
                                  fill_loops=cfg.fill_loops)

            def store(f, it, extra):
                row = {k: v for k, v in it.items() if k != "snippet"}
                row.setdefault("seed", it["snippet"])
                append_jsonl(f, {**row, "backend": cfg.backend, **extra})
                n["kept" if f is ok else "rejected"] += 1
                show(advance=1)

            def show(advance):
                if progress:
                    tps = engine.stats.tokens_per_second or 0.0
                    failed = f", {n['failed']} failed" if n["failed"] else ""
                    progress.update(task, advance=advance, description=f"generate: {n['kept']} kept, "
                                                                       f"{n['rejected']} rejected{failed} · {tps:.1f} tok/s")

            for c in engine.run(requests()):
                it = items[c.key]
                if c.finish_reason == "error":
                    n["failed"] += 1
                    first_error = first_error or c.error
                    append_jsonl(err, {"key": c.key, "seed_id": it["seed_id"], "error": c.error,
                                       "seconds": round(c.seconds, 2)})
                    show(advance=0)
                    continue
                answer = {"raw": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                          "completion_tokens": c.completion_tokens, "seconds": round(c.seconds, 2),
                          **({"filled_tokens": c.filled} if c.filled else {})}
                verdict = judge(c.text, c.finish_reason, cfg.structured)
                if pool and not isinstance(verdict, str) and (copy := copied_task(verdict[0], pool)):
                    answer.update(copied_task=copy[0], rouge_l=round(copy[1], 3))
                    verdict = f"copies a pool task (ROUGE-L >= {COPY_ROUGE_L})"
                if isinstance(verdict, str):
                    store(bad, it, {**answer, "reason": verdict})
                else:
                    store(ok, it, {**answer, "problem": verdict[0], "solution": verdict[1]})
        if not n["failed"]:
            errors_path.unlink()
        st = engine.stats
        stats = {"seeds": len(items) // cfg.samples, "resumed_from": len(done), "generated": n["kept"] + n["rejected"],
                 "failed": n["failed"], "truncated": n["truncated"], "backend": cfg.backend,
                 "parallel": cfg.parallel, "threads": engine.threads, "model": model,
                 "completion_tokens": st.completion_tokens, "prompt_tokens": st.prompt_tokens,
                 **({"filled_tokens": st.filled_tokens} if st.filled_tokens else {}),
                 "decode_seconds": round(st.seconds, 1),
                 "tokens_per_second": round(st.tokens_per_second, 2) if st.tokens_per_second else None}
    pairs, rejected = read_jsonl(pairs_path), read_jsonl(rejected_path)
    stats["pairs"], stats["rejected"] = len(pairs), len(rejected)
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    stats["rejected_by_reason"] = reasons
    stats["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    if cfg.samples > 1:
        stats["samples"] = cfg.samples
    if cfg.shard:
        stats.update(shard=cfg.shard, store=[pairs_path.name, rejected_path.name])
    if n["failed"]:
        raise ReproError(f"generate: {n['failed']} of {len(todo)} requests failed (first: {first_error}); "
                         f"the {len(pairs)} pairs and {len(rejected)} rejections so far are kept, the failures "
                         f"are listed in {errors_path}; rerun the same command to retry them")
    return stats


# ---------------------------------------------------------------------------------------------
# Shards → one store


def shard_lines(path: Path) -> dict[str, bytes]:
    """key -> the line (bytes, newline included) of each answer in a shard's store file, the first
    of a repeated key; a torn last line and undecodable lines are left out, as `open_store` does."""
    out: dict[str, bytes] = {}
    if not path.exists():
        return out
    lines = path.read_bytes().split(b"\n")
    lines.pop()  # b"" after the last newline, or a torn write
    for line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            out.setdefault(row["key"], line + b"\n")
    return out


def merge_stores(cfg: GenerateConfig, seeds: list[tuple], model: str, n: int,
                 pairs: list[Path], rejected: list[Path]) -> tuple[bytes, bytes, dict[int, list[str]]]:
    """(pairs.jsonl, rejected.jsonl, {shard: seed ids with an answer missing}) of an unsharded run
    with `cfg` (its shard ignored) from shard stores. Each answer is the shard's line byte for byte;
    lines are in the order the unsharded run asks (`store_items`), which is the order it writes them
    with one request at a time. Answers of other settings (keys not asked for) are left out. It
    does not decide whether a shard's settings are the others' (the caller compares manifests)."""
    import dataclasses

    system, user = load_prompt(cfg.prompt, cfg.tasks)
    items = store_items(dataclasses.replace(cfg, shard=""), seeds, model, system, user)
    good: dict[str, bytes] = {}
    bad: dict[str, bytes] = {}
    for paths, into in ((pairs, good), (rejected, bad)):
        for p in paths:
            for key, line in shard_lines(p).items():
                if key in items and key not in good and key not in bad:
                    into[key] = line
    missing: dict[int, list[str]] = {}
    for key, it in items.items():
        if key not in good and key not in bad:
            sid = base_seed_id(it["seed_id"])
            seen = missing.setdefault(shard_of(sid, n), [])
            if sid not in seen:
                seen.append(sid)
    return (b"".join(good[k] for k in items if k in good), b"".join(bad[k] for k in items if k in bad), missing)


# ---------------------------------------------------------------------------------------------
# Other stages' questions to the same teacher (validate: tests, new solutions; evol: harder
# problems and their answers), each kept in a store so that a killed stage resumes.


def load_template(name: str, fields: tuple[str, ...], setting: str) -> tuple[str, str]:
    """(system, user) of a template under data/prompts/ or at a path: a system part, a line `---`,
    then the user part, which must hold every `{field}`."""
    p = Path(name) if Path(name).is_file() else DATA_DIR / "prompts" / name
    if not p.is_file():
        raise ReproError(f"{setting}={name!r}: no such template in data/prompts/ or on disk")
    system, sep, user = p.read_text(encoding="utf-8").partition("\n---\n")
    missing = [f for f in fields if "{" + f + "}" not in user]
    if not sep or missing:
        raise ReproError(f"{p}: a template needs a system part, a line '---', and a user part containing "
                         + ", ".join("{" + f + "}" for f in fields) + f" ({setting})")
    return system.strip(), user.strip()


def fill(system: str, user: str, **values: str) -> list[dict]:
    for k, v in values.items():  # plain replacement: code is full of braces
        user = user.replace("{" + k + "}", v)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def request_key(item: str, cfg: GenerateConfig, request) -> str:
    """A store key that changes with the question, the teacher and the sampling settings."""
    from repro.models import model_id

    # Several servers: the same teacher whatever their order (one URL: the key it always had).
    urls = ",".join(sorted(u.strip() for u in cfg.base_url.split(",") if u.strip()))
    model = model_id(cfg.teacher) if cfg.teacher else f"openai:{urls}/{cfg.model_name}"
    return f"{item}/{_sha([request.messages, request.max_tokens, request.temperature, request.seed, model, cfg.n_ctx])[:12]}"


def ask(cfg: GenerateConfig, requests: list, store: Path, progress=None, label: str = "teacher") -> tuple[dict, dict]:
    """Answers of the teacher (generate's settings: model, backend, threads) to `requests`, whose
    keys come from `request_key`. Answers already in the `store` jsonl are not asked again.

    Returns (key -> {text, finish_reason, prompt_tokens, completion_tokens, seconds}, stats).
    Raises ReproError, after storing every answer that came, when a request failed.
    """
    keys = {r.key for r in requests}
    done = open_store([store], keys)
    todo = [r for r in requests if r.key not in done]
    stats = {"asked": len(todo), "reused": len(done), "completion_tokens": 0, "prompt_tokens": 0,
             "seconds": 0.0, "tokens_per_second": None}
    failed, first_error = 0, ""
    if todo:
        task = progress.add_task(label, total=len(requests), completed=len(done)) if progress else None
        with open_teacher(cfg) as engine, open(store, "a", encoding="utf-8") as f:
            for c in engine.run(iter(todo)):
                if c.finish_reason == "error":
                    failed, first_error = failed + 1, first_error or c.error
                    continue
                append_jsonl(f, {"key": c.key, "text": c.text, "finish_reason": c.finish_reason,
                                 "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                 "seconds": round(c.seconds, 2)})
                if progress:
                    tps = engine.stats.tokens_per_second or 0.0
                    progress.update(task, advance=1, description=f"{label} · {tps:.1f} tok/s")
            st = engine.stats
            stats.update(completion_tokens=st.completion_tokens, prompt_tokens=st.prompt_tokens,
                         seconds=round(st.seconds, 1),
                         tokens_per_second=round(st.tokens_per_second, 2) if st.tokens_per_second else None)
    if failed:
        raise ReproError(f"{label}: {failed} of {len(todo)} teacher requests failed (first: {first_error}); "
                         f"the answers so far are kept in {store}; rerun the same command to retry the rest")
    return {r["key"]: r for r in read_jsonl(store) if r.get("key") in keys}, stats
