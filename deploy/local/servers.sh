#!/usr/bin/env bash
# Runs the servers Ferry talks to on this machine, for a person trying Ferry
# by hand: one etcd, one OpenBao dev server (Vault API, root token `root`)
# and one real mongod 7.0 (a one-member replica set `rs0`, under wine; or
# SecantusDB, a MongoDB-wire server, with FERRY_LOCAL_MONGO=secantusdb), all
# on 127.0.0.1.
#
#   deploy/local/servers.sh start    start what is not running, wait until it answers
#   deploy/local/servers.sh stop     stop what start recorded (TERM, then KILL after 10 s)
#   deploy/local/servers.sh status   say what runs and whether it answers
#
# Environment:
#   ETCD_PORT (2379, and 2380 for peers)  BAO_PORT (8200, and 8201 for its cluster listener)
#   MONGO_PORT (27017)
#   FERRY_LOCAL_MONGO (mongod): mongod or secantusdb
#   FERRY_LOCAL_DIR (/var/tmp/ferry-local): data, logs and PID files
#   FERRY_TOOLS_DIR, FERRY_BAO_BIN, FERRY_SECANTUSD_BIN: as in install.sh
#
# etcd, mongod and SecantusDB keep their data in FERRY_LOCAL_DIR across stop/start;
# OpenBao in dev mode keeps secrets in memory only, so stop forgets them.
# Tests do not use this script: ferry-testkit starts its own servers on free
# ports, so both can run at the same time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ETCD_PORT="${ETCD_PORT:-2379}"
BAO_PORT="${BAO_PORT:-8200}"
MONGO_PORT="${MONGO_PORT:-27017}"
LOCAL_DIR="${FERRY_LOCAL_DIR:-/var/tmp/ferry-local}"
TOOLS_DIR="${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}"
case "${FERRY_LOCAL_MONGO:-mongod}" in
mongod) SERVERS=(etcd bao mongod) ;;
secantusdb) SERVERS=(etcd bao secantus) ;;
*)
    echo "servers.sh: FERRY_LOCAL_MONGO=${FERRY_LOCAL_MONGO} is neither mongod nor secantusdb." >&2
    exit 2
    ;;
esac
PYTHON_BIN="$TOOLS_DIR/venv/bin/python"

for v in ETCD_PORT BAO_PORT MONGO_PORT; do
    # Each server also uses the next port up (etcd peers, OpenBao cluster).
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} < 1 || ${!v} > 65534)); then
        echo "servers.sh: $v=${!v} is not a port number (1-65534)." >&2
        exit 2
    fi
done

die() {
    echo "servers.sh: $*" >&2
    exit 1
}

# --- finding programs -------------------------------------------------------
find_bin() { # name env-override -> path or nothing
    local name=$1 override=$2
    if [[ -n $override ]]; then
        [[ -x $override ]] && echo "$override"
        return 0
    fi
    if [[ -x $TOOLS_DIR/bin/$name ]]; then
        echo "$TOOLS_DIR/bin/$name"
    else
        command -v "$name" || true
    fi
}

resolve_bins() {
    ETCD_BIN=$(command -v etcd || true)
    BAO_BIN=$(find_bin bao "${FERRY_BAO_BIN:-}")
    SECANTUSD_BIN=$(find_bin secantusd-py "${FERRY_SECANTUSD_BIN:-}")
    MONGOD_BIN=$(find_bin mongod "")
}

ensure_bins() {
    resolve_bins
    if [[ -z $ETCD_BIN || -z $BAO_BIN || -z $SECANTUSD_BIN || ! -x $TOOLS_DIR/bin/mongod || ! -x $PYTHON_BIN ]]; then
        echo "a server program is missing; running install.sh"
        bash "$HERE/install.sh" || die "install.sh failed; see its message above."
        resolve_bins
    fi
    [[ -n $ETCD_BIN ]] || die "etcd is still not on PATH after install.sh."
    [[ -n $BAO_BIN ]] || die "bao is still missing after install.sh (FERRY_BAO_BIN=${FERRY_BAO_BIN:-unset})."
    [[ -n $SECANTUSD_BIN ]] || die "secantusd-py is still missing after install.sh (FERRY_SECANTUSD_BIN=${FERRY_SECANTUSD_BIN:-unset})."
    [[ -x $TOOLS_DIR/bin/mongod ]] || die "$TOOLS_DIR/bin/mongod is still missing after install.sh."
    MONGOD_BIN=$TOOLS_DIR/bin/mongod
}

# mongod's admin commands, through pymongo (install.sh puts it in the venv).
mongo_admin() { # port initiate|primary|shutdown -> success when done / true
    "$PYTHON_BIN" - "$@" <<'PY' 2>/dev/null
import sys, pymongo
port, what = int(sys.argv[1]), sys.argv[2]
c = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                        serverSelectionTimeoutMS=2000)
if what == "initiate":
    hello = c.admin.command("hello")
    if "setName" not in hello:
        c.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
elif what == "primary":
    sys.exit(0 if c.admin.command("hello").get("isWritablePrimary") else 1)
elif what == "shutdown":
    try:
        c.admin.command("shutdown", force=True)
    except pymongo.errors.AutoReconnect:
        pass  # the expected answer: the server hung up as it went down
PY
}

# --- probes (bash's /dev/tcp, so curl is not required) ---------------------
port_open() { # port -> success when something accepts on 127.0.0.1:port
    # shellcheck disable=SC2016 # $1 expands in the inner shell, on purpose
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

http_status() { # port path [header] -> prints the status code, or nothing
    # shellcheck disable=SC2016 # $1..$3 expand in the inner shell, on purpose
    # (%b turns the optional header's \r\n into CR LF)
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%b\r\n" "$2" "${3:+$3\r\n}" >&3
        read -r _ code _ <&3 && echo "$code"' _ "$@" 2>/dev/null || true
}

answers() { # server -> success when it serves requests
    case $1 in
    etcd) [[ $(http_status "$ETCD_PORT" /health) == 200 ]] ;;
    # Health is 200 a moment before the dev server's secret/ KV v2 mount
    # stops answering 400 "Upgrading from non-versioned to versioned data";
    # reading the mount's config waits out that window too.
    bao) [[ $(http_status "$BAO_PORT" /v1/sys/health) == 200 &&
        $(http_status "$BAO_PORT" /v1/secret/config "X-Vault-Token: root") == 200 ]] ;;
    secantus) port_open "$MONGO_PORT" ;;
    # A new data directory needs its replica set initiated once; after that
    # (and after a restart) mongod elects itself within seconds.
    mongod) port_open "$MONGO_PORT" && { mongo_admin "$MONGO_PORT" primary || { mongo_admin "$MONGO_PORT" initiate; false; }; } ;;
    esac
}

# --- PID bookkeeping --------------------------------------------------------
pid_file() { echo "$LOCAL_DIR/$1.pid"; }

# True while the process exists and has not exited. `kill -0` alone is not
# enough: our servers outlive this script, so their parent is init, and a
# server that has exited stays a zombie (kill -0 succeeds) until init reaps it.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the state letter follows "(comm) "
    [[ ${stat:0:1} != Z ]]
}

# Prints the recorded PID when that process still runs *and* is the server
# we started (its command line names it): a PID reused by an unrelated
# process after a reboot must never be killed.
running_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    local cmd port
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    port=$(ports_of "$1")
    [[ $cmd == *"$1"* && $cmd == *"${port%% *}"* ]] || return 1
    echo "$pid"
}

# --- start --------------------------------------------------------------------
launch() { # server -> starts it in its own session, records its PID
    local s=$1 log="$LOCAL_DIR/logs/$1.log"
    echo "=== $(date -Is) servers.sh start" >>"$log"
    # setsid: a Ctrl-C in the person's terminal must not take the servers
    # down. In a script, `&` children are not group leaders, so setsid execs
    # in place and $! is the server's own PID.
    case $s in
    etcd)
        # etcd reads ETCD_* variables as flags and warns about ETCD_PORT.
        env -u ETCD_PORT setsid "$ETCD_BIN" --name ferry-local \
            --data-dir "$LOCAL_DIR/etcd" \
            --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
            --initial-cluster "ferry-local=http://127.0.0.1:$((ETCD_PORT + 1))" \
            --initial-cluster-state new --logger=zap --log-level=warn \
            </dev/null >>"$log" 2>&1 &
        ;;
    bao)
        # -dev-no-store-token: leave the person's ~/.vault-token alone.
        setsid "$BAO_BIN" server -dev -dev-root-token-id=root \
            -dev-listen-address="127.0.0.1:$BAO_PORT" -dev-no-store-token \
            </dev/null >>"$log" 2>&1 &
        ;;
    secantus)
        # An explicit --config stops SecantusDB from picking up a stray
        # ./secantusd.toml or ~/.secantus one; edit this file to configure it.
        [[ -f $LOCAL_DIR/secantusd.toml ]] || echo "# flags from servers.sh override this file" >"$LOCAL_DIR/secantusd.toml"
        setsid "$SECANTUSD_BIN" --config "$LOCAL_DIR/secantusd.toml" \
            --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$LOCAL_DIR/secantus" \
            </dev/null >>"$log" 2>&1 &
        ;;
    mongod)
        # The real mongod 7.0 (Windows build) under wine: it takes Windows
        # paths (Z:\dir is /dir). FTDC off: under wine it crashes mongod.
        mkdir -p "$LOCAL_DIR/mongod"
        setsid "$MONGOD_BIN" --replSet rs0 --bind_ip 127.0.0.1 --port "$MONGO_PORT" \
            --dbpath "Z:${LOCAL_DIR//\//\\}\\mongod" --wiredTigerCacheSizeGB 1 \
            --setParameter diagnosticDataCollectionEnabled=false \
            </dev/null >>"$log" 2>&1 &
        ;;
    esac
    echo $! >"$(pid_file "$s")"
}

wait_ready() { # server seconds -> success when it answers in time
    local s=$1 deadline=$((SECONDS + $2)) pid
    pid=$(<"$(pid_file "$s")")
    while ((SECONDS < deadline)); do
        if ! alive "$pid"; then
            rm -f "$(pid_file "$s")"
            show_failure "$s" "exited during start-up"
            return 1
        fi
        answers "$s" && return 0
        sleep 0.2
    done
    show_failure "$s" "did not answer within $2 s (pid $pid is still running)"
    return 1
}

show_failure() { # server reason: prints the reason and this run's last log lines
    echo "$1: $2; last lines of $LOCAL_DIR/logs/$1.log:" >&2
    # Only what this start wrote: the log keeps earlier runs above its marker.
    awk '/^=== .* servers.sh start$/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' \
        "$LOCAL_DIR/logs/$1.log" | tail -n 15 >&2
}

ports_of() {
    case $1 in
    etcd) echo "$ETCD_PORT $((ETCD_PORT + 1))" ;;
    bao) echo "$BAO_PORT $((BAO_PORT + 1))" ;;
    secantus | mongod) echo "$MONGO_PORT" ;;
    esac
}

start() {
    ensure_bins
    mkdir -p "$LOCAL_DIR/logs" || die "cannot create $LOCAL_DIR."
    local s pid p ms failed=0 todo=() t0
    for s in "${SERVERS[@]}"; do
        if pid=$(running_pid "$s"); then
            echo "$s: already running (pid $pid)"
        else
            todo+=("$s")
        fi
    done
    # Check every port before launching anything, so a busy port leaves
    # nothing half-started behind.
    for s in "${todo[@]}"; do
        for p in $(ports_of "$s"); do
            port_open "$p" && die "port $p, needed by $s, is in use by another process; stop it or choose other ports (ETCD_PORT, BAO_PORT, MONGO_PORT)."
        done
    done
    t0=${EPOCHREALTIME/./}
    for s in "${todo[@]}"; do
        launch "$s"
    done
    # All were launched before the first wait, so they start in parallel.
    for s in "${todo[@]}"; do
        if wait_ready "$s" 90; then
            ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
            echo "$s: started (pid $(<"$(pid_file "$s")"), answering after ${ms} ms)"
        else
            failed=1
        fi
    done
    ((failed == 0)) || die "not every server started; see above, and '$0 status'."
    urls
}

urls() {
    cat <<EOF

Ferry URLs (logs in $LOCAL_DIR/logs):
  etcd://127.0.0.1:$ETCD_PORT/<prefix>
  vault://127.0.0.1:$BAO_PORT/secret/<path>    token: root (export VAULT_ADDR=http://127.0.0.1:$BAO_PORT VAULT_TOKEN=root)
  mongodb://127.0.0.1:$MONGO_PORT$([[ ${SERVERS[2]} == mongod ]] && echo "   (mongod 7.0, replica set rs0)")
EOF
}

# --- stop / status --------------------------------------------------------------
stop() {
    local s pid i pids=() names=()
    for s in "${SERVERS[@]}"; do
        if pid=$(running_pid "$s"); then
            # SIGTERM would end wine's process without mongod's clean
            # shutdown (journal recovery copes, but a clean stop is faster).
            if [[ $s == mongod ]]; then
                mongo_admin "$MONGO_PORT" shutdown || kill -TERM "$pid" 2>/dev/null || true
            else
                kill -TERM "$pid" 2>/dev/null || true
            fi
            pids+=("$pid")
            names+=("$s")
        else
            echo "$s: not running"
            rm -f "$(pid_file "$s")"
        fi
    done
    # A polite stop lets etcd and SecantusDB close their files (SecantusDB
    # takes about 2 s, so all are signalled first and waited for together);
    # after 10 s it becomes a kill, so stop always ends.
    for ((i = 0; i < 50; i++)); do
        local any=0
        for pid in "${pids[@]}"; do
            alive "$pid" && any=1
        done
        ((any)) || break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if alive "${pids[i]}"; then
            kill -KILL "${pids[i]}" 2>/dev/null || true
            echo "${names[i]}: killed (pid ${pids[i]} did not exit on TERM within 10 s)"
        else
            echo "${names[i]}: stopped (pid ${pids[i]})"
        fi
        rm -f "$(pid_file "${names[i]}")"
    done
}

status() {
    local s pid all=0
    for s in "${SERVERS[@]}"; do
        if pid=$(running_pid "$s"); then
            if answers "$s"; then
                echo "$s: running (pid $pid), answering"
            else
                echo "$s: running (pid $pid), NOT answering"
                all=1
            fi
        else
            echo "$s: not running"
            all=1
        fi
    done
    ((all == 0)) && urls
    return $all
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
