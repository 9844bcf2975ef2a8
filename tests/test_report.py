"""The report stage: every section, its figures as PNG data URIs, "not run yet" for stages that
have not run, the HTML in a real headless Chromium, and the category analysis (TF-IDF always; the
teacher's embeddings where its GGUF is here).

Most tests render a synthetic run directory (small fake artifacts, real manifests); the last one
renders a real `smoke` run (in tests/test_e2e.py, which makes one smoke run for all).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repro import report
from repro.report import categories
from repro.pipeline import STAGES
from repro.artifacts import ReproError, RunDir, write_json
from repro.config import ReportConfig
from builders import FIGURES, SECTIONS, report_images

PROBLEMS = [  # (language, problem, solution code)
    ("python", "Write a SQL query that joins the orders and users tables and counts orders per user.",
     "SELECT users.name, COUNT(*) FROM orders JOIN users ON users.id = orders.user_id GROUP BY users.name;"),
    ("python", "Write a Flask route that returns a user as JSON from an HTTP GET request.",
     "@app.route('/users/<int:uid>')\ndef get_user(uid):\n    return jsonify(db.get(uid))"),
    ("python", "Implement bubble sort on a list of integers.",
     "def bubble_sort(a):\n    for i in range(len(a)):\n        for j in range(len(a) - 1 - i):\n"
     "            if a[j] > a[j + 1]:\n                a[j], a[j + 1] = a[j + 1], a[j]\n    return a"),
    ("java", "Compute the factorial of a number.",
     "static long factorial(int n) { return n < 2 ? 1 : n * factorial(n - 1); }"),
    ("c", "Hash a password with a salt before storing it.",
     "void hash_password(const char *pw, const char *salt, char *out);"),
    ("python", "Load a CSV into a pandas dataframe and fit a linear regression model.",
     "import pandas as pd\ndf = pd.read_csv('x.csv')\nmodel = LinearRegression().fit(df[['a']], df['b'])"),
]


def _manifest(run: RunDir, stage: str, stats: dict, seconds: float, config: dict | None = None) -> None:
    run.write_manifest(stage, "test", config or {}, {}, [], stats, seconds)


def make_run(path: Path, stages=("seeds", "generate", "clean", "train", "export", "evaluate")) -> RunDir:
    """A run directory with small fake artifacts and real manifests for `stages`."""
    run = RunDir(path)
    run.create()
    write_json(path / "run.json", {"profile": "tiny", "config": {"report": {"categories": "tfidf"}}})
    langs = ["python", "python", "java", "c", "cpp", "shell"]
    if "seeds" in stages:
        n = 24
        pq.write_table(pa.table({
            "seed_id": [f"s{i}" for i in range(n)], "language": [langs[i % 6] for i in range(n)],
            "seed": ["\n".join(f"x{j} = {j} * y + call(arg_{j})" for j in range(1 + i % 15)) for i in range(n)],
            "license": [["MIT", "Apache-2.0", "unknown", None][i % 4] for i in range(n)]}), path / "seeds.parquet")
        _manifest(run, "seeds", {"files": 500, "seeds": n, "skipped_binary": 2, "skipped_duplicate": 7,
                                 **{f"seeds_{k}": langs.count(k) * 4 for k in set(langs)}}, 4.2)
    rows = []
    for i in range(18):
        lang, problem, code = PROBLEMS[i % len(PROBLEMS)]
        rows.append({"seed_id": f"s{i}", "language": lang, "seed": "x = 1",
                     "problem": problem + " " + "Explain the inputs and outputs. " * (i % 5),
                     "solution": f"```{lang}\n{code}\n```\nThis solution works." + " It is short." * (i % 7),
                     "code_blocks": [{"language": lang, "code": code}]
                                    + ([{"language": "", "code": "x"}] if i % 4 == 0 else []),
                     "humaneval_similarity": 0.05 + 0.02 * i})
    if "generate" in stages:
        with open(path / "pairs.jsonl", "w") as f:
            f.writelines(json.dumps({k: v for k, v in r.items() if k != "code_blocks"}) + "\n" for r in rows)
        _manifest(run, "generate", {"seeds": 24, "pairs": 20, "rejected": 4,
                                    "rejected_by_reason": {"finish_reason=length": 4}, "tokens_per_second": 18.1,
                                    "completion_tokens": 9000, "backend": "llama-batched", "parallel": 8, "threads": 2},
                  600.0, {"teacher": "embedded:qwen2.5-coder-0.5b-instruct-q4_k_m"})
    if "clean" in stages:
        pq.write_table(pa.Table.from_pylist(rows), path / "clean.parquet")
        _manifest(run, "clean", {"pairs_in": 20, "kept": 18, "removed": 2, "removed_by_reason": {"duplicate": 2},
                                 "benchmarks": {"humaneval": {"either": 0}, "mbpp": "not checked"},
                                 "humaneval_similarity_mean": 0.22}, 3.1)
    if "train" in stages:
        with open(path / "train_log.jsonl", "w") as f:
            for s in range(1, 11):
                f.write(json.dumps({"step": s, "loss": 1.2 - 0.04 * s, "lr": 2e-4 * min(1, s / 5),
                                    "tokens_per_second": 110.0}) + "\n")
        _manifest(run, "train", {"examples": 18, "steps": 10, "first_loss": 1.16, "final_loss": 0.8, "truncated": 0,
                                 "dropped_prompt_too_long": 0, "tokens_per_second": 110.0, "precision": "fp32",
                                 "trainable_parameters": 3796992, "threads": 2, "backend": "peft", "device": "cpu"},
                  300.0, {"student": "embedded:gemma-3-270m-q4_k_m"})
    if "export" in stages:
        _manifest(run, "export", {"quant": "q4_k_m", "bytes": 261316992, "sha256": "ab" * 32}, 140.0)
    if "evaluate" in stages:
        def res(k, n):
            return {"pass@1": k / n, "passed": k, "ci95": [max(0, k / n - 0.1), min(1, k / n + 0.15)]}
        models = {m: {"prompt_style": style, "generated": 0, "reused": 10,
                      "humaneval": {"n": 4, "base": res(k, 4), "plus": res(max(0, k - 1), 4)},
                      "mbpp": {"n": 6, "base": res(k, 6), "plus": res(k, 6)},
                      "multipl-e/java": {"n": 7, "base": res(k, 7)},
                      "ds1000": {"n": 5, "base": {**res(k, 5), "per_task": [True] * k + [False] * (5 - k)},
                                 "per_library": {"Numpy": {**res(1, 2), "per_task": [True, False]},
                                                 "Pandas": {**res(k - 1, 3), "per_task": [True] * (k - 1) + [False] * (4 - k)}}}}
                  for m, style, k in (("base", "completion", 1), ("finetuned", "instruct", 2), ("teacher", "chat", 3))}
        comps = [{"a": a, "b": b, "benchmark": bench, "split": split, "diff": 0.1, "ci95": [-0.2, 0.4]}
                 for a, b in (("finetuned", "base"), ("teacher", "base")) for bench in ("humaneval", "mbpp")
                 for split in ("base", "plus")]
        comps.append({"a": "finetuned", "b": "base", "benchmark": "multipl-e/java", "split": "base", "diff": 1 / 7,
                      "ci95": [-0.14, 0.43]})
        multilingual = {
            "multipl-e/java": {"title": "MultiPL-E Java", "n": 7, "of": 158, "subset": "7 of 158", "not_run": "",
                               "task_ids": []},
            "multipl-e/swift": {"title": "MultiPL-E Swift", "n": 0, "of": 158, "subset": "not run",
                                "not_run": "swiftc not installed", "task_ids": []},
            "ds1000": {"title": "DS-1000", "n": 5, "of": 1000, "subset": "5 of 948",
                       "not_run": "Tensorflow: tensorflow is not installed (45 problems)", "task_ids": []}}
        _manifest(run, "evaluate", {"max_tokens": 128, "models": models, "comparisons": comps,
                                    "multilingual": multilingual, "benchmarks": {
            "humaneval": {"n": 4, "of": 164, "plus": True, "subset": "4 of 164", "version": "v0.1.10",
                          "sha256": "0" * 64},
            "mbpp": {"n": 6, "of": 378, "plus": True, "subset": "6 of 378", "version": "v0.2.0", "sha256": "1" * 64}}},
                  50.0)
    return run


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    stats = report.run(make_run(path), path / "report.md", STAGES)
    return path, stats


def test_every_section_heading_is_in_both_reports(rendered):
    path, _ = rendered
    md, page = (path / "report.md").read_text(), (path / "report.html").read_text()
    for head in SECTIONS:
        assert f"## {head}\n" in md, head
        assert f">{head}</h2>" in page.replace("&amp;", "&"), head
    assert "could not be built" not in md


def test_every_figure_is_a_png_data_uri_in_the_html(rendered):
    path, stats = rendered
    images = report_images((path / "report.html").read_text())
    assert len(images) == len(FIGURES) == stats["figures"]
    for png in images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024


def test_the_markdown_links_its_figures_as_files_beside_it(rendered):
    path, _ = rendered
    md = (path / "report.md").read_text()
    for name in FIGURES:
        assert f"({report.FIGURE_DIR}/{name}.png)" in md
        assert (path / report.FIGURE_DIR / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_the_html_loads_nothing_from_outside(rendered):
    page = (rendered[0] / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script" not in page and "<link" not in page


def test_the_summary_says_what_was_made_and_how_good_it_is(rendered):
    md = (rendered[0] / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "24 seed snippets" in summary and "20 problem–solution pairs" in summary and "kept 18" in summary
    assert "Qwen2.5-Coder-0.5B-Instruct" in summary and "Gemma-3-270M" in summary
    assert "+10.0 points (95% interval -20 to +40)" in summary and "no measurable effect" in summary
    assert "75K" in summary


def test_the_pass_at_1_tables_and_the_papers_rows_are_kept(rendered):
    md = (rendered[0] / "report.md").read_text()
    assert "| model | prompt | HumanEval | HumanEval+ | MBPP | MBPP+ | answers decoded now / reused |" in md
    assert "| finetuned | instruct | 50.0 (40–65) |" in md and "| finetuned − base |" in md
    assert "| Magicoder-S-DS-6.7B (paper) | 76.8 | 70.7 | 75.7 | 64.4 |" in md and "the paper's numbers" in md


def test_the_category_method_is_stored(rendered):
    facts = json.loads((rendered[0] / "report.json").read_text())
    c = facts["categories"]
    assert c["method"] == "tfidf" and c["samples"] == c["of"] == 18
    assert sum(c["counts"].values()) + c["unassigned"] == 18
    assert facts["tokens"]  # which tokenizer counted the lengths


@pytest.mark.parametrize("stages", [(), ("seeds",), ("seeds", "generate", "clean")])
def test_missing_stages_say_not_run_yet(tmp_path, stages):
    make_run(tmp_path, stages)
    report.run(RunDir(tmp_path), tmp_path / "report.md", STAGES)
    md = (tmp_path / "report.md").read_text()
    assert "could not be built" not in md
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", md, re.S | re.M))
    assert list(sections) == SECTIONS
    after = {"Seeds and generated problems": "clean", "Lengths": "clean", "Categories": "clean",
             "Similarity to HumanEval": "clean", "Training": "train", "pass@1: HumanEval(+) and MBPP(+)": "evaluate"}
    for head, stage in after.items():
        assert ("not run yet" in sections[head]) == (stage not in stages), head
    assert "| evaluate | not run yet |" in sections["Pipeline"]
    assert (tmp_path / "report.html").exists()


def test_a_damaged_artifact_costs_only_its_section(tmp_path):
    run = make_run(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": [1, 2]}\n{"step": 2, "loss": "x"}\n')
    (tmp_path / "clean.parquet").write_bytes(b"not a parquet file")
    report.run(run, tmp_path / "report.md", STAGES, ReportConfig(categories="tfidf"))
    md = (tmp_path / "report.md").read_text()
    assert md.count("could not be built") == 5  # the five sections that read clean.parquet
    assert "## Training\n\nThe train stage has not run yet" in md  # no usable step: as if not run
    assert "| finetuned − base |" in md


def test_without_the_teacher_categories_fall_back_to_tfidf_and_say_why(tmp_path):
    run = make_run(tmp_path)
    no_teacher = {"generate": {"teacher": str(tmp_path / "no.gguf")}}
    write_json(tmp_path / "run.json", {"profile": "tiny", "config": no_teacher})
    report.run(run, tmp_path / "report.md", STAGES)  # report.categories=auto (the default)
    c = json.loads((tmp_path / "report.json").read_text())["categories"]
    assert c["method"] == "tfidf" and "not on this machine" in c["why_fallback"]
    assert "because the teacher's GGUF" in (tmp_path / "report.md").read_text()


def test_the_sample_is_capped(tmp_path):
    run = make_run(tmp_path)
    report.run(run, tmp_path / "report.md", STAGES, ReportConfig(categories="tfidf", category_samples=5))
    c = json.loads((tmp_path / "report.json").read_text())["categories"]
    assert c["samples"] == 5 and c["of"] == 18
    assert "cap report.category_samples=5" in (tmp_path / "report.md").read_text()


def test_tfidf_assigns_obvious_texts_to_their_categories():
    texts = [code for _, _, code in PROBLEMS[:3]] + ["A Django view that handles the HTTP POST of a login form."]
    got = categories.categorize(texts, "tfidf")["assigned"]
    assert got == ["Database & SQL", "Web", "Algorithms & data structures", "Web"]


def _teacher() -> Path:
    from repro import models

    try:
        return models.resolve("embedded:qwen2.5-coder-0.5b-instruct-q4_k_m")
    except ReproError as e:
        pytest.skip(f"the embedded teacher is not installed here ({e})")


@pytest.mark.e2e
def test_teacher_embeddings_categorize_and_are_cached(tmp_path):
    gguf, cache = _teacher(), tmp_path / "emb.npz"
    texts = [code for _, _, code in PROBLEMS[:3]]
    first = categories.categorize(texts, "embedding", gguf, cache, "teacher")
    assert first["method"] == "embedding" and first["embedded_now"] == len(categories.CATEGORIES) + 3
    assert first["assigned"][0] == "Database & SQL" and set(first["assigned"]) <= set(categories.CATEGORIES)
    again = categories.categorize(texts, "embedding", gguf, cache, "teacher")
    assert again["embedded_now"] == 0 and again["assigned"] == first["assigned"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (apt-get install chromium): the HTML was not rendered in a browser")
    return exe


def test_the_html_renders_in_headless_chromium(rendered, tmp_path):
    import matplotlib.image

    shot = tmp_path / "report.png"
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                        "--window-size=1280,4000", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                        (rendered[0] / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280) and shot.stat().st_size > 50_000
    assert pixels.std() > 0.05  # text, tables and figures, not a blank page


def test_multipl_e_and_ds1000_tables_say_what_ran_and_what_did_not(rendered):
    path, _ = rendered
    md = (path / "report.md").read_text()
    part = md.split("## Other languages and data science", 1)[1].split("\n## ", 1)[0]
    assert "| Java | 7 of 158 |" in part and "+14.3 (-14 to +43)" in part
    assert "not run: swiftc not installed" in part  # never a zero
    assert "tensorflow is not installed (45 problems)" in part and "| Numpy |" in part and "| all |" in part
    assert "6 of 18 training pairs (33%) are not Python" in part and "| Java | 7 of 158 |" in part
    assert part.split("| Java |", 1)[1].split("\n", 1)[0].rstrip().endswith("| 3 |")  # the 3 Java pairs
