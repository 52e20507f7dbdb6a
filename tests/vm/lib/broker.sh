# shellcheck shell=bash
# tests/vm: the broker of a fixture, on the host's 127.0.0.1, administered
# through its admin socket. One broker at a time.

declare -A BROKER=() # dir cfg pin port pid log error

# broker_new DIR: init, the simulated ARK trusted, serve, policy "vm"
# admitting the simulated platform's measurement.
broker_new() {
    local dir=$1
    rm -rf "$dir" && mkdir -p "$dir" || return 1
    "$B" init --dir "$dir/b" --listen 127.0.0.1:0 --admin-socket "$dir/b/admin.sock" \
        >"$dir/init.out" 2>&1 || { cat "$dir/init.out" >&2; return 1; }
    BROKER=([dir]=$dir [cfg]=$dir/b/config.toml [pid]='' [log]=$dir/serve.log)
    BROKER[pin]=$(awk '/^spki pin:/ { print $3 }' "$dir/init.out")
    cat >>"${BROKER[cfg]}" <<TOML

# VM tests only: trust the simulated platform.
[attestation.simulated]
ark = "${VM[sim]}/ark.pem"
generation = "milan"
TOML
    broker_serve && policy_set vm "${VM[measurement]}"
}

# broker_serve [CRASH_POINT]: (re)starts the broker, armed with a crash
# point of its rotation code when one is named.
broker_serve() {
    local dir=${BROKER[dir]} addr env=()
    broker_stop
    [ -z "${1:-}" ] || env=("KEYBROKER_CRASH_AT=$1")
    env "${env[@]}" "$B" serve --config "${BROKER[cfg]}" >"$dir/serve.out" 2>>"${BROKER[log]}" &
    BROKER[pid]=$!
    disown "${BROKER[pid]}" # no job report when a scenario kills it
    track "${BROKER[pid]}"
    for _ in $(seq 1 300); do
        grep -q '^listening on ' "$dir/serve.out" 2>/dev/null && break
        kill -0 "${BROKER[pid]}" 2>/dev/null || break
        sleep 0.1
    done
    addr=$(awk '/^listening on / { print $3; exit }' "$dir/serve.out")
    if [ -z "$addr" ]; then
        # why, for the scenario's FAIL line
        if kill -0 "${BROKER[pid]}" 2>/dev/null; then BROKER[error]="not listening after 30 s"; else BROKER[error]="exited at once"; fi
        BROKER[error]+=", last log line: $(tail -n 1 "${BROKER[log]}")"
        return 1
    fi
    BROKER[port]=${addr##*:} BROKER[error]=
}

# broker_stop [SIGNAL]: SIGTERM drains (bounded here to 3 s); KILL is a crash.
broker_stop() {
    local pid=${BROKER[pid]:-}
    [ -n "$pid" ] || return 0
    kill -"${1:-TERM}" "$pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    untrack "$pid"
    BROKER[pid]=
}

# broker_crashed_at POINT: the broker killed itself at its crash point.
broker_crashed_at() {
    ! broker_alive && grep -q "KEYBROKER_CRASH_AT=$1 reached" "${BROKER[log]}"
}

broker_alive() { [ -n "${BROKER[pid]:-}" ] && kill -0 "${BROKER[pid]}" 2>/dev/null; }

# broker_cli ARGS...: a broker admin command against this broker.
broker_cli() { "$B" "$@" --config "${BROKER[cfg]}"; }

# policy_put NAME TOP [TABLES]: sets policy NAME to the SNP checks every
# scenario uses, with TOP (top-level keys) and TABLES (TOML tables) added.
policy_put() {
    local f=${BROKER[dir]}/policy-$1.toml
    cat >"$f" <<TOML
version = 1
$2
allow_debug = false
allow_migration_agent = false
max_vmpl = 0

[min_tcb.milan]
bootloader = 0
tee = 0
snp = 0
microcode = 0
${3:-}
TOML
    quiet broker_cli policy set "$1" "$f"
}

# policy_set NAME MEASUREMENT
policy_set() { policy_put "$1" "measurements = [\"$2\"]"; }

# audit_mark: the id of the newest audit entry (0 when none), to tell a
# boot's decisions from earlier ones (bind attests too).
audit_mark() {
    broker_cli audit --limit 1 --json 2>/dev/null | jq -r '.[-1].id // 0'
}

# audit_since MARK: the Attest decisions after MARK, one summary line each
# for kv_lines: "audit: id=N verdict=allow volumes=root,data reasons=-".
audit_since() {
    broker_cli audit --kind attest --json 2>/dev/null | jq -r --argjson m "$1" '
        .[] | select(.id > $m)
        | "audit: id=\(.id) verdict=\(.verdict) volumes=\(.volumes | join(",") | if . == "" then "-" else . end) reasons=\(.reason_codes | join(",") | if . == "" then "-" else . end)"'
}

# The broker's decisions in its own words (`broker audit`), for people:
# KEYBROKER_VM_SHOW_DECISIONS=1 prints them (scripts/demo does).
audit_text_since() {
    broker_cli audit --kind attest 2>/dev/null | awk -v m="$1" '$1 > m'
}
