# shellcheck shell=bash
# token-late, token-late-refused: ONE boot. The root is unlocked by the
# initramfs as in `unlock` (it-root); then, in the booted system, plain
# `cryptsetup open` of two data disks through the token plugin installed
# in libcryptsetup's token directory of the test root (make_late_rootfs):
# /dev/vdb (volume data, policy vm) by `--token-only`; /dev/vdc (volume
# spare, policy refusing, which names another measurement once the disk is
# bound) refused by the broker, so `--token-only` fails and the passphrase
# opens it through `cryptsetup open` (which tries the token first).

fixture token-late it-root
fx_token_late() {
    local dir=$1 mark err
    err=$(late_root_template 2>&1) || { fail "${err:-making the late-boot root template failed}"; return 1; }
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    # The refusing policy admits the platform while the disk is bound.
    policy_set refusing "${VM[measurement]}" || { fail "broker policy set refusing failed"; return 1; }
    quiet broker_cli volume add root --policy vm && disk_copy lateroot "$dir" root && bind_volume "$dir" root ||
        { fail "enrolling the late-boot root failed"; return 1; }
    enrolled_disks "$dir" data || return 1
    quiet broker_cli volume add spare --policy refusing && disk_copy data "$dir" spare && bind_volume "$dir" spare ||
        { fail "enrolling the spare disk failed"; return 1; }
    policy_set refusing "$OTHER_MEASUREMENT" || { fail "broker policy set refusing failed"; return 1; }
    mark=$(audit_mark)
    BOOT_APPEND="keybroker.passphrase=$(cat "$dir/spare.key")" \
        boot token-late "${IMAGE[it-root]}" "$STOP_RE" "$dir/root.img" "$dir/data.img" "$dir/spare.img"
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}

# late_step LOG COND...: sets EV to the test root's first LATE line matching
# every COND; a missing one fails with the LATE lines there were.
late_step() {
    local log=$1 seen
    shift
    EV=$(kv_lines "$log" "$LATE_PREFIX" "$@" | head -n 1)
    [ -n "$EV" ] && return 0
    seen=$(kv_lines "$log" "$LATE_PREFIX" | paste -sd';' -)
    fail "the booted root printed no '$LATE_PREFIX$*' (its lines: ${seen:-none})"
}

# The booted system's `cryptsetup open --token-only` opened the data disk
# through the plugin: one attestation, allowed, for data alone.
check_token_late() {
    local dir=$1 log=${BOOT[log]}
    root_mounted "$log" || { no_root; return 1; }
    late_step "$log" step=end || return 1
    late_step "$log" step=token-only volume=data rc=0 mapped=1 || return 1
    late_step "$log" step=read volume=data "marker=$MARKER_DATA" || return 1
    kv_lines "$dir/audit" "audit: " verdict=allow volumes=data | grep -q . ||
        fail "the broker's audit has no allowed attestation for data alone: $(cat "$dir/audit")" || return 1
    # root (the initramfs's guest-unlock) and data (the plugin), nothing else.
    [ "$(kv_lines "$dir/audit" "audit: " verdict=allow | wc -l)" -eq 2 ] ||
        fail "expected 2 allowed attestations (root, then data), the audit has: $(cat "$dir/audit")" || return 1
    EXTRA="data opened by cryptsetup open --token-only in the booted system"
}
scenario token-late token-late check_token_late \
    "in the booted system, plain cryptsetup open --token-only opens a data disk through the token plugin"

# The broker refused spare: --token-only failed and mapped nothing, the
# passphrase then opened it; the broker refused both attempts (the token
# is tried first by the plain open too) and allowed none for spare.
check_token_late_refused() {
    local dir=$1 log=${BOOT[log]} n
    root_mounted "$log" || { no_root; return 1; }
    late_step "$log" step=token-only volume=spare mapped=0 || return 1
    [ "$(kv_field "$EV" rc)" != 0 ] || fail "cryptsetup open --token-only of spare exited 0: $EV" || return 1
    late_step "$log" step=passphrase volume=spare rc=0 mapped=1 || return 1
    late_step "$log" step=read volume=spare "marker=$MARKER_DATA" || return 1
    n=$(kv_lines "$dir/audit" "audit: " verdict=deny 'reasons~(^|,)POLICY_MEASUREMENT_NOT_ALLOWED(,|$)' | wc -l)
    [ "$n" -eq 2 ] ||
        fail "expected 2 refusals for POLICY_MEASUREMENT_NOT_ALLOWED (--token-only, then the plain open), the audit has: $(cat "$dir/audit")" || return 1
    ! kv_lines "$dir/audit" "audit: " verdict=allow 'volumes~(^|,)spare(,|$)' | grep -q . ||
        fail "the broker released spare: $(cat "$dir/audit")"
}
scenario token-late-refused token-late check_token_late_refused \
    "as token-late, the broker refuses a second disk: --token-only fails, the passphrase opens it through the same cryptsetup open"
