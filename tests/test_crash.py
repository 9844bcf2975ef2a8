"""kill -9 anywhere loses nothing (issue 8).

Each stage runs through the real command line (`python -m repro.cli <stage> --profile smoke
--run-dir DIR --quiet --set ...`) in a subprocess, is killed with SIGKILL at KILLS points drawn
at random, and is then run again to the end; what it leaves must equal what an uninterrupted run
of the same command leaves in another directory.

Kill points: one point drawn in each KILLS-th of the uninterrupted run's work (timed from when it
started its work to when its manifest appeared), so that a stage that resumes has work left for
every later kill. Attempt k is watched from outside until it has started its work (for most
stages: until it has written output of its own, beyond what an earlier attempt left), then given
the time left to reach point k (by the share of the work done already: answers stored, steps
logged); if its last outputs appear first it is stopped at once. It is stopped with SIGSTOP,
checked (still running, no manifest: the stage had not finished; what it left is not torn), and
killed with SIGKILL, so the check sees exactly what the kill leaves. A try that the run outlives
anyway (a machine faster than when the uninterrupted run was timed) is not a kill: the directory
is put back as it was before that try, and the run tried again with a point halfway between where
it started and the drawn one. After the last kill the same command runs to the end, and must
leave no temporary (`.tmp-*`) file behind.

Reproducing a failure: the points come from random.Random(f"{SEED}:{stage}"), SEED being
$REPRO_CRASH_SEED (default 8). Every assertion message shows the seed, the points, each try, and
where the run was when it was killed (progress, and the `.tmp-*` files in the run directory).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from builders import MORE_ROWS, seeds_file, stdlib_pairs, validate_clean_file, write_clean

# Every test here runs a stage several times over: the kill -9 suite is in `make test-all` only.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("REPRO_CRASH_SEED", "8"))
KILLS = 3
POLL_S = 0.005
TIMEOUT_S = 300


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _args(stage: str, run_dir: Path, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "repro.cli", stage, "--profile", "smoke", "--run-dir", str(run_dir), "--quiet",
            *[a for s in sets for a in ("--set", s)]]


def _inode(p: Path):
    try:
        return p.stat().st_ino
    except FileNotFoundError:
        return None


def _lines(p: Path) -> list[dict]:
    """The complete lines of a JSON-lines file (a torn last line is left out)."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(x) for x in data.split(b"\n")[:-1] if x.strip()]


def _tmp_names(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".tmp-*"))


@dataclass
class Watch:
    """A stage's run as seen from outside, while it runs. `base` is taken before each launch."""
    baseline: Callable[[Path], object]
    started: Callable[[Path, object], bool]    # this launch has begun its work (written output of its own)
    # Kill now: its last outputs are appearing, or (generate) no more work than the `later` kills need is left.
    near_end: Callable[[Path, object, int], bool]
    left: Callable[[Path], float]              # share of the work still to do, 0..1
    where: Callable[[Path], str]               # progress, for messages
    intact: Callable[[Path], None]             # what a kill may leave: asserts no finished-looking file is torn


class Crasher:
    """Runs one stage's command uninterrupted, and killed KILLS times then finished, and keeps a log."""

    def __init__(self, stage: str, sets: list[str], watch: Watch):
        self.stage, self.sets, self.watch = stage, sets, watch
        self.rng = random.Random(f"{SEED}:{stage}")
        self.window = 0.0
        self.log = [f"REPRO_CRASH_SEED={SEED}, stage {stage}"]

    def msg(self) -> str:
        return "\n  ".join(self.log)

    def _launch(self, run_dir: Path, err: Path) -> subprocess.Popen:
        with open(err, "wb") as f:
            return subprocess.Popen(_args(self.stage, run_dir, self.sets), stdout=subprocess.DEVNULL, stderr=f,
                                    env=_env(), cwd=ROOT)

    def _manifest(self, run_dir: Path) -> Path:
        return run_dir / "manifests" / f"{self.stage}.json"

    def uninterrupted(self, run_dir: Path) -> None:
        """Run to the end; time its work from 'started' on (the kills' delays are shares of it)."""
        base = self.watch.baseline(run_dir)
        err = run_dir.parent / f"{run_dir.name}.stderr"
        t0 = time.monotonic()
        p, t_started, t_done = self._launch(run_dir, err), None, None
        try:
            while p.poll() is None:
                if t_started is None and self.watch.started(run_dir, base):
                    t_started = time.monotonic()
                if t_done is None and self._manifest(run_dir).exists():
                    t_done = time.monotonic()
                time.sleep(POLL_S)
                assert time.monotonic() - t0 < TIMEOUT_S, "the uninterrupted run hangs"
        finally:
            p.kill()
            p.wait()
        assert p.returncode == 0, err.read_text()[-3000:]
        t_done = t_done or time.monotonic()
        self.window = t_done - (t_started or t0)
        self.log.append(f"uninterrupted: {time.monotonic() - t0:.1f} s; its work, from when it started "
                        f"(see the Watch) to its manifest, {self.window:.2f} s")

    def kill(self, run_dir: Path, n: int, point: float) -> None:
        """Kill -9 one launch mid-work, at `point` (0..1) of the uninterrupted run's work, or as soon
        as it has started if it already is past that point; a draw the run outlives is retried
        halfway between where it started and the point."""
        err = run_dir.parent / f"{run_dir.name}.stderr"
        snap = run_dir.parent / f"{run_dir.name}.before-kill-{n}"
        shutil.copytree(run_dir, snap, symlinks=True)
        for _ in range(4):
            base = self.watch.baseline(run_dir)
            t0 = time.monotonic()
            p = self._launch(run_dir, err)
            try:
                while not self.watch.started(run_dir, base):
                    assert p.poll() is None, (f"kill {n}: the run ended (status {p.returncode}) before it "
                                              f"started its work\n  {self.msg()}\n{err.read_text()[-3000:]}")
                    assert time.monotonic() - t0 < TIMEOUT_S, (f"kill {n}: the run did not start its work in "
                                                               f"{TIMEOUT_S} s\n  {self.msg()}")
                    time.sleep(POLL_S)
                done = 1 - self.watch.left(run_dir)
                delay = max(0.0, point - done) * self.window
                t1 = time.monotonic()
                while (time.monotonic() - t1 < delay and p.poll() is None
                       and not self.watch.near_end(run_dir, base, KILLS - n)):
                    time.sleep(POLL_S)
                p.send_signal(signal.SIGSTOP)  # frozen: what is on disk now is what the kill leaves
                alive, finished = p.poll() is None, self._manifest(run_dir).exists()
                where = f"{self.watch.where(run_dir)}, temporary files {_tmp_names(run_dir) or 'none'}"
            finally:
                p.send_signal(signal.SIGKILL)
                p.wait()
            draw = (f"kill {n} at {point:.3f} of the work: started at {done:.2f}, so {delay:.2f} s later; "
                    f"killed {time.monotonic() - t1:.2f} s after it started")
            if alive and not finished:
                self.log.append(f"{draw}, at: {where}")
                try:
                    self.watch.intact(run_dir)
                except AssertionError as e:
                    raise AssertionError(f"after {draw}: {e}\n  {self.msg()}") from None
                shutil.rmtree(snap)
                return
            assert p.returncode in (0, -signal.SIGKILL), (f"kill {n}: the run failed (status {p.returncode})\n  "
                                                          f"{self.msg()}\n{err.read_text()[-3000:]}")
            self.log.append(f"{draw}: the run had finished first; restored, and tried again")
            point = done + (point - done) / 2
            shutil.rmtree(run_dir)
            shutil.copytree(snap, run_dir, symlinks=True)
        pytest.fail(f"kill {n}: four tries in a row came after the run had finished\n  {self.msg()}")

    def finish(self, run_dir: Path) -> None:
        r = subprocess.run(_args(self.stage, run_dir, self.sets), capture_output=True, text=True, env=_env(), cwd=ROOT)
        assert r.returncode == 0, f"the rerun after the kills failed\n  {self.msg()}\n{r.stderr[-3000:]}"
        assert _tmp_names(run_dir) == [], f"temporary files left behind\n  {self.msg()}"

    def crash_and_finish(self, whole: Path, crashed: Path) -> None:
        self.uninterrupted(whole)
        # Points in the uninterrupted run's work, one in each KILLS-th of it, in order: a stage that
        # resumes has work left for every later kill (clean starts over each time).
        points = [(k + self.rng.uniform(0.02, 0.98)) / KILLS for k in range(KILLS)]
        self.log.append("kill points: " + ", ".join(f"{x:.3f}" for x in points))
        for n, point in enumerate(points, 1):
            self.kill(crashed, n, point)
        self.finish(crashed)
        a, b = (json.loads(self._manifest(d).read_text()) for d in (whole, crashed))
        assert a["fingerprint"] == b["fingerprint"], self.msg()
        print(self.msg())  # where the kills landed: shown with pytest -s or -rP


def _one(rows: list[dict], key: str) -> list:
    return [r[key] for r in rows]


# ---------------------------------------------------------------------------------------------
# generate: the real embedded teacher, a short prompt, answers cut short (stored as rejections:
# still answers, each under its key)


GEN_SEEDS = 10
GEN_PARALLEL = 2


def store_watch(rows: Callable[[Path], list[dict]], total: int,
                also_intact: Callable[[Path], None] = lambda d: None) -> Watch:
    """The Watch of a stage that stores the teacher's answers one line per key (generate, validate)."""
    def intact(d: Path) -> None:
        keys = _one(rows(d), "key")
        assert len(keys) == len(set(keys)), f"a key stored twice: {sorted(keys)}"
        also_intact(d)

    return Watch(baseline=lambda d: len(rows(d)),
                 started=lambda d, base: len(rows(d)) > base,
                 # Answers land a batch at a time: leave one batch in flight for this kill and each later one.
                 near_end=lambda d, base, later: len(rows(d)) >= total - GEN_PARALLEL * (1 + later),
                 left=lambda d: (total - len(rows(d))) / total,
                 where=lambda d: f"{len(rows(d))} of {total} answers stored",
                 intact=intact)


@pytest.mark.e2e
def test_generate_killed_3_times_then_rerun_stores_every_key_exactly_once(tmp_path):
    """Generation is not byte-deterministic (answers are stored in the order they finish, and batched
    decoding may pick another token where a sequence shares a batch with others), so what is compared
    is the store: every seed's key exactly once, no other key, and each row's deterministic fields
    (seed, prompt hash, model, settings hash) as the uninterrupted run made them."""
    template = tmp_path / "short.txt"  # a tenth of oss_instruct.txt's tokens: the prompts are read faster
    template.write_text("You write programming problems.\n---\n"
                        "Write a problem about this {language} code:\n{snippet}\n")
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for d in (whole, crashed):
        seeds_file(d / "seeds.parquet", GEN_SEEDS, lambda i: f"def f{i}(x):\n    return x * {i}\n")

    def rows(d: Path) -> list[dict]:
        return _lines(d / "pairs.jsonl") + _lines(d / "rejected.jsonl")

    watch = store_watch(rows, GEN_SEEDS)
    c = Crasher("generate", [f"generate.prompt={template}", "generate.max_tokens=8",
                             f"generate.parallel={GEN_PARALLEL}", "generate.threads=1"], watch)
    c.crash_and_finish(whole, crashed)

    fields = ("key", "seed_id", "prompt_hash", "model", "params_hash", "seed", "max_tokens", "backend")
    got, want = ({r["key"]: {k: r.get(k) for k in fields} for r in rows(d)} for d in (crashed, whole))
    keys = _one(rows(crashed), "key")
    assert len(keys) == len(set(keys)) == GEN_SEEDS, c.msg()
    assert got == want, c.msg()
    assert not (crashed / "errors.jsonl").exists(), c.msg()
    stats = json.loads((crashed / "manifests" / "generate.json").read_text())["stats"]
    assert stats["resumed_from"] + stats["generated"] == GEN_SEEDS and stats["resumed_from"] > 0, c.msg()


# ---------------------------------------------------------------------------------------------
# validate: the real teacher writes (short) tests; its answers are stored under their keys, so a
# killed stage asks again only for the rest, and its artifacts are whole or absent


VAL_PAIRS = 10


@pytest.mark.e2e
def test_validate_killed_3_times_then_rerun_asks_for_every_test_exactly_once(tmp_path):
    """As generate's, the teacher's answers are compared by key (batched decoding is not
    byte-deterministic); the verdicts must cover every pair once, and validated.parquet be whole."""
    template = tmp_path / "tests.txt"  # short: the prompts are read faster
    template.write_text("You write tests.\n---\nWrite {language} asserts ({assert_hint}) for:\n{problem}\n{code}\n")
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for d in (whole, crashed):
        d.mkdir()
        validate_clean_file(d / "clean.parquet", {f"p{i}": ("python", f"```python\ndef f{i}(x):\n    return x * {i}\n```")
                                         for i in range(VAL_PAIRS)})

    def rows(d: Path) -> list[dict]:
        return _lines(d / "validate-answers.jsonl")

    def whole_artifacts(d: Path) -> None:
        assert not (d / "validated.parquet").exists() or (d / "validation.jsonl").exists()

    watch = store_watch(rows, VAL_PAIRS, whole_artifacts)
    c = Crasher("validate", [f"validate.prompt={template}", "validate.max_tokens=8", f"generate.parallel={GEN_PARALLEL}",
                             "generate.threads=1"], watch)
    c.crash_and_finish(whole, crashed)
    assert sorted(_one(rows(crashed), "key")) == sorted(_one(rows(whole), "key")), c.msg()
    verdicts = _lines(crashed / "validation.jsonl")
    assert sorted(_one(verdicts, "seed_id")) == [f"p{i}" for i in range(VAL_PAIRS)], c.msg()
    stats = json.loads((crashed / "manifests" / "validate.json").read_text())["stats"]
    assert stats["teacher"]["tests"]["reused"] > 0 and stats["pairs_in"] == VAL_PAIRS, c.msg()


# ---------------------------------------------------------------------------------------------
# clean: pairs from the standard library, with a duplicate and a HumanEval copy to remove


def test_clean_killed_3_times_then_rerun_gives_the_same_files(tmp_path):
    """clean has no partial output: its four files are written (each atomically) at its end. So a
    kill point is a random time after the stage began (the CLI wrote run.json, under the run's
    lock), and what is checked after each kill is that every output present is whole. The rerun's
    clean.parquet and removed.parquet equal the uninterrupted run's byte for byte; the reports
    equal it except the seconds each step took."""
    import pyarrow.parquet as pq

    from repro.data.benchmarks import humaneval

    rows = stdlib_pairs(80)
    he = humaneval()[0]
    rows += [dict(rows[3], seed_id="dup-of-3"),
             {"seed_id": "he-0", "seed": "x", "problem": he["prompt"], "solution": he["canonical_solution"]}]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for d in (whole, crashed):
        d.mkdir()
        (d / "pairs.jsonl").write_text("".join(json.dumps({"language": "python", "path": "f.py", **r}) + "\n"
                                               for r in rows))
    outputs = ["clean.parquet", "removed.parquet", "decontamination.json", "decontamination.md"]

    def intact(d: Path) -> None:
        for name in outputs:
            p = d / name
            if p.exists():
                if p.suffix == ".parquet":
                    pq.read_table(p)
                elif p.suffix == ".json":
                    json.loads(p.read_text())
                else:
                    assert p.read_text().endswith("\n"), f"{name} is cut short"

    watch = Watch(baseline=lambda d: [_inode(d / n) for n in ["run.json"] + outputs],
                  started=lambda d, base: _inode(d / "run.json") not in (None, base[0]),
                  near_end=lambda d, base, later: any(_inode(d / n) not in (None, b)
                                                      for n, b in zip(outputs, base[1:])),
                  left=lambda d: 1.0,
                  where=lambda d: "outputs present: " + (", ".join(n for n in outputs if (d / n).exists()) or "none"),
                  intact=intact)
    c = Crasher("clean", [], watch)
    c.crash_and_finish(whole, crashed)

    for name in ("clean.parquet", "removed.parquet"):
        assert (crashed / name).read_bytes() == (whole / name).read_bytes(), f"{name} differs\n  {c.msg()}"
    removed = pq.read_table(crashed / "removed.parquet").column("seed_id").to_pylist()
    assert "dup-of-3" in removed and "he-0" in removed, c.msg()  # the run removed what it should have
    a, b = (json.loads((d / "decontamination.json").read_text()) for d in (whole, crashed))
    assert {**a, "seconds": None} == {**b, "seconds": None}, c.msg()
    md = [[x for x in (d / "decontamination.md").read_text().splitlines() if not x.startswith("Seconds per step")]
          for d in (whole, crashed)]
    assert md[0] == md[1], c.msg()


# ---------------------------------------------------------------------------------------------
# train: a small student built from a config, a checkpoint every other step


TRAIN_STEPS = 30
TRAIN_SETTINGS = [f"train.max_steps={TRAIN_STEPS}", "train.batch_size=2", "train.save_every=2", "train.lr=0.01",
                  "train.warmup_steps=2", "train.lora_r=32", "train.lora_alpha=64",
                  "train.lora_dropout=0.1",  # dropout draws from torch's RNG: its state must resume too
                  "train.precision=fp32", "train.device=cpu", "train.max_len=256", "train.threads=1"]


@pytest.fixture
def small_student(tmp_path, tiny_tokenizer):
    """A four-layer Gemma 3 built from a config (no download): big enough that a step takes tens of
    milliseconds and a checkpoint (LoRA r=32 weights and AdamW state, ~6 MB) is written in about as
    long, so kills by time land in steps, in checkpoint writes and in the adapter's write."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=512,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                           max_position_embeddings=256, sliding_window=64, initializer_range=0.1)
    d = tmp_path / "student"
    Gemma3ForCausalLM(cfg).float().save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def test_train_killed_3_times_then_rerun_gives_the_same_adapter_and_loss_curve(tmp_path, small_student):
    """Training on the CPU in fp32 from the same checkpoint is deterministic: the adapter's tensors
    must be equal (torch.equal) and the loss log equal in step, loss, lr and tokens (its seconds,
    tokens/s and memory are measurements)."""
    import torch
    from safetensors.torch import load_file

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for d in (whole, crashed):
        write_clean(d / "clean.parquet", MORE_ROWS)

    def steps(d: Path) -> int:
        return max((r["step"] for r in _lines(d / "train_log.jsonl")), default=0)

    def checkpoint_step(d: Path) -> int:
        return max((int(p.name.split("-")[1]) for p in (d / "train_ckpt").glob("step-*")), default=0)

    def intact(d: Path) -> None:
        if (d / "adapter").exists():
            load_file(d / "adapter" / "adapter_model.safetensors")
        rows = _lines(d / "train_log.jsonl")
        assert _one(rows, "step") == list(range(1, len(rows) + 1)), "the loss log skips or repeats a step"

    watch = Watch(
        # This launch's log: the file is rewritten (a new inode) before the first step, keeping the
        # rows up to the checkpoint it resumes from; started once a row beyond them is there.
        baseline=lambda d: (_inode(d / "train_log.jsonl"), checkpoint_step(d), _inode(d / "adapter")),
        started=lambda d, base: _inode(d / "train_log.jsonl") not in (None, base[0]) and steps(d) > base[1],
        near_end=lambda d, base, later: _inode(d / "adapter") not in (None, base[2]),
        left=lambda d: max(0.1, 1 - steps(d) / TRAIN_STEPS),
        where=lambda d: f"step {steps(d)} of {TRAIN_STEPS} logged, checkpoints "
                        f"{sorted(p.name for p in (d / 'train_ckpt').glob('*'))}, "
                        f"adapter {'written' if (d / 'adapter').exists() else 'not written'}",
        intact=intact)
    c = Crasher("train", [f"train.student={small_student}", *TRAIN_SETTINGS], watch)
    c.crash_and_finish(whole, crashed)

    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (whole, crashed))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), c.msg()
    same = ("step", "loss", "lr", "tokens")
    logs = [[{k: r[k] for k in same} for r in _lines(d / "train_log.jsonl")] for d in (whole, crashed)]
    assert logs[1] == logs[0] and len(logs[0]) == TRAIN_STEPS, c.msg()
    assert not (crashed / "train_ckpt").exists(), c.msg()


# ---------------------------------------------------------------------------------------------
# evaluate: the embedded base student on the first HumanEval(+) problems, answers kept in the run


EVAL_N = 6
EVAL_SETTINGS = ["evaluate.models=base", "evaluate.benchmarks=humaneval", f"evaluate.limit={EVAL_N}",
                 "evaluate.multilingual=",  # MultiPL-E and DS-1000 answers resume the same way (their
                                            # own answers.jsonl); their toolchain probes would cost more
                 "evaluate.max_tokens=32", "evaluate.cache=false",  # the answers are the run's, not shared
                 "evaluate.parallel=1",  # one sequence at a time: the same answers whatever was decoded before
                 "evaluate.threads=2", "evaluate.workers=2"]


@pytest.mark.e2e
def test_evaluate_killed_3_times_then_rerun_gives_the_same_answers_and_verdicts(tmp_path):
    """The real stage with the base student (the fine-tuned model's file is an input of the stage,
    here a stand-in, as only `base` is evaluated). Greedy decoding one sequence at a time is
    deterministic, so the answers and samples must be equal; the verdicts too (a program's verdict
    could only change by a timeout, on a machine loaded far beyond this one). Not compared: the
    date in eval_results.json, and in results.json the counts of answers made now vs. reused and the
    decoding speed."""
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for d in (whole, crashed):
        d.mkdir()
        (d / "model-q4_k_m.gguf").write_bytes(b"stand-in: evaluate.models=base does not read it")
    sub = Path("eval") / "base" / "humaneval"

    def answers(d: Path) -> int:
        return len(_lines(d / sub / "answers.jsonl"))

    def intact(d: Path) -> None:
        rows = _lines(d / sub / "answers.jsonl")
        assert len(rows) == len({r["task_id"] for r in rows}), "an answer stored twice"
        for name in (sub / "samples.jsonl", sub / "eval_results.json", Path("eval") / "results.json"):
            if (d / name).exists():  # written whole or not at all: it parses, every line of it
                text = (d / name).read_text()
                for part in text.splitlines() if name.suffix == ".jsonl" else [text]:
                    json.loads(part)

    watch = Watch(baseline=lambda d: (answers(d), _inode(d / sub / "samples.jsonl"),
                                      _inode(d / sub / "eval_results.json")),
                  # A new answer, or (every answer there already) the samples, written before the programs run.
                  started=lambda d, base: (answers(d) > base[0]
                                           or _inode(d / sub / "samples.jsonl") not in (None, base[1])),
                  near_end=lambda d, base, later: _inode(d / sub / "eval_results.json") not in (None, base[2]),
                  # Decoding took ~4/5 of the uninterrupted run's work, running the programs the rest.
                  left=lambda d: 1 - 0.8 * answers(d) / EVAL_N,
                  where=lambda d: f"{answers(d)} of {EVAL_N} answers, "
                                  + ("samples written" if (d / sub / "samples.jsonl").exists() else "no samples yet"),
                  intact=intact)
    c = Crasher("evaluate", EVAL_SETTINGS, watch)
    c.crash_and_finish(whole, crashed)

    assert _lines(crashed / sub / "answers.jsonl") == _lines(whole / sub / "answers.jsonl"), c.msg()
    assert (crashed / sub / "samples.jsonl").read_bytes() == (whole / sub / "samples.jsonl").read_bytes(), c.msg()
    a, b = (json.loads((d / sub / "eval_results.json").read_text()) for d in (whole, crashed))
    assert {**a, "date": None} == {**b, "date": None}, c.msg()

    def results(d: Path) -> dict:
        r = json.loads((d / "eval" / "results.json").read_text())
        for k in ("generated", "reused", "tokens_per_second", "threads"):
            r["models"]["base"].pop(k)
        return r

    assert results(crashed) == results(whole), c.msg()
    assert json.loads((crashed / "manifests" / "evaluate.json").read_text())["stats"]["models"]["base"]["reused"] > 0
