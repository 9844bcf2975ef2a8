"""Diversity measures of one data set of problems (issue 25), each with a bootstrap 95% interval
over pairs, and the difference of two data sets with its interval.

The measures (docs/diversity.md has the definitions in full):

- `distinct_1`, `distinct_2`, `distinct_3`: distinct word n-grams per 1,000 words over the
  problems. Words are runs of word characters (`\\w+`) in the lower-cased problem; n-grams do not
  cross problems. Distinct-n falls as a corpus grows, so two sets are compared at equal size only
  (`equal_size`).
- `opening_share`: the share of problems whose first OPENING_WORDS words are the most frequent
  such opening (the "template bias"); the opening itself is kept beside it.
- `humaneval_similarity`: the mean of the clean stage's per-pair TF-IDF similarity to HumanEval.
- `cosine_distance`: mean cosine distance (1 - cosine) over all pairs of different items, of the
  vectors the category analysis uses (teacher embeddings, or TF-IDF where the GGUF is absent).
- `category_entropy`: Shannon entropy in bits of the share of items per category (the category
  analysis's assignment; unassigned items left out). At most log2(10) = 3.32.

The bootstrap resamples the pairs with replacement RESAMPLES times with a fixed seed. Resampling
repeats items, which lowers every measure of variety (a repeat adds no new n-gram), so the
percentiles are shifted by the bootstrap's bias (point estimate minus the resamples' mean): a
bias-corrected percentile interval, clipped to the measure's range. Within a resample, two copies of one item are not a pair
(cosine distance). A difference "holds" when its interval excludes 0.

Does NOT: load any model itself (vectors come from repro/report/categories.py), read or write
files, or judge what a difference means; it is a small-sample picture, not a significance test
across many measures.
"""

from __future__ import annotations

import random
import re

import numpy as np

NGRAMS = (1, 2, 3)
OPENING_WORDS = 4
RESAMPLES = 1000
SEED = 0
_WORD = re.compile(r"\w+")
_CHUNK = 100  # resamples per matrix product: bounded memory for ~1000 pairs

# name -> (label, which way is more diverse / further from the benchmark)
MEASURES = {
    "distinct_1": ("distinct 1-grams per 1,000 words", "higher"),
    "distinct_2": ("distinct 2-grams per 1,000 words", "higher"),
    "distinct_3": ("distinct 3-grams per 1,000 words", "higher"),
    "opening_share": (f"share of the most frequent opening (first {OPENING_WORDS} words)", "lower"),
    "humaneval_similarity": ("mean TF-IDF similarity to HumanEval", "lower"),
    "cosine_distance": ("mean pairwise cosine distance", "higher"),
    "category_entropy": ("category entropy (bits)", "higher"),
}


def words(text: str | None) -> list[str]:
    """The lower-cased runs of word characters of `text` (no stemming, no stop words)."""
    return _WORD.findall((text or "").lower())


def opening(text: str | None, k: int = OPENING_WORDS) -> str:
    """The first `k` words of `text`, joined by spaces (fewer where the text is shorter)."""
    return " ".join(words(text)[:k])


def equal_size(n_a: int, n_b: int, seed: int = SEED) -> tuple[list[int], list[int]]:
    """Indices that bring two sets to the smaller one's size: the smaller set whole, a sorted
    random sample (fixed seed) of the larger. Does NOT look at the contents."""
    n = min(n_a, n_b)
    pick = (lambda m: list(range(m)) if m == n else sorted(random.Random(seed).sample(range(m), n)))
    return pick(n_a), pick(n_b)


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """A (resamples x n) matrix: how often each item is drawn in each bootstrap resample."""
    if n == 0:
        return np.zeros((resamples, 0))
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    flat = (np.arange(resamples)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _chunked(fn, counts: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(counts[i:i + _CHUNK]) for i in range(0, len(counts), _CHUNK)]) if len(counts) else \
        np.zeros(0)


def _incidence(keys_per_item: list[list]):
    """A binary (items x distinct keys) sparse matrix: which keys each item has."""
    from scipy import sparse

    ids: dict = {}
    rows, cols = [], []
    for i, keys in enumerate(keys_per_item):
        for k in set(keys):
            rows.append(i)
            cols.append(ids.setdefault(k, len(ids)))
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(keys_per_item), max(1, len(ids))))


def _distinct(toks: list[list[str]], n: int):
    grams = [[tuple(t[i:i + n]) for i in range(len(t) - n + 1)] for t in toks]
    m = _incidence(grams).T.tocsr()  # keys x items
    length = np.array([len(t) for t in toks], np.float64)

    def fn(c):
        present = (m @ c.T) > 0  # keys x resamples
        total = c @ length
        return np.where(total > 0, np.asarray(present.sum(axis=0)).ravel() / np.maximum(total, 1) * 1000, 0.0)
    return fn


def _opening_share(openings: list[str]):
    m = _incidence([[o] for o in openings]).T.tocsr()

    def fn(c):
        return np.asarray((m @ c.T).max(axis=0)).ravel() / np.maximum(c.sum(axis=1), 1)
    return fn


def _mean(values: np.ndarray):
    return lambda c: (c @ values) / np.maximum(c.sum(axis=1), 1)


def _entropy(labels: list):
    names = sorted({x for x in labels if x is not None})
    onehot = np.array([[x == name for name in names] for x in labels], np.float64).reshape(len(labels), len(names))

    def fn(c):
        k = c @ onehot
        p = k / np.maximum(k.sum(axis=1, keepdims=True), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0.0).sum(axis=1)
    return fn


def _cosine_distance(vectors: np.ndarray):
    x = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1)
    d = 1.0 - x @ x.T
    np.fill_diagonal(d, 0.0)

    def fn(c):
        s = c.sum(axis=1)
        pairs = s * s - (c * c).sum(axis=1)  # ordered pairs of different items
        return ((c @ d) * c).sum(axis=1) / np.maximum(pairs, 1)
    return fn


def _measure(fn, n: int, counts: np.ndarray, bounds=(0.0, np.inf), **extra) -> dict:
    point = float(fn(np.ones((1, n)))[0])
    boot = _chunked(fn, counts)
    shift = point - float(boot.mean())
    lo, hi = np.clip(np.percentile(boot, [2.5, 97.5]) + shift, *bounds)  # the shift may pass a bound
    # The shifted percentiles can miss the point estimate by a rounding error where every resample agrees.
    return {"value": point, "ci95": [min(float(lo), point), max(float(hi), point)], "_boot": boot + shift, **extra}


def cheap(problems: list[str], similarity: list[float | None] | None = None, resamples: int = RESAMPLES,
          seed: int = SEED) -> dict:
    """distinct_1..3, opening_share (with `opening`) and, where every item has one, the mean of
    `similarity`, each {"value", "ci95", "_boot"}. Needs no model. Does NOT subsample: bring two
    sets to equal size first (`equal_size`)."""
    n = len(problems)
    if n == 0:
        return {}
    counts = resample_counts(n, resamples, seed)
    toks = [words(p) for p in problems]
    out = {f"distinct_{k}": _measure(_distinct(toks, k), n, counts) for k in NGRAMS}
    opens = [opening(p) for p in problems]
    top = max(sorted(set(opens)), key=opens.count)
    out["opening_share"] = _measure(_opening_share(opens), n, counts, (0.0, 1.0), opening=top)
    if similarity is not None and len(similarity) == n and all(s is not None for s in similarity):
        out["humaneval_similarity"] = _measure(_mean(np.array(similarity, np.float64)), n, counts, (0.0, 1.0))
    return out


def embedded(vectors, labels: list, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """cosine_distance of `vectors` and category_entropy of `labels` (one per item), each
    {"value", "ci95", "_boot"}. Does NOT compute vectors or labels (repro/report/categories.py does)."""
    n = len(labels)
    if n < 2:
        return {}
    counts = resample_counts(n, resamples, seed)
    kinds = len({x for x in labels if x is not None})
    return {"cosine_distance": _measure(_cosine_distance(np.asarray(vectors)), n, counts, (0.0, 2.0)),
            "category_entropy": _measure(_entropy(labels), n, counts, (0.0, float(np.log2(max(kinds, 1)))))}


def summary(measures: dict, digits: int = 4) -> dict:
    """The measures as JSON: value and interval rounded, the bootstrap draws left out."""
    return {k: {**{x: y for x, y in m.items() if not x.startswith("_")}, "value": round(m["value"], digits),
                "ci95": [round(v, digits) for v in m["ci95"]]} for k, m in measures.items()}


def difference(a: dict, b: dict) -> dict:
    """A - B of one measure, with the bias-corrected percentile interval of the independent
    resamples' differences; `holds` when that interval excludes 0."""
    d = a["_boot"] - b["_boot"]
    value = a["value"] - b["value"]
    lo, hi = np.percentile(d, [2.5, 97.5]) + (value - float(d.mean()))
    return {"value": value, "ci95": [float(lo), float(hi)], "holds": bool(lo > 0 or hi < 0)}


def tfidf_vectors(texts: list[str]) -> np.ndarray:
    """L2-normalized TF-IDF rows of `texts`, fit as the category analysis fits them (identifier-split
    words, sublinear tf, on the texts plus the ten category descriptions)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from repro.report.categories import CATEGORIES, _words

    vec = TfidfVectorizer(tokenizer=_words, lowercase=False, token_pattern=None, sublinear_tf=True)
    vec.fit(texts + list(CATEGORIES.values()))
    return vec.transform(texts).toarray()


def vectors_and_labels(texts: list[str], method: str, gguf=None, cache=None, model_key: str = "") -> tuple:
    """(vectors, category labels, method used) of `texts` by the category analysis's own functions:
    method "embedding" (the teacher's last-token embeddings through llama.cpp, cached in `cache`)
    or "tfidf". Does NOT fall back by itself: the caller picks the method."""
    from repro.report.categories import EMBED_PROMPT, categorize, embed

    if method == "embedding":
        res = categorize(texts, "embedding", gguf, cache, model_key)
        vecs, _ = embed([EMBED_PROMPT.format(t) for t in texts], gguf, cache, model_key or str(gguf))
        return np.stack(vecs) if texts else np.zeros((0, 1)), res["assigned"], "embedding"
    return tfidf_vectors(texts) if texts else np.zeros((0, 1)), categorize(texts, "tfidf")["assigned"], "tfidf"


def fmt(name: str, m: dict) -> str:
    """A measure's value with its interval, as the tables print it."""
    d = 3 if name in ("opening_share", "humaneval_similarity", "cosine_distance") else 1
    if name == "category_entropy":
        d = 2
    return f"{m['value']:.{d}f} ({m['ci95'][0]:.{d}f}–{m['ci95'][1]:.{d}f})"

