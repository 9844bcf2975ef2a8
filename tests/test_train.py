import torch
import torch.nn.functional as F

from repro import train
from repro.config import TrainConfig

ROWS = [{"problem": "write a function that adds two numbers", "solution": "def add ( x , y ) : return x + y"},
        {"problem": "reverse the string s", "solution": "return s [ :: -1 ]"}]


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


def test_lora_training_lowers_the_loss_and_leaves_base_weights(tiny_model, tiny_tokenizer):
    exs, _ = train.build_examples(tiny_tokenizer, ROWS, max_len=256)
    cfg = TrainConfig(max_steps=40, batch_size=2, lr=1e-2, warmup_steps=2, lora_r=8, lora_alpha=16,
                      lora_dropout=0.0, precision="fp32")
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = train.add_lora(tiny_model, cfg)
    stats = train.train_loop(model, exs, cfg)
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    merged = model.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only LoRA-targeted layers
