from dataclasses import replace

import pytest

from repro.eval import evaluate
from repro.config import EvaluateConfig
from repro.engine import Completion, Engine, Stats
from repro.eval.stats import paired_bootstrap, wilson

HE = {"task_id": "HumanEval/0", "entry_point": "add",
      "prompt": 'def add(a, b):\n    """Add two numbers."""\n', "canonical_solution": "    return a + b\n"}
MBPP = {"task_id": "Mbpp/2", "entry_point": "add",
        "prompt": '"""\nWrite a function to add two numbers\nassert add(1, 2) == 3\n"""\n',
        "canonical_solution": "\ndef add(a, b):\n  return a + b\n"}


# ---------------------------------------------------------------------------------------------
# Prompts


def test_instruct_prompt_is_magicoders_instruction_with_a_prefilled_fence():
    r = evaluate.build_request("humaneval", HE, "instruct")
    assert "@@ Instruction" in r["prompt"] and r["prompt"].endswith("@@ Response\n")
    assert "Write a solution to the following problem:\n```python\n" + HE["prompt"].strip() + "\n```" in r["prompt"]
    assert r["prefill"] == "```python\n" + HE["prompt"].strip() and r["stop"] == ["```"]
    assert r["head"] == HE["prompt"].strip()


def test_mbpp_instruction_splits_the_sentence_from_the_assertion():
    assert evaluate.mbpp_parts(MBPP["prompt"]) == ("Write a function to add two numbers.", "assert add(1, 2) == 3")
    r = evaluate.build_request("mbpp", MBPP, "chat")
    assert r["messages"] == [{"role": "user", "content": (
        "Write a function to add two numbers. Your code should satisfy the following assertion:\n"
        "```python\nassert add(1, 2) == 3\n```\nEnclose your solution in ```python and ```")}]
    assert r["prefill"] == "```python\n" and r["head"] == ""


def test_completion_prompts_and_stops_are_evalplus_direct_completion():
    he = evaluate.build_request("humaneval", HE, "completion")
    assert he["prompt"] == he["head"] == HE["prompt"] and "\ndef " in he["stop"] and "\nprint(" in he["stop"]
    mb = evaluate.build_request("mbpp", MBPP, "completion")
    assert mb["prompt"] == MBPP["prompt"].strip() + "\n" and '\n"""' in mb["stop"] and "\ndef " not in mb["stop"]
    with pytest.raises(Exception, match="unknown"):
        evaluate.build_request("humaneval", HE, "poetry")


@pytest.mark.parametrize("head,answer,program", [
    ('def f():\n    """x"""', "\n    return 1\n```\nsome prose", 'def f():\n    """x"""\n    return 1\n'),
    ('def f():\n    """x"""', "    return 1", 'def f():\n    """x"""\n    return 1'),
    ("", "def g():\n    return 2\n```", "def g():\n    return 2\n"),
    ('def f():\n    """x"""\n', "    pass", 'def f():\n    """x"""\n    pass'),
])
def test_solution_is_the_given_head_and_the_code_up_to_the_fence(head, answer, program):
    assert evaluate.solution(head, answer) == program


def test_every_nth_problem_is_chosen_and_stated():
    problems = {f"T/{i}": {} for i in range(10)}
    cfg = EvaluateConfig(stride=3)
    ids = evaluate.select(problems, cfg, "humaneval")
    assert ids == ["T/0", "T/3", "T/6", "T/9"]
    assert evaluate.subset_note(10, len(ids), cfg.stride, cfg.limit) == "4 of 10: one problem in every 3, in task order"
    assert evaluate.subset_note(10, 2, 1, 2) == "2 of 10: the first 2 in task order"
    assert evaluate.select(problems, EvaluateConfig(limit=2), "mbpp") == ["T/0", "T/1"]
    # MBPP's own stride where set; HumanEval keeps evaluate.stride
    cfg = EvaluateConfig(stride=3, mbpp_stride=5)
    assert evaluate.select(problems, cfg, "mbpp") == ["T/0", "T/5"]
    assert evaluate.select(problems, cfg, "humaneval") == ["T/0", "T/3", "T/6", "T/9"]
    assert evaluate.stride_of("mbpp", EvaluateConfig(stride=3)) == 3  # 0 = evaluate.stride
    assert evaluate.subset_note(10, len(problems), 1, 0) == "all"


# ---------------------------------------------------------------------------------------------
# Intervals


def test_wilson_interval_holds_the_rate_exactly_at_0_and_n():
    # rounding put 0/27's lower bound at 7e-18 and 63/63's upper one below 1, so the report's
    # pass@1 figure failed on negative error bars (a fresh tiny run, 27 MBPP problems)
    for n in range(1, 400):
        for k in (0, n):
            lo, hi = wilson(k, n)
            assert lo <= k / n <= hi


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi


def test_paired_bootstrap_interval():
    same = [True, False] * 20
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([True] * 30, [False] * 30) == (1.0, 1.0, 1.0)
    a = [i % 3 == 0 for i in range(60)]
    b = [i % 4 == 0 for i in range(60)]
    diff, lo, hi = paired_bootstrap(a, b, seed=1)
    assert lo < diff < hi and abs(diff - (20 - 15) / 60) < 1e-12
    assert paired_bootstrap(a, b, seed=1) == (diff, lo, hi)  # seeded
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:-1])


# ---------------------------------------------------------------------------------------------
# Answers: generated once, cached by model, data, prompt and decoding settings


class FakeEngine(Engine):  # Engine's __enter__/__exit__ and set_threads
    """Answers each request with the canonical solution of the problem its prompt holds."""
    calls: list = []

    def __init__(self, answers: dict[str, str]):
        self.answers, self.threads, self.stats = answers, 1, Stats(completion_tokens=1, seconds=1.0)

    def run(self, requests):
        for r in requests:
            text = r.prompt + r.prefill + "".join(m["content"] for m in r.messages or [])
            key = next(k for k in self.answers if k in text)
            FakeEngine.calls.append(key)
            yield Completion(r.key, self.answers[key], "stop", 10, 5, 0.1)


@pytest.fixture
def fake_engine(monkeypatch):
    import repro.engine

    answers = {}
    monkeypatch.setattr(repro.engine, "open_engine", lambda *a, **k: FakeEngine(answers))
    FakeEngine.calls = []
    return answers


def test_answers_are_made_once_and_reused_until_a_setting_changes(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    fake_engine[HE["prompt"].strip()] = "    return a + b\n"

    class Bench:
        sha256 = "0" * 64

    cfg = EvaluateConfig()
    problems = {"HumanEval/0": HE}
    gguf = tmp_path / "m.gguf"

    def answer(c):
        path = evaluate.answers_path(evaluate.answer_key("abc", Bench, "instruct", c), tmp_path / "local.jsonl", c)
        return path, evaluate.generate("m", gguf, [("humaneval", problems, ["HumanEval/0"], "instruct", path)], c)

    path, first = answer(cfg)
    assert first["generated"] == 1 and path.is_relative_to(tmp_path / "cache")
    _, again = answer(cfg)
    assert again == {**again, "generated": 0, "reused": 1} and len(FakeEngine.calls) == 1
    _, other = answer(replace(cfg, max_tokens=256))  # another decoding budget: another answer
    assert other["generated"] == 1
    local, _ = answer(replace(cfg, cache=False))
    assert local == tmp_path / "local.jsonl"


def test_canonical_answers_score_everything_and_results_have_evalplus_shapes(tmp_path, fake_engine, monkeypatch):
    """The stage end to end, llama.cpp replaced by canonical answers: base and plus all pass."""
    import json

    from repro.eval import evalplus_data

    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    cfg = EvaluateConfig(limit=3, models=["base", "teacher"], multilingual=[])
    for b in ("humaneval", "mbpp"):
        bench = evalplus_data.load(b)
        for t in list(bench.problems)[:3]:
            p = bench.problems[t]
            # Text that both the completion prompt (`base`) and the instruction (`teacher`) hold.
            key = p["prompt"].strip() if b == "humaneval" else evaluate.mbpp_parts(p["prompt"])[1]
            fake_engine[key] = p["canonical_solution"] if b == "mbpp" else "\n" + p["canonical_solution"].lstrip("\n")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    res = evaluate.run(cfg, {"base": (gguf, "completion"), "teacher": (gguf, "chat")}, tmp_path / "eval")
    for label in ("base", "teacher"):
        for b in ("humaneval", "mbpp"):
            r = res["models"][label][b]
            assert r["n"] == 3 and r["base"]["passed"] == 3 and r["plus"]["passed"] == 3, (label, b, r)
            ev = json.loads((tmp_path / "eval" / label / b / "eval_results.json").read_text())
            row = next(iter(ev["eval"].values()))[0]
            assert {"task_id", "solution", "base_status", "plus_status"} <= set(row) and "hash" in ev
            assert (tmp_path / "eval" / label / b / "samples.jsonl").is_file()
    assert {(c["a"], c["b"], c["benchmark"], c["split"]) for c in res["comparisons"]} == {
        ("teacher", "base", b, s) for b in ("humaneval", "mbpp") for s in ("base", "plus")}
    assert all(c["diff"] == 0.0 for c in res["comparisons"])


def test_rows_of_one_model_decode_in_one_pass_and_count_their_own_answers(tmp_path, fake_engine, monkeypatch):
    """The base student and the control row share a GGUF: one engine, one batch; each row still
    says how many answers it made and reused, in the rows' own order."""
    import repro.engine
    from repro.eval import evalplus_data

    opens = []
    monkeypatch.setattr(repro.engine, "open_engine", lambda *a, **k: opens.append(a[1]) or FakeEngine(fake_engine))
    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    bench = evalplus_data.load("humaneval")
    for t in list(bench.problems)[:2]:
        p = bench.problems[t]
        fake_engine[p["prompt"].strip()] = "\n" + p["canonical_solution"].lstrip("\n")
    student, teacher = tmp_path / "s.gguf", tmp_path / "t.gguf"
    student.write_bytes(b"GGUF student")
    teacher.write_bytes(b"GGUF teacher")
    cfg = EvaluateConfig(limit=2, benchmarks=["humaneval"], multilingual=[])
    rows = {"teacher": (teacher, "chat"), "base": (student, "completion"), "base-instruct": (student, "instruct")}
    res = evaluate.run(cfg, rows, tmp_path / "eval")
    assert sorted(opens) == [student, teacher] and len(FakeEngine.calls) == 6  # lanes: in either order
    assert list(res["models"]) == list(rows)
    assert [(m["generated"], m["reused"]) for m in res["models"].values()] == [(2, 0)] * 3
    assert all(m["humaneval"]["base"]["passed"] == 2 for m in res["models"].values())
    again = evaluate.run(cfg, rows, tmp_path / "eval")
    assert len(opens) == 2 and [(m["generated"], m["reused"]) for m in again["models"].values()] == [(0, 2)] * 3


def test_filled_loops_are_asked_for_counted_per_row_and_stated_in_the_report(tmp_path, fake_engine, monkeypatch):
    """evaluate.fill_loops reaches each greedy request; answers the engine filled are counted in
    their row's results and named in the report; answers made with it are cached apart."""
    import repro.engine
    from repro.eval import evalplus_data
    from repro.report.sections import sec_evaluation

    class Filling(FakeEngine):
        def run(self, requests):
            for i, r in enumerate(requests):
                assert r.fill_loops == 160
                c = next(FakeEngine.run(self, [r]))
                yield replace(c, finish_reason="length", filled=7) if i == 0 or "function add(" in r.prompt else c

    monkeypatch.setattr(repro.engine, "open_engine", lambda *a, **k: Filling(fake_engine))
    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    bench = evalplus_data.load("humaneval")
    for t in list(bench.problems)[:2]:
        p = bench.problems[t]
        fake_engine[p["prompt"].strip()] = "\n" + p["canonical_solution"].lstrip("\n")
    fake_engine["function add(x, y){"] = "\n  return x + y;\n}\n"
    fake_engine["function "] = "\n  return undefined_name;\n}\n"
    gguf = tmp_path / "s.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = EvaluateConfig(limit=2, benchmarks=["humaneval"], multilingual=["multipl-e"], multipl_e_langs=["js"],
                         multilingual_stride=53, fill_loops=160)
    res = evaluate.run(cfg, {"base": (gguf, "completion")}, tmp_path / "eval")
    base = res["models"]["base"]
    assert res["fill_loops"] == 160 and base["humaneval"]["filled"] == base["multipl-e/js"]["filled"] == \
        {"answers": 1, "tokens": 7}
    text = str(sec_evaluation(type("Run", (), {"stats": lambda self, stage: res})()))
    assert "evaluate.fill_loops=160" in text and "base 2 (14 tokens)" in text
    assert evaluate.answer_key("s", bench, "completion", cfg) != \
        evaluate.answer_key("s", bench, "completion", replace(cfg, fill_loops=0))


def test_multipl_e_through_the_stage_scores_each_model_on_the_same_problems(tmp_path, fake_engine, monkeypatch):
    """JavaScript, HumanEval numbers 0, 53, 106, 159: one right answer (53), the rest wrong."""
    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    fake_engine["function add(x, y){"] = "\n  return x + y;\n}\n"
    fake_engine["function "] = "\n  return undefined_name;\n}\n"
    cfg = EvaluateConfig(models=["base", "teacher"], benchmarks=["humaneval"], limit=0,
                         stride=164, multilingual=["multipl-e"], multipl_e_langs=["js", "swift"],
                         multilingual_stride=53)
    fake_engine[evaluate.evalplus_data.load("humaneval").problems["HumanEval/0"]["prompt"]
                .strip()] = "    return False\n"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(evaluate.multipl_e, "missing_tools", lambda lang: "swiftc not installed" if lang == "swift" else "")
    res = evaluate.run(cfg, {"base": (gguf, "completion"), "teacher": (gguf, "chat")}, tmp_path / "eval")
    js = res["multilingual"]["multipl-e/js"]
    assert js["task_ids"] == ["HumanEval_0_has_close_elements", "HumanEval_53_add", "HumanEval_106_f",
                              "HumanEval_159_eat"] and js["not_run"] == ""
    assert res["multilingual"]["multipl-e/swift"]["not_run"] == "swiftc not installed"
    assert "multipl-e/swift" not in res["models"]["base"]  # not run is not a zero
    for label in ("base", "teacher"):
        r = res["models"][label]["multipl-e/js"]
        assert r["base"]["per_task"] == [False, True, False, False], r
        rows = (tmp_path / "eval" / label / "multipl-e/js" / "verdicts.jsonl").read_text().splitlines()
        assert len(rows) == 4 and '"status": "pass"' in rows[1]
    assert ("teacher", "base", "multipl-e/js", "base") in {(c["a"], c["b"], c["benchmark"], c["split"])
                                                           for c in res["comparisons"]}


def test_ds1000_through_the_stage_runs_the_reference_answers_and_reports_libraries(tmp_path, fake_engine,
                                                                                   monkeypatch):
    from repro.eval import ds1000

    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    bench = ds1000.load()
    cfg = EvaluateConfig(models=["base"], benchmarks=["humaneval"], stride=164,
                         multilingual=["ds1000"], multilingual_stride=300, limit=0)
    he = evaluate.evalplus_data.load("humaneval").problems["HumanEval/0"]
    fake_engine[he["prompt"].strip()] = "    return False\n"
    for p in bench.problems.values():
        fake_engine[p["prompt"]] = p["reference_code"] + "\n</code>\n"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    res = evaluate.run(cfg, {"base": (gguf, "completion")}, tmp_path / "eval")
    x = res["multilingual"]["ds1000"]
    # every 300th of the problems whose libraries import here (seaborn's presence moves the 3rd and 4th)
    assert 3 <= len(x["task_ids"]) <= 4 and x["task_ids"][0] == "DS1000/0", x["task_ids"]
    assert "tensorflow" in x["not_run"]  # not installed here: not run, and said so
    r = res["models"]["base"]["ds1000"]
    assert r["n"] + r["not_run"] == len(x["task_ids"]) and r["n"] >= 2
    assert r["base"]["passed"] == r["n"], (tmp_path / "eval" / "base" / "ds1000" / "verdicts.jsonl").read_text()[:2000]
    assert sum(v["passed"] for v in r["per_library"].values()) == r["n"]
