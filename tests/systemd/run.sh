#!/usr/bin/env bash
# `make test-systemd`: boot Debian bookworm's systemd 252 in a systemd-nspawn container, with
# the release demo-server and every .socket/.service file the repo ships, and run checks.sh
# inside it. The container's root is a minbase debootstrap (systemd, dbus, curl), built once
# and cached in target/systemd/rootfs; each boot writes into a tmpfs overlay only
# (--volatile=overlay), so the cache stays clean.
#
# Needs root, systemd-nspawn (systemd-container) and debootstrap. Without root, or without the
# Debian mirror when the rootfs is not cached yet, it prints a loud SKIPPED and exits 0; a
# missing tool is SKIPPED too, except with CI=true, where CI should have installed it.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEMO_SERVER (default
# target/release/demo-server).
set -euo pipefail
cd "$(dirname "$0")/../.."

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEMO=${DEMO_SERVER:-target/release/demo-server}
CACHE=target/systemd
ROOTFS=$CACHE/rootfs
UNITS=(
    listenfd-core/examples/systemd/demo-server.socket
    listenfd-core/examples/systemd/demo-server.service
    demo-server/systemd/demo-server-accept.socket
    demo-server/systemd/demo-server-accept@.service
)

skip() {
    printf '\n*** SKIPPED: make test-systemd: %s ***\n\n' "$*" >&2
    exit 0
}
skip_unless_ci() {
    if [ "${CI:-}" = true ]; then
        echo "error: make test-systemd: $* (CI=true: skips are failures)" >&2
        exit 1
    fi
    skip "$*"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

[ "$(id -u)" -eq 0 ] || skip "needs root (systemd-nspawn); run it as root"
for tool in systemd-nspawn:systemd-container debootstrap:debootstrap nsenter:util-linux; do
    command -v "${tool%%:*}" >/dev/null ||
        skip_unless_ci "\`${tool%%:*}\` not found; install it with \`apt-get install -y ${tool#*:}\`"
done
[ -x "$DEMO" ] || { echo "error: $DEMO missing: cargo build --release -p demo-server" >&2; exit 1; }
DEMO=$(realpath "$DEMO")
# Every unit file the repo ships must be in the list above, so none goes untested.
shipped=$(git ls-files '*.socket' '*.service' 2>/dev/null | sort)
[ -z "$shipped" ] || [ "$shipped" = "$(printf '%s\n' "${UNITS[@]}" | sort)" ] ||
    { echo "error: shipped unit files changed; update UNITS in $0:"$'\n'"$shipped" >&2; exit 1; }

# --- the cached rootfs ---------------------------------------------------------------------
t=$(now)
if [ ! -x "$ROOTFS/lib/systemd/systemd" ]; then
    command -v curl >/dev/null && ! curl -sSf --max-time 15 -o /dev/null \
        "$MIRROR/dists/bookworm/Release" && skip "Debian mirror $MIRROR unreachable"
    echo "building the bookworm rootfs in $ROOTFS (once; a few minutes)"
    rm -rf "$ROOTFS.tmp"
    mkdir -p "$CACHE"
    if ! debootstrap --variant=minbase --include=systemd,dbus,curl bookworm "$ROOTFS.tmp" \
        "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log" >&2
        rm -rf "$ROOTFS.tmp"
        grep -qiE 'resolv|connect|download|release file' "$CACHE/debootstrap.log" &&
            skip "debootstrap could not reach the Debian mirror $MIRROR"
        echo "error: debootstrap failed (log: $CACHE/debootstrap.log)" >&2
        exit 1
    fi
    mv "$ROOTFS.tmp" "$ROOTFS"
    echo "rootfs built in $(elapsed "$t")"
else
    echo "rootfs: cached in $ROOTFS"
fi

# --- boot ----------------------------------------------------------------------------------
# systemd-nspawn keeps its mount-propagation directory here; on this kind of machine it must
# be a tmpfs (the default /run is not one).
mounted_tmpfs=
if ! mountpoint -q /run/systemd/nspawn 2>/dev/null; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
    mounted_tmpfs=yes
fi

machine=sdl-test-$$
binds=(--bind-ro="$DEMO:/usr/local/bin/demo-server"
    --bind-ro="$PWD/tests/systemd/checks.sh:/usr/local/bin/sdl-checks")
for unit in "${UNITS[@]}"; do
    binds+=(--bind-ro="$PWD/$unit:/etc/systemd/system/$(basename "$unit")")
done

nspawn_pid=
init_pid=
gone() { ! kill -0 "$1" 2>/dev/null; }
wait_gone() { for _ in $(seq "$2"); do gone "$1" && return 0; sleep 0.1; done; gone "$1"; }
cleanup() {
    if [ -n "$nspawn_pid" ] && ! gone "$nspawn_pid"; then
        # SIGTERM: nspawn asks the container's systemd to halt cleanly; a second SIGTERM
        # terminates it at once (a container still booting may ignore the first).
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait_gone "$nspawn_pid" 100 || kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait_gone "$nspawn_pid" 50 || kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    # SIGKILL to nspawn would orphan the container: its init (and with it the whole pid
    # namespace) must go too. Only the pid we found as nspawn's child, never by name.
    if [ -n "$init_pid" ] && ! gone "$init_pid" &&
        [ "$(cat "/proc/$init_pid/comm" 2>/dev/null)" = systemd ]; then
        kill -KILL "$init_pid" 2>/dev/null || true
        wait_gone "$init_pid" 50 || echo "warning: container init $init_pid still running" >&2
    fi
    if [ -n "$mounted_tmpfs" ]; then umount /run/systemd/nspawn 2>/dev/null || true; fi
}
trap cleanup EXIT
trap "exit 130" INT TERM

t=$(now)
systemd-nspawn --quiet --boot --directory="$ROOTFS" --machine="$machine" --register=no \
    --keep-unit --volatile=overlay --private-network --console=passive "${binds[@]}" \
    </dev/null >"$CACHE/boot.log" 2>&1 &
nspawn_pid=$!

# The container's pid 1 (systemd) is nspawn's child.
for _ in $(seq 300); do
    init_pid=$(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null | head -n1 | tr -d " " || true)
    [ -n "$init_pid" ] && [ "$(cat "/proc/$init_pid/comm" 2>/dev/null)" = systemd ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { cat "$CACHE/boot.log" >&2; exit 1; }
    sleep 0.1
done
[ "$(cat "/proc/$init_pid/comm" 2>/dev/null)" = systemd ] || init_pid=
[ -n "$init_pid" ] || { echo "error: the container's systemd did not start" >&2; exit 1; }
in_container() { nsenter --target "$init_pid" --all "$@"; }
# Until its bus socket exists, systemctl cannot connect: retry within a bounded time.
state=
for _ in $(seq 300); do
    state=$(timeout 60 nsenter --target "$init_pid" --all systemctl is-system-running --wait \
        2>/dev/null || true)
    [ -z "$state" ] || break
    sleep 0.2
done
case $state in
running) ;;
degraded) in_container systemctl --failed --no-pager >&2 ;;
*) echo "error: container boot ended in state '$state'" >&2; cat "$CACHE/boot.log" >&2; exit 1 ;;
esac
echo "booted $(in_container systemctl --version | head -n1) (state $state) in $(elapsed "$t")"

# --- checks --------------------------------------------------------------------------------
t=$(now)
timeout 300 nsenter --target "$init_pid" --all /usr/local/bin/sdl-checks
echo "checks took $(elapsed "$t")"

t=$(now)
trap - EXIT
cleanup
echo "container halted in $(elapsed "$t")"
