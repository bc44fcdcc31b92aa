#!/usr/bin/env bash
# Brings up (and tears down) a real single-node Slurm cluster on this machine, for tests of the
# Slurm backend.
#
#   scripts/slurm-cluster.sh start    install slurm-wlm + munge if missing, start munged, slurmctld
#                                     and slurmd, wait for the node to be idle, run a smoke job.
#                                     Idempotent. Last stdout line: `export SLURM_CONF=...`; the same
#                                     line is written to $SCMZ_SLURM_DIR/env for sourcing.
#   scripts/slurm-cluster.sh stop     cancel remaining jobs, stop the daemons this script started (by
#                                     the pids in the state dir), remove the pid files. Idempotent.
#   scripts/slurm-cluster.sh status   say which daemons are alive and show `sinfo`.
#
# Everything lives in the state dir $SCMZ_SLURM_DIR (default /tmp/scmz-slurm): slurm.conf, spool
# and state dirs, logs, pid files, the munge socket and the job completion log (jobcomp.log).
# /etc/slurm is not touched; clients find the configuration through SLURM_CONF. munged is a private
# instance on a socket in the state dir (slurm.conf's AuthInfo points there), so a system munged, if
# any, is neither used nor disturbed. The key is the system one, /etc/munge/munge.key.
#
# The cluster: node = this host (short hostname, address 127.0.0.1), CPUs from nproc, RealMemory
# 90% of MemTotal; one partition `debug` (Default=YES, MaxTime=INFINITE). No accounting storage, so
# `sacct` is empty: finished jobs stay visible in `scontrol show job ID` for MinJobAge (3600 s) and
# are appended to jobcomp.log. Time limits are checked by slurmctld every 30 s (a compile-time
# constant, PERIODIC_TIMEOUT, not configurable), so a job with --time=1 ends TIMEOUT between 60 and
# 90 s after it started (67 s observed). slurmctld listens on port $SCMZ_SLURM_PORT (default 6817),
# slurmd on the next port: two clusters with different state dirs need different ports.
#
# When the cluster cannot be started (not root, Slurm missing and not installable, a daemon fails),
# `start` prints one line on stderr saying why and exits 2, so test harnesses can report a skip.
set -euo pipefail

DIR="${SCMZ_SLURM_DIR:-/tmp/scmz-slurm}"
CONF="$DIR/slurm.conf"
MUNGE_DIR="$DIR/munge"                    # munged socket, pid, log, seed (owned by user munge)
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_KEY=/etc/munge/munge.key
LOG_DIR="$DIR/log"
CTLD_PORT="${SCMZ_SLURM_PORT:-6817}"      # slurmd uses CTLD_PORT + 1
START_TIMEOUT=30                          # seconds to wait for the node, and for the smoke job

STARTED=()                                # daemons this `start` invocation has started

say() { echo "slurm-cluster: $*"; }
# The single stderr line a harness shows as its skip reason; exit code 2 means "cannot run Slurm".
# Daemons this invocation started are stopped first, so a failed start leaves nothing running.
fail() {
  trap - ERR
  if ((${#STARTED[@]} > 0)); then
    stop_daemons "${STARTED[@]}" >/dev/null 2>&1 || true
  fi
  echo "slurm-cluster: cannot start Slurm: $*" >&2
  exit 2
}

# is_running PID NAME: true when PID is a live (not zombie) process whose command is NAME.
is_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # /proc/PID/stat: "PID (COMM) STATE ...".
  [[ $stat == "$1 ($2) "* && ${stat#"$1 ($2) "} != Z* ]]
}

# pid_alive NAME: true when $DIR/NAME.pid names a running NAME (guards against a stale pid file
# whose pid was reused by something else, and against a dead daemon not yet reaped).
pid_alive() {
  local name=$1 pid
  pid=$(cat "$DIR/$name.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  is_running "$pid" "$name"
}

# node_state: the node's state as sinfo prints it (idle, mixed, allocated, down*, drained, ...).
node_state() {
  SLURM_CONF="$CONF" timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1
}

# wait_for_pidfile NAME: a forking daemon writes its own pid file; wait (max 15 s) for it to name a
# live process.
wait_for_pidfile() {
  local name=$1 i
  for ((i = 0; i < 150; i++)); do
    pid_alive "$name" && return 0
    sleep 0.1
  done
  return 1
}

# kill_stray_steps: kill slurmstepd processes of this cluster that outlived their slurmd (e.g.
# after a crash), with all their descendants (the jobs' processes). Left alone, they re-register
# their jobs with a new slurmctld, which may then drain the node ("Duplicate jobid"). A step of
# this cluster is recognised by holding our slurmd log open.
kill_stray_steps() {
  local pid fd p pp c stepds=() victims=() queue=()
  for pid in $(pgrep -x slurmstepd || true); do
    for fd in /proc/"$pid"/fd/*; do
      if [[ $(readlink "$fd" 2>/dev/null) == "$LOG_DIR/slurmd.log" ]]; then
        stepds+=("$pid")
        break
      fi
    done
  done
  ((${#stepds[@]} > 0)) || return 0
  local -A children=()
  while read -r p pp; do children[$pp]+=" $p"; done < <(ps -e -o pid= -o ppid=)
  queue=("${stepds[@]}")
  while ((${#queue[@]} > 0)); do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    victims+=("$p")
    for c in ${children[$p]:-}; do queue+=("$c"); done
  done
  kill -KILL "${victims[@]}" 2>/dev/null || true
  say "killed ${#stepds[@]} stray slurmstepd process(es) and their jobs: ${victims[*]}"
}

# last_log_error FILE: the last error/fatal line of a daemon log, to make failures self-explaining.
last_log_error() {
  grep -iE 'error|fatal' "$1" 2>/dev/null | tail -n1 || true
}

NODE="$(hostname -s)"

# ----------------------------------------------------------------------------------------------
# start
# ----------------------------------------------------------------------------------------------

install_if_missing() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || fail "slurm-wlm/munge are not installed and apt-get is unavailable"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Try without refreshing the package lists first (fast); refresh and retry if that fails.
  if ! apt-get install -y -q slurm-wlm munge >"$LOG_DIR/apt.log" 2>&1; then
    apt-get update -q >>"$LOG_DIR/apt.log" 2>&1 || true
    apt-get install -y -q slurm-wlm munge >>"$LOG_DIR/apt.log" 2>&1 \
      || fail "apt-get install slurm-wlm munge failed (see $LOG_DIR/apt.log)"
  fi
  local cmd
  for cmd in slurmctld slurmd sbatch munged; do
    command -v "$cmd" >/dev/null || fail "$cmd not on PATH after installing slurm-wlm and munge"
  done
}

ensure_munge_key() {
  if [[ ! -s $MUNGE_KEY ]]; then
    say "creating $MUNGE_KEY"
    mkdir -p "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY" --force >/dev/null 2>&1 \
        || fail "could not create $MUNGE_KEY"
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none \
        || fail "could not create $MUNGE_KEY"
    fi
  fi
  chown munge:munge "$(dirname "$MUNGE_KEY")" "$MUNGE_KEY"
  chmod 700 "$(dirname "$MUNGE_KEY")"
  chmod 400 "$MUNGE_KEY"
}

start_munged() {
  if pid_alive munged; then return; fi
  # munged refuses a socket directory that is not owned by its user or not world-executable.
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"
  rm -f "$DIR/munged.pid" "$MUNGE_DIR/munged.pid"
  local out
  # (Daemons get fd 9 closed: they must not inherit, and so hold, the lock.)
  # munged forks and writes its pid file itself; it runs as the unprivileged user munge.
  if ! out=$(runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" 2>&1 </dev/null 9>&-); then
    fail "munged did not start: $(echo "$out" | tail -n1)"
  fi
  # munged's pid file sits in its own directory (it must own it); link it where stop looks.
  ln -sf "$MUNGE_DIR/munged.pid" "$DIR/munged.pid"
  wait_for_pidfile munged || fail "munged did not start (see $MUNGE_DIR/munged.log)"
  STARTED+=(munged)
  munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 \
    || fail "munged is running but a munge/unmunge round trip failed (see $MUNGE_DIR/munged.log)"
}

write_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
  cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm-cluster.sh: a single-node test cluster. Do not edit; rerun the script.
ClusterName=scmz
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups: plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# No accounting database; finished jobs go to a text log and stay in slurmctld for an hour.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
MinJobAge=3600
# Fast turnaround for tests: schedule at once, kill quickly, no grace beyond the time limit.
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_interval=1,sched_min_interval=0
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=300
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start_slurm_daemon() {
  local name=$1
  if pid_alive "$name"; then return; fi
  rm -f "$DIR/$name.pid"
  local out
  # Both daemons fork and write their pid file (SlurmctldPidFile / SlurmdPidFile) themselves.
  if ! out=$("$name" -f "$CONF" 2>&1 </dev/null 9>&-); then
    fail "$name did not start: $(echo "$out" | tail -n1)"
  fi
  STARTED+=("$name")
  wait_for_pidfile "$name" \
    || fail "$name did not start: $(last_log_error "$LOG_DIR/$name.log") (see $LOG_DIR/$name.log)"
}

wait_for_node() {
  local state="" i resumed=0
  for ((i = 0; i < START_TIMEOUT * 2; i++)); do
    pid_alive slurmctld || fail "slurmctld exited: $(last_log_error "$LOG_DIR/slurmctld.log")"
    pid_alive slurmd || fail "slurmd exited: $(last_log_error "$LOG_DIR/slurmd.log")"
    state=$(node_state || true)
    case $state in
      idle | mixed | allocated | completing) return 0 ;;
      drained | draining | down)
        # Left over from an earlier run (e.g. a killed slurmd): put it back in service once.
        if ((resumed == 0)); then
          SLURM_CONF="$CONF" scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.5
  done
  fail "node $NODE not idle after ${START_TIMEOUT}s (sinfo state: '${state:-none}'; see $LOG_DIR)"
}

smoke_test() {
  local id state="" i
  id=$(cd "$DIR" && SLURM_CONF="$CONF" sbatch --parsable -J scmz-smoke -o /dev/null \
    --wrap true 2>&1) || fail "smoke job: sbatch failed: $id"
  id=${id%%;*}
  for ((i = 0; i < START_TIMEOUT * 2; i++)); do
    state=$(SLURM_CONF="$CONF" scontrol show job "$id" 2>/dev/null \
      | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
    case $state in
      COMPLETED) return 0 ;;
      PENDING | CONFIGURING | RUNNING | COMPLETING | "") ;;
      *) fail "smoke job $id ended $state (see $LOG_DIR)" ;;
    esac
    sleep 0.5
  done
  fail "smoke job $id not COMPLETED after ${START_TIMEOUT}s (state '${state:-unknown}')"
}

print_env() {
  echo "export SLURM_CONF=$CONF" >"$DIR/env"
  echo "export SLURM_CONF=$CONF"
}

cmd_start() {
  # Any unexpected failure still ends with one stderr line and exit code 2.
  set -E
  trap 'fail "unexpected error (line $LINENO: $BASH_COMMAND)"' ERR
  [[ $(id -u) -eq 0 ]] || fail "must run as root (uid $(id -u)); there is no sudo"
  mkdir -p "$DIR" "$LOG_DIR" "$DIR/ctld" "$DIR/spool"
  # Serialise concurrent starts/stops (tests may call start in parallel).
  exec 9>"$DIR/lock"
  flock -w 120 9 || fail "timed out waiting for the lock $DIR/lock"

  # Fast path: everything already up.
  if pid_alive munged && pid_alive slurmctld && pid_alive slurmd && command -v sinfo >/dev/null \
    && [[ $(node_state || true) =~ ^(idle|mixed|allocated|completing)$ ]]; then
    print_env
    return
  fi

  install_if_missing
  ensure_munge_key
  start_munged
  # Rewrite the config only while slurmctld is down (a running one would not see the change).
  pid_alive slurmctld || write_conf
  start_slurm_daemon slurmctld
  pid_alive slurmd || kill_stray_steps
  start_slurm_daemon slurmd
  wait_for_node
  smoke_test
  say "up: node $NODE ($(nproc) CPUs), partition debug, logs in $LOG_DIR"
  print_env
}

# ----------------------------------------------------------------------------------------------
# stop
# ----------------------------------------------------------------------------------------------

# stop_daemons NAME...: SIGTERM each process recorded in NAME.pid (all at once: each takes about
# 2 s to exit), wait up to 15 s for them to exit, SIGKILL any that remain, remove the pid files.
stop_daemons() {
  local name i stopped=""
  local -A pids=()
  for name in "$@"; do
    if pid_alive "$name"; then
      pids[$name]=$(cat "$DIR/$name.pid")
      stopped+=" $name(${pids[$name]})"
      kill -TERM "${pids[$name]}" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < 150; i++)); do
    for name in "${!pids[@]}"; do
      is_running "${pids[$name]}" "$name" || unset "pids[$name]"
    done
    ((${#pids[@]} == 0)) && break
    sleep 0.1
  done
  for name in "${!pids[@]}"; do
    kill -KILL "${pids[$name]}" 2>/dev/null || true
    say "killed $name (pid ${pids[$name]}) after SIGTERM timed out"
  done
  for name in "$@"; do
    rm -f "$DIR/$name.pid"
  done
  [[ -z $stopped ]] || say "stopped$stopped"
}

cmd_stop() {
  [[ -d $DIR ]] || return 0
  exec 9>"$DIR/lock"
  flock -w 120 9 || { echo "slurm-cluster: timed out waiting for $DIR/lock" >&2; exit 1; }
  # Cancel whatever still runs, so no job processes (slurmstepd and children) outlive slurmd.
  if pid_alive slurmctld && pid_alive slurmd; then
    local jobs i
    jobs=$(SLURM_CONF="$CONF" squeue -h -t PD,CF,R,CG,S -o '%A' 2>/dev/null | sort -u || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086 # one argument per job id
      SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 40; i++)); do
        [[ -z $(SLURM_CONF="$CONF" squeue -h -t PD,CF,R,CG,S -o '%A' 2>/dev/null || true) ]] \
          && break
        sleep 0.5
      done
    fi
  fi
  stop_daemons slurmd slurmctld munged
  rm -f "$MUNGE_DIR/munged.pid"
  kill_stray_steps
}

# ----------------------------------------------------------------------------------------------
# status
# ----------------------------------------------------------------------------------------------

cmd_status() {
  local name
  echo "state dir: $DIR"
  for name in munged slurmctld slurmd; do
    if pid_alive "$name"; then
      echo "$name: running (pid $(cat "$DIR/$name.pid"))"
    else
      echo "$name: not running"
    fi
  done
  if pid_alive slurmctld && [[ -f $CONF ]]; then
    SLURM_CONF="$CONF" timeout 10 sinfo || true
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 start|stop|status   (state dir: \$SCMZ_SLURM_DIR, default /tmp/scmz-slurm)" >&2
    exit 64
    ;;
esac
