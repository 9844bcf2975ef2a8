"""Where the data comes from: the benchmark files (one finder, sha256-checked), the corpus of
source code, and the seeds sampled from it."""
