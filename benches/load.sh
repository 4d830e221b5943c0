#!/usr/bin/env bash
# Load benchmark, one command, loopback only, stops by itself.
#
# Starts its own Redis (own port), the demo provider, an upstream that answers like real APIs
# (a small JSON body with a Content-Length, the same body chunked, a 4 KiB JSON body, an event
# stream), two bff instances (release build) sharing that Redis and one signed-in session — one
# with the coherent local cache, one with `local_cache = false` — nginx as a plain reverse proxy,
# and nginx with a Lua access phase making the one Redis round trip the old contract cost per
# call (GET + PTTL of the session's real token set, pooled connections).
#
# Then, for each upstream kind, wrk with keep-alive connections in alternation against the
# upstream, nginx, nginx+redis, bff and bff without the cache, ROUNDS times, counting the Redis
# commands of every bff run (INFO commandstats); the added latency of server-sent events
# (upstream write → client read) direct, through nginx and through bff; and how long after a
# logout on one cached instance another refuses the session.
#
# Last, the protocol rows: nginx and bff over plain HTTP/1.1, TLS HTTP/1.1 and TLS HTTP/2
# (benches/manycore.sh, with BFF_WORKERS workers, nothing pinned on a small machine; PROTOCOL_ROWS=0
# leaves them out).
#
#   benches/load.sh                      # defaults: 3 rounds × 10 s, 16 connections, 1 worker
#   ROUNDS=5 DURATION=20s CONNECTIONS=32 BFF_WORKERS=2 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
BFF_WORKERS=${BFF_WORKERS:-1}
NGINX_WORKERS=${NGINX_WORKERS:-$BFF_WORKERS}
KINDS=${KINDS:-length chunked json4k}
SSE_EVENTS=${SSE_EVENTS:-400}
INVALIDATION_ROUNDS=${INVALIDATION_ROUNDS:-300}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
[ -f /usr/share/lua/5.1/nginx/redis.lua ] || need+=(lua-nginx-redis)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

. benches/common.sh
cleanup_more() {
  for pid in "$work"/*/nginx.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
}
start_redis

echo "building (release)…" >&2
bin=$(build_stack)
start_stack "$bin" BENCH_BFF_WORKERS="$BFF_WORKERS"
upstream=$(stack_value UPSTREAM)
bff=$(stack_value BFF)
bff_nocache=$(stack_value BFF_NOCACHE)
cookie=$(stack_value COOKIE)

# One nginx reverse proxy to the upstream, in its own directory under $work: the two instances
# differ only in what runs before proxy_pass (main-context lines, http-context lines, an access
# phase), so they pay the same proxy hop. Event streams are not buffered (as one sets nginx up
# for SSE).
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
    location /sse {
      $5
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
  nginx -c "$dir/nginx.conf" -p "$dir"
}

nginx_port=$(free_port)
start_nginx plain "$nginx_port" "" "" ""

# nginx + the old contract's one Redis round trip: the session's own token set, read as bff
# read it before the cache.
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
calls() { redis-cli -p "$redis_port" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {n += $3} END {print n+0}'; }

# name kind url [headers…] -> name|kind|req/s|p50|p99|errors|CPU ticks|requests|Redis commands
run() {
  local name=$1 kind=$2 url=$3; shift 3
  local out before after calls_before
  calls_before=$(calls)
  before=$(busy_ticks)
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
  after=$(busy_ticks)
  local rps p50 p99 errors requests
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  # redis-cli's own INFO is one command.
  echo "$name|$kind|$rps|$p50|$p99|${errors:-none}|$((after - before))|$requests|$(($(calls) - calls_before - 1))"
}

session=(-H "Cookie: $cookie" -H "X-CSRF: 1")
# Warm-up: connections, caches and pools.
for kind in $KINDS; do
  wrk -t1 -c"$CONNECTIONS" -d1s "$upstream/$kind" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$nginx_port/$kind" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$nginx_redis_port/$kind" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d1s "${session[@]}" "$bff/api/$kind" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d1s "${session[@]}" "$bff_nocache/api/$kind" >/dev/null
done

results=()
for round in $(seq 1 "$ROUNDS"); do
  for kind in $KINDS; do
    results+=("$(run upstream "$kind" "$upstream/$kind")")
    results+=("$(run nginx "$kind" "http://127.0.0.1:$nginx_port/$kind")")
    results+=("$(run nginx+redis "$kind" "http://127.0.0.1:$nginx_redis_port/$kind")")
    results+=("$(run bff "$kind" "$bff/api/$kind" "${session[@]}")")
    results+=("$(run bff-nocache "$kind" "$bff_nocache/api/$kind" "${session[@]}")")
    echo "round $round $kind: ${results[*]: -5}" >&2
  done
done

echo "server-sent events…" >&2
# These phases report what they measured; one that fails leaves its line out, not the table.
sse() { { "$bin" sse "$@" || true; } | sed -n 's/^SSE_US=//p' | tr '\n' ' '; }
sse_direct=$(sse "$upstream/sse?n=$SSE_EVENTS")
sse_nginx=$(sse "http://127.0.0.1:$nginx_port/sse?n=$SSE_EVENTS")
sse_bff=$(sse "$bff/api/sse?n=$SSE_EVENTS" "$cookie")

echo "invalidation delay…" >&2
invalidation=$({ RUST_LOG=warn "$bin" invalidation "$INVALIDATION_ROUNDS" || true; } | sed -n 's/^INVALIDATION_US=\([0-9]*\).*/\1/p' | tr '\n' ' ')

echo "tracking modes…" >&2
modes=$({ RUST_LOG=warn "$bin" tracking-modes || true; } | grep = | tr '\n' ' ')

python3 - "$DURATION" "$CONNECTIONS" "$THREADS" "$BFF_WORKERS" "$(getconf CLK_TCK)" "$ROUNDS" \
  "$sse_direct" "$sse_nginx" "$sse_bff" "$invalidation" "$modes" "${results[@]}" <<'PY'
import sys, statistics
duration, conns, threads, workers, clk_tck, rounds = sys.argv[1:7]
sse = {"direct": sys.argv[7], "nginx": sys.argv[8], "bff": sys.argv[9]}
invalidation = sys.argv[10]
modes = dict(kv.split("=", 1) for kv in sys.argv[11].split())
rows = [r.split("|") for r in sys.argv[12:]]
def ms(v):
    v = v.strip()
    if v.endswith("us"): return float(v[:-2]) / 1000
    if v.endswith("ms"): return float(v[:-2])
    if v.endswith("s"): return float(v[:-1]) * 1000
    return float(v)
secs = float(duration.rstrip("s"))
by = {}
for name, kind, rps, p50, p99, errors, ticks, requests, commands in rows:
    cpu_us = int(ticks) / int(clk_tck) * 1e6 / (float(rps) * secs)
    by.setdefault((kind, name), []).append(
        (float(rps), ms(p50), ms(p99), errors, cpu_us, int(requests), int(commands)))
med = lambda key, i: statistics.median(r[i] for r in by[key])
print(f"wrk -t{threads} -c{conns} -d{duration} (keep-alive), bff and nginx workers={workers}, "
      f"{rounds} alternating rounds; medians")
kinds = []
for kind, _ in by:
    if kind not in kinds: kinds.append(kind)
names = ["upstream", "nginx", "nginx+redis", "bff", "bff-nocache"]
for kind in kinds:
    print()
    print(f"**{kind}**")
    print()
    print("| target | req/s | × nginx | p50 ms | p99 ms | machine CPU µs/call | Redis cmds/call | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in names:
        key = (kind, name)
        if key not in by: continue
        cmds = ""
        if name.startswith("bff"):
            cmds = f"{sum(r[6] for r in by[key]) / max(1, sum(r[5] for r in by[key])):.4f}"
        print(f"| {name} | {med(key, 0):,.0f} | {med(key, 0) / med((kind, 'nginx'), 0):.2f} | "
              f"{med(key, 1):.3f} | {med(key, 2):.3f} | {med(key, 4):.1f} | {cmds} | "
              f"{', '.join(sorted(set(r[3] for r in by[key])))} |")
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
print()
print("Server-sent events, delay per event (upstream write → client read), µs:")
print()
print("| path | events | p50 | p99 | added p50 | added p99 |")
print("|---|---:|---:|---:|---:|---:|")
direct = [int(v) for v in sse["direct"].split()]
for name, values in sse.items():
    v = [int(x) for x in values.split()]
    if not v: continue
    print(f"| {name} | {len(v)} | {pct(v, 50)} | {pct(v, 99)} | {pct(v, 50) - pct(direct, 50)} | "
          f"{pct(v, 99) - pct(direct, 99)} |")
inv = [int(v) for v in invalidation.split()]
if inv:
    print()
    print(f"Invalidation: logout on one cached instance → the other refuses the session, over {len(inv)} "
          f"logouts: p50 {pct(inv, 50)} µs, p99 {pct(inv, 99)} µs, max {max(inv)} µs")
if modes:
    print()
    print("Tracking modes (Redis' own counts): invalidation messages to one instance per refresh: "
          f"default {modes.get('DEFAULT_MSGS_REFRESH')}, BCAST by prefix {modes.get('BCAST_MSGS_REFRESH')}; "
          f"per login, BCAST: {modes.get('BCAST_MSGS_LOGIN')}; server memory per tracked key (default "
          f"mode, per instance holding it): {modes.get('TRACKED_KEY_BYTES')} bytes")
PY

if [ "${PROTOCOL_ROWS:-1}" = 1 ]; then
  echo "protocols (benches/manycore.sh)…" >&2
  echo
  WORKERS=$BFF_WORKERS DURATION=${DURATION%s} THREADS=$THREADS CONNECTIONS=$CONNECTIONS H2_CONNECTIONS=$(((CONNECTIONS + 3) / 4)) \
    benches/manycore.sh
fi
