# One GPU call: blocks of benchmarks/overhead.py on the launch-bound fp16 cell, in the order given
# by $ORDER, $ROUNDS_<variant> rounds per block, until $LIMIT s. Variants (harness's worker start,
# bare loop's start): F (forkserver, fork), N (forkserver, fork-session), S (forkserver, spawn),
# P (spawn, spawn: the command's defaults), X (spawn, fork), R (F with address-space randomization off
# for the command and all it starts: setarch -R), H (forkserver, forkserver: the bare loop forked by the
# harness's own fork server), L (H with the worker's lifeline thread in the bare loop too).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
M=docs/results/2026-12-03-h200-host-cpu-drift/matrix.toml
LIMIT=${LIMIT:-560}
ORDER=${ORDER:-F}
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; nproc; uname -r; python3 -c 'import torch;print(torch.__version__)'; cat /sys/kernel/mm/transparent_hugepage/enabled; echo "randomize_va_space $(cat /proc/sys/kernel/randomize_va_space)"; setarch --version; echo "sched_autogroup_enabled $(cat /proc/sys/kernel/sched_autogroup_enabled 2>&1)"; grep -m1 "model name" /proc/cpuinfo; } > $OUT/machine.txt 2>&1
i=0
while [ $SECONDS -lt $((LIMIT - 90)) ]; do
  for v in $ORDER; do
    [ $SECONDS -lt $((LIMIT - 90)) ] || break
    pre=
    extra=
    case $v in
      F) ws=forkserver; start=fork; rounds=${ROUNDS_F:-40};;
      N) ws=forkserver; start=fork-session; rounds=${ROUNDS_N:-40};;
      S) ws=forkserver; start=spawn; rounds=${ROUNDS_S:-2};;
      P) ws=spawn; start=spawn; rounds=${ROUNDS_P:-2};;
      X) ws=spawn; start=fork; rounds=${ROUNDS_X:-40};;
      R) ws=forkserver; start=fork; rounds=${ROUNDS_R:-40}; pre="setarch $(uname -m) -R";;
      H) ws=forkserver; start=forkserver; rounds=${ROUNDS_H:-8};;
      L) ws=forkserver; start=forkserver; rounds=${ROUNDS_L:-8}; extra=--bare-lifeline;;
    esac
    echo "== block $i variant $v ($ws, bare $start) start $SECONDS s" | tee -a $OUT/$v.log
    timeout $((LIMIT - SECONDS)) $pre python3 benchmarks/overhead.py --matrix $M --cell diffusers-cuda-fp16 \
        --env diffusers=$(which python3) --worker-start $ws --bare-start $start $extra --rounds $rounds \
        --out $OUT/$v.jsonl >> $OUT/$v.log 2>&1
  done
  i=$((i + 1))
done
for v in $ORDER; do echo "== $v"; python3 benchmarks/overhead.py --summarize $OUT/$v.jsonl; done 2>&1 | tee $OUT/summary.txt
