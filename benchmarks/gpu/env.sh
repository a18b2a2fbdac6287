# Source on the GPU machine, from the project root: vLLM (unpacked bundle), the carried wheels
# (/tmp/site), the baseline scripts and vbatch's own source on PYTHONPATH.
source .gpu/gpu/dev_env.sh
export PYTHONPATH=$PWD/src:/tmp/site:$PYTHONPATH
mkdir -p /root/bench /root/logs /root/models
cp -r .gpu/gpu/models/* /root/models/ 2>/dev/null || true
export VBATCH_HOME=/root/vbhome
