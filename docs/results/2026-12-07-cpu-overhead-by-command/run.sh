# Blocks of benchmarks/overhead.py on the CPU: each command a fresh fork server and bare fork parent,
# 10 rounds each, until $UNTIL (epoch seconds); output in $O (default /tmp/cpu-blocks).
cd "$(dirname "$0")/../../.."
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864
O=${O:-/tmp/cpu-blocks}
mkdir -p $O
i=0
while [ $(date +%s) -lt $UNTIL ]; do
  echo "== block $i $(date -u +%T)" >> $O/blocks.log
  uv run python benchmarks/overhead.py --rounds 10 --worker-start forkserver --bare-start fork --out $O/rounds.jsonl >> $O/blocks.log 2>&1
  i=$((i + 1))
done
echo "== end $(date -u +%T)" >> $O/blocks.log
