# Blocks of benchmarks/overhead.py on the dispatch-heavy CPU step of
# ../2026-12-07-cpu-overhead-dispatch-heavy (its matrix.toml, its variant F: the harness's worker
# forked by its fork server, the bare loop forked after the same imports, OMP_NUM_THREADS=1),
# alternating two checkouts, A then B, then B then A: $A and $B are their folders, each beside a
# copy of ../shared and with envs/diffusers/.venv synced (or linked to one), until $UNTIL (epoch
# seconds); output in $O (taken relative to where it is started), A.jsonl and B.jsonl.
: "${UNTIL:?set UNTIL to the epoch second to stop at}" "${A:?set A to a checkout}" "${B:?set B to a checkout}"
O=$(realpath -m "${O:-/tmp/lifeline-blocks}")
export OMP_NUM_THREADS=1
M=docs/results/2026-12-07-cpu-overhead-dispatch-heavy/matrix.toml
mkdir -p "$O"
i=0
while [ "$(date +%s)" -lt "$UNTIL" ]; do
  if [ $((i % 2)) -eq 0 ]; then order="A B"; else order="B A"; fi
  for v in $order; do
    tree=${!v}
    echo "== block $i tree $v $(git -C "$tree" log --format=%h -1) $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$O/$v.log"
    (cd "$tree" && uv run python benchmarks/overhead.py --matrix $M --cell diffusers-cpu-fp32 --rounds "${ROUNDS:-6}" \
      --worker-start forkserver --bare-start fork --out "$O/$v.jsonl") >> "$O/$v.log" 2>&1
  done
  i=$((i + 1))
done
echo "== end $(date -u +%T)" >> "$O/blocks-end.log"
