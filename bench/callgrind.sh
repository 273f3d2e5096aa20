#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable on a noisy
# machine, so it is the number to optimise against.
#   bench/callgrind.sh [FNLB_BINARY] [SECONDS]
# Two figures: "per request" divides the whole run (start-up's ~11 M instructions included, so
# it moves with the number of requests valgrind manages in the time); "steady" counts only the
# load (a dump after a 2 s warm-up, another as the load ends: the second part), the per-call
# cost itself.
# Needs valgrind, nginx (backend) and wrk: installed from Debian's packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/fnlb}
seconds=${2:-20}
for p in valgrind nginx wrk; do
  command -v $p >/dev/null || [ -x /usr/sbin/$p ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nginx-light wrk; }
done
work=$(mktemp -d)
trap 'kill $(cat $work/backend.pid 2>/dev/null) 2>/dev/null; kill $lbpid 2>/dev/null; rm -rf $work' EXIT
cat > $work/backend.conf <<CONF
worker_processes 1; daemon on; pid $work/backend.pid; error_log $work/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19201; add_header XXX-FXLB-WAIT 1ms always;
    location = /version { default_type application/json; return 200 '{"version":"0.3.753"}'; }
    location / { return 200 'hello'; } } }
CONF
/usr/sbin/nginx -c $work/backend.conf -p $work
valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file=$work/cg.out "$bin" -threads 1 -listen 127.0.0.1:18299 \
  -mgmt-listen 127.0.0.1:18299 -nodes 127.0.0.1:19201 -hc-interval 60 > $work/lb.log 2>&1 &
lbpid=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:18299/r/app/hello >/dev/null && break; sleep 0.2; done
wrk -t1 -c8 -d2s http://127.0.0.1:18299/r/app/hello > $work/warm.txt
warm=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' $work/warm.txt)
callgrind_control -d $lbpid >/dev/null   # part 1: start-up and warm-up
out=$(wrk -t1 -c8 -d${seconds}s http://127.0.0.1:18299/r/app/hello)
callgrind_control -d $lbpid >/dev/null   # part 2: the load alone
reqs=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
kill -INT $lbpid; wait $lbpid || true
part() { sed -n 's/^summary: //p' "$1"; }
first=$(part $work/cg.out.1)
steady=$(part $work/cg.out.2)
total=$((first + steady + $(part $work/cg.out)))
all=$((reqs + warm))
echo "requests: $all  instructions: $total  per request: $((total / all))  steady: $((steady / reqs)) ($reqs requests)"
cp $work/cg.out.2 /tmp/callgrind.out
callgrind_annotate /tmp/callgrind.out 2>/dev/null | head -40 > /tmp/callgrind-top.txt
echo "top functions: /tmp/callgrind-top.txt; the steady profile: /tmp/callgrind.out"
