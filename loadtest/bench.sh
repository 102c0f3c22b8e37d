#!/usr/bin/env bash
# Issue 2 / issue 5 benchmarks: starts release gateways (echo backend) and
# the tokio-tungstenite peer, runs loadtest against them, stops what it
# started (by pid). Usage:
#   cargo build --release -p gateway -p loadtest --bins   (gateway, balancer, loadtest, tokio-peer)
#   loadtest/bench.sh idle|cpu|rtt|accept|100k|100k-balancer
# BIN (default target/release) and OUT (default bench-out) may be set;
# GW_FLAGS adds gateway flags (e.g. GW_FLAGS="--ping-interval 600").
set -euo pipefail
BIN=${BIN:-target/release}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# wait_line FILE PATTERN: bounded wait for a server's "listening" line.
wait_line() {
  for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "server did not start: $1" >&2; cat "$1" >&2; exit 1
}

# start_gateway WS_PORT ADMIN_PORT [extra flags...]: sets GW_PID.
start_gateway() {
  local log="$OUT/gateway-$1.log"
  "$BIN/gateway" --backend echo --max-connections 19500 --listen "127.0.0.1:$1" \
    --admin "127.0.0.1:$2" "${@:3}" ${GW_FLAGS:-} >"$log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_line "$log" listening
}

start_peer() {
  "$BIN/tokio-peer" --listen 127.0.0.1:5600 >"$OUT/peer.log" 2>&1 &
  PEER_PID=$!; PIDS+=("$PEER_PID")
  wait_line "$OUT/peer.log" "^127.0.0.1:"
}

LT="$BIN/loadtest"
case "${1:-}" in
  idle) # 1 and 4: 19,000 idle connections, memory per connection and accept rate, vs tokio-peer
    start_gateway 5555 5556; start_peer
    "$LT" --url ws://127.0.0.1:5555/ws --server-pid "$GW_PID" --label gateway \
      --compare ws://127.0.0.1:5600/ws --compare-pid "$PEER_PID" --compare-label tokio-peer \
      --connections 19000 --rate 100000 --hold 10s --settle 3s \
      --report "$OUT/idle.json" --chart "$OUT/idle.svg" ;;
  cpu) # 2: CPU over 60 s holding 19,000 with websocket pings on (every 10 s here)
    start_gateway 5555 5556 --ping-interval 10; start_peer
    "$LT" --url ws://127.0.0.1:5555/ws --server-pid "$GW_PID" --label gateway \
      --compare ws://127.0.0.1:5600/ws --compare-pid "$PEER_PID" --compare-label tokio-peer \
      --connections 19000 --rate 100000 --hold 60s --settle 3s \
      --report "$OUT/cpu.json" --chart "$OUT/cpu.svg" ;;
  rtt) # 3: 19,000 connected, 2,000 of them sending one ping a second
    start_gateway 5555 5556; start_peer
    "$LT" --url ws://127.0.0.1:5555/ws --server-pid "$GW_PID" --label gateway \
      --compare ws://127.0.0.1:5600/ws --compare-pid "$PEER_PID" --compare-label tokio-peer \
      --connections 19000 --rate 100000 --hold 30s --settle 3s \
      --active 0.10526316 --message-rate 1 \
      --report "$OUT/rtt.json" --chart "$OUT/rtt.svg" ;;
  accept) # 4 on its own: handshakes per second, no hold
    start_gateway 5555 5556; start_peer
    "$LT" --url ws://127.0.0.1:5555/ws --server-pid "$GW_PID" --label gateway \
      --compare ws://127.0.0.1:5600/ws --compare-pid "$PEER_PID" --compare-label tokio-peer \
      --connections 19000 --rate 100000 --hold 0s --settle 0s --processes 2 \
      --report "$OUT/accept.json" ;;
  100k) # issue 5 acceptance: 100,000 over 6 gateways and 6 loadtest processes, 1% at 1 ping/s
    URLS=(); GWS=()
    for i in 0 1 2 3 4 5; do
      start_gateway $((5561 + 2 * i)) $((5562 + 2 * i)) --node-id "gw-$i"
      URLS+=(--url "ws://127.0.0.1:$((5561 + 2 * i))/ws"); GWS+=(--server-pid "$GW_PID")
    done
    "$LT" "${URLS[@]}" "${GWS[@]}" --label 6-gateways --processes 6 \
      --connections 100000 --rate 5000 --max-pending 600 --hold 60s --settle 5s --active 0.01 --message-rate 1 \
      --report "$OUT/100k.json" --chart "$OUT/100k.svg" ;;
  100k-balancer) # the same through the balancer (gateways heartbeat to Redis at 127.0.0.1:6379)
    NS="loadtest-$$"; GWS=()
    for i in 0 1 2 3 4 5; do
      p=$((5561 + 2 * i))
      start_gateway "$p" $((p + 1)) --node-id "gw-$i" --namespace "$NS" --public-url "ws://127.0.0.1:$p/ws"
      GWS+=(--server-pid "$GW_PID")
    done
    "$BIN/balancer" --listen 127.0.0.1:8100 --namespace "$NS" >"$OUT/balancer.log" 2>&1 &
    PIDS+=("$!")
    # Bounded wait until the balancer hands out gateways (heartbeats are read every second).
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:8100/v1/gateway >/dev/null && break; sleep 0.1; done
    "$LT" --balancer http://127.0.0.1:8100 "${GWS[@]}" --label balancer-6-gateways --processes 6 \
      --connections 100000 --rate 5000 --max-pending 600 --hold 60s --settle 5s --active 0.01 --message-rate 1 \
      --report "$OUT/100k-balancer.json" --chart "$OUT/100k-balancer.svg" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
