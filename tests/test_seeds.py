import duckdb
import pytest

from repro import seeds
from repro.artifacts import ReproError
from repro.config import SeedsConfig


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(6):
        (src / "pkg" / f"m{i}.py").write_text("".join(f"line_{i}_{j} = {j}\n" for j in range(40)))
    (src / "main.rs").write_text("fn main() {\n    println!(\"hi\");\n}\n")
    (src / "blob.py").write_bytes(b"abc\0def\n")              # binary
    (src / "latin.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))  # undecodable
    (src / "empty.py").write_text("\n\n")                       # empty
    (src / "notes.txt").write_text("not code\n")                # unknown extension
    return src


def _seeds(tree, tmp_path, **kw):
    out = tmp_path / "seeds.parquet"
    stats = seeds.run(SeedsConfig(source=str(tree), **kw), out)
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{out}')").fetchall()
    cols = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{out}')").fetchall()]
    return stats, [dict(zip(cols, r)) for r in rows]


def test_seed_is_consecutive_lines_of_its_file(tree, tmp_path):
    _, rows = _seeds(tree, tmp_path, num_seeds=7)
    assert len(rows) == 7
    for r in rows:
        lines = (tree / r["path"]).read_text().splitlines()
        assert 1 <= r["n_lines"] <= 15
        assert r["seed"].split("\n") == lines[r["start_line"] - 1: r["start_line"] - 1 + r["n_lines"]]


def test_same_random_seed_same_seeds_other_seed_differs(tree, tmp_path):
    _, a = _seeds(tree, tmp_path, num_seeds=5, random_seed=1)
    _, b = _seeds(tree, tmp_path, num_seeds=5, random_seed=1)
    _, c = _seeds(tree, tmp_path, num_seeds=5, random_seed=2)
    assert a == b
    assert [r["seed_id"] for r in a] != [r["seed_id"] for r in c]


def test_filters_are_counted_not_silent(tree, tmp_path):
    stats, _ = _seeds(tree, tmp_path, num_seeds=2)
    assert stats["skipped_binary"] == 1 and stats["skipped_undecodable"] == 1
    assert stats["skipped_empty"] == 1 and stats["skipped_unknown_extension"] == 1
    assert stats["files_python"] == 6 and stats["files_rust"] == 1


def test_more_seeds_than_files_draws_files_again(tree, tmp_path):
    _, rows = _seeds(tree, tmp_path, num_seeds=20)
    assert len(rows) == 20 and len({r["seed_id"] for r in rows}) == 20


def test_empty_tree_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReproError, match="no readable source files"):
        seeds.run(SeedsConfig(source=str(tmp_path / "empty")), tmp_path / "s.parquet")
    assert not (tmp_path / "s.parquet").exists()


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(ReproError, match="not a directory"):
        seeds.source_root(str(tmp_path / "nope"))
