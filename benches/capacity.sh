#!/usr/bin/env bash
# Capacity: Redis bytes per session (MEMORY USAGE of real sessions' keys) and bff's RSS at idle,
# with sessions, and under load. Runs `bff demo` (release) against its own Redis on a free port,
# signs in N users through the demo provider's login form, measures, stops everything.
#   benches/capacity.sh            # N=30: the default login_starts_per_minute allows 30 a minute
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/bff
[ -x "$BIN" ] || cargo build --release --bin bff
RP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" >/dev/null
sleep 0.5
base_mem=$(redis-cli -p $RP info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')

BFF_SESSION__REDIS_URL=redis://127.0.0.1:$RP $BIN demo --port 7580 --idp-port 7581 --api-port 7582 --access-token-ttl 300 > "$work"/demo.out 2>&1 &
PID=$!
sleep 2
echo "idle RSS (whole demo process: bff + demo IdP + demo API): $(ps -o rss= -p $PID) KiB"
N=${N:-30}
for i in $(seq 1 $N); do
  jar="$work"/jar$i
  loc=$(curl -s -c $jar -b $jar -o /dev/null -w '%{redirect_url}' http://127.0.0.1:7580/auth/login)
  inter=$(curl -s -c $jar -b $jar "$loc" | sed -n 's/.*name="interaction" value="\([^"]*\)".*/\1/p')
  cb=$(curl -s -c $jar -b $jar -o /dev/null -w '%{redirect_url}' --data-urlencode "interaction=$inter" --data-urlencode "username=user$i" http://127.0.0.1:7581/login)
  curl -s -c $jar -b $jar -o /dev/null "$cb"
done
sessions=$(redis-cli -p $RP --scan --pattern 'bff-demo:*:session' | wc -l)
echo "sessions: $sessions"
total=0; count=0
for k in $(redis-cli -p $RP --scan --pattern 'bff-demo:*' | grep -v 'login'); do
  b=$(redis-cli -p $RP memory usage "$k"); total=$((total + b)); count=$((count+1))
done
echo "keys (without pending-login entries): $count, MEMORY USAGE sum: $total bytes, per session: $((total / sessions)) bytes"
for kind in session tokens by-sid by-sub; do
  k=$(redis-cli -p $RP --scan --pattern "bff-demo:*$kind*" | head -1)
  echo "  one $kind key: $(redis-cli -p $RP memory usage "$k") bytes"
done
mem=$(redis-cli -p $RP info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
echo "used_memory delta: $((mem - base_mem)) bytes for $sessions sessions (incl. pending-login entries): $(((mem - base_mem) / sessions)) per session"
echo "RSS after $sessions sessions: $(ps -o rss= -p $PID) KiB"
cookie=$(awk '$6=="bff" {print "bff="$7}' "$work"/jar1)
wrk -t1 -c32 -d10s -H "Cookie: $cookie" -H "X-CSRF: 1" http://127.0.0.1:7580/api/hello > "$work"/wrk.out &
sleep 5; echo "RSS under load (32 connections on /api/hello): $(ps -o rss= -p $PID) KiB"; sleep 6
grep -E "Requests/sec|Non-2xx" "$work"/wrk.out || true
kill $PID; redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true
