"""The paper's category analysis (its Figure 2): each pair goes to the nearest of ten categories.

Nearest by the cosine of llama.cpp embeddings of the text and of one sentence per category (the
teacher's last-token state after a prompt that asks for the topic), or by TF-IDF where no GGUF is
at hand. A rough picture of a small sample, not a validated classifier: nothing here was checked
against labelled data. Used by the report (repro/report/sections.py).
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

from repro.artifacts import atomic_path

# The paper's ten categories (its Figure 2), each described by one sentence of ours. The same
# sentence is embedded like a pair (embedding method) or matched word by word (TF-IDF), so it
# names the words such code uses as well as the topic.
CATEGORIES = {
    "Algorithms & data structures": "Algorithms and data structures: sort and search an array or list, binary "
        "search, recursion, dynamic programming, graph traversal, tree, linked list, stack, queue, heap, hash map.",
    "Math": "Mathematical and computational problems: arithmetic, numbers, integer, prime, factorial, fibonacci, "
        "sum, geometry, matrix, equation, probability, calculate a formula.",
    "Database & SQL": "Databases and SQL: query a table with select, insert, update, delete, join, where, group by; "
        "rows, columns, schema, index, transaction; sqlite, postgres, mysql, ORM model.",
    "System design": "System design and architecture: services, modules, interfaces, configuration, logging, "
        "message queue, plugin, operating system, processes, files, file system, kernel, driver.",
    "Security": "Security and cryptography: authentication, authorization, password, hash, encrypt, decrypt, "
        "token, certificate, key, permission, sanitize input, vulnerability.",
    "Performance": "Performance and optimization: speed, memory usage, profiling, concurrency, thread, parallel, "
        "async, lock, cache results, benchmark, efficient code.",
    "Web": "Web development and frameworks: web app route, view, HTTP get or post request and response, REST API "
        "endpoint, jsonify, server, URL, HTML, CSS, browser, Flask, Django, Express, React.",
    "Domain-specific": "Domain-specific problems: finance, bank, science, physics, biology, chemistry, game, audio, "
        "music, image processing, hardware device, network protocol, MIDI.",
    "UI & apps": "User interface and application design: GUI window, button, widget, event, click handler, "
        "layout, menu, dialog, mobile or desktop application, command-line interface.",
    "Data science & ML": "Data science and machine learning: dataset, pandas dataframe, numpy array, statistics, "
        "train a model, neural network, regression, classification, plot, CSV data.",
}
EMBED_CHARS = 600    # each pair is embedded from the first 600 characters of problem + solution
# A decoder model's last hidden state after this prompt sums up the text (PromptEOL, Jiang et al.
# 2023). Mean pooling the teacher's states instead put 18 of 42 tiny-run pairs in one category
# (Database & SQL) with generic list tasks among them; this prompt spread them plausibly (measured).
EMBED_PROMPT = 'This programming task:\n"""\n{}\n"""\nis mainly about the topic of'


def _words(text: str) -> list[str]:
    # Identifiers split at underscores, digits and camelCase humps, so `bubble_sort` and
    # `bubbleSort` both say "sort"; single letters (i, x, a) say nothing.
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", text) if len(w) > 1]


def _tfidf(texts: list[str], labels: list[str]) -> list[str | None]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    descriptions = list(CATEGORIES.values())
    vec = TfidfVectorizer(tokenizer=_words, lowercase=False, token_pattern=None, sublinear_tf=True)
    vec.fit(texts + descriptions)
    sims = (vec.transform(texts) @ vec.transform(descriptions).T).toarray()
    # A text that shares no word with any description is left unassigned, not given the first.
    return [labels[int(row.argmax())] if row.max() > 0 else None for row in sims]


def _key(model_key: str, text: str) -> str:
    return hashlib.sha256(f"{model_key}\0last\0{text}".encode()).hexdigest()


# Vectors an embedding cache keeps at most (a 0.5B teacher's are 3.5 KB: ~14 MB).
CACHE_MAX = 4096


def embed(texts: list[str], gguf: Path, cache: Path | None, model_key: str) -> tuple[list, int]:
    """Last-token, L2-normalized llama.cpp embeddings of `texts` (vectors, how many were computed
    now). Vectors are cached in `cache` by sha256 of model, pooling and text; the model is loaded
    only when a text is missing from it."""
    import numpy as np

    keys = [_key(model_key, t) for t in texts]
    have: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                have = dict(zip(z["keys"].tolist(), z["vectors"]))
        except (OSError, ValueError, KeyError):
            have = {}  # a damaged cache is only a slower report
    todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in have))
    if todo:
        import llama_cpp

        from repro import models

        # A few texts share one decode. llama.cpp keeps logits for every token of a batch (2048 tokens:
        # 1.2 GB with a 152K vocabulary), so the batch is small; one text is at most ~300 tokens.
        n_ctx = 512
        # All layers on the GPU where llama.cpp was built for one (a CPU build ignores it).
        llm = models.load_llama(gguf, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, embedding=True, n_gpu_layers=-1,
                                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST)
        try:
            vectors = llm.embed(todo, normalize=True, truncate=True)
        finally:
            llm.close()
        for t, v in zip(todo, vectors):
            have[_key(model_key, t)] = np.asarray(v, np.float32)
    if cache is not None and todo:
        # What this call uses first, then what earlier calls left, up to CACHE_MAX vectors: the
        # sections of one report (categories, diversity, the Self-Instruct twin; both runs of
        # `repro compare`) share a file, and keeping only one call's texts made them re-embed each
        # other's on every build; the bound keeps it from growing without end.
        kept = list(dict.fromkeys(keys + list(have)))[:CACHE_MAX]
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(kept), vectors=np.stack([have[k] for k in kept]))
    return [have[k] for k in keys], len(todo)


def categorize(texts: list[str], method: str = "tfidf", gguf: Path | None = None, cache: Path | None = None,
               model_key: str = "") -> dict:
    """Assign each text the nearest of CATEGORIES (cosine of embeddings, or of TF-IDF vectors).

    method "embedding" needs `gguf` (any llama.cpp model; `model_key` names it in the cache);
    returns {"method", "assigned": [category or None], "embedded_now", "seconds"}.
    """
    labels = list(CATEGORIES)
    t0 = time.perf_counter()
    if method == "tfidf":
        return {"method": "tfidf", "assigned": _tfidf(texts, labels), "embedded_now": 0,
                "seconds": round(time.perf_counter() - t0, 2)}
    import numpy as np

    prompts = [EMBED_PROMPT.format(t) for t in list(CATEGORIES.values()) + texts]
    vecs, now = embed(prompts, gguf, cache, model_key or str(gguf))
    cats, docs = np.stack(vecs[:len(labels)]), np.stack(vecs[len(labels):]) if texts else np.zeros((0, 1))
    assigned = [labels[int(i)] for i in (docs @ cats.T).argmax(axis=1)] if texts else []
    return {"method": "embedding", "assigned": assigned, "embedded_now": now,
            "seconds": round(time.perf_counter() - t0, 2)}
