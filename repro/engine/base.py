"""What every generation backend shares: requests, results, statistics, the Engine interface,
settings checks and JSON grammars. The backends are beside it, one per file."""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from repro.artifacts import ReproError


BACKENDS = ("llama-batched", "llama", "openai")
# Request.fill_loops: the longest cycle, in tokens, that is looked for.
LOOP_MAX_PERIOD = 128
LOCAL_BACKENDS = ("llama-batched", "llama")


@dataclass
class Request:
    key: str
    prompt: str = ""                      # raw text (a completion) ...
    messages: list[dict] | None = None    # ... or chat messages, rendered with the GGUF's template
    max_tokens: int = 512                 # 0 = up to the end of the context (openai: the server's default)
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0              # 0 = greedy
    top_p: float = 1.0
    seed: int = 0                         # per request, so sampled answers do not depend on batching
    json_schema: dict | None = None       # constrain the answer to JSON of this schema
    prefill: str = ""                     # the answer's start, given (as Magicoder's evaluation prefills
                                          # a code fence); not part of the returned text
    fill_loops: int = 0                   # llama-batched, greedy, no json_schema: once the answer's last N
                                          # tokens repeat a cycle of at most LOOP_MAX_PERIOD tokens (3 times
                                          # over at least), the cycle is repeated up to max_tokens instead of
                                          # decoded (what greedy decoding gives while the loop holds); 0 = off


@dataclass
class Completion:
    key: str
    text: str
    finish_reason: str                    # stop | length | prompt_too_long | error (openai only)
    prompt_tokens: int
    completion_tokens: int
    seconds: float                        # from admission to finish (overlaps with other requests)
    error: str = ""                       # why, when finish_reason is "error"
    filled: int = 0                       # answer tokens written by repeating a loop (Request.fill_loops)


@dataclass
class Stats:
    prompt_tokens: int = 0
    completion_tokens: int = 0            # decoded answer tokens (those filled by a loop are not counted)
    filled_tokens: int = 0                # answer tokens repeated from a loop (Request.fill_loops), not decoded
    seconds: float = 0.0                  # time inside run(), not counting the caller's between results
    prompt_seconds: float = 0.0           # spent evaluating prompts (not known for openai)
    prompt_tokens_reused: int = 0         # prompt tokens found in a sequence's cache already
    decode_seconds: float = 0.0           # spent decoding (and sampling) answer tokens (not known for openai)
    errors: int = 0                       # requests that came back as finish reason "error"

    @property
    def tokens_per_second(self) -> float | None:
        """Answer tokens per second of the engine's time, prompts included: what a user waits for."""
        return self.completion_tokens / self.seconds if self.seconds else None

    @property
    def decode_tokens_per_second(self) -> float | None:
        return self.completion_tokens / self.decode_seconds if self.decode_seconds else None

    @property
    def prompt_tokens_per_second(self) -> float | None:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else None


@dataclass
class Server:
    """Where the `openai` backend sends requests, and how patiently."""
    base_url: str                         # one URL, or several comma-separated (`urls`)
    model: str = ""                       # "" = the first model the server lists
    api_key: str = ""                     # "" = none (local servers need none)
    timeout_s: float = 600.0              # per request, including its wait in the server's queue
    retries: int = 2                      # attempts after the first, per request: connection errors,
                                          # timeouts, 408, 409, 429, 5xx (repro/engine/openai_backend.py)
    extra_body: dict = field(default_factory=dict)  # server-specific fields sent with every request
    section: str = "generate"             # for error messages: which settings to fix

    @property
    def urls(self) -> list[str]:
        """The endpoints of `base_url`: split at commas, blanks dropped (a trailing comma is no endpoint)."""
        return [u.strip() for u in self.base_url.split(",") if u.strip()]


def check_settings(section: str, backend: str, parallel: int, n_ctx: int,
                   backends: tuple[str, ...] = LOCAL_BACKENDS) -> None:
    if backend not in backends:
        raise ReproError(f"{section}.backend={backend!r} is unknown; use one of: {', '.join(backends)}")
    if parallel < 1:
        raise ReproError(f"{section}.parallel={parallel}: needs at least 1 sequence")
    if n_ctx < 16:
        raise ReproError(f"{section}.n_ctx={n_ctx}: too small for any prompt; the default is 2048")


class Engine(abc.ABC):
    threads: int
    stats: Stats
    tokenizer: object = None  # the model's own (llama_backend.Tokenizer), where one is at hand
    model_name: str = ""                  # what answers: a GGUF file name, or the server's model id

    @abc.abstractmethod
    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Answer every request; yield each result as soon as it is finished."""

    def set_threads(self, n: int) -> None:
        """Decode with `n` threads from the next step on; callable from another Python thread.
        Only the batched llama.cpp engine can; the others keep the threads they started with."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def grammar_of(schema: dict) -> str:
    """llama.cpp's GBNF grammar for JSON matching `schema` (cached: conversion is pure Python)."""
    key = json.dumps(schema, sort_keys=True)
    if key not in _grammars:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        _grammars[key] = strict_json_strings(json_schema_to_gbnf(key))
    return _grammars[key]


def strict_json_strings(gbnf: str) -> str:
    """Put llama.cpp's own JSON string rule (escapes only) into a grammar from llama-cpp-python.

    llama-cpp-python's converter lets a string hold raw control characters (a bare newline),
    which is not JSON: small models then write code with real line breaks, and 8 of 16 answers
    failed a JSON parser (bench/structured.py).
    """
    hex4 = " ".join(["[0-9a-fA-F]"] * 4)
    rule = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ' + hex4 + ")"
    return "\n".join(rule if line.startswith("char ::=") else line for line in gbnf.splitlines())


_grammars: dict[str, str] = {}
