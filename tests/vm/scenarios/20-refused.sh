# shellcheck shell=bash
# refused, broker-down: the boot falls back to cryptroot's passphrase
# prompt, with the reason on the console, and the root stays locked.

# A measurement no guest has: the policy that refuses.
OTHER_MEASUREMENT=$(printf '%096d' 0 | tr 0 e)

# fx_refused_on VARIANT NAME DIR: the volume was bound while the policy
# admitted the guest; now the policy names another image.
fx_refused_on() {
    local variant=$1 name=$2 dir=$3 mark
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root || return 1
    policy_set vm "$OTHER_MEASUREMENT" || { fail "broker policy set failed"; return 1; }
    mark=$(audit_mark)
    boot "$name" "${IMAGE[$variant]}" "$FALLBACK_RE" "$dir/root.img"
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}

fixture refused it-root
fx_refused() { fx_refused_on it-root refused "$1"; }

# fell_back: the boot reached the passphrase prompt and not the root.
fell_back() {
    [ -n "${BOOT[stopped]}" ] || fail "no passphrase prompt${BOOT[timed_out]:+ within ${BOOT_TIMEOUT}s}" || return 1
    ! root_mounted "${BOOT[log]}" || fail "the root was mounted" || return 1
    EXTRA="prompt after ${BOOT[stopped]}s"
}

# check_refused DIR: the guest printed the broker's reason, the broker
# recorded the refusal under the decision the guest names.
check_refused() {
    local dir=$1 log=${BOOT[log]} decision
    fell_back || return 1
    refute_event "$log" event=unlocked volume=root || return 1
    expect_event "$log" event=refused volume=root device=/dev/vda \
        'reasons~(^|,)POLICY_MEASUREMENT_NOT_ALLOWED(,|$)' || return 1
    decision=$(kv_field "$EV" decision)
    kv_lines "$dir/audit" "audit: " verdict=deny "id=$decision" \
        'reasons~(^|,)POLICY_MEASUREMENT_NOT_ALLOWED(,|$)' | grep -q . ||
        fail "the broker's audit has no refusal $decision for POLICY_MEASUREMENT_NOT_ALLOWED: $(cat "$dir/audit")"
}

scenario refused refused check_refused \
    "the policy names another measurement: POLICY_MEASUREMENT_NOT_ALLOWED on the console, cryptroot's passphrase prompt"

# The boot's budget for guest-unlock (guest_unlock.timeout=, which caps the
# config's timeout_secs): a dead broker must cost no more than that.
BROKER_DOWN_BUDGET=10

fixture broker-down it-root
fx_broker_down() {
    local dir=$1
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root || return 1
    broker_stop KILL # the broker crashed: nothing listens on its port any more
    BOOT_APPEND="guest_unlock.timeout=$BROKER_DOWN_BUDGET" \
        boot broker-down "${IMAGE[it-root]}" "$FALLBACK_RE" "$dir/root.img"
}

scenario broker-down broker-down check_broker_down \
    "the broker is gone: guest-unlock gives up within the boot's budget, the passphrase prompt follows"
check_broker_down() {
    local log=${BOOT[log]} secs
    fell_back || return 1
    expect_event "$log" event=failed volume=root device=/dev/vda || return 1
    expect_event "$log" event=done unlocked=0 locked=1 || return 1
    secs=$(kv_field "$EV" secs)
    awk -v s="$secs" -v t="$BROKER_DOWN_BUDGET" 'BEGIN { exit !(s <= t + 5) }' ||
        fail "guest-unlock gave up only after ${secs}s (guest_unlock.timeout=$BROKER_DOWN_BUDGET)" || return 1
    EXTRA="guest-unlock gave up after ${secs}s, prompt after ${BOOT[stopped]}s"
}
