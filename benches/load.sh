#!/usr/bin/env bash
# Load benchmark, one command, loopback only, stops by itself.
#
# Starts its own Redis (own port), the demo provider, a minimal upstream and bff (release build)
# with a signed-in session, nginx as a plain reverse proxy to the same upstream, and nginx with a
# Lua access phase that makes the one Redis round trip bff's contract allows (GET + PTTL of the
# session's real token set, pooled connections) before proxying: what the fastest proxy we know
# achieves when it does only that. Then runs wrk in alternation against (a) the upstream,
# (b) nginx, (c) nginx + Redis, (d) bff, ROUNDS times, and counts the Redis commands bff issued
# per proxied call (INFO commandstats).
#
#   benches/load.sh                      # defaults: 3 rounds × 10 s, 16 connections
#   ROUNDS=5 DURATION=20s CONNECTIONS=32 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
BFF_WORKERS=${BFF_WORKERS:-1}
NGINX_WORKERS=${NGINX_WORKERS:-$BFF_WORKERS}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
[ -f /usr/share/lua/5.1/nginx/redis.lua ] || need+=(lua-nginx-redis)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; fi

work=$(mktemp -d)
pids=()
cleanup() {
  exec 3>&- 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for pid in "$work"/*/nginx.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  [ -n "${redis_port:-}" ] && redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" >/dev/null

echo "building (release)…" >&2
bin=$(cargo build --release --bench stack --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "stack" and m.get("executable"):
        print(m["executable"])')

mkfifo "$work/stdin"
BENCH_REDIS_URL="redis://127.0.0.1:$redis_port" BENCH_BFF_WORKERS="$BFF_WORKERS" RUST_LOG=warn \
  "$bin" <"$work/stdin" >"$work/stack.out" 2>"$work/stack.err" &
pids+=($!)
exec 3>"$work/stdin"
for _ in $(seq 1 100); do grep -q READY=1 "$work/stack.out" 2>/dev/null && break; sleep 0.2; done
grep -q READY=1 "$work/stack.out" || { cat "$work/stack.err" >&2; exit 1; }
upstream=$(sed -n 's/^UPSTREAM=//p' "$work/stack.out")
bff=$(sed -n 's/^BFF=//p' "$work/stack.out")
cookie=$(sed -n 's/^COOKIE=//p' "$work/stack.out")

# One nginx reverse proxy to the upstream, in its own directory under $work: the two instances
# differ only in what runs before proxy_pass (main-context lines, http-context lines, an access
# phase), so they pay the same proxy hop.
start_nginx() { # name port main-lines http-lines access-block
  local dir="$work/$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX
$3
worker_processes $NGINX_WORKERS;
pid $dir/nginx.pid;
error_log $dir/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  $4
  upstream app { server ${upstream#http://}; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location / {
      $5
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
  nginx -c "$dir/nginx.conf" -p "$dir"
}

nginx_port=$(free_port)
start_nginx plain "$nginx_port" "" "" ""

# nginx + the contract's one Redis round trip: the session's own token set, read as bff reads it.
token_key=$(redis-cli -p "$redis_port" --scan --pattern 'bench:*tokens*' | head -1)
[ -n "$token_key" ] || { echo "no token set in Redis" >&2; exit 1; }
nginx_redis_port=$(free_port)
start_nginx lua "$nginx_redis_port" \
  "load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;" \
  'lua_package_path "/usr/share/lua/5.1/?.lua;;";' \
  "access_by_lua_block {
        local redis = require \"nginx.redis\"
        local r = redis:new()
        r:set_timeout(2000)
        if not r:connect(\"127.0.0.1\", $redis_port) then return ngx.exit(503) end
        r:init_pipeline()
        r:get(\"$token_key\")
        r:pttl(\"$token_key\")
        local res = r:commit_pipeline()
        r:set_keepalive(10000, 64)
        if not res or res[1] == ngx.null then return ngx.exit(401) end
        ngx.req.set_header(\"Authorization\", \"Bearer \" .. ngx.encode_base64(string.sub(res[1], 1, 675)))
      }"

busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

run() { # name url [headers…] -> name|req/s|p50|p99|errors|machine CPU µs per request
  local name=$1 url=$2; shift 2
  local out before after
  before=$(busy_ticks)
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
  after=$(busy_ticks)
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$name|$rps|$p50|$p99|${errors:-none}|$((after - before))"
}

calls() { redis-cli -p "$redis_port" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {n += $3} END {print n+0}'; }
writes() { redis-cli -p "$redis_port" info commandstats | awk -F'[=,:]' '/^cmdstat_(set|pexpire|expire|del|eval|evalsha|getdel|sadd|srem)/ {n += $3} END {print n+0}'; }

# Warm-up: connections, JIT-free but caches and pools.
wrk -t1 -c"$CONNECTIONS" -d2s "$upstream/api/items" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$nginx_port/api/items" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$nginx_redis_port/api/items" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s -H "Cookie: $cookie" -H "X-CSRF: 1" "$bff/api/items" >/dev/null

results=()
bff_calls=0
bff_writes=0
for round in $(seq 1 "$ROUNDS"); do
  results+=("$(run upstream "$upstream/items")")
  results+=("$(run nginx "http://127.0.0.1:$nginx_port/items")")
  results+=("$(run nginx+redis "http://127.0.0.1:$nginx_redis_port/items")")
  calls_before=$(calls)
  writes_before=$(writes)
  results+=("$(run bff "$bff/api/items" -H "Cookie: $cookie" -H "X-CSRF: 1")")
  bff_calls=$((bff_calls + $(calls) - calls_before))
  bff_writes=$((bff_writes + $(writes) - writes_before))
  echo "round $round: ${results[-4]} / ${results[-3]} / ${results[-2]} / ${results[-1]}" >&2
done

python3 - "$DURATION" "$CONNECTIONS" "$THREADS" "$BFF_WORKERS" "$bff_calls" "$bff_writes" "$(getconf CLK_TCK)" "${results[@]}" <<'PY'
import sys, statistics
duration, conns, threads, workers, calls, writes, clk_tck = sys.argv[1:8]
rows = [r.split("|") for r in sys.argv[8:]]
def ms(v):
    v = v.strip()
    if v.endswith("us"): return float(v[:-2]) / 1000
    if v.endswith("ms"): return float(v[:-2])
    if v.endswith("s"): return float(v[:-1]) * 1000
    return float(v)
by = {}
secs = float(duration.rstrip("s"))
for name, rps, p50, p99, errors, ticks in rows:
    cpu_us = int(ticks) / int(clk_tck) * 1e6 / (float(rps) * secs)
    by.setdefault(name, []).append((float(rps), ms(p50), ms(p99), errors, cpu_us))
print(f"wrk -t{threads} -c{conns} -d{duration}, bff workers={workers}, {len(by['bff'])} alternating rounds; medians")
print()
print("| target | req/s | p50 ms | p99 ms | machine CPU µs per call | errors |")
print("|---|---:|---:|---:|---:|---|")
med = lambda name, i: statistics.median(r[i] for r in by[name])
for name in ["upstream", "nginx", "nginx+redis", "bff"]:
    print(f"| {name} | {med(name, 0):,.0f} | {med(name, 1):.3f} | {med(name, 2):.3f} | {med(name, 4):.1f} | "
          f"{', '.join(sorted(set(r[3] for r in by[name])))} |")
total = sum(r[0] for r in by["bff"]) * secs
print()
print(f"bff / nginx throughput: {med('bff', 0) / med('nginx', 0):.2f}×; bff p99 − nginx p99: "
      f"{med('bff', 2) - med('nginx', 2):+.3f} ms")
print(f"nginx+redis / nginx throughput: {med('nginx+redis', 0) / med('nginx', 0):.2f}× (the same Redis round trip, nothing else)")
print(f"bff / nginx+redis throughput: {med('bff', 0) / med('nginx+redis', 0):.2f}×")
print(f"Redis commands per proxied call: {int(calls) / total:.3f} (writes: {int(writes) / total:.4f}) over ~{total:,.0f} calls")
PY
