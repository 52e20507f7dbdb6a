# shellcheck shell=bash
# token-late, token-late-refused, token-late-systemd: ONE boot. The root is
# unlocked by the initramfs as in `unlock` (it-root); then the booted
# system, whose root has the token plugin in libcryptsetup's token
# directory (make_late_rootfs), opens two data disks itself
# (write_late_init): /dev/vdb (volume data, policy vm) and /dev/vdc
# (volume spare, policy refusing, which names another measurement once the
# disk is bound), first by plain `cryptsetup open`, then, closed again, by
# systemd-cryptsetup. The broker's audit of the boot is, in order: root
# (the initramfs), data, spare refused twice (cryptsetup open
# --token-only, then the plain open), data, spare refused
# (systemd-cryptsetup).

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

# late_audit DIR N COND...: the boot's Nth attestation in the broker's
# audit matches every COND (the guest opens the disks one after the other).
late_audit() {
    local dir=$1 n=$2
    shift 2
    sed -n "${n}p" "$dir/audit" | kv_lines /dev/stdin "audit: " "$@" | grep -q . ||
        fail "attestation $n of the boot is not $* (the broker's audit: $(paste -sd';' "$dir/audit"))"
}

# The booted system's `cryptsetup open --token-only` opened the data disk
# through the plugin, by an attestation for data alone that the broker
# allowed after the initramfs's for root.
check_token_late() {
    local dir=$1 log=${BOOT[log]}
    root_mounted "$log" || { no_root; return 1; }
    late_step "$log" step=end || return 1
    late_step "$log" step=token-only volume=data rc=0 mapped=1 || return 1
    late_step "$log" step=read volume=data by=token-only "marker=$MARKER_DATA" || return 1
    late_audit "$dir" 1 verdict=allow volumes=root || return 1
    late_audit "$dir" 2 verdict=allow volumes=data || return 1
    EXTRA="data opened by cryptsetup open --token-only in the booted system"
}
scenario token-late token-late check_token_late \
    "in the booted system, plain cryptsetup open --token-only opens a data disk through the token plugin"

# The broker refused spare: --token-only failed and mapped nothing; the
# plain open, which tried the token first (the second refusal), took the
# passphrase.
check_token_late_refused() {
    local dir=$1 log=${BOOT[log]} n
    root_mounted "$log" || { no_root; return 1; }
    late_step "$log" step=token-only volume=spare mapped=0 || return 1
    [ "$(kv_field "$EV" rc)" != 0 ] || fail "cryptsetup open --token-only of spare exited 0: $EV" || return 1
    late_step "$log" step=passphrase volume=spare rc=0 mapped=1 || return 1
    late_step "$log" step=read volume=spare by=passphrase "marker=$MARKER_DATA" || return 1
    for n in 3 4; do
        late_audit "$dir" "$n" verdict=deny volumes=spare 'reasons~(^|,)POLICY_MEASUREMENT_NOT_ALLOWED(,|$)' || return 1
    done
    ! kv_lines "$dir/audit" "audit: " verdict=allow 'volumes~(^|,)spare(,|$)' | grep -q . ||
        fail "the broker released spare: $(paste -sd';' "$dir/audit")"
}
scenario token-late-refused token-late check_token_late_refused \
    "as token-late, the broker refuses a second disk: --token-only fails, the passphrase opens it through the same cryptsetup open"

# systemd-cryptsetup attach (what systemd-cryptsetup@.service runs for a
# plain crypttab line, headless) opened data through the plugin and did
# not open spare, which the broker refused; nothing else was attested.
check_token_late_systemd() {
    local dir=$1 log=${BOOT[log]}
    root_mounted "$log" || { no_root; return 1; }
    late_step "$log" step=systemd-cryptsetup volume=data rc=0 mapped=1 || return 1
    late_step "$log" step=read volume=data by=systemd-cryptsetup "marker=$MARKER_DATA" || return 1
    late_step "$log" step=systemd-cryptsetup volume=spare mapped=0 || return 1
    [ "$(kv_field "$EV" rc)" != 0 ] || fail "systemd-cryptsetup attach of spare exited 0: $EV" || return 1
    late_audit "$dir" 5 verdict=allow volumes=data || return 1
    late_audit "$dir" 6 verdict=deny volumes=spare 'reasons~(^|,)POLICY_MEASUREMENT_NOT_ALLOWED(,|$)' || return 1
    [ "$(wc -l <"$dir/audit")" -eq 6 ] ||
        fail "expected 6 attestations during the boot, the broker's audit has: $(paste -sd';' "$dir/audit")"
}
scenario token-late-systemd token-late check_token_late_systemd \
    "in the booted system, systemd-cryptsetup attach (as its unit runs it, systemd not PID 1) opens data through the plugin and not the refused disk"

# token-late-unit: the same root booted with systemd as its init; the
# crypttab line `data /dev/vdb none luks` of the booted system goes
# through systemd-cryptsetup-generator and systemd-cryptsetup@data.service,
# which opens the data disk through the plugin; a unit after
# cryptsetup.target reads the marker (late_systemd_config).
fixture token-late-unit it-root
fx_token_late_unit() {
    local dir=$1 mark err
    err=$(late_root_template 2>&1) || { fail "${err:-making the late-boot root template failed}"; return 1; }
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    quiet broker_cli volume add root --policy vm && disk_copy lateroot "$dir" root && bind_volume "$dir" root ||
        { fail "enrolling the late-boot root failed"; return 1; }
    enrolled_disks "$dir" data || return 1
    mark=$(audit_mark)
    BOOT_APPEND="init=/usr/lib/systemd/systemd" \
        boot token-late-unit "${IMAGE[it-root]}" "$STOP_RE" "$dir/root.img" "$dir/data.img"
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}
check_token_late_unit() {
    local dir=$1 log=${BOOT[log]}
    late_step "$log" step=systemd-unit volume=data active=active "marker=$MARKER_DATA" || return 1
    late_audit "$dir" 1 verdict=allow volumes=root || return 1
    late_audit "$dir" 2 verdict=allow volumes=data || return 1
    [ "$(wc -l <"$dir/audit")" -eq 2 ] ||
        fail "expected 2 attestations during the boot, the broker's audit has: $(paste -sd';' "$dir/audit")"
}
scenario token-late-unit token-late-unit check_token_late_unit \
    "systemd as the booted system's init: a plain crypttab line opens the data disk at late boot through the plugin (generator, systemd-cryptsetup@data.service)"
