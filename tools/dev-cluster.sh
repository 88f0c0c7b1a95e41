#!/usr/bin/env bash
# Starts a local Sluice cluster for development: N brokers (default 3) on 127.0.0.1,
# ports 9701.., data under ./data/dev-<id>, logs in ./data/dev-<id>.log.
# Ctrl-C stops them all (SIGTERM). Try failover from another terminal:
#   sluice --bootstrap 127.0.0.1:9701 topic create demo --partitions 6 --replication-factor 3
#   sluice --bootstrap 127.0.0.1:9701 topic describe demo      # leaders and ISR
#   kill -9 "$(cat data/dev-2.pid)"                            # then describe again
#   tools/dev-cluster.sh --restart 2                           # bring broker 2 back
set -euo pipefail
cd "$(dirname "$0")/.."

brokers=3
restart=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --brokers) brokers="$2"; shift 2 ;;
    --restart) restart="$2"; shift 2 ;;
    *) echo "usage: $0 [--brokers N] [--restart ID]" >&2; exit 2 ;;
  esac
done

cargo build --release -q -p sluice-broker -p sluice-tools
bin=target/release/sluice-broker
peers=""
for i in $(seq 1 "$brokers"); do peers+="${peers:+,}$i=127.0.0.1:$((9700 + i))"; done
mkdir -p data

start() {
  local i=$1
  "$bin" --node-id "$i" --listen "127.0.0.1:$((9700 + i))" --data-dir "data/dev-$i" \
    --peers "$peers" >>"data/dev-$i.log" 2>&1 &
  echo $! >"data/dev-$i.pid"
  echo "broker $i: pid $!, 127.0.0.1:$((9700 + i)), log data/dev-$i.log"
}

if [[ -n "$restart" ]]; then
  start "$restart"
  exit 0
fi

for i in $(seq 1 "$brokers"); do start "$i"; done
stop() {
  for i in $(seq 1 "$brokers"); do
    [[ -f "data/dev-$i.pid" ]] && kill "$(cat "data/dev-$i.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM
echo "export SLUICE_BOOTSTRAP=$(echo "$peers" | sed 's/[0-9]*=//g')"
echo "Ctrl-C stops the cluster."
while true; do sleep 3600; done
