#!/usr/bin/env bash
# Issue 13's GPU checks alone: bench/gpu_session.sh without issue 11's workers sweep (setup,
# tests/gpu, drift kernel bandwidth, the batcher's instances and monitoring, the compile report,
# the kernel sweep), one table in $OUT/summary.md. Within 8 minutes.
#   bash bench/gpu.sh [--carry .gpu] [--budget S]    # on a GPU host with no network
#   bash bench/gpu.sh --cpu                         # here: the same steps on the CPU
exec bash "$(dirname "$0")/gpu_session.sh" --steps setup,tests,drift,batcher,compile,sweep "$@"
