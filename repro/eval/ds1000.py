"""DS-1000 (Lai et al., 2022) in its simplified 2024 format: the problems, the completion-mode prompt,
the answer's post-processing, and the official test program judged in repro.sandbox.

The protocol, as xlang-ai/DS-1000's own code has it (test_ds1000.py at b39aab7 and its inference
scripts), mirrored here rather than imported:
- Prompt (completion mode, the paper's): the problem's `prompt` as it is, continued by the model
  and stopped at `</code>` or `# SOLUTION END` (the stop strings of DS-1000's inference scripts).
  Most prompts end in `BEGIN SOLUTION\\n<code>\\n`; the 155 Matplotlib ones in `# SOLUTION START`.
- Post-processing (test_ds1000.py `postprocess`): cut at `</code>`, drop "```python", cut at the
  next "```", cut at "\\nEND SOLUTION", drop `<code>`. We also cut at the stop strings first, for
  a backend that keeps them.
- Program (test_ds1000.py `eval_ds1000`): `code_context + "\\n" + f"code = {answer!r}\\n" +
  "test_execution(code)\\n"`, and `test_string(code)` after it when the context defines it (159
  problems check the answer's tokens: a function it must call, a loop it must not have). It
  passes when it raises nothing. `test_execution` makes each test case (`generate_test_case`: the
  inputs, and the expected result from the context's own solution), puts the answer into the
  context's `exec_context` at `[insert]`, runs it on the inputs and compares.
- Time: the official harness gives each program 120 s (`check_correctness(..., timeout=120)`).
  We give TIMEOUT_S (see there for why less).

Magicoder (experiments/ds_1000.py) ran its instruction-tuned models in this mode through its
chat template: `instruct_prompt` gives that split of the prompt (instruction and prefilled
response) for the evaluation stage's instruct and chat styles.

Where we differ from the official harness, on purpose:
- each program is a fresh interpreter in our sandbox (repro.sandbox: own dir, rlimits, no network,
  read-only file system outside its dir), not exec() in a fork of the evaluator; imports count
  against its time (1-5 s: torch, sklearn);
- the verdict comes from a file the program writes after its last test, not from the exit status:
  an answer that calls `sys.exit(0)` or `os._exit(0)` before the tests are done fails;
- the program text sets MPLBACKEND=Agg (the sandbox scrubs the environment) and one BLAS/OpenMP
  thread (programs run side by side, one per core);
- problems that cannot be judged here are "not run", with the reason, and are left out of pass@1
  rather than counted as failures: those whose context imports a module that does not import
  here (tensorflow; seaborn, gensim, xgboost, statsmodels where they are not installed), and those
  whose test itself fails here, that is, raises while it makes the first test case's inputs and
  expected result (`generate_test_case(1)`), before the answer has run: written for older library versions
  (DataFrame.append, np.NAN, np.in1d, scipy's interp2d and quadrature are gone from the versions
  we have) or needing the network (seaborn.load_dataset, sklearn's fetch_california_housing; the
  sandbox has none). The official harness scores every problem 0 or 1;
- an address-space limit of MEM_BYTES (4 GiB, as our EvalPlus harness).

`judge(..., python=...)` runs the programs under another interpreter, such as a virtual
environment with the library versions DS-1000 was written for: the full self-test
(tests/test_ds1000.py) lists what fails with ours.

What it does not do: pass@k with k > 1 (one sample per problem is judged; several samples of one
problem may be given, each is judged on its own), the original 2022 format or its Insertion mode.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from repro import sandbox
from repro.artifacts import ReproError
from repro.data.benchmarks import locate
from repro.eval.stats import wilson

VERSION = "2024 simplified format (xlang-ai/DS-1000 @ b39aab7)"  # the file: repro.data.benchmarks.FILES["ds1000"]
PATH_SETTING = "evaluate.ds1000_path"
LIBRARIES = ("Pandas", "Numpy", "Matplotlib", "Sklearn", "Scipy", "Pytorch", "Tensorflow")  # the file's order
STOP = ["</code>", "# SOLUTION END"]
# The official harness gives 120 s (with 16 programs at once). Here, two side by side on 2 busy
# cores, a reference program takes 1.6 s at the median and at most 29 s (DS1000/849, a
# GridSearchCV; 23 s alone); 60 s is twice that, and an answer that never ends costs half as much.
TIMEOUT_S = 60.0
MEM_BYTES = 4 << 30
PROBE_TIMEOUT_S = 120.0
VERDICT_FILE = "ds1000_verdict.json"


@dataclass
class Benchmark:
    """The DS-1000 file, read. `problems`: {task_id: row}, task ids "DS1000/<problem_id>" in the
    file's order; each row is the file's (prompt, reference_code, code_context, metadata) with
    `task_id` and `library` added. Shared between loads of the same file: read it only."""
    name: str
    version: str
    path: str
    sha256: str
    problems: dict[str, dict] = field(repr=False)


@dataclass
class Verdict:
    task_id: str
    library: str
    perturbation: str  # Origin | Surface | Semantic | Difficult-Rewrite
    status: str  # pass | fail | timeout | not run
    reason: str = ""  # why it did not pass (or why it was not run); "" for a pass
    seconds: float = 0.0  # the program's wall time


# ---------------------------------------------------------------------------------------------
# Data


def load(path: str = "", fetch: bool = True) -> Benchmark:
    """The DS-1000 file, verified by its sha256 (`repro.data.benchmarks.locate`: `path` if given, else
    data/benchmarks/, the cache, the download); `benchmarks.Missing` when it is nowhere."""
    found = locate("ds1000", path, PATH_SETTING, fetch, "evaluate.fetch")
    return Benchmark("ds1000", VERSION, str(found.path), found.sha256, _parse(found.sha256, found.path.read_bytes()))


@lru_cache(maxsize=2)
def _parse(sha: str, raw: bytes) -> dict[str, dict]:
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    problems = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            tid = f"DS1000/{row['metadata']['problem_id']}"
            problems[tid] = dict(row, task_id=tid, library=row["metadata"]["library"])
    return problems


# ---------------------------------------------------------------------------------------------
# Prompts and answers


def completion_prompt(problem: dict) -> tuple[str, list[str]]:
    """DS-1000's completion mode: the prompt as it is, and the strings that end the answer."""
    return problem["prompt"], list(STOP)


def postprocess(answer: str) -> str:
    """The code of a model's answer, as DS-1000's test_ds1000.py cuts it (after our stop strings)."""
    for s in STOP:
        answer = answer.split(s)[0]
    answer = answer.replace("```python", "").split("```")[0]
    answer = answer.split("\nEND SOLUTION")[0]
    return answer.replace("<code>", "")


def instruct_prompt(problem: dict) -> tuple[str, str]:
    """Magicoder's split of a completion prompt for an instruction-tuned model
    (experiments/ds_1000.py `preprocess_completion_prompt`): (instruction, response prefix).

    The instruction is the question (without "Problem:"); the response is prefilled with a
    ```python fence holding the given code, the line that says where the result goes as a comment,
    and "# Solution"; the answer continues the code and ends at the closing fence (`postprocess`
    cuts there). <code> tags become fences in both.
    """
    prompt = problem["prompt"]
    if "SOLUTION START" in prompt:  # Matplotlib: the prompt is code that ends in "# SOLUTION START"
        code = prompt[: prompt.rindex("# SOLUTION START")].strip()
        instruction = f"Write a solution to the following problem:\n```python\n{code}\n```"
        response = f"```python\n{code}\n# Solution\n"
    else:
        at = prompt.rindex("A:")
        instruction = prompt[:at].strip().removeprefix("Problem:").strip()
        lines = prompt[at + 2:].strip().splitlines(keepends=True)
        if "### BEGIN SOLUTION" in prompt:  # a function to complete: keep the body's indentation
            begin = lines[-1]
            response = "".join(lines[:-3]).strip() + "\n" + begin.replace("###", "#").replace(
                "BEGIN SOLUTION", "Solution") + "\n"
        else:  # <code>given</code> / the result line / BEGIN SOLUTION / <code>
            if lines[-4].strip() == "</code>":
                given, hint = lines[:-4], lines[-3:-2]
            elif lines[-6].strip() == "</code>":  # the result lines sit between the two blocks
                given, hint = lines[:-6], lines[-5:-2]
            else:
                given, hint = lines[:-3], []
            response = "".join(given + [f"# {h.lstrip()}" for h in hint]).strip() + "\n# Solution\n"
    fence = lambda s: s.replace("<code>", "```python").replace("</code>", "```")  # noqa: E731
    return fence(instruction), fence(response)


# ---------------------------------------------------------------------------------------------
# Judging


def program(problem: dict, solution: str) -> str:
    """The test program of test_ds1000.py for `solution`, with our prelude and verdict file."""
    context = problem["code_context"]
    tests = ["test_execution"] + (["test_string"] if "test_string(" in context else [])
    return (_PRELUDE + context + "\n" + f"code = {solution!r}\n"
            + _RUNNER.replace("TESTS", "[" + ", ".join(tests) + "]").replace("VERDICT", repr(VERDICT_FILE)))


# Before the context's own imports: the sandbox gives a scrubbed environment.
_PRELUDE = """import os as _ds1000_os
_ds1000_os.environ.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                          TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
"""
# The official program's test calls, in a try that records how they ended. Every test_execution
# makes test case 1 (generate_test_case) before it first runs the answer: an error in that first
# call is the test's own, whatever the answer.
_RUNNER = """
_ds1000_cases = []
_ds1000_generate = generate_test_case


def generate_test_case(test_case_id):
    _ds1000_cases.append(test_case_id)
    return _ds1000_generate(test_case_id)


def _ds1000_run():
    import json, traceback
    try:
        for test in TESTS:
            test(code)
        out = {"status": "pass"}
    except BaseException as e:
        frames = traceback.extract_tb(e.__traceback__)
        where = frames[-1]
        line = (where.line or "").strip()
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        why = type(e).__name__ + (": " + msg if msg else "") + " (%s, line %d%s)" % (
            where.name, where.lineno or 0, ": " + line[:120] if line else "")
        broken = len(_ds1000_cases) == 1 and any(f.name == "generate_test_case" and f.filename == __file__
                                                 for f in frames)
        out = {"status": "not run", "reason": "the test itself fails here: " + why} if broken else \
            {"status": "fail", "reason": why}
    with open(VERDICT, "w") as f:
        json.dump(out, f)
_ds1000_run()
"""


def required_modules(problem: dict) -> list[str]:
    """The non-standard-library modules the problem's test context imports (its own and the
    answer's surroundings in `exec_context`)."""
    found = []
    for line in problem["code_context"].splitlines():
        if m := re.match(r"\s*import\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)\s*$", line):
            names = [part.split()[0] for part in m.group(1).split(",")]
        elif m := re.match(r"\s*from\s+([\w.]+)\s+import\s", line):
            names = [m.group(1)]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in found:
                found.append(top)
    return found


_probed: dict[tuple[str, str], str] = {}
_probe_lock = threading.Lock()


def module_status(modules: list[str], workers: int = 0, python: str = "") -> dict[str, str]:
    """{module: "" if it imports in the sandbox under `python` (default: this interpreter), else why
    not}, each probed once per process."""
    python = python or sys.executable
    with _probe_lock:
        todo = [m for m in dict.fromkeys(modules) if (python, m) not in _probed]
        if todo:
            with ThreadPoolExecutor(sandbox.workers(workers)) as pool:
                for m, why in zip(todo, pool.map(lambda m: _probe(m, python), todo)):
                    _probed[python, m] = why
        return {m: _probed[python, m] for m in modules}


def _run(python: str, code: str, timeout_s: float, read_back: tuple[str, ...] = ()) -> sandbox.Result:
    if python == sys.executable:
        return sandbox.run_python(code, timeout_s=timeout_s, mem_bytes=sandbox.mem_cap(MEM_BYTES), read_back=read_back)
    # Another interpreter (a virtual environment): its folder and its base installation must be
    # visible in the sandbox, which hides home and temporary directories.
    exe = Path(python)
    show = (str(exe.parent.parent), str(exe.resolve().parent.parent))
    return sandbox.run([python, "-I", "program.py"], timeout_s=timeout_s, mem_bytes=sandbox.mem_cap(MEM_BYTES),
                       files={"program.py": code.encode("utf-8")}, read_back=read_back, show=show)


def _probe(module: str, python: str) -> str:
    r = _run(python, _PRELUDE + f"import {module}\n", PROBE_TIMEOUT_S)
    if r.status == "passed":
        return ""
    if r.status == "timeout":
        return f"importing {module} took over {PROBE_TIMEOUT_S:.0f} s"
    last = (r.output.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    if f"No module named '{module}'" in last:
        return f"{module} is not installed"
    return f"{module} does not import: {last[:160]}"


def judge(problems: Benchmark | dict[str, dict], samples: list[dict], workers: int = 0,
          timeout_s: float = TIMEOUT_S, python: str = "") -> list[Verdict]:
    """Verdicts for `samples` ([{task_id, solution}], solutions already `postprocess`ed), in order.

    Each program runs in the sandbox under `python` (default: this interpreter), `workers` at a
    time (default: one per core). "not run" (with the reason): the problem's context needs a module
    that does not import there, or its test itself fails there (see the module docstring).
    """
    python = python or sys.executable
    probs = problems.problems if isinstance(problems, Benchmark) else problems
    if unknown := [s["task_id"] for s in samples if s["task_id"] not in probs]:
        raise ReproError(f"ds1000: {', '.join(map(str, unknown[:3]))} not a DS-1000 task id (DS1000/0 … DS1000/999)")
    needs = {s["task_id"]: required_modules(probs[s["task_id"]]) for s in samples}
    status = module_status(sorted({m for ms in needs.values() for m in ms}), workers, python)

    def one(s: dict) -> Verdict:
        p = probs[s["task_id"]]
        v = Verdict(p["task_id"], p["library"], p["metadata"]["perturbation_type"], "fail")
        if missing := [status[m] for m in needs[p["task_id"]] if status[m]]:
            v.status, v.reason = "not run", "; ".join(missing)
            return v
        t = time.monotonic()
        r = _run(python, program(p, s["solution"]), timeout_s, (VERDICT_FILE,))
        v.seconds = round(time.monotonic() - t, 2)
        if r.status == "timeout":
            v.status, v.reason = "timeout", f"no verdict within {timeout_s:g} s"
        elif VERDICT_FILE in r.files:
            out = json.loads(r.files[VERDICT_FILE])
            v.status, v.reason = out["status"], out.get("reason", "")
        else:
            last = (r.output.strip().splitlines() or [""])[-1][:200]
            v.reason = f"the program ended without a verdict (exit status {r.returncode}){': ' + last if last else ''}"
        return v

    with ThreadPoolExecutor(sandbox.workers(workers)) as pool:
        return list(pool.map(one, samples))


def summary(verdicts: list[Verdict]) -> dict:
    """pass@1 over the problems that ran, overall, per library and per perturbation type, with 95%
    Wilson intervals; "not run" problems are counted apart (with their reasons), never as failures.

    {"overall": row, "libraries": {library: row}, "perturbations": {type: row}}, each row
    {passed, ran, timeouts, not_run, pass@1 (None when none ran), ci95, not_run_reasons: {reason: n}}.
    """
    def row(vs: list[Verdict]) -> dict:
        ran = [v for v in vs if v.status != "not run"]
        k, n = sum(v.status == "pass" for v in ran), len(ran)
        reasons: dict[str, int] = {}
        for v in vs:
            if v.status == "not run":
                reasons[v.reason] = reasons.get(v.reason, 0) + 1
        return {"passed": k, "ran": n, "timeouts": sum(v.status == "timeout" for v in ran),
                "not_run": len(vs) - n, "pass@1": k / n if n else None, "ci95": list(wilson(k, n)),
                "not_run_reasons": reasons}

    libs = [lib for lib in LIBRARIES if any(v.library == lib for v in verdicts)]
    kinds = sorted({v.perturbation for v in verdicts})
    return {"overall": row(verdicts),
            "libraries": {lib: row([v for v in verdicts if v.library == lib]) for lib in libs},
            "perturbations": {k: row([v for v in verdicts if v.perturbation == k]) for k in kinds}}



