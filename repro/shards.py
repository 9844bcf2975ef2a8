"""`repro merge RUN...`: generate's shards (`repro generate --shard I/N`, one per machine) joined
into one run's pairs.jsonl and rejected.jsonl, as an unsharded run would have written them.

It asks the teacher nothing and fetches nothing: the shards' files must be copied into the RUN
directories given. It does not merge other stages (each machine runs generate only)."""

from __future__ import annotations

import time
from pathlib import Path

from repro import pipeline
from repro.artifacts import ROOT, ReproError, RunDir, digest, fingerprint
from repro.console import RunLog, TeeConsole
from repro.pipeline import Options



def _shard_manifests(runs: list[RunDir]) -> list[tuple[RunDir, int, int, dict]]:
    """(run, I, N, manifest) of every finished shard of generate in `runs`, in the order given."""
    import re

    found = []
    for run in runs:
        for p in sorted((run.path / "manifests").glob("generate.shard-*-of-*.json")):
            m = re.fullmatch(r"generate\.shard-(\d+)-of-(\d+)\.json", p.name)
            manifest = run.manifest(p.stem)
            if m and manifest and isinstance(manifest.get("config"), dict):
                found.append((run, int(m.group(1)), int(m.group(2)), manifest))
    return found


def _setting_name(key: str) -> str:
    return {"teacher_id": "the teacher (its file's identity, teacher_id)",
            "prompt_hash": "the prompt template (generate.prompt's content)"}.get(key, f"generate.{key}")


def merge(specs: list, opts: Options) -> dict:
    """`repro merge RUN...`: join the shards of generate found in the RUN directories into the
    first one's pairs.jsonl and rejected.jsonl, in the order an unsharded run asks, and write the
    manifest an unsharded `repro generate` with the same settings writes, so that the next stages
    (and `repro run` with those settings) take them as its. Refuses, with one line and nothing
    written: shards made with other settings, teacher or seeds (their manifests differ), a shard
    whose files changed since it finished, and seeds that no shard answered (how many, and which
    shard to rerun). It asks the teacher nothing; store files of a shard without its manifest (an
    unfinished or copied one) count answer by answer, by their keys."""
    import dataclasses
    import json
    import shutil

    from repro import generate
    from repro.artifacts import atomic_path
    from repro.config import GenerateConfig

    t0 = time.perf_counter()
    paths = []
    for spec in specs:
        tried = list(dict.fromkeys([Path(spec).expanduser().resolve(), ROOT / "runs" / str(spec)]))
        p = next((x for x in tried if x.is_dir()), None)
        if p is None:
            raise ReproError(f"repro merge {spec}: no such run directory ({' nor '.join(map(str, tried))}); "
                             "give the run directories that hold the shards")
        paths.append(p)
    runs = [RunDir(p) for p in paths]
    target, where = runs[0], " ".join(str(p) for p in paths)
    found = _shard_manifests(runs)
    if not found:
        raise ReproError(f"repro merge {where}: no finished shard there (no manifests/generate.shard-I-of-N.json); "
                         "make them with `repro generate --shard I/N`, one per machine, and copy each shard's "
                         "pairs.shard-I-of-N.jsonl, rejected.shard-I-of-N.jsonl and manifest into a RUN given")
    ref_run, ref_i, n, ref = found[0]
    ref_settings = {k: v for k, v in ref["config"].items() if k != "shard"}
    shards: dict[int, tuple[RunDir, dict]] = {}
    for run, i, ni, m in found:
        if ni != n:
            raise ReproError(f"repro merge: shard {i}/{ni} in {run.path} and shard {ref_i}/{n} in {ref_run.path} split "
                             f"the seeds {ni} and {n} ways; merge shards of one split (rerun the others with --shard I/{n})")
        settings = {k: v for k, v in m["config"].items() if k != "shard"}
        diff = next((k for k in sorted(set(settings) | set(ref_settings)) if settings.get(k) != ref_settings.get(k)),
                    None)
        if diff is None and m["stats"].get("model") != ref["stats"].get("model"):
            diff = "model"
            settings, ref_settings_shown = {"model": m["stats"].get("model")}, {"model": ref["stats"].get("model")}
        else:
            ref_settings_shown = ref_settings
        if diff is not None:
            raise ReproError(f"repro merge: shard {i}/{n} in {run.path} was made with {_setting_name(diff)}="
                             f"{settings.get(diff)!r}, shard {ref_i}/{n} in {ref_run.path} with "
                             f"{ref_settings_shown.get(diff)!r}; shards must share settings, teacher and seeds: rerun "
                             f"shard {i}/{n} with the same --profile and --set as the others")
        if m.get("inputs") != ref.get("inputs"):
            raise ReproError(f"repro merge: shard {i}/{n} in {run.path} answered another seeds.parquet than shard "
                             f"{ref_i}/{n} in {ref_run.path}; make the seeds once, copy that seeds.parquet into every "
                             f"machine's run directory, and rerun shard {i}/{n}")
        for name, d in m.get("outputs", {}).items():
            if not (run / name).exists() or digest(run / name) != d:
                raise ReproError(f"{run / name}: not what shard {i}/{n} wrote when it finished (changed or missing "
                                 f"since); rerun `repro generate --shard {i}/{n}` there, or copy its files again")
        shards.setdefault(i, (run, m))
    # The seeds the shards answered, in the run that receives them.
    want = ref["inputs"].get("seeds.parquet")
    seeds_path = target / "seeds.parquet"
    if seeds_path.exists() and digest(seeds_path) != want:
        raise ReproError(f"{seeds_path}: not the seeds.parquet the shards answered; merge into a run directory with "
                         "those seeds (give it first), or into a new one")
    src = target if seeds_path.exists() else next(
        (r for r in runs[1:] if (r / "seeds.parquet").exists() and digest(r / "seeds.parquet") == want), None)
    if src is None:
        raise ReproError(f"repro merge {where}: none of these runs has the seeds.parquet the shards answered; copy "
                         f"it into {target.path} (from any shard's run directory) and merge again")
    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    cfg = GenerateConfig(**{k: v for k, v in ref_settings.items() if k in fields})
    if pipeline._prompt_hash(cfg.prompt) != ref_settings.get("prompt_hash"):
        raise ReproError(f"generate.prompt={cfg.prompt!r}: the template here is not the one the shards used (its "
                         "content differs); merge where the shards' data/prompts/ file is")
    pair_files = sorted({p for r in runs for p in r.path.glob(f"pairs.shard-*-of-{n}.jsonl")})
    rejected_files = sorted({p for r in runs for p in r.path.glob(f"rejected.shard-*-of-{n}.jsonl")})
    pairs, rejected, missing = generate.merge_stores(cfg, generate.read_seeds(src / "seeds.parquet"),
                                                     ref["stats"]["model"], n, pair_files, rejected_files)
    if missing:
        count = sum(len(v) for v in missing.values())
        which = ", ".join(f"shard {i}/{n}: {len(v)}" + ("" if i in shards else " (no finished manifest)")
                          for i, v in sorted(missing.items()))
        first = min(missing)
        raise ReproError(f"repro merge: {count} seeds have no answer in the shards given ({which}); finish them with "
                         f"`repro generate --shard {first}/{n}` (and the other shards named) with the same settings, "
                         f"copy each one's pairs/rejected.shard-I-of-{n}.jsonl and manifests/generate.shard-I-of-{n}.json "
                         "into a RUN given, and merge again")
    with target.locked():
        log = RunLog(target / "log.txt")
        try:
            log.write(opts.command)
            opts.logged = True
            if src is not target:  # the seeds (and their manifest), so that `repro run` keeps them
                for name in ("seeds.parquet", "manifests/seeds.json"):
                    if (src / name).exists():
                        with atomic_path(target / name) as tmp:
                            shutil.copy2(src / name, tmp)
            for name, data in (("pairs.jsonl", pairs), ("rejected.jsonl", rejected)):
                with atomic_path(target / name) as tmp:
                    tmp.write_bytes(data)
            (target / "errors.jsonl").unlink(missing_ok=True)  # an earlier unsharded run's failures
            per = [m["stats"] for _, m in shards.values()]
            rows = [json.loads(line) for line in rejected.splitlines()]
            reasons: dict[str, int] = {}
            for r in rows:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
            total = {k: sum(x.get(k) or 0 for x in per) for k in ("resumed_from", "generated", "truncated",
                                                                  "completion_tokens", "prompt_tokens", "decode_seconds")}
            stats = {"seeds": len(generate.read_seeds(target / "seeds.parquet")), **total, "failed": 0,
                     "backend": ref["stats"].get("backend"), "parallel": ref["stats"].get("parallel"),
                     "threads": ref["stats"].get("threads"), "model": ref["stats"]["model"],
                     "tokens_per_second": round(total["completion_tokens"] / total["decode_seconds"], 2)
                     if total["decode_seconds"] else None,
                     "pairs": pairs.count(b"\n"), "rejected": len(rows), "rejected_by_reason": reasons,
                     "wall_seconds": max((x.get("wall_seconds") or 0 for x in per), default=0),
                     "shards": n, "merged_from": [str(run / name) for run, m in shards.values() for name in m["outputs"]]}
            if cfg.samples > 1:
                stats["samples"] = cfg.samples
            target.write_manifest("generate", fingerprint("generate", ref_settings, ref["inputs"]), ref_settings,
                                  ref["inputs"], ["pairs.jsonl", "rejected.jsonl"], stats, time.perf_counter() - t0)
            console = TeeConsole(log, stderr=True, quiet=opts.quiet)
            console.print(f"[green]✓[/] merge → {target / 'pairs.jsonl'}: {pipeline._generate_summary(stats)}", soft_wrap=True)
        finally:
            log.close()
    return stats
