#!/usr/bin/env bash
# What exporting traces costs a proxied call. One command, loopback only, stops by itself.
#
# Three copies of the benches/stack.rs system (demo provider, upstream, a cached bff instance and
# a signed-in session), all with logs set up as `bff serve` does (level warn): one exports
# nothing, one exports every span (sampling 1.0, the default) and one a tenth of the traces
# (sampling_ratio = 0.1), each to a collector of its own that decodes and counts them. wrk with keep-alive connections against each in alternation,
# ROUNDS times per upstream kind; then how many spans per call reached the collector (the
# batch processor drops spans when its queue is full, OTEL_BSP_MAX_QUEUE_SIZE).
#
#   benches/traces.sh                      # defaults: 3 rounds × 10 s, 16 connections, 1 worker
#   ROUNDS=5 DURATION=20s CONNECTIONS=32 BFF_WORKERS=2 benches/traces.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
BFF_WORKERS=${BFF_WORKERS:-1}
KINDS=${KINDS:-length json4k}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

. benches/common.sh
start_redis
echo "building (release)…" >&2
bin=$(build_stack)
stack_name=plain start_stack "$bin" BENCH_BFF_WORKERS="$BFF_WORKERS" BENCH_TRACES=off
stack_name=traced start_stack "$bin" BENCH_BFF_WORKERS="$BFF_WORKERS" BENCH_TRACES=on
stack_name=sampled start_stack "$bin" BENCH_BFF_WORKERS="$BFF_WORKERS" BENCH_TRACES=on BENCH_SAMPLING=0.1

busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# spans NAME: how many spans that stack's collector has been sent (0 without one).
spans() {
  local sink
  sink=$(stack_value OTLP_SINK "$1")
  if [ -n "$sink" ]; then curl -s "$sink/counts" | sed -n 's/.*spans=\([0-9]*\).*/\1/p'; else echo 0; fi
}

# name kind -> name|kind|req/s|p50|p99|errors|CPU ticks|requests|spans exported
run() {
  local name=$1 kind=$2 url cookie out before after spans_before
  url="$(stack_value BFF "$name")/api/$kind"
  cookie=$(stack_value COOKIE "$name")
  spans_before=$(spans "$name")
  before=$(busy_ticks)
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Cookie: $cookie" -H "X-CSRF: 1" "$url")
  after=$(busy_ticks)
  # Spans of this run still in the batch processor's queue are exported within its delay (5 s).
  [ "$name" = plain ] || sleep 6
  local rps p50 p99 errors requests
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$name|$kind|$rps|$p50|$p99|${errors:-none}|$((after - before))|$requests|$(($(spans "$name") - spans_before))"
}

names="plain traced sampled"
for kind in $KINDS; do
  for name in $names; do
    wrk -t1 -c"$CONNECTIONS" -d1s -H "Cookie: $(stack_value COOKIE "$name")" -H "X-CSRF: 1" \
      "$(stack_value BFF "$name")/api/$kind" >/dev/null
  done
done
sleep 6

results=()
for round in $(seq 1 "$ROUNDS"); do
  for kind in $KINDS; do
    for name in $names; do results+=("$(run "$name" "$kind")"); done
    echo "round $round $kind: ${results[*]: -3}" >&2
  done
done

python3 - "$DURATION" "$CONNECTIONS" "$THREADS" "$BFF_WORKERS" "$(getconf CLK_TCK)" "$ROUNDS" "${results[@]}" <<'PY'
import sys, statistics
duration, conns, threads, workers, clk_tck, rounds = sys.argv[1:7]
rows = [r.split("|") for r in sys.argv[7:]]
def ms(v):
    v = v.strip()
    if v.endswith("us"): return float(v[:-2]) / 1000
    if v.endswith("ms"): return float(v[:-2])
    if v.endswith("s"): return float(v[:-1]) * 1000
    return float(v)
secs = float(duration.rstrip("s"))
by = {}
for name, kind, rps, p50, p99, errors, ticks, requests, spans in rows:
    cpu_us = int(ticks) / int(clk_tck) * 1e6 / (float(rps) * secs)
    by.setdefault((kind, name), []).append((float(rps), ms(p50), ms(p99), errors, cpu_us, int(requests), int(spans)))
med = lambda key, i: statistics.median(r[i] for r in by[key])
print(f"wrk -t{threads} -c{conns} -d{duration} (keep-alive), bff workers={workers}, {rounds} alternating rounds; medians")
print()
print("| upstream | traces | req/s | p50 ms | p99 ms | machine CPU µs/call | spans exported/call | errors |")
print("|---|---|---:|---:|---:|---:|---:|---|")
labels = {"plain": "off", "traced": "every trace", "sampled": "sampling_ratio 0.1"}
for kind in dict.fromkeys(k for k, _ in by):
    for name in labels:
        key = (kind, name)
        spans = sum(r[6] for r in by[key]) / max(1, sum(r[5] for r in by[key]))
        label = labels[name]
        print(f"| {kind} | {label} | {med(key, 0):,.0f} | {med(key, 1):.3f} | {med(key, 2):.3f} | {med(key, 4):.1f} | "
              f"{spans:.2f} | {', '.join(sorted(set(r[3] for r in by[key])))} |")
PY
