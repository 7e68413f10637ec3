#!/usr/bin/env bash
# Tests the Slurm recipe of docs/cluster.md for real: starts a single-node Slurm on localhost
# (slurmctld + slurmd, munge), submits docs/cluster/atlas.sbatch as a job array and
# docs/cluster/merge.sbatch with --dependency=afterok on it, waits, and checks that the merged
# folder equals a single-process run: the same PNG bytes and the same filters in the manifest.
#
#   sudo scripts/slurm_test.sh [path/to/deepvis]      # Debian/Ubuntu; installs slurm-wlm, munge
#
# Root is needed to install the packages and run the daemons. A small atlas (3 layers, 4
# channels each, 32 px, 4 steps) over 3 array tasks keeps it to about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DEEPVIS=$(realpath "${1:-target/release/deepvis}")
[ -x "$DEEPVIS" ] || { echo "build first: cargo build --release ($DEEPVIS missing)" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then echo "run as root (installs packages, starts slurmctld/slurmd)" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi

WORK=$(mktemp -d /tmp/deepvis-slurm.XXXXXX)
chmod 755 "$WORK"
CPUS=$(nproc)
HOST=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=deepvis-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
# No cgroups: proctrack/linuxproc and task/none need none, and containers often lack them.
rm -f /etc/slurm/cgroup.conf

# munge: a key if there is none, then the daemon (no systemd in containers).
if [ ! -s /etc/munge/munge.key ]; then
  (command -v mungekey >/dev/null && mungekey --create --force) ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged
STARTED=()
cleanup() {
  for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
slurmctld -D -i >/var/log/slurm/slurmctld.out 2>&1 & STARTED+=($!)
sleep 2
slurmd -D >/var/log/slurm/slurmd.out 2>&1 & STARTED+=($!)
ready=0
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then ready=1; break; fi
  sleep 1
done
sinfo
if [ $ready = 0 ]; then
  echo "FAIL: slurmd did not come up:" >&2; tail -n 20 /var/log/slurm/slurmd.out >&2; exit 1
fi

ARGS="--layers _blocks.0,_blocks.5,_fc --filters 0..4 --size 32 --steps 4 --batch 2"
echo "single process:"
time "$DEEPVIS" atlas --out "$WORK/single" $ARGS -q

echo "Slurm: array of 3 + merge"
export OUT="$WORK/sharded" DEEPVIS ATLAS_ARGS="$ARGS"
array=$(sbatch --parsable --array=0-2 --cpus-per-task=1 --mem=0 --time=10 \
  --output="$WORK/atlas-%A_%a.log" docs/cluster/atlas.sbatch)
merge=$(sbatch --parsable --dependency=afterok:"$array" --mem=0 --time=10 \
  --output="$WORK/merge-%j.log" docs/cluster/merge.sbatch)
echo "array job $array, merge job $merge"
for _ in $(seq 300); do
  [ -z "$(squeue -h -j "$array,$merge" 2>/dev/null)" ] && break
  sleep 1
done
sacct -j "$array,$merge" 2>/dev/null || true
state=$(scontrol show job "$merge" 2>/dev/null | grep -o 'JobState=[A-Z]*' || echo "JobState=unknown")
cat "$WORK"/*.log
echo "merge: $state"

fail=0
[ -f "$OUT/manifest.json" ] || { echo "FAIL: no merged manifest"; exit 1; }
n=0
while IFS= read -r png; do
  rel=${png#"$WORK/single/"}
  if ! cmp -s "$png" "$OUT/$rel"; then echo "FAIL: $rel differs or is missing"; fail=1; fi
  n=$((n + 1))
done < <(find "$WORK/single" -name 'filter_*.png' | sort)
filters() { grep -o '"filter": [0-9]*' "$1/manifest.json" | sort | uniq -c | tr -s ' '; }
if [ "$(filters "$WORK/single")" != "$(filters "$OUT")" ]; then
  echo "FAIL: the manifests record different filters"; fail=1
fi
[ -f "$OUT/efficientnet_lite0/index.html" ] || { echo "FAIL: no atlas site"; fail=1; }
if [ $fail = 0 ]; then
  echo "OK: $n PNGs identical to the single-process run; manifest and site assembled ($WORK)"
fi
exit $fail
