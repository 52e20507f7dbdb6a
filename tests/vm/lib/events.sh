# shellcheck shell=bash
# tests/vm: what the guest said, read from machine-readable lines only.
#
# guest-unlock prints one line per event on the console (the contract is
# in docs/operations.md, "Event lines"):
#   guest-unlock: event=unlocked v=1 volume=root device=/dev/vda name=root keyslot=1 key-version=1 decision=7
# and the test root prints its own markers:
#   KEYBROKER-ROOT-OK root=/dev/mapper/root      the root it was started from
#   KEYBROKER-DATA-OK                            the data volume's marker file, read
# Human messages are never asserted on: rewording one breaks nothing here.
# (The passphrase prompts the fallback ends at belong to cryptsetup and
# systemd; the harness only waits for them.)

EVENT_PREFIX='guest-unlock: '
MARKER_ROOT=KEYBROKER-ROOT-OK
MARKER_DATA=KEYBROKER-DATA-OK
# The late-boot test root (token-late) says what each of its steps did:
#   KEYBROKER-LATE step=token-only volume=data rc=0 mapped=1
#   KEYBROKER-LATE step=read volume=data by=token-only marker=KEYBROKER-DATA-OK
LATE_PREFIX='KEYBROKER-LATE '

# events LOG [COND...]: the event lines of a serial log ("event=KIND v=1
# ..."), those matching every COND (KEY=VALUE or KEY~ERE, see kv_lines).
events() {
    local log=$1
    shift
    kv_lines "$log" "$EVENT_PREFIX" 'event~.' "$@"
}

# event LOG COND...: the first matching event line; status 1 when none.
event() {
    local first
    first=$(events "$@" | head -n 1)
    [ -n "$first" ] && printf '%s\n' "$first"
}

# expect_event LOG COND...: sets EV to the first matching event line; a
# missing event fails the check with what the guest did say instead.
EV=
expect_event() {
    local log=$1
    shift
    EV=$(event "$log" "$@") && return 0
    local seen
    seen=$(events "$log" | cut -d' ' -f1,3-5 | paste -sd';' -)
    fail "no guest-unlock event with $* (events seen: ${seen:-none})"
}

# refute_event LOG COND...: no such event.
refute_event() {
    local log=$1 e
    shift
    e=$(event "$log" "$@") || return 0
    fail "unexpected guest-unlock event: $e"
}

# root_mounted LOG: the test root ran from the unlocked mapping.
root_mounted() { grep -q "$MARKER_ROOT root=/dev/mapper/root" "$1" 2>/dev/null; }
data_read() { grep -q "$MARKER_DATA" "$1" 2>/dev/null; }
