"""Run directories, atomic artifacts, stage manifests and the one user-facing error type.

Every stage reads artifacts from `runs/<name>/` and writes its own there. Outputs are written
under a temporary name and renamed into place, and a stage's manifest is written last, so a
killed run never leaves a file that looks finished. A stage whose manifest matches the current
fingerprint (its config, its inputs' hashes) is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"


class ReproError(Exception):
    """A user-facing error: printed as one line naming the file or setting and the fix."""


# A write that failed for want of room: the disk (or quota) is full, or the file outgrew a size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full_error(path, e: OSError) -> ReproError:
    """One line for a write to `path` that failed with ENOSPC, EDQUOT or EFBIG."""
    if e.errno == errno.EFBIG:
        why = ("no space for it under the file size limit (File too large: `ulimit -f` or the filesystem's "
               "largest file)")
    else:
        why = "no space left on the device (disk full)" if e.errno == errno.ENOSPC else \
            "no space left under the disk quota (disk full)"
    return ReproError(f"{path}: cannot write it: {why}; free space there (or raise the limit) and rerun, "
                      "or choose a --run-dir on another disk")


# ---------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories. The temporary name starts with '.tmp-' so a crash leaves
    something that is obviously not an artifact (removed on the next attempt at the same path),
    and carries the writer's pid and thread, so that two processes filling the same cache entry at
    once never write into, or delete, each other's. Does NOT make them take turns: the last rename
    wins (`cache_lock` makes the second wait and reuse the first's result).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{threading.get_native_id()}"
    _remove(tmp)
    try:
        yield tmp
        if path.exists() and path.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except OSError as e:
        # A full disk is the user's to fix: one line naming the artifact, not the temporary name
        # (which is removed below) nor a traceback from deep in pyarrow or json.
        if e.errno in DISK_FULL:
            raise disk_full_error(path, e) from e
        raise
    finally:
        _remove(tmp)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what killed writers of `path` left: its temporaries whose process is gone (and the
    pid-less name that versions before the pid was added used)."""
    for t in path.parent.glob(f".tmp-{glob.escape(path.name)}*"):
        rest = t.name[len(f".tmp-{path.name}"):]
        if rest == "":
            _remove(t)
        elif (m := re.fullmatch(r"\.(\d+)\.\d+", rest)) and not _alive(int(m[1])):
            _remove(t)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


@contextlib.contextmanager
def cache_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock for filling the shared-cache entry `entry`, waiting for another
    process that holds it (two runs, or two test workers, wanting the same model or converter at
    once): the caller checks again inside the block and finds the other's result. Does NOT lock
    readers out; a finished entry is only ever replaced whole, by `atomic_path`."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is making {entry}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def parquet_rows(path: Path) -> int:
    """Rows in a Parquet file, from its footer (nothing else is read)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file, ignoring a torn last line (a crash mid-append)."""
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn write from an interrupted run; it is redone
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line so that appends start on a clean line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def resume_jsonl(paths: Iterable[Path], marker: Path, fp: str) -> None:
    """Prepare append-only result files for a resumable stage.

    Rows left by an interrupted run are kept only when `marker` says they were made with the same
    fingerprint `fp` (same inputs and settings); otherwise the files start over. A torn last line
    is cut either way.
    """
    if not marker.exists() or marker.read_text() != fp:
        for p in paths:
            p.unlink(missing_ok=True)
        write_text(marker, fp)
    for p in paths:
        repair_jsonl(p)


def append_jsonl(f, row: dict) -> None:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def digest(path: Path) -> str:
    """Content hash of a file or a directory (names + contents)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(sha256_file(p).encode())
        return h.hexdigest()
    return sha256_file(path)


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Run directory: lock and manifests


class RunDir:
    """`runs/<name>/`: artifacts, `manifests/<stage>.json`, and a lock against concurrent runs."""

    def __init__(self, path: Path, share: Iterable["RunDir"] = ()):
        self.path = Path(path)
        self._lock_file = None
        # Other runs whose finished stages this one may copy instead of redoing (`reuse`).
        self.share = [r for r in share if Path(r.path).resolve() != self.path.resolve()]

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        (self.path / "manifests").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator["RunDir"]:
        self.create()
        f = open(self.path / ".lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ReproError(
                f"{self.path}: another repro process is using this run directory; "
                "wait for it to finish or choose another --run-dir"
            ) from None
        try:
            yield self
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def manifest_path(self, stage: str) -> Path:
        return self.path / "manifests" / f"{stage}.json"

    def manifest(self, stage: str) -> dict | None:
        p = self.manifest_path(stage)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def is_done(self, stage: str, fp: str, outputs: Iterable[str]) -> bool:
        """A stage is done when its manifest has this fingerprint and its outputs are intact."""
        m = self.manifest(stage)
        if not m or m.get("fingerprint") != fp:
            return False
        for name in outputs:
            p = self.path / name
            if not p.exists() or m.get("outputs", {}).get(name) != digest(p):
                return False
        return True

    def reuse(self, stage: str, fp: str, outputs: Iterable[str]) -> "RunDir | None":
        """Copy a stage's outputs and manifest from a shared run where that stage is done with the
        same fingerprint (same settings, same inputs): variants share their seeds, pairs and
        cleaning. Copies, not links: generate appends to its store in place. Returns that run."""
        outputs = list(outputs)
        for other in self.share:
            if not other.is_done(stage, fp, outputs):
                continue
            for name in outputs:
                src, dst = other / name, self.path / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(dst) as tmp:
                    if src.is_dir():
                        shutil.copytree(src, tmp)
                    else:
                        shutil.copy2(src, tmp)
            m = other.manifest(stage)
            m["reused_from"] = str(other.path)
            write_json(self.manifest_path(stage), m)
            return other
        return None

    def write_manifest(self, stage: str, fp: str, config: dict, inputs: dict, outputs: Iterable[str],
                       stats: dict, seconds: float) -> dict:
        import resource

        from repro import versions

        m = {
            "stage": stage,
            "fingerprint": fp,
            "config": config,
            "inputs": inputs,
            "outputs": {name: digest(self.path / name) for name in outputs},
            "stats": stats,
            "seconds": round(seconds, 2),
            # Peak resident memory of this process so far (Linux reports KiB): what the stage needed.
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(),
        }
        write_json(self.manifest_path(stage), m)
        return m


def sql_str(s) -> str:
    """A string (a path) as a DuckDB SQL literal: quoted, its quotes doubled."""
    return "'" + str(s).replace("'", "''") + "'"
