"""evaluate's lanes (repro/eval/lanes.py): several models decoded at once, each on its share of
the threads, with the same answers as one model after another."""

import threading

import pytest

import repro.engine
from repro.artifacts import read_jsonl
from repro.config import EvaluateConfig
from repro.engine import Completion, Engine, Server, Stats
from repro.eval import evaluate, evalplus_data, lanes


class Recorder(Engine):
    def __init__(self):
        self.threads, self.calls = 0, []

    def run(self, requests):
        return iter(())

    def set_threads(self, n):
        self.calls.append(n)
        self.threads = n


def test_lanes_run_together_keep_the_items_order_and_hand_threads_on():
    """Two lanes at once; when one runs out of items, its threads go to the engine still open."""
    both_in, release = threading.Barrier(2, timeout=10), threading.Event()
    engines = {}

    def work(item, lane):
        e = engines[item] = Recorder()
        with lane.attached(e):
            if item in ("long", "short"):
                both_in.wait()  # fails unless two items are decoded at once
            if item == "long":
                assert release.wait(10)
        return item.upper()

    def release_when_the_short_lane_ends():
        while "tail" not in engines or engines["long"].calls[-1:] != [3]:
            threading.Event().wait(0.01)
        release.set()

    threading.Thread(target=release_when_the_short_lane_ends, daemon=True).start()
    assert lanes.run(["long", "short", "tail"], work, threads=3, n=2) == ["LONG", "SHORT", "TAIL"]
    # 3 threads over 2 lanes: 2 and 1; the short lane took the tail, then gave its thread away.
    assert engines["long"].calls == [2, 3] and engines["short"].calls == [1] and engines["tail"].calls == [1]


def test_a_failing_lane_stops_the_others_and_its_error_is_raised():
    started = threading.Event()
    ran = []

    def work(item, lane):
        ran.append(item)
        if item == "bad":
            started.wait(10)
            raise ValueError("lane failed")
        started.set()
        for _ in range(1000):  # an engine checks between answers
            if lane.stopped():
                return "stopped"
            threading.Event().wait(0.01)
        return "ran to the end"

    with pytest.raises(ValueError, match="lane failed"):
        lanes.run(["bad", "slow", "never"], work, threads=2, n=2)
    assert "never" not in ran


HE_IDS = 3


def _rows(tmp_path):
    bench = evalplus_data.load("humaneval")
    answers = {}
    for t in list(bench.problems)[:HE_IDS]:
        p = bench.problems[t]
        answers[p["prompt"].strip()] = "\n" + p["canonical_solution"].lstrip("\n")
    files = {}
    for name in ("s", "t", "f"):
        files[name] = tmp_path / f"{name}.gguf"
        files[name].write_bytes(b"GGUF " + name.encode() * (10 if name == "s" else 1))
    rows = {"base": (files["s"], "completion"), "base-instruct": (files["s"], "instruct"),
            "finetuned": (files["f"], "instruct"), "teacher": (files["t"], "chat")}
    return answers, rows


class Canonical(Engine):
    def __init__(self, answers, gguf, log):
        self.answers, self.gguf, self.log = answers, gguf, log
        self.threads, self.stats = 1, Stats(completion_tokens=1, seconds=1.0)

    def set_threads(self, n):
        self.log.append((self.gguf.name, "threads", n))

    def run(self, requests):
        for r in requests:
            text = r.prompt + r.prefill + "".join(m["content"] for m in r.messages or [])
            yield Completion(r.key, next(v for k, v in self.answers.items() if k in text), "stop", 10, 5, 0.1)


def test_the_stage_gives_the_same_results_in_lanes_as_one_model_at_a_time(tmp_path, monkeypatch):
    answers, rows = _rows(tmp_path)
    log = []
    monkeypatch.setattr(repro.engine, "open_engine",
                        lambda backend, gguf, **k: log.append((gguf.name, "open", k["threads"])) or
                        Canonical(answers, gguf, log))
    monkeypatch.setattr("repro.models.choose_threads", lambda requested=0: requested or 2)
    runs = {}
    for n in (1, 2):
        monkeypatch.setattr(evaluate, "eval_cache", lambda n=n: tmp_path / f"cache{n}")
        log.clear()
        cfg = EvaluateConfig(limit=HE_IDS, benchmarks=["humaneval"], multilingual=[], lanes=n)
        res = runs[n] = evaluate.run(cfg, rows, tmp_path / f"eval{n}")
        assert res["lanes"] == n
        assert [m["humaneval"]["base"]["passed"] for m in res["models"].values()] == [HE_IDS] * 4
        assert [(m["generated"], m["reused"]) for m in res["models"].values()] == [(HE_IDS, 0)] * 4
        opened = [(g, t) for g, what, t in log if what == "open"]
        if n == 1:  # as before: one model after another, each engine choosing its own threads
            assert opened == [("s.gguf", 0), ("f.gguf", 0), ("t.gguf", 0)]
        else:  # the largest work first (the student's two rows of the largest file; then the fine-tuned
            # and the teacher tie, and keep their order): the two lanes open the first two at once, one
            # thread each, in either order; the teacher goes to the lane that ends first
            assert sorted(opened[:2]) == [("f.gguf", 1), ("s.gguf", 1)] and opened[2][0] == "t.gguf"
    for label in rows:  # the same samples, byte for byte
        assert read_jsonl(tmp_path / "eval1" / label / "humaneval" / "samples.jsonl") == \
            read_jsonl(tmp_path / "eval2" / label / "humaneval" / "samples.jsonl")
    assert runs[1]["comparisons"] == runs[2]["comparisons"]


def test_lanes_only_where_several_local_models_have_answers_to_make_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr("repro.models.choose_threads", lambda requested=0: requested or 4)
    monkeypatch.setattr("repro.gpu.llama_offload", lambda: False)
    answers, rows = _rows(tmp_path)
    bench = evalplus_data.load("humaneval")
    ids = list(bench.problems)[:HE_IDS]

    calls = iter(range(100))

    def work(names, done=()):
        out, k = [], next(calls)
        for name in names:
            path = tmp_path / f"{name}-{k}.jsonl"
            if name in done:
                path.write_text("".join(f'{{"task_id": "{t}", "answer": ""}}\n' for t in ids))
            out.append((name, rows[name][0], [("humaneval", bench.problems, ids, rows[name][1], path)]))
        return out

    def plan(cfg, w):
        return evaluate.lane_plan(cfg, w, [len(evaluate._todo(x[2], cfg.samples)) for x in w])

    cfg = EvaluateConfig()
    assert plan(cfg, work(["base", "finetuned", "teacher"])) == (3, 4)
    assert plan(EvaluateConfig(threads=2), work(["base", "finetuned", "teacher"])) == (2, 2)
    assert plan(EvaluateConfig(lanes=2), work(["base", "finetuned", "teacher"])) == (2, 4)
    assert plan(EvaluateConfig(lanes=1), work(["base", "teacher"])) == (1, 0)
    # Answers cached for all but one model: that one alone, on every thread.
    assert plan(cfg, work(["base", "finetuned", "teacher"], done=("base", "teacher"))) == (1, 0)
    assert plan(EvaluateConfig(backend="llama"), work(["base", "teacher"])) == (1, 0)
    served = work(["base", "teacher"])
    served[1] = (served[1][0], Server("http://localhost:1/v1"), served[1][2])
    assert plan(cfg, served) == (1, 0)
    monkeypatch.setattr("repro.gpu.llama_offload", lambda: True)  # layers on a GPU: one model at a time
    assert plan(cfg, work(["base", "teacher"])) == (1, 0)
    assert plan(EvaluateConfig(n_gpu_layers=0), work(["base", "teacher"])) == (2, 4)
