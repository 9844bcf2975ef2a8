"""What the report reads: one run directory's manifests, settings and artifacts (`RunData`), the
models' names and token counts, and the small helpers every section uses.

Reads only what is on disk: never a download, never a model's weights (the token counter loads a
vocabulary, nothing more)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from repro.artifacts import ReproError, RunDir

# The paper's own numbers (Magicoder README, EvalPlus pass@1, greedy): 7B models trained on the
# full 75K OSS-Instruct set — a scale reference, not something a 270M student can reach.
PAPER_ROWS = [  # HumanEval, HumanEval+, MBPP, MBPP+
    ("Magicoder-CL-7B (paper)", 60.4, 55.5, 64.2, 52.6),
    ("Magicoder-S-CL-7B (paper)", 70.7, 66.5, 68.4, 56.6),
    ("Magicoder-DS-6.7B (paper)", 66.5, 60.4, 75.4, 61.9),
    ("Magicoder-S-DS-6.7B (paper)", 76.8, 70.7, 75.7, 64.4),
]
PAPER_PAIRS = 75_000  # OSS-Instruct's size in the paper (75K pairs)
BENCH_NAMES = {"humaneval": "HumanEval", "mbpp": "MBPP"}


CACHE_FILE = "report-embeddings.npz"
FIGURE_DIR = "report-figures"
NOT_RUN = "not run yet"

# ---------------------------------------------------------------------------------------------
# The run on disk


class RunData:
    """The run directory's manifests, settings and artifacts, each read once when first needed."""

    def __init__(self, run: RunDir, stages: list):
        self.run, self.path, self._memo = run, run.path, {}
        # The stages with a manifest, in order (repro/pipeline.py's table, passed in: the pipeline
        # runs the report, not the other way round); the optional ones appear only where the
        # run's variant has them.
        self.order = [s.name for s in stages if s.fingerprinted]
        self.optional = tuple(s.name for s in stages if s.variant_only)
        self.m = {s: run.manifest(s) or {} for s in self.order}
        try:
            self.run_json = json.loads((run.path / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            self.run_json = {}

    def stats(self, stage: str) -> dict:
        return self.m[stage].get("stats") or {}

    def setting(self, section: str, key: str):
        """A setting of the run: run.json (the last command's config), else the stage's manifest,
        else the default (a run with neither ran nothing that used it)."""
        from repro import config

        if (v := self.run_json.get("config", {}).get(section, {}).get(key)) is not None:
            return v
        if (v := self.m.get(section, {}).get("config", {}).get(key)) is not None:
            return v
        return getattr(getattr(config.Config(), section), key)

    def table(self, name: str) -> list[dict] | None:
        """The rows of a parquet artifact (None when the stage has not written it)."""
        if name not in self._memo:
            p = self.path / name
            if not p.exists():
                self._memo[name] = None
            else:
                import pyarrow.parquet as pq
                self._memo[name] = pq.read_table(p).to_pylist()
        return self._memo[name]

    def teacher(self) -> str:
        return self.setting("generate", "teacher") or ""

    def student(self) -> str:
        return self.setting("train", "student") or ""


def counts(query: str) -> list[tuple[str, int]]:
    import duckdb

    return [(str(k), int(n)) for k, n in duckdb.connect().execute(query).fetchall()]


def model_title(spec: str) -> str:
    from repro import models

    if spec.startswith("embedded:") and spec.removeprefix("embedded:") in models.EMBEDDED:
        return models.EMBEDDED[spec.removeprefix("embedded:")].title
    return Path(spec).name if spec else "(none)"


def local_gguf(spec: str) -> Path | None:
    """The model's GGUF if it is on this machine without a download, else None (never raises)."""
    from repro import models

    if not spec or spec.startswith("hf://"):
        return None  # the hub would need a network; the report must not
    try:
        return models.resolve(spec)
    except (ReproError, OSError):
        return None


def model_sha(spec: str) -> str:
    from repro import models

    name = spec.removeprefix("embedded:")
    return models.EMBEDDED[name].sha256 if spec.startswith("embedded:") and name in models.EMBEDDED else ""


# ---------------------------------------------------------------------------------------------
# Token counts


def token_counter(specs: list[str]):
    """(count(text) -> int, what it counts): the first of `specs` whose GGUF is here, its
    vocabulary only (no weights, well under a second); else a stated regex."""
    from repro import models

    for spec in specs:
        if (path := local_gguf(spec)) is None:
            continue
        try:
            vocab = models.llama_model(path, vocab_only=True, what="read its vocabulary")
        except ReproError:
            continue
        return ((lambda t: len(vocab.tokenize(t.encode("utf-8"), False, False))),
                f"tokens of the {model_title(spec)} tokenizer (llama.cpp, no BOS)")
    pattern = re.compile(r"\w+|[^\w\s]")
    return ((lambda t: len(pattern.findall(t))),
            "regex tokens (runs of word characters and single punctuation marks, `\\w+|[^\\w\\s]`): "
            "no tokenizer GGUF on this machine")


# ---------------------------------------------------------------------------------------------
# Figures



def png_of(draw, size=(8, 3.2)) -> bytes:
    """A PNG of `draw(fig)` (matplotlib's Agg backend: no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=110)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def figure_block(name: str, png: bytes, caption: str) -> tuple:
    return ("fig", name, png, caption)


def error_bars(results: list) -> list:
    """matplotlib's `yerr` in percent for pass@1 results ({"pass@1", "ci95"}, or None for a bar
    of 0): below and above each rate. Clamped at 0: results.json files written before
    stats.wilson held the rate exactly at 0/n and n/n have bounds a rounding error past it."""
    return [[max(0.0, 100 * (v["pass@1"] - v["ci95"][0])) if v else 0 for v in results],
            [max(0.0, 100 * (v["ci95"][1] - v["pass@1"])) if v else 0 for v in results]]


# ---------------------------------------------------------------------------------------------
# Small pieces the sections share

def not_run(stage: str, artifact: str) -> tuple:
    return ("p", f"The {stage} stage has {NOT_RUN} (no `{artifact}`).")


def pct(x: dict) -> str:
    return f"{100 * x['pass@1']:.1f} ({100 * x['ci95'][0]:.0f}–{100 * x['ci95'][1]:.0f})"


def columns(ev: dict) -> list[tuple[str, str, str]]:
    return [(b, split, BENCH_NAMES.get(b, b) + ("+" if split == "plus" else ""))
            for b, info in ev.get("benchmarks", {}).items()
            for split in (("base", "plus") if info.get("plus") else ("base",))]


def join(items: list[str]) -> str:
    items = [i for i in items if i]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""
