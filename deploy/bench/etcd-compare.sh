#!/usr/bin/env bash
# Issue 17's yardstick measured again on this machine, in the same hour as our own figure: a 3-member etcd
# (Debian's etcd-server and etcd-client: `apt-get install etcd-server etcd-client`; fsync on, loopback only)
# under `etcdctl check perf --load=l` (500 clients putting keys for 60 s; its rate cap, 8,000 puts/s, is above
# what 2 cores reach), alternating with `huatuo bench master --agents 500 --batch 1` (500 single-finding
# clients on a quiet 3-member master), ROUNDS times. Each side gets a fresh cluster and the machine to itself.
# Prints each side's operations per second and the machine's busy time per operation (the same measure as the
# bench's `CPU per committed finding` line; for etcd over the middle 50 s of its 60).
#
#   deploy/bench/etcd-compare.sh [ROUNDS]      (HUATUO=path/to/huatuo, default target/release/huatuo)
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${1:-1}
huatuo=${HUATUO:-target/release/huatuo}
for c in etcd etcdctl python3; do
  command -v "$c" >/dev/null || { echo "etcd-compare: $c not found (apt-get install etcd-server etcd-client)" >&2; exit 2; }
done
[ -x "$huatuo" ] || { echo "etcd-compare: $huatuo not built (cargo build --release -p huatuo)" >&2; exit 2; }
case "$rounds" in ''|*[!0-9]*|0) echo "etcd-compare: ROUNDS must be a positive number" >&2; exit 2 ;; esac

dir=$(mktemp -d /tmp/etcd-compare.XXXXXX)
members=()
stop_etcd() {
  for p in "${members[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${members[@]}"; do wait "$p" 2>/dev/null || true; done
  members=()
}
trap 'stop_etcd; rm -rf "$dir"' EXIT

# Six free loopback ports (3 peer, 3 client), picked by binding port 0.
free_ports() {
  python3 -c '
import socket
s = [socket.socket() for _ in range(6)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))'
}

# Busy and total ticks of the whole machine (/proc/stat: user nice system irq softirq steal; + idle iowait).
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# utime + stime of the given pids, in ticks.
ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$s"; }

start_etcd() {
  local ports cluster i
  read -r -a ports <<<"$(free_ports)"
  cluster="m1=http://127.0.0.1:${ports[0]},m2=http://127.0.0.1:${ports[1]},m3=http://127.0.0.1:${ports[2]}"
  endpoints="http://127.0.0.1:${ports[3]},http://127.0.0.1:${ports[4]},http://127.0.0.1:${ports[5]}"
  rm -rf "$dir"/m?
  for i in 0 1 2; do
    etcd --name "m$((i + 1))" --data-dir "$dir/m$((i + 1))" \
      --listen-peer-urls "http://127.0.0.1:${ports[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ports[i]}" \
      --listen-client-urls "http://127.0.0.1:${ports[i + 3]}" --advertise-client-urls "http://127.0.0.1:${ports[i + 3]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token etcd-compare \
      --quota-backend-bytes 8589934592 >"$dir/m$((i + 1)).log" 2>&1 &
    members+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd-compare: etcd did not become healthy; its logs:" >&2
  tail -n 5 "$dir"/m?.log >&2
  exit 1
}

etcd_round() {
  start_etcd
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" check perf --load=l >"$dir/perf.out" 2>&1 &
  local cp=$! b0 t0 b1 t1 e0 e1 c0 c1 w
  sleep 5
  kill -0 "$cp" 2>/dev/null || { echo "etcd-compare: etcdctl check perf did not start:" >&2; cat "$dir/perf.out" >&2; exit 1; }
  read -r b0 t0 < <(machine)
  e0=$(ticks "${members[@]}"); c0=$(ticks "$cp")
  sleep 50
  if ! kill -0 "$cp" 2>/dev/null; then
    echo "etcd-compare: etcdctl check perf ended before its 60 s:" >&2
    tr '\r' '\n' <"$dir/perf.out" | tail -n 5 >&2
    exit 1
  fi
  read -r b1 t1 < <(machine)
  e1=$(ticks "${members[@]}"); c1=$(ticks "$cp")
  wait "$cp" || true # check perf exits non-zero when its own 8,000/s target is missed
  w=$(tr '\r' '\n' <"$dir/perf.out" | grep -oE '[0-9]+ writes/s' | grep -oE '^[0-9]+' || true)
  if [ -z "$w" ] || [ "$w" -eq 0 ]; then
    echo "etcd-compare: no throughput from etcdctl check perf:" >&2
    tr '\r' '\n' <"$dir/perf.out" | tail -n 5 >&2
    exit 1
  fi
  awk -v w="$w" -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v e="$((e1 - e0))" -v c="$((c1 - c0))" \
    -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" 'BEGIN {
      per = 1e6 / hz / (w * 50)
      printf "etcd (3 members, fsync on), 500 put clients: %d puts/s; CPU per put: %.1f us of the machine'"'"'s busy time (%.2f of %d cores busy over 50 s): etcd members %.1f us, etcdctl %.1f us\n",
        w, b * per, n * b / t, n, e * per, c * per }'
  stop_etcd
}

for r in $(seq 1 "$rounds"); do
  echo "--- round $r of $rounds ($(date -u +%H:%M:%S) UTC)"
  "$huatuo" bench master --agents 500 --batch 1 --seconds 20 --watch-seconds 1 --kills 0 \
    | grep -E '^(machine now|throughput|CPU per committed finding)'
  etcd_round
done
