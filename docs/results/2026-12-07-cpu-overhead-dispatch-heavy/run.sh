# Blocks of benchmarks/overhead.py on a dispatch-heavy CPU step (the tiny model at 64 px, 2 s windows):
# each command a fresh fork server and bare parent, $ROUNDS rounds, variants in $ORDER
# (F: bare loop forked after the imports; H: bare loop forked by the harness's own fork server;
# S: bare loop spawned, as a user's own loop is; Q: S making the fork server's imports first, in its
# order (added 2026-12-08); L: F with the worker's lifeline started in the bare loop too (a thread
# before 2026-12-07); P: S with the harness's worker spawned too (added 2026-12-08)), the harness's
# worker otherwise forked by its fork server,
# until $UNTIL (epoch seconds); output in $O (taken relative to where it is started).
: "${UNTIL:?set UNTIL to the epoch second to stop at}"
O=$(realpath -m "${O:-/tmp/dispatch-blocks}")  # where it is started, before the cd below
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
M=docs/results/2026-12-07-cpu-overhead-dispatch-heavy/matrix.toml
mkdir -p $O
ORDER=${ORDER:-F H}
i=0
while [ $(date +%s) -lt $UNTIL ]; do
  for v in $ORDER; do
    extra=
    worker=forkserver
    case $v in
      F) start=fork;;
      H) start=forkserver;;
      S) start=spawn;;
      Q) start=spawn-preload;;
      L) start=fork; extra=--bare-lifeline;;
      P) start=spawn; worker=spawn;;
    esac
    echo "== block $i variant $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $O/$v.log
    uv run python benchmarks/overhead.py --matrix $M --cell diffusers-cpu-fp32 --rounds ${ROUNDS:-6} \
      --worker-start $worker --bare-start $start $extra --out $O/$v.jsonl >> $O/$v.log 2>&1
  done
  i=$((i + 1))
done
echo "== end $(date -u +%T)" >> $O/blocks-end.log
