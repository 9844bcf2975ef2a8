"""Evaluation: the evaluate stage, EvalPlus's judging rules (harness), MultiPL-E, DS-1000 and
the intervals (stats)."""
