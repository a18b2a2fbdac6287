#!/usr/bin/env bash
# ON THE GPU MACHINE, from the project root, after .gpu/gpu/unpack_on_gpu.sh: a self-launched
# job (LABEL's model, vbatch's default replicas) with one replica killed (SIGKILL to its whole
# process group) once AFTER lines are written. Prints the run's exit code and summary: it should
# end with exit 0, every row once, one restart.   usage: bash benchmarks/gpu/kill_one.sh LABEL [AFTER]
set -u
source benchmarks/gpu/env.sh
label=$1; after=${2:-3000}
[ -f /root/bench/prompts.jsonl ] || python3 benchmarks/gpu/bench.py prompts --out $OUT/results.jsonl
out=/root/bench/kill_$label.jsonl; rm -f $out*
python3 -m vbatch run /root/bench/prompts.jsonl -o $out --model /root/models/$label \
  --vllm-arg=--load-format=dummy --max-tokens 128 --extra-body '{"ignore_eos": true}' \
  --metrics-json $OUT/kill_$label.json 2> $OUT/kill_$label.stderr &
run=$!
while [ "$(wc -l < $out 2>/dev/null || echo 0)" -lt "$after" ]; do
  kill -0 $run 2>/dev/null || break; sleep 0.2
done
victim=$(pgrep -f "vllm.entrypoints.openai.api_server" | head -1)
echo "killing replica pid $victim at $(wc -l < $out) lines"
kill -9 -- -"$victim"
wait $run; code=$?
echo "exit $code; lines $(wc -l < $out); unique ids $(python3 -c "
import json; print(len({json.loads(l)['id'] for l in open('$out')}))")"
python3 -c "
import json; m=json.load(open('$OUT/kill_$label.json'))
print({k: m[k] for k in ('total','ok','failed','retries','requeued','restarts','wall_s','output_tokens_per_s')})"
tail -5 $OUT/kill_$label.stderr
