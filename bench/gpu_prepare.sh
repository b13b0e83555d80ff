#!/usr/bin/env bash
# Fills .gpu/ (git-ignored), what a GPU host with no network needs beside the working tree, for
# bench/gpu_session.sh. Run it HERE, where PyPI and Debian answer, before the device call; then
# name `.gpu` in the run call's `carry` (README.md, "Benchmarks", "On a GPU").
#   .gpu/whl: the Python packages the GPU host lacks (shared/TOOLCHAIN.md, "The GPU host"), as
#             CPython 3.12 manylinux wheels: msgspec, starlette, uvicorn, httptools;
#   .gpu/deb: the Debian packages of wrk and its LuaJIT library (unpacked there with dpkg -x into
#             /tmp, never into /).
# About 1.3 MB in all, far inside the 64 MiB a call carries. Idempotent; --check only lists it.
#
#   bash bench/gpu_prepare.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu
# Versions that worked together here (.venv) and install on the GPU host's Python 3.12.
WHEELS=(msgspec==0.23.0 starlette==1.10.0 uvicorn==0.55.0 httptools==0.9.0)
DEBS=(wrk libluajit2-5.1-2)

check() {
  local missing=0
  for spec in "${WHEELS[@]}"; do
    local name=${spec%%==*} version=${spec#*==}
    ls "$DIR"/whl/"$name"-"$version"-*.whl >/dev/null 2>&1 || { echo "missing: $DIR/whl/$name-$version-*.whl"; missing=1; }
  done
  for pkg in "${DEBS[@]}"; do
    ls "$DIR"/deb/"$pkg"_*.deb >/dev/null 2>&1 || { echo "missing: $DIR/deb/${pkg}_*.deb"; missing=1; }
  done
  for f in "$DIR"/whl/*.whl; do  # two versions of one package stop the whole install there
    [[ -e $f ]] || continue
    local base=${f##*/} known=0
    for spec in "${WHEELS[@]}"; do [[ $base == "${spec%%==*}-${spec#*==}-"* ]] && known=1; done
    [[ $known == 1 ]] || { echo "not wanted (remove it): $f"; missing=1; }
  done
  [[ $missing == 0 ]] && echo "$DIR is complete: $(du -sh "$DIR" | cut -f1); carry it: \"carry\": [\"$DIR\"]"
  return $missing
}

if [[ "${1:-}" == "--check" ]]; then check; exit; fi
mkdir -p "$DIR/whl" "$DIR/deb"
git check-ignore -q "$DIR" || { echo "$DIR is not ignored by git: add '/$DIR/' to .gitignore first"; exit 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR/whl" "${WHEELS[@]}"
fetch_debs() { (cd "$DIR/deb" && apt-get download "${DEBS[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed'); }
fetch_debs || { apt-get update -qq && fetch_debs; } || true  # a fresh machine has no package lists yet
check
