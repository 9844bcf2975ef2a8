"""The evaluation's differences in words: what the control row (the base student on the
fine-tuned student's instruction prompt) says about a run. Nothing here computes an interval;
they come from eval/results.json's comparisons."""

from __future__ import annotations

from repro.report.rundata import BENCH_NAMES, join


def _paired(ev: dict, a: str, b: str, bench: str) -> tuple[float, list[float]] | None:
    """a − b on `bench`'s base split with its interval, from either order of the comparison."""
    for x in ev.get("comparisons", []):
        if x["benchmark"] == bench and x["split"] == "base":
            if (x["a"], x["b"]) == (a, b):
                return x["diff"], list(x["ci95"])
            if (x["a"], x["b"]) == (b, a):
                return -x["diff"], [-x["ci95"][1], -x["ci95"][0]]
    return None


def control_sentences(ev: dict) -> list[str]:
    """The control row in words: the fine-tuned student against the base student on the same
    instruction prompt is the training's effect; the base student's instruction against
    completion prompt is the prompt's. Does not say why either arises."""
    def fmt(d):
        return f"{100 * d[0]:+.1f} points (95% interval {100 * d[1][0]:+.0f} to {100 * d[1][1]:+.0f})"

    def sign(d):
        return 0 if not d or d[1][0] <= 0 <= d[1][1] else (1 if d[1][0] > 0 else -1)
    out, seen = [], {"train+": [], "train-": [], "format": [], "prompt-": [], "prompt+": []}
    for bench in ev.get("benchmarks", {}):
        ctl = (ev["models"]["base-instruct"].get(bench) or {}).get("base")
        if not ctl:
            continue
        name = BENCH_NAMES.get(bench, bench)
        train, prompt = _paired(ev, "finetuned", "base-instruct", bench), _paired(ev, "base-instruct", "base", bench)
        paper = _paired(ev, "finetuned", "base", bench)
        out.append(f"Control on {name}: the base student given the same instruction prompt passes "
                   f"{100 * ctl['pass@1']:.1f}%" + (f", {fmt(prompt)} against its completion prompt (the prompt "
                                                     "alone)" if prompt else "")
                   + (f"; the fine-tuned student differs from it by {fmt(train)} (the training at an equal "
                      "prompt)." if train else "."))
        t, p, q = sign(train), sign(prompt), sign(paper)
        if key := "train+" if t > 0 else "train-" if t < 0 else "format" if q > 0 else None:
            seen[key].append(name)
        if p:
            seen["prompt+" if p > 0 else "prompt-"].append(name)
    if seen["train+"]:
        out.append(f"This run shows an effect of the training on {join(seen['train+'])}: the fine-tuned student beats "
                   "the base student on the same instruction prompt beyond chance.")
    if seen["train-"]:
        out.append(f"On {join(seen['train-'])} the fine-tuned student is worse than the base student on the same "
                   "prompt beyond chance: the training cost it there.")
    if seen["format"]:
        out.append(f"On {join(seen['format'])} the gain over the completion baseline is not beyond what the base "
                   "student reaches with the instruction prompt: it shows the prompt and format, not better coding.")
    if seen["prompt-"]:
        out.append(f"The base student does worse with the instruction prompt than with completion on "
                   f"{join(seen['prompt-'])}: untrained, it does not follow that format.")
    if seen["prompt+"]:
        out.append(f"The instruction prompt alone helps the base student on {join(seen['prompt+'])}.")
    if out and not any(seen.values()):
        out.append("Neither effect is measurable at this size: the training at an equal prompt and the prompt "
                   "alone both have intervals holding 0.")
    return out
