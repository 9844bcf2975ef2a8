"""The batched llama.cpp engine against the one-request-at-a-time reference, on the real models."""

import ctypes
import re

import pytest

from repro import models
from repro.artifacts import ReproError
from repro.data.benchmarks import humaneval
from repro.engine import Request, check_settings, open_engine
from repro.eval.evaluate import EOS_STOPS, EXTRA_STOPS

COMPLETION_STOPS = EOS_STOPS + EXTRA_STOPS["humaneval"]

STUDENT = "embedded:gemma-3-270m-q4_k_m"
TEACHER = "embedded:qwen2.5-coder-0.5b-instruct-q4_k_m"


@pytest.fixture(scope="module")
def student():
    return models.resolve(STUDENT)


def _run(backend, gguf, reqs, **kw):
    with open_engine(backend, gguf, threads=1, **kw) as e:
        out = {c.key: c for c in e.run(reqs)}
        stats = e.stats
    assert set(out) == {r.key for r in reqs}
    return out, stats


@pytest.mark.e2e
def test_batched_greedy_equals_the_reference_with_slots_reused(student):
    """More requests than sequences, with different lengths: finished sequences are replaced
    while others are mid-answer, and every answer still equals the reference's."""
    probs = humaneval()[:6]
    reqs = [Request(p["task_id"], prompt=p["prompt"], max_tokens=8 + 6 * i, stop=COMPLETION_STOPS)
            for i, p in enumerate(probs)]
    ref, _ = _run("llama", student, reqs, n_ctx=512)
    for parallel in (1, 3):
        got, stats = _run("llama-batched", student, reqs, n_ctx=512, parallel=parallel)
        for r in reqs:
            assert (got[r.key].text, got[r.key].finish_reason, got[r.key].completion_tokens) == \
                (ref[r.key].text, ref[r.key].finish_reason, ref[r.key].completion_tokens), (parallel, r.key)
        assert stats.completion_tokens == sum(c.completion_tokens for c in got.values())


@pytest.mark.e2e
def test_greedy_answers_do_not_change_when_the_threads_do(student):
    """evaluate's lanes give a finished lane's threads to an engine mid-answer (repro/eval/lanes.py):
    the greedy text must be what one thread count gives throughout."""
    probs = humaneval()[:4]
    reqs = [Request(p["task_id"], prompt=p["prompt"], max_tokens=40, stop=COMPLETION_STOPS) for p in probs]
    ref, _ = _run("llama-batched", student, reqs, n_ctx=512, parallel=2)
    got, seen = {}, set()
    with open_engine("llama-batched", student, threads=1, n_ctx=512, parallel=2) as e:
        for c in e.run(reqs):
            got[c.key] = c
            seen.add(e.threads)
            e.set_threads(3 - e.threads)  # 1 -> 2 -> 1 ...: a switch at every answer
    assert seen == {1, 2}
    assert {k: (c.text, c.completion_tokens) for k, c in got.items()} == \
        {k: (c.text, c.completion_tokens) for k, c in ref.items()}


@pytest.mark.e2e
def test_batched_chat_equals_the_reference():
    teacher = models.resolve(TEACHER)
    reqs = [Request(f"c{i}", messages=[{"role": "system", "content": "You are a helpful coder."},
                                       {"role": "user", "content": q}], max_tokens=20)
            for i, q in enumerate(["Write a Python function that reverses a string.",
                                   "What does `git rebase` do? One sentence."])]
    ref, _ = _run("llama", teacher, reqs, n_ctx=512)
    got, _ = _run("llama-batched", teacher, reqs, n_ctx=512, parallel=2)
    assert [got[r.key].text for r in reqs] == [ref[r.key].text for r in reqs]
    assert all(got[r.key].prompt_tokens == ref[r.key].prompt_tokens for r in reqs)
    # One sequence: the second prompt reuses the cached system message and template head.
    one, stats = _run("llama-batched", teacher, reqs, n_ctx=512, parallel=1)
    assert [one[r.key].text for r in reqs] == [ref[r.key].text for r in reqs]
    assert 10 < stats.prompt_tokens_reused < one["c1"].prompt_tokens


@pytest.mark.e2e
def test_a_prefilled_chat_answer_continues_the_prefill_in_both_engines():
    """Magicoder's evaluation starts the answer with a code fence: the engines render the chat
    template and append it; the returned text is what follows."""
    teacher = models.resolve(TEACHER)
    msg = [{"role": "user", "content": "Write a Python function `add(a, b)` that returns a + b."}]
    reqs = [Request("p", messages=msg, prefill="```python\ndef add(a, b):\n", max_tokens=12, stop=["```"]),
            Request("q", messages=msg, max_tokens=12)]
    ref, _ = _run("llama", teacher, reqs, n_ctx=512)
    got, _ = _run("llama-batched", teacher, reqs, n_ctx=512, parallel=2)
    assert got["p"].text == ref["p"].text and got["q"].text == ref["q"].text
    assert ref["p"].text.startswith("    ")  # the function's body: the answer went on from the prefill
    assert not ref["q"].text.startswith("    ")  # without it, the answer starts from the top
    assert got["p"].prompt_tokens > got["q"].prompt_tokens


@pytest.mark.e2e
def test_stop_strings_length_and_a_prompt_too_long(student):
    reqs = [Request("stop", prompt="def f():\n    return 1\n\n\ndef g():\n", max_tokens=64, stop=["\n"]),
            Request("len", prompt="def f():\n", max_tokens=3),
            Request("long", prompt="x = 1\n" * 400, max_tokens=4)]
    got, _ = _run("llama-batched", student, reqs, n_ctx=256, parallel=2)
    assert got["stop"].finish_reason == "stop" and "\n" not in got["stop"].text
    assert got["len"].finish_reason == "length" and got["len"].completion_tokens == 3
    assert got["long"].finish_reason == "prompt_too_long" and got["long"].completion_tokens == 0


@pytest.mark.e2e
def test_sampling_is_reproducible_per_request_seed(student):
    reqs = [Request(f"s{i}", prompt="def add(a, b):\n", max_tokens=12, temperature=0.9, seed=7) for i in range(2)]
    got, _ = _run("llama-batched", student, reqs, n_ctx=256, parallel=2)
    assert got["s0"].text == got["s1"].text  # same seed, same prompt: same answer even when batched
    other, _ = _run("llama-batched", student, [Request("s0", prompt="def add(a, b):\n", max_tokens=12,
                                                       temperature=0.9, seed=8)], n_ctx=256)
    again, _ = _run("llama-batched", student, reqs[:1], n_ctx=256)
    assert again["s0"].text == got["s0"].text
    assert other["s0"].text != got["s0"].text  # a different seed explores (12 tokens at T=0.9)


@pytest.mark.parametrize("args, msg", [(("vllm", 8, 2048), "generate.backend='vllm' is unknown"),
                                       (("llama-batched", 0, 2048), "generate.parallel=0"),
                                       (("llama", 1, 4), "generate.n_ctx=4")])
def test_bad_engine_settings_are_user_errors(args, msg):
    with pytest.raises(ReproError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        check_settings("generate", *args)


@pytest.mark.e2e
def test_json_schema_grammar_in_the_batched_engine_equals_the_reference():
    """Per-sequence grammars in one batch: greedy answers as the high-level API's grammar sampler
    gives them, and a sampled answer is held to the schema too."""
    from repro.generate import ANSWER_SCHEMA, JSON_INSTRUCTION

    teacher = models.resolve(TEACHER)
    reqs = [Request(f"j{i}", messages=[{"role": "user", "content": q + JSON_INSTRUCTION}], max_tokens=28,
                    json_schema=ANSWER_SCHEMA)
            for i, q in enumerate(["Invent a tiny coding exercise about lists.", "Invent one about strings."])]
    free = Request("free", messages=reqs[0].messages, max_tokens=6)  # no schema, in the same batch
    ref, _ = _run("llama", teacher, reqs, n_ctx=512)
    got, _ = _run("llama-batched", teacher, reqs + [free], n_ctx=512, parallel=3)
    assert [got[r.key].text for r in reqs] == [ref[r.key].text for r in reqs]
    assert all(re.match(r'\{\s*"problem"', got[r.key].text) for r in reqs)
    hot = Request("hot", messages=reqs[0].messages, max_tokens=12, json_schema=ANSWER_SCHEMA, temperature=1.5, seed=3)
    sampled, _ = _run("llama-batched", teacher, [hot], n_ctx=512)
    assert re.match(r'\{\s*"problem"', sampled["hot"].text), sampled["hot"].text


@pytest.mark.e2e
def test_the_json_grammar_allows_escapes_but_no_raw_control_characters():
    """Strings as JSON has them: a line break inside one must be written as \\n."""
    import llama_cpp.llama_cpp as C

    from repro.engine import Tokenizer, grammar_of, load_vocab
    from repro.generate import ANSWER_SCHEMA

    vocab = load_vocab(models.resolve(TEACHER))
    try:
        tok = Tokenizer(vocab)
        g = C.llama_sampler_init_grammar(vocab.vocab, grammar_of(ANSWER_SCHEMA).encode(), b"root")
        for t in tok.tokenize('{"problem": "Sum'):
            C.llama_sampler_accept(g, t)

        def allowed(text):
            (t,) = tok.tokenize(text)
            cand = (C.llama_token_data * 1)()
            cand[0].id, cand[0].logit = t, 0.0
            C.llama_sampler_apply(g, ctypes.byref(C.llama_token_data_array(data=cand, size=1, selected=-1,
                                                                           sorted=False)))
            return cand[0].logit == 0.0

        assert allowed(" two") and allowed("\\") and allowed('"')
        assert not allowed("\n") and not allowed("\t")
        C.llama_sampler_free(g)
    finally:
        vocab.close()


# Request.fill_loops, on the batched engine's own bookkeeping (no model): tokens are fed one at a
# time as _accept feeds them, each shown as "<id>".


class _Pieces:
    @staticmethod
    def piece(t: int) -> bytes:
        return f"<{t}>".encode()


def _feed(tokens, fill_loops, max_new, stops=()):
    from repro.engine.llama_backend import BatchedEngine, _Slot, loop_counters

    r = Request("k", fill_loops=fill_loops, max_tokens=max_new)
    runs, loop_at = loop_counters(r)
    s = _Slot(r, 0, [1], max_new, [x.encode() for x in stops], 0.0, runs=runs, loop_at=loop_at)
    engine = type("E", (), {"tokenizer": _Pieces()})()
    for i, t in enumerate(tokens):
        s.out.append(t)
        s.text += _Pieces.piece(t)
        if s.runs is not None and (done := BatchedEngine._fill_loop(engine, s)):
            return done, s, i + 1
    return None, s, len(tokens)


def test_a_loop_is_filled_once_it_repeats_three_times_and_not_before():
    head, cycle = [5, 6, 7, 8], [1, 2, 3]
    done, s, fed = _feed(head + cycle * 10, fill_loops=6, max_new=40)
    # Period 3 counts as a loop once 6 tokens each equal the one 3 before: three cycles in.
    assert fed == len(head) + 9 and done[1] == "length"
    expect = (head + cycle * 12)[:40]
    assert s.out == expect and s.filled == 40 - fed
    assert done[0] == "".join(f"<{t}>" for t in expect)
    # fill_loops is a floor: a longer window waits for more repeats; a larger period needs 3 of them
    # whatever fill_loops says.
    assert _feed(head + cycle * 10, fill_loops=12, max_new=40)[2] == len(head) + 3 + 12
    assert _feed(head + [9] * 8 + cycle * 10, fill_loops=1, max_new=60)[2] == len(head) + 3  # [9] x 3
    assert _feed(head + [1, 2, 3, 4, 5, 6] * 3, fill_loops=1, max_new=60)[2] == len(head) + 18


def test_text_that_is_not_a_loop_is_decoded_and_off_means_off():
    done, s, fed = _feed([1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2, 4, 5, 1, 2, 3], fill_loops=6, max_new=40)
    assert done is None and s.filled == 0
    assert _feed([7] * 50, fill_loops=0, max_new=60)[0] is None
    sampled = Request("k", fill_loops=8, temperature=0.7)
    from repro.engine.llama_backend import loop_counters
    assert loop_counters(sampled) == (None, None)


def test_a_stop_string_that_the_repeats_complete_ends_the_filled_answer():
    done, s, fed = _feed([3] + [9] * 10, fill_loops=4, max_new=50, stops=["<9>" * 12])
    # Filled after five 9s; decoding would have stopped at the twelfth, before the stop string.
    assert fed == 6 and s.filled > 0 and done == ("<3>", "stop")


@pytest.mark.e2e
def test_a_filled_loop_equals_the_decoded_answer(student):
    """The student continues a run of identical lines with more of them: filling the loop gives
    the text decoding gives, with most tokens not decoded."""
    reqs = [Request("loop", prompt="x = 1\n" * 40, max_tokens=120),
            Request("code", prompt=humaneval()[0]["prompt"], max_tokens=40, stop=COMPLETION_STOPS)]
    full, full_stats = _run("llama-batched", student, reqs, n_ctx=512, parallel=2)
    filled, stats = _run("llama-batched", student, [Request(**{**r.__dict__, "fill_loops": 24}) for r in reqs],
                         n_ctx=512, parallel=2)
    for r in reqs:
        assert (filled[r.key].text, filled[r.key].finish_reason, filled[r.key].completion_tokens) == \
            (full[r.key].text, full[r.key].finish_reason, full[r.key].completion_tokens), r.key
    assert filled["loop"].filled > 60 and filled["code"].filled == 0 and full["loop"].filled == 0
    assert stats.filled_tokens == filled["loop"].filled
    assert stats.completion_tokens + stats.filled_tokens == full_stats.completion_tokens
