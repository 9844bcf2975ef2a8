"""summary.md from bench/gpu/run.sh's results.jsonl (rewritten after every step), and the
machine's description.

    python bench/gpu/summary.py env                      # records the machine (GPU, CPU, versions)
    python bench/gpu/summary.py write RESULTS.jsonl OUT.md [--train-json train-bench.json]

Only the standard library here except in `env`, so that it runs even where an import is broken.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def cmd_env() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import importlib.metadata as md

    from common import record

    versions = {}
    for name in ("torch", "triton", "transformers", "peft", "numpy", "duckdb", "unsloth", "gguf", "llama-cpp-python"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    gpu = None
    try:
        import torch

        versions["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count,
                   "capability": f"{p.major}.{p.minor}"}
    except Exception as e:  # noqa: BLE001  # torch missing or broken: say so, go on
        versions["torch_error"] = f"{type(e).__name__}: {e}"[:200]
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.strip()
    nvcc = None
    exe = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
        nvcc = next((l.strip() for l in out.splitlines() if "release" in l), out.strip()[-80:])
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    record("env", python=sys.version.split()[0], executable=sys.executable, versions=versions, gpu=gpu,
           nvidia_smi=smi, nvcc=nvcc, cpu=cpu, cores=len(os.sched_getaffinity(0)),
           memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1))


# ---------------------------------------------------------------------------------------------


def _f(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def write(results: Path, out: Path, train_json: Path | None) -> None:
    rows = []
    if results.exists():
        for line in results.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    by = {}
    for r in rows:
        by.setdefault(r.get("kind", "?"), []).append(r)
    meta = (by.get("run") or [{}])[-1]
    L = [f"# GPU pipeline check ({'CPU mode: ' if meta.get('cpu_mode') else ''}bench/gpu/run.sh)", ""]
    if meta:
        L.append(f"Started {meta.get('started', '?')}; mode: {'CPU (GPU_BENCH_CPU=1)' if meta.get('cpu_mode') else 'GPU'}; "
                 f"deadline {meta.get('deadline')} s; work folder {meta.get('work')}.")
        L.append("")
    env = (by.get("env") or [None])[-1]
    if env:
        v = env.get("versions", {})
        g = env.get("gpu") or {}
        L += ["## Machine", "",
              f"- GPU: {env.get('nvidia_smi') or 'none'}" + (f" ({g.get('sms')} SMs, compute {g.get('capability')})" if g else ""),
              f"- CPU: {env.get('cpu')}, {env.get('cores')} cores, {env.get('memory_gib')} GiB",
              f"- nvcc: {env.get('nvcc') or 'none'}; Python {env.get('python')}",
              "- " + ", ".join(f"{k} {val}" for k, val in v.items() if val), ""]

    steps = by.get("step", [])
    if steps:
        L += ["## Steps", "", "| step | rc | seconds | limit s | note |", "| --- | --- | --- | --- | --- |"]
        for s in steps:
            rc = s.get("rc")
            note = s.get("note") or ("ok" if rc == 0 else "timed out" if rc in (124, 137) else "FAILED" if rc is not None else "")
            L.append(f"| {s['step']} | {_f(rc)} | {_f(s.get('seconds'))} | {_f(s.get('limit'))} | {note} |")
        L.append("")

    for b in by.get("build", []):
        L += ["## libllama build", "", (f"- mode {b.get('mode')}, rc {b.get('rc')}, {_f(b.get('seconds'))} s; "
              f"library: {b.get('libdir') or '-'}"), *[f"- {x}" for x in b.get("notes", [])], ""]

    gg = by.get("gguf", []) + by.get("quantize", [])
    if gg:
        L += ["## Random-weight GGUFs", "", "| file | architecture | type | size MiB | seconds |", "| --- | --- | --- | --- | --- |"]
        for r in by.get("gguf", []):
            L.append(f"| {Path(r['path']).name} | {r['arch']} ({r['layers']} layers, vocabulary {r['vocab']}) | "
                     f"{r['type']} | {_f(r['bytes'] / 2**20)} | {_f(r['seconds'])} |")
        for r in by.get("quantize", []):
            L.append(f"| {r['dst']} | from {r['src']} (llama_model_quantize) | {r['quant']} | "
                     f"{_f(r['bytes_out'] / 2**20)} | {_f(r['seconds'])} |")
        L.append("")

    for r in by.get("greedy", []):
        L += ["## Greedy: all layers on the GPU vs none (CPU), same library", "",
              (f"{r['model']}: {r['identical']} of {r['requests']} answers identical token for token "
              f"({r['max_tokens']} tokens each at most; engine on the GPU: {r.get('gpu_on_gpu')}; "
              f"library can offload: {r.get('llama', {}).get('gpu_offload')}).")]
        for x in r["rows"]:
            if not x["identical"]:
                L.append(f"- request {x['request']}: first difference at answer token {x['first_difference']}: GPU "
                         f"{x['gpu_token']} {x['gpu_piece']!r}, CPU {x['cpu_token']} {x['cpu_piece']!r}")
        L.append("")

    sw = by.get("sweep", []) + by.get("sweep_error", []) + by.get("sweep_skipped", [])
    if sw:
        L += ["## Decode throughput (repro's BatchedEngine, greedy, one request per sequence)", "",
              "| model | where | parallel | decode tok/s | overall tok/s | prompt tok/s | answer tokens | VRAM used MiB (before → loaded → after) | load s | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sw:
            where = (r.get("label") or ("GPU" if r.get("n_gpu_layers") else "CPU"))
            if r["kind"] != "sweep":
                L.append(f"| {r['model']} | {where} | {r['parallel']} | - | - | - | - | - | - | "
                         f"{r.get('error') or r.get('why')} |")
                continue
            vram = "-" if r.get("vram_before_mib") is None else \
                f"{_f(r['vram_before_mib'])} → {_f(r['vram_loaded_mib'])} → {_f(r['vram_after_mib'])}"
            note = f"threads {r['threads']}" + ("" if r.get("engine_on_gpu") else ", no layers on a GPU")
            fin = r.get("finish", {})
            if fin.get("stop"):
                note += f", {fin['stop']} ended early (EOG)"
            L.append(f"| {r['model']} | {where} | {r['parallel']} | {_f(r['decode_tps'])} | {_f(r['overall_tps'])} | "
                     f"{_f(r['prompt_tps'])} | {_f(r['completion_tokens'])} | {vram} | {_f(r['load_seconds'])} | {note} |")
        L.append("")

    ts = by.get("train_stage", [])
    if ts:
        L += ["## Train stage (repro.train.run) on a random Qwen2 checkpoint", "",
              "| backend | device | steps | loss first → last | tokens/s | peak CUDA MiB | wall s | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in ts:
            if r.get("skipped"):
                L.append(f"| {r['backend']} | - | - | - | - | - | - | skipped: {r['skipped']} |")
                continue
            L.append(f"| {r['backend']} | {r['device']} | {r['steps']} | {r['first_loss']} → {r['final_loss']} | "
                     f"{_f(r['tokens_per_second'])} | {_f(r.get('peak_cuda_mib'))} | {_f(r['wall_seconds'])} | "
                     f"{r['precision']} |")
        L.append("")
    for r in by.get("export", []):
        L += ["## Export stage (repro.export.run) of the peft adapter", "",
              (f"- {_f(r['seconds'])} s; {', '.join(r['files'])}; model {_f(r['bytes'] / 2**20)} MiB "
              f"({r['quant']}), LoRA GGUF {_f((r.get('lora_bytes') or 0) / 2**10)} KiB"),
              f"- llama.cpp (library can offload: {r['llama']['gpu_offload']}) vs PyTorch, {r['text_tokens']} tokens: "
              f"tokenizer identical {r['tokenizer_match']}; greedy agreement "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["agreement"].items()),
              f"- load check text: {r['load_check_text'][:80]!r}", ""]
    for r in by.get("eval_decode", []):
        L += ["## Evaluate stage's decoding (repro.eval.evaluate.generate)", "",
              (f"- {r['model']}: {r['problems']} {r['benchmark']} problems × {r['styles']}, parallel {r['parallel']}, "
              f"n_gpu_layers {r['n_gpu_layers']} (library can offload: {r['llama']['gpu_offload']}): "
              f"{r['generated']} answers, {_f(r.get('tokens_per_second'))} tokens/s, {_f(r['wall_seconds'])} s"), ""]

    if train_json and train_json.exists():
        try:
            t = json.loads(train_json.read_text())
            s = t["settings"]
            L += ["## Training throughput (bench/train.py)", "",
                  (f"{t['machine']}; {s['batch']} × {s['seq']} tokens a step, {s['warmup']} warm-up + {s['steps']} timed steps, "
                  f"LoRA r={s['lora_r']}."), "",
                  "| model | run | tokens/s | × first | peak MiB (CUDA; CPU: RSS) | first step s | note |", "| --- | --- | --- | --- | --- | --- | --- |"]
            for name, m in t["models"].items():
                base = m["runs"].get(s["runs"][0], {}).get("tokens_per_second")
                for run, r in m["runs"].items():
                    if "tokens_per_second" not in r:
                        L.append(f"| {name} | {run} | - | - | - | - | {r.get('error') or r.get('skipped')} |")
                        continue
                    ratio = f"{r['tokens_per_second'] / base:.2f}" if base else "-"
                    note = ""
                    if c := r.get("check"):
                        note = (f"vs eager: loss |diff| {c['loss_abs_diff']:.1e}, grad rel diff {c['grad_max_rel_diff']:.1e}")
                    L.append(f"| {name} | {run} | {_f(r['tokens_per_second'])} | {ratio} | "
                             f"{_f(r.get('peak_cuda_mib') or r.get('peak_rss_mib'))} | {_f(r['first_step_seconds'])} | {note} |")
            L.append("")
        except (KeyError, ValueError, TypeError) as e:
            L += [f"(train-bench.json unreadable: {e})", ""]
    out.write_text("\n".join(L) + "\n", encoding="utf-8")


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "env":
        cmd_env()
    elif len(sys.argv) >= 4 and sys.argv[1] == "write":
        tj = Path(sys.argv[5]) if len(sys.argv) >= 6 and sys.argv[4] == "--train-json" else None
        write(Path(sys.argv[2]), Path(sys.argv[3]), tj)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
