"""Serve the teacher over an OpenAI-compatible HTTP API: `repro serve`, and `python -m repro.serve`.

    repro serve --engine llama|vllm|sglang [--profile P] [--set ...] [--port 8000] [--replicas R]
                [--tensor-parallel T] [--gpus 0,1,...] [--model SPEC] [-- ENGINE OPTIONS]
    repro generate --set generate.backend=openai --set generate.base_url=<the URL(s) it printed>

`repro serve` starts one server per replica for the profile's teacher (`generate.teacher`, or
`--model`), waits until each answers `GET /v1/models`, prints their URLs on one line of stdout
(comma-separated), and on Ctrl-C or SIGTERM stops them: SIGTERM to each server's process group,
a wait, then SIGKILL. Replica i listens on --port + i and sees its own T GPUs
(CUDA_VISIBLE_DEVICES). Each server's output goes to runs/serve/<engine>-<port>.log.

- `llama`: `python -m repro.serve` below (llama-cpp-python's server, the `server` extra). It
  answers one request at a time; several replicas on one CPU share its cores.
- `vllm`: `vllm serve MODEL --tensor-parallel-size T` (the `vllm` extra; a CUDA GPU). It loads
  a transformers checkpoint (an HF id or folder: `--model`); a GGUF only experimentally, one
  file, with the tokenizer of the model it was quantized from (`--tokenizer`, known for the
  embedded teachers and for hf://ORG/NAME-GGUF/... specs; recent vLLM needs its GGUF plugin).
  `--generation-config vllm`: the defaults in the model's generation_config.json (Qwen's set a
  repetition penalty and top_k) would otherwise change greedy answers.
- `sglang`: `python -m sglang.launch_server --model-path MODEL --tp T` (the `sglang` extra). It
  is built for transformers checkpoints (`--model`); a .gguf path selects its GGUF loader.
  `--sampling-defaults openai`, for the same reason as vLLM's flag.

It does not balance requests across replicas (the openai backend's list of URLs does), restart
a server that dies, download anything itself (vLLM and SGLang fetch a hub id on their own), or
tune the engines: options after `--` are passed to every server unchanged.

`python -m repro.serve` is llama-cpp-python's server with fixes applied:

    .venv/bin/python -m repro.serve --model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m \\
        --port 8000 --n_ctx 2048 [any other `python -m llama_cpp.server` option]

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

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from repro.artifacts import ReproError

ENGINES = ("llama", "vllm", "sglang")
# The pyproject extra that installs each engine, and the modules it must provide.
EXTRA = {"llama": "server", "vllm": "vllm", "sglang": "sglang"}
NEEDS = {"llama": ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"),
         "vllm": ("vllm",), "sglang": ("sglang",)}
# The transformers checkpoints the embedded GGUFs were quantized from: their tokenizers for vLLM
# and SGLang, and the base model a published fine-tune names (repro/publish.py).
ORIGINAL = {"qwen2.5-coder-0.5b-instruct-q4_k_m": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
            "qwen2.5-coder-1.5b-instruct-q4_k_m": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
            "gemma-3-270m-q4_k_m": "google/gemma-3-270m"}
READY_TIMEOUT_S = {"llama": 300.0, "vllm": 1800.0, "sglang": 1800.0}  # vLLM/SGLang may download and compile
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Launch:
    """One server: its command line, what it adds to the environment, and where it answers."""
    argv: list[str]
    env: dict[str, str]
    port: int
    url: str                      # what generate.base_url takes
    poll_url: str                 # the same server as this machine reaches it
    host: str = "127.0.0.1"       # the address it listens on
    gpus: tuple[str, ...] = field(default=())


def check_engine(engine: str) -> None:
    """One line naming the extra when the engine's package is not installed; imports nothing."""
    if engine not in ENGINES:
        raise ReproError(f"repro serve --engine {engine}: unknown engine; choose one of: {', '.join(ENGINES)}")
    missing = [m for m in NEEDS[engine] if importlib.util.find_spec(m) is None]
    if missing:
        where = " (it needs a CUDA GPU; see docs/running.md)" if engine != "llama" else ""
        raise ReproError(f"repro serve --engine {engine}: {missing[0]} is not installed in this environment; "
                         f"install the `{EXTRA[engine]}` extra: pip install -e '.[{EXTRA[engine]}]'{where}")


def original_of(spec: str) -> str:
    """The hub id of the transformers checkpoint a GGUF spec was quantized from, or '' when not
    known: an embedded model's, or ORG/NAME for hf://ORG/NAME-GGUF/file.gguf."""
    if spec.startswith("embedded:"):
        return ORIGINAL.get(spec.removeprefix("embedded:"), "")
    m = re.fullmatch(r"hf://([^/]+)/([^/]+?)-GGUF/.+", spec, flags=re.IGNORECASE)
    return f"{m.group(1)}/{m.group(2)}" if m else ""


def served_name(spec: str) -> str:
    """The model name every replica answers to (the same on every machine, whatever the path)."""
    if spec.startswith("embedded:"):
        return spec.removeprefix("embedded:")
    if spec.startswith("hf://"):
        return Path(spec).stem
    p = Path(spec.split("@")[0])
    return p.stem if p.suffix == ".gguf" else (p.name if p.exists() else spec.split("@")[0])


def model_args(engine: str, spec: str, tokenizer: str = "") -> tuple[str, str, str]:
    """(model, tokenizer, revision) for the engine's command line. A GGUF spec is resolved to a
    local file (assembled or downloaded once); a transformers checkpoint (an HF id, optionally
    @revision, or a folder) goes to vLLM and SGLang as it is. llama.cpp takes GGUF only."""
    from repro import models

    if engine != "llama" and models.is_checkpoint(spec):
        name, _, rev = spec.partition("@")
        return (str(Path(name).expanduser().resolve()) if Path(name).expanduser().is_dir() else name), tokenizer, rev
    path = str(models.resolve(spec))  # one line for a missing file or a checkpoint given to llama
    if engine == "llama":
        return path, "", ""
    tokenizer = tokenizer or original_of(spec)
    if engine == "vllm" and not tokenizer:
        raise ReproError(f"repro serve --engine vllm: {spec} is a GGUF and its original model is not known here; "
                         "give --tokenizer ORG/NAME (the transformers model it was quantized from), or serve that "
                         "model itself with --model ORG/NAME")
    return path, tokenizer, ""


def gpu_groups(gpus: list[str], replicas: int | None, tensor_parallel: int) -> list[tuple[str, ...]]:
    """The GPUs of each replica: consecutive groups of `tensor_parallel` from `gpus`; with no GPUs,
    one empty group per replica. `replicas` None: as many as the GPUs hold (else 1)."""
    tp = tensor_parallel
    if tp < 1 or (replicas is not None and replicas < 1):
        raise ReproError("repro serve: --replicas and --tensor-parallel must be 1 or more")
    if not gpus:
        return [()] * (replicas or 1)
    n = replicas if replicas is not None else len(gpus) // tp
    if n < 1 or n * tp > len(gpus):
        raise ReproError(f"repro serve: {n or 1} replica(s) x --tensor-parallel {tp} need {(n or 1) * tp} GPUs, and "
                         f"{len(gpus)} are given ({','.join(gpus)}); lower --replicas or --tensor-parallel, or "
                         "list more with --gpus")
    return [tuple(gpus[i * tp:(i + 1) * tp]) for i in range(n)]


def visible_gpus(engine: str) -> list[str]:
    """The GPUs replicas may be pinned to when --gpus is not given: CUDA_VISIBLE_DEVICES if set,
    else those nvidia-smi lists; none for a llama.cpp without GPU offload."""
    from repro import gpu

    if engine == "llama" and not gpu.llama_offload():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(len(gpu.cuda_devices()))]


def launches(engine: str, model: str, *, name: str, groups: list[tuple[str, ...]], tensor_parallel: int = 1,
             host: str = "127.0.0.1", port: int = 8000, n_ctx: int = 2048, seed: int = 42, threads: int = 1,
             n_gpu_layers: int = -1, tokenizer: str = "", revision: str = "",
             extra: tuple[str, ...] | list[str] = ()) -> list[Launch]:
    """The command line of each replica (one per GPU group), on ports port, port+1, ...; starts
    nothing. `model` is what the engine loads (a file, folder or hub id)."""
    public = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    out = []
    for i, group in enumerate(groups):
        p = port + i
        if engine == "llama":
            argv = [sys.executable, "-m", "repro.serve", "--model", model, "--model_alias", name, "--host", host,
                    "--port", str(p), "--n_ctx", str(n_ctx), "--seed", str(seed), "--n_gpu_layers", str(n_gpu_layers),
                    "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        elif engine == "vllm":
            argv = ["vllm", "serve", model, "--host", host, "--port", str(p), "--served-model-name", name,
                    "--tensor-parallel-size", str(tensor_parallel), "--max-model-len", str(n_ctx), "--seed", str(seed),
                    "--generation-config", "vllm"]
            argv += ["--tokenizer", tokenizer] if tokenizer else []
            argv += ["--revision", revision] if revision else []
        elif engine == "sglang":
            argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", host,
                    "--port", str(p), "--served-model-name", name, "--tp", str(tensor_parallel),
                    "--context-length", str(n_ctx), "--random-seed", str(seed), "--sampling-defaults", "openai"]
            argv += ["--tokenizer-path", tokenizer] if tokenizer else []
            argv += ["--revision", revision] if revision else []
        else:
            raise ReproError(f"repro serve --engine {engine}: unknown engine; choose one of: {', '.join(ENGINES)}")
        env = {"CUDA_VISIBLE_DEVICES": ",".join(group)} if group else {}
        out.append(Launch(argv + list(extra), env, p, f"http://{public}:{p}/v1", f"http://{local}:{p}/v1", host, group))
    return out


# ---------------------------------------------------------------------------------------------
# Running them


def _check_ports(host: str, ports: list[int], first: int) -> None:
    bind = "0.0.0.0" if host in ("0.0.0.0", "") else host
    for p in ports:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no owner
            try:
                s.bind((bind, p))
            except OSError as e:
                raise ReproError(f"repro serve --port {first}: port {p} on {bind} is not free ({e.strerror}; replica i "
                                 "listens on --port + i); choose another --port or stop what holds it") from None


def _executable(argv: list[str]) -> list[str]:
    """`vllm` → the console script beside this Python (a venv's bin/), else on PATH."""
    if argv[0] != "vllm":
        return argv
    exe = shutil.which("vllm", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not exe:
        raise ReproError("repro serve --engine vllm: the `vllm` command is not on PATH nor beside this Python; "
                         "pip install -e '.[vllm]'")
    return [exe, *argv[1:]]


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=3) as r:
            return r.status == 200 and "data" in json.loads(r.read() or b"{}")
    except (OSError, ValueError):
        return False


def _stop(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM to each server's process group, wait up to `timeout`, then SIGKILL what is left."""
    def signal_groups(sig):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)  # each server leads its own session: its workers go with it

    signal_groups(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    signal_groups(signal.SIGKILL)  # stragglers, and any worker left behind by a leader that exited
    for p in procs:
        p.wait()


class _Stop(Exception):
    pass


def run(launches_: list[Launch], engine: str, *, log_dir: Path, ready_timeout: float,
        stop_timeout: float = STOP_TIMEOUT_S, note=None) -> int:
    """Start the servers, wait until each answers, print their URLs (stdout, one line), then wait
    for Ctrl-C or SIGTERM and stop them. A server that exits before it answers stops them all
    with one line naming its log; one that exits later is reported and the others keep serving."""
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    _check_ports(launches_[0].host, [x.port for x in launches_], launches_[0].port)
    argvs = [_executable(x.argv) for x in launches_]
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"{engine}-{x.port}.log" for x in launches_]

    def on_signal(signum, frame):
        raise _Stop()

    # SIGINT raises KeyboardInterrupt already; a SIGHUP ignored on purpose (nohup) stays ignored.
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)
           if s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN}
    old[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    procs: list[subprocess.Popen] = []
    try:
        for x, argv, log in zip(launches_, argvs, logs):
            with open(log, "ab") as f:
                f.write(f"\n$ {' '.join(argv)}\n".encode())
                f.flush()
                procs.append(subprocess.Popen(argv, env={**os.environ, **x.env}, stdout=f, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        note(f"serve: started {len(procs)} {engine} server(s), output in {log_dir}/; waiting for them to answer "
             f"(up to {ready_timeout:.0f} s)")
        pending, deadline = set(range(len(procs))), time.monotonic() + ready_timeout
        while pending:
            for i in sorted(pending):
                if procs[i].poll() is not None:
                    raise ReproError(f"repro serve: the {engine} server on port {launches_[i].port} exited with status "
                                     f"{procs[i].returncode} before it answered; see {logs[i]} (last line: "
                                     f"{_last_line(logs[i])})")
                if _answers(launches_[i].poll_url):
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                i = min(pending)
                raise ReproError(f"repro serve: the {engine} server on port {launches_[i].port} did not answer "
                                 f"{launches_[i].poll_url}/models within {ready_timeout:.0f} s; see {logs[i]}, or "
                                 "raise --ready-timeout")
            if pending:
                time.sleep(0.5)
        urls = ",".join(x.url for x in launches_)
        print(urls, flush=True)
        note(f"serve: ready; generate with --set generate.backend=openai --set generate.base_url={urls}; "
             "Ctrl-C or SIGTERM stops the server(s)")
        alive = set(range(len(procs)))
        while alive:
            time.sleep(0.5)
            for i in sorted(alive):
                if procs[i].poll() is not None:
                    alive.discard(i)
                    note(f"serve: the server at {launches_[i].url} exited with status {procs[i].returncode} "
                         f"(see {logs[i]}); {len(alive)} left")
        raise ReproError(f"repro serve: every {engine} server exited; see the logs in {log_dir}/")
    except (KeyboardInterrupt, _Stop):
        pass  # the way to stop them
    finally:
        for s in old:  # a second Ctrl-C or SIGTERM must not cut the stop short
            signal.signal(s, signal.SIG_IGN)
        _stop(procs, stop_timeout)
        for s, h in old.items():
            signal.signal(s, h)
    note(f"serve: stopped {len(procs)} server(s)")
    return 0


def start(cfg, engine: str, *, model: str = "", tokenizer: str = "", host: str = "127.0.0.1", port: int = 8000,
          replicas: int | None = None, tensor_parallel: int = 1, gpus: str = "", extra: list[str] | None = None,
          log_dir: Path | None = None, ready_timeout: float = 0.0) -> int:
    """`repro serve`: check the engine, resolve the teacher, build the command lines, run them."""
    from repro import models
    from repro.artifacts import ROOT

    check_engine(engine)
    spec = model or cfg.generate.teacher
    if not spec:
        raise ReproError("repro serve: generate.teacher is empty, so there is nothing to serve; set it or give "
                         "--model (a .gguf, embedded:NAME, hf://..., or for vllm/sglang an HF id or folder)")
    if not 1 <= port <= 65535:
        raise ReproError(f"repro serve --port {port}: not a port; give 1-65535")
    listed = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else visible_gpus(engine)
    groups = gpu_groups(listed, replicas, tensor_parallel)
    if engine != "llama" and len(groups) > 1 and not listed:
        raise ReproError(f"repro serve --replicas {len(groups)}: no GPU was found to pin each replica to "
                         "(nvidia-smi lists none, CUDA_VISIBLE_DEVICES is unset); give --gpus")
    if engine == "llama" and tensor_parallel > 1 and not listed:
        raise ReproError("repro serve --engine llama --tensor-parallel: llama.cpp here has no GPU to split the model "
                         "over; drop --tensor-parallel (it means GPUs per replica)")
    if port + len(groups) - 1 > 65535:
        raise ReproError(f"repro serve --port {port}: {len(groups)} replicas need ports up to "
                         f"{port + len(groups) - 1}; choose a lower --port")
    path, tok, rev = model_args(engine, spec, tokenizer)
    threads = models.choose_threads(cfg.generate.threads) if engine == "llama" else 1
    if engine == "llama" and not any(groups):  # CPU replicas share the cores
        threads = max(1, threads // len(groups))
    ls = launches(engine, path, name=served_name(spec), groups=groups, tensor_parallel=tensor_parallel, host=host,
                  port=port, n_ctx=cfg.generate.n_ctx, seed=cfg.generate.seed, threads=threads,
                  n_gpu_layers=cfg.generate.n_gpu_layers, tokenizer=tok, revision=rev, extra=extra or [])
    if tok and tok != tokenizer:
        print(f"serve: the tokenizer of {tok} (the model {spec} was quantized from)", file=sys.stderr)
    return run(ls, engine, log_dir=log_dir or ROOT / "runs" / "serve",
               ready_timeout=ready_timeout or READY_TIMEOUT_S[engine])


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
