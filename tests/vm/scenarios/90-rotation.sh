# shellcheck shell=bash
# rotation: key rotation with a crash at every step (issue 5). The guest is
# powered off at each of its four rotation steps (keybroker.crash_at= on
# the kernel command line: guest-unlock kills itself there, and the VM is
# killed at its crash-point event: a power cut); the broker is SIGKILLed at
# each of its three points of volume rotation and in the middle of a
# master-key rotation. After every crash the next boot must unlock the
# root; at the end the rotations must be complete: one keyslot, the newest
# version current, every record under the new master key.
#
# Only the last boot goes on to the root switch (which unlock checks);
# the others end at guest-unlock's done event, or its crash point.

ROT_GUEST_POINTS=(guest-after-keyslot-add guest-after-token-update guest-after-confirm guest-after-old-slot-removed)
ROT_BROKER_POINTS=(attest-after-session-recorded confirm-before-promote confirm-after-promote)
ROT_STOP_RE="${EVENT_PREFIX}event=(done|crash-point) |$STOP_RE"
ROT_CRASHES=()  # the crash points passed, in order
ROT_SURVIVED=0  # how many were followed by a boot that unlocked the root
ROT_OPEN=0      # crashes since the last boot that unlocked it

fixture rotation it-root

# rot_boot DIR NAME [POINT]: one boot up to guest-unlock's end (or POINT).
# BOOT_APPEND adds to its command line.
rot_boot() {
    local dir=$1 name=$2 point=${3:-}
    BOOT_APPEND="${BOOT_APPEND:-}${point:+ keybroker.crash_at=$point}" \
        boot "$name" "${IMAGE[it-root]}" "$ROT_STOP_RE" "$dir/root.img"
}

rot_crashed() { ROT_CRASHES+=("$1"); ROT_OPEN=$((ROT_OPEN + 1)); }

# rot_survived: this boot unlocked the root after the last crash(es).
rot_survived() {
    expect_event "${BOOT[log]}" event=unlocked volume=root ||
        fail "root not unlocked in the boot after the crash at ${ROT_CRASHES[-1]}: $REASON" || return 1
    ROT_SURVIVED=$((ROT_SURVIVED + ROT_OPEN)) ROT_OPEN=0
}

# rot_versions [FILE]: "current=N pending=M" (null when none), from the
# running broker or from a saved `broker volume show root --json`.
rot_versions() {
    if [ -n "${1:-}" ]; then cat "$1"; else broker_cli volume show root --json 2>/dev/null; fi |
        jq -r '.rotation | "current=\(.current_version) pending=\(.pending_version)"' 2>/dev/null
}

rot_expect_versions() { # WHEN CURRENT [FILE]
    local v
    v=$(rot_versions "${3:-}")
    [ "$v" = "current=$2 pending=null" ] || fail "$1 the broker has ${v:-nothing}, expected current=$2 and none pending"
}

fx_rotation() {
    local dir=$1 p i
    ROT_CRASHES=() ROT_SURVIVED=0 ROT_OPEN=0
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root || return 1

    # 1. The guest dies at each of its steps of the v1 -> v2 rotation.
    quiet broker_cli volume rotate root || { fail "broker volume rotate failed"; return 1; }
    for p in "${ROT_GUEST_POINTS[@]}"; do
        rot_boot "$dir" "rot-$p" "$p"
        [ ${#ROT_CRASHES[@]} -eq 0 ] || rot_survived || return 1
        expect_event "${BOOT[log]}" event=crash-point "point=$p" || return 1
        rot_crashed "$p"
    done
    rot_boot "$dir" rot-after-guest-crashes
    rot_survived && rot_expect_versions "after the guest's crashes" 2 || return 1

    # 2. The broker dies at each of its points of the v2 -> v3 rotation;
    #    the boot after each crash runs against a broker armed with the next.
    quiet broker_cli volume rotate root || { fail "second broker volume rotate failed"; return 1; }
    for i in "${!ROT_BROKER_POINTS[@]}"; do
        p=${ROT_BROKER_POINTS[$i]}
        broker_serve "$p" || { fail "the broker did not start with crash point $p: ${BROKER[error]}"; return 1; }
        if [ "$p" = attest-after-session-recorded ]; then
            # No reply to Attest: this boot cannot unlock (and the broker
            # stays down, so a short budget is enough to see it give up).
            BOOT_APPEND=guest_unlock.timeout=10 rot_boot "$dir" "rot-$p"
            refute_event "${BOOT[log]}" event=unlocked volume=root || return 1
        else
            rot_boot "$dir" "rot-$p"
            rot_survived || return 1
        fi
        broker_crashed_at "$p" || { fail "the broker did not die at its crash point $p"; return 1; }
        rot_crashed "broker:$p"
    done

    # 3. The broker dies in the middle of a master-key rotation (one record
    #    per batch, killed after the first). The next boot follows both this
    #    crash and the last one of step 2: it still unlocks, the volume
    #    rotation is complete, and the master-key rotation then finishes.
    broker_serve master-after-batch-1 || { fail "the broker did not start with crash point master-after-batch-1: ${BROKER[error]}"; return 1; }
    ! broker_cli rotate-master --batch 1 >"$dir/rotate-master-1.log" 2>&1 ||
        { fail "rotate-master finished although the broker was to die after batch 1"; return 1; }
    sleep 0.5
    broker_crashed_at master-after-batch-1 || { fail "the broker did not die at master-after-batch-1"; return 1; }
    rot_crashed broker:master-after-batch-1
    broker_serve || { fail "the broker did not restart after the crashes: ${BROKER[error]}"; return 1; }
    rot_boot "$dir" rot-after-broker-crashes
    rot_survived && rot_expect_versions "after the broker's crashes" 3 || return 1
    quiet broker_cli rotate-master || { fail "the resumed rotate-master failed"; return 1; }
    broker_serve || { fail "the broker did not restart after the master-key rotation: ${BROKER[error]}"; return 1; }

    # The last boot goes all the way to the root.
    boot rot-final "${IMAGE[it-root]}" "$STOP_RE" "$dir/root.img"
    root_mounted "${BOOT[log]}" || { no_root; return 1; }
    # The broker's end state, for the check (the broker stops with the fixture).
    broker_cli volume show root --json >"$dir/volume.json" 2>&1 ||
        { fail "broker volume show failed: $(cat "$dir/volume.json")"; return 1; }
    broker_cli status --json >"$dir/status.json" 2>&1 || { fail "broker status failed: $(cat "$dir/status.json")"; return 1; }
}

scenario rotation rotation check_rotation \
    "key rotation with a crash at every step of the guest and the broker (10 boots); each next boot unlocks"
# The end state: v3 current, v1 and v2 retired; the disk holds exactly one
# broker keyslot (v3) beside the enrollment passphrase; no master-key
# rotation under way.
check_rotation() {
    local dir=$1 slots
    rot_expect_versions "at the end" 3 "$dir/volume.json" || return 1
    slots=$("$G" list "$dir/root.img" --json 2>&1 | jq -c '[.[] | .slots[]]') ||
        { fail "guest-unlock list --json failed: $slots"; return 1; }
    [ "$(jq -r 'length' <<<"$slots")" = 1 ] && [ "$(jq -r '.[0].key_version' <<<"$slots")" = 3 ] ||
        fail "root.img should hold one broker keyslot, of version 3: $slots" || return 1
    [ "$(jq -r '.master_rotation_under_way' "$dir/status.json")" = false ] ||
        fail "broker status still shows a master-key rotation: $(tr -d '\n' <"$dir/status.json")" || return 1
    [ "$ROT_SURVIVED" -eq ${#ROT_CRASHES[@]} ] ||
        fail "$ROT_SURVIVED of ${#ROT_CRASHES[@]} crashes were followed by an unlock" || return 1
    EXTRA="${#ROT_CRASHES[@]} crash points ($(IFS=,; echo "${ROT_CRASHES[*]}")), the root unlocked after each"
}
