# shellcheck shell=bash
# unlock, two-volumes: ONE initramfs-tools boot with a LUKS2 root and a
# LUKS2 data disk, both bound to the broker, checked by both scenarios.

fixture unlock it-root-data
fx_unlock() {
    local dir=$1 mark
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root data || return 1
    mark=$(audit_mark)
    boot unlock "${IMAGE[it-root-data]}" "$STOP_RE" "$dir/root.img" "$dir/data.img"
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}

# check_root_unlocked DIR: the root was opened with the broker's key and
# switched to, by the one attestation the broker allowed during the boot.
check_root_unlocked() {
    local dir=$1 log=${BOOT[log]} decision n
    root_mounted "$log" || { no_root; return 1; }
    expect_event "$log" event=unlocked volume=root device=/dev/vda name=root || return 1
    decision=$(kv_field "$EV" decision)
    n=$(kv_lines "$dir/audit" "audit: " verdict=allow | wc -l)
    [ "$n" -eq 1 ] || fail "expected 1 allowed attestation during the boot, the broker's audit has $n" || return 1
    kv_lines "$dir/audit" "audit: " verdict=allow "id=$decision" | grep -q . ||
        fail "the guest's decision=$decision is not the broker's allow entry: $(cat "$dir/audit")" || return 1
    expect_event "$log" event=done locked=0 || return 1
    EXTRA="guest-unlock $(kv_field "$EV" secs)s"
}

scenario unlock unlock check_unlock \
    "initramfs-tools: guest-unlock opens the LUKS2 root with the broker's key, the root is switched to"
check_unlock() { check_root_unlocked "$1"; }

scenario two-volumes unlock check_two_volumes \
    "root and a data disk both open from ONE attestation that released both keys"
check_two_volumes() {
    local dir=$1 log=${BOOT[log]} root_decision
    expect_event "$log" event=unlocked volume=root || return 1
    root_decision=$(kv_field "$EV" decision)
    expect_event "$log" event=unlocked volume=data device=/dev/vdb name=data || return 1
    [ "$(kv_field "$EV" decision)" = "$root_decision" ] ||
        fail "root and data were released by different decisions ($root_decision, $(kv_field "$EV" decision))" || return 1
    kv_lines "$dir/audit" "audit: " verdict=allow "id=$root_decision" 'volumes~^(root,data|data,root)$' | grep -q . ||
        fail "the broker's decision $root_decision did not release both volumes: $(cat "$dir/audit")" || return 1
    data_read "$log" || fail "the test root could not read the data volume (no $MARKER_DATA)" || return 1
    expect_event "$log" event=done unlocked=2 locked=0
}
