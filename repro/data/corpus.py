"""The corpus: every usable source file of the configured sources, one row per distinct file.

`corpus.parquet` (id = md5 of the content, source, path, language, license, bytes, lines, content)
from the sources in `seeds.source`: code installed on this machine (the offline default),
directories and git checkouts (.gitignore respected), .zip archives, parquet/jsonl tables, and the
Hub's starcoderdata / the-stack when online. Files that are binary, undecodable, too large,
minified, empty or duplicates are counted by reason, never dropped silently. The seeds stage
(repro/data/seeds.py) builds it and samples its seeds from it.

What it does not do: near-duplicate detection, or licence detection beyond a cheap look at SPDX
tags, licence headers, a nearby LICENSE/COPYING file and Python package metadata.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
import sysconfig
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from repro import languages
from repro.artifacts import sql_str, DATA_DIR, ReproError, atomic_path, fingerprint
from repro.config import SeedsConfig

# Directories never read in a user's tree: version control, caches, and vendored environments
# (their code is someone else's, and usually a copy of what `installed` already finds).
VENDORED_DIRS = frozenset({"node_modules", ".venv", "venv", "site-packages", "dist-packages"})
USER_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".tox"}) | VENDORED_DIRS
INSTALLED_SKIP_DIRS = frozenset({".git", "__pycache__"})
LICENSE_NAMES = re.compile(r"^(licen[cs]e|copying|unlicense)([.-].*)?$", re.IGNORECASE)
SPDX_TAG = re.compile(r"SPDX-License-Identifier:[ \t]*([A-Za-z0-9.+\-() ]+)")
COMMENT_LEADER = re.compile(r"^[ \t]*(?:/\*+|\*+/?|//+|#+|--|;+|!)?", re.MULTILINE)
HEADER_CHARS = 3000          # how much of a file's start is searched for a licence header
ROWS_PER_WRITE = 8192        # corpus rows per parquet row group (also bounded by bytes below)
BYTES_PER_WRITE = 64 << 20


# ---------------------------------------------------------------------------------------------
# Tables: languages and licences


def _tsv(name: str) -> list[list[str]]:
    rows = []
    for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append([c.strip() for c in line.split("\t")])
    return rows


def language_tables() -> dict[str, dict[str, str]]:
    """data/languages.tsv as {"ext": {...}, "shebang": {...}, "name": {...}} (repro/languages.py)."""
    return languages.table()


def known_languages() -> list[str]:
    return sorted(set(language_tables()["ext"].values()))


def licence_tables() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """data/licenses.tsv as (ordered (SPDX, phrase) rows, {name: SPDX})."""
    phrases, names = [], {}
    for kind, spdx, match in _tsv("licenses.tsv"):
        if kind == "text":
            phrases.append((spdx, match))
        names[spdx.lower()] = spdx
        if kind == "name":
            names[match] = spdx
    return phrases, names


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """One place code is read from. `root` is a directory, archive, table file or dataset name."""
    kind: str                       # dir | zip | table | hf
    root: str
    spec: str                       # as configured, for messages
    label: str = ""                 # which installed location, if any
    language: str | None = None     # overrides the extension table (C++ headers have none)
    skip_dirs: frozenset = USER_SKIP_DIRS
    gitignore: bool = False         # a git checkout: honour its .gitignore files
    python_packages: bool = False   # site-packages: licences from the distributions' metadata


def _stdlib() -> str:
    return sysconfig.get_paths()["stdlib"]


def _site_packages() -> list[str]:
    import site
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    return paths


# Well-known places where a machine keeps source code it already has, each cheap to list; nothing
# else on the filesystem is searched. (label, glob patterns, language override or None).
INSTALLED = [
    ("python-stdlib", lambda: [_stdlib()], None),
    ("python-packages", lambda: [*_site_packages(), "/usr/lib/python3/dist-packages"], None),
    ("c++-headers", lambda: ["/usr/include/c++/*", "/usr/include/*/c++/*", "/usr/local/include/c++/*"], "cpp"),
    ("c-headers", lambda: ["/usr/include", "/usr/local/include"], None),
    ("node-modules", lambda: ["/usr/lib/node_modules", "/usr/local/lib/node_modules", "/usr/share/nodejs",
                              "~/.npm-global/lib/node_modules"], None),
    ("javascript", lambda: ["/usr/share/javascript"], None),
    ("jdk-src", lambda: ["$JAVA_HOME/lib/src.zip", "/usr/lib/jvm/*/lib/src.zip", "/usr/lib/jvm/*/src.zip"], None),
    ("rust-src", lambda: ["~/.rustup/toolchains/*/lib/rustlib/src/rust/library", "~/.cargo/registry/src/*"], None),
    ("go-src", lambda: ["/usr/local/go/src", "/usr/lib/go/src", "/usr/lib/go-*/src", "~/go/pkg/mod"], None),
    ("shell", lambda: ["/etc/profile.d", "/usr/lib/git-core"], None),
    ("shell", lambda: ["/usr/share/bash-completion/completions"], "shell"),
    ("php", lambda: ["/usr/share/php"], None),
    ("swift", lambda: ["/usr/share/swift/usr/lib/swift", "/usr/lib/swift"], None),
    ("csharp", lambda: ["~/.nuget/packages"], None),
]


def installed_sources() -> list[Source]:
    """The INSTALLED locations that exist here, each once (symlinked copies resolve to one)."""
    out, seen = [], set()
    for label, patterns, language in INSTALLED:
        for pattern in patterns():
            for hit in sorted(glob.glob(os.path.expandvars(os.path.expanduser(pattern)))):
                p = Path(hit)
                if not p.exists() or str(p.resolve()) in seen:
                    continue
                seen.add(str(p.resolve()))
                skip = INSTALLED_SKIP_DIRS
                if label == "python-stdlib":
                    skip = skip | {"site-packages", "dist-packages"}
                if label == "c-headers":
                    skip = skip | {"c++"}  # the c++-headers location reads those as C++
                out.append(Source("zip" if p.is_file() else "dir", str(p.resolve()), "installed", label,
                                  language, skip, python_packages=label == "python-packages"))
    return out


def resolve_sources(source: str | list[str]) -> list[Source]:
    """`seeds.source` as Sources; a spec that names nothing usable is a one-line ReproError."""
    specs = [source] if isinstance(source, str) else list(source)
    if not specs:
        raise ReproError("seeds.source is empty; give 'installed', 'stdlib', a directory, or a data file")
    out = []
    for spec in specs:
        if spec == "installed":
            out.extend(installed_sources())
        elif spec == "stdlib":
            out.append(Source("dir", str(Path(_stdlib()).resolve()), spec,
                              skip_dirs=INSTALLED_SKIP_DIRS | {"site-packages", "dist-packages"}))
        elif spec.startswith("hf:"):
            name = spec[3:]
            if name not in HF_DATASETS:
                raise ReproError(f"seeds.source={spec!r}: unknown dataset; use one of "
                                 + ", ".join(f"hf:{n}" for n in HF_DATASETS))
            out.append(Source("hf", name, spec))
        else:
            p = Path(spec).expanduser()
            if p.is_dir():
                p = p.resolve()
                try:  # a directory this user may not list or enter: one line, not a traceback later
                    with os.scandir(p) as entries:  # opens it and reads one batch, not the whole listing
                        next(entries, None)
                    gitignore = (p / ".git").exists()
                except OSError as e:
                    raise ReproError(f"seeds.source={spec!r}: cannot read this directory ({e.strerror}); "
                                     "give this user read access to it (chmod) or point seeds.source "
                                     "elsewhere") from None
                out.append(Source("dir", str(p), spec, gitignore=gitignore))
            elif p.is_file() and p.suffix.lower() == ".zip":
                out.append(Source("zip", str(p.resolve()), spec))
            elif p.is_file() and p.suffix.lower() in (".parquet", ".jsonl", ".ndjson"):
                out.append(Source("table", str(p.resolve()), spec))
            else:
                raise ReproError(f"seeds.source={spec!r}: not a directory, a .zip, a .parquet/.jsonl file, "
                                 "'installed', 'stdlib' or 'hf:<dataset>'; point it at code you have")
    return out


def _walk(root: Path, skip_dirs: frozenset, counts: Counter | None = None, gitignore: bool = False):
    """Files under `root` in a fixed order, as (path, lstat), leaving out `skip_dirs` and, in a
    checkout, what its .gitignore files ignore; what is left out is counted in `counts`."""
    counts = Counter() if counts is None else counts
    gi = _GitIgnore(root) if gitignore else None
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: counts.update(["skipped_unreadable_dir"])):
        d = Path(dirpath)
        if gi:
            gi.enter(d)
        kept = []
        for name in sorted(dirnames):
            if name in skip_dirs:
                if name in VENDORED_DIRS:
                    counts["skipped_vendored_dir"] += 1
            elif gi and gi.ignored(d / name, True):
                counts["skipped_gitignored"] += 1  # a whole directory counts once
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            p = d / name
            if gi and gi.ignored(p, False):
                counts["skipped_gitignored"] += 1
                continue
            try:
                yield p, p.lstat()
            except OSError:
                counts["skipped_unreadable"] += 1


def tree_fingerprint(root: Path, skip_dirs: frozenset = USER_SKIP_DIRS, gitignore: bool = False) -> str:
    """Cheap identity of a source tree: names, sizes and mtimes of the files it would read."""
    return fingerprint([(str(p.relative_to(root)), st.st_size, int(st.st_mtime))
                        for p, st in _walk(root, skip_dirs, gitignore=gitignore)])


def source_fingerprints(cfg: SeedsConfig) -> list:
    """What the corpus depends on besides the settings: every source's files, cheaply."""
    out = []
    for s in resolve_sources(cfg.source):
        if s.kind == "dir":
            out.append((s.kind, s.root, tree_fingerprint(Path(s.root), s.skip_dirs, s.gitignore)))
        elif s.kind in ("zip", "table"):
            st = os.stat(s.root)
            out.append((s.kind, s.root, st.st_size, int(st.st_mtime)))
        else:  # a Hub dataset: only its name is known offline
            out.append((s.kind, s.root))
    return out


class _GitIgnore:
    """The .gitignore files of a checkout, deepest first: the deepest that matches decides."""

    def __init__(self, root: Path):
        import pathspec
        self.root, self.specs, self._pathspec = root, {}, pathspec
        info = root / ".git" / "info" / "exclude"
        self._load(root, info)
        self._load(root, root / ".gitignore")

    def _load(self, base: Path, f: Path) -> None:
        if f.is_file():
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
            self.specs.setdefault(base, []).append(self._pathspec.GitIgnoreSpec.from_lines(lines))

    def enter(self, d: Path) -> None:
        self._load(d, d / ".gitignore")

    def ignored(self, p: Path, is_dir: bool) -> bool:
        base = p.parent
        while True:
            for spec in reversed(self.specs.get(base, [])):
                rel = p.relative_to(base).as_posix() + ("/" if is_dir else "")
                r = spec.check_file(rel)
                if r.include is not None:
                    return r.include
            if base == self.root:
                return False
            base = base.parent


# ---------------------------------------------------------------------------------------------
# Licences


class Licences:
    """Finds a file's SPDX licence cheaply; `unknown` when nothing nearby says."""

    def __init__(self):
        self.phrases, self.names = licence_tables()
        self._dirs: dict[Path, str | None] = {}
        self._dists: dict[str, dict[str, str]] = {}

    def classify(self, text: str) -> str | None:
        # Comment leaders (" * ", "# ", "// ") would split a phrase that a header wraps over lines.
        t = " ".join(COMMENT_LEADER.sub("", text.lower()).split())
        return next((spdx for spdx, phrase in self.phrases if phrase in t), None)

    def by_name(self, name: str) -> str | None:
        return self.names.get(" ".join(name.lower().split()))

    def header(self, text: str) -> str | None:
        """An SPDX tag or a licence header near the top of the file."""
        head = text[:HEADER_CHARS]
        if m := SPDX_TAG.search(head):
            expr = " ".join(m.group(1).split())
            while expr.endswith(")") and expr.count(")") > expr.count("("):
                expr = expr[:-1].rstrip()  # the tag sat inside a parenthesised comment
            return expr or None
        return self.classify(head)

    def nearby(self, d: Path, stop: Path) -> str | None:
        """The licence file in `d` or its nearest ancestor, up to and including `stop`."""
        if d in self._dirs:
            return self._dirs[d]
        found = None
        try:
            names = sorted(n for n in os.listdir(d) if LICENSE_NAMES.match(n))
        except OSError:
            names = []
        for n in names:
            try:
                with open(d / n, encoding="utf-8", errors="replace") as f:
                    found = self.classify(f.read(20000))
            except OSError:
                continue
            if found:
                break
        if found is None and d != stop and stop in d.parents:
            found = self.nearby(d.parent, stop)
        self._dirs[d] = found
        return found

    def package(self, site: Path, top: str) -> str | None:
        """The licence of the installed distribution that owns top-level name `top`."""
        if str(site) not in self._dists:
            self._dists[str(site)] = self._scan_dists(site)
        return self._dists[str(site)].get(top)

    def _scan_dists(self, site: Path) -> dict[str, str]:
        import importlib.metadata as md
        owners = {}
        for dist in sorted(md.distributions(path=[str(site)]), key=lambda d: d.metadata.get("Name") or ""):
            spdx = self._dist_licence(dist)
            if spdx is None:
                continue
            tops = (dist.read_text("top_level.txt") or "").split()
            if not tops:
                tops = {f.parts[0] for f in (dist.files or []) if len(f.parts) > 1 and not f.parts[0].endswith(
                    (".dist-info", ".egg-info")) and f.parts[0] != ".."}
                tops |= {f.stem for f in (dist.files or []) if len(f.parts) == 1 and f.suffix == ".py"}
            for t in sorted(tops):
                owners.setdefault(t, spdx)
        return owners

    def _dist_licence(self, dist) -> str | None:
        meta = dist.metadata
        if expr := meta.get("License-Expression"):
            return expr.strip()
        lic = (meta.get("License") or "").strip()
        if lic and len(lic) < 80 and (spdx := self.by_name(lic)):
            return spdx
        if len(lic) >= 80 and (spdx := self.classify(lic)):
            return spdx
        for c in meta.get_all("Classifier") or []:
            if c.startswith("License ::") and (spdx := self.by_name(c.split("::")[-1])):
                return spdx
        for f in dist.files or []:
            if LICENSE_NAMES.match(f.name) and ".dist-info" in str(f):
                try:
                    text = Path(dist.locate_file(f)).read_text(encoding="utf-8", errors="replace")
                    if spdx := self.classify(text[:20000]):
                        return spdx
                except OSError:
                    continue
        return None


# ---------------------------------------------------------------------------------------------
# Corpus


@dataclass
class _Found:
    """A file found on disk or in an archive, not yet read."""
    source: int                     # index into the sources
    path: str                       # relative to the source's root
    language: str
    size: int


def count_lines(text: str) -> int:
    """Lines ended by LF (or CRLF), a last line without one counting too: `splitlines` for code."""
    return text.count("\n") + (0 if text.endswith("\n") else 1)


# The same count in SQL, for corpora built in DuckDB (bench/seeds.py).
LINES_SQL = "(length({c}) - length(replace({c}, chr(10), '')) + CASE WHEN suffix({c}, chr(10)) THEN 0 ELSE 1 END)"


def _language(p: Path, src: Source, tables, counts: Counter) -> str | None:
    ext = p.suffix.lower()
    lang = tables["ext"].get(ext)
    if ext and lang is None:
        return None
    if src.language:
        return src.language
    if lang is None:  # no extension: a shebang may say what it is
        try:
            with open(p, "rb") as f:
                first = f.readline(128)
        except OSError:
            counts["skipped_unreadable"] += 1
            return None
        if first.startswith(b"#!"):
            words = first[2:].decode("latin-1").split()
            if words and Path(words[0]).name == "env" and len(words) > 1:
                words = words[1:]
            if words:
                lang = tables["shebang"].get(re.sub(r"[0-9.]+$", "", Path(words[0]).name)) \
                    or tables["shebang"].get(Path(words[0]).name)
    return lang


def _discover(sources: list[Source], cfg: SeedsConfig, counts: Counter) -> list[_Found]:
    """Every file with a language in the file sources, without reading them (but shebangs)."""
    tables = language_tables()
    found = []
    for i, src in enumerate(sources):
        if src.kind == "dir":
            root = Path(src.root)
            for p, st in _walk(root, src.skip_dirs, counts, src.gitignore):
                if not stat.S_ISREG(st.st_mode):
                    counts["skipped_not_regular_file"] += 1
                    continue
                lang = _language(p, src, tables, counts)
                if lang is None:
                    counts["skipped_unknown_extension"] += 1
                    continue
                counts[f"found_{lang}"] += 1
                if st.st_size > cfg.max_file_bytes:
                    counts["skipped_too_large"] += 1  # never read: a 200 MB file costs a stat
                    continue
                found.append(_Found(i, str(p.relative_to(root)), lang, st.st_size))
        elif src.kind == "zip":
            try:
                with zipfile.ZipFile(src.root) as zf:
                    members = sorted(zf.infolist(), key=lambda m: m.filename)
            except (OSError, zipfile.BadZipFile):
                counts["skipped_unreadable"] += 1
                continue
            for m in members:
                if m.is_dir():
                    continue
                lang = tables["ext"].get(Path(m.filename).suffix.lower())
                if lang is None:
                    counts["skipped_unknown_extension"] += 1
                    continue
                lang = src.language or lang
                counts[f"found_{lang}"] += 1
                if m.file_size > cfg.max_file_bytes:
                    counts["skipped_too_large"] += 1
                    continue
                found.append(_Found(i, m.filename, lang, m.file_size))
    return found


def _cap(found: list[_Found], sources: list[Source], cap: int, counts: Counter) -> list[_Found]:
    """At most `cap` files per language: those with the smallest md5 of where they are within
    their source (its installed-location label and the path under its root), so that the same
    files are kept wherever the source lies: a clone's venv sits under a different folder in each
    clone, and keying on the absolute path gave each clone other seeds (7,990-8,007 files read)."""
    if cap <= 0:
        return found
    by_lang: dict[str, list[_Found]] = {}
    for f in found:
        by_lang.setdefault(f.language, []).append(f)
    keep = set()
    for lang, fs in by_lang.items():
        if len(fs) > cap:
            counts["skipped_over_cap"] += len(fs) - cap
        for f in sorted(fs, key=lambda f: hashlib.md5(f"{sources[f.source].label}/{f.path}".encode()).hexdigest())[:cap]:
            keep.add(id(f))
    return [f for f in found if id(f) in keep]


def _file_rows(src: Source, files: list[_Found], licences: Licences, counts: Counter) -> Iterator[dict]:
    """Read the chosen files of one dir/zip source as raw corpus rows (bytes not yet checked)."""
    root = Path(src.root)
    zf = None
    try:
        if src.kind == "zip":
            zf = zipfile.ZipFile(src.root)
        for f in files:
            try:
                data = zf.read(f.path) if zf else (root / f.path).read_bytes()
            except (OSError, zipfile.BadZipFile, RuntimeError, EOFError):
                counts["skipped_unreadable"] += 1  # permissions, I/O, a corrupt archive member
                continue
            yield {"source": src.root, "path": f.path, "language": f.language, "data": data,
                   "license": lambda text, f=f: _file_licence(src, root, f.path, text, licences)}
    finally:
        if zf:
            zf.close()


def _file_licence(src: Source, root: Path, path: str, text: str, licences: Licences) -> str:
    if spdx := licences.header(text):
        return spdx
    if src.kind == "zip":  # the archive's own folder, and the one above it
        return licences.nearby(root.parent, root.parent.parent) or "unknown"
    d = (root / path).parent
    if src.python_packages:  # a stray LICENSE in site-packages itself belongs to no one package
        if d != root and (spdx := licences.nearby(d, root / Path(path).parts[0])):
            return spdx
        top = Path(path).parts[0]
        top = top.removesuffix(".py") if len(Path(path).parts) == 1 else top
        return licences.package(root, top) or "unknown"
    return licences.nearby(d, root) or "unknown"


def _table_rows(src: Source, counts: Counter) -> Iterator[dict]:
    """Rows of a parquet/jsonl file with path, lang (or language) and content columns."""
    import duckdb

    tables = language_tables()
    con = duckdb.connect()
    reader = "read_parquet" if src.root.lower().endswith(".parquet") else "read_json_auto"
    try:
        rel = con.sql(f"SELECT * FROM {reader}({sql_str(src.root)})")
    except duckdb.Error as e:
        raise ReproError(f"seeds.source={src.spec!r}: cannot read it as {reader.split('_')[1]} "
                         f"({str(e).splitlines()[0]}); give a file with path, lang and content columns") from None
    cols = {c.lower(): c for c in rel.columns}
    lang_col = cols.get("lang") or cols.get("language")
    missing = [c for c, have in (("path", cols.get("path")), ("lang", lang_col), ("content", cols.get("content")))
               if not have]
    if missing:
        raise ReproError(f"seeds.source={src.spec!r}: no {', '.join(missing)} column (has {', '.join(rel.columns)}); "
                         "give a file with path, lang and content columns")
    lic_col = cols.get("license") or cols.get("licence")
    select = [f'"{cols["path"]}"', f'"{lang_col}"', f'"{cols["content"]}"', f'"{lic_col}"' if lic_col else "NULL"]
    result = con.execute(f"SELECT {', '.join(select)} FROM {reader}({sql_str(src.root)})").arrow()
    # Newer DuckDB streams a RecordBatchReader; older ones return a whole Table.
    for batch in (result if hasattr(result, "read_next_batch") else result.to_batches(2000)):
        for path, lang, content, lic in zip(*(c.to_pylist() for c in batch.columns)):
            language = tables["name"].get(str(lang or "").strip().lower()) \
                or tables["ext"].get(Path(str(path)).suffix.lower())
            if language is None:
                counts["skipped_unknown_language"] += 1
                continue
            counts[f"found_{language}"] += 1
            data = content if isinstance(content, bytes) else (content or "").encode("utf-8", "surrogatepass")
            yield {"source": src.root, "path": str(path), "language": language, "data": data,
                   "license": (lambda text, lic=lic: str(lic)) if lic else None}


# Where each language lives on the Hub: the paper took starcoderdata, and Swift (not in it) from
# the-stack; data_dir names follow each dataset's folders.
HF_DATASETS = {"bigcode/starcoderdata": "{lang}", "bigcode/the-stack": "data/{lang}",
               "bigcode/the-stack-dedup": "data/{lang}"}
HF_DIR_NAMES = {"csharp": "c-sharp"}
HF_STACK_DIR_NAMES = {"csharp": "c-sharp", "cpp": "c++"}


def _hf_rows(src: Source, languages: list[str], per_language: int) -> Iterator[dict]:
    """Stream `per_language` documents per language from starcoderdata / the-stack (online only)."""
    fix = "it needs network access and the dataset's terms accepted on the Hub (huggingface-cli login); " \
          "offline, use seeds.source=installed"
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise ReproError(f"seeds.source=hf:{src.root}: HF_HUB_OFFLINE is set; {fix}")
    try:
        from datasets import load_dataset
    except ImportError:
        raise ReproError(f"seeds.source=hf:{src.root}: needs the `datasets` package; pip install datasets") from None
    for lang in languages:
        name = src.root
        if name == "bigcode/starcoderdata" and lang == "swift":
            name = "bigcode/the-stack"
        dirs = HF_DIR_NAMES if name == "bigcode/starcoderdata" else HF_STACK_DIR_NAMES
        data_dir = HF_DATASETS[name].format(lang=dirs.get(lang, lang))
        try:
            ds = load_dataset(name, data_dir=data_dir, split="train", streaming=True)
            for i, row in enumerate(ds):
                if i >= per_language:
                    break
                repo = row.get("max_stars_repo_name") or ""
                lic = row.get("max_stars_repo_licenses") or []
                yield {"source": f"hf:{name}/{data_dir}", "path": f"{repo}/{row.get('max_stars_repo_path') or i}",
                       "language": lang, "data": row["content"].encode("utf-8", "surrogatepass"),
                       "license": (lambda text, lic=lic: " AND ".join(lic) or "unknown")}  # the repo's
        except ReproError:
            raise
        except Exception as e:  # offline, gated, renamed: all one line for the user
            first = (str(e).splitlines() or [""])[0][:160]
            raise ReproError(f"seeds.source=hf:{src.root}: cannot stream {name} {data_dir} "
                             f"({type(e).__name__}: {first}); {fix}") from None


def _corpus_schema():
    import pyarrow as pa
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("path", pa.string()),
                      ("language", pa.string()), ("license", pa.string()), ("bytes", pa.int64()),
                      ("lines", pa.int64()), ("content", pa.string())])


def _allowed(spdx: str, allow: set[str]) -> bool:
    """`allow` empty allows all; an `A OR B` expression is allowed when either part is."""
    return not allow or spdx in allow or any(p.strip("() ") in allow for p in spdx.split(" OR "))


def build_corpus(cfg: SeedsConfig, out: Path, languages: list[str] | None = None) -> dict:
    """Read every source into `out` (parquet, one row per distinct file); return counts.

    `languages` limits what a Hub source streams (the quota languages)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sources = resolve_sources(cfg.source)
    counts: Counter = Counter()
    chosen = _cap(_discover(sources, cfg, counts), sources, cfg.max_files_per_language, counts)
    by_source: dict[int, list[_Found]] = {}
    for f in chosen:
        by_source.setdefault(f.source, []).append(f)
    licences, allow, seen = Licences(), set(cfg.licenses), set()
    schema = _corpus_schema()
    batch: dict[str, list] = {n: [] for n in schema.names}
    n_bytes = 0
    licence_counts: Counter = Counter()
    per_source: Counter = Counter()

    def rows():
        for i, src in enumerate(sources):
            if src.kind in ("dir", "zip"):
                it = _file_rows(src, by_source.get(i, []), licences, counts)
            elif src.kind == "table":
                it = _table_rows(src, counts)
            else:
                it = _hf_rows(src, languages or known_languages(), cfg.hf_files_per_language)
            for r in it:
                yield i, r

    with atomic_path(out) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            for i, r in rows():
                data = r["data"]
                # Filters, in this order; each file is counted under the first one it fails.
                if len(data) > cfg.max_file_bytes:
                    counts["skipped_too_large"] += 1
                    continue
                if b"\0" in data:
                    counts["skipped_binary"] += 1
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    counts["skipped_undecodable"] += 1
                    continue
                if not text.strip():
                    counts["skipped_empty"] += 1
                    continue
                lines = count_lines(text)
                if len(text) / lines > cfg.max_avg_line_chars:
                    counts["skipped_minified"] += 1
                    continue
                cid = hashlib.md5(data).hexdigest()
                if cid in seen:
                    counts["skipped_duplicate"] += 1  # a vendored copy of a file already in
                    continue
                spdx = r["license"](text) if r["license"] else licences.header(text) or "unknown"
                if not _allowed(spdx, allow):
                    counts["skipped_license"] += 1
                    continue
                seen.add(cid)
                per_source[i] += 1
                licence_counts[spdx] += 1
                counts[f"files_{r['language']}"] += 1
                for k, v in (("id", cid), ("source", r["source"]), ("path", r["path"]), ("language", r["language"]),
                             ("license", spdx), ("bytes", len(data)), ("lines", lines), ("content", text)):
                    batch[k].append(v)
                n_bytes += len(data)
                if len(batch["id"]) >= ROWS_PER_WRITE or n_bytes >= BYTES_PER_WRITE:
                    writer.write_table(pa.table(batch, schema=schema))
                    batch = {n: [] for n in schema.names}
                    n_bytes = 0
            if batch["id"]:
                writer.write_table(pa.table(batch, schema=schema))
        finally:
            writer.close()
        if not seen:
            skipped = ", ".join(f"{k.removeprefix('skipped_')} {v}" for k, v in sorted(counts.items())
                                if k.startswith("skipped_")) or "nothing found"
            spec = cfg.source if isinstance(cfg.source, str) else ",".join(cfg.source)
            raise ReproError(f"seeds.source={spec}: no readable source files with a known "
                             f"extension (data/languages.tsv) [{skipped}]; point seeds.source at code")
    counts["files"] = len(seen)
    empty = [s.root for i, s in enumerate(sources) if not per_source[i] and s.spec != "installed"]
    stats = dict(sorted(counts.items()))
    stats["licenses"] = dict(licence_counts.most_common())
    stats["installed_locations"] = sorted({s.label for s in sources if s.label})
    stats["notes"] = _corpus_notes(stats, cfg, empty)
    return stats


def _corpus_notes(s: dict, cfg: SeedsConfig, empty: list[str]) -> list[str]:
    """One line per thing the user should know about the corpus."""
    found = sorted(((k.removeprefix("found_"), v) for k, v in s.items() if k.startswith("found_")),
                   key=lambda kv: -kv[1])
    notes = ["found per language: " + (", ".join(f"{lang} {n}" for lang, n in found) or "none")]
    notes += [f"source {p}: no files with a known language" for p in empty]
    why = {
        "skipped_binary": "{n} files skipped as binary (NUL bytes)",
        "skipped_undecodable": "{n} files skipped as undecodable (not UTF-8)",
        "skipped_unreadable": "{n} files could not be read (permissions, I/O, a corrupt archive member)",
        "skipped_unreadable_dir": "{n} directories could not be listed",
        "skipped_too_large": f"{{n}} files over seeds.max_file_bytes={cfg.max_file_bytes} skipped, never read",
        "skipped_minified": f"{{n}} files skipped as minified or generated (average line over "
                            f"seeds.max_avg_line_chars={cfg.max_avg_line_chars})",
        "skipped_empty": "{n} files skipped as empty or only whitespace",
        "skipped_duplicate": "{n} files skipped as duplicates of another file's content (vendored copies)",
        "skipped_license": f"{{n}} files skipped: licence not in seeds.licenses={','.join(cfg.licenses)}",
        "skipped_over_cap": f"{{n}} files not read: over seeds.max_files_per_language={cfg.max_files_per_language} "
                            "(a fixed random subset is read)",
        "skipped_gitignored": "{n} paths ignored by .gitignore (a directory counts once)",
        "skipped_vendored_dir": "{n} vendored directories not read (node_modules, venv, site-packages)",
        "skipped_not_regular_file": "{n} symlinks or special files not followed",
        "skipped_unknown_extension": "{n} files skipped: extension not in data/languages.tsv",
        "skipped_unknown_language": "{n} table rows skipped: language not in data/languages.tsv",
    }
    notes += [text.format(n=s[k]) for k, text in why.items() if s.get(k)]
    return notes
