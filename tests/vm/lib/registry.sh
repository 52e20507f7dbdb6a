# shellcheck shell=bash
# tests/vm: scenarios and the fixtures they check. scenarios/*.sh declare
# them; run_scenario runs a scenario's fixture (once) and then its check.

SCENARIOS=()
declare -A SC_FIXTURE=() SC_CHECK=() SC_DESC=()
declare -A FX_IMAGES=() FX_STATUS=() FX_SECS=() FX_BOOTS=()

# fixture NAME IMAGE...: fx_NAME (dashes as underscores) DIR makes a broker,
# disks and boots, and returns 0, 1 (REASON) or 77 (skip, REASON). It runs
# once per harness run, whatever number of scenarios check it.
fixture() { local n=$1; shift; FX_IMAGES[$n]="$*"; }

# scenario NAME FIXTURE CHECK DESCRIPTION: CHECK DIR runs after the fixture,
# with BOOT[] of its last boot and the fixture's DIR, and returns like it.
scenario() {
    SCENARIOS+=("$1")
    SC_FIXTURE[$1]=$2 SC_CHECK[$1]=$3 SC_DESC[$1]=$4
}

# run_fixture NAME: runs it once; FX_STATUS[NAME] is its status.
run_fixture() {
    local name=$1 dir=$W/run/$1 t img rc=0
    [ -n "${FX_STATUS[$name]:-}" ] && return 0
    rm -rf "$dir" && mkdir -p "$dir"
    t=$(now)
    REASON='' BOOT=()
    for img in ${FX_IMAGES[$name]}; do
        case ${IMAGE_ERR[$img]:-} in
            '') ;;
            skip:*) REASON=${IMAGE_ERR[$img]#skip: }; rc=77 ;;
            *) REASON=${IMAGE_ERR[$img]}; rc=1 ;;
        esac
    done
    if [ $rc -eq 0 ]; then
        "fx_${name//-/_}" "$dir"; rc=$?
    fi
    broker_stop
    FX_STATUS[$name]=$rc FX_SECS[$name]=$(elapsed "$t") FX_REASON=$REASON
    FX_BOOTS[$name]=$(awk -v s="${FX_BOOT_SECS:-}" 'BEGIN { n = split(s, a, " "); for (i = 1; i <= n; i++) t += a[i]; printf "%.1f", t }')
    FX_BOOT_SECS=
}

FX_REASON=

run_scenario() {
    local s=$1 fx=${SC_FIXTURE[$1]} rc extra='' shared
    run_fixture "$fx"
    rc=${FX_STATUS[$fx]}
    REASON=$FX_REASON EXTRA=
    if [ "$rc" -eq 0 ]; then
        "${SC_CHECK[$s]}" "$W/run/$fx"; rc=$?
    fi
    shared=$(for o in "${want[@]}"; do [ "$o" != "$s" ] && [ "${SC_FIXTURE[$o]}" = "$fx" ] && printf ' %s' "$o"; done)
    extra="fixture $fx ${FX_SECS[$fx]}s, boots ${FX_BOOTS[$fx]}s${shared:+, shared with$shared}${EXTRA:+; $EXTRA}"
    case $rc in
        0) say "PASS $s ($extra)"; npass=$((npass + 1)) ;;
        77) say "SKIP $s: $REASON"; nskip=$((nskip + 1)) ;;
        *)
            nfail=$((nfail + 1)) FX_KEEP[$fx]=1
            [ -e "$W/run/$fx/broker/serve.log" ] && cp "$W/run/$fx/broker/serve.log" "$LOGS/$fx.broker.log"
            say "FAIL $s: $REASON (console: ${BOOT[log]:-none}${BOOT[log]:+, broker log: $LOGS/$fx.broker.log})"
            ;;
    esac
}

