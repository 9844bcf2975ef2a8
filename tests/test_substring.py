"""The paper's substring rule: the Aho-Corasick path against BigCode's one-by-one loop, and the
rule itself (what BigCode does and does not normalize)."""
import random
import sys

import pytest

from repro import decontam
from repro.artifacts import ReproError
from repro.data.benchmarks import Reference

LONG = "x" * 70  # longer than decontam.ANCHOR: the automaton holds only its first 64 characters


def _refs():
    return [
        Reference("he", "1", "docstring", "Return the SUM of a and b."),
        Reference("he", "1", "solution", "return a + b"),
        Reference("he", "1", "prompt", "def add(a, b):", substring=False),  # n-grams only
        Reference("mbpp", "2", "text", "Write a function.  "),                 # BigCode does not strip MBPP
        Reference("mbpp", "2", "code", "def f():\r\n    return 1"),            # nor change line ends
        Reference("gsm8k", "3", "question", "  How many apples?\n"),           # but strips GSM8K
        Reference("ds1000", "4", "prompt", "Problem:\nsort df\nA:\n<code>\nBEGIN SOLUTION\n<code>\n"),
        Reference("ds1000", "5", "prompt", "BEGIN SOLUTION\nnothing before the marker"),  # empty: dropped
        Reference("x", "ab", "text", "ab"),                                     # no minimum length
        Reference("x", "abcab", "text", "abcab"),                               # overlaps the next two
        Reference("x", "cabx", "text", "cabx"),
        Reference("x", "bca", "text", "bca"),
        Reference("x", "long1", "text", LONG + "-one"),                         # same anchor, different ends
        Reference("x", "long2", "text", LONG + "-two"),
        Reference("x", "sigma", "text", "ΟΔΟΣ"),                               # str.lower's final sigma: "οδος"
        Reference("x", "dot", "text", "İstanbul"),                              # lower: "i̇stanbul", 9 characters
        Reference("x", "kelvin", "text", "5 \u212a"),                           # Kelvin sign, lower: "5 k"
        Reference("x", "emoji", "text", "🙂 ok"),
    ]


DOCS = [
    "",
    "Task: return the sum of A and B.\nreturn a + b",                   # two texts of one problem: one flag
    "write a function. \nand more",                                     # one space fewer: not MBPP's text
    "WRITE A FUNCTION.  ",
    "def f():\n    return 1",                                           # \n for \r\n: not a copy
    "DEF F():\r\n    RETURN 1",
    "how many apples?",
    "problem:\nsort df\na:\n<code>\n",                                  # the DS-1000 prompt up to its marker
    "abcabx",                                                           # abcab, cabx, bca, ab overlapping
    "zz" + LONG + "-on " + LONG + "-two",                              # long1's anchor twice, only long2 whole
    "the road: οδος",
    "ISTANBUL \u0130STANBUL",                                          # only the second lowers to "i̇stanbul"
    "5 k",
    "🙂 OK 🙂",
    "nothing before the marker",
]


def _pairs(flags):
    return [(f["id"], f["bench"], f["task_id"], f["kind"]) for f in flags]


def test_fast_path_and_reference_flag_the_same_pairs_for_the_same_texts():
    refs = _refs()
    want = [(1, "he", "1", "docstring"), (3, "mbpp", "2", "text"), (5, "mbpp", "2", "code"),
            (6, "gsm8k", "3", "question"), (7, "ds1000", "4", "prompt"),
            (8, "x", "ab", "text"), (8, "x", "abcab", "text"), (8, "x", "bca", "text"), (8, "x", "cabx", "text"),
            (9, "x", "long2", "text"), (10, "x", "sigma", "text"), (11, "x", "dot", "text"),
            (12, "x", "kelvin", "text"), (13, "x", "emoji", "text")]
    ref = decontam.substring_reference(DOCS, refs)
    assert _pairs(ref) == want
    assert decontam.substring_flags(DOCS, refs) == ref
    assert ref[0]["match"] == "return the sum of a and b."  # the needle as compared


def test_needles_follow_bigcode_preparation():
    needles = dict(decontam.substring_needles(_refs()))
    assert 2 not in needles and 7 not in needles             # not for the substring rule; empty after the cut
    assert needles[3] == "write a function.  " and needles[5] == "how many apples?"
    assert needles[6] == "problem:\nsort df\na:\n<code>\n"


def test_random_texts_agree_with_the_reference():
    rng = random.Random(7)
    alphabet = "abAB \n\r-İ"
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))) for _ in range(150)]
    refs = []
    for k in range(120):  # cut from the documents, so that many occur; lengths around the anchor's
        d = docs[rng.randrange(len(docs))] or "a"
        start = rng.randrange(len(d))
        text = d[start:start + rng.choice([1, 2, 5, 30, 63, 64, 65, 100, 200])]
        if rng.random() < 0.3:
            text = text.swapcase()
        refs.append(Reference("r", str(k % 40), f"kind{k % 3}", text))
    refs = [r for r in refs if r.text]
    ref = decontam.substring_reference(docs, refs)
    assert len(ref) > 100
    assert decontam.substring_flags(docs, refs) == ref


def test_missing_automaton_package_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ahocorasick", None)  # import fails as if not installed
    with pytest.raises(ReproError, match="pyahocorasick"):
        decontam.substring_flags(["x"], [Reference("x", "1", "text", "x")])
