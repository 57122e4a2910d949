#!/usr/bin/env bash
# dnsperf load test of dnsauth against a bare miekg/dns server and NSD, in one run, side by side.
#
#   bench/dns/run.sh            # DURATION=15 ROUNDS=3 REPLS=100000
#
# Each server runs pinned to CPU 0 (Go servers with GOMAXPROCS=1, NSD with server-count 1) and
# dnsperf pinned to CPU 1. Servers:
#   bare     a miekg/dns server answering a fixed A record        (bench/dns/server -mode bare)
#   dnsauth  dnsauth over an in-process lore Directory of REPLS repls (bench/dns/server -mode dnsauth)
#   packet   the same dnsauth Handler on dnsauth.PacketServer for UDP (batched recvmmsg/sendmmsg,
#            answers reused for 2 s; TCP as dnsauth)     (bench/dns/server -mode dnsauth -packet)
#   blocking the same with PacketServer.Blocking: a blocking recvmmsg on a locked OS thread
#            instead of Go's netpoller                (... -packet -blocking)
#   nsd      NSD with a zone file of the same shape (REPLS names with A and AAAA)
# Query mix (QUERIES lines, repeated for DURATION s): 80% A and 10% AAAA of random repl names,
# 10% A of names that do not exist (NXDOMAIN). Over UDP and TCP; ROUNDS rounds, servers
# interleaved within a round so drift on this shared machine hits all of them alike; the
# summary prints each server's median qps and its ratio to bare.
#
# Needs: go, dnsperf, nsd, dig (apt-get install dnsperf nsd bind9-dnsutils), taskset, 2 CPUs.
# Only loopback (127.0.0.1) is used.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
REPLS=${REPLS:-100000}
QUERIES=${QUERIES:-100000}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-100}
ZONE=repl.test
PORT_BARE=${PORT_BARE:-5390}
PORT_DNSAUTH=${PORT_DNSAUTH:-5391}
PORT_NSD=${PORT_NSD:-5392}
PORT_PACKET=${PORT_PACKET:-5393}
PORT_BLOCKING=${PORT_BLOCKING:-5394}
MODES=${MODES:-udp tcp}
SERVERS=${SERVERS:-bare dnsauth packet blocking nsd} # which of them to measure (all are started)
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

for cmd in go dnsperf nsd dig taskset; do
  command -v "$cmd" >/dev/null || { echo "run.sh: $cmd not found (apt-get install dnsperf nsd bind9-dnsutils)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/dnsbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building and generating (repls=$REPLS queries=$QUERIES) in $work"
go build -o "$work/server" ./bench/dns/server

# Query file and NSD zone of the same shape as the server's directory.
awk -v n="$REPLS" -v q="$QUERIES" -v zone="$ZONE" 'BEGIN {
  srand(42)
  for (i = 0; i < q; i++) {
    r = int(rand() * n); k = i % 10
    if (k < 8)       printf "s%d.o%d.%s A\n", r, int(r / 10), zone
    else if (k == 8) printf "s%d.o%d.%s AAAA\n", r, int(r / 10), zone
    else             printf "nx%d.o%d.%s A\n", r, int(r / 10), zone
  }
}' > "$work/queries.txt"
awk -v n="$REPLS" -v zone="$ZONE" 'BEGIN {
  printf "$ORIGIN %s.\n$TTL 60\n", zone
  printf "@ IN SOA ns1.%s. hostmaster.%s. 1 3600 600 604800 60\n@ IN NS ns1.%s.\nns1 IN A 127.0.0.53\n", zone, zone, zone
  for (i = 0; i < n; i++) {
    k = i % 4
    printf "s%d.o%d IN A 127.0.%d.1\ns%d.o%d IN AAAA fd00::%d:1\n", i, int(i / 10), k + 1, i, int(i / 10), k + 1
  }
}' > "$work/$ZONE.zone"
cat > "$work/nsd.conf" <<NSD
server:
  ip-address: 127.0.0.1@$PORT_NSD
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$work"
  database: ""
  zonelistfile: "$work/zone.list"
  xfrdfile: "$work/xfrd.state"
  xfrdir: "$work"
  pidfile: "$work/nsd.pid"
  logfile: "$work/nsd.log"
  hide-version: yes
  rrl-ratelimit: 0
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: $ZONE
  zonefile: $ZONE.zone
NSD

# wait_ready PORT: bounded poll with a real query until the server answers the zone's SOA.
wait_ready() {
  for _ in $(seq 1 600); do
    if dig +time=1 +tries=1 +short -p "$1" @127.0.0.1 "$ZONE" SOA >/dev/null 2>&1 &&
       [ -n "$(dig +time=1 +tries=1 +short -p "$1" @127.0.0.1 "s1.o0.$ZONE" A)" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "run.sh: server on port $1 not ready" >&2
  return 1
}

echo "== starting servers on CPU $SERVER_CPU"
GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$work/server" -mode bare -addr "127.0.0.1:$PORT_BARE" > "$work/bare.log" 2>&1 &
pids+=($!)
GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$work/server" -mode dnsauth -repls "$REPLS" -addr "127.0.0.1:$PORT_DNSAUTH" > "$work/dnsauth.log" 2>&1 &
pids+=($!)
# (Until 2026-11-22 a third server ran dnsauth with GOGC=400, which helped while lore's store
# was a pointerful ~80 MB heap; with the GC-noscan store it made no difference and was dropped.)
taskset -c "$SERVER_CPU" nsd -d -c "$work/nsd.conf" > "$work/nsd.out" 2>&1 &
pids+=($!)
GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$work/server" -mode dnsauth -packet -repls "$REPLS" -addr "127.0.0.1:$PORT_PACKET" > "$work/packet.log" 2>&1 &
pids+=($!)
GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$work/server" -mode dnsauth -packet -blocking -repls "$REPLS" -addr "127.0.0.1:$PORT_BLOCKING" > "$work/blocking.log" 2>&1 &
pids+=($!)
wait_ready "$PORT_BARE"; wait_ready "$PORT_DNSAUTH"; wait_ready "$PORT_NSD"; wait_ready "$PORT_PACKET"; wait_ready "$PORT_BLOCKING"

# Check the answers before measuring them: same rcodes from dnsauth and NSD.
for q in "s12345.o1234.$ZONE A" "s12345.o1234.$ZONE AAAA" "nx1.o0.$ZONE A"; do
  a=$(dig +norec -p "$PORT_DNSAUTH" @127.0.0.1 $q | grep -o 'status: [A-Z]*')
  n=$(dig +norec -p "$PORT_NSD" @127.0.0.1 $q | grep -o 'status: [A-Z]*')
  k=$(dig +norec -p "$PORT_PACKET" @127.0.0.1 $q | grep -o 'status: [A-Z]*')
  b=$(dig +norec -p "$PORT_BLOCKING" @127.0.0.1 $q | grep -o 'status: [A-Z]*')
  echo "   $q: dnsauth $a, packet $k, blocking $b, nsd $n"
  [ "$a" = "$n" ] && [ "$k" = "$n" ] && [ "$b" = "$n" ] || { echo "run.sh: dnsauth and NSD disagree on $q" >&2; exit 1; }
done

# cpu_ticks PID: CPU time (utime+stime, clock ticks) of PID and all its descendants (NSD's
# original process becomes xfrd; its serving process is a grandchild). Queries per server CPU second is the cost metric that survives other load on
# a shared machine; qps alone does not.
descendants() {
  local c
  echo "$1"
  for c in $(pgrep -P "$1" || true); do descendants "$c"; done
}
cpu_ticks() {
  local total=0 p
  for p in $(descendants "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
# steal_ticks: CPU time the hypervisor gave to something else while this VM wanted to run
# (/proc/stat's steal column, all CPUs). A round with steal measured the host, not the servers.
steal_ticks() { awk '/^cpu / {print $9; exit}' /proc/stat; }

declare -A port=([bare]=$PORT_BARE [dnsauth]=$PORT_DNSAUTH [nsd]=$PORT_NSD [packet]=$PORT_PACKET [blocking]=$PORT_BLOCKING)
declare -A pid=([bare]=${pids[0]} [dnsauth]=${pids[1]} [nsd]=${pids[2]} [packet]=${pids[3]} [blocking]=${pids[4]})
results="$work/results.txt"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    for srv in $SERVERS; do
      t0=$(cpu_ticks "${pid[$srv]}")
      s0=$(steal_ticks)
      out=$(taskset -c "$CLIENT_CPU" dnsperf -m "$mode" -s 127.0.0.1 -p "${port[$srv]}" -d "$work/queries.txt" \
        -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" -T 1 2>&1)
      t1=$(cpu_ticks "${pid[$srv]}")
      steal=$(awk -v t=$(($(steal_ticks) - s0)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
      qps=$(echo "$out" | awk '/Queries per second/ {print $4; exit}')
      done_q=$(echo "$out" | awk '/Queries completed/ {print $3; exit}')
      lost=$(echo "$out" | awk '/Queries lost/ {print $3; exit}')
      lat=$(echo "$out" | awk '/Average Latency/ {print $4; exit}')
      rc=$(echo "$out" | awk '/Response codes/ {sub(/.*codes: */, ""); print; exit}')
      cpu=$(awk -v t=$((t1 - t0)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
      per_cpu=$(awk -v q="$done_q" -v c="$cpu" 'BEGIN {if (c > 0) printf "%.0f", q / c; else print 0}')
      echo "round $round $mode $srv qps=$qps q/cpu-s=$per_cpu server_cpu_s=$cpu host_steal_s=$steal lost=$lost avg_latency_s=$lat codes: $rc"
      echo "$mode $srv $qps $per_cpu" >> "$results"
    done
  done
done

median() { sort -n | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
first=${SERVERS%% *}
echo "== medians over $ROUNDS rounds of ${DURATION}s (ratio to $first)"
printf "%-4s %-10s %10s %6s %14s %6s\n" mode server qps ratio "q/server-cpu-s" ratio
for mode in $MODES; do
  for srv in $SERVERS; do
    q=$(awk -v m="$mode" -v s="$srv" '$1 == m && $2 == s {print $3}' "$results" | median)
    c=$(awk -v m="$mode" -v s="$srv" '$1 == m && $2 == s {print $4}' "$results" | median)
    [ "$srv" = "$first" ] && { bq=$q; bc=$c; }
    printf "%-4s %-10s %10.0f %5.2fx %14.0f %5.2fx\n" "$mode" "$srv" "$q" "$(awk -v a="$q" -v b="$bq" 'BEGIN {print a / b}')" \
      "$c" "$(awk -v a="$c" -v b="$bc" 'BEGIN {print (b > 0) ? a / b : 0}')"
  done
done
