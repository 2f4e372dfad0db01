#!/usr/bin/env bash
# The per-request floor: what the kernel and the scheduler do per proxied request, for nginx,
# haproxy, a bare Pingora proxy and bearerd, in one run, on loopback, each with one worker
# thread in front of one nginx upstream (wrk: 1 thread, 64 connections). Per request:
#   - CPU in user and in kernel mode (utime/stime of every thread, /proc/PID/task/*/stat);
#   - voluntary and involuntary context switches (/proc/PID/task/*/status);
#   - wake-ups: the times a thread was put on a CPU (/proc/PID/task/*/schedstat, third field);
#   - the threads that ran (those with at least 1 % of the process's CPU);
#   - syscalls by kind, from a separate, shorter run under `strace -c -f` (strace slows the
#     process down; the counts per request stay what they are).
# Then the levers (LEVERS=1, the default): the same counters for bare Pingora and bearerd with
# one setting changed at a time.
#
#   benches/floor.sh                # DURATION=10 s per run, STRACE_DURATION=3 s, ROUNDS=3
#   LEVERS=0 benches/floor.sh       # only the four proxies
#   SKIP_BUILD=1 benches/floor.sh   # with the release binaries already in target/
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
STRACE_DURATION=${STRACE_DURATION:-3}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
LEVERS=${LEVERS:-1}

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v strace >/dev/null 2>&1 || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "building release binaries (bearerd, bare Pingora)…" >&2
  cargo build --release --quiet --bin bearerd --example bare_pingora
fi
work=$(mktemp -d /tmp/bearerd-floor.XXXXXX)
cp target/release/bearerd target/release/examples/bare_pingora "$work/"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# port, wait_http, start_nginx_upstream, start_nginx_proxy
source benches/common.sh

UP=$(port); TOK=$(port); NGX=$(port); HAP=$(port); BP=$(port); BD=$(port); BDA=$(port)
mkdir -p "$work/hap"
start_nginx_upstream
start_nginx_proxy 1
NGX_WORKER=$(pgrep -P "$NGX_MASTER" | head -1)

cat > "$work/hap/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend px
  bind 127.0.0.1:$HAP
  http-request set-header Authorization "Bearer static-benchmark-token"
  default_backend up
backend up
  server up 127.0.0.1:$UP
EOF
"$HAPROXY" -db -f "$work/hap/haproxy.cfg" >/dev/null 2>&1 & HAP_PID=$!; pids+=($HAP_PID)
wait_http "http://127.0.0.1:$HAP/"

start_bare() { # $1 port, then bare_pingora's own arguments after the threads
  "$work/bare_pingora" "127.0.0.1:$1" "127.0.0.1:$UP" 1 "${@:2}" 2>/dev/null & BARE_PID=$!; pids+=($BARE_PID)
  wait_http "http://127.0.0.1:$1/"
}
start_bearerd() { # $1 extra [server] lines
  cat > "$work/b.toml" <<EOF
[server]
proxy_listen = "127.0.0.1:$(port)"
admin_listen = "127.0.0.1:$BDA"
threads = 1
log_format = "json"
${1:-work_stealing = false}
[credentials.bench]
grant = "client_credentials"
token_url = "http://127.0.0.1:$TOK/token"
client_id = "bench"
client_secret = "bench-secret"
[upstreams.bench]
url = "http://127.0.0.1:$UP/"
listen = "127.0.0.1:$BD"
credential = "bench"
EOF
  "$work/bearerd" run -c "$work/b.toml" 2>>"$work/bearerd.log" & BEARERD_PID=$!; pids+=($BEARERD_PID)
  for _ in $(seq 1 500); do curl -sf -o /dev/null "http://127.0.0.1:$BDA/readyz" && return 0; sleep 0.02; done
  echo "bearerd not ready" >&2; cat "$work/bearerd.log" >&2; return 1
}
start_bare "$BP"; BARE=$BARE_PID
start_bearerd ""; BEARERD=$BEARERD_PID

# One line per thread of $1: tid utime stime (ticks) voluntary involuntary runs. (A thread's
# name may hold spaces: the stat fields are counted from the ")" that ends it.)
snapshot() {
  python3 - "$1" <<'PY'
import glob, sys
for task in glob.glob(f"/proc/{sys.argv[1]}/task/*"):
    try:
        stat = open(f"{task}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        status = dict(l.split(":", 1) for l in open(f"{task}/status") if ":" in l)
        runs = open(f"{task}/schedstat").read().split()[2]
    except (OSError, ValueError, IndexError):
        continue
    print(task.rsplit("/", 1)[1], fields[11], fields[12],
          status["voluntary_ctxt_switches"].strip(), status["nonvoluntary_ctxt_switches"].strip(), runs)
PY
}

# One wrk run against $2 with the counters of pid $3; appends "name requests deltas…" to $work/rounds.
measure() { # $1 name $2 url $3 pid
  wrk -t1 -c"$CONNECTIONS" -d1s "$2" >/dev/null 2>&1 || true
  snapshot "$3" > "$work/before"
  local out; out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$2")
  snapshot "$3" > "$work/after"
  local n; n=$(echo "$out" | awk '/requests in/ {print $1}')
  python3 - "$1" "$n" "$work/before" "$work/after" "$(getconf CLK_TCK)" >> "$work/rounds" <<'PY'
import sys
name, n, before, after, clk = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
def read(path):
    return {l.split()[0]: [int(x) for x in l.split()[1:]] for l in open(path) if l.strip()}
b, a = read(before), read(after)
delta = {t: [x - y for x, y in zip(a[t], b.get(t, [0] * 5))] for t in a}
total = [sum(d[i] for d in delta.values()) for i in range(5)]
cpu = total[0] + total[1]
active = sum(1 for d in delta.values() if cpu and (d[0] + d[1]) * 100 >= cpu)
us = lambda ticks: ticks / clk * 1e6 / n
print(name, n, f"{us(total[0]):.2f}", f"{us(total[1]):.2f}", f"{total[2] / n:.3f}",
      f"{total[3] / n:.3f}", f"{total[4] / n:.3f}", active, len(a))
PY
}

# Syscalls per request by kind: a short run under strace -c -f.
syscalls() { # $1 name $2 url $3 pid
  strace -c -f -q -p "$3" -o "$work/strace-$1" & local sp=$!
  sleep 0.5
  local out; out=$(wrk -t1 -c"$CONNECTIONS" -d"${STRACE_DURATION}s" "$2")
  kill -INT "$sp"; wait "$sp" 2>/dev/null || true
  local n; n=$(echo "$out" | awk '/requests in/ {print $1}')
  python3 - "$1" "$n" "$work/strace-$1" >> "$work/syscalls" <<'PY'
import sys
name, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {}
for line in open(path):
    f = line.split()
    # % time, seconds, usecs/call, calls, [errors], syscall
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
top = sorted(calls.items(), key=lambda kv: -kv[1])
total = sum(calls.values())
print(name, f"{total / n:.2f}", " ".join(f"{k}={v / n:.2f}" for k, v in top[:6] if v / n >= 0.01))
PY
}

PROXIES=("nginx|http://127.0.0.1:$NGX/|$NGX_WORKER" "haproxy|http://127.0.0.1:$HAP/|$HAP_PID"
  "bare-Pingora|http://127.0.0.1:$BP/|$BARE" "bearerd|http://127.0.0.1:$BD/|$BEARERD")
: > "$work/rounds"; : > "$work/syscalls"
for _ in $(seq 1 "$ROUNDS"); do
  for p in "${PROXIES[@]}"; do IFS='|' read -r name url pid <<<"$p"; measure "$name" "$url" "$pid"; done
done
for p in "${PROXIES[@]}"; do IFS='|' read -r name url pid <<<"$p"; syscalls "$name" "$url" "$pid"; done

# The levers, each on bare Pingora and on bearerd alike.
if [ "$LEVERS" = 1 ]; then
  stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
  lever() { # $1 label $2 bare_pingora args (after threads) $3 bearerd [server] lines ("-": not run)
    local bp; bp=$(port)
    start_bare "$bp" $2
    if [ "$3" != "-" ]; then stop "$BEARERD"; start_bearerd "$3"; BEARERD=$BEARERD_PID; fi
    for _ in $(seq 1 "$ROUNDS"); do
      measure "bare-Pingora,$1" "http://127.0.0.1:$bp/" "$BARE_PID"
      if [ "$3" != "-" ]; then measure "bearerd,$1" "http://127.0.0.1:$BD/" "$BEARERD"; fi
    done
    syscalls "bare-Pingora,$1" "http://127.0.0.1:$bp/" "$BARE_PID"
    if [ "$3" != "-" ]; then syscalls "bearerd,$1" "http://127.0.0.1:$BD/" "$BEARERD"; fi
    stop "$BARE_PID"
  }
  # bare_pingora's arguments after the threads: work_stealing pool_size alt_timer
  # One multi-thread runtime with work stealing, instead of a current-thread runtime per worker.
  lever "work-stealing" "1" "work_stealing = true"
  # Pingora's alternative timer (bearerd has no setting for it).
  lever "alt-timer" "0 128 1" "-"
  # Busy polling on every socket of the network namespace (the kernel spins on a receive
  # queue for 50 µs before it sleeps), when the sysctls can be written.
  if echo 50 > /proc/sys/net/core/busy_read 2>/dev/null && echo 50 > /proc/sys/net/core/busy_poll 2>/dev/null; then
    lever "busy-poll" "" "work_stealing = false"
    echo 0 > /proc/sys/net/core/busy_read; echo 0 > /proc/sys/net/core/busy_poll
  fi
fi

python3 - "$work/rounds" "$work/syscalls" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append(f[1:])
sys_rows = {l.split()[0]: l.split(None, 2)[1:] for l in open(sys.argv[2]) if l.strip()}
print("| proxy | CPU µs/req (user + kernel) | kernel share | voluntary cs/req | involuntary cs/req | wake-ups/req | threads that ran (of) | syscalls/req | top syscalls per request |")
print("|---|---|---|---|---|---|---|---|---|")
nginx_cpu = None
for name, rounds in rows.items():
    # The median round by CPU per request.
    rounds.sort(key=lambda r: float(r[1]) + float(r[2]))
    r = rounds[len(rounds) // 2]
    user, kern = float(r[1]), float(r[2])
    cpu = user + kern
    if name == "nginx":
        nginx_cpu = cpu
    vs_nginx = f" ({cpu / nginx_cpu:.2f}× nginx)" if nginx_cpu else ""
    s = sys_rows.get(name, ["–", ""])
    print(f"| {name} | {cpu:.1f} ({user:.1f} + {kern:.1f}){vs_nginx} | {kern / cpu * 100:.0f} % | {r[3]} | {r[4]} | {r[5]} | {r[6]} ({r[7]}) | {s[0]} | {s[1].strip() if len(s) > 1 else ''} |")
PY
