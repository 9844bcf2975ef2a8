"""Our `llama-batched` engine against llama.cpp's own batched decode, at 8 and 16 sequences.

    .venv/bin/python bench/anchor_llama.py [--model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m]
        [--sequences 8,16] [--tokens 32] [--threads 0] [--repeats 3] [--tool-libs installed|built]
        [--no-tool]

One run, one model, one thread count (chosen once from the load when --threads is 0, then used
by every side), the same real OSS-Instruct prompts as bench/teacher.py. Three decode figures per
sequence count N, each in tokens/s while all N sequences decode together (one token each per step):

- engine: `open_engine("llama-batched", …)` exactly as generate opens it, answering N greedy
  requests of up to --tokens new tokens; timed from outside by watching its `llama_decode` calls,
  so that everything a step costs (batch assembly, logits, argmax, detokenizing, stop search)
  is counted, and only steps that hold all N sequences (prompt evaluation excluded).
- loop: batched-bench's decode loop re-done through llama-cpp-python's ctypes API on the same
  libllama and on the engine's own context (so every context setting is the engine's), over the
  same N prompts: --tokens steps of one random token per sequence, logits requested and never
  read, no sampling. What llama.cpp alone costs for the engine's exact workload.
- tool: the real `llama-batched-bench` built from the llama.cpp sources vendored in the installed
  llama-cpp-python's sdist (built once into the cache, only that target, CPU only), run with the
  engine's settings: -c 2048*N, -b/-ub 512, flash attention off, no weight repacking (the AMX
  crash fix of repro/models.py), non-unified KV cache; its prompt is random tokens as long as
  our longest (which sets every sequence's attention span), evaluated once and copied to every
  sequence (-pps: the same decode work for 1/N of the prompt time).
  By default it runs on the installed package's libllama/libggml (LD_LIBRARY_PATH), the very code
  the engine runs; --tool-libs built uses the ones it was built with.

Prints each side's decode tokens/s by the clock (the target's measure), the share of the
engine's step time spent outside llama_decode (our Python), the engine's ratio to each anchor,
and engine / loop per second of this process's CPU time: other processes' load stretches the
clock but hardly our CPU time, so with 1 thread (no spinning workers) that ratio is the steadiest
measure of what the engine adds; the tool's CPU figure is that of a second, 1-step run taken off.
It does not check answers
(bench/teacher.py compares greedy text with the `llama` reference). On 2 shared cores every
figure moves with the other processes' load: each repeat runs the three sides back to back
(one engine, its prompts evaluated once), and the medians of the repeats are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version
from pathlib import Path

from repro.engine import Request, Stats, open_engine
from repro.generate import load_prompt, render
from repro.models import cache_dir, choose_threads, resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher import snippets  # noqa: E402  (the same prompts as bench/teacher.py)

N_CTX = 2048   # per sequence, as generate's default and bench/teacher.py
N_BATCH = 512  # open_engine's default


# ---------------------------------------------------------------------------------------------
# llama.cpp's own tool


def installed_lib() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def build_tool() -> Path:
    """`llama-batched-bench` from the installed llama-cpp-python's sdist; built once, reused.

    Gets the sdist from pip (its cache first), configures llama.cpp as llama-cpp-python does
    (shared libraries, native CPU flags, no CUDA) and builds that one target: 18.5 min on 2 loaded cores.
    """
    ver = version("llama-cpp-python")
    root = cache_dir() / f"llama-batched-bench-{ver}"
    exe = root / "build" / "bin" / "llama-batched-bench"
    if exe.is_file():
        return exe
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{ver}.tar.gz"
    if not sdist.is_file():
        print(f"anchor: downloading the llama-cpp-python {ver} sdist", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={ver}", "--no-deps",
                        "--no-binary", ":all:", "-d", str(root), "-q"], check=True)
    src = root / "src" / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as tar:
            top = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(top)]
            for m in members:
                m.name = m.name[len(f"llama_cpp_python-{ver}/"):]
            tar.extractall(root / "src", members=members, filter="data")
    print(f"anchor: building llama-batched-bench into {root}/build (once; minutes)", file=sys.stderr, flush=True)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=ON", "-DGGML_CUDA=OFF", "-DLLAMA_OPENSSL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-batched-bench",
                    "-j", str(len(os.sched_getaffinity(0)))], check=True, stdout=subprocess.DEVNULL)
    return exe


def run_tool(exe: Path, gguf: Path, n: int, pp: int, tg: int, threads: int, libs: str) -> tuple[float, float]:
    """The tool's decode tokens/s (its S_TG) for n sequences of pp prompt tokens and tg steps,
    and its decode tokens per CPU second: from a second run of 1 step, whose CPU time (model
    load, warm-up, the prompt, one step) is taken off the first's."""
    env = dict(os.environ)
    if libs == "installed":
        # The binary's RUNPATH names its build folder; LD_LIBRARY_PATH comes first for RUNPATH.
        env["LD_LIBRARY_PATH"] = f"{installed_lib()}:{env.get('LD_LIBRARY_PATH', '')}"

    def once(steps: int) -> tuple[float, float]:
        cmd = [str(exe), "-m", str(gguf), "-c", str(N_CTX * n), "-b", str(N_BATCH), "-ub", str(N_BATCH),
               "-npp", str(pp), "-ntg", str(steps), "-npl", str(n), "-t", str(threads), "-tb", str(threads),
               "-fa", "off", "--no-repack", "--no-kv-unified", "--output-format", "jsonl",
               # One prompt evaluated and copied to every sequence: the same cache lengths (so the
               # same decode work) as n prompts of pp tokens, for 1/n of the prompt time.
               "-pps"]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = [json.loads(x) for x in (p.stdout + "\n" + p.stderr).splitlines() if x.startswith('{"n_kv_max"')]
        if p.returncode != 0 or not rows:
            raise SystemExit(f"anchor: llama-batched-bench failed (code {p.returncode}):\n{p.stderr[-2000:]}")
        return rows[-1]["speed_tg"], (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)

    rate, cpu = once(tg)
    _, cpu_one = once(1)
    return rate, n * (tg - 1) / max(cpu - cpu_one, 1e-9)


# ---------------------------------------------------------------------------------------------
# our engine, timed from outside


class _DecodeWatch:
    """Stands in for the engine's `llama_cpp.llama_cpp` module: records when each llama_decode
    starts, its batch size, and whether it is a decode step (every token a different sequence)
    or a prompt chunk (one sequence). Changes nothing the engine computes."""

    def __init__(self, C):
        self._C, self.calls = C, []

    def __getattr__(self, name):
        return getattr(self._C, name)

    def llama_decode(self, ctx, b):
        seqs = {b.seq_id[i][0] for i in range(b.n_tokens)}
        t0, c0 = time.perf_counter(), time.process_time()
        rc = self._C.llama_decode(ctx, b)
        self.calls.append((t0, c0, b.n_tokens, len(seqs) == b.n_tokens > 1, time.perf_counter() - t0))
        return rc


def engine_rate(e, reqs: list[Request]) -> tuple[float, float, int, float, list[int], float]:
    """Decode tokens/s over the steps that hold all len(reqs) sequences, by the clock and per
    second of this process's CPU time; also how many steps those were, the share of their time spent outside llama_decode (our Python: sampling,
    detokenizing, batch assembly), each sequence's prompt length, and the engine's own Stats
    figure (which counts each answer's first token, sampled after its prompt, as decoded)."""
    n = len(reqs)
    watch = _DecodeWatch(e.C)
    e.C = watch
    try:
        done = list(e.run(reqs))
        t_end, c_end = time.perf_counter(), time.process_time()
    finally:
        e.C = watch._C
    calls = watch.calls + [(t_end, c_end, 0, False, 0.0)]
    # A step lasts from its llama_decode to the next one: its sampling and the next batch's
    # assembly, i.e. one full turn of the loop.
    full = [(calls[k + 1][0] - t, calls[k + 1][1] - c, m, in_llama)
            for k, (t, c, m, dec, in_llama) in enumerate(calls[:-1]) if dec and m == n]
    if not full:
        raise SystemExit("anchor: no step held every sequence; raise --tokens")
    wall, cpu, toks = (sum(x[i] for x in full) for i in range(3))
    outside = 1 - sum(x[3] for x in full) / wall
    prompt_lens = [c.prompt_tokens for c in done]
    return toks / wall, toks / cpu, len(full), outside, prompt_lens, e.stats.decode_tokens_per_second


def loop_rate(e, prompts: list[list[int]], tg: int, seed: int = 0) -> tuple[float, float]:
    """batched-bench's loop on the engine's context: the prompts in, then tg steps of one random
    token per sequence (in sequence order, logits requested, never read); decode tokens/s by the
    clock and per second of this process's CPU time.

    A prompt the cache already holds (the engine's last run left it there) is not evaluated
    again; afterwards each sequence's cache holds its prompt alone, and the engine's record says
    so, so that the engine's next run reuses it as it would any cached prompt head.
    """
    C, b, ctx, n, mem = e.C, e.batch, e.ctx, len(prompts), e.mem
    rng = random.Random(seed)
    for seq, toks in enumerate(prompts):
        if e.cached.get(seq, [])[:len(toks)] == toks:
            C.llama_memory_seq_rm(mem, seq, len(toks), -1)
            continue
        C.llama_memory_seq_rm(mem, seq, -1, -1)
        for start in range(0, len(toks), e.n_batch):  # one prompt per batch, as the engine does
            chunk = toks[start:start + e.n_batch]
            for i, tok in enumerate(chunk):
                e._add(i, tok, start + i, seq, start + i == len(toks) - 1)
            b.n_tokens = len(chunk)
            if C.llama_decode(ctx, b) != 0:
                raise SystemExit("anchor: llama_decode failed on a prompt")
    C.llama_synchronize(ctx)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(tg):
        for seq in range(n):
            e._add(seq, rng.randrange(e.n_vocab), len(prompts[seq]) + step, seq, True)
        b.n_tokens = n
        if C.llama_decode(ctx, b) != 0:
            raise SystemExit("anchor: llama_decode failed on a decode step")
        C.llama_synchronize(ctx)
    rate, cpu_rate = n * tg / (time.perf_counter() - t0), n * tg / (time.process_time() - c0)
    for seq, toks in enumerate(prompts):
        C.llama_memory_seq_rm(mem, seq, len(toks), -1)
        e.cached[seq] = list(toks)
    return rate, cpu_rate


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct-q4_k_m")
    ap.add_argument("--sequences", default="8,16")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per sequence (engine: at most)")
    ap.add_argument("--threads", type=int, default=0, help="0 = choose once from the load, as the pipeline does")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tool-libs", choices=("installed", "built"), default="installed")
    ap.add_argument("--no-tool", action="store_true", help="skip llama-batched-bench (no build)")
    args = ap.parse_args()
    gguf = resolve(args.model)
    exe = None if args.no_tool else build_tool()
    threads = choose_threads(args.threads)
    sizes = [int(x) for x in args.sequences.split(",")]
    system, user = load_prompt("oss_instruct.txt")
    seeds = snippets(max(sizes))
    rows = []
    for n in sizes:
        reqs = [Request(f"p{i}", messages=[{"role": "system", "content": system},
                                           {"role": "user", "content": render(user, "Python", s)}],
                        max_tokens=args.tokens) for i, s in enumerate(seeds[:n])]
        prompts = None
        got = {k: [] for k in ("engine", "outside", "stats", "loop", "tool", "e/loop", "e/tool", "cpu e/loop",
                               "cpu e/tool")}
        # One engine for all repeats: its first run evaluates the prompts, later runs (and the
        # loop) find them in the cache, so a repeat costs decode steps only, and the sides run
        # close together in time (the load of other processes drifts by the minute).
        with open_engine("llama-batched", gguf, n_ctx=N_CTX, parallel=n, threads=threads, n_batch=N_BATCH) as e:
            assert e.threads == threads
            for rep in range(args.repeats):
                e.stats = Stats()  # the engine's own figure per run, not summed over runs
                rate, cpu_rate, steps, outside, plens, own = engine_rate(e, reqs)
                prompts = prompts or [e.tokenizer.prompt(r)[0] for r in reqs]
                loop, cpu_loop = loop_rate(e, prompts, args.tokens, seed=rep)
                # The tool's prompt: as long as our longest. With one KV stream per sequence,
                # attention runs over the longest sequence's cells (padded to 256) for every
                # sequence, so that, not the mean, sets the decode work.
                pp = max(plens)
                tool, cpu_tool = run_tool(exe, gguf, n, pp, args.tokens, threads, args.tool_libs) if exe \
                    else (None, None)
                for k, v in (("engine", rate), ("outside", 100 * outside), ("stats", own), ("loop", loop),
                             ("tool", tool), ("e/loop", rate / loop), ("e/tool", tool and rate / tool),
                             ("cpu e/loop", cpu_rate / cpu_loop), ("cpu e/tool", tool and cpu_rate / cpu_tool)):
                    if v is not None:
                        got[k].append(v)
                print(f"  x{n} #{rep + 1}: engine {rate:.1f} ({steps} full steps, {100 * outside:.1f}% outside "
                      f"llama_decode), loop {loop:.1f}" + (f", tool {tool:.1f}" if tool else "")
                      + f" decode tok/s; per CPU second: engine {cpu_rate:.1f}, loop {cpu_loop:.1f}"
                      + (f", tool {cpu_tool:.1f}" if tool else ""), flush=True)
        rows.append((n, pp, {k: statistics.median(v) if v else None for k, v in got.items()}))
    load = os.getloadavg()
    print(f"\nmodel {args.model}; {threads} threads on {len(os.sched_getaffinity(0))} cores; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; up to {args.tokens} new tokens per sequence, "
          f"greedy; medians of {args.repeats} repeats (ratios: median of each repeat's ratio); "
          f"tool on the {args.tool_libs} libllama")
    print("| sequences | longest prompt (tokens) | engine decode tok/s | engine time outside llama_decode "
          "| (engine's own Stats) | loop (ctypes) tok/s | llama-batched-bench tok/s | engine / loop | engine / tool "
          "| engine / loop per CPU second | engine / tool per CPU second |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, pp, m in rows:
        tool = f"{m['tool']:.1f}" if m["tool"] else "-"
        vs_tool = f"{m['e/tool']:.2f}" if m["tool"] else "-"
        cpu_tool = f"{m['cpu e/tool']:.2f}" if m["tool"] else "-"
        print(f"| {n} | {pp} | {m['engine']:.1f} | {m['outside']:.1f}% | {m['stats']:.1f} | {m['loop']:.1f} | {tool} | "
              f"{m['e/loop']:.2f} | {vs_tool} | {m['cpu e/loop']:.2f} | {cpu_tool} |")


if __name__ == "__main__":
    main()
