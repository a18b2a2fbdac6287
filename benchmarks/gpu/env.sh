# Source on the GPU machine, from the project root: vLLM (unpacked bundle), the carried wheels
# (/tmp/site), the baseline scripts and vbatch's own source on PYTHONPATH.
source .gpu/gpu/dev_env.sh
# vbatch's own dependencies the GPU image lacks (orjson, click, rich and theirs), downloaded here
# as cp312 wheels into .gpu/site_whl and carried along:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --abi cp312 \
#     --platform manylinux2014_x86_64 --platform any -d .gpu/site_whl orjson click rich \
#     markdown-it-py mdurl pygments
if [ ! -d /tmp/site ] && [ -d .gpu/site_whl ]; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/site .gpu/site_whl/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site:$PYTHONPATH
mkdir -p /root/bench /root/logs /root/models
cp -r .gpu/gpu/models/* /root/models/ 2>/dev/null || true
export VBATCH_HOME=/root/vbhome
# Ray (for the ray-* steps of suite.sh), where a command carried .gpu/ray.tar.xz
# (benchmarks/gpu/make_ray_bundle.sh): unpacked once per warm machine.
if [ ! -f /root/xray/.done ] && [ -f .gpu/ray.tar.xz ]; then
  mkdir -p /root/xray && tar xJf .gpu/ray.tar.xz -C /root/xray && touch /root/xray/.done
fi
if [ -f /root/xray/.done ]; then export PYTHONPATH=$PYTHONPATH:/root/xray/site; fi
