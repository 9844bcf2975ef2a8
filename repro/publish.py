"""The run's data in the formats people load, and the dataset (and model) on the Hugging Face Hub.

    repro export-data RUN --format magicoder|messages|sharegpt [--out FILE]
    repro publish RUN --to ORG/NAME [--with-model] [--dry-run] [--out DIR] [--private]

`export-data` writes the pairs the student was trained on (`pipeline.train_inputs`: clean.parquet,
or validated.parquet when the run's variant validates, then evol.parquet when it evolves) as JSON
lines, by default to runs/<name>/data/<format>.jsonl:
- `magicoder`: Magicoder's OSS-Instruct schema, `lang`, `index`, `seed`, `problem`, `solution`;
- `messages`: chat `messages`, [{role: user, content: problem}, {role: assistant, content: solution}];
- `sharegpt`: `conversations`, [{from: human, value: problem}, {from: gpt, value: solution}].

`publish` first writes exactly what it would push into a folder (runs/<name>/publish/, or --out):
`dataset/` (the card of repro/card.py with a config per parquet file, clean.parquet and clean.jsonl,
the training data's parquet files, the three formats under data/ as JSON lines and as parquet (a
Hub repo's configs must share one file format), and the files the card cites:
removed.parquet, seeds.parquet, decontamination.json/.md) and, with --with-model, `model/` (the
quantized fine-tuned GGUF, the LoRA GGUF, the PEFT adapter, export.json and a model card). It
checks the folder with huggingface_hub's and datasets' own offline validators (the card's YAML,
its configs, the repo id), and nothing is left half-written: the folder is renamed into place
only when complete. Then, online and without --dry-run, it creates the dataset repo ORG/NAME
(and the model repo of the same name) and uploads each folder in one commit, after the Hub's own
card validation. Offline (HF_HUB_OFFLINE, or the Hub unreachable) it stops after the folder and
says so in one line.

It does not convert the data otherwise (no system prompt, no instruction template: that is
train's), nor delete files already in a Hub repo that the folder lacks, nor push a run with no
pairs (`datasets` cannot load an empty file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from repro.artifacts import ROOT, ReproError, RunDir, atomic_path, write_text

FORMATS = ("magicoder", "messages", "sharegpt")
WHAT = {"magicoder": "Magicoder's OSS-Instruct schema: `lang`, `index`, `seed`, `problem`, `solution`",
        "messages": "chat `messages`: the problem as the user's turn, the solution as the assistant's",
        "sharegpt": "ShareGPT `conversations`: the problem from `human`, the solution from `gpt`"}
CITED = ("removed.parquet", "seeds.parquet", "decontamination.json", "decontamination.md")  # the card names them


def find_run(spec: str, command: str) -> RunDir:
    """A run named by the user: a directory, else a name under runs/."""
    for p in (Path(spec).expanduser(), ROOT / "runs" / spec):
        if p.is_dir():
            return RunDir(p)
    raise ReproError(f"repro {command} {spec}: no such run directory (neither {Path(spec).expanduser().resolve()} "
                     f"nor {ROOT / 'runs' / spec}); give a name under runs/ or a run's directory")


def variant_of(run: RunDir) -> str:
    """The run's variant, from run.json (oss when the run has none)."""
    try:
        return json.loads((run / "run.json").read_text()).get("variant") or "oss"
    except (OSError, ValueError):
        return "oss"


def training_files(run: RunDir) -> list[str]:
    """What the train stage reads for the run's variant (pipeline.train_inputs), checked present."""
    from repro import pipeline

    variant = variant_of(run)
    names = pipeline.train_inputs(SimpleNamespace(variant=variant))
    for name in names:
        if not (run / name).is_file():
            stage = {"clean.parquet": "clean", "validated.parquet": "validate", "evol.parquet": "evol"}[name]
            raise ReproError(f"{run / name} is missing: the {variant} run's training data; run the {stage} stage "
                             f"first (`repro {stage} --variant {variant} --run-dir {run.path}`)")
    return names


def pairs(run: RunDir) -> list[dict]:
    """The training pairs: language, seed, problem, solution, in file order (evol's after)."""
    import pyarrow.parquet as pq

    rows = []
    for name in training_files(run):
        have = set(pq.read_schema(run / name).names)
        if not {"problem", "solution"} <= have:
            raise ReproError(f"{run / name} has no problem and solution columns; rerun the stage that wrote it")
        cols = [c for c in ("language", "seed", "problem", "solution") if c in have]
        rows += [{"language": None, "seed": None, **r} for r in pq.read_table(run / name, columns=cols).to_pylist()]
    if not rows:
        raise ReproError(f"{run.path}: {' and '.join(training_files(run))} hold no pairs, so there is nothing to "
                         "export; see generate's rejected.jsonl and clean's removed.parquet")
    return rows


def convert(rows: list[dict], fmt: str) -> list[dict]:
    """Rows in one of FORMATS."""
    if fmt == "magicoder":
        return [{"lang": r["language"], "index": i, "seed": r["seed"], "problem": r["problem"],
                 "solution": r["solution"]} for i, r in enumerate(rows)]
    if fmt == "messages":
        return [{"messages": [{"role": "user", "content": r["problem"]},
                              {"role": "assistant", "content": r["solution"]}]} for r in rows]
    if fmt == "sharegpt":
        return [{"conversations": [{"from": "human", "value": r["problem"]},
                                   {"from": "gpt", "value": r["solution"]}]} for r in rows]
    raise ReproError(f"--format {fmt}: unknown; choose one of: {', '.join(FORMATS)}")


def _write_jsonl(rows: list[dict], out: Path) -> None:
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def export_data(run: RunDir, fmt: str, out: Path | None = None) -> tuple[Path, int]:
    """Write the training pairs in `fmt` to `out` (default runs/<name>/data/<fmt>.jsonl)."""
    if fmt not in FORMATS:
        raise ReproError(f"--format {fmt}: unknown; choose one of: {', '.join(FORMATS)}")
    rows = convert(pairs(run), fmt)
    out = Path(out) if out else run / "data" / f"{fmt}.jsonl"
    if out.is_dir():
        raise ReproError(f"--out {out}: a directory; give a file name, e.g. {out / (fmt + '.jsonl')}")
    _write_jsonl(rows, out)
    return out, len(rows)


# ---------------------------------------------------------------------------------------------
# The folder that is pushed


def check_repo_id(hub_id: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(hub_id)
    except Exception as e:  # HFValidationError
        raise ReproError(f"--to {hub_id}: not a Hub repo id ({str(e).splitlines()[0][:160]}); give ORG/NAME") from None
    if hub_id.count("/") != 1:
        raise ReproError(f"--to {hub_id}: give the repo as ORG/NAME (your user name or an organisation, then a name)")


def _place(src, dst) -> None:
    """A hard link where the filesystem allows (a GGUF is not copied twice on disk), else a copy."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_place)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _rows(path: Path) -> int:
    from repro.artifacts import parquet_rows

    if path.suffix == ".parquet":
        return parquet_rows(path)
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def dataset_card(run: RunDir, folder: Path, hub_id: str, train: list[str], with_model: bool) -> str:
    """card.build's card with a config per data file in `folder`, a section on the files and
    formats, and its loading lines pointing at the Hub instead of runs/<name>/."""
    from huggingface_hub import DatasetCard

    from repro import card

    text, _ = card.build(run)
    dc = DatasetCard(text)
    configs = list(dc.data.configs or [])
    names = {c["config_name"] for c in configs}
    what = {"validated.parquet": "the pairs whose solution passed the teacher's tests (validate)",
            "evol.parquet": "Evol-Instruct pairs, the second training stage (evol)"}
    for name in train:
        if name != "clean.parquet" and Path(name).stem not in names:
            configs.append({"config_name": Path(name).stem, "data_files": [{"split": "train", "path": name}]})
    for fmt in FORMATS:  # parquet: the Hub and `datasets` read every config of a repo with one builder
        configs.append({"config_name": fmt, "data_files": [{"split": "train", "path": f"data/{fmt}.parquet"}]})
    dc.data.configs = configs
    config_of = {c["data_files"][0]["path"]: c["config_name"] for c in configs}
    trained = " and ".join(f"`{n}`" for n in train)
    files = [[f"`{p}`", _rows(folder / p) if (folder / p).suffix in (".parquet", ".jsonl") else "-",
              (f"config `{config_of[p]}`: " if p in config_of else "") + w]
             for p, w in [("clean.parquet", "every kept pair with all its columns (see Columns below)"),
                          ("clean.jsonl", "the same rows as JSON lines"),
                          *[(n, what[n]) for n in train if n in what],
                          *[(f"data/{f}.parquet", f"what the student was trained on ({trained}) in {WHAT[f]}")
                            for f in FORMATS],
                          *[(f"data/{f}.jsonl", "the same rows as JSON lines") for f in FORMATS],
                          ("removed.parquet", "pairs the clean stage removed, with the reason"),
                          ("seeds.parquet", "every seed drawn, with its source, path and licence"),
                          ("decontamination.json", "the decontamination report"),
                          ("decontamination.md", "the same, as a page")]
             if (folder / p).exists()]
    section = ["## Files and formats", "", *_table(["file", "rows", "what"], files), "",
               "```python", "from datasets import load_dataset",
               f'pairs = load_dataset("{hub_id}")["train"]                # clean.parquet',
               f'chat = load_dataset("{hub_id}", "messages")["train"]     # the training pairs as chat messages',
               f'oss = load_dataset("{hub_id}", "magicoder")["train"]     # in Magicoder\'s schema', "```", ""]
    if with_model:
        section += [f"The student fine-tuned on these pairs (GGUF and LoRA adapter): "
                    f"[{hub_id}](https://huggingface.co/{hub_id}).", ""]
    body = re.sub(r"```python\nfrom datasets import load_dataset\n.*?```\n", "", dc.text, count=1, flags=re.DOTALL)
    body = body.replace("## Size\n", "\n".join(section) + "\n## Size\n", 1) if "## Size\n" in body \
        else body + "\n" + "\n".join(section)
    dc.text = re.sub(r"\n{3,}", "\n\n", body)
    return str(dc)


def _name(f: str) -> str:
    return f"`{f}/`" if f == "adapter" else f"`{f}`"


def _what(f: str) -> str:
    if f == "adapter":
        return "the PEFT LoRA adapter (and tokenizer)"
    if f == "export.json":
        return "sizes, sha256 and the GGUF-vs-PyTorch round trip"
    if f.startswith("model-"):
        return "the merged student, quantized, for llama.cpp"
    return "the adapter alone as a GGUF LoRA (llama.cpp `--lora` on the base GGUF)"


def _student_card(run: RunDir, hub_id: str, files: list[str]) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from repro import models
    from repro.serve import ORIGINAL

    cfg = json.loads((run / "run.json").read_text()).get("config", {}) if (run / "run.json").exists() else {}
    student = (cfg.get("train") or {}).get("student", "")
    name = student.removeprefix("embedded:")
    base = ORIGINAL.get(name, "") if student.startswith("embedded:") else \
        (student.split("@")[0] if models.is_checkpoint(student) and not Path(student).expanduser().is_dir() else "")
    e = models.EMBEDDED.get(name) if student.startswith("embedded:") else None
    licence = {"Apache-2.0": "apache-2.0", "Gemma terms of use": "gemma"}.get(e.licence if e else "", None)
    data = ModelCardData(base_model=base or None, datasets=[hub_id], license=licence, pipeline_tag="text-generation",
                         tags=["code", "gguf", "lora", "peft", "magicoder-repro", "oss-instruct"])
    quant = next((f for f in files if f.startswith("model-")), "")
    lines = [f"# {run.path.name}: a student fine-tuned on OSS-Instruct pairs (magicoder-repro)", "",
             f"The student `{student or '?'}`" + (f" ({base})" if base else "") + " after LoRA fine-tuning on the "
             f"pairs of the dataset [{hub_id}](https://huggingface.co/datasets/{hub_id}), made by magicoder-repro "
             "(a reproduction of Magicoder's OSS-Instruct, arXiv 2312.02120). The run's report has its pass@1 "
             "beside the base student's.", "", *_table(["file", "what"], [[_name(f), _what(f)] for f in files]), "",
             "```sh", f"llama-cli -m {quant} -p 'Write a function that reverses a string.'" if quant else "", "```",
             "", "Not checked for safety or correctness beyond the benchmarks in the run's report.", ""]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def model_files(run: RunDir) -> list[str]:
    """The fine-tuned student's files in the run: model-*.gguf, adapter-*.gguf, adapter/, export.json."""
    m = run.manifest("export") or {}
    files = [f for f in m.get("outputs", {}) if f.startswith(("model-", "adapter-")) and (run / f).is_file()]
    if not any(f.startswith("model-") for f in files):
        raise ReproError(f"publish --with-model: {run.path} has no exported model (model-<quant>.gguf in the export "
                         "manifest); run the export stage first (`repro export`), or drop --with-model")
    if not (run / "adapter" / "adapter_config.json").is_file():
        raise ReproError(f"publish --with-model: {run / 'adapter'} holds no PEFT adapter; run the train stage first")
    return sorted(files) + ["adapter"] + (["export.json"] if (run / "export.json").is_file() else [])


def check_folder(folder: Path, hub_id: str) -> None:
    """huggingface_hub's and datasets' own offline checks of what will be pushed: the cards parse
    (DatasetCard/ModelCard, metadata_load), the configs are valid (datasets' MetadataConfigs) and
    every data file they name is in the folder. The Hub's server-side check (RepoCard.validate)
    needs the network: `publish` runs it just before a push."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, ModelCard, metadata_load

    check_repo_id(hub_id)
    d = folder / "dataset"
    try:
        dc = DatasetCard.load(d / "README.md", ignore_metadata_errors=False)
        if metadata_load(d / "README.md") != dc.data.to_dict():
            raise ValueError("metadata_load and DatasetCard disagree on the YAML header")
        configs = MetadataConfigs.from_dataset_card_data(dc.data)
        for name, c in configs.items():
            for f in c.get("data_files", []):
                if not (d / f["path"]).is_file():
                    raise ValueError(f"config {name} names {f['path']}, which is not in the folder")
        kinds = {Path(f["path"]).suffix for c in configs.values() for f in c.get("data_files", [])}
        if len(kinds) > 1:  # one builder reads every config of a repo
            raise ValueError(f"the configs mix file formats ({', '.join(sorted(kinds))})")
        if (folder / "model").exists():
            ModelCard.load(folder / "model" / "README.md", ignore_metadata_errors=False)
    except (ValueError, OSError) as e:
        raise ReproError(f"publish: the folder for {hub_id} fails the Hub's card checks ({str(e).splitlines()[0]}); "
                         "this is a bug in repro/publish.py or repro/card.py, please report it") from None


def build_folder(run: RunDir, hub_id: str, out: Path, with_model: bool) -> list[str]:
    """Write `out`/dataset (and `out`/model) and `out`/publish.json; returns the files, relative."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from repro import card

    check_repo_id(hub_id)
    train = training_files(run)
    rows = pairs(run)
    models_ = model_files(run) if with_model else []
    if out.exists() and not (out.is_dir() and ((out / "publish.json").is_file() or not any(out.iterdir()))):
        raise ReproError(f"--out {out}: exists and is not a folder `repro publish` wrote; give a new folder")
    with atomic_path(out) as tmp:
        d = tmp / "dataset"
        d.mkdir(parents=True)
        for name in dict.fromkeys(["clean.parquet", *train, *CITED]):
            if (run / name).is_file():
                _place(run / name, d / name)
        card._write_jsonl(run / "clean.parquet", d / "clean.jsonl")
        for fmt in FORMATS:
            _write_jsonl(convert(rows, fmt), d / "data" / f"{fmt}.jsonl")
            pq.write_table(pa.Table.from_pylist(convert(rows, fmt)), d / "data" / f"{fmt}.parquet")
        write_text(d / "README.md", dataset_card(run, d, hub_id, train, with_model))
        if with_model:
            for f in models_:
                _place(run / f, tmp / "model" / f)
            write_text(tmp / "model" / "README.md", _student_card(run, hub_id, models_))
        check_folder(tmp, hub_id)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_text(tmp / "publish.json", json.dumps({
            "to": hub_id, "run": str(run.path), "with_model": with_model, "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {f: (tmp / f).stat().st_size for f in files}}, indent=2) + "\n")
    return files


def offline_reason() -> str | None:
    """Why the Hub cannot be reached from here (HF_HUB_OFFLINE, or no connection), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or type(e).__name__})"
    return None


def hub_validate(readme: Path, repo_type: str) -> None:
    """The Hub's own card validation (online: RepoCard.validate posts the card to the Hub)."""
    from huggingface_hub import RepoCard

    RepoCard.load(readme).validate(repo_type)


def push(folder: Path, hub_id: str, *, with_model: bool, private: bool, message: str) -> list[str]:
    """Create the repo(s) and upload each folder in one commit; returns their URLs."""
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise ReproError(f"publish --to {hub_id}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
                         f"the folder is ready at {folder}")
    targets = [("dataset", folder / "dataset", f"https://huggingface.co/datasets/{hub_id}")]
    if with_model:
        targets.append(("model", folder / "model", f"https://huggingface.co/{hub_id}"))
    api, done = HfApi(), []
    for repo_type, path, url in targets:
        try:
            hub_validate(path / "README.md", repo_type)
        except ValueError as e:
            raise ReproError(f"publish: the Hub rejects {path / 'README.md'} ({str(e).splitlines()[0][:200]}); "
                             "nothing was pushed" + (f" after {done[0]}" if done else "")) from None
        except Exception as e:  # network errors come in many types
            raise ReproError(_push_error(url, e, done, folder)) from None
        try:
            api.create_repo(hub_id, repo_type=repo_type, private=private, exist_ok=True)
            api.upload_folder(repo_id=hub_id, repo_type=repo_type, folder_path=path, commit_message=message)
        except Exception as e:  # HTTP, network and auth errors come in many types
            raise ReproError(_push_error(url, e, done, folder)) from None
        done.append(url)
    return done


def _push_error(url: str, e: Exception, done: list[str], folder: Path) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    why = f"HTTP {status}" if status else type(e).__name__
    first = (str(e).splitlines() or [""])[0][:160]
    return (f"publish: pushing to {url} failed ({why}: {first}); check the token's write access to the repo and the "
            f"network, then rerun" + (f" ({done[0]} was pushed)" if done else "") + f"; the folder is at {folder}")


def publish(run: RunDir, hub_id: str, *, with_model: bool = False, dry_run: bool = False, out: Path | None = None,
            private: bool = False, note=None) -> dict:
    """Write the folder; then, unless dry_run or offline, push it. Returns what was done."""
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    folder = Path(out) if out else run / "publish"
    files = build_folder(run, hub_id, folder, with_model)
    result = {"folder": folder, "files": files, "pushed": [], "offline": None}
    if dry_run:
        return result
    reason = offline_reason()
    if reason:
        note(f"publish: offline ({reason}): nothing was pushed; {folder} holds exactly what would be; "
             "rerun online to push it")
        result["offline"] = reason
        return result
    result["pushed"] = push(folder, hub_id, with_model=with_model, private=private,
                            message=f"magicoder-repro: run {run.path.name}")
    return result


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
