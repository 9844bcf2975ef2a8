import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter

import duckdb
import pytest

from repro.data import seeds
from repro.data.corpus import build_corpus, resolve_sources
from repro.artifacts import ReproError
from repro.config import SeedsConfig

MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy\n"
       "of this software and associated documentation files (the \"Software\"), to deal\n")


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(6):
        (src / "pkg" / f"m{i}.py").write_text("".join(f"line_{i}_{j} = {j}\n" for j in range(40)))
    (src / "main.rs").write_text("fn main() {\n    println!(\"hi\");\n}\n")
    (src / "blob.py").write_bytes(b"abc\0def\n")                          # binary
    (src / "latin.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))      # undecodable
    (src / "empty.py").write_text("\n\n")                                   # empty
    (src / "notes.txt").write_text("not code\n")                            # unknown extension
    (src / "min.js").write_text("var a=1;" * 2000)                          # minified
    with open(src / "huge.py", "wb") as f:                                  # 200 MB, sparse
        f.truncate(200 * 2**20)
    return src


def _jsonl(path, files):
    """A table source: {path: content}, language from the extension."""
    with open(path, "w") as f:
        for p, content in files.items():
            f.write(json.dumps({"path": p, "lang": "", "content": content}) + "\n")
    return path


def _read(path):
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{path}')")
    return [dict(zip(rel.columns, r)) for r in rel.fetchall()]


def _seeds(tmp_path, source, **kw):
    out = tmp_path / "out"
    stats = seeds.run(SeedsConfig(source=[str(s) for s in source], **kw), out / "seeds.parquet",
                      out / "corpus.parquet")
    return stats, _read(out / "seeds.parquet")


def test_seed_is_consecutive_lines_of_its_file(tree, tmp_path):
    _, rows = _seeds(tmp_path, [tree], num_seeds=7)
    assert len(rows) == 7
    for r in rows:
        lines = (tree / r["path"]).read_text().splitlines()
        assert 1 <= r["n_lines"] <= 15
        assert r["seed"].split("\n") == lines[r["start_line"] - 1: r["start_line"] - 1 + r["n_lines"]]


def test_seeds_keep_their_provenance(tree, tmp_path):
    _, rows = _seeds(tmp_path, [tree], num_seeds=3, random_seed=5)
    corpus = {r["id"]: r for r in _read(tmp_path / "out" / "corpus.parquet")}
    for r in rows:
        f = corpus[r["corpus_id"]]
        assert (r["path"], r["language"], r["license"], r["source"]) == (f["path"], f["language"], f["license"], f["source"])
        assert r["random_seed"] == 5 and r["mode"] == "paper" and r["file_lines"] == f["lines"]


def test_same_inputs_and_seed_give_byte_identical_seeds(tree, tmp_path):
    cfg = SeedsConfig(source=[str(tree)], num_seeds=9)
    for name in ("a", "b"):  # two runs, two DuckDB connections
        seeds.run(cfg, tmp_path / name / "seeds.parquet", tmp_path / name / "corpus.parquet")
    for name in ("corpus.parquet", "seeds.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_same_files_in_another_folder_give_the_same_seeds_under_the_file_cap(tmp_path):
    """A clone's venv lies under another folder in each clone: which files the cap keeps must not
    depend on where the source is."""
    for where in ("a/deep/place", "b"):
        for i in range(40):
            f = tmp_path / where / "src" / f"pkg{i % 4}" / f"m{i}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(f"value_{i}_{j} = {i * j}\n" for j in range(30)))
    got = []
    for where in ("a/deep/place", "b"):
        _, rows = _seeds(tmp_path / where, [tmp_path / where / "src"], num_seeds=6, max_files_per_language=5)
        got.append(sorted((r["seed"], r["path"].split("/src/")[-1]) for r in rows))
    assert got[0] == got[1] and len(got[0]) == 6


def test_another_random_seed_gives_other_seeds(tree, tmp_path):
    _, a = _seeds(tmp_path, [tree], num_seeds=5, random_seed=1)
    _, b = _seeds(tmp_path, [tree], num_seeds=5, random_seed=2)
    assert {r["seed_id"] for r in a} != {r["seed_id"] for r in b}


@pytest.mark.parametrize("mode", ["paper", "clean"])
def test_duckdb_and_plain_python_sampling_write_the_same_bytes(tree, tmp_path, mode):
    table = _jsonl(tmp_path / "t.jsonl", {
        f"f{i}.{ext}": "".join(f"{c} note {j}\r\nx_{i}_{j} = {j}  \n\n" for j in range(12))
        for i in range(20) for ext, c in (("py", "#"), ("c", "//"))})
    corpus = tmp_path / "corpus.parquet"
    cfg = SeedsConfig(source=[str(tree), str(table)], quotas="python=30,c=12,rust=2", num_seeds=0, mode=mode)
    build_corpus(cfg, corpus)
    seeds.sample(corpus, tmp_path / "duckdb.parquet", cfg, engine="duckdb")
    seeds.sample(corpus, tmp_path / "python.parquet", cfg, engine="python")
    assert (tmp_path / "duckdb.parquet").read_bytes() == (tmp_path / "python.parquet").read_bytes()


def test_seed_length_is_uniform_from_1_to_15(tmp_path):
    # Files of 1000 distinct lines: clipping at the end of a file is rare enough not to matter.
    table = _jsonl(tmp_path / "t.jsonl", {f"f{i}.py": "".join(f"v{i}_{j}\n" for j in range(1000)) for i in range(300)})
    _, rows = _seeds(tmp_path, [table], quotas="files", num_seeds=3000)
    lengths = Counter(r["n_lines"] for r in rows)
    assert set(lengths) == set(range(1, 16))
    assert all(150 <= lengths[n] <= 250 for n in range(1, 16)), lengths  # 200 expected each
    assert 470 <= sum(r["start_line"] for r in rows) / len(rows) <= 530  # start uniform over 1..1000


def test_seeds_are_clipped_at_the_end_of_the_file(tmp_path):
    table = _jsonl(tmp_path / "t.jsonl", {f"f{i}.py": f"a{i}\nb{i}\nc{i}\n" for i in range(2000)})
    _, rows = _seeds(tmp_path, [table], quotas="files", num_seeds=2000)
    assert all(r["start_line"] + r["n_lines"] - 1 <= 3 for r in rows)
    from_first = [r["n_lines"] for r in rows if r["start_line"] == 1]
    assert 0.80 <= from_first.count(3) / len(from_first) <= 0.93  # lengths 3..15 all clip to 3: 13/15
    assert {r["n_lines"] for r in rows if r["start_line"] == 3} == {1}


def test_bad_files_are_counted_and_reported_in_one_line_each(tree, tmp_path):
    stats = build_corpus(SeedsConfig(source=[str(tree)]), tmp_path / "corpus.parquet")
    skipped = {k.removeprefix("skipped_"): v for k, v in stats.items() if k.startswith("skipped_")}
    assert skipped == {"binary": 1, "undecodable": 1, "empty": 1, "unknown_extension": 1, "too_large": 1,
                       "minified": 1}
    assert stats["files_python"] == 6 and stats["files_rust"] == 1
    notes = stats["notes"][1:]  # after "found per language: ..."
    assert len(notes) == len(skipped) and all("\n" not in n for n in notes)
    for words in ("1 files skipped as binary", "1 files skipped as undecodable (not UTF-8)", "empty",
                  "extension not in data/languages.tsv", "over seeds.max_file_bytes=1000000 skipped, never read",
                  "minified"):
        assert sum(words in n for n in notes) == 1, (words, notes)


def test_bad_input_is_reported_by_the_command_and_the_run_goes_on(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "repro.cli", "seeds", "--profile", "smoke",
                        "--set", f"seeds.source={tree},{tmp_path / 'empty'}", "--set", "seeds.quotas=python=3,swift=1",
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    for words in ("skipped as binary", "undecodable", "never read", "minified", "empty or only whitespace",
                  f"source {tmp_path / 'empty'}: no files with a known language",
                  "quota swift=1 unmet: no swift files in the corpus", "rebalanced: python +1", "✓ seeds"):
        assert sum(words in line for line in lines) == 1, (words, r.stderr)
    assert (tmp_path / "run" / "seeds.parquet").exists()


def test_an_unreadable_archive_member_is_counted(tmp_path):
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.py", "x = 1\n")
        z.writestr("bad.py", "y = 2  # this member is corrupted below\n")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"this member", b"THIS MEMBER"))  # CRC no longer matches
    stats = build_corpus(SeedsConfig(source=[str(archive)]), tmp_path / "corpus.parquet")
    assert stats["skipped_unreadable"] == 1 and stats["files"] == 1
    assert any("1 files could not be read" in n for n in stats["notes"])


def test_vendored_copies_are_one_corpus_file(tmp_path):
    for d in ("app", "third_party/lib"):
        (tmp_path / "src" / d).mkdir(parents=True)
        (tmp_path / "src" / d / "util.py").write_text("def f():\n    return 1\n")
    stats = build_corpus(SeedsConfig(source=[str(tmp_path / "src")]), tmp_path / "corpus.parquet")
    assert stats["files"] == 1 and stats["skipped_duplicate"] == 1


def test_corpus_ids_are_content_hashes_and_lines_are_counted(tree, tmp_path):
    build_corpus(SeedsConfig(source=[str(tree)]), tmp_path / "corpus.parquet")
    rows = _read(tmp_path / "corpus.parquet")
    assert {"id", "source", "path", "language", "license", "bytes", "lines", "content"} <= set(rows[0])
    for r in rows:
        assert r["id"] == hashlib.md5(r["content"].encode()).hexdigest()
        assert r["lines"] == len(r["content"].splitlines()) and r["bytes"] == len(r["content"].encode())


def test_a_checkout_leaves_out_what_gitignore_ignores(tmp_path):
    src = tmp_path / "repo"
    for d in (".git", "build", "sub"):
        (src / d).mkdir(parents=True)
    (src / ".gitignore").write_text("build/\n*.gen.py\n")
    (src / "sub" / ".gitignore").write_text("!keep.gen.py\n")
    for f in ("a.py", "build/b.py", "c.gen.py", "sub/keep.gen.py", "sub/d.gen.py"):
        (src / f).write_text(f"x = {f!r}\n")
    stats = build_corpus(SeedsConfig(source=[str(src)]), tmp_path / "corpus.parquet")
    assert sorted(r["path"] for r in _read(tmp_path / "corpus.parquet")) == ["a.py", "sub/keep.gen.py"]
    assert stats["skipped_gitignored"] == 3  # build/, c.gen.py, sub/d.gen.py


def test_extensionless_scripts_get_their_language_from_the_shebang(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "deploy").write_text("#!/usr/bin/env bash\necho hi\n")
    (tmp_path / "src" / "Makefile").write_text("all:\n\techo hi\n")
    build_corpus(SeedsConfig(source=[str(tmp_path / "src")]), tmp_path / "corpus.parquet")
    assert [(r["path"], r["language"]) for r in _read(tmp_path / "corpus.parquet")] == [("deploy", "shell")]


def test_licence_comes_from_spdx_tag_or_nearby_licence_file(tmp_path):
    (tmp_path / "mit" / "pkg").mkdir(parents=True)
    (tmp_path / "mit" / "LICENSE").write_text("MIT License\n\n" + MIT)
    (tmp_path / "mit" / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "mit" / "pkg" / "b.py").write_text("# SPDX-License-Identifier: Apache-2.0\nb = 2\n")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "c.py").write_text("c = 3\n")
    build_corpus(SeedsConfig(source=[str(tmp_path / "mit"), str(tmp_path / "none")]), tmp_path / "corpus.parquet")
    got = {r["path"]: r["license"] for r in _read(tmp_path / "corpus.parquet")}
    assert got == {"pkg/a.py": "MIT", "pkg/b.py": "Apache-2.0", "c.py": "unknown"}


def test_licence_allow_list_skips_others_and_counts_them(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("# SPDX-License-Identifier: MIT\na = 1\n")
    (tmp_path / "src" / "b.py").write_text("b = 2\n")
    stats = build_corpus(SeedsConfig(source=[str(tmp_path / "src")], licenses=["MIT"]), tmp_path / "c.parquet")
    assert stats["files"] == 1 and stats["skipped_license"] == 1


def test_a_language_with_no_files_is_reported_and_its_quota_shared_by_quota(tmp_path):
    table = _jsonl(tmp_path / "t.jsonl", {f"f{i}.{ext}": "".join(f"{ext}{i}_{j}\n" for j in range(30))
                                          for i in range(10) for ext in ("py", "c")})
    stats, rows = _seeds(tmp_path, [table], quotas="python=4,c=2,rust=2", num_seeds=0)
    assert "quota rust=2 unmet: no rust files in the corpus" in stats["notes"]
    # 2 seeds short, shared 4:2 by largest remainder: python +1, c +1.
    assert Counter(r["language"] for r in rows) == {"python": 5, "c": 3}


def test_a_language_with_too_few_distinct_seeds_gives_what_it_has(tmp_path):
    table = _jsonl(tmp_path / "t.jsonl", {"tiny.c": "int a;\nint b;\n",
                                          **{f"f{i}.py": "".join(f"p{i}_{j}\n" for j in range(30)) for i in range(10)}})
    stats, rows = _seeds(tmp_path, [table], quotas="python=4,c=6", num_seeds=0)
    # A 2-line file has 3 distinct snippets: line 1, line 2, lines 1-2.
    assert Counter(r["language"] for r in rows) == {"python": 7, "c": 3}
    assert "quota c=6 unmet: only 3 distinct seeds from 1 files" in stats["notes"]


def test_seeds_that_differ_only_in_whitespace_are_one_seed(tmp_path):
    table = _jsonl(tmp_path / "t.jsonl", {f"f{i}.py": ("x  =  1\n" if i % 2 else "x = 1\n") * (i + 1) for i in range(30)})
    _, rows = _seeds(tmp_path, [table], quotas="files", num_seeds=40)
    normalized = [" ".join(r["seed"].split()) for r in rows]
    assert len(normalized) == len(set(normalized))


def test_clean_mode_skips_seeds_of_only_comments_imports_or_blanks(tmp_path):
    body = "import os\n# a comment\n\nfrom x import y\n" * 5 + "value = os.getcwd()\n"
    table = _jsonl(tmp_path / "t.jsonl", {f"f{i}.py": f"# file {i}\n" + body for i in range(60)})
    _, paper = _seeds(tmp_path, [table], quotas="files", num_seeds=30, mode="paper")
    _, clean = _seeds(tmp_path, [table], quotas="files", num_seeds=30, mode="clean")
    assert any(r["trivial"] for r in paper)
    assert clean and not any(r["trivial"] for r in clean) and all("value = " in r["seed"] for r in clean)
    assert {r["mode"] for r in clean} == {"clean"}


def test_a_table_source_maps_dataset_language_names(tmp_path):
    path = tmp_path / "t.parquet"
    duckdb.sql("SELECT * FROM (VALUES ('a', 'Python', 'x = 1\n'), ('b', 'C++', 'int x;\n'), "
               "('c', 'C#', 'class A {}\n'), ('d', 'Klingon', 'qapla\n')) t(path, lang, content)"
               ).write_parquet(str(path))
    stats = build_corpus(SeedsConfig(source=[str(path)]), tmp_path / "corpus.parquet")
    assert {r["path"]: r["language"] for r in _read(tmp_path / "corpus.parquet")} == \
        {"a": "python", "b": "cpp", "c": "csharp"}
    assert stats["skipped_unknown_language"] == 1


def test_a_table_without_content_is_a_user_error(tmp_path):
    path = tmp_path / "t.parquet"
    duckdb.sql("SELECT 'a.py' AS path, 'python' AS lang").write_parquet(str(path))
    with pytest.raises(ReproError, match="no content column"):
        build_corpus(SeedsConfig(source=[str(path)]), tmp_path / "corpus.parquet")


def test_installed_code_is_found_and_counted_per_language(tmp_path):
    stats = build_corpus(SeedsConfig(source=["installed"], max_files_per_language=3), tmp_path / "c.parquet")
    assert stats["found_python"] > 100 and 1 <= stats["files_python"] <= 3  # the stdlib at least
    assert stats["notes"][0].startswith("found per language: ") and "python" in stats["notes"][0]


def test_a_hub_source_offline_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReproError, match="hf:bigcode/starcoderdata") as e:
        build_corpus(SeedsConfig(source=["hf:bigcode/starcoderdata"]), tmp_path / "c.parquet")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "c.parquet").exists()


def test_paper_preset_and_scaling(tmp_path):
    paper = seeds.parse_quotas(SeedsConfig(quotas="paper", num_seeds=0), {})
    assert paper["python"] == 40000 and sum(paper.values()) == 80000 and len(paper) == 9
    assert seeds.parse_quotas(SeedsConfig(quotas="paper", num_seeds=48), {}) == \
        {"python": 24, **{k: 3 for k in paper if k != "python"}}
    assert sum(seeds.parse_quotas(SeedsConfig(quotas="tiny", num_seeds=48), {}).values()) == 48


def test_bad_quotas_are_a_user_error():
    with pytest.raises(ReproError, match="seeds.quotas='python=x'"):
        seeds.parse_quotas(SeedsConfig(quotas="python=x"), {})


def test_an_empty_directory_beside_others_is_a_note(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    stats, rows = _seeds(tmp_path, [tree, tmp_path / "empty"], num_seeds=2)
    assert rows and f"source {tmp_path / 'empty'}: no files with a known language" in stats["notes"]


def test_an_empty_directory_alone_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReproError, match="no readable source files"):
        seeds.run(SeedsConfig(source=[str(tmp_path / "empty")]), tmp_path / "s.parquet", tmp_path / "c.parquet")
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "c.parquet").exists()


def test_only_binary_files_is_a_user_error_that_says_so(tmp_path):
    (tmp_path / "bin").mkdir()
    for i in range(2):
        (tmp_path / "bin" / f"b{i}.py").write_bytes(b"\0\1\2")
    with pytest.raises(ReproError, match="binary 2") as e:
        seeds.run(SeedsConfig(source=[str(tmp_path / "bin")]), tmp_path / "s.parquet", tmp_path / "c.parquet")
    assert "\n" not in str(e.value)


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(ReproError, match="not a directory"):
        resolve_sources(str(tmp_path / "nope"))


def test_stage_settings_change_when_a_source_file_changes(tree):
    from repro import config, pipeline
    cfg = config.load("smoke", [f"seeds.source={tree}"])
    before, _, outputs = pipeline.stage_plan("seeds", cfg)
    (tree / "pkg" / "m0.py").write_text("changed = 1\n")
    os.utime(tree / "pkg" / "m0.py", (1, 1))
    assert pipeline.stage_plan("seeds", cfg)[0] != before
    assert outputs == ["seeds.parquet", "corpus.parquet"]


@pytest.mark.parametrize("setting,words", [
    ("seeds.quotas=nope", ["seeds.quotas='nope'", "paper"]),
    ("seeds.quotas=python=x", ["seeds.quotas='python=x'"]),
    ("seeds.quotas=python=0", ["asks for no seeds"]),
    ("seeds.mode=fuzzy", ["seeds.mode='fuzzy'", "clean"]),
    ("seeds.source=hf:someone/else", ["hf:someone/else", "unknown dataset"]),
    ("seeds.source=/missing/code", ["/missing/code", "not a directory"]),
])
@pytest.mark.parametrize("command", ["seeds", "run"])
def test_bad_seeds_settings_fail_in_one_line_before_the_run_directory_exists(tmp_path, command, setting, words):
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "repro.cli", command, "--profile", "smoke", "--set", setting,
                        "--run-dir", str(run_dir)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), r.stderr
    assert not run_dir.exists()
