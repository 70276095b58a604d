#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the `slurm`-marked tests and for trying --cluster slurm:
#   sudo cluster/single-node-slurm.sh          # install (Debian slurm-wlm, munge) if missing, configure, start
#   sudo cluster/single-node-slurm.sh stop     # stop the daemons
# The daemons run directly (no systemd); slurm.conf describes this host's cores and memory as one node
# in one partition, `debug`. Needs root. Safe to run again: it restarts the daemons with a fresh config.
set -euo pipefail
action=${1:-start}
pids() { pgrep -x "$1" || true; }
stop() { for d in slurmd slurmctld munged; do p=$(pids $d); [ -n "$p" ] && kill $p; done; sleep 1; }
if [ "$action" = stop ]; then stop; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
stop
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
# written by survey-proc cluster/single-node-slurm.sh
ClusterName=survey-proc
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chmod 400 /etc/munge/munge.key
chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
munged --force
slurmctld
slurmd
for _ in $(seq 60); do
  if sinfo -h -o "%t" 2>/dev/null | grep -q -E "idle|mix|alloc"; then
    echo "single-node SLURM up on $host: $cpus CPUs, $mem_mb MB (sinfo: $(sinfo -h -o '%P %t %c %m'))"
    exit 0
  fi
  sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/*.log" >&2
tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
