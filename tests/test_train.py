import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repro import student, train
from repro.artifacts import ReproError
from repro.config import TrainConfig
from builders import MORE_ROWS, ROWS, write_clean

ROOT = Path(__file__).resolve().parent.parent

def test_prompt_is_masked_and_response_ends_with_eos(tiny_tokenizer):
    (ex, _), _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    n_prompt = len(tiny_tokenizer(train.format_prompt(ROWS[0]["problem"]))["input_ids"])
    assert ex.input_ids[0] == tiny_tokenizer.bos_token_id
    assert ex.labels[:n_prompt] == [-100] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.input_ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ex.input_ids[n_prompt:-1]) == ROWS[0]["solution"]


def test_truncation_and_too_long_prompts_are_counted(tiny_tokenizer):
    n_prompt = len(tiny_tokenizer(train.format_prompt(ROWS[0]["problem"]))["input_ids"])
    exs, counts = train.build_examples(tiny_tokenizer, ROWS[:1], max_len=n_prompt + 3)
    assert counts["truncated"] == 1 and len(exs[0].input_ids) == n_prompt + 3
    exs, counts = train.build_examples(tiny_tokenizer, ROWS[:1], max_len=n_prompt)
    assert counts["dropped_prompt_too_long"] == 1 and exs == []


def test_response_loss_equals_masked_full_cross_entropy(tiny_model, tiny_tokenizer):
    """Computing logits only at response positions changes nothing but the cost."""
    (ex, _), _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    loss, n = train.response_loss(tiny_model, ex)
    ids = torch.tensor([ex.input_ids])
    logits = tiny_model(input_ids=ids).logits[0, :-1]
    ref = F.cross_entropy(logits, torch.tensor(ex.labels[1:]), ignore_index=-100, reduction="sum")
    assert n == sum(l != -100 for l in ex.labels[1:])
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_head_gives_the_full_logits_loss_and_gradient(softcap, autocast, monkeypatch):
    monkeypatch.setattr(student, "CHUNK_ELEMENTS", 3 * 50)  # 3 rows a chunk: 4 chunks
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    targets = torch.randint(0, 50, (10,))
    results = []
    for fn in (student.logits_head, student.chunked_head):
        h = (3 * torch.randn(10, 16, generator=torch.Generator().manual_seed(1))).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(h, head, targets, softcap)
        (0.5 * loss).backward()
        results.append((loss.detach(), h.grad))
    (ref, g_ref), (got, g_got) = results
    tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got, ref, **tol)
    torch.testing.assert_close(g_got, g_ref, **tol)


def test_the_chunked_head_keeps_one_buffer_and_recasts_a_changed_weight(monkeypatch):
    monkeypatch.setattr(student, "CHUNK_ELEMENTS", 4 * 50)  # 4 rows a chunk
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    # No rows, rows under, at and over a chunk, then a weight changed in place: each call must
    # equal the full logits' loss and gradient, whatever the kept buffer and cast held before.
    for n, bump in ((0, False), (3, False), (10, False), (4, False), (7, True)):
        if bump:
            head.weight.mul_(1.5)
        targets = torch.randint(0, 50, (n,))
        results = []
        for fn in (student.logits_head, student.chunked_head):
            h = torch.randn(n, 16, generator=torch.Generator().manual_seed(n)).requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = fn(h, head, targets, None)
            loss.backward()
            results.append((loss.detach(), h.grad))
        (ref, g_ref), (got, g_got) = results
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(g_got, g_ref, rtol=2e-2, atol=2e-2)
    assert head.__dict__["_repro_workspace"]["logits"].shape == (4, 50)  # one buffer, a chunk's rows


def test_frozen_linears_in_bf16_give_the_same_autocast_step(tiny_model, tiny_tokenizer):
    import copy

    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    ids, labels = train.collate(exs[:2], "cpu")
    cfg = TrainConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0, precision="bf16")
    results = []
    for cast in (False, True):
        torch.manual_seed(0)
        model = student.add_lora(copy.deepcopy(tiny_model), cfg)
        if cast:
            assert student.frozen_linears_to(model, torch.bfloat16) == 2 * 7  # 7 projections a layer
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = train.batch_loss(model, ids, labels, student.chunked_head)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        results.append((loss.detach(), grads, dtypes))
    (ref, g_ref, _), (got, g_got, dtypes) = results
    # Autocast rounded the fp32 weights to the same bf16 values on every call.
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(g_got, g_ref, rtol=0, atol=0)
    assert {dtypes[n] for n in g_got} == {torch.float32}  # LoRA weights train in fp32
    def dtype(suffix):
        return next(d for n, d in dtypes.items() if n.endswith(suffix))
    assert dtype("embed_tokens.weight") == torch.float32  # and so the tied head
    assert dtype("layers.0.mlp.up_proj.base_layer.weight") == torch.bfloat16


def test_lora_training_lowers_the_loss_and_leaves_base_weights(tiny_model, tiny_tokenizer):
    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    cfg = TrainConfig(max_steps=40, batch_size=2, lr=1e-2, warmup_steps=2, lora_r=8, lora_alpha=16,
                      lora_dropout=0.0, precision="fp32")
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = student.add_lora(tiny_model, cfg)
    stats = train.train_loop(model, exs, cfg)
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    merged = model.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only LoRA-targeted layers


def test_the_adapter_moves_greedy_output_to_the_training_target(tiny_model, tiny_tokenizer):
    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    cfg = TrainConfig(max_steps=120, batch_size=2, lr=2e-2, warmup_steps=2, lora_r=8, lora_alpha=16,
                      lora_dropout=0.0, precision="fp32")
    model = student.add_lora(tiny_model, cfg)
    ex = exs[0]
    n_prompt = next(i for i, label in enumerate(ex.labels) if label != -100)
    target = ex.input_ids[n_prompt:]  # the solution's tokens and EOS

    def greedy() -> list[int]:
        model.eval()
        out = model.generate(input_ids=torch.tensor([ex.input_ids[:n_prompt]]), max_new_tokens=len(target),
                             do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id,
                             eos_token_id=tiny_tokenizer.eos_token_id)
        return out[0, n_prompt:].tolist()

    before = greedy()
    train.train_loop(model, exs, cfg)
    assert before != target and greedy() == target
    fit = train.greedy_agreement(model, exs, student.Backend())
    assert fit["tokens"] == sum(label != -100 for e in exs for label in e.labels[1:])
    assert fit["adapter_on"] == 1.0 and fit["adapter_off"] < 0.5
    with model.disable_adapter():
        assert greedy() == before  # the base weights are untouched


@pytest.mark.parametrize("loss", ["chunked", "kernels"])
def test_a_lora_on_the_head_trains_through_the_fast_loss_head(loss, tiny_model, tiny_tokenizer):
    # train.target_modules may name lm_head: PEFT wraps it, its weight (the base's) stays frozen,
    # and a loss head that used that weight alone would never train the head's LoRA. "kernels":
    # the triton backend's head, with the kernels' PyTorch references (any device).
    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    cfg = TrainConfig(max_steps=2, batch_size=2, lr=1e-2, warmup_steps=0, lora_r=4, lora_alpha=8,
                      lora_dropout=0.0, precision="fp32", target_modules=["q_proj", "lm_head"])
    model = student.add_lora(tiny_model, cfg)
    head = student.causal_lm(model).get_output_embeddings()
    assert not student.plain_head(head)
    b = next(p for n, p in head.named_parameters() if "lora_B" in n)
    assert not b.any()  # PEFT starts B at zero
    backend = (student.Backend(head=student.chunked_head) if loss == "chunked"
               else student.kernel_backend(model, "cpu", False, impl="reference")[0])
    train.train_loop(model, exs, cfg, backend=backend)
    assert b.any()  # the head's LoRA got gradients
    fit = train.greedy_agreement(model, exs, backend)
    assert fit["tokens"] > 0


def test_greedy_agreement_in_bf16_counts_what_autocast_logits_give(tiny_model, tiny_tokenizer):
    # greedy_agreement casts the frozen head once and takes max's indices; the plain way is
    # the head under autocast, cast per call, and argmax. Same hits, adapter off and on.
    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    cfg = TrainConfig(max_steps=40, batch_size=2, lr=2e-2, warmup_steps=1, lora_r=8, lora_alpha=16,
                      lora_dropout=0.0, precision="fp32")
    model = student.add_lora(tiny_model, cfg)
    train.train_loop(model, exs, cfg)
    backend = student.Backend(bf16=True)
    head = student.causal_lm(model).get_output_embeddings()

    def plain() -> int:
        hit = 0
        for ex in exs:
            ids, labels = train.collate([ex])
            with torch.no_grad(), backend.autocast():
                hidden = student.decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
                keep = labels[:, 1:] != -100
                hit += int((head(hidden[:, :-1][keep]).argmax(-1) == labels[:, 1:][keep]).sum())
        return hit

    model.eval()
    with model.disable_adapter():
        off = plain()
    on = plain()
    fit = train.greedy_agreement(model, exs, backend, k=len(exs))
    assert (round(off / fit["tokens"], 4), round(on / fit["tokens"], 4)) == (fit["adapter_off"], fit["adapter_on"])
    assert fit["adapter_on"] != fit["adapter_off"]  # the adapter moved something: the two passes differ


# ---------------------------------------------------------------------------------------------
# Backends: our kernels patched into the model


def tiny_qwen2(vocab_size: int, init: float = 0.5):
    """Qwen2 in miniature: SwiGLU and RMSNorm with offset 0, the teacher's family."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      initializer_range=init)
    return Qwen2ForCausalLM(cfg).float()


def lora_grads(model, ids, labels, head=None):
    model.zero_grad(set_to_none=True)
    loss, _ = student.batch_loss(model, ids, labels, head)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_kernels_patched_in_give_the_same_loss_and_gradients(arch, impl, tiny_model, tiny_tokenizer):
    """The patching logic on the CPU, in fp32: the kernels (their PyTorch references, or the Triton
    kernels in Triton's interpreter) in place of the model's own RMSNorm, MLP activation, LoRA
    projection and loss give the same loss and LoRA gradients."""
    if impl == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on CPU tensors need TRITON_INTERPRET=1 (conftest sets it without a GPU)")
    pytest.importorskip("triton")
    model = tiny_model if arch == "gemma3" else tiny_qwen2(len(tiny_tokenizer))
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0)
    model = student.add_lora(model, cfg)
    for n, p in model.named_parameters():  # PEFT starts B at zero: make the LoRA path count
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    ids, labels = train.collate(exs, "cpu")  # two rows of different lengths: padding included
    loss, grads = lora_grads(model, ids, labels)

    backend, counts = student.kernel_backend(model, "cpu", False, impl=impl)
    # Gemma 3: 4 norms + q_norm + k_norm per layer, and the final norm; Qwen2: 2 per layer + final.
    assert counts == {"rmsnorm": 13 if arch == "gemma3" else 5, "mlp": 2, "lora_linear": 14, "left_alone": {}}
    patched_loss, patched_grads = lora_grads(model, ids, labels, backend.head)
    torch.testing.assert_close(patched_loss, loss, rtol=1e-5, atol=1e-5)
    assert patched_grads.keys() == grads.keys()
    for n in grads:  # fp32 sums in another order: differences of float rounding, relative to the tensor
        err = (patched_grads[n] - grads[n]).abs().max() / grads[n].abs().max()
        assert err < (1e-5 if impl == "reference" else 1e-4), (n, err)


def test_patched_lora_falls_back_to_peft_when_the_adapter_is_disabled(tiny_model, tiny_tokenizer):
    base_logits = tiny_model(input_ids=torch.tensor([[2, 5, 6, 7]])).logits
    model = student.add_lora(tiny_model, TrainConfig(lora_r=4, lora_dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    student.kernel_backend(model, "cpu", False, impl="reference")
    ids = torch.tensor([[2, 5, 6, 7]])
    assert not torch.allclose(model(input_ids=ids).logits, base_logits, atol=1e-3)
    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=ids).logits, base_logits, rtol=1e-5, atol=1e-5)


def test_lora_with_dropout_is_left_on_peft_and_counted(tiny_model):
    from repro.kernels.patch import patch_model

    model = student.add_lora(tiny_model, TrainConfig(lora_r=4, lora_dropout=0.1))
    counts = patch_model(model, impl="reference")
    assert counts["lora_linear"] == 0 and counts["left_alone"] == {"lora.Linear: lora_dropout > 0": 14}


# A stand-in for Hugging Face's `kernels` distribution, which transformers imports by that name when
# it is installed: every name it asks for is a do-nothing (decorators give back what they wrap).
STAND_IN_KERNELS = """
class _Anything(type):
    def __getattr__(cls, name):  # Mode.INFERENCE and the like
        return cls()

    def __or__(cls, other):
        return cls


class _Nothing(metaclass=_Anything):
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and not kwargs and callable(args[0]) else _Nothing()

    def __getattr__(self, name):
        return _Nothing()

    def __or__(self, other):
        return self

    __ror__ = __or__


STAND_IN = True


def __getattr__(name):
    return _Nothing
"""

TRAIN_BESIDE_IT = """
import sys
sys.path.insert(0, "")  # the checkout first, as `python -m pytest` and `python` in it have it
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from repro import student, train
from repro.config import TrainConfig
import kernels

tok = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).float()
rows = [{"problem": "write a function that adds two numbers", "solution": "def add ( x , y ) : return x + y"}]
exs, _ = train.build_examples(tok, rows, max_len=256)
cfg = TrainConfig(max_steps=3, batch_size=1, lr=1e-2, warmup_steps=1, lora_r=4, lora_dropout=0.0, precision="fp32")
model = student.add_lora(model, cfg)
backend, counts = student.kernel_backend(model, "cpu", False, impl="reference")
stats = train.train_loop(model, exs, cfg, backend=backend)
print(kernels.__file__, getattr(kernels, "STAND_IN", False), counts["rmsnorm"], stats["steps"])
"""


def test_our_kernels_leave_the_name_kernels_to_the_distribution_that_owns_it(tmp_path, student_dir):
    """transformers imports `kernels` (Hugging Face's) when a distribution of that name is installed;
    a package of ours by that name once answered instead and training failed at import. With a
    stand-in installed beside the checkout, `import kernels` finds the stand-in, from the checkout's
    own directory too, and a tiny model trains with our kernels (repro.kernels) patched in."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text(STAND_IN_KERNELS)
    dist = site / "kernels-0.19.1.dist-info"  # a version transformers accepts: it imports the stand-in
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    (dist / "RECORD").write_text("")
    r = subprocess.run([sys.executable, "-c", TRAIN_BESIDE_IT, str(student_dir)], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    where, stand_in, norms, steps = r.stdout.split()
    assert where == str(site / "kernels" / "__init__.py") and stand_in == "True"
    assert int(norms) == 13 and int(steps) == 3  # our RMSNorm in every norm of the tiny Gemma 3


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line before anything is written

@pytest.mark.parametrize("change,words", [
    ({"backend": "jax"}, ["train.backend='jax' is unknown", "peft, triton, unsloth"]),
    ({"backend": "unsloth"}, ["train.backend=unsloth needs a CUDA GPU; none found", "train.backend=peft"]),
    ({"backend": "triton"}, ["train.backend=triton needs a CUDA GPU; none found", "train.backend=peft"]),
    ({"max_len": 20}, ["train.max_len=20", "training template alone is"]),
    ({"precision": "fp8"}, ["train.precision='fp8' is unknown"]),
    ({"backend": "unsloth", "compile": True}, ["train.compile=true applies to the peft and triton backends only"]),
])
def test_bad_train_settings_are_one_clear_error(student_dir, change, words):
    if torch.cuda.is_available() and change.get("backend") in ("unsloth", "triton"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ReproError) as e:
        train.check_settings(replace(TrainConfig(student=str(student_dir)), **change))
    for w in words:
        assert w in str(e.value)


def test_unsloth_missing_says_which_extra_to_install(student_dir, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("unsloth is installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU is what cannot run here
    with pytest.raises(ReproError) as e:
        train.check_settings(TrainConfig(student=str(student_dir), backend="unsloth"))
    assert "train.backend=unsloth needs the unsloth package; pip install -e '.[cuda]'" in str(e.value)


def test_a_student_that_cannot_be_loaded_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ReproError, match="train.student=.*broken: its config does not load"):
        train.check_settings(TrainConfig(student=str(broken)))


def test_an_empty_dataset_fails_before_anything_is_written(tmp_path, student_dir):
    clean = write_clean(tmp_path / "run" / "clean.parquet", [])
    cfg = TrainConfig(student=str(student_dir), device="cpu", precision="fp32")
    with pytest.raises(ReproError, match="has no pairs"):
        train.run(cfg, clean, tmp_path / "run" / "adapter", tmp_path / "run" / "train_log.jsonl")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["clean.parquet"]


def repro(*args):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_refuses_a_cuda_backend_without_touching_the_run_dir(tmp_path, student_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run_dir = tmp_path / "run"
    r = repro("train", "--profile", "smoke", "--set", f"train.student={student_dir}", "--set",
              "train.backend=unsloth", "--run-dir", str(run_dir))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: train.backend=unsloth needs a CUDA GPU; none found — use train.backend=peft"]
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# Checkpoints: kill -9, rerun, same result

RESUME_SETTINGS = ["train.max_steps=8", "train.batch_size=2", "train.save_every=3", "train.lr=0.01",
                   "train.warmup_steps=2", "train.lora_r=4", "train.lora_alpha=8",
                   "train.lora_dropout=0.1",  # dropout draws from torch's RNG: its state must resume too
                   "train.precision=fp32", "train.device=cpu", "train.max_len=256", "train.threads=1"]

KILL_AT = """
import os, signal, sys
from pathlib import Path
from repro import config, student, train
run, overrides, kill_at = Path(sys.argv[1]), sys.argv[3:], int(sys.argv[2])
cfg = config.load("smoke", overrides).train
def crash(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
train.run(cfg, run / "clean.parquet", run / "adapter", run / "train_log.jsonl", after_step=crash)
"""


def adapter_tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(d / "adapter_model.safetensors")


@pytest.mark.slow  # kill -9 and a rerun: with tests/test_crash.py, in `make test-all`
def test_kill_9_then_rerun_resumes_to_the_same_adapter_and_loss_curve(tmp_path, student_dir):
    settings = [f"train.student={student_dir}", *RESUME_SETTINGS]
    sets = [a for s in settings for a in ("--set", s)]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    for d in (whole, crashed):
        write_clean(d / "clean.parquet", MORE_ROWS)

    r = repro("train", "--profile", "smoke", *sets, "--run-dir", str(whole), "--quiet")
    assert r.returncode == 0, r.stderr

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    k = subprocess.run([sys.executable, "-c", KILL_AT, str(crashed), "7", *settings], env=env,
                       capture_output=True, text=True, cwd=ROOT)
    assert k.returncode == -signal.SIGKILL, k.stderr
    assert [p.name for p in (crashed / "train_ckpt").iterdir()] == ["step-0000006"]
    assert len((crashed / "train_log.jsonl").read_text().splitlines()) == 7  # step 7 is redone
    assert not (crashed / "adapter").exists()

    r = repro("train", "--profile", "smoke", *sets, "--run-dir", str(crashed), "--quiet")
    assert r.returncode == 0, r.stderr
    stats = json.loads((crashed / "manifests" / "train.json").read_text())["stats"]
    assert stats["resumed_from_step"] == 6 and not (crashed / "train_ckpt").exists()

    a, b = adapter_tensors(whole / "adapter"), adapter_tensors(crashed / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    rows = [[json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (whole, crashed)]
    same = ("step", "loss", "lr", "tokens")
    assert [{k: r[k] for k in same} for r in rows[1]] == [{k: r[k] for k in same} for r in rows[0]]
    assert [r["step"] for r in rows[1]] == list(range(1, 9))
    assert all(r["tokens_per_second"] > 0 and r["peak_rss_mib"] > 0 for r in rows[1])


# ---------------------------------------------------------------------------------------------
# On a GPU: the triton backend against eager PEFT


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_triton_backend_matches_eager_peft_on_cuda(arch, tiny_model, tiny_tokenizer):
    """bf16 on CUDA, as in training: from the same weights, the first batch's loss and LoRA
    gradients agree to bf16 accuracy, and so do the losses of two optimizer steps."""
    import copy

    # Qwen2 at its usual init: at 0.5 its bf16 activations are extreme enough that HF's roundings
    # (RMSNorm rounds before the weight, the activation before the product) move gradients ~7%.
    template = (tiny_model if arch == "gemma3" else tiny_qwen2(len(tiny_tokenizer), init=0.02)).to(torch.bfloat16)
    cfg = TrainConfig(max_steps=2, batch_size=4, micro_batch=4, lr=1e-3, warmup_steps=0, lora_r=4,
                      lora_alpha=8, lora_dropout=0.0, precision="bf16", device="cuda", backend="triton")

    def build(dtype=torch.bfloat16):
        torch.manual_seed(1)  # the same LoRA initialisation for all
        m = student.add_lora(copy.deepcopy(template).to(dtype).cuda(), cfg)
        for n, p in m.named_parameters():  # PEFT starts B at zero: make the LoRA path count
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
        return m

    exs, _ = train.build_examples(tiny_tokenizer, MORE_ROWS, max_len=256)
    ids, labels = train.collate(exs[:4], "cuda")
    eager, patched = build(), build()
    eager_backend = student.Backend("peft", "cuda", True)
    triton_backend, counts = student.kernel_backend(patched, "cuda", True)
    assert counts["rmsnorm"] == (13 if arch == "gemma3" else 5) and counts["mlp"] == 2
    assert counts["lora_linear"] == 14

    # The yardstick is the same model in fp32 without autocast: bf16 eager PEFT itself is off
    # from it by several percent on some tensors (measured on an H200: 14% between bf16 eager and
    # bf16 triton on Qwen2's first q_proj lora_A), so the triton path must be about as close to
    # fp32 as eager bf16 is. A wrong kernel is off by ~100%.
    loss_r, grads_r = lora_grads(build(torch.float32), ids, labels)
    with eager_backend.autocast():
        loss_e, grads_e = lora_grads(eager, ids, labels)
    with triton_backend.autocast():
        loss_t, grads_t = lora_grads(patched, ids, labels, triton_backend.head)
    assert abs(loss_t.item() - loss_r.item()) <= 2 * abs(loss_e.item() - loss_r.item()) + 1e-2 * abs(loss_r.item())
    for n in grads_r:
        ref = grads_r[n].float()
        err_e = ((grads_e[n].float() - ref).norm() / ref.norm()).item()
        err_t = ((grads_t[n].float() - ref).norm() / ref.norm()).item()
        assert err_t <= 2 * err_e + 0.03, (n, err_t, err_e)

    logs = {}
    for name, model, backend in (("eager", eager, eager_backend), ("triton", patched, triton_backend)):
        logs[name] = []
        train.train_loop(model, exs, cfg, log=logs[name].append, backend=backend)
    assert [r["loss"] for r in logs["triton"]] == pytest.approx([r["loss"] for r in logs["eager"]], rel=2e-2)
    assert all("peak_cuda_mib" in r for r in logs["triton"])
