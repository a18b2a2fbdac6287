#!/usr/bin/env bash
# ON THE GPU MACHINE, from the project root, after .gpu/gpu/unpack_on_gpu.sh.
#   usage: bash benchmarks/gpu/suite.sh LABEL STEP...
# Steps (run in the order given; results -> $OUT/results.jsonl):
#   offline          LLM.generate with the baseline's engine settings (vLLM's server defaults)
#   offline-vb       LLM.generate with the engine settings vbatch's launcher picks
#   server           start vLLM's server with those settings on :8000 (outlives the command)
#   seed             the seed recipe, Semaphore(500), against it
#   vbatch           vbatch run against it (default, adaptive window)
#   vbatch-wN        vbatch run against it with a fixed window of N (--concurrency N)
#   seed16 vbatch16  the same two with max_tokens 16
#   stop             stop the server on :8000
#   launch           vbatch run --model ... (vbatch starts vLLM with its batch settings and
#                    its default replicas: 3 for SmolLM2-135M, 2 for the 1B shape, on a big GPU)
#   launch-rN        the same with --replicas N (launch-r1: one server)
#   launch-before    launch, with vbatch from .gpu/before_src (another tree's src/, carried
#                    along): a before/after pair; both report first_result_s and total_wall_s
#   launch16 launch16-rN   the same two with max_tokens 16
#   cut-N            from here on, vbatch/vbatch-wN steps send the first N prompts only
#   off-SHAPE        offline LLM(model) with vLLM's defaults on a job shape (shapes.py: decode,
#                    prefix, chat, short, long, n4), the whole command timed
#   vb-SHAPE         vbatch run --model ... on that shape (vbatch's own plan), the whole command
#   vbapi2-SHAPE     the same with two API server processes a replica (--api-server-count 2)
#   vbfork-SHAPE     vb-SHAPE with VLLM_WORKER_MULTIPROC_METHOD=fork: vLLM's API server spawns
#                    its engine process (a second import of torch and vLLM) where offline LLM()
#                    forks it; does forking close the ~22 s between the two? (each vbatch record
#                    carries its servers' timeline: args, engine, graphs, init_done, serving)
#   vbrN-SHAPE       vb-SHAPE with N servers (--replicas N; vbr1: start-up without three at once)
#   vbbtN-SHAPE      vb-SHAPE with --max-num-batched-tokens N (the plan's own overridden)
#   vbka-SHAPE       vb-SHAPE with --keep-alive 10m: the servers stay up after the command
#   vbwarm-SHAPE     vb-SHAPE again, no flags: it attaches to the warm fleet vbka- left
#   vbstop           vbatch stop --all (the warm fleet), timed
#   VB_EXTRA=...     more `vbatch run` flags for every vb-, vbka- and vbwarm- step of this call
#                    (a warm fleet attaches only runs with its own engine flags)
#   ray-start        a one-node Ray cluster on this machine, on loopback (127.0.0.1:6380), for:
#   ray-rN           launch-rN with Ray placing the N servers (--ray): N members of 1/N GPU each
#   ray-stop         stop that cluster
# The GPU image lacks Ray: build .gpu/ray.tar.xz here (benchmarks/gpu/make_ray_bundle.sh, ~31 MB)
# and carry it in a command of its own, with .gpu/gpu and .gpu/site_whl (env.sh unpacks it).
# Start the cluster after env.sh is sourced (this script does): its workers inherit PYTHONPATH,
# so the members import this vbatch.
set -u
# Stopped early (TERM/INT): take the running step's client down with the script (and so the
# vLLM servers vbatch started, which die with it), or it runs on into the next command.
trap 'trap - TERM INT; kill 0' TERM INT
source benchmarks/gpu/env.sh
label=$1; shift
B="python3 benchmarks/gpu/bench.py --label $label --model /root/models/$label --out $OUT/results.jsonl"
ENGINE='{"max_num_seqs":1024,"max_num_batched_tokens":8192,"max_model_len":2048,"enable_prefix_caching":false}'
# What vbatch's launcher passes for this input (max_model_len from the data: 371 + 128 -> 512).
VB_ENGINE='{"max_num_seqs":1024,"max_num_batched_tokens":16384,"max_model_len":512,"max_cudagraph_capture_size":1024}'
[ -f /root/bench/prompts.jsonl ] || $B prompts
VB_INPUT=/root/bench/prompts.jsonl
for step in "$@"; do
  echo "== $step at ${SECONDS}s"
  case $step in
    offline) $B offline --case offline_default --engine "$ENGINE" > /root/logs/offline_$label.log 2>&1 || tail -40 /root/logs/offline_$label.log;;
    offline-vb) $B offline --case offline_vbatch_engine --engine "$VB_ENGINE" > /root/logs/offline_vb_$label.log 2>&1 || tail -40 /root/logs/offline_vb_$label.log;;
    server) $B server --engine "$ENGINE" --log /root/logs/server_$label.log || tail -40 /root/logs/server_$label.log;;
    seed) $B seed --case seed_sem500;;
    vbatch) $B vbatch --case vbatch_server_default --input $VB_INPUT;;
    vbatch-w*) $B vbatch --case vbatch_server_window${step#vbatch-w} --input $VB_INPUT --vbatch-args="--concurrency ${step#vbatch-w}";;
    cut-*) VB_INPUT=/root/bench/prompts_${step#cut-}.jsonl; head -n ${step#cut-} /root/bench/prompts.jsonl > $VB_INPUT;;
    off-*) timeout 590 $B offline --shape ${step#off-} --case offline_${step#off-} > /root/logs/offline_${step#off-}.log 2>&1 || tail -40 /root/logs/offline_${step#off-}.log;;
    vb-*) timeout 590 $B vbatch-launch --shape ${step#vb-} --case vbatch_${step#vb-}${VB_EXTRA:+_extra} --vbatch-args="${VB_EXTRA:-}";;
    vbfork-*) VLLM_WORKER_MULTIPROC_METHOD=fork timeout 590 $B vbatch-launch --shape ${step#vbfork-} --case vbatch_${step#vbfork-}_fork;;
    vbr*) n=${step%%-*}; n=${n#vbr}; shape=${step#*-}; timeout 590 $B vbatch-launch --shape $shape --case vbatch_${shape}_r$n --vbatch-args="--replicas $n";;
    vbbt*) n=${step%%-*}; n=${n#vbbt}; shape=${step#*-}; timeout 590 $B vbatch-launch --shape $shape --case vbatch_${shape}_bt$n --vbatch-args="--vllm-arg=--max-num-batched-tokens=$n";;
    vbka-*) timeout 590 $B vbatch-launch --shape ${step#vbka-} --case vbatch_${step#vbka-}_keepalive${VB_EXTRA:+_extra} --vbatch-args="--keep-alive 10m ${VB_EXTRA:-}";;
    vbwarm-*) timeout 590 $B vbatch-launch --shape ${step#vbwarm-} --case vbatch_${step#vbwarm-}_attached${VB_EXTRA:+_extra} --vbatch-args="${VB_EXTRA:-}";;
    vbstop) s0=$SECONDS; python3 -m vbatch stop --all --force; echo "RESULT {\"case\": \"vbatch_stop\", \"wall_s\": $((SECONDS - s0))}";;
    vbapi2-*) timeout 590 $B vbatch-launch --shape ${step#vbapi2-} --case vbatch_${step#vbapi2-}_api2 --vbatch-args="--vllm-arg=--api-server-count=2";;
    seed16) $B seed --case seed_sem500 --max-tokens 16;;
    vbatch16) $B vbatch --case vbatch_server_default --max-tokens 16;;
    stop) bash .gpu/gpu/baseline/stop_server.sh;;
    launch) $B vbatch-launch --case vbatch_launch;;
    launch-before) $B vbatch-launch --case vbatch_launch_before --src "$PWD/.gpu/before_src";;
    launch-r*) $B vbatch-launch --case vbatch_launch_replicas${step#launch-r} --vbatch-args="--replicas ${step#launch-r}";;
    launch16) $B vbatch-launch --case vbatch_launch --max-tokens 16;;
    launch16-r*) $B vbatch-launch --case vbatch_launch_replicas${step#launch16-r} --max-tokens 16 --vbatch-args="--replicas ${step#launch16-r}";;
    ray-start) python3 -m ray.scripts.scripts start --head --node-ip-address 127.0.0.1 --port 6380 --include-dashboard false --disable-usage-stats > /root/logs/ray_start.log 2>&1 || tail -40 /root/logs/ray_start.log;;
    ray-r*) $B vbatch-launch --case vbatch_ray_replicas${step#ray-r} --vbatch-args="--replicas ${step#ray-r} --ray=127.0.0.1:6380";;
    ray-stop) python3 -m ray.scripts.scripts stop --force > /root/logs/ray_stop.log 2>&1;;
    launch-api2) $B vbatch-launch --case vbatch_launch_api2 --vbatch-args="--vllm-arg=--api-server-count=2";;
  esac
done
echo "== done at ${SECONDS}s"
cp /root/logs/*.log $OUT/ 2>/dev/null
for f in /root/bench/*.stderr; do [ -f "$f" ] && tail -c 8000 "$f" > "$OUT/$(basename "$f")"; done
for f in $VBATCH_HOME/logs/*.log; do [ -f "$f" ] && tail -c 30000 "$f" > "$OUT/vbatch-$(basename "$f")"; done
ls $OUT
