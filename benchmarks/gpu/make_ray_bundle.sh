#!/usr/bin/env bash
# HERE (no GPU), from the project root: Ray for the GPU machine's Python 3.12, which lacks it,
# in one file small enough to carry in one command (the cp312 wheel alone is 79 MB; the limit
# is 64 MiB a command). Ray's version is the one this project's venv has.
#   usage: bash benchmarks/gpu/make_ray_bundle.sh [DEST]     (DEST default .gpu; git-ignored)
# Result: DEST/ray.tar.xz (~31 MB): Ray and msgpack, protobuf (its dependencies the image and
# the vLLM bundle lack), unpacked, without Ray's libraries vbatch never loads (Java jars, RLlib,
# Data, Serve, Tune, Train). On the GPU machine env.sh unpacks it to /root/xray (once per warm
# machine) and puts it on PYTHONPATH when the command carried it. Checked here: `ray start`, a
# task, `ray stop` with Python 3.12 and only the image's own dependencies beside it.
set -euo pipefail
dest=$(realpath -m "${1:-.gpu}")
version=$(.venv/bin/python -c "import ray; print(ray.__version__)")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3"
PLAT="$PLAT --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64"
PIP_CONFIG_FILE=/dev/null python3 -m pip download -q --isolated --no-deps $PLAT -d "$work/whl" \
  "ray==$version" msgpack protobuf
# pip, not unzip: it keeps the executables' mode (raylet, gcs_server).
PIP_CONFIG_FILE=/dev/null python3 -m pip install -q --isolated --no-deps --no-index --no-compile \
  $PLAT --target "$work/site" "$work"/whl/*.whl
rm -rf "$work"/site/ray/{jars,rllib,data,serve,tune,train} "$work"/site/*.data
mkdir -p "$dest"
(cd "$work" && tar cf - site | xz -6 -T2 > "$dest/ray.tar.xz")
ls -l "$dest/ray.tar.xz"
