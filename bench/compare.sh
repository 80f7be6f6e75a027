#!/usr/bin/env bash
# compare.sh -- phigate vs Postfix as a TLS relay on this machine, same load, one run.
#
#   sudo bench/compare.sh                # build, then ceiling + phigate/postfix alternating
#   sudo bench/compare.sh --rss100       # the same with 100 concurrent sessions (peak RSS)
#   sudo bench/compare.sh --big          # phigate: memory while relaying 25 MB messages
#   sudo bench/compare.sh --big20        # ... 20 of them at once, one per session
#   sudo bench/compare.sh --idle         # phigate: RSS with 10,000 idle TLS sessions (bench/idle.sh)
#   sudo bench/compare.sh --phigate-only # phigate runs alone, with perf stat (for profiling work)
#   ATTACH=pdf sudo bench/compare.sh     # the attachment is a real text PDF (DLP extracts it)
#   sudo bench/compare.sh --api          # phigate: HTTPS API (examples/apiload) vs SMTP, alternating
#   sudo bench/compare.sh --portal       # phigate: portal notices/s, pickup-page latency (examples/portalload)
#
# Everything is on 127.0.0.1. The load generator (examples/loadgen.rs) sends to
#   phigate  implicit TLS 127.0.0.1:$PHIGATE_PORT   -> spool (AES-GCM, fsync) -> STARTTLS, verified -> sink
#   Postfix  implicit TLS 127.0.0.1:$POSTFIX_PORT   -> queue (fsync)          -> STARTTLS, verified -> sink
#   ceiling  STARTTLS     127.0.0.1:$SINK_PORT (the sink itself, no relay)
# with the same RSA-2048 certificates and message mix; the sink (examples/sink.rs) timestamps
# arrivals. Every process this script starts is stopped by PID on exit. Last line of output:
# phigate_vs_postfix_ratio=N.NN (end-to-end messages/s, median over --repeat runs).
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(dirname "$HERE")
WORKDIR=${WORKDIR:-/tmp/phigate-bench}
BIND=127.0.0.1
SINK_PORT=${SINK_PORT:-11026}
POSTFIX_PORT=${POSTFIX_PORT:-11465}; POSTFIX_SUB_PORT=${POSTFIX_SUB_PORT:-11587}
PHIGATE_PORT=${PHIGATE_PORT:-12465}; PHIGATE_SUB_PORT=${PHIGATE_SUB_PORT:-12587}
API_PORT=${API_PORT:-12443}      # --api: phigate's [api] listen
PORTAL_PORT=${PORTAL_PORT:-12444}         # --portal: phigate's [portal] listen
PORTAL_MESSAGES=${PORTAL_MESSAGES:-1000}  # --portal: messages submitted with "portal": "always"
PORTAL_SAMPLES=${PORTAL_SAMPLES:-200}     # --portal: links put through the whole pickup flow
PORTAL_FLOWS=${PORTAL_FLOWS:-4}           # --portal: concurrent recipients (one keep-alive connection each)
PORTAL_GETS=${PORTAL_GETS:-4}             # --portal: extra landing + view GETs per link
PORTAL_SIZE=${PORTAL_SIZE:-4096}
MESSAGES=${MESSAGES:-2000}       # per measured run
SESSIONS=${SESSIONS:-50}
ATTACH=${ATTACH:-random}          # loadgen --attachment: random bytes, or a real text PDF (DLP extracts it)
SIZE=${SIZE:-10240}
REPEAT=${REPEAT:-3}              # phigate, postfix, phigate, postfix, ...
WARMUP=${WARMUP:-200}
TLS_IN=${TLS_IN:-implicit}       # implicit | starttls (inbound to both relays)
DLP=${DLP:-1}                    # 1: phigate loads conf/policy.toml ([dlp] monitor mode)
PHIGATE_LOG=${PHIGATE_LOG:-info}   # phigate log level (info logs each message, as Postfix does)
NO_BUILD=${NO_BUILD:-0}
IDLE_SESSIONS=${IDLE_SESSIONS:-10000}; IDLE_SECS=${IDLE_SECS:-20}
BIG_SIZE=${BIG_SIZE:-25000000}; BIG_MESSAGES=${BIG_MESSAGES:-3}; BIG_SESSIONS=${BIG_SESSIONS:-1}
PY=${PY:-python3}
MODE=compare
while [ $# -gt 0 ]; do
  case "$1" in
    --rss100) MODE=compare; SESSIONS=100; MESSAGES=${MESSAGES_100:-3000} ;;
    --big) MODE=big ;;
    --big20) MODE=big; BIG_SESSIONS=20; BIG_MESSAGES=20 ;;
    --idle) MODE=idle ;;
    --phigate-only) MODE=phigate ;;
    --api) MODE=api ;;
    --portal) MODE=portal ;;
    --messages) MESSAGES=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --no-build) NO_BUILD=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

PKI=$WORKDIR/pki; RUN=$WORKDIR/run; RES=$WORKDIR/results
PF=$WORKDIR/postfix; ETC=$PF/etc; QDIR=$PF/queue
PG=$WORKDIR/phigate
EX=$REPO/target/release/examples; PHIGATE=$REPO/target/release/phigate
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (Postfix instance, package install)"

# ------------------------------------------------------------------ processes (by PID only)
STARTED=""
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && ! sed 's/^.*) //' "/proc/$1/stat" | grep -q '^[ZX]'; }
stop_pid() {
  local i; alive "$1" || return 0
  kill -TERM "$1" 2>/dev/null || true
  for i in $(seq 1 100); do alive "$1" || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
postfix_master() { local p; [ -f "$QDIR/pid/master.pid" ] || return 1; p=$(tr -dc 0-9 < "$QDIR/pid/master.pid"); alive "$p" && echo "$p"; }
cleanup() {
  local p
  for p in $STARTED; do stop_pid "$p"; done
  if [ -d "$ETC" ] && p=$(postfix_master); then postfix -c "$ETC" stop >/dev/null 2>&1 || stop_pid "$p"; fi
  STARTED=""
}
trap 'rc=$?; trap - EXIT; cleanup; exit $rc' EXIT
trap 'exit 130' INT TERM
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { local i; for i in $(seq 1 100); do port_open "$BIND" "$1" && return 0; sleep 0.1; done; die "nothing listening on $BIND:$1"; }
require_free() { local p; for p in "$@"; do port_open "$BIND" "$p" && die "port $BIND:$p is in use"; done; return 0; }

# ------------------------------------------------------------------ setup
ensure_packages() {
  command -v postfix >/dev/null && command -v openssl >/dev/null && return 0
  log "installing postfix, openssl"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix openssl >/dev/null
  systemctl disable --now postfix >/dev/null 2>&1 || true
}
ensure_pki() {   # same recipe as shared/perf/postfix-baseline.sh: RSA-2048 CA, relay and sink certs
  [ -f "$PKI/relay-chain.pem" ] && openssl x509 -checkend 86400 -noout -in "$PKI/relay.pem" >/dev/null 2>&1 && return 0
  log "creating test CA and RSA-2048 certificates in $PKI"
  mkdir -p "$PKI"; rm -f "$PKI"/*
  ( umask 077; cd "$PKI"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -out ca.pem -days 365 -subj "/CN=perf-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    for n in relay sink; do
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $n.key 2>/dev/null
      openssl req -new -key $n.key -out $n.csr -subj "/CN=$n.perf.test" 2>/dev/null
      printf 'subjectAltName=DNS:%s.perf.test,DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' $n > $n.ext
      openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out $n.pem -extfile $n.ext 2>/dev/null
      cat $n.pem ca.pem > $n-chain.pem
    done )
  chmod 644 "$PKI"/*.pem; chmod 600 "$PKI"/*.key
}
build() {
  [ "$NO_BUILD" = 1 ] && return 0
  log "cargo build --release --examples --bin phigate"
  (cd "$REPO" && cargo build --release --examples --bin phigate 2>&1 | tail -2) >&2
}
start_sink() {
  "$EX/sink" --listen "$BIND:$SINK_PORT" --cert "$PKI/sink-chain.pem" --key "$PKI/sink.key" \
    --stats "$RUN/sink.json" --interval-ms 50 --max-secs 3600 >"$RUN/sink.out" 2>"$RUN/sink.log" &
  SINK_PID=$!; STARTED="$STARTED $SINK_PID"; wait_port "$SINK_PORT"
  log "sink (STARTTLS) on $BIND:$SINK_PORT pid $SINK_PID"
}
start_postfix() {
  rm -rf "$PF"; mkdir -p "$ETC" "$QDIR" "$PF/data" "$PF/log"; chown postfix "$PF/data"
  cat > "$ETC/main.cf" <<EOF
# Throwaway relay instance for phigate bench/compare.sh (generated)
compatibility_level = 3.6
queue_directory = $QDIR
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $PF/log/postfix.log
maillog_file_prefixes = /var, /dev/stdout, $PF/log
myhostname = relay.perf.test
mydomain = perf.test
smtpd_banner = \$myhostname ESMTP
biff = no
inet_interfaces = $BIND
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [$BIND]:$SINK_PORT
smtpd_tls_chain_files = $PKI/relay.key, $PKI/relay-chain.pem
smtpd_tls_security_level = may
smtp_tls_security_level = encrypt
smtp_tls_CAfile = $PKI/ca.pem
smtp_tls_policy_maps = inline:{ {[$BIND]:$SINK_PORT = verify match=sink.perf.test} }
smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache
EOF
  cat > "$ETC/master.cf" <<EOF
$BIND:$POSTFIX_PORT inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt
$BIND:$POSTFIX_SUB_PORT inet n - n - - smtpd -o smtpd_tls_security_level=encrypt
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsproxy  unix  -       -       n       -       0       tlsproxy
EOF
  postfix -c "$ETC" check >/dev/null 2>&1 || die "postfix check failed"
  postfix -c "$ETC" start >/dev/null 2>&1 || die "postfix start failed (see $PF/log/postfix.log)"
  local i; for i in $(seq 1 100); do POSTFIX_PID=$(postfix_master) && break; sleep 0.1; done
  [ -n "${POSTFIX_PID:-}" ] || die "Postfix master did not start"
  wait_port "$POSTFIX_PORT"; log "Postfix $(postconf -d -h mail_version) on $BIND:$POSTFIX_PORT master pid $POSTFIX_PID"
}
start_phigate() { # [max_connections]
  local maxc=${1:-2000} policy=""
  rm -rf "$PG"; mkdir -p "$PG/data"
  [ "$DLP" = 1 ] && policy="file = \"$REPO/conf/policy.toml\""
  # --portal: sandbox delivery, so notices and code mails land in data_dir/sandbox.
  local delivery="mode = \"smarthost\"
tls_level = \"verify\"
# Postfix's default_destination_concurrency_limit is 20; phigate's default (4) would make
# the single smarthost destination the bottleneck of this comparison.
per_destination_connections = 20

[delivery.smarthost]
host = \"$BIND\"
port = $SINK_PORT
tls = \"starttls\"
ca_file = \"$PKI/ca.pem\""
  [ "$MODE" = portal ] && delivery='mode = "sandbox"'
  cat > "$PG/phigate.toml" <<EOF
# phigate bench/compare.sh configuration (generated)
[server]
hostname = "relay.perf.test"
data_dir = "$PG/data"
max_connections = $maxc
max_connections_per_ip = $maxc
shutdown_grace = "5s"
control_socket = "$PG/control.sock"

[[listener]]
name = "submissions"
addr = "$BIND:$PHIGATE_PORT"
tls = "implicit"
auth = ["ip"]

[[listener]]
name = "submission"
addr = "$BIND:$PHIGATE_SUB_PORT"
tls = "starttls"
auth = ["ip"]

[tls]
cert = "$PKI/relay-chain.pem"
key = "$PKI/relay.key"

[auth]
allow_networks = ["127.0.0.0/8"]

[delivery]
$delivery

[policy]
$policy

[spool]
key_file = "$PG/master.keys"
generate_key = true

[queue]
concurrency = 50
EOF
  # --api: the HTTPS API on the same pipeline, same certificate as the SMTP listeners.
  if [ "$MODE" = api ]; then printf '\n[api]\nlisten = "%s:%s"\ncert = "%s"\nkey = "%s"\n' \
    "$BIND" "$API_PORT" "$PKI/relay-chain.pem" "$PKI/relay.key" >> "$PG/phigate.toml"; fi
  # --portal: the API with a sandbox key, and the portal on loopback (rate limit raised:
  # every benchmark recipient comes from 127.0.0.1).
  if [ "$MODE" = portal ]; then cat >> "$PG/phigate.toml" <<EOF

[api]
listen = "$BIND:$API_PORT"
cert = "$PKI/relay-chain.pem"
key = "$PKI/relay.key"
sandbox_key_file = "$PG/data/sandbox-api-key"

[portal]
listen = "$BIND:$PORTAL_PORT"
public_url = "https://$BIND:$PORTAL_PORT"
cert = "$PKI/relay-chain.pem"
key = "$PKI/relay.key"
organization = "Bench Clinic"
requests_per_minute = 1000000
EOF
  fi
  (ulimit -n "$(ulimit -Hn)"; exec ${PHIGATE_WRAP:-} "$PHIGATE" serve --log-level "$PHIGATE_LOG" --config "$PG/phigate.toml") \
    >"$PG/stdout.log" 2>"$PG/phigate.log" &
  PHIGATE_PID=$!; STARTED="$STARTED $PHIGATE_PID"
  local i; for i in $(seq 1 200); do { grep -q "phigate ready" "$PG/phigate.log" 2>/dev/null || port_open "$BIND" "$PHIGATE_PORT"; } && break
    alive "$PHIGATE_PID" || { tail -5 "$PG/phigate.log" >&2; die "phigate exited"; }; sleep 0.1; done
  wait_port "$PHIGATE_PORT"; log "phigate on $BIND:$PHIGATE_PORT pid $PHIGATE_PID (DLP policy: ${policy:-none})"
}

# ------------------------------------------------------------------ measurement
loadcmd() { # run port tls sessions messages size
  LOADCMD=("$EX/loadgen" --target "$BIND:$2" --tls "$3" --ca-file "$PKI/ca.pem" --sni "$4"
           --sessions "$5" --messages "$6" --size "$7" --run "$1" --json --timeout 280
           --attachment "$ATTACH")
}
measure() { # name label pid port tls sni
  local name=$1 label=$2 pid=$3
  loadcmd "$name" "$4" "$5" "$6" "$SESSIONS" "$MESSAGES" "$SIZE"
  "$PY" "$HERE/benchlib.py" measure --name "$name" --label "$label" --pid "$pid" \
    --sink-stats "$RUN/sink.json" --results "$RES/results.jsonl" --drain-timeout 120 -- "${LOADCMD[@]}" || FAILS=$((FAILS + 1))
}
warmup() { # label port pid
  loadcmd "warmup-$1" "$2" "$TLS_IN" relay.perf.test 10 "$WARMUP" "$SIZE"
  "$PY" "$HERE/benchlib.py" measure --name "warmup-$1" --label warmup --pid "$3" \
    --sink-stats "$RUN/sink.json" --results "$RES/warmup.jsonl" -- "${LOADCMD[@]}" 2>/dev/null || true
}
env_info() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
    echo "postfix: $(postconf -d -h mail_version 2>/dev/null); phigate: $(cd "$REPO" && git rev-parse --short HEAD)"
    echo "workdir filesystem: $(df -T "$WORKDIR" | awk 'NR==2{print $2}')"
    echo "load: messages=$MESSAGES sessions=$SESSIONS size=$SIZE tls_in=$TLS_IN repeat=$REPEAT dlp=$DLP"
  } | tee "$RES/environment.txt" >&2
}
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ------------------------------------------------------------------ main
ensure_packages
build
[ -x "$EX/loadgen" ] && [ -x "$EX/sink" ] && [ -x "$PHIGATE" ] || die "build the release binaries first"
mkdir -p "$WORKDIR"; ensure_pki
rm -rf "$RUN" "$RES"; mkdir -p "$RUN" "$RES"
require_free "$SINK_PORT" "$POSTFIX_PORT" "$POSTFIX_SUB_PORT" "$PHIGATE_PORT" "$PHIGATE_SUB_PORT" "$API_PORT" "$PORTAL_PORT"
FAILS=0
start_sink

case "$MODE" in
idle)
  start_phigate $((IDLE_SESSIONS + 100))
  before=$(rss_kb "$PHIGATE_PID")
  log "holding $IDLE_SESSIONS idle TLS sessions for ${IDLE_SECS}s against phigate"
  (ulimit -n "$(ulimit -Hn)"; exec "$EX/loadgen" --target "$BIND:$PHIGATE_PORT" --tls implicit --ca-file "$PKI/ca.pem" \
     --sni relay.perf.test --sessions "$IDLE_SESSIONS" --idle-secs "$IDLE_SECS" --timeout 300 --json) >"$RES/idle.json" &
  LG=$!; STARTED="$STARTED $LG"; peak=0
  for _ in $(seq 1 $(( (IDLE_SECS + 120) * 2 ))); do
    alive "$LG" || break; r=$(rss_kb "$PHIGATE_PID"); [ "${r:-0}" -gt "$peak" ] && peak=$r; sleep 0.5
  done
  wait "$LG" || FAILS=$((FAILS + 1))
  cat "$RES/idle.json"
  echo "phigate_idle_sessions=$IDLE_SESSIONS rss_before_mb=$((before / 1024)) peak_rss_mb=$((peak / 1024)) hwm_mb=$(( $(hwm_kb "$PHIGATE_PID") / 1024 ))"
  echo "phigate_idle_rss_per_session_kb=$(( (peak - before) / IDLE_SESSIONS ))"
  ;;
big)
  start_phigate
  before=$(rss_kb "$PHIGATE_PID")
  log "relaying $BIG_MESSAGES messages of $BIG_SIZE bytes through phigate, $BIG_SESSIONS at a time"
  SESSIONS=$BIG_SESSIONS MESSAGES=$BIG_MESSAGES SIZE=$BIG_SIZE
  measure big-25m phigate "$PHIGATE_PID" "$PHIGATE_PORT" implicit relay.perf.test
  hwm=$(hwm_kb "$PHIGATE_PID")
  echo "phigate_big_message_bytes=$BIG_SIZE sessions=$BIG_SESSIONS rss_before_mb=$((before / 1024)) peak_rss_mb=$((hwm / 1024)) growth_x_message=$(awk -v a="$hwm" -v b="$before" -v s="$BIG_SIZE" 'BEGIN{printf "%.2f", (a-b)*1024/s}')"
  ;;
phigate)
  start_phigate
  env_info
  case "$TLS_IN" in implicit) gp=$PHIGATE_PORT ;; *) gp=$PHIGATE_SUB_PORT ;; esac
  warmup phigate "$gp" "$PHIGATE_PID"
  for i in $(seq 1 "$REPEAT"); do
    if command -v perf >/dev/null; then
      if [ -n "${PERF_RECORD:-}" ]; then perf record -F 999 --call-graph "${PERF_CALLGRAPH:-fp}" -p "$PHIGATE_PID" -o "$RES/perf-$i.data" 2>/dev/null &
      else perf stat -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_sync_file_range,syscalls:sys_enter_futex,syscalls:sys_enter_sched_yield,syscalls:sys_enter_pwrite64,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p "$PHIGATE_PID" -o "$RES/perf-stat-$i.txt" & fi
      PERF=$!
    fi
    measure "phigate#$i" phigate "$PHIGATE_PID" "$gp" "$TLS_IN" relay.perf.test
    if [ -n "${PERF:-}" ]; then kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true; grep -sE "task-clock|context-switches|syscalls" "$RES/perf-stat-$i.txt" >&2; PERF=""; fi
  done
  echo "phigate_vmhwm_mb=$(( $(hwm_kb "$PHIGATE_PID") / 1024 )) rss_mb=$(( $(rss_kb "$PHIGATE_PID") / 1024 ))"
  # Where the memory is (largest mappings), for leak hunting.
  awk '/^[0-9a-f]+-/{m=$1" "$6} /^Rss:/{if ($2 > 1024) print $2" kB "m}' "/proc/$PHIGATE_PID/smaps" | sort -rn | head -20 > "$RES/smaps.txt"
  grep -E "Threads|RssAnon|RssFile" "/proc/$PHIGATE_PID/status" >> "$RES/smaps.txt"
  if [ -n "${TRIM_PROBE:-}" ] && command -v gdb >/dev/null; then  # free-but-retained vs live heap
    gdb -p "$PHIGATE_PID" -batch -ex 'call (int)malloc_trim(0)' >/dev/null 2>&1 || true
    echo "after malloc_trim: rss_mb=$(( $(rss_kb "$PHIGATE_PID") / 1024 ))"
  fi
  ;;
api)
  # API vs SMTP on one phigate (Postfix has no HTTP API): same DLP, sink, load and size.
  [ -x "$EX/apiload" ] || die "build examples/apiload first"
  start_phigate; wait_port "$API_PORT"
  # A real (non-sandbox) key, so API mail goes to the sink like SMTP mail does.
  ( umask 077; "$PHIGATE" --config "$PG/phigate.toml" api-key create bench --scope send,read > "$PG/api.key" ) \
    || die "phigate api-key create failed"
  env_info
  apicmd() { # run sessions messages
    LOADCMD=("$EX/apiload" --target "$BIND:$API_PORT" --ca-file "$PKI/ca.pem" --sni "$BIND"
             --key-file "$PG/api.key" --sessions "$2" --messages "$3" --size "$SIZE" --run "$1" --timeout 280)
  }
  log "warm-up ($WARMUP messages each)"
  warmup phigate "$PHIGATE_PORT" "$PHIGATE_PID"
  apicmd warmup-api 10 "$WARMUP"
  "$PY" "$HERE/benchlib.py" measure --name warmup-api --label warmup --pid "$PHIGATE_PID" \
    --sink-stats "$RUN/sink.json" --results "$RES/warmup.jsonl" -- "${LOADCMD[@]}" || true
  for i in $(seq 1 "$REPEAT"); do
    measure "smtp#$i" smtp "$PHIGATE_PID" "$PHIGATE_PORT" "$TLS_IN" relay.perf.test
    apicmd "api#$i" "$SESSIONS" "$MESSAGES"
    "$PY" "$HERE/benchlib.py" measure --name "api#$i" --label api --pid "$PHIGATE_PID" \
      --sink-stats "$RUN/sink.json" --results "$RES/results.jsonl" --drain-timeout 120 -- "${LOADCMD[@]}" || FAILS=$((FAILS + 1))
  done
  echo
  "$PY" "$HERE/benchlib.py" report --results "$RES/results.jsonl" | tee "$RES/report.txt"
  "$PY" - "$RES/results.jsonl" <<'PYEOF' | tee -a "$RES/report.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda lab, k: statistics.median([r[k] for r in rows if r["label"] == lab and r.get(k) is not None] or [0])
a, s = med("api", "e2e_msgs_per_s"), med("smtp", "e2e_msgs_per_s")
for lab in ("api", "smtp"):
    print(f"{lab}: e2e_msgs_per_s={med(lab, 'e2e_msgs_per_s'):.1f} accept_ms_p99={med(lab, 'accept_ms_p99'):.1f} "
          f"cpu_ms_per_msg={med(lab, 'cpu_s_per_1000'):.2f}")
print(f"api_vs_smtp_ratio={a / s if s else float('nan'):.2f}")
PYEOF
  ;;
portal)
  # Secure portal: API submissions with "portal": "always" -> notices in data_dir/sandbox,
  # then recipients through landing -> code -> code mail -> verify -> view (examples/portalload).
  [ -x "$EX/portalload" ] || die "build examples/portalload first"
  start_phigate; wait_port "$API_PORT"; wait_port "$PORTAL_PORT"
  for _ in $(seq 1 50); do [ -s "$PG/data/sandbox-api-key" ] && break; sleep 0.1; done
  env_info
  echo "portal: messages=$PORTAL_MESSAGES api_sessions=$SESSIONS samples=$PORTAL_SAMPLES flows=$PORTAL_FLOWS gets=$PORTAL_GETS size=$PORTAL_SIZE" \
    | tee -a "$RES/environment.txt" >&2
  portalcmd() { # run messages samples
    PORTALCMD=("$EX/portalload" --api "$BIND:$API_PORT" --sni "$BIND" --ca-file "$PKI/ca.pem"
               --key-file "$PG/data/sandbox-api-key" --sandbox-dir "$PG/data/sandbox"
               --messages "$2" --sessions "$SESSIONS" --samples "$3" --flows "$PORTAL_FLOWS"
               --gets "$PORTAL_GETS" --size "$PORTAL_SIZE" --run "$1" --timeout 280)
  }
  cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }  # utime + stime
  log "warm-up ($WARMUP messages, 20 pickups)"
  portalcmd warmup-portal "$WARMUP" 20; "${PORTALCMD[@]}" > "$RES/portal-warmup.json" || true
  for i in $(seq 1 "$REPEAT"); do
    log "portal#$i: $PORTAL_MESSAGES messages, $PORTAL_SAMPLES pickups ($PORTAL_FLOWS concurrent)"
    c0=$(cpu_ticks "$PHIGATE_PID")
    portalcmd "portal#$i" "$PORTAL_MESSAGES" "$PORTAL_SAMPLES"
    if "${PORTALCMD[@]}" > "$RES/portal-$i.json"; then
      "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["cpu_s"]=(int(sys.argv[3])-int(sys.argv[2]))/100; print(json.dumps(r))' \
        "$RES/portal-$i.json" "$c0" "$(cpu_ticks "$PHIGATE_PID")" >> "$RES/results.jsonl"
    else FAILS=$((FAILS + 1)); fi
  done
  echo
  "$PY" - "$RES/results.jsonl" <<'PYEOF' | tee "$RES/report.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = ["accepted", "errors", "submit_msgs_per_s", "notices_per_s", "picked_up", "landing_ms.p50",
        "landing_ms.p99", "code_mail_ms.p50", "verify_ms.p50", "view_ms.p50", "view_ms.p99",
        "flow_ms.p50", "flow_ms.p99", "cpu_ms_per_notice"]
def val(r, k):
    if k == "cpu_ms_per_notice":  # phigate CPU over the whole run (pickups included) per message
        return round(1000 * r["cpu_s"] / max(r["accepted"], 1), 2)
    v = r
    for p in k.split("."):
        v = v[p]
    return round(v, 2) if isinstance(v, float) else v
print("| name | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for r in rows:
    print(f"| {r['run']} | " + " | ".join(str(val(r, c)) for c in cols) + " |")
    if r.get("first_error"):
        print(f"  first error: {r['first_error']}", file=sys.stderr)
med = lambda k: statistics.median([val(r, k) for r in rows] or [0])
print(f"portal_notices_per_sec={med('notices_per_s'):.1f} portal_landing_p50_ms={med('landing_ms.p50'):.2f} "
      f"portal_landing_p99_ms={med('landing_ms.p99'):.2f} portal_view_p50_ms={med('view_ms.p50'):.2f} "
      f"portal_view_p99_ms={med('view_ms.p99'):.2f} portal_flow_p50_ms={med('flow_ms.p50'):.1f} "
      f"portal_flow_p99_ms={med('flow_ms.p99'):.1f}")
PYEOF
  ;;
compare)
  start_postfix
  start_phigate
  env_info
  case "$TLS_IN" in implicit) pp=$POSTFIX_PORT; gp=$PHIGATE_PORT ;; *) pp=$POSTFIX_SUB_PORT; gp=$PHIGATE_SUB_PORT ;; esac
  log "ceiling: loadgen -> STARTTLS -> sink directly"
  measure ceiling harness 0 "$SINK_PORT" starttls sink.perf.test
  log "warm-up ($WARMUP messages each)"
  warmup phigate "$gp" "$PHIGATE_PID"; warmup postfix "$pp" "$POSTFIX_PID"
  for i in $(seq 1 "$REPEAT"); do
    measure "phigate#$i" phigate "$PHIGATE_PID" "$gp" "$TLS_IN" relay.perf.test
    measure "postfix#$i" postfix "$POSTFIX_PID" "$pp" "$TLS_IN" relay.perf.test
  done
  echo
  "$PY" "$HERE/benchlib.py" report --results "$RES/results.jsonl" | tee "$RES/report.txt"
  ;;
esac
[ "$FAILS" = 0 ] || log "$FAILS measurement(s) failed"
