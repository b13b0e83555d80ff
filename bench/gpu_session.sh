#!/usr/bin/env bash
# The GPU host's one device call for issues 13 and 11 (bench/gpu_session.py says what it runs;
# README.md, "Benchmarks", "On a GPU", gives the exact `run` call and what to carry).
#   bash bench/gpu_session.sh [--steps a,b] [--budget S]    # on the GPU host, $OUT set by the tool
#   bash bench/gpu_session.sh --cpu                         # here: the dry run of every step
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" bench/gpu_session.py "$@"
