# shellcheck shell=bash
# tests/vm: output, timing, the processes the harness started, key=value
# matching. Sourced by tests/vm/run.

say() { printf '%s\n' "$*"; }
note() { [ "${KEYBROKER_VM_VERBOSE:-0}" = 1 ] && printf 'vm: %s\n' "$*" >&2; return 0; }
die() { printf 'tests/vm/run: %s\n' "$*" >&2; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Runs a setup command, showing its output only when it fails (or verbose).
quiet() {
    local out rc
    out=$("$@" 2>&1); rc=$?
    if [ -n "$out" ] && { [ $rc -ne 0 ] || [ "${KEYBROKER_VM_VERBOSE:-0}" = 1 ]; }; then printf '%s\n' "$out" >&2; fi
    return $rc
}

# Processes this harness started and has not stopped yet (brokers, socat,
# qemu): ended by id when it exits, never by name.
PIDS=()
track() { PIDS+=("$1"); }
untrack() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
stop_tracked() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
    return 0
}

# Why a check failed: set by fail, printed on the scenario's FAIL line.
# Checks return 0 (pass), 1 (fail, REASON set) or 77 (skip, REASON set).
REASON=
fail() { REASON=$*; return 1; }
skip() { REASON=$*; return 77; }

# kv_lines FILE PREFIX [KEY=VALUE | KEY~ERE]...: the lines of FILE that
# contain PREFIX, from PREFIX's end on, whose space-separated key=value
# fields match every condition (exact value with =, extended regex with ~).
# Carriage returns of the serial console are dropped. The guest's event
# lines (tests/vm/README.md) and the harness's audit summaries are both
# read through this.
kv_lines() {
    local file=$1 prefix=$2
    shift 2
    awk -v prefix="$prefix" -v conds="$*" '
        BEGIN { nc = split(conds, c, " ") }
        {
            sub(/\r$/, "")
            i = index($0, prefix)
            if (!i) next
            line = substr($0, i + length(prefix))
            n = split(line, f, " ")
            delete kv
            for (j = 1; j <= n; j++) {
                p = index(f[j], "=")
                if (p) kv[substr(f[j], 1, p - 1)] = substr(f[j], p + 1)
            }
            for (j = 1; j <= nc; j++) {
                e = index(c[j], "="); t = index(c[j], "~")
                if (e && (!t || e < t)) {
                    k = substr(c[j], 1, e - 1)
                    if (!(k in kv) || kv[k] != substr(c[j], e + 1)) next
                } else {
                    k = substr(c[j], 1, t - 1)
                    if (!(k in kv) || kv[k] !~ substr(c[j], t + 1)) next
                }
            }
            print line
        }' "$file" 2>/dev/null
}

# kv_field LINE KEY: the value of KEY in a key=value line.
kv_field() {
    local f
    for f in $1; do
        case $f in "$2"=*) printf '%s\n' "${f#*=}"; return 0 ;; esac
    done
    return 1
}
