"""The `repro` command: `repro run --profile tiny` runs every stage; `repro <stage>` runs one.

    repro run --profile tiny                    # the whole pipeline into runs/tiny/
    repro generate --profile tiny --set generate.max_tokens=512
    repro doctor                                # what is installed, cached and missing
    repro fetch                                 # assemble embedded models, fetch the GGUF converter
    repro config --profile smoke                # print the resolved configuration
    repro report smoke                          # rebuild runs/smoke/report.md and its dataset card

A stage whose inputs and settings are unchanged since it last finished is skipped. Errors meant
for the user are one line and exit status 2; `--debug` shows the traceback. Everything a stage
command prints, progress every half minute, and its errors are appended to runs/<name>/log.txt;
`--quiet` silences the console but not the log.
"""

from __future__ import annotations

import os

# Before torch is imported anywhere: busy-waiting OpenMP threads made CPU training 10x slower on
# a loaded 2-core machine (measured). Progress bars of libraries would interleave with ours.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from repro import config as config_mod  # noqa: E402
from repro import pipeline  # noqa: E402
from repro.artifacts import ROOT, ReproError, RunDir  # noqa: E402
from repro.console import RunLog  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Commands


def load_config(args) -> config_mod.Config:
    return pipeline.load_config(args.profile, args.set, getattr(args, "variant", None) or "oss",
                                getattr(args, "full_eval", False))


def run_path(args, variant: str) -> Path:
    if getattr(args, "run_dir", None):
        return Path(args.run_dir)
    return ROOT / "runs" / pipeline.run_name(args.name or args.profile, variant)


def shared_runs(args, variant: str) -> list[RunDir]:
    """The runs whose finished stages a run may copy: --share, else the other variants of the same name."""
    if getattr(args, "share", None):
        return [RunDir(pipeline.find_run(x)) for x in args.share]
    if getattr(args, "run_dir", None):
        return []
    return pipeline.sibling_runs(args.name or args.profile, variant)


def options(args) -> pipeline.Options:
    """What the pipeline needs from the command line; `args.opts.logged` tells log_error whether
    the command line is in log.txt already."""
    if not hasattr(args, "opts"):
        args.opts = pipeline.Options(command=command_line(args), quiet=args.quiet, force=args.force)
    return args.opts


def cmd_stages(args, stages: list[str]) -> int:
    cfg = load_config(args)
    if args.command == "run":
        stages = pipeline.stages_of(cfg.variant)
    run = RunDir(run_path(args, cfg.variant), share=shared_runs(args, cfg.variant))
    pipeline.check(cfg, stages)
    pipeline.run_stages(cfg, run, stages, options(args))
    return 0


def cmd_ablate(args) -> int:
    from repro import ablation

    if args.variant != "oss":
        raise ReproError(f"repro ablate --variant {args.variant}: ablate runs several variants; name them with "
                         f"--variants oss,{args.variant}")
    base = args.name or args.profile
    top = Path(args.run_dir) if args.run_dir else ROOT / "runs" / f"{base}-ablation"
    plain = [ROOT / "runs" / pipeline.run_name(base, v) for v in config_mod.VARIANTS]  # what `repro run` made
    plain += [pipeline.find_run(x) for x in args.share or []]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    result = ablation.run(args.profile, args.set, variants, top, plain, options(args), args.full_eval)
    print(ablation.render(result))
    print(f"ablation → {top / 'ablation.md'}")
    return 0


def cmd_evaluate_alone(args) -> int:
    """`repro evaluate --model SPEC` or `--samples FILE`: one model or one samples file, no run."""
    from repro.console import TeeConsole, progress_display
    from repro.eval import alone

    if args.model and args.samples:
        raise ReproError("repro evaluate: give --model or --samples, not both")
    if args.style and not args.model:
        raise ReproError("repro evaluate --style applies to --model only")
    if args.variant != "oss" or args.share:
        raise ReproError("repro evaluate --model/--samples evaluates outside a run: drop --variant and --share")
    cfg = load_config(args)
    if args.samples:
        result = alone.judge_samples(cfg, Path(args.samples))
    else:
        style = args.style or "completion"
        alone.check(cfg, args.model, style)  # before the run directory exists
        out = run_dir_of(args)
        run = RunDir(out)
        with run.locked():
            log = RunLog(out / "log.txt")
            try:
                log.write(command_line(args))
                args.opts = pipeline.Options(command=command_line(args), quiet=args.quiet, force=args.force)
                args.opts.logged = True
                console = TeeConsole(log, stderr=True, quiet=args.quiet)
                with progress_display(console, log, args.quiet) as progress:
                    result = alone.run_model(cfg, args.model, style, out, progress)
                for line in alone.lines(result):
                    console.print(line, highlight=False, soft_wrap=True)
                console.print(f"results: {out / 'eval' / 'results.json'}", style="dim", highlight=False,
                              soft_wrap=True)
            finally:
                log.close()
        return 0
    for line in alone.lines(result):
        print(line)
    return 0


def log_error(args, line: str) -> None:
    """A command's last line (its error) into the run directory's log.txt, after the command line
    when the command failed before writing it; never creates the directory (bad settings leave
    nothing behind)."""
    run_dir = run_dir_of(args)
    if run_dir is None or not Path(run_dir).is_dir():
        return
    with contextlib.suppress(OSError):
        log = RunLog(Path(run_dir) / "log.txt")
        if not getattr(getattr(args, "opts", None), "logged", False):
            log.write(command_line(args))
        log.write(line)
        log.close()


def command_line(args) -> str:
    return "$ repro " + " ".join(shlex.quote(a) for a in args.argv)


def cmd_doctor(args) -> int:
    import importlib.metadata as md

    from repro import models, versions
    from repro.export import has_converter
    from repro.student import cpu_has_bf16

    ok = True
    print(f"repro root: {ROOT}")
    for k, v in versions().items():
        print(f"  {k:18} {v or 'MISSING'}")
        ok &= v is not None or k in ("gguf",)
    print(f"cache: {models.cache_dir()}")
    for name, e in models.EMBEDDED.items():
        installed = sum(1 for p in e.packages if _has_dist(md, p))
        f = models.cache_dir() / "models" / f"{name}.gguf"
        state = "assembled" if f.with_suffix(".gguf.verified").exists() else "not assembled"
        print(f"  embedded:{name}: {installed}/{len(e.packages)} chunk packages installed "
              f"(extra `{e.extra}`), {state}")
        if e.extra == "embedded-models" and installed < len(e.packages):
            ok = False
    print(f"  GGUF converters (model, LoRA): {'present' if has_converter() else 'missing (run `repro fetch`)'}")
    print(f"cpu: {os.cpu_count()} cores, bf16 {'yes' if cpu_has_bf16() else 'no'}, "
          f"llama.cpp threads now {models.choose_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    from repro.sandbox import isolation
    iso = isolation()
    print(f"sandbox: {iso['level']} isolation, {'an own uid per run' if iso['uid'] == 'own' else 'runs under our uid'}"
          + (f" ({iso['why']})" if iso["why"] else ""))
    from repro import gpu
    print("llama.cpp GPU offload: " + ("yes (a GPU build, e.g. CUDA): generate and evaluate put layers on the GPU"
                                       if gpu.llama_offload() else
                                       "no (a CPU build): generate and evaluate run on the CPU"))
    devices = gpu.cuda_devices()
    for name, total, free in devices:
        print(f"  GPU (nvidia-smi): {name}, {free / gpu.GIB:.1f} of {total / gpu.GIB:.1f} GiB free")
    if not devices:
        print("  no NVIDIA GPU found (nvidia-smi is missing or lists none)")
    try:
        import torch
        print(f"cuda: {'yes, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    except ImportError:
        pass
    return 0 if ok else 1


def _has_dist(md, name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def cmd_merge(args) -> int:
    """`repro merge RUN...`: generate's shards → the first RUN's pairs.jsonl (repro/shards.py)."""
    from repro import shards

    shards.merge(args.runs, pipeline.Options(command=command_line(args), quiet=args.quiet))
    return 0


def cmd_fetch(args) -> int:
    from repro import export, models

    for name, e in models.EMBEDDED.items():
        if e.extra == "embedded-models" or args.all:
            print(f"embedded:{name} → {models.assemble(name)}")
    print(f"GGUF converter → {export.fetch_converter()}")
    return 0


def cmd_serve(args) -> int:
    """`repro serve`: the teacher behind OpenAI-compatible servers (repro/serve.py)."""
    from repro import serve

    extra = args.engine_args
    if extra and extra[0] != "--":
        raise ReproError(f"repro serve: unexpected {extra[0]!r}; options for the engine itself go after `--`")
    return serve.start(config_mod.load(args.profile, args.set), args.engine, model=args.serve_model or "",
                       tokenizer=args.tokenizer or "", host=args.host, port=args.port, replicas=args.replicas,
                       tensor_parallel=args.tensor_parallel, gpus=args.gpus or "", extra=extra[1:],
                       log_dir=Path(args.log_dir) if args.log_dir else None, ready_timeout=args.ready_timeout)


def cmd_export_data(args) -> int:
    from repro import publish

    out, n = publish.export_data(publish.find_run(args.run, "export-data"), args.format,
                                 Path(args.out) if args.out else None)
    print(f"{n} pairs in the {args.format} format → {out}")
    return 0


def cmd_publish(args) -> int:
    from repro import publish

    r = publish.publish(publish.find_run(args.run, "publish"), args.to, with_model=args.with_model,
                        dry_run=args.dry_run, out=Path(args.out) if args.out else None, private=args.private)
    print(f"{'dry run: ' if args.dry_run else ''}what is pushed to {args.to} → {r['folder']}")
    for f in r["files"]:
        print(f"  {f}  ({publish.size((r['folder'] / f).stat().st_size)})")
    for url in r["pushed"]:
        print(f"pushed → {url}")
    return 0


def cmd_curve(args) -> int:
    from repro import curve

    run = pipeline.find_run(args.run, "repro curve")
    result = curve.run(run, curve.parse_sizes(args.sizes), args.set, options(args))
    print(curve.render(result))
    print(f"curve → {run / 'curve' / 'curve.md'}")
    return 0


def cmd_compare(args) -> int:
    from repro.report import compare

    a, b = (compare.find(x) for x in args.runs)
    r = compare.compare(a, b, pipeline.STAGES, Path(args.out) if args.out else None)
    print(f"{r['pairs']} pairs each; differences that hold: {', '.join(r['holds']) or 'none'} → {r['out'] / 'compare.md'}")
    return 0


def run_dir_of(args) -> Path | None:
    """The run directory a stage command works in (what a failed write without a file name was in)."""
    if getattr(args, "run_dir", None):
        return Path(args.run_dir)
    if getattr(args, "samples", None):
        return None  # judging a samples file writes beside it, in no run directory
    if getattr(args, "model", None):
        from repro.eval.alone import slug
        return ROOT / "runs" / f"eval-{args.name or slug(args.model)}"
    if args.command == "run" or args.command in pipeline.BY_NAME:
        return run_path(args, getattr(args, "variant", None) or "oss")
    if args.command == "ablate":
        return ROOT / "runs" / f"{args.name or args.profile}-ablation"
    return None


def os_error_line(e: OSError, run_dir: Path | None) -> str:
    """An OSError that reached the top as one line: the path, what went wrong, and the fix."""
    import errno

    from repro.artifacts import DISK_FULL, disk_full_error

    path = e.filename if e.filename is not None else run_dir
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    where = str(path) if path is not None else "a file"
    if e.errno in DISK_FULL:
        return str(disk_full_error(where, e))
    what = os.strerror(e.errno) if e.errno else (str(e).splitlines() or [type(e).__name__])[0]
    fix = {errno.EACCES: "give this user access to it (chmod/chown), or point the setting or --run-dir elsewhere",
           errno.EPERM: "give this user access to it (chmod/chown), or point the setting or --run-dir elsewhere",
           errno.EROFS: "choose a --run-dir on a writable filesystem",
           errno.ENOENT: "check the path in the settings (`repro config`) or run the stage that makes it",
           errno.ENOTDIR: "check the path in the settings (`repro config`)",
           errno.EISDIR: "check the path in the settings (`repro config`)"}.get(
        e.errno, "rerun with --debug for the traceback")
    return f"{where}: {what}; {fix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="repro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage_args(p):
        p.add_argument("--profile", default="tiny", help=f"one of {', '.join(config_mod.PROFILES)}")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a setting, e.g. --set seeds.num_seeds=10 (repeatable)")
        p.add_argument("--name", help="run name (default: the profile's name) → runs/<name>/")
        p.add_argument("--run-dir", help="run directory (overrides --name)")
        p.add_argument("--force", action="store_true", help="rerun even if up to date")
        p.add_argument("--quiet", action="store_true",
                       help="print nothing but errors (runs/<name>/log.txt still gets everything)")
        p.add_argument("--full-eval", action="store_true",
                       help="evaluate every problem of every benchmark "
                            "(evaluate.stride=1, evaluate.mbpp_stride=0, evaluate.multilingual_stride=1, "
                            "evaluate.limit=0, and MultiPL-E and DS-1000 where the profile leaves them out)")
        p.add_argument("--variant", default="oss", metavar="VARIANT",
                       help=f"what the student is trained on: {', '.join(config_mod.VARIANTS)} (default oss, the "
                            "paper's); other variants run in runs/<name>-<validated|evol|validated-evol|self-instruct>/")
        p.add_argument("--share", action="append", metavar="RUN",
                       help="copy finished stages with the same settings and inputs from this run (repeatable; "
                            "default: the other variants' runs of the same name)")

    stage_args(sub.add_parser("run", help="run every stage"))
    for s in pipeline.STAGES:
        p = sub.add_parser(s.name, help=s.help)
        stage_args(p)
        if s.name == "generate":
            # Appends `generate.shard=I/N` to --set: a setting, so that it is checked, logged and fingerprinted.
            p.add_argument("--shard", metavar="I/N", dest="set", action="append", type=lambda v: f"generate.shard={v}",
                           help="answer only shard I of N of the seeds (a stable split by seed id), into "
                                "pairs.shard-I-of-N.jsonl: one per machine; join them with `repro merge`")
        if s.name == "evaluate":
            p.add_argument("--model", metavar="SPEC",
                           help="evaluate this model alone, outside a run (→ runs/eval-<model>/): a .gguf, "
                                "embedded:NAME, hf://org/repo/file.gguf, a transformers checkpoint folder or hub id "
                                "(converted to GGUF once), or openai:http://host:port/v1")
            p.add_argument("--style", choices=["completion", "instruct", "chat"],
                           help="the prompt style for --model: completion (default; a base model, or any openai: server), "
                                "instruct (our training template) or chat (the GGUF's chat template)")
            p.add_argument("--samples", metavar="FILE",
                           help="judge an EvalPlus samples.jsonl (HumanEval or MBPP task ids) with its base and "
                                "plus tests; results beside it as FILE_eval_results.json")
        if s.name == "report":
            p.add_argument("run", nargs="?", metavar="RUN",
                           help="rebuild this run's report and dataset card from its artifacts, rerunning "
                                "nothing: a name under runs/ or a directory")
    a = sub.add_parser("ablate", help="train and evaluate every variant at equal training-set size, and compare them")
    stage_args(a)
    # The default compares the paper's training-data variants; the Self-Instruct baseline (another
    # generation, training and evaluation) is asked for by name.
    a.add_argument("--variants", default=",".join(v for v in config_mod.VARIANTS if v != "self-instruct"),
                   help="comma-separated variants to compare (default: oss and its validated/evol variants; add "
                        "self-instruct for the baseline; oss is always included)")
    mg = sub.add_parser("merge", help="join generate's shards (repro generate --shard I/N) into the first RUN's pairs.jsonl")
    mg.add_argument("runs", nargs="+", metavar="RUN",
                    help="run directories (or names under runs/) holding the shards; the first one receives them")
    mg.add_argument("--quiet", action="store_true", help="print nothing but errors")
    sub.add_parser("doctor", help="report what is installed, cached and missing")
    f = sub.add_parser("fetch", help="assemble the embedded models and fetch the GGUF converter")
    f.add_argument("--all", action="store_true", help="also the optional 1.5B teacher")
    c = sub.add_parser("config", help="print a profile's resolved settings")
    c.add_argument("--profile", default="tiny")
    c.add_argument("--set", action="append", default=[])
    c.add_argument("--full-eval", action="store_true", help="as the stage commands' --full-eval")
    sv = sub.add_parser("serve", help="start OpenAI-compatible servers for the teacher and print their URLs")
    sv.add_argument("--engine", choices=["llama", "vllm", "sglang"], default="llama",
                    help="llama (llama-cpp-python, extra `server`), vllm or sglang (extras of those names)")
    sv.add_argument("--profile", default="tiny", help="whose generate.teacher, n_ctx and seed to serve")
    sv.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sv.add_argument("--model", dest="serve_model", metavar="SPEC",
                    help="serve this instead of generate.teacher: a GGUF spec, or for vllm/sglang an HF id or folder")
    sv.add_argument("--tokenizer", help="vllm/sglang with a GGUF: the HF id of the model it was quantized from")
    sv.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: reachable from other machines)")
    sv.add_argument("--port", type=int, default=8000, help="the first replica's port; replica i gets PORT+i")
    sv.add_argument("--replicas", type=int, help="servers to start (default: as many as the GPUs hold, else 1)")
    sv.add_argument("--tensor-parallel", type=int, default=1, metavar="T", help="GPUs per replica")
    sv.add_argument("--gpus", help="the GPUs to use, e.g. 0,1,2,3 (default: CUDA_VISIBLE_DEVICES, else all)")
    sv.add_argument("--log-dir", help="where each server's output goes (default runs/serve/)")
    sv.add_argument("--ready-timeout", type=float, default=0.0, metavar="S",
                    help="seconds to wait for the servers to answer (default 300 for llama, 1800 otherwise)")
    sv.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- then options passed to every server")
    ed = sub.add_parser("export-data", help="write a run's training pairs as JSON lines in a common schema")
    ed.add_argument("run", metavar="RUN", help="a name under runs/ or a run's directory")
    ed.add_argument("--format", required=True, choices=["magicoder", "messages", "sharegpt"])
    ed.add_argument("--out", metavar="FILE", help="default runs/<name>/data/<format>.jsonl")
    pb = sub.add_parser("publish", help="push a run's dataset (and model) to the Hugging Face Hub, or --dry-run")
    pb.add_argument("run", metavar="RUN", help="a name under runs/ or a run's directory")
    pb.add_argument("--to", required=True, metavar="ORG/NAME", help="the Hub repo id (dataset; the model repo too)")
    pb.add_argument("--with-model", action="store_true", help="also the fine-tuned GGUF and LoRA adapter")
    pb.add_argument("--dry-run", action="store_true", help="only write what would be pushed into a folder")
    pb.add_argument("--out", metavar="DIR", help="that folder (default runs/<name>/publish/)")
    pb.add_argument("--private", action="store_true", help="create the repos private")
    cv = sub.add_parser("curve", help="train and evaluate the student on nested subsets of a run's pairs: pass@1 "
                                      "against pairs")
    cv.add_argument("run", metavar="RUN", help="a name under runs/ or a run's directory (its pairs and settings)")
    cv.add_argument("--sizes", required=True, metavar="N,N,...",
                    help="training-set sizes, e.g. 0,50,100,200,400 (0: the base student on both prompts)")
    cv.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a train., export. or evaluate. setting for every size (default: every HumanEval(+) and "
                         "MBPP(+) problem)")
    cv.add_argument("--quiet", action="store_true", help="print nothing but errors")
    cv.add_argument("--force", action="store_true", help="redo every size, even those up to date")
    cp = sub.add_parser("compare", help="compare two runs' data diversity at equal size (and pass@1 where trained)")
    cp.add_argument("runs", nargs=2, metavar="RUN", help="two run directories or names under runs/ (RUN_A RUN_B)")
    cp.add_argument("--out", metavar="DIR", help="default runs/compare-<a>-<b>/")

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore")
    try:
        if args.command == "report" and args.run:
            if args.run_dir or args.name:
                raise ReproError(f"repro report {args.run}: name the run once, as RUN or with --name/--run-dir")
            args.run_dir, args.force = str(pipeline.find_run(args.run)), True
        if args.command == "run":
            return cmd_stages(args, pipeline.NAMES)
        if args.command == "ablate":
            return cmd_ablate(args)
        if args.command == "evaluate" and (args.model or args.samples or args.style):
            return cmd_evaluate_alone(args)
        if args.command in pipeline.BY_NAME:
            return cmd_stages(args, [args.command])
        if args.command == "merge":
            return cmd_merge(args)
        if args.command == "doctor":
            return cmd_doctor(args)
        if args.command == "fetch":
            return cmd_fetch(args)
        if args.command == "config":
            print(json.dumps(asdict(load_config(args)), indent=2))
            return 0
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "export-data":
            return cmd_export_data(args)
        if args.command == "publish":
            return cmd_publish(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "curve":
            return cmd_curve(args)
    except ReproError as e:
        log_error(args, f"error: {e}")
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        line = os_error_line(e, run_dir_of(args))
        log_error(args, f"error: {line}")
        if args.debug:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        line = "interrupted: finished work is kept; rerun the same command to resume"
        log_error(args, line)
        print(line, file=sys.stderr)
        return 130
    except Exception as e:  # a bug: the traceback goes to the terminal, one line to the log
        log_error(args, f"crashed: {type(e).__name__}: {e}")
        raise
    return 1


if __name__ == "__main__":
    sys.exit(main())
