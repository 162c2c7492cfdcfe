#!/usr/bin/env bash
# A single-node SLURM on 127.0.0.1 for tests and CI: slurmctld + slurmd from Debian's packages, no systemd.
#
#   deploy/slurm/local-slurm.sh start    # install (apt, as root) if missing, write the config, start both daemons
#   deploy/slurm/local-slurm.sh status   # sinfo + squeue; exit 0 when the node is up
#   deploy/slurm/local-slurm.sh stop     # cancel every job, stop both daemons
#   eval "$(deploy/slurm/local-slurm.sh env)"   # SLURM_CONF for sbatch/squeue/scancel and dask-jobqueue
#
# Everything lives under $XSI_SLURM_DIR (default /tmp/xsi-dask-slurm): slurm.conf, state, spool, logs and the
# daemons' PID files. Authentication is auth/none, which trusts every local connection: the daemons listen on
# the loopback address only and the cluster is for tests on this machine, never for a shared host.
# One partition "debug" holds this machine's cores and its memory less 2 GiB.
set -euo pipefail

DIR=${XSI_SLURM_DIR:-/tmp/xsi-dask-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
CTLD_PORT=${XSI_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${XSI_SLURMD_PORT:-6818}

die() { echo "local-slurm: $*" >&2; exit 1; }

ensure_installed() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "local-slurm: installing slurmctld, slurmd and slurm-client with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client >/dev/null
        return
    fi
    die "slurmctld/slurmd/sbatch not found; install Debian's slurmctld, slurmd and slurm-client (as root: this script does)"
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    local cpus mem_mb user
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))
    user=$(id -un)
    cat > "$CONF" <<EOF
# written by deploy/slurm/local-slurm.sh: a loopback-only test cluster
ClusterName=xsilocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/none
CredType=cred/none
SlurmUser=$user
SlurmdUser=$user
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

alive() {  # alive NAME: the daemon's PID file names a live process
    local pidfile=$DIR/$1.pid
    [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

node_up() {
    SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

start() {
    ensure_installed
    if alive slurmctld && alive slurmd && node_up; then
        echo "local-slurm: already running ($CONF)"
        return
    fi
    stop_daemons
    write_conf
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    for _ in $(seq 60); do
        node_up && { echo "local-slurm: up, node $NODE, $(nproc) cores (SLURM_CONF=$CONF)"; return; }
        sleep 0.5
    done
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "the node did not come up within 30 s (logs above)"
}

stop_daemons() {
    local name pid
    for name in slurmd slurmctld; do
        if alive "$name"; then
            pid=$(cat "$DIR/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/$name.pid"
    done
}

stop() {
    if [ -f "$CONF" ] && alive slurmctld; then
        SLURM_CONF=$CONF scancel --user "$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    stop_daemons
    echo "local-slurm: stopped"
}

status() {
    [ -f "$CONF" ] || { echo "local-slurm: not configured ($CONF missing)"; return 1; }
    if alive slurmctld && alive slurmd && node_up; then
        SLURM_CONF=$CONF sinfo
        SLURM_CONF=$CONF squeue
        return 0
    fi
    echo "local-slurm: not running"
    return 1
}

case ${1:-status} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
