#!/usr/bin/env bash
# The cluster path on a real SLURM: install the Debian packages (once), start a single-node cluster on 127.0.0.1
# (munge, MariaDB on a unix socket, slurmdbd, slurmctld, slurmd; every file under one temporary folder, free ports),
# run the `slurm`-marked tests with accounting, then restart the controller without accounting and run them again
# (the tests that need accounting skip themselves), and stop every daemon it started, by pid, also on failure.
#   scripts/test-slurm.sh                 # any pytest arguments pass through, e.g. -k failing
#   DIVBENCH_SLURM_KEEP=1 scripts/test-slurm.sh   # keep the temporary folder (logs, slurm.conf) afterwards
#   scripts/test-slurm.sh --up [yes|no]   # only start the cluster (with|without accounting), wait until killed
# Needs root and apt-get; without them it skips with the reason, except under CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd sbatch sacct sacctmgr munged slurmdbd mariadbd mariadb-install-db mariadb-admin)
lane_start=$SECONDS

unavailable() {  # a machine that cannot run the lane: skip it, but never silently in CI
  if [[ "${CI:-}" == "true" ]]; then
    echo "test-slurm: FAILED: $1 (CI=true: the SLURM lane may not be skipped)" >&2
    exit 1
  fi
  echo "test-slurm: SKIPPED: $1" >&2
  exit 0
}

missing_binaries() {
  local b missing=()
  for b in "${BINARIES[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
  echo "${missing[*]}"
}

[[ "$(id -u)" == 0 ]] || unavailable "not root: installing ${PACKAGES[*]} and running slurmd need root"
if [[ -n "$(missing_binaries)" ]]; then
  command -v apt-get >/dev/null || unavailable "apt-get not found; install ${PACKAGES[*]} (Debian/Ubuntu names)"
  echo "test-slurm: installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  [[ -z "$(missing_binaries)" ]] || { echo "test-slurm: still missing after apt: $(missing_binaries)" >&2; exit 1; }
fi
install_s=$((SECONDS - lane_start))

WORK="$(mktemp -d "${TMPDIR:-/tmp}/divbench-slurm.XXXXXX")"
mkdir -p "$WORK"/{etc,log,munge,mysql,state,spool}
chmod 700 "$WORK"
chmod 755 "$WORK/munge"  # munged wants its socket reachable by every user
declare -A PID=()   # daemon name -> pid, for the trap

stop_daemon() {  # by the pid this script started it with; waits until it is gone
  local name=$1 pid=${PID[$1]:-}
  [[ -n "$pid" ]] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PID[$name]"
}

cleanup() {
  local rc=$?
  if [[ -n "${PID[slurmctld]:-}" ]]; then  # jobs first: their slurmstepd outlive slurmd otherwise
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 40); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.5; done
  fi
  for name in sleeper slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon "$name"; done
  if [[ $rc != 0 ]]; then
    echo "test-slurm: failed (exit $rc); last lines of the daemons' logs in $WORK/log:" >&2
    tail -n 15 "$WORK"/log/*.log >&2 2>/dev/null || true
  fi
  if [[ -n "${DIVBENCH_SLURM_KEEP:-}" || $rc != 0 ]]; then
    echo "test-slurm: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 deadline=$((SECONDS + $1)) what=$2
  shift 2
  while ((SECONDS < deadline)); do timeout 10 "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "test-slurm: $what not ready after ${limit}s" >&2
  return 1
}

read -r CTLD_PORT SLURMD_PORT DBD_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
# The node as slurmd sees the hardware: its real CPUs and memory (a larger claim would drain the node).
read -r CPUS MEM_MB < <(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\) .* RealMemory=\([0-9]*\).*/\1 \2/p')
export SLURM_CONF="$WORK/etc/slurm.conf"
export DIVBENCH_SLURM_REPORT="$WORK/timings.txt"   # the tests' timings, printed at the end
export MYSQL_UNIX_PORT="$WORK/mysql/mysqld.sock"   # slurmdbd reaches MariaDB on this socket (StorageHost=localhost)

write_slurm_conf() {  # write_slurm_conf ACCOUNTING(yes|no)
  local accounting="AccountingStorageType=accounting_storage/none"
  [[ $1 == yes ]] && accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$WORK/munge/munge.socket"
  cat > "$SLURM_CONF" <<EOF
ClusterName=divbench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/munge.socket
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
KillWait=5
MinJobAge=300
$accounting
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$WORK/munge/munge.key"
  munged --foreground --force --key-file="$WORK/munge/munge.key" --socket="$WORK/munge/munge.socket" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/log/munged.log" --seed-file="$WORK/munge/munged.seed" \
    >>"$WORK/log/munged.out" 2>&1 &
  PID[munged]=$!
  wait_for 10 munged test -S "$WORK/munge/munge.socket"
}

start_accounting() {  # MariaDB on a unix socket only, then slurmdbd, then the cluster's record
  mariadb-install-db --no-defaults --datadir="$WORK/mysql/data" --user=root --auth-root-authentication-method=socket \
    --skip-test-db >"$WORK/log/mariadb-install.log" 2>&1
  mariadbd --no-defaults --datadir="$WORK/mysql/data" --socket="$MYSQL_UNIX_PORT" --pid-file="$WORK/mysql/mariadbd.pid" \
    --log-error="$WORK/log/mariadbd.log" --skip-networking --user=root --innodb-buffer-pool-size=64M >>"$WORK/log/mariadbd.out" 2>&1 &
  PID[mariadbd]=$!
  wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$MYSQL_UNIX_PORT" ping
  cat > "$WORK/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$WORK/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$WORK/slurmdbd.pid
LogFile=$WORK/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$WORK/etc/slurmdbd.conf"
  slurmdbd -D >>"$WORK/log/slurmdbd.out" 2>&1 &
  PID[slurmdbd]=$!
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster divbench >/dev/null
}

start_slurm() {
  slurmctld -D -i >>"$WORK/log/slurmctld.out" 2>&1 &
  PID[slurmctld]=$!
  slurmd -D -N localhost >>"$WORK/log/slurmd.out" 2>&1 &
  PID[slurmd]=$!
  wait_for 60 "the node" bash -c '[[ "$(sinfo -h -n localhost -o %t)" == idle ]]'
}

run_tests() {  # run_tests ACCOUNTING(1|0) PYTEST-ARGS...
  local accounting=$1
  shift
  DIVBENCH_SLURM=1 DIVBENCH_SLURM_ACCOUNTING=$accounting PYTHONPATH="$PWD" OMP_WAIT_POLICY=PASSIVE \
    python3 -m pytest -q -m slurm -p no:cacheprovider --basetemp="$WORK/pytest-$accounting" tests/test_slurm.py "$@"
}

t0=$SECONDS
if [[ "${1:-}" == --up ]]; then  # a cluster to try commands on: export SLURM_CONF as printed
  trap 'exit 0' INT TERM
  write_slurm_conf "${2:-yes}"
  start_munge
  [[ "${2:-yes}" == yes ]] && start_accounting
  start_slurm
  echo "test-slurm: cluster up in $((SECONDS - t0))s; export SLURM_CONF=$SLURM_CONF; stop: kill $$"
  sleep infinity &
  PID[sleeper]=$!
  wait "${PID[sleeper]}"
fi
write_slurm_conf yes
start_munge
start_accounting
start_slurm
echo "test-slurm: cluster with accounting up in $((SECONDS - t0))s ($CPUS CPUs, $MEM_MB MB; $WORK)"
t1=$SECONDS
run_tests 1 "$@"
with_s=$((SECONDS - t1))

t2=$SECONDS
stop_daemon slurmd
stop_daemon slurmctld
write_slurm_conf no
start_slurm
echo "test-slurm: cluster restarted without accounting in $((SECONDS - t2))s"
t3=$SECONDS
run_tests 0 "$@"
cat "$DIVBENCH_SLURM_REPORT" 2>/dev/null || true
echo "test-slurm: lane $((SECONDS - lane_start))s (packages ${install_s}s, tests with accounting ${with_s}s," \
  "without $((SECONDS - t3))s)"
