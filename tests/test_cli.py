"""The command line: bad input gets one clear line, exit status 2, and nothing in the run directory."""

import json
import subprocess
import sys
import time

import pytest

from repro.artifacts import ReproError, RunDir


def repro(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("args,words", [
    (["run", "--profile", "nope"], ["--profile 'nope' is unknown", "smoke"]),
    (["run", "--profile", "smoke", "--set", "generate.teacher=embedded:nope"], ["embedded:nope", "unknown"]),
    (["run", "--profile", "smoke", "--set", "train.student=/missing/student.gguf"], ["/missing/student.gguf"]),
    (["run", "--profile", "smoke", "--set", "seeds.num_seed=3"], ["seeds.num_seed"]),
])
def test_bad_settings_write_nothing(tmp_path, args, words):
    run_dir = tmp_path / "run"
    assert_one_line_error(repro(*args, "--run-dir", str(run_dir)), *words)
    assert not run_dir.exists()


def test_empty_source_tree_writes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    run_dir = tmp_path / "run"
    r = repro("seeds", "--profile", "smoke", "--set", f"seeds.source={tmp_path / 'src'}", "--run-dir", str(run_dir))
    assert_one_line_error(r, "no readable source files", "seeds.source")
    assert not (run_dir / "seeds.parquet").exists() and not (run_dir / "manifests" / "seeds.json").exists()


def test_stage_without_its_input_says_which_stage_to_run(tmp_path):
    r = repro("clean", "--profile", "smoke", "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(r, "pairs.jsonl is missing", "repro generate --profile smoke")


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.locked():
        with pytest.raises(ReproError, match="another repro process"):
            with RunDir(tmp_path / "run").locked():
                pass


# A process that fills a cache entry: waits its turn, and fills it only if nobody has; prints
# "made" or "reused" (two runs, or two test workers, wanting the same model at once).
FILLER = """
import os, sys, time
from pathlib import Path
from repro.artifacts import atomic_path, cache_lock
entry = Path(sys.argv[1])
with cache_lock(entry):
    if entry.exists():
        print("reused")
    else:
        time.sleep(1.0)
        with atomic_path(entry) as tmp:
            tmp.write_text(str(os.getpid()))
        print("made")
"""


def test_two_processes_wanting_one_cache_entry_take_turns_and_the_second_reuses_it(tmp_path):
    entry = tmp_path / "cache" / "models" / "m.gguf"
    first = subprocess.Popen([sys.executable, "-c", FILLER, str(entry)], stdout=subprocess.PIPE, text=True)
    lock, deadline = entry.parent / f".{entry.name}.lock", time.monotonic() + 30
    while not lock.exists():  # the first holds the lock before the second starts
        assert first.poll() is None and time.monotonic() < deadline, "the first filler never took the lock"
        time.sleep(0.01)
    second = subprocess.run([sys.executable, "-c", FILLER, str(entry)], capture_output=True, text=True)
    assert first.communicate()[0].strip() == "made" and first.returncode == 0
    assert second.stdout.strip() == "reused", second.stderr
    assert f"waiting for another process that is making {entry}" in second.stderr
    assert entry.read_text() == str(first.pid)
    assert sorted(p.name for p in entry.parent.iterdir()) == [".m.gguf.lock", "m.gguf"]


def test_writers_of_one_path_at_once_never_touch_each_others_temporary(tmp_path):
    import threading

    from repro.artifacts import atomic_path

    path, inside = tmp_path / "a.json", threading.Barrier(2)
    errors = []

    def write(text):
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
                inside.wait(timeout=10)  # both temporaries exist now
        except Exception as e:  # noqa: BLE001 - any error is the failure
            errors.append(e)

    threads = [threading.Thread(target=write, args=(c * 100_000,)) for c in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in ("x" * 100_000, "y" * 100_000)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path):
    import os

    from repro.artifacts import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for name in (f".tmp-a.json.{dead}.1", ".tmp-a.json", f".tmp-a.json.{os.getpid()}.7", f".tmp-a.jsonl.{dead}.1"):
        (tmp_path / name).write_text("half")
    write_text(tmp_path / "a.json", "{}")
    # The pid-less name is what versions before pids were in the name left; a.jsonl is another artifact.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-a.json.{os.getpid()}.7", f".tmp-a.jsonl.{dead}.1",
                                                          "a.json"]


def test_a_second_command_on_a_locked_run_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("".join(f"x{i} = {i}\n" for i in range(30)))
    run = RunDir(tmp_path / "run")
    with run.locked():  # as if another `repro` were working there
        r = repro("seeds", "--profile", "smoke", "--set", f"seeds.source={src}", "--run-dir", str(run.path))
    assert_one_line_error(r, str(run.path), "another repro process")
    assert not (run.path / "seeds.parquet").exists() and not run.manifest_path("seeds").exists()


def test_a_finished_stage_is_skipped_and_a_changed_setting_reruns_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("".join(f"x{i} = {i}\n" for i in range(30)))
    common = ["seeds", "--profile", "smoke", "--set", f"seeds.source={src}", "--run-dir", str(tmp_path / "run")]
    assert "✓ seeds" in repro(*common).stderr
    assert "seeds: up to date, skipped" in repro(*common).stderr
    assert "✓ seeds" in repro(*common, "--set", "seeds.random_seed=7").stderr


def test_unknown_quant_type_lists_the_valid_ones(tmp_path):
    from repro import export
    with pytest.raises(ReproError, match="not a llama.cpp file type; choose one of: .*q4_k_m"):
        export.quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "q3_nope", tmp_path / "log")


def test_full_eval_clears_the_profiles_subset():
    import json

    tiny = json.loads(repro("config", "--profile", "tiny").stdout)["evaluate"]
    full = json.loads(repro("config", "--profile", "tiny", "--full-eval").stdout)["evaluate"]
    assert tiny["stride"] == 6 and (full["stride"], full["limit"]) == (1, 0)
    # tiny leaves MultiPL-E and DS-1000 out; --full-eval puts them back, all of them
    assert tiny["multilingual"] == [] and full["multilingual"] == ["multipl-e", "ds1000"]
    assert full["multilingual_stride"] == 1
    own = json.loads(repro("config", "--profile", "tiny", "--full-eval", "--set", "evaluate.multilingual=ds1000").stdout)
    assert own["evaluate"]["multilingual"] == ["ds1000"]  # what the user set wins
    smoke = json.loads(repro("config", "--profile", "smoke", "--full-eval").stdout)["evaluate"]
    assert smoke["limit"] == 0


def test_an_input_its_stage_did_not_finish_is_used_with_a_note(tmp_path):
    """A killed generate leaves a partial pairs.jsonl; `repro clean` alone says so (and runs)."""
    run = tmp_path / "run"
    run.mkdir()
    row = {"seed_id": "a", "language": "python", "seed": "x = 1", "problem": "Add two numbers.",
           "solution": "```python\ndef add(a, b):\n    return a + b\n```"}
    (run / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    r = repro("clean", "--profile", "smoke", "--run-dir", str(run), "--set", "clean.benchmarks=humaneval")
    assert r.returncode == 0, r.stderr
    assert "was not finished by `repro generate`" in r.stderr + r.stdout
