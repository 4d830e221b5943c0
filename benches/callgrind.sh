#!/usr/bin/env bash
# Instructions per steady-state API call, counted by valgrind's callgrind: repeatable on this
# noisy machine, where wall-clock profiles are not. One command, loopback only, stops by itself.
#
# Starts its own Redis and the benchmark stack (provider, upstream, a signed-in session), then
# runs a bff release binary alone under callgrind (one worker) against them, twice: N1 calls,
# then N2 calls, each on one keep-alive connection after a warm-up. Start-up, warm-up and
# shutdown cost the same in both runs, so (Ir(N2) − Ir(N1)) / (N2 − N1) is what one call costs
# bff: HTTP parsing, cookie, token, proxying and the answer, and without the cache its Redis read.
#
#   benches/callgrind.sh                       # this tree's build, cache on and off
#   BIN=/path/to/older/bff CACHE=omit benches/callgrind.sh   # a build without tokens.local_cache
#   KIND=chunked N1=200 N2=1200 benches/callgrind.sh
#   TRACES="off on sampled" CACHE=true benches/callgrind.sh   # also exporting every span
#                                        (OTLP/HTTP), or with sampling_ratio = 0.1
# Set KEEP=dir to keep the callgrind output files (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-200}
N2=${N2:-1200}
KIND=${KIND:-length}
CACHE=${CACHE:-"true false"}
TRACES=${TRACES:-off}

command -v valgrind >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
command -v redis-server >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

. benches/common.sh
start_redis

echo "building (release)…" >&2
cargo build --release --bin bff >/dev/null 2>&1
BIN=${BIN:-target/release/bff}
start_stack "$(build_stack)" BENCH_OTLP_SINK=1
sink=$(stack_value OTLP_SINK)
issuer=$(stack_value ISSUER)
upstream=$(stack_value UPSTREAM)
public=$(stack_value BFF)
cookie=$(stack_value COOKIE)

# calls port n: n sequential calls on one keep-alive connection; fails on any other status.
calls() {
  python3 - "$1" "$2" "$KIND" "$cookie" <<'PY'
import http.client, sys
port, n, kind, cookie = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    conn.request("GET", f"/api/{kind}", headers={"Cookie": cookie, "X-CSRF": "1"})
    res = conn.getresponse()
    res.read()
    if res.status != 200:
        sys.exit(f"status {res.status}")
PY
}

# instructions cache traces n -> total Ir of one bff run that served n calls after the warm-up
# (traces=on: each span exported to the stack's counting collector in 100 ms batches; sampled:
# the same with sampling_ratio = 0.1).
instructions() {
  local cache=$1 traces=$2 n=$3 port out
  port=$(free_port)
  out="$work/callgrind.$cache.$traces.$n"
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\npublic_url = "%s"\nstatic_dir = ""\nworkers = 1\n' "$port" "$public"
    printf '[oidc]\nissuer = "%s"\nclient_id = "bench"\nclient_secret = "bench-secret"\n' "$issuer"
    printf '[session]\nredis_url = "%s"\nsecret = "%s"\nkey_prefix = "bench:"\n' "$BENCH_REDIS_URL" "$(printf 'bench-secret-%.0s' 1 2 3 4 5 6)"
    [ "$cache" = omit ] || printf '[tokens]\nlocal_cache = %s\n' "$cache"
    [ "$traces" = off ] || printf '[telemetry]\notlp_endpoint = "%s"\n' "$sink"
    [ "$traces" = sampled ] && printf 'sampling_ratio = 0.1\n'
    printf '[[api]]\nprefix = "/api"\nupstream = "%s"\n' "$upstream"
  } >"$work/bff.toml"
  OTEL_BSP_SCHEDULE_DELAY=100 RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" serve --config "$work/bff.toml" \
    >"$work/bff.out" 2>"$work/bff.err" &
  local pid=$!
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  calls "$port" 50 # warm-up: connections, pools, the cache's fill
  calls "$port" "$n"
  kill -TERM "$pid"
  wait "$pid" || true
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

echo "| build | cache | traces | Ir per call | calls measured |"
echo "|---|---|---|---:|---:|"
for cache in $CACHE; do
  for traces in $TRACES; do
    a=$(instructions "$cache" "$traces" "$N1")
    b=$(instructions "$cache" "$traces" "$N2")
    echo "| $BIN | $cache | $traces | $(((b - a) / (N2 - N1))) | $((N2 - N1)) |"
  done
done
