#!/usr/bin/env bash
# The soak (issue 22): a benchmark, not CI. Loopback only, stops by itself.
#
# Starts its own Redis (a free port, never 6379), builds bff and benches/soak.rs in release mode
# and runs the soak: the demo provider and an upstream in the driver's process, two `bff serve`
# processes (target/release/bff) sharing that Redis with the local cache on, SOAK_SESSIONS
# sessions signed in over both, steady calls, refreshes, sign-ins and sign-outs, and hostile
# noise (padded cookies, trickling bodies, 401 storms, dead cookies, empty path segments) for
# SOAK_SECS; RSS of each instance sampled every SOAK_SAMPLE_SECS. Prints a table and a verdict
# (RSS flat within 10 % after the warm-up, no legitimate call failed) and the bytes per cached
# session. See benches/soak.rs for every variable.
#
#   benches/soak.sh                                            # 10,000 sessions, 30 minutes
#   SOAK_SESSIONS=2000 SOAK_SECS=300 SOAK_SAMPLE_SECS=30 benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_SESSIONS=${SOAK_SESSIONS:-10000}
export SOAK_SECS=${SOAK_SECS:-1800}
export SOAK_SAMPLE_SECS=${SOAK_SAMPLE_SECS:-60}

command -v redis-server >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
}

. benches/common.sh
start_redis
export SOAK_WORK=$work

echo "building (release)…" >&2
# One build for both: the bench's dev-dependencies change features of shared crates, and building
# the binary alone would build those crates a second time.
export SOAK_BFF=$PWD/target/release/bff
bin=$(cargo build --release --bin bff --bench soak --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "soak" and m.get("executable"):
        print(m["executable"])')
[ -n "$bin" ] || { echo "the soak did not build" >&2; exit 1; }

# Each bff's log (warnings and errors) stays in $work; the tail of each is shown at the end.
status=0
"$bin" || status=$?
for name in bff-a bff-b; do
  echo "--- $name.log: $(wc -l <"$work/$name.log") lines; the last 5:" >&2
  tail -5 "$work/$name.log" >&2
done
exit $status
