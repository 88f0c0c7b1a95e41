#!/usr/bin/env bash
# The Sluice broker at rest: the CPU cost of 1,000 idle partitions, on one broker
# (replication factor 1) and on a local 3-broker cluster (replication factor 3), and
# the broker's memory there. Creates the topic, waits until every partition has a
# leader and a settling period has passed, then reads the broker's CPU time
# (utime + stime of /proc/PID/stat) over a window and reports it as % of one core.
# Target: under 5% of a core. Over it, it samples the broker with `perf record -g`
# afterwards (never during the window) and prints the top symbols.
#
# Usage: benches/footprint.sh [--quick] [--partitions N] [--window SECS] [--no-rf3]
#                             [--results DIR]
#   --quick        a 10 s window, 5 s of settling, and no RF3 cluster
#   --partitions   idle partitions (default 1000)
#   --window       seconds of CPU time measured (default 30)
#   --no-rf3       only the single broker
#   --leader-wait  seconds to wait for every partition's leader (default 180); past
#                  it the CPU is measured anyway and reported as "not settled"
#   --results DIR  where footprint-idle.json goes (default target/compare/results)
# It starts and stops its own brokers; it never touches other processes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/compare
# shellcheck source=benches/compare/lib.sh
source "$ROOT/benches/compare/lib.sh"

PARTITIONS=1000 WINDOW=30 SETTLE=10 RF3=1 RESULTS=$WORK/results LEADER_WAIT=180
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) WINDOW=10 SETTLE=5 RF3=0; shift ;;
    --partitions) PARTITIONS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --no-rf3) RF3=0; shift ;;
    --leader-wait) LEADER_WAIT=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $PARTITIONS =~ ^[1-9][0-9]*$ && $WINDOW =~ ^[1-9][0-9]*$ ]] || die "--partitions and --window take positive numbers"
TARGET_PCT=5
CLK_TCK=$(getconf CLK_TCK)
DATA=$WORK/data

install_traps
mkdir -p "$RESULTS"
need_cmds python3 python3
build_all --sluice-only

# Creates the idle topic on the started brokers and measures them; prints one JSON
# object.
measure_idle() {
  local rf=$1 brokers=$2 t0 created settled=true pid before=() after=() i led total
  t0=$(date +%s.%N)
  sluice_cli topic create idle --partitions "$PARTITIONS" --replication-factor "$rf" >/dev/null
  if ! wait_leaders idle "$LEADER_WAIT"; then
    settled=false
    read -r led total < <(leader_count idle)
    log "  only $led of $total partitions had a leader after $LEADER_WAIT s: measuring the broker still electing, not idle"
  fi
  created=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
  log "  $PARTITIONS partitions (RF$rf) created ${created} s ago; settling ${SETTLE} s, then measuring ${WINDOW} s"
  sleep "$SETTLE"
  for pid in "${SLUICE_PIDS[@]}"; do before+=("$(proc_cpu_ticks "$pid")"); done
  sleep "$WINDOW"
  for pid in "${SLUICE_PIDS[@]}"; do after+=("$(proc_cpu_ticks "$pid")"); done
  read -r led total < <(leader_count idle)
  local per_broker=() mems=()
  for i in $(seq 0 $((brokers - 1))); do
    per_broker+=("$(python3 -c "print(round((${after[$i]} - ${before[$i]}) / $CLK_TCK / $WINDOW * 100, 2))")")
    mems+=("$(proc_memory "${SLUICE_PIDS[$i]}")")
  done
  local IFS=,
  echo "{\"partitions\": $PARTITIONS, \"replication_factor\": $rf, \"brokers\": $brokers, \"settled\": $settled, \"with_leader\": ${led:-0}, \"seconds_since_create\": $created, \"window_s\": $WINDOW, \"cpu_pct_of_core_per_broker\": [${per_broker[*]}], \"memory_per_broker\": [${mems[*]}]}"
}

# Samples a broker for 10 s and prints its hottest symbols.
profile_idle() {
  local pid=$1 out=$WORK/profiles/idle-rf$2
  command -v perf >/dev/null || apt_install linux-perf
  mkdir -p "$WORK/profiles"
  log "  over ${TARGET_PCT}%: perf record -F 999 -g -p $pid -o $out.data -- sleep 10"
  perf record -F 999 -g -p "$pid" -o "$out.data" -- sleep 10 >"$out.log" 2>&1 || return 0
  perf report -i "$out.data" --no-children --stdio --percent-limit 1 --sort dso,symbol -g none \
    2>/dev/null >"$out.flat.txt" || true
  echo "Top self time of the idle broker (perf report -i $out.data --no-children --sort dso,symbol):"
  grep -E '^ +[0-9]' "$out.flat.txt" | head -n 20
}

over_target() {
  python3 -c "import sys; sys.exit(0 if max(map(float, '$1'.split(','))) > $TARGET_PCT else 1)"
}

rf1=null rf3=null
log "idle partitions: one broker, $PARTITIONS partitions, RF1"
start_sluice "$DATA/idle-rf1" 1
rf1=$(measure_idle 1 1)
cpu=$(python3 -c "import json,sys; print(','.join(map(str, json.loads(sys.argv[1])['cpu_pct_of_core_per_broker'])))" "$rf1")
log "  CPU: $cpu % of a core"
over_target "$cpu" && profile_idle "${SLUICE_PIDS[0]}" 1
stop_sluice
rm -rf "$DATA/idle-rf1"

if [[ $RF3 == 1 ]]; then
  log "idle partitions: three brokers, $PARTITIONS partitions, RF3"
  start_sluice "$DATA/idle-rf3" 3
  rf3=$(measure_idle 3 3)
  cpu=$(python3 -c "import json,sys; print(','.join(map(str, json.loads(sys.argv[1])['cpu_pct_of_core_per_broker'])))" "$rf3")
  log "  CPU per broker: $cpu % of a core"
  over_target "$cpu" && profile_idle "${SLUICE_PIDS[0]}" 3
  stop_sluice
  rm -rf "$DATA/idle-rf3"
fi

echo "{\"rf1\": $rf1, \"rf3\": $rf3}" | python3 -m json.tool | tee "$RESULTS/footprint-idle.json"
