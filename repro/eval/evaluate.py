"""The evaluate stage: pass@1 on HumanEval(+) and MBPP(+) of the base student, the fine-tuned student and
the teacher, through llama.cpp on the GGUF files users run (the students quantized), greedy.

Benchmarks are EvalPlus's files (repro/eval/evalplus_data.py): each problem has base tests (HumanEval,
MBPP) and plus tests (HumanEval+, MBPP+); programs are judged by repro/eval/harness.py with EvalPlus's
rules, in our sandbox. Prompt styles:
- `completion` (a base model): EvalPlus's direct completion — the benchmark's prompt (MBPP's
  stripped, plus a newline), stopped at EvalPlus's stop strings; the solution is the prompt plus
  the answer.
- `instruct` (the fine-tuned student): our training template around Magicoder's evaluation
  instruction (experiments/text2code.py), the response prefilled with a code fence (and, for
  HumanEval, the prompt, as Magicoder does); stopped at the closing fence.
- `chat` (the teacher): the same instruction and prefill through the GGUF's chat template.

Answers are cached across runs under the cache directory, keyed by the model file's sha256, the
benchmark file's sha256, the prompt style and its texts, and the decoding settings: the base
student's and the teacher's answers are made once and reused by every later run (the fine-tuned
student's file changes with each training). On a CPU the models decode side by side, each on its
share of the threads, with the same answers (repro/eval/lanes.py). Programs run only after every
answer is decoded.

The paper's other axes (`evaluate.multilingual`): MultiPL-E's HumanEval in Java, JavaScript, C++,
PHP, Swift and Rust (repro/eval/multipl_e.py; a completion prompt for every model, as the bigcode harness
the paper used) and DS-1000 (repro/eval/ds1000.py; completion for a base model, Magicoder's
instruction split for the others). Their programs run after the answers, in the same sandbox; a
language whose toolchain is missing, or a DS-1000 library that does not import here, is "not run"
with the reason, never a zero. Verdicts in `eval/<model>/<name>/verdicts.jsonl`.

Several samples per problem (`evaluate.samples=n` > 1): n answers per problem, sampled at
`evaluate.temperature` with a random seed per problem and sample (so an answer does not depend on
n: raising n keeps the first ones), each judged; pass@k for k in 1, 10, 100 up to n with the
unbiased estimator (Chen et al. 2021, repro/eval/stats.py), `pass@1` being its k = 1 value, and
its interval a bootstrap over problems (a Wilson interval over all samples would treat the
samples of one problem as independent). With n = 1 (the default) decoding is greedy and every
output is what it was without this setting.

Outputs, per model and benchmark, in EvalPlus's shapes so its users can read them:
`eval/<model>/<benchmark>/samples.jsonl` ({task_id, solution} + our fields) and
`eval_results.json`; and `eval/results.json`: pass@1 base and plus with 95% Wilson intervals, and
paired-bootstrap intervals of each difference between models.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from pathlib import Path

from repro.eval import ds1000, evalplus_data, multipl_e
from repro.eval import lanes as lane_pool
from repro.artifacts import DATA_DIR, ReproError, append_jsonl, fingerprint, read_jsonl, repair_jsonl, \
    sha256_file, write_json, write_text
from repro.data.benchmarks import Missing
from repro.config import EvaluateConfig
from repro.eval.stats import bootstrap_mean, paired_bootstrap, pass_at_k, wilson
from repro.train import format_prompt

STYLES = ("completion", "instruct", "chat")
# The control row's label (the base student on the instruction prompt): HumanEval(+) and MBPP(+)
# only. MultiPL-E gives every model a completion prompt, so its answers would be the base row's;
# DS-1000 at the instruction split would cost more time than the tiny run has.
CONTROL = "base-instruct"
# EvalPlus's direct-completion stops (evalplus/provider/utility.py), then its per-dataset extras.
EOS_STOPS = ["<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint("]
EXTRA_STOPS = {"humaneval": ["\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert "],
               "mbpp": ['\n"""', "\nassert"]}
# Magicoder's evaluation instructions (experiments/text2code.py).
MBPP_INSTRUCTION = ("{nl} Your code should satisfy the following assertion:\n```python\n{assertion}\n```\n"
                    "Enclose your solution in ```python and ```")
FENCE = "```python\n"


def mbpp_parts(prompt: str) -> tuple[str, str]:
    """MBPP+'s prompt is a docstring holding the task's sentence and one assert: split them."""
    body = prompt.strip().strip('"').strip()
    m = re.search(r"^assert\b", body, re.M)
    if not m:
        return body, ""
    nl = body[:m.start()].strip()
    return (nl if nl.endswith(".") else nl + "."), body[m.start():].strip()


def build_request(bench: str, problem: dict, style: str) -> dict:
    """Request fields (prompt or messages, prefill, stop) and the code that goes before the answer
    in the solution EvalPlus runs."""
    if bench.startswith("multipl-e/"):  # completion for every model, cut at the row's own stops
        return {"prompt": multipl_e.prompt_of(problem), "stop": problem["stop_tokens"], "head": ""}
    if bench == "ds1000":  # as Magicoder: completion for a base model, else its instruction split
        if style == "completion":
            text, stop = ds1000.completion_prompt(problem)
            return {"prompt": text, "stop": stop, "head": ""}
        instruction, response = ds1000.instruct_prompt(problem)
        if style == "instruct":
            return {"prompt": format_prompt(instruction), "prefill": response, "stop": ["```"], "head": ""}
        return {"messages": [{"role": "user", "content": instruction}], "prefill": response, "stop": ["```"],
                "head": ""}
    prompt = problem["prompt"]
    if style == "completion":
        text = prompt if bench == "humaneval" else prompt.strip() + "\n"
        return {"prompt": text, "stop": EOS_STOPS + EXTRA_STOPS[bench], "head": text}
    if style not in STYLES:
        raise ReproError(f"evaluate prompt style {style!r} is unknown; use one of {', '.join(STYLES)}")
    if bench == "humaneval":
        instruction = (DATA_DIR / "prompts" / "eval_instruct.txt").read_text().replace("{prompt}", prompt.strip())
        head = prompt.strip()
    else:
        nl, assertion = mbpp_parts(prompt)
        instruction = MBPP_INSTRUCTION.format(nl=nl, assertion=assertion)
        head = ""
    if style == "instruct":
        return {"prompt": format_prompt(instruction), "prefill": FENCE + head, "stop": ["```"], "head": head}
    return {"messages": [{"role": "user", "content": instruction}], "prefill": FENCE + head, "stop": ["```"],
            "head": head}


def sanitize(text: str) -> str:
    """The code of an answer: up to a closing fence (the stop string, where the backend kept it)."""
    cut = text.find("```")
    return text[:cut] if cut >= 0 else text


def solution(head: str, answer: str) -> str:
    """The program EvalPlus runs: the prompt's part that was given (a completion's prompt,
    HumanEval's prefilled signature) and the answer's code."""
    code = sanitize(answer)
    if head and code and not head.endswith("\n") and not code.startswith("\n"):
        return head + "\n" + code
    return head + code


def stride_of(bench: str, cfg: EvaluateConfig) -> int:
    """The stride of benchmark `bench` (humaneval, mbpp): `mbpp_stride` for MBPP where set."""
    return cfg.mbpp_stride if bench == "mbpp" and cfg.mbpp_stride else cfg.stride


def select(problems: dict[str, dict], cfg: EvaluateConfig, bench: str) -> list[str]:
    """The task ids evaluated: every `stride_of(bench)`-th in task order, at most `limit`."""
    ids = list(problems)[:: max(1, stride_of(bench, cfg))]
    return ids[: cfg.limit] if cfg.limit else ids


def subset_note(n_all: int, n: int, stride: int, limit: int, unit: str = "problem",
                order: str = "in task order") -> str:
    """How `n` of `n_all` problems were chosen: every `stride`-th, at most `limit`."""
    if n == n_all:
        return "all"
    if stride > 1:
        how = f"one {unit} in every {stride}, {order}" + (f", the first {limit} of them" if limit else "")
    else:
        how = f"the first {limit} {order}"
    return f"{n} of {n_all}: {how}"


# ---------------------------------------------------------------------------------------------
# Answers (cached)


def answer_key(model_sha: str, bench, style: str, cfg: EvaluateConfig) -> str:
    """What an answer depends on. The backend and batch width are in it: batched greedy decoding
    can differ from one-at-a-time in a few answers (bench/teacher.py)."""
    from repro.gpu import llama_offload

    prompts = [sha256_file(DATA_DIR / "prompts" / n) for n in ("train_template.txt", "eval_instruct.txt")]
    # Layers on a GPU (and its flash attention) may change a greedy answer: such answers get their
    # own key. On a CPU build the key is what it always was, so the cached answers stay valid.
    device = ["gpu", cfg.n_gpu_layers, cfg.flash_attn] if cfg.n_gpu_layers != 0 and llama_offload() else []
    # Sampled answers (evaluate.samples > 1) are others than the greedy ones; not n itself: sample j
    # is the same whatever n is, so a larger n keeps the first ones.
    sampled = ["sampled", cfg.temperature] if cfg.samples > 1 else []
    # A filled loop may differ from the decoded one where the model would have left it: its own key
    # (none when off, so answers cached before the setting existed stay valid).
    loops = ["fill_loops", cfg.fill_loops] if cfg.fill_loops and cfg.samples == 1 else []
    return fingerprint("eval-answers", model_sha, bench.sha256, style, prompts, MBPP_INSTRUCTION, EOS_STOPS,
                       EXTRA_STOPS, cfg.max_tokens, cfg.n_ctx, cfg.backend, cfg.parallel, *device, *sampled,
                       *loops)


def local_answers(d: Path, cfg: EvaluateConfig) -> Path:
    """A model's answers file in the run (a server's, or any with evaluate.cache=false)."""
    return d / ("answers.jsonl" if cfg.samples == 1 else f"answers.sampled-t{cfg.temperature:g}.jsonl")


def sample_seed(task_id: str, j: int) -> int:
    """The random seed of sample j of a problem (evaluate.samples > 1)."""
    import hashlib

    return int(hashlib.sha256(f"{task_id}#{j}".encode()).hexdigest()[:8], 16) % 2**31


def eval_cache() -> Path:
    from repro.models import cache_dir

    return cache_dir() / "eval"


def answers_path(key: str, local: Path, cfg: EvaluateConfig) -> Path:
    return eval_cache() / f"{key[:32]}.jsonl" if cfg.cache else local


def _todo(jobs: list[tuple], n: int) -> list[tuple]:
    """The (bench, problem, style, path, sample) that no job's answers file holds yet."""
    todo, seen = [], {}
    for bench, problems, ids, style, path in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(path)  # a torn last line from a crash is cut and redone
        if path not in seen:  # a file two jobs share (two rows of one model and prompt) is decoded once
            seen[path] = {(r["task_id"], r.get("sample", 0)) for r in read_jsonl(path)}
        for t in ids:
            for j in range(n):
                if (t, j) not in seen[path]:
                    seen[path].add((t, j))
                    todo.append((bench, problems[t], style, path, j))
    return todo


def generate(label: str, gguf, jobs: list[tuple], cfg: EvaluateConfig, progress=None, lane=None) -> dict:
    """Decode what is not in each job's answers file yet. jobs: (bench name, problems, ids, style,
    answers path). One engine for all of a model's jobs: llama.cpp on a GGUF path, or an
    OpenAI-compatible server (`engine.Server`). `lane` (repro/eval/lanes.py): the threads to
    start with, and more when another lane ends. Returns counts and throughput."""
    from repro.engine import Request, open_engine

    n = cfg.samples
    todo = _todo(jobs, n)
    n_all = sum(len(j[2]) for j in jobs) * n
    out = {"generated": len(todo), "reused": n_all - len(todo), "tokens_per_second": None, "threads": None,
           "generated_by_path": Counter(t[3] for t in todo)}
    if not todo:
        return out
    task = progress.add_task(f"evaluate {label}", total=len(todo)) if progress else None
    files = {}
    try:
        server = None if isinstance(gguf, Path) else gguf
        with open_engine("openai" if server else cfg.backend, None if server else gguf, n_ctx=cfg.n_ctx,
                         parallel=cfg.parallel, threads=lane.threads() if lane else cfg.threads,
                         n_gpu_layers=cfg.n_gpu_layers, flash_attn=cfg.flash_attn, section="evaluate",
                         server=server) as engine, lane.attached(engine) if lane else contextlib.nullcontext():
            out["threads"] = engine.threads
            where = {}

            def requests():
                for i, (bench, p, style, path, j) in enumerate(todo):
                    fields = build_request(bench, p, style)
                    where[str(i)] = (p["task_id"], path, j)
                    decoding = ({"temperature": cfg.temperature, "seed": sample_seed(p["task_id"], j)} if n > 1
                                else {"fill_loops": cfg.fill_loops})
                    yield Request(str(i), prompt=fields.get("prompt", ""), messages=fields.get("messages"),
                                  prefill=fields.get("prefill", ""), stop=fields["stop"], max_tokens=cfg.max_tokens,
                                  **decoding)

            for c in engine.run(requests()):
                task_id, path, j = where[c.key]
                f = files.get(path) or files.setdefault(path, open(path, "a", encoding="utf-8"))
                append_jsonl(f, {"task_id": task_id, "answer": c.text, "finish_reason": c.finish_reason,
                                 "completion_tokens": c.completion_tokens, **({"sample": j} if n > 1 else {}),
                                 **({"filled_tokens": c.filled} if c.filled else {})})
                if progress:
                    tps = engine.stats.tokens_per_second or 0.0
                    progress.update(task, advance=1, description=f"evaluate {label} ({tps:.1f} tok/s)")
                if lane and lane.stopped():  # another lane failed: its error ends the stage
                    break
            out["threads"] = max(out["threads"], engine.threads)  # a lane's share grows as others end
            if engine.stats.seconds:
                out["tokens_per_second"] = round(engine.stats.tokens_per_second, 1)
    finally:
        for f in files.values():
            f.close()
    return out


def lane_plan(cfg: EvaluateConfig, work: list[tuple], pending: list[int]) -> tuple[int, int]:
    """(lanes, threads): how many models decode at once (repro/eval/lanes.py), over how many
    threads. `pending`: each work item's answers still to make (`_todo`). One lane, as before,
    for a server's model, the `llama` reference backend, layers on a GPU, or where fewer than two
    models (or threads) have answers to make."""
    from repro.gpu import llama_offload
    from repro.models import choose_threads

    busy = sum(1 for n in pending if n)
    if (cfg.lanes == 1 or busy < 2 or cfg.backend != "llama-batched"
            or not all(isinstance(w[1], Path) for w in work) or (cfg.n_gpu_layers != 0 and llama_offload())):
        return 1, 0
    threads = choose_threads(cfg.threads)
    return max(1, min(cfg.lanes or threads, busy, threads)), threads


# ---------------------------------------------------------------------------------------------
# The stage


def _with_filled(summary: dict, rows: list[dict]) -> dict:
    """`summary` with, if any of the judged answers `rows` were completed by repeating their loop
    (evaluate.fill_loops), "filled": how many and their filled tokens."""
    filled = [r["filled_tokens"] for r in rows if r.get("filled_tokens")]
    return {**summary, "filled": {"answers": len(filled), "tokens": sum(filled)}} if filled else summary


def _summary(results: dict, ids: list[str], n: int = 1) -> dict:
    if n > 1:
        every = {t: results["eval"][t] for t in ids}
        base = [[r["base_status"] == "pass" for r in every[t]] for t in ids]
        out = {"n": len(ids), "samples": n, "base": _rate_k(base),
               "timeouts": sum(r["base_status"] == "timeout" for t in ids for r in every[t])}
        if all(r["plus_status"] is not None for t in ids for r in every[t]):
            out["plus"] = _rate_k([[b and r["plus_status"] == "pass" for b, r in zip(bs, every[t])]
                                   for bs, t in zip(base, ids)])
        return out
    rows = {t: results["eval"][t][0] for t in ids}
    base = [rows[t]["base_status"] == "pass" for t in ids]
    out = {"n": len(ids), "base": _rate(base), "timeouts": sum(r["base_status"] == "timeout" for r in rows.values())}
    if all(r["plus_status"] is not None for r in rows.values()):
        out["plus"] = _rate([b and rows[t]["plus_status"] == "pass" for b, t in zip(base, ids)])
    return out


def _rate(passed: list[bool]) -> dict:
    k, n = sum(passed), len(passed)
    lo, hi = wilson(k, n)
    return {"passed": k, "pass@1": k / n if n else 0.0, "ci95": [lo, hi], "per_task": passed}


PASS_AT = (1, 10, 100)


def _rate_k(passed: list[list[bool]]) -> dict:
    """pass@k of n samples per problem: `pass@1` and `pass@k` ({k: value} for k in 1, 10, 100 up to n)
    by the unbiased estimator, averaged over problems; `per_task` the fraction of each problem's
    samples that passed (its mean is pass@1, so paired comparisons of models stay as they are),
    `correct` how many, `passed` their sum, and a bootstrap interval of pass@1 over problems."""
    n = len(passed[0]) if passed else 0
    correct = [sum(p) for p in passed]
    at = {str(k): (sum(pass_at_k(n, c, k) for c in correct) / len(correct) if correct else 0.0)
          for k in PASS_AT if k <= n}
    per_task = [c / n for c in correct] if n else []
    lo, hi = bootstrap_mean(per_task)
    return {"passed": sum(correct), "samples": n, "pass@1": at.get("1", 0.0), "pass@k": at, "ci95": [lo, hi],
            "per_task": per_task, "correct": correct}


def run(cfg: EvaluateConfig, models: dict[str, tuple], out_dir: Path, progress=None) -> dict:
    """`models`: label -> (GGUF path or an `engine.Server`, prompt style). A server's answers are
    kept in `out_dir` only: what it serves may change behind the same URL."""
    from repro.eval import harness

    out_dir.mkdir(parents=True, exist_ok=True)
    benches = {b: evalplus_data.load(b, path=getattr(cfg, f"{b}_path"), fetch=cfg.fetch) for b in cfg.benchmarks}
    chosen = {b: select(bench.problems, cfg, b) for b, bench in benches.items()}
    from repro.sandbox import isolation

    results = {"max_tokens": cfg.max_tokens, "fill_loops": cfg.fill_loops, "backend": cfg.backend,
               "parallel": cfg.parallel,
               "sandbox": isolation(),  # how contained the programs were (repro/sandbox.py)
               "benchmarks": {b: {"version": x.version, "sha256": x.sha256, "path": x.path, "plus": x.plus,
                                  "note": x.note, "n": len(chosen[b]), "of": len(x.problems),
                                  "subset": subset_note(len(x.problems), len(chosen[b]), stride_of(b, cfg),
                                                        cfg.limit),
                                  "task_ids": chosen[b]}
                              for b, x in benches.items()},
               "multilingual": {}, "models": {}, "comparisons": []}
    if cfg.samples > 1:
        results.update(samples=cfg.samples, temperature=cfg.temperature, estimator="unbiased pass@k (Chen et al. 2021)")
    extra = multilingual_sets(cfg)
    results["multilingual"] = {name: {k: v for k, v in x.items() if k != "problems"} for name, x in extra.items()}
    # 1. Answers: on a CPU several models at once, each on its share of the threads (lanes.py);
    # else model by model. Rows of the same GGUF (base and the control row) decode in one pass:
    # one load, and one batch that does not drain between them.
    answers, jobs_of, groups = {}, {}, {}
    for label, (gguf, style) in models.items():
        local_file = isinstance(gguf, Path)
        sha = sha256_file(gguf) if local_file else fingerprint("server", gguf.base_url, gguf.model)
        groups.setdefault(sha if local_file else label, []).append(label)
        jobs = jobs_of[label] = []
        for b, bench in benches.items():
            local = local_answers(out_dir / label / b, cfg)
            path = answers_path(answer_key(sha, bench, style, cfg), local, cfg) if local_file else local
            jobs.append((b, bench.problems, chosen[b], style, path))
            answers[label, b] = path
        for name, x in extra.items():
            if x["task_ids"] and label != CONTROL:
                st = style if name == "ds1000" else "completion"  # MultiPL-E: completion for every model
                local = local_answers(out_dir / label / name, cfg)
                path = answers_path(answer_key(sha, x["ref"], st, cfg), local, cfg) if local_file else local
                jobs.append((name, x["problems"], x["task_ids"], st, path))
                answers[label, name] = path
        where = {"gguf": str(gguf), "sha256": sha} if local_file else {"server": gguf.base_url, "model": gguf.model}
        results["models"][label] = {**where, "prompt_style": style}  # the counts once its group has decoded
    work = [(" + ".join(labels), models[labels[0]][0], [j for label in labels for j in jobs_of[label]])
            for labels in groups.values()]
    pending = [len(_todo(w[2], cfg.samples)) for w in work]
    lanes, threads = lane_plan(cfg, work, pending)
    results["lanes"] = lanes
    if lanes > 1:  # the largest work first (it ends last otherwise); the answers do not depend on it
        # Work, roughly: answers to make x the weights read per token.
        order = sorted(range(len(work)), key=lambda i: -pending[i] * work[i][1].stat().st_size)
        done = dict(zip(order, lane_pool.run([work[i] for i in order],
                                             lambda w, lane: generate(*w, cfg, progress, lane), threads, lanes)))
        counted = [done[i] for i in range(len(work))]
    else:
        counted = [generate(*w, cfg, progress) for w in work]
    for labels, counts in zip(groups.values(), counted):
        by_path = counts.pop("generated_by_path")
        for label in labels:
            made = sum(by_path[j[4]] for j in jobs_of[label])
            every = sum(len(j[2]) for j in jobs_of[label]) * cfg.samples
            results["models"][label].update(counts, generated=made, reused=every - made)
    # 2. Programs, once no model is decoding: a program sharing the 2 cores with llama.cpp's
    # threads made decoding 3x slower (measured), more than the programs themselves cost.
    for b, bench in benches.items():
        gt = harness.ground_truth(bench, workers=cfg.workers, task_ids=chosen[b]) if bench.plus else None
        for label, (_, style) in models.items():
            by_id = {(r["task_id"], r.get("sample", 0)): r for r in read_jsonl(answers[label, b])}
            samples = []
            for t in chosen[b]:
                head = build_request(b, bench.problems[t], style)["head"]
                for j in range(cfg.samples):
                    r = by_id[t, j]
                    samples.append({"task_id": t, "solution": solution(head, r["answer"]), "answer": r["answer"],
                                    "finish_reason": r["finish_reason"], "completion_tokens": r["completion_tokens"],
                                    **({"sample": j} if cfg.samples > 1 else {}),
                                    **({"filled_tokens": r["filled_tokens"]} if r.get("filled_tokens") else {})})
            d = out_dir / label / b
            d.mkdir(parents=True, exist_ok=True)
            _write_jsonl(d / "samples.jsonl", samples)
            task = progress.add_task(f"run {label}'s {b} programs", total=len(samples)) if progress else None
            ev = harness.evaluate_samples(bench, samples, gt=gt, workers=cfg.workers,
                                          progress=(lambda done, total: progress.update(task, completed=done))
                                          if progress else None)
            write_json(d / "eval_results.json", ev)
            results["models"][label][b] = _with_filled(_summary(ev, chosen[b], cfg.samples), samples)
    for name, x in extra.items():
        if x["task_ids"]:
            ids = set(x["task_ids"])
            for label in (m for m in models if m != CONTROL):
                rows = [r for r in read_jsonl(answers[label, name]) if r["task_id"] in ids]
                by_id = {r["task_id"] if cfg.samples == 1 else (r["task_id"], r.get("sample", 0)): r["answer"]
                         for r in rows}
                results["models"][label][name] = _with_filled(
                    judge_multilingual(name, x, by_id, out_dir / label / name, cfg, progress, label), rows)
    # 3. Differences between models on the same problems.
    labels = list(models)
    for b in [*benches, *(n for n, x in extra.items() if x["task_ids"])]:
        for i, a in enumerate(labels):
            for c in labels[:i]:
                for split in ("base", "plus"):
                    ra = results["models"][a].get(b, {}).get(split)
                    rc = results["models"][c].get(b, {}).get(split)
                    if ra and rc:
                        diff, lo, hi = paired_bootstrap(ra["per_task"], rc["per_task"])
                        results["comparisons"].append({"a": a, "b": c, "benchmark": b, "split": split,
                                                       "diff": diff, "ci95": [lo, hi]})
    return results


# ---------------------------------------------------------------------------------------------
# MultiPL-E and DS-1000


def check_data(cfg: EvaluateConfig) -> None:
    """Engine settings, and every benchmark's name, file and hash (EvalPlus's, then MultiPL-E's and
    DS-1000's): one line before any work. It does not look at models (the callers know which)."""
    from repro import engine

    engine.check_settings("evaluate", cfg.backend, cfg.parallel, cfg.n_ctx)
    for b in cfg.benchmarks:
        evalplus_data.load(b, path=getattr(cfg, f"{b}_path", ""), fetch=cfg.fetch)
    multilingual_sets(cfg, probe=False)


def multilingual_sets(cfg: EvaluateConfig, probe: bool = True) -> dict[str, dict]:
    """name ("multipl-e/<lang>", "ds1000") -> {title, path, sha256, of, n, subset, task_ids, not_run,
    problems, ref}. A language whose toolchain is missing here gets no task ids and says why; so do
    DS-1000 problems whose libraries do not import here (`probe=False` skips that check, which
    imports each library in the sandbox: pipeline.check only checks names and files)."""
    from types import SimpleNamespace

    out = {}
    stride = max(1, cfg.multilingual_stride)
    if unknown := [m for m in cfg.multilingual if m not in ("multipl-e", "ds1000")]:
        raise ReproError(f"evaluate.multilingual: {', '.join(unknown)} unknown; choose among multipl-e, ds1000 "
                         "(or [] for none)")
    if "multipl-e" in cfg.multilingual:
        for lang in cfg.multipl_e_langs:
            try:
                p = multipl_e.load(lang, cfg.fetch)
            except Missing as e:  # no data here: not run, never an error
                out[f"multipl-e/{lang}"] = _not_found(f"MultiPL-E {multipl_e.LANGS[lang].title}", str(e))
                continue
            problems = {n: {**row, "task_id": n} for n, row in p.rows.items()}
            why = multipl_e.missing_tools(lang)
            ids = [] if why else multipl_e.select(p, stride, cfg.limit)
            out[f"multipl-e/{lang}"] = {
                "title": f"MultiPL-E {multipl_e.LANGS[lang].title}", "path": p.path, "sha256": p.sha256,
                "of": len(p.rows), "n": len(ids), "task_ids": ids, "not_run": why,
                "subset": "not run" if why else subset_note(len(p.rows), len(ids), stride, cfg.limit,
                                                            "HumanEval number", "the same in every language"),
                "problems": problems, "ref": SimpleNamespace(sha256=p.sha256)}
    d = None
    if "ds1000" in cfg.multilingual:
        try:
            d = ds1000.load(cfg.ds1000_path, cfg.fetch)
        except Missing as e:
            out["ds1000"] = _not_found("DS-1000", str(e))
    if d is not None:
        problems = d.problems
        ids, why = list(problems), {}
        if probe:  # which libraries import here (tensorflow does not): the others' problems run
            needs = {t: ds1000.required_modules(p) for t, p in problems.items()}
            status = ds1000.module_status(sorted({m for ms in needs.values() for m in ms}), cfg.workers)
            why = {t: "; ".join(status[m] for m in ms if status[m]) for t, ms in needs.items()}
            ids = [t for t in problems if not why[t]]
        chosen = ids[::stride][: cfg.limit or None]
        skipped: dict[str, int] = {}
        for t, w in why.items():
            if w:
                skipped[f"{problems[t]['library']}: {w}"] = skipped.get(f"{problems[t]['library']}: {w}", 0) + 1
        out["ds1000"] = {"title": "DS-1000", "path": d.path, "sha256": d.sha256, "of": len(problems),
                         "n": len(chosen), "task_ids": chosen,
                         "not_run": "; ".join(f"{k} ({v} problems)" for k, v in skipped.items()),
                         "subset": subset_note(len(ids), len(chosen), stride, cfg.limit, "problem",
                                               "of those that run here"),
                         "problems": problems, "ref": SimpleNamespace(sha256=d.sha256)}
    return out


def _not_found(title: str, why: str) -> dict:
    """A benchmark whose file is not here: not run, with why (never an error, never a zero)."""
    return {"title": title, "path": "", "sha256": "", "of": 0, "n": 0, "task_ids": [], "subset": "", "problems": {},
            "ref": None, "not_run": why}


def judge_multilingual(name: str, x: dict, answers: dict[str, str], d: Path, cfg: EvaluateConfig, progress,
                       label: str) -> dict:
    """Run one model's programs for a MultiPL-E language or DS-1000; writes verdicts.jsonl beside
    the answers; returns the summary (pass@1 as `base`, the only split these have). With
    evaluate.samples = n > 1, `answers` is keyed by (task id, sample) and each sample is judged."""
    ids = x["task_ids"]
    if cfg.samples > 1:
        return _judge_multilingual_samples(name, x, answers, d, cfg, progress, label)
    task = progress.add_task(f"run {label}'s {x['title']} programs", total=len(ids)) if progress else None
    tick = (lambda done, total: progress.update(task, completed=done)) if progress else None
    verdicts = _judge_answers(name, x, {t: answers[t] for t in ids}, cfg, tick)
    d.mkdir(parents=True, exist_ok=True)
    _write_jsonl(d / "verdicts.jsonl", [{"task_id": t, "answer": answers[t], **verdicts[t]} for t in ids])
    # DS-1000 problems whose own test cannot run here (ds1000.py: "not run") are left out, not failed.
    not_run = [t for t in ids if verdicts[t]["status"] == "not run"]
    ids = [t for t in ids if verdicts[t]["status"] != "not run"]
    passed = [verdicts[t]["status"] == "pass" for t in ids]
    out = {"n": len(ids), "base": _rate(passed), "timeouts": sum(verdicts[t]["status"] == "timeout" for t in ids),
           "not_run": len(not_run)}
    if name == "ds1000":
        libs: dict[str, list[bool]] = {}
        for t, ok in zip(ids, passed):
            libs.setdefault(x["problems"][t]["library"], []).append(ok)
        out["per_library"] = {lib: _rate(v) for lib, v in libs.items()}
    return out


def _judge_answers(name: str, x: dict, answers: dict[str, str], cfg: EvaluateConfig, tick) -> dict[str, dict]:
    """task id -> {status, reason, seconds} of one answer per task (MultiPL-E or DS-1000)."""
    ids = list(answers)
    if name.startswith("multipl-e/"):
        p = multipl_e.Problems(name.split("/", 1)[1], x["path"], x["sha256"], x["problems"])
        return multipl_e.judge(p, answers, workers=cfg.workers, progress=tick)
    samples = [{"task_id": t, "solution": ds1000.postprocess(answers[t])} for t in ids]
    vs = ds1000.judge(x["problems"], samples, workers=cfg.workers)
    if tick:
        tick(len(ids), len(ids))
    return {v.task_id: {"status": v.status, "reason": v.reason, "seconds": v.seconds} for v in vs}


def _judge_multilingual_samples(name: str, x: dict, answers: dict[tuple, str], d: Path, cfg: EvaluateConfig,
                                progress, label: str) -> dict:
    """judge_multilingual with n samples per problem: each sample judged, pass@k by `_rate_k`."""
    ids, n = x["task_ids"], cfg.samples
    task = progress.add_task(f"run {label}'s {x['title']} programs", total=len(ids) * n) if progress else None
    verdicts: dict[tuple, dict] = {}
    for j in range(n):
        tick = (lambda done, total, j=j: progress.update(task, completed=j * len(ids) + done)) if progress else None
        for t, v in _judge_answers(name, x, {t: answers[t, j] for t in ids}, cfg, tick).items():
            verdicts[t, j] = v
    d.mkdir(parents=True, exist_ok=True)
    _write_jsonl(d / "verdicts.jsonl", [{"task_id": t, "sample": j, "answer": answers[t, j], **verdicts[t, j]}
                                        for t in ids for j in range(n)])
    # A DS-1000 problem whose own test cannot run here is "not run" whatever the answer: left out.
    not_run = [t for t in ids if verdicts[t, 0]["status"] == "not run"]
    ids = [t for t in ids if verdicts[t, 0]["status"] != "not run"]
    passed = [[verdicts[t, j]["status"] == "pass" for j in range(n)] for t in ids]
    out = {"n": len(ids), "samples": n, "base": _rate_k(passed),
           "timeouts": sum(verdicts[t, j]["status"] == "timeout" for t in ids for j in range(n)),
           "not_run": len(not_run)}
    if name == "ds1000":
        libs: dict[str, list[list[bool]]] = {}
        for t, ok in zip(ids, passed):
            libs.setdefault(x["problems"][t]["library"], []).append(ok)
        out["per_library"] = {lib: _rate_k(v) for lib, v in libs.items()}
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
