#!/usr/bin/env bash
# The protocol benchmark (nginx and bff over plain HTTP/1.1, TLS HTTP/1.1 and TLS HTTP/2, 1 to 6
# workers, pinned, CPU per call from /proc) as one self-contained folder that runs on a machine
# with no network and nothing installed: benches/manycore/run next to the programs it needs, their
# shared libraries and the loader they run under, a certificate and the provider's templates.
#
#   benches/manycore.sh                  # bundle into target/manycore, then run it here
#   benches/manycore.sh bundle [DIR]     # only make the bundle (default target/manycore)
#   DIR/run                              # on the other machine; WORKERS, DURATION… as in run
#   tar xzf manycore.tar.gz -C /tmp && /tmp/manycore/run   # the same from the one-file archive
#
# On a machine with 16 cores or more the run pins processes as issue 27 measured (bff or nginx on
# cores 0..N-1, the load generator on 6-11, the upstream on 12-15); on a smaller one it pins
# nothing (PIN=no), and the load generator shares the cores with what it measures.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}
dir=${2:-${CARGO_TARGET_DIR:-target}/manycore}
case $mode in all | bundle) ;; *) echo "usage: $0 [bundle [DIR]]" >&2; exit 2 ;; esac

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

echo "building (release)…" >&2
built=$(cargo build --release --bin bff --bench stack --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("bff", "stack"):
        print(m["target"]["name"], m["executable"])')
bff_bin=$(awk '$1 == "bff" {print $2}' <<<"$built")
stack_bin=$(awk '$1 == "stack" {print $2}' <<<"$built")
[ -x "$bff_bin" ] && [ -x "$stack_bin" ] || { echo "the release build failed: cargo build --release --bin bff --bench stack" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib" "$dir/tls"
# Ours without their symbols (half their size); the system's as Debian ships them.
strip -o "$dir/bin/bff" "$bff_bin"
strip -o "$dir/bin/stack" "$stack_bin"
for program in nginx wrk h2load redis-server taskset; do
  cp -L "$(command -v "$program")" "$dir/bin/$program"
done
# Every shared library any of them loads, and the loader itself, which `run` starts each with.
for program in "$dir"/bin/*; do
  ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'
done | sort -u | while read -r lib; do
  cp -L "$lib" "$dir/lib/$(basename "$lib")"
done
loader="$dir/lib/ld-linux-x86-64.so.2"
[ -f "$loader" ] || { echo "no ld-linux-x86-64.so.2 among the libraries" >&2; exit 1; }
# What the loader resolves, run as `run` runs it, must all come from the bundle.
for program in "$dir"/bin/*; do
  outside=$("$loader" --library-path "$dir/lib" --list "$program" | awk -v lib="$(cd "$dir/lib" && pwd)/" \
    '$2 == "=>" && index($3, lib) != 1 && $3 ~ /^\// {print $3}')
  [ -z "$outside" ] || { echo "$program would load from outside the bundle: $outside" >&2; exit 1; }
done
cp -r templates "$dir/templates"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>/dev/null
cp benches/manycore/run "$dir/run"
# One file to carry to the other machine (the folder is over 64 MiB, the archive about 27 MiB).
tar czf "$dir.tar.gz" -C "$(dirname "$dir")" "$(basename "$dir")"
echo "bundle: $dir ($(du -sh "$dir" | cut -f1)), and as one file $dir.tar.gz ($(du -sh "$dir.tar.gz" | cut -f1))" >&2

[ "$mode" = bundle ] || "$dir/run"
