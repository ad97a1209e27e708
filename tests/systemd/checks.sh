#!/bin/bash
# Runs INSIDE the booted container (tests/systemd/run.sh starts it with nsenter). systemd 252
# is pid 1 here, /usr/local/bin/demo-server is the release build and every unit file the repo
# ships is in /etc/systemd/system. Each check prints "ok: ..." or "FAIL: ..." and exits 1.
set -euo pipefail

fail() {
    echo "FAIL: $*" >&2
    for unit in demo-server.socket demo-server.service demo-server-accept.socket; do
        systemctl status --no-pager --lines=15 "$unit" >&2 || true
    done
    exit 1
}
ok() { echo "ok: $*"; }

# The value of one unit property (systemctl show -P).
prop() { systemctl show -P "$2" "$1"; }

# Wait up to $1 seconds until the command after it succeeds.
wait_for() {
    local secs=$1
    shift
    local end=$((SECONDS + secs))
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.1
    done
}

state_is() { [ "$(prop "$1" ActiveState)/$(prop "$1" SubState)" = "$2" ]; }

# A JSON field of demo-server's /info, good enough for its flat output: "key":value.
field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -n1 | cut -d: -f2- | tr -d '"'; }

# systemctl stop, quiet about the expected "can still be activated by demo-server.socket".
stop() {
    local out
    out=$(systemctl stop "$@" 2>&1) || fail "systemctl stop $*: $out"
}

get() { curl -sS --max-time 10 "$1" || fail "GET $1 failed"; }

systemctl daemon-reload
for unit in demo-server.socket demo-server.service demo-server-accept.socket \
    demo-server-accept@probe.service; do
    [ "$(prop "$unit" LoadState)" = loaded ] || fail "$unit did not load: $(prop "$unit" LoadError)"
done
ok "every shipped unit file loads"

# --- Accept=no: systemd binds, the service starts on the first connection ---------------------
systemctl start demo-server.socket
state_is demo-server.socket active/listening || fail "demo-server.socket is not listening"
state_is demo-server.service inactive/dead || fail "demo-server.service started before any connection"
info=$(get http://127.0.0.1:8080/info)
[ "$(field "$info" activated)" = true ] || fail "/info says not activated: $info"
[ "$(field "$info" name)" = http ] || fail "/info does not carry FileDescriptorName=http: $info"
[ "$(field "$info" pid)" = "$(prop demo-server.service MainPID)" ] ||
    fail "/info pid is not the service's MainPID: $info"
first_pid=$(field "$info" pid)
ok "Accept=no: the first connection starts demo-server.service, /info: $info"

# --- Type=notify: "active (running)" only once READY=1 arrived ---------------------------------
# A runtime drop-in delays the exec by 2 s; the unit must stay "activating" until demo-server
# itself reports READY=1 (the shell execs it, so the main pid that may notify stays the same).
stop demo-server.service
mkdir -p /run/systemd/system/demo-server.service.d
cat >/run/systemd/system/demo-server.service.d/50-slow-start.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/bin/sh -c 'sleep 2; exec /usr/local/bin/demo-server'
EOF
systemctl daemon-reload
systemctl start --no-block demo-server.service
sleep 1
state_is demo-server.service activating/start ||
    fail "Type=notify: expected activating/start before READY=1, got $(prop demo-server.service SubState)"
wait_for 20 state_is demo-server.service active/running || fail "never reached active (running)"
systemctl status --no-pager demo-server.service | grep -q 'Active: active (running)' ||
    fail "systemctl status does not say active (running)"
started=$(prop demo-server.service ExecMainStartTimestampMonotonic)
active=$(prop demo-server.service ActiveEnterTimestampMonotonic)
[ $((active - started)) -ge 2000000 ] ||
    fail "active $((active - started)) us after the start: earlier than READY=1 could come"
ok "Type=notify: activating for $(((active - started) / 1000)) ms, active (running) after READY=1"
rm -r /run/systemd/system/demo-server.service.d
systemctl daemon-reload

# --- systemctl stop drains an in-flight request and reports success ------------------------------
curl -sS --max-time 20 -o /tmp/slow.body -w '%{http_code}' 'http://127.0.0.1:8080/slow?ms=1500' \
    >/tmp/slow.code &
slow=$!
sleep 0.3
stop demo-server.service
wait "$slow" || fail "the in-flight request failed during systemctl stop"
[ "$(cat /tmp/slow.code)" = 200 ] || fail "the in-flight request got $(cat /tmp/slow.code)"
[ "$(prop demo-server.service Result)" = success ] ||
    fail "Result=$(prop demo-server.service Result) after stop"
[ "$(prop demo-server.service ExecMainStatus)" = 0 ] ||
    fail "demo-server exited $(prop demo-server.service ExecMainStatus) on SIGTERM"
rm -f /tmp/slow.body /tmp/slow.code
ok "systemctl stop: the in-flight /slow request got 200, Result=success, exit status 0"

# --- the socket stays and activates the service again --------------------------------------------
state_is demo-server.socket active/listening || fail "the socket stopped with the service"
state_is demo-server.service inactive/dead || fail "demo-server.service still running after stop"
info=$(get http://127.0.0.1:8080/info)
[ "$(field "$info" activated)" = true ] || fail "re-activated /info: $info"
[ "$(field "$info" pid)" != "$first_pid" ] || fail "no new process after re-activation"
state_is demo-server.service active/running || fail "not running after re-activation"
ok "the next connection re-activates demo-server.service (pid $first_pid -> $(field "$info" pid))"
stop demo-server.service demo-server.socket

# --- Accept=yes: one instance, one new pid, per connection ---------------------------------------
systemctl start demo-server-accept.socket
a=$(get http://127.0.0.1:8081/info)
b=$(get http://127.0.0.1:8081/info)
for i in "$a" "$b"; do
    [ "$(field "$i" activated)" = true ] || fail "Accept=yes /info: $i"
    [ "$(field "$i" listening)" = false ] || fail "Accept=yes passed a listener: $i"
done
[ "$(field "$a" pid)" != "$(field "$b" pid)" ] || fail "the same pid served two connections"
[ "$(prop demo-server-accept.socket NAccepted)" = 2 ] ||
    fail "NAccepted=$(prop demo-server-accept.socket NAccepted), expected 2"
no_instance_left() { [ -z "$(systemctl list-units --no-legend --state=active 'demo-server-accept@*')" ]; }
wait_for 20 no_instance_left || fail "per-connection instances still running"
ok "Accept=yes: pids $(field "$a" pid) and $(field "$b" pid), each exited after its connection"
stop demo-server-accept.socket

echo "all systemd checks passed"
