# shellcheck shell=bash
# tests/vm: one qemu boot. The guest reaches nothing but the broker: user
# networking with restrict=on and one guestfwd (10.0.2.100:8443 -> socat ->
# 127.0.0.1:BROKERPORT).

declare -A BOOT=() # log secs rc stopped timed_out
FX_BOOT_SECS=      # the seconds of each boot of the running fixture

# The fallback path: cryptroot's or systemd's passphrase prompt, or an
# initramfs/emergency shell (other programs' words: only waited for).
FALLBACK_RE='Please unlock disk|Please enter passphrase|\(initramfs\)|Gave up waiting|dracut:/#|Entering emergency mode'
STOP_RE="$FALLBACK_RE|Kernel panic"

# The kernel command line of every boot. quiet: the console carries the
# kernel's warnings, guest-unlock and the test root, not every probe
# message (each byte is an emulated UART write under TCG).
KERNEL_APPEND='console=ttyS0 quiet loglevel=4 panic=-1 net.ifnames=0 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off root=/dev/mapper/root rootfstype=ext4 rootwait'

qemu_accel() {
    case ${VM[accel]} in
        kvm) echo "-accel kvm -cpu host" ;;
        *) echo "-accel tcg -cpu max" ;;
    esac
}

# boot NAME INITRD STOP_RE DISK... -> BOOT[log secs rc stopped timed_out]
# -nodefaults: no VGA, IDE, floppy or parallel port for the guest to probe
# (2-3 s a boot under TCG); -smp 2 measured no faster on a 2-core host.
# Boots until qemu exits (the test root powers off) or until STOP_RE
# appears on the console (then qemu is stopped). BOOT_APPEND adds to the
# kernel command line, BOOT_QEMU_ARGS (words) to qemu's (a TPM, say);
# BOOT_BROKER_PORT overrides the broker's port.
boot() {
    local name=$1 initrd=$2 want=$3
    shift 3
    local drives=() d log=$LOGS/$name.serial.log port=${BOOT_BROKER_PORT:-${BROKER[port]:-9}}
    for d in "$@"; do drives+=(-drive "file=$d,if=virtio,format=raw"); done
    local t0 qpid
    t0=$(now)
    rm -f "$log"
    # shellcheck disable=SC2046,SC2086 # qemu_accel and BOOT_QEMU_ARGS are several words
    timeout "$BOOT_TIMEOUT" qemu-system-x86_64 $(qemu_accel) -m 512 -smp 1 -nodefaults \
        -display none -monitor none -no-reboot -serial "file:$log" \
        -kernel "${VM[boot_kernel]}" -initrd "$initrd" \
        -append "$KERNEL_APPEND ${BOOT_APPEND:-} ${KEYBROKER_VM_APPEND:-}" \
        "${drives[@]}" \
        -netdev "user,id=n0,restrict=on,guestfwd=tcp:$GUEST_BROKER_IP:$GUEST_BROKER_PORT-cmd:socat -lf $LOGS/$name.socat.log - TCP:127.0.0.1:$port" \
        -device virtio-net-pci,netdev=n0,romfile= ${BOOT_QEMU_ARGS:-} \
        </dev/null >"$LOGS/$name.qemu.log" 2>&1 &
    qpid=$!
    track "$qpid"
    BOOT=([log]=$log [stopped]='' [timed_out]='')
    while kill -0 "$qpid" 2>/dev/null; do
        if [ -n "$want" ] && grep -Eq "$want" "$log" 2>/dev/null; then
            BOOT[stopped]=$(elapsed "$t0")
            sleep 0.5 # let the console finish the line(s)
            kill "$qpid" 2>/dev/null
            break
        fi
        sleep 0.2
    done
    wait "$qpid"
    BOOT[rc]=$?
    untrack "$qpid"
    BOOT[secs]=$(elapsed "$t0")
    FX_BOOT_SECS+=" ${BOOT[secs]}"
    [ "${BOOT[rc]}" != 124 ] || BOOT[timed_out]=1
    return 0
}

# Why a boot that should have mounted the root did not.
no_root() {
    if [ -n "${BOOT[stopped]}" ]; then
        fail "root not mounted; the boot reached: $(grep -Eo "$STOP_RE" "${BOOT[log]}" | head -n 1)"
    elif [ -n "${BOOT[timed_out]}" ]; then
        fail "root not mounted within ${BOOT_TIMEOUT}s"
    else
        fail "root not mounted (qemu exit status ${BOOT[rc]})"
    fi
}
