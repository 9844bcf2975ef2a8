import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import generate
from repro.artifacts import ReproError
from repro.config import GenerateConfig
from builders import seeds_file


@pytest.mark.parametrize("text", [
    "[Problem Description]\nAdd two numbers.\n\n[Solution]\n```python\ndef add(a, b):\n    return a + b\n```",
    "### [Problem Description]\nAdd two numbers.\n### [Solution]\n```python\ndef add(a, b):\n    return a + b\n```",
    "### Problem Description\n\nAdd two numbers.\n\n### Solution\n\n```python\ndef add(a, b):\n    return a + b\n```",
    "**Problem Description:**\nAdd two numbers.\n**Solution:**\n```python\ndef add(a, b):\n    return a + b\n```",
])
def test_parse_finds_both_sections(text):
    problem, solution = generate.parse(text)
    assert problem == "Add two numbers."
    assert solution.startswith("```python") and "return a + b" in solution


@pytest.mark.parametrize("text,problem,solution", [
    ("[Problem Description]\n**Task**: Add two numbers.\n\n[Solution]\n**Approach**: add them.",
     "**Task**: Add two numbers.", "**Approach**: add them."),
    ("**[Problem Description]**\nAdd *a* and **b**.\n\n---\n\n**[Solution]**:\nIt is **O(1)**",
     "Add *a* and **b**.", "It is **O(1)**"),
    ("### [Problem Description]: Add two numbers.\n### [Solution]\n* one\n* two\n\n---\n",
     "Add two numbers.", "* one\n* two"),
    ("## Problem Description\n\n**Input**: `a`\n**Output**: `b`\n\n## Solution:\n```\nb\n```",
     "**Input**: `a`\n**Output**: `b`", "```\nb\n```"),
])
def test_parse_keeps_the_sections_own_markdown(text, problem, solution):
    """Only the decoration of the headings goes; a section that starts or ends in Markdown keeps it."""
    assert generate.parse(text) == (problem, solution)


# Real answers of the embedded teacher (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) to the `tiny` profile's
# seeds, as generate stored them (`raw`): the shapes the parser meets in practice.
TEACHER_ANSWERS = Path(__file__).parent / "fixtures" / "teacher_answers.jsonl"
HEADING_END = {"problem": re.compile(r"problem\s+description\s*\]?[*_:# \t]*(?:\n[ \t]*)*\Z", re.I),
               "solution": re.compile(r"solution\s*\]?[*_:# \t]*(?:\n[ \t]*)*\Z", re.I)}


def test_real_teacher_answers_keep_the_text_after_each_heading_byte_for_byte():
    answers = [json.loads(line) for line in TEACHER_ANSWERS.read_text().splitlines()]
    parsed = [(a["raw"], generate.parse(a["raw"])) for a in answers]
    parsed = [(raw, p) for raw, p in parsed if p]
    assert len(answers) >= 30 and len(parsed) >= 30
    starts_bold = 0
    for raw, (problem, solution) in parsed:
        i = raw.find(problem)
        j = raw.find(solution, i + len(problem))
        assert i >= 0 and j >= 0, raw[:300]  # both are the answer's own bytes
        # Between a heading and its text: the rest of the heading's line and blank lines, nothing else.
        assert HEADING_END["problem"].search(raw[:i]), raw[:i + 80]
        assert HEADING_END["solution"].search(raw[:j]), raw[i:j + 80]
        # After a section's text: only decoration up to the next heading, or to the end.
        between = raw[i + len(problem):j]
        before_heading = re.sub(r"(?i)\[?[ \t]*solution\s*\]?[*_:# \t]*(?:\n[ \t]*)*\Z", "", between)
        assert re.fullmatch(r"[\s*_#>:-]*", before_heading), between
        assert re.fullmatch(r"[\s*_#-]*", raw[j + len(solution):]), raw[j:]
        assert not problem.startswith(("Task**", "*:", "**:"))
        for text in (problem, solution):  # no emphasis cut in half at either end
            lines = text.splitlines()
            assert lines[0].count("**") % 2 == 0 and lines[-1].count("**") % 2 == 0, (lines[0], lines[-1])
        starts_bold += problem.startswith("**")
    assert starts_bold > 0  # the teacher's usual "**Task**:" opening is among them, and kept


@pytest.mark.parametrize("text", [
    "[Problem Description]\nAdd two numbers.",                     # no solution
    "[Solution]\nx = 1\n[Problem Description]\nAdd two numbers.",  # wrong order
    "[Problem Description]\n\n[Solution]\n   ",                    # empty sections
    "Here is a problem about the solution of equations.",         # words in prose are not headings
])
def test_parse_rejects_incomplete_answers(text):
    assert generate.parse(text) is None


def test_snippet_braces_survive_rendering():
    system, user = generate.load_prompt("oss_instruct.txt")
    out = generate.render(user, "rust", "fn f() { let x = {a}; }")
    assert "fn f() { let x = {a}; }" in out and "```rust" in out and system


def test_bad_template_is_a_user_error(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("no separator here {snippet}")
    with pytest.raises(ReproError, match="---"):
        generate.load_prompt(str(p))


@pytest.mark.parametrize("text, verdict", [
    ('{"problem": "Add two numbers.", "solution": "def add(a, b): return a + b"}',
     ("Add two numbers.", "def add(a, b): return a + b")),
    ('{"problem": "Add two numbers.", "solution": "def add(a, b): ret', "not a JSON object"),  # cut short
    ('{"problem": "Add.", "solution": "def add(a, b):\n    return a + b"}',  # a raw line break: taken
     ("Add.", "def add(a, b):\n    return a + b")),
    ('{"problem": "", "solution": "x"}', "not a JSON object"),
    ('["problem", "solution"]', "not a JSON object"),
])
def test_structured_answers_are_parsed_as_json(text, verdict):
    got = generate.judge(text, "stop", "json")
    assert got == verdict if isinstance(verdict, tuple) else got.startswith(verdict)


@pytest.mark.parametrize("text, finish, reason", [
    ("", "stop", "empty answer"), ("  \n", "stop", "empty answer"),
    ("lorem ipsum", "stop", "missing [Problem Description] or [Solution]"),
    ("[Problem Description]\nx\n[Solution]\ny", "length", "finish_reason=length"),
])
def test_empty_or_garbage_answers_are_rejected_with_a_reason(text, finish, reason):
    assert generate.judge(text, finish, "") == reason


def test_default_answer_budget_is_the_papers():
    cfg = GenerateConfig(n_ctx=8192)
    assert cfg.max_tokens == 0
    assert generate.max_new_tokens(cfg, 300) == 2500                  # min(2500, ...)
    assert generate.max_new_tokens(GenerateConfig(n_ctx=2048), 300) == 1748  # ... context - prompt)
    assert generate.max_new_tokens(GenerateConfig(max_tokens=64), 300) == 64
    assert generate.prompt_limit(GenerateConfig(n_ctx=2048)) == 1024  # the answer keeps at least half


# ---------------------------------------------------------------------------------------------
# Seeds longer than the context: cut at the tail by tokens, with the real teacher's vocabulary


@pytest.fixture(scope="module")
def teacher_tokenizer():
    from repro.engine import Tokenizer, load_vocab
    from repro.models import resolve

    vocab = load_vocab(resolve(GenerateConfig().teacher))  # no weights: loads in a moment
    yield Tokenizer(vocab)
    vocab.close()


def test_a_seed_too_long_for_the_context_is_cut_at_its_tail(teacher_tokenizer):
    tok = teacher_tokenizer
    system, user = generate.load_prompt("oss_instruct.txt")
    snippet = "".join(f"value_{i} = compute({i}, 'é{i}')\n" for i in range(200))  # ~2,800 tokens
    cfg = GenerateConfig(n_ctx=1024, max_tokens=256)
    f = generate.fit(tok, cfg, system, user, "python", snippet)
    assert f.seed_tokens_kept < f.seed_tokens == len(tok.tokenize(snippet))
    assert snippet.startswith(f.seed) and len(f.seed) < len(snippet)
    assert generate.prompt_limit(cfg) - 8 <= f.prompt_tokens <= generate.prompt_limit(cfg) == 768
    assert "[Solution]" in f.messages[1]["content"]  # the template is kept whole
    short = generate.fit(tok, cfg, system, user, "python", "x = 1")
    assert short.seed == "x = 1" and short.seed_tokens is None


def test_a_template_too_long_for_the_context_is_no_fit(teacher_tokenizer):
    system, user = generate.load_prompt("oss_instruct.txt")
    assert generate.fit(teacher_tokenizer, GenerateConfig(n_ctx=250, max_tokens=100), system, user,
                        "python", "x = 1") is None


# ---------------------------------------------------------------------------------------------
# The store


def _row(key, **kw):
    return json.dumps({"key": key, "seed_id": key.split("/")[0], **kw}) + "\n"


def test_store_keeps_current_keys_once_and_drops_the_rest(tmp_path):
    pairs, rejected = tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"
    pairs.write_text(_row("s0/a") + _row("s1/old-settings") + "not json\n" + _row("s0/a") + '{"key": "s2/a", "se')
    rejected.write_text(_row("s3/a"))
    done = generate.open_store([pairs, rejected], {"s0/a", "s1/a", "s2/a", "s3/a"})
    assert done == {"s0/a", "s3/a"}
    assert [json.loads(x)["key"] for x in pairs.read_text().splitlines()] == ["s0/a"]
    assert rejected.read_text() == _row("s3/a")  # untouched


def _keys(*paths):
    return [json.loads(line)["key"] for p in paths if p.exists() for line in p.read_text().splitlines()]


@pytest.mark.e2e
def test_rerun_asks_only_for_missing_keys_and_other_settings_start_over(tmp_path):
    seeds = seeds_file(tmp_path / "seeds.parquet", 2)
    pairs, rejected = tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"
    cfg = GenerateConfig(max_tokens=8, threads=1)  # too short to finish: rejected fast, still a stored answer
    first = generate.run(cfg, seeds, pairs, rejected)
    assert first["generated"] == 2 and first["rejected_by_reason"] == {"finish_reason=length": 2}
    row = json.loads(rejected.read_text().splitlines()[0])
    assert row["model"] == models_sha() and row["finish_reason"] == "length" and row["completion_tokens"] == 8
    assert {"prompt_hash", "params_hash", "seconds", "prompt_tokens", "seed_truncated"} <= set(row)
    # Lose the second answer to a torn write; the rerun asks for it alone.
    lines = rejected.read_text().splitlines(keepends=True)
    rejected.write_text(lines[0] + lines[1][:40])
    again = generate.run(cfg, seeds, pairs, rejected)
    assert (again["resumed_from"], again["generated"]) == (1, 1)
    assert sorted(_keys(pairs, rejected)) == sorted(k for k in first_keys(lines))
    # Another answer budget is another key: nothing is reused, nothing stale is left.
    other = generate.run(GenerateConfig(max_tokens=9, threads=1), seeds, pairs, rejected)
    assert (other["resumed_from"], other["generated"]) == (0, 2)
    assert len(set(_keys(pairs, rejected)) & set(first_keys(lines))) == 0 and len(_keys(pairs, rejected)) == 2


def first_keys(lines):
    return [json.loads(x)["key"] for x in lines]


def models_sha():
    from repro.models import EMBEDDED
    return EMBEDDED[GenerateConfig().teacher.removeprefix("embedded:")].sha256


@pytest.mark.e2e
def test_kill_9_mid_run_then_rerun_stores_every_key_exactly_once(tmp_path):
    """A real `repro generate` killed with SIGKILL once answers start to land; the rerun finishes."""
    run_dir = tmp_path / "run"
    n = 6
    seeds_file(run_dir / "seeds.parquet", n, lambda i: f"def f{i}(x):\n    return x * {i}\n")
    args = [sys.executable, "-m", "repro.cli", "generate", "--profile", "smoke", "--run-dir", str(run_dir), "--quiet",
            "--set", "generate.max_tokens=24", "--set", "generate.parallel=2", "--set", "generate.threads=1"]
    store = [run_dir / "pairs.jsonl", run_dir / "rejected.jsonl"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(_keys(*store)) < 2 and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_with = _keys(*store)
    assert 2 <= len(killed_with) < n, "the run was not killed mid-run"
    with open(store[1], "a") as f:  # as if the kill had hit an append halfway
        f.write('{"key": "s5/torn", "raw": "half an ans')
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    keys = _keys(*store)
    assert len(keys) == len(set(keys)) == n
    assert set(killed_with) <= set(keys)  # answers from before the kill were kept, not redone
    manifest = json.loads((run_dir / "manifests" / "generate.json").read_text())["stats"]
    assert manifest["resumed_from"] == len(killed_with) and manifest["generated"] == n - len(killed_with)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("sets, words", [
    (["generate.backend=openai", "generate.base_url=http://127.0.0.1:9/v1"],
     ["generate.base_url=http://127.0.0.1:9/v1", "no OpenAI-compatible server answers", "repro.serve"]),
    (["generate.backend=openai"], ["generate.base_url is empty"]),
    (["generate.structured=yaml"], ["generate.structured='yaml'"]),
    (["generate.max_tokens=4096"], ["generate.max_tokens=4096", "generate.n_ctx=2048"]),
    (["generate.teacher={corrupt}"], ["generate.teacher=", "not a GGUF file"]),
    (["generate.teacher=/missing/teacher.gguf"], ["/missing/teacher.gguf", "no such file"]),
    (["generate.extra_body=[1]"], ["generate.extra_body", "JSON object"]),
])
def test_bad_generate_input_is_one_line_and_writes_nothing(tmp_path, sets, words):
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"<html>not a model</html>" * 100)
    run_dir = tmp_path / "run"
    seeds_file(run_dir / "seeds.parquet", 1)
    r = _cli("generate", "--profile", "smoke", "--run-dir", str(run_dir),
             *[x for s in sets for x in ("--set", s.format(corrupt=corrupt))])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0]
    # Nothing but the command's own log, which keeps the error line.
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.txt", "seeds.parquet"]
    assert lines[0] in (run_dir / "log.txt").read_text()


def test_a_truncated_model_file_is_one_line(tmp_path):
    from repro.models import resolve

    part = tmp_path / "part.gguf"
    with open(resolve(GenerateConfig().teacher), "rb") as f:
        part.write_bytes(f.read(1 << 20))  # a download cut short: the right magic, then nothing
    seeds = seeds_file(tmp_path / "seeds.parquet", 1)
    with pytest.raises(ReproError, match="truncated or damaged GGUF.*download or export it again"):
        generate.run(GenerateConfig(teacher=str(part)), seeds, tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl")
    assert not (tmp_path / "pairs.jsonl").exists()
