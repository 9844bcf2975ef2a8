"""Serve a GGUF over an OpenAI-compatible HTTP API: llama-cpp-python's server, two fixes applied.

    .venv/bin/python -m repro.serve --model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m \\
        --port 8000 --n_ctx 2048 [any other `python -m llama_cpp.server` option]
    repro generate --set generate.backend=openai --set generate.base_url=http://127.0.0.1:8000/v1

Needs the `server` extra (pip install -e '.[server]'). `--model` also takes our model specs.
What this adds to `python -m llama_cpp.server`:
- the AMX crash fix of repro/models.py: the stock server crashes on its first decode on CPUs
  with AMX (the weights' "extra" buffer types), and it has no setting to turn them off;
- `repeat_penalty` defaults to 1.0 (no penalty) as in the Python library, llama.cpp's own
  server and the paper's greedy decoding; the stock server's default of 1.1 changes greedy text;
- JSON-schema answers (`response_format`) get strings with escapes only, as in-process
  (see repro.engine.strict_json_strings): the stock grammar lets raw newlines into strings.

It is the stock server otherwise: requests are answered one at a time (its lock), so concurrent
clients queue. It does not batch sequences; for that use llama.cpp's own `llama-server`, vLLM or
SGLang.
"""

from __future__ import annotations

import sys


def _patch() -> None:
    import llama_cpp.llama_cpp as C
    from llama_cpp import llama_grammar
    from llama_cpp.server import types

    from repro.engine import strict_json_strings

    orig = C.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False  # see repro.models._without_extra_buffer_types
        return p

    C.llama_model_default_params = params
    to_gbnf = llama_grammar.json_schema_to_gbnf
    llama_grammar.json_schema_to_gbnf = lambda *a, **kw: strict_json_strings(to_gbnf(*a, **kw))
    for model in (types.CreateCompletionRequest, types.CreateChatCompletionRequest):
        model.model_fields["repeat_penalty"].default = 1.0
        model.model_rebuild(force=True)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import llama_cpp.server.__main__ as server
    except ImportError as e:
        sys.exit(f"error: the server needs the `server` extra ({e.name} is missing): "
                 "pip install -e '.[server]'")
    if "--model" in argv:  # our specs (embedded:..., hf://...) → a local path
        from repro.artifacts import ReproError
        from repro.models import resolve

        i = argv.index("--model") + 1
        try:
            argv[i] = str(resolve(argv[i]))
        except (ReproError, IndexError) as e:
            sys.exit(f"error: --model: {e or 'give a .gguf path or a model spec'}")
    _patch()
    sys.argv = ["repro.serve", *argv]
    server.main()


if __name__ == "__main__":
    main()
