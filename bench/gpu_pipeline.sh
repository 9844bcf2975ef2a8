#!/usr/bin/env bash
# The pipeline's GPU check (issue 21) under the name the issue gives it: bench/gpu/run.sh does the
# work (read its header); bench/gpu/pack.sh must have filled runs/gpu-carry/ here beforehand.
#
#   bash bench/gpu_pipeline.sh                  # on a lent GPU machine (device `run`, carry runs/gpu-carry)
#   GPU_BENCH_CPU=1 bash bench/gpu_pipeline.sh  # here: the same steps on the CPU, small models
exec bash "$(dirname "$0")/gpu/run.sh" "$@"
