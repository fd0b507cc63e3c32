python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
M=docs/results/2026-12-03-h200-host-cpu-drift/matrix.toml
LIMIT=${LIMIT:-560}
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; nproc; uname -r; python3 -c 'import torch;print(torch.__version__)'; cat /sys/kernel/mm/transparent_hugepage/enabled; grep -m1 "model name" /proc/cpuinfo; } > $OUT/machine.txt 2>&1
rm -rf /tmp/B && mkdir /tmp/B && cp -r benchmarks orchestrator workers docs examples envs pyproject.toml /tmp/B/ \
  && sed -i 's/^PERIOD_S = 0.2$/PERIOD_S = 3600.0/' /tmp/B/workers/contract/lifeline.py \
  && grep -q '^PERIOD_S = 3600.0$' /tmp/B/workers/contract/lifeline.py || { echo patch failed; exit 1; }
i=0
while [ $SECONDS -lt $((LIMIT - 110)) ]; do
  if [ $((i % 2)) = 0 ]; then order="A B"; else order="B A"; fi
  for v in $order; do
    d=$PWD; [ $v = B ] && d=/tmp/B
    echo "== block $i variant $v start $SECONDS s" | tee -a $OUT/$v.log
    (cd $d && timeout $((LIMIT - SECONDS)) python3 benchmarks/overhead.py --matrix $M --cell diffusers-cuda-fp16 \
        --env diffusers=$(which python3) --worker-start forkserver --rounds 2 --out $OUT/$v.jsonl) >> $OUT/$v.log 2>&1
  done
  i=$((i + 1))
done
for v in A B; do echo "== $v"; python3 benchmarks/overhead.py --summarize $OUT/$v.jsonl; done 2>&1 | tee $OUT/summary.txt
