#!/usr/bin/env bash
# Sluice side by side with NATS JetStream (file storage, default settings and
# `sync_interval: always`) and Redis Streams (AOF, `appendfsync always`), and the
# machine's own limits (dd conv=fdatasync on the same disk, loopback iperf3), all on
# 127.0.0.1, in one go from a fresh clone. Installs what is missing (apt: redis-server,
# iperf3; pip, into a venv under target/compare: nats-server 2.15), builds in release
# mode, runs every workload against every system, stops everything it started (also on
# failure or Ctrl-C) and prints one Markdown table of medians with Sluice/peer ratios.
#
#   W1  1 KiB records, 8 partitions, acknowledged after fsync (JetStream-default acks
#       before fsync: that is the point), as fast as the in-flight window allows
#   W2  100 B records, batched (1 MiB), as fast as possible
#   W3  produce->consume latency at a fixed rate: half of Sluice's W1 records/s of the
#       same run (a peer that cannot sustain it runs at half of its own W1)
#   W4  replay of a backlog (2 GiB) from offset 0
#   W5  W1 with replication factor 3 on a local 3-broker Sluice cluster
#   and the Sluice broker's memory after W1 and W4, and (benches/footprint.sh) the CPU
#   cost of 1,000 idle partitions.
#   W1, W2, W3 and W5 first send for --warmup seconds that count in no figure (as the
#   OpenMessaging Benchmark's warm-up), for every system alike: the first second
#   otherwise measures connecting and the burst that catches up after it.
#
# Usage: benches/compare.sh [--quick] [--runs N] [--only sluice,nats,redis]
#                           [--duration SECS] [--warmup SECS] [--backlog-mib MIB]
#                           [--profile]
#   --quick      short runs and a small backlog (about 3 minutes in all), 1 run
#   --runs N     runs of everything (default 3); the table shows medians
#   --only LIST  systems to run (default sluice,nats,redis)
#   --duration   seconds of each throughput and latency workload (default 15)
#   --warmup     seconds sent before each of them and left out (default 2; 1 with --quick)
#   --backlog-mib  size of W4's backlog (default 2048; 256 with --quick)
#   --profile    instead of the comparison: `perf record` the Sluice broker and the
#                `sluice perf` client during W1 and W2, and print their hot paths
# Results (JSON per run, logs, the table) are under target/compare/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/compare
# shellcheck source=benches/compare/lib.sh
source "$ROOT/benches/compare/lib.sh"

QUICK=0 RUNS="" ONLY=sluice,nats,redis DURATION="" WARMUP="" BACKLOG_MIB="" PROFILE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --runs) RUNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --backlog-mib) BACKLOG_MIB=$2; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $QUICK == 1 ]]; then
  RUNS=${RUNS:-1} DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} BACKLOG_MIB=${BACKLOG_MIB:-256}
  DD_MIB=256 IPERF_SECS=2
else
  RUNS=${RUNS:-3} DURATION=${DURATION:-15} WARMUP=${WARMUP:-2} BACKLOG_MIB=${BACKLOG_MIB:-2048}
  DD_MIB=1024 IPERF_SECS=5
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number"
[[ $DURATION =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--duration takes seconds"
[[ $WARMUP =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--warmup takes seconds"
[[ $BACKLOG_MIB =~ ^[1-9][0-9]*$ ]] || die "--backlog-mib takes a positive number"
for s in ${ONLY//,/ }; do
  [[ $s =~ ^(sluice|nats|redis)$ ]] || die "--only takes sluice, nats, redis"
done
selected() { [[ ",$ONLY," == *",$1,"* ]]; }

PARTITIONS=8
PRODUCERS=1
BACKLOG_RECORDS=$((BACKLOG_MIB * 1024))
RESULTS=$WORK/results
DATA=$WORK/data

install_traps
mkdir -p "$WORK"

# --- what the run needs ------------------------------------------------------------
deps=(dd coreutils python3 python3 iperf3 iperf3)
selected redis && deps+=(redis-server redis-server redis-cli redis-tools)
[[ $PROFILE == 1 ]] && deps+=(perf linux-perf)
need_cmds "${deps[@]}"
selected nats && install_nats_server
if selected nats || selected redis; then build_all --with-peers; else build_all; fi

# Runs a load command with its JSON summary to $out, stderr to $out.log.
measure() {
  local out=$1; shift
  log "  $(basename "$out" .json)"
  if ! "$@" >"$out" 2>"$out.log"; then
    log "  failed: $(tail -n 3 "$out.log" | tr '\n' ' ')"
    rm -f "$out"
    return 1
  fi
}

# --- the machine's own limits ---------------------------------------------------------
run_machine() {
  local dir=$1 port pid
  log "machine: dd conv=fdatasync ($DD_MIB MiB), iperf3 loopback ($IPERF_SECS s)"
  # A baseline that fails leaves its result out of the table; the systems still run.
  dd if=/dev/zero of="$WORK/dd.bin" bs=1M count="$DD_MIB" conv=fdatasync 2>"$dir/dd.txt" || true
  rm -f "$WORK/dd.bin"
  python3 - "$dir/dd.txt" >"$dir/machine-dd.json" <<'EOF' || rm -f "$dir/machine-dd.json"
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", text, re.M)
b, s = int(m.group(1)), float(m.group(2))
print(json.dumps({"bytes": b, "elapsed_s": s, "mb_per_sec": round(b / s / 1e6, 3)}))
EOF
  port=$(free_port)
  spawn "$dir/iperf3-server.log" iperf3 -s -B 127.0.0.1 -p "$port"
  pid=$LAST_PID
  wait_port "$port" "$pid" "iperf3 -s"
  iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECS" -J >"$dir/iperf3.json" || true
  stop_pid "$pid"
  python3 - "$dir/iperf3.json" >"$dir/machine-iperf3.json" <<'EOF' || rm -f "$dir/machine-iperf3.json"
import json, sys
bps = json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]
print(json.dumps({"mb_per_sec": round(bps / 8 / 1e6, 3), "gbit_per_sec": round(bps / 1e9, 3)}))
EOF
}

# --- Sluice ---------------------------------------------------------------------------
warmup_args() { [[ $WARMUP =~ ^0*(\.0*)?$ ]] || echo --warmup "$WARMUP"; }
w1_args() { echo --partitions "$PARTITIONS" --record-size 1024 --duration "$DURATION" --producers "$PRODUCERS" $(warmup_args); }
w2_args() { echo --partitions "$PARTITIONS" --record-size 100 --duration "$DURATION" --producers "$PRODUCERS" $(warmup_args); }

# Deletes a measured workload's topic: at these rates W1 to W3 write about 25 GB, more
# than a small disk has free. Not right before W3: deleting gigabytes frees their page
# cache at once, and W3's appends then take fresh pages, which costs latency (a run
# that deleted W2's topic just before W3 had its e2e p99 go from 16 to 100 ms).
drop_topic() { sluice_cli topic delete "$1" >/dev/null 2>&1 || log "  could not delete topic $1"; }

run_sluice() {
  local dir=$1 pid rate
  log "sluice: one broker"
  start_sluice "$DATA/sluice" 1
  pid=${SLUICE_PIDS[0]}
  proc_memory "$pid" >"$dir/sluice-mem-start.json"
  # shellcheck disable=SC2046
  measure "$dir/sluice-w1.json" sluice_cli perf produce --topic w1 --create $(w1_args) --acks all || true
  proc_memory "$pid" >"$dir/sluice-mem-after-w1.json"
  drop_topic w1
  # shellcheck disable=SC2046
  measure "$dir/sluice-w2.json" sluice_cli perf produce --topic w2 --create $(w2_args) --acks all || true
  rate=$(w3_rate "$dir" sluice)
  if [[ -n $rate ]]; then
    # No linger, as the peers send each record at once: batches are what gathers while
    # earlier ones are in flight.
    # shellcheck disable=SC2046
    measure "$dir/sluice-w3.json" sluice_cli perf end-to-end --topic w3 --create --partitions "$PARTITIONS" \
      --record-size 1024 --rate "$rate" --linger-ms 0 --duration "$DURATION" $(warmup_args) || true
    drop_topic w3
  fi
  drop_topic w2
  measure "$dir/sluice-w4-fill.json" sluice_cli perf produce --topic w4 --create --partitions "$PARTITIONS" \
    --record-size 1024 --records "$BACKLOG_RECORDS" --producers "$PRODUCERS" || true
  measure "$dir/sluice-w4.json" sluice_cli perf consume --topic w4 || true
  proc_memory "$pid" >"$dir/sluice-mem-after-w4.json"
  stop_sluice
  rm -rf "$DATA/sluice"

  # Three brokers on one machine split the page-cache budget one broker has by default
  # (an eighth of RAM): each would otherwise keep taking new pages for a budget it never
  # fills in a run (README, "Memory: what bounds the broker's RSS").
  local cache_mib
  cache_mib=$(awk '/^MemTotal:/ { print int($2 / 1024 / 8 / 3) }' /proc/meminfo)
  log "sluice: three brokers, --log-cache-mib $cache_mib each"
  start_sluice "$DATA/sluice-rf3" 3 --log-cache-mib "$cache_mib"
  # shellcheck disable=SC2046
  measure "$dir/sluice-w5.json" sluice_cli perf produce --topic w5 --create --replication-factor 3 $(w1_args) --acks all || true
  stop_sluice
  rm -rf "$DATA/sluice-rf3"
}

# W3's rate for a system: half of Sluice's W1 records/s in this run, or half of the
# system's own W1 if that is lower (or if Sluice did not run).
w3_rate() {
  python3 - "$1" "$2" <<'EOF'
import json, os, sys
dir, system = sys.argv[1], sys.argv[2]
def w1(s):
    try:
        return json.load(open(os.path.join(dir, f"{s}-w1.json")))["records_per_sec"]
    except (OSError, ValueError, KeyError):
        return None
own, sluice = w1(system), w1("sluice")
rates = [r / 2 for r in (own, sluice) if r]
print(round(min(rates)) if rates else "")
EOF
}

# --- peers ----------------------------------------------------------------------------
# PEER_LOAD_ARGS go to the producing commands: each peer is driven with the window that
# served it best.
peer() {
  local cmd=$1
  shift
  # shellcheck disable=SC2086
  [[ $cmd == consume ]] || set -- $PEER_LOAD_ARGS "$@"
  "$PEER_PERF" --system "$PEER_SYSTEM" --url "$PEER_URL" "$cmd" "$@"
}

run_nats() {
  local dir=$1 mode=$2 port conf rate data=$DATA/nats-$2
  log "nats-server $NATS_SERVER_VERSION, JetStream file storage, $mode"
  rm -rf "$data"; mkdir -p "$data"
  port=$(free_port)
  conf=$data/server.conf
  {
    echo "listen: \"127.0.0.1:$port\""
    echo "jetstream {"
    echo "  store_dir: \"$data/js\""
    [[ $mode == sync ]] && echo "  sync_interval: always"
    echo "}"
  } >"$conf"
  spawn "$data/server.log" "$NATS_SERVER" -c "$conf"
  local pid=$LAST_PID
  wait_port "$port" "$pid" "nats-server ($mode)"
  PEER_SYSTEM=nats PEER_URL=nats://127.0.0.1:$port
  # 64 KiB worth of records per batch, not Sluice's 1 MiB: JetStream is no faster with
  # the larger window (W1 188k, 186k, 179k records/s with 64 KiB, 256 KiB and 1 MiB;
  # W2 217k and 206k with 64 KiB and 256 KiB), and with 100 B records at 1 MiB (419k
  # publishes awaiting acks) it failed to store some of them.
  PEER_LOAD_ARGS="--batch-bytes 65536"
  local name=nats-$mode
  # shellcheck disable=SC2046
  measure "$dir/$name-w1.json" peer produce --topic w1 $(w1_args) || true
  # shellcheck disable=SC2046
  measure "$dir/$name-w2.json" peer produce --topic w2 $(w2_args) || true
  rate=$(w3_rate "$dir" "$name")
  if [[ -n $rate ]]; then
    # shellcheck disable=SC2046
    measure "$dir/$name-w3.json" peer end-to-end --topic w3 --partitions "$PARTITIONS" --record-size 1024 \
      --rate "$rate" --duration "$DURATION" $(warmup_args) || true
  fi
  if [[ $mode == default ]]; then
    # The replay does not depend on when the server fsyncs: measured once.
    measure "$dir/$name-w4-fill.json" peer produce --topic w4 --partitions "$PARTITIONS" --record-size 1024 \
      --records "$BACKLOG_RECORDS" --producers "$PRODUCERS" || true
    measure "$dir/$name-w4.json" peer consume --topic w4 || true
  fi
  stop_pid "$pid"
  rm -rf "$data"
}

run_redis() {
  local dir=$1 port rate data=$DATA/redis
  log "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), AOF, appendfsync always"
  rm -rf "$data"; mkdir -p "$data"
  port=$(free_port)
  spawn "$data/server.log" redis-server --bind 127.0.0.1 --port "$port" --dir "$data" \
    --appendonly yes --appendfsync always --save "" --daemonize no
  local pid=$LAST_PID
  wait_port "$port" "$pid" "redis-server"
  PEER_SYSTEM=redis PEER_URL=redis://127.0.0.1:$port/
  # Sluice's window (1 MiB batches): Redis AOF-always fsyncs once per pipeline, so it
  # does better with it than with 64 KiB.
  PEER_LOAD_ARGS=""
  rcli() { redis-cli -p "$port" "$@" >/dev/null; }
  # shellcheck disable=SC2046
  measure "$dir/redis-w1.json" peer produce --topic w1 $(w1_args) || true
  rcli flushall
  # shellcheck disable=SC2046
  measure "$dir/redis-w2.json" peer produce --topic w2 $(w2_args) || true
  rcli flushall
  rate=$(w3_rate "$dir" redis)
  if [[ -n $rate ]]; then
    # shellcheck disable=SC2046
    measure "$dir/redis-w3.json" peer end-to-end --topic w3 --partitions "$PARTITIONS" --record-size 1024 \
      --rate "$rate" --duration "$DURATION" $(warmup_args) || true
  fi
  rcli flushall
  # The backlog is written without fsync (it is not what W4 measures), then read back.
  rcli config set appendfsync no
  measure "$dir/redis-w4-fill.json" peer produce --topic w4 --partitions "$PARTITIONS" --record-size 1024 \
    --records "$BACKLOG_RECORDS" --producers "$PRODUCERS" || true
  rcli config set appendfsync always
  measure "$dir/redis-w4.json" peer consume --topic w4 --partitions "$PARTITIONS" || true
  stop_pid "$pid"
  rm -rf "$data"
}

# --- profiling ------------------------------------------------------------------------
run_profile() {
  local dir=$WORK/profiles w pid
  mkdir -p "$dir"
  start_sluice "$DATA/sluice-profile" 1
  pid=${SLUICE_PIDS[0]}
  for w in w1 w2; do
    log "profiling Sluice $w (broker pid $pid and the sluice perf client)"
    spawn "$dir/$w-broker.perf.log" perf record -F 499 --call-graph dwarf,16384 -p "$pid" \
      -o "$dir/$w-broker.data" -- sleep "$DURATION"
    local rec=$LAST_PID
    # shellcheck disable=SC2046
    perf record -F 499 --call-graph dwarf,16384 -o "$dir/$w-client.data" -- \
      "$SLUICE" --bootstrap "$SLUICE_BOOTSTRAP" --output json perf produce --topic "$w" --create \
      $("${w}_args") --acks all >"$dir/$w.json" 2>"$dir/$w-client.perf.log"
    wait "$rec" 2>/dev/null || true
    stop_pid "$rec"
    for side in broker client; do
      perf report -i "$dir/$w-$side.data" --no-children --stdio --percent-limit 1 \
        --sort dso,symbol -g none 2>/dev/null >"$dir/$w-$side.flat.txt" || true
      perf report -i "$dir/$w-$side.data" --children --stdio --percent-limit 5 \
        --sort symbol -g caller,0.5,callee,function,percent --max-stack 24 2>/dev/null \
        >"$dir/$w-$side.tree.txt" || true
      echo "== $w $side: top self time (perf report --no-children --sort dso,symbol) =="
      grep -E '^ +[0-9]' "$dir/$w-$side.flat.txt" | head -n 25 || true
    done
    echo "== $w result: $(cat "$dir/$w.json")"
  done
  stop_sluice
  rm -rf "$DATA/sluice-profile"
  log "profiles and reports in $dir"
}

if [[ $PROFILE == 1 ]]; then
  run_profile
  exit 0
fi

# --- the runs -------------------------------------------------------------------------
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
cat >"$RESULTS/settings.json" <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%MZ)", "runs": $RUNS, "duration_s": $DURATION, "warmup_s": $WARMUP, "backlog_mib": $BACKLOG_MIB,
 "partitions": $PARTITIONS, "producers": $PRODUCERS, "only": "$ONLY", "quick": $QUICK,
 "nats_server": "$NATS_SERVER_VERSION", "redis_server": "$(command -v redis-server >/dev/null && redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')",
 "cpus": $(nproc), "commit": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"}
EOF
for run in $(seq 1 "$RUNS"); do
  dir=$RESULTS/run-$run
  mkdir -p "$dir"
  log "=== run $run of $RUNS ==="
  run_machine "$dir"
  selected sluice && run_sluice "$dir"
  if selected nats; then
    run_nats "$dir" default
    run_nats "$dir" sync
  fi
  selected redis && run_redis "$dir"
done
if selected sluice; then
  footprint_args=()
  [[ $QUICK == 1 ]] && footprint_args+=(--quick)
  "$ROOT/benches/footprint.sh" "${footprint_args[@]}" --results "$RESULTS" || log "footprint.sh failed"
fi
python3 "$ROOT/benches/compare/table.py" "$RESULTS" | tee "$RESULTS/table.md"
