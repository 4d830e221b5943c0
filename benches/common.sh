# Shared by benches/load.sh and benches/callgrind.sh (sourced, not run): a work directory
# cleaned up on exit, a Redis of the benchmark's own on a free port, the release build of
# benches/stack.rs, and starting it with a signed-in session. The scripts may add to `pids`
# and to `cleanup_more` (a function) what they start themselves.

work=$(mktemp -d)
pids=()
stack_fds=()
cleanup_more() { :; }
cleanup() {
  for fd in "${stack_fds[@]}"; do exec {fd}>&- 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  cleanup_more
  [ -n "${redis_port:-}" ] && redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets redis_port and exports BENCH_REDIS_URL.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" >/dev/null
  export BENCH_REDIS_URL="redis://127.0.0.1:$redis_port"
}

# Prints the path of the release build of benches/stack.rs.
build_stack() {
  cargo build --release --bench stack --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "stack" and m.get("executable"):
        print(m["executable"])'
}

# start_stack BIN [env assignments…]: runs it until this script exits (its stdin is a fifo this
# shell holds open) and waits for its READY line. Its files are $work/$stack_name.* ("stack"
# unless the caller sets stack_name, to run several); its KEY=value lines are in the .out one.
start_stack() {
  local bin=$1 name=${stack_name:-stack} fd
  shift
  mkfifo "$work/$name.in"
  env "$@" RUST_LOG=warn "$bin" <"$work/$name.in" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  exec {fd}>"$work/$name.in"
  stack_fds+=("$fd")
  for _ in $(seq 1 100); do grep -q READY=1 "$work/$name.out" 2>/dev/null && break; sleep 0.2; done
  grep -q READY=1 "$work/$name.out" || { cat "$work/$name.err" >&2; exit 1; }
}

# stack_value KEY [NAME]: a value the stack (named NAME, default "stack") printed.
stack_value() { sed -n "s/^$1=//p" "$work/${2:-stack}.out"; }
