#!/usr/bin/env bash
# Issue 11's GPU-host check alone: bench/gpu_session.sh's setup and serving steps (the heavy MLP on
# cuda:0 and the tiny MLP on the CPU at workers = 1, 2, 4, 8, wrk with binary and JSON bodies at
# c = 64 and 256; req/s, p50, p99 and the scaling against workers = 1, in $OUT/summary.md).
#   bash bench/gpu_serving.sh [--carry .gpu] [--budget S]   # on a GPU host with no network
#   bash bench/gpu_serving.sh --cpu                        # here: a short check of the script
exec bash "$(dirname "$0")/gpu_session.sh" --steps setup,serving "$@"
