# shellcheck shell=bash
# token, token-refused: the guest-unlock PACKAGE (target/debian, extracted
# over the build namespace as if installed) in a dracut systemd initrd,
# without the project's own unlock step (90guest-unlock is omitted): a
# plain crypttab (`root /dev/vda none luks`, `data /dev/vdb none luks`)
# and systemd-cryptsetup, which opens both volumes through the token
# plugin (the package's 91guest-unlock-token module puts it in; the
# plugin is the test build, whose only difference is the simulated
# platform). Nothing of guest-unlock's own code path runs: no event line.

fixture token dracut-token
fx_token() {
    local dir=$1 mark
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root data || return 1
    mark=$(audit_mark)
    boot token "${IMAGE[dracut-token]}" "$STOP_RE" "$dir/root.img" "$dir/data.img"
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}

# check_token_unlocked DIR: both volumes opened, each by one attestation of
# the plugin (one per token) that the broker allowed, none by guest-unlock.
check_token_unlocked() {
    local dir=$1 log=${BOOT[log]} v
    root_mounted "$log" || { no_root; return 1; }
    data_read "$log" || fail "the test root could not read the data volume (no $MARKER_DATA)" || return 1
    if events "$log" | grep -q .; then
        fail "guest-unlock's own unlock ran (event lines: $(events "$log" | head -n 2 | tr '\n' ' '))"
        return 1
    fi
    for v in root data; do
        kv_lines "$dir/audit" "audit: " verdict=allow "volumes=$v" | grep -q . ||
            fail "the broker's audit has no allowed attestation for $v alone: $(cat "$dir/audit")" || return 1
    done
    [ "$(kv_lines "$dir/audit" "audit: " verdict=allow | wc -l)" -eq 2 ] ||
        fail "expected 2 allowed attestations (one per token), the audit has: $(cat "$dir/audit")" || return 1
    EXTRA="root and data opened by systemd-cryptsetup through the plugin"
}
scenario token token check_token_unlocked \
    "the .deb in a dracut systemd initrd: systemd-cryptsetup opens root and data from plain crypttab lines through the token plugin"

fixture token-refused dracut-token
fx_token_refused() {
    local dir=$1 mark
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root data || return 1
    policy_set vm "$OTHER_MEASUREMENT" || { fail "broker policy set failed"; return 1; }
    mark=$(audit_mark)
    boot token-refused "${IMAGE[dracut-token]}" "$FALLBACK_RE" "$dir/root.img" "$dir/data.img"
    audit_since "$mark" >"$dir/audit"
}
check_token_refused() {
    local dir=$1
    fell_back || return 1
    kv_lines "$dir/audit" "audit: " verdict=deny 'reasons~(^|,)POLICY_MEASUREMENT_NOT_ALLOWED(,|$)' | grep -q . ||
        fail "the broker's audit has no refusal for POLICY_MEASUREMENT_NOT_ALLOWED: $(cat "$dir/audit")" || return 1
    ! kv_lines "$dir/audit" "audit: " verdict=allow | grep -q . ||
        fail "the broker allowed an attestation: $(cat "$dir/audit")"
}
scenario token-refused token-refused check_token_refused \
    "as token, the broker refuses: the plugin gives up and systemd-cryptsetup asks for the passphrase"
