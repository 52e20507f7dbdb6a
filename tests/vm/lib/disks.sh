# shellcheck shell=bash
# tests/vm: the guests' disks. One LUKS2 template per kind (root, data) is
# made once (mke2fs -d, then offline encryption: the host has no
# device-mapper); each fixture copies it and enrolls the copy with
# `guest-unlock bind` against its own broker.

# The test root: says which root it runs from and whether the data volume
# opened (tests/vm/lib/events.sh reads these markers), then powers off.
write_test_init() {
    cat >"$1" <<EOF
#!/bin/busybox sh
B=/bin/busybox
\$B mount -t proc proc /proc 2>/dev/null
\$B mount -t sysfs sys /sys 2>/dev/null
\$B mount -t devtmpfs dev /dev 2>/dev/null
echo "$MARKER_ROOT root=\$(\$B awk '\$2 == "/" { print \$1 }' /proc/mounts | \$B tail -n 1)"
for m in /dev/mapper/data /dev/mapper/luks-*; do
    [ -b "\$m" ] || continue
    \$B mount -o ro "\$m" /mnt && \$B cat /mnt/marker && \$B umount /mnt
done
\$B sync
\$B poweroff -f
EOF
    chmod 755 "$1"
}

make_rootfs() {
    local dir=$1
    rm -rf "$dir" && mkdir -p "$dir"/{bin,sbin,dev,proc,sys,mnt,tmp,run,etc} || return 1
    cp "${VM[busybox]}" "$dir/bin/busybox" || return 1
    # systemd's switch-root (dracut) wants an OS tree: os-release.
    printf 'NAME="keybroker VM test root"\nID=keybroker-test\n' >"$dir/etc/os-release"
    write_test_init "$dir/sbin/init"
}

make_datafs() {
    rm -rf "$1" && mkdir -p "$1" && echo "$MARKER_DATA" >"$1/marker"
}

# make_luks IMG KEYFILE DIR: ext4 holding DIR, encrypted offline to LUKS2.
make_luks() {
    local img=$1 key=$2 dir=$3
    rm -f "$img"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key") &&
        truncate -s 64M "$img" &&
        quiet mke2fs -q -t ext4 -d "$dir" -F "$img" 48M &&
        quiet cryptsetup reencrypt --batch-mode --encrypt --type luks2 --pbkdf pbkdf2 \
            --pbkdf-force-iterations 1000 --reduce-device-size 16M --key-file "$key" "$img"
}

SYSTEMD_CRYPTSETUP=/usr/lib/systemd/systemd-cryptsetup
# systemd as the late-boot root's init (token-late-unit: init=/usr/lib/systemd/systemd),
# from the host: PID 1, udev (device units), journald, the crypttab
# generator, systemd-cryptsetup, the units and the rules block devices need.
LATE_SYSTEMD_FILES=(/usr/lib/systemd/systemd /usr/lib/systemd/systemd-udevd /usr/lib/systemd/systemd-journald
    /usr/lib/systemd/systemd-shutdown "$SYSTEMD_CRYPTSETUP" /usr/lib/systemd/system-generators/systemd-cryptsetup-generator
    /usr/bin/udevadm /usr/bin/systemctl /sbin/dmsetup /usr/lib/systemd/system
    /usr/lib/udev/rules.d/50-udev-default.rules /usr/lib/udev/rules.d/55-dm.rules /usr/lib/udev/rules.d/60-block.rules
    /usr/lib/udev/rules.d/60-persistent-storage.rules /usr/lib/udev/rules.d/60-persistent-storage-dm.rules
    /usr/lib/udev/rules.d/95-dm-notify.rules /usr/lib/udev/rules.d/99-systemd.rules)

# late_systemd_config DIR: /etc/crypttab with a plain line for the data
# disk, and a unit after cryptsetup.target that says what systemd did
# (LATE lines) and powers off.
late_systemd_config() {
    local d=$1
    printf 'data\t/dev/vdb\tnone\tluks\n' >"$d/etc/crypttab" &&
        mkdir -p "$d/etc/systemd/system/multi-user.target.wants" &&
        ln -sf /usr/lib/systemd/system/multi-user.target "$d/etc/systemd/system/default.target" &&
        : >"$d/etc/machine-id" && ln -sf ../bin/busybox "$d/bin/sh" || return 1
    cat >"$d/etc/systemd/system/keybroker-late.service" <<EOF
[Unit]
Description=keybroker VM test: what systemd-cryptsetup did at late boot
After=cryptsetup.target local-fs.target systemd-cryptsetup@data.service
Wants=cryptsetup.target

[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/busybox sh -c 'm=\$\$(/bin/busybox mount -o ro /dev/mapper/data /mnt && /bin/busybox cat /mnt/marker); echo "${LATE_PREFIX}step=systemd-unit volume=data active=\$\$(systemctl is-active systemd-cryptsetup@data.service) marker=\$\${m:-none}"; /bin/busybox sync; /bin/busybox poweroff -f'
EOF
    ln -sf ../keybroker-late.service "$d/etc/systemd/system/multi-user.target.wants/keybroker-late.service"
}

# The late-boot test root (token-late*): the test root with cryptsetup,
# libcryptsetup and the token plugin (the test build, named as the package
# installs it) in their Debian places, systemd's pieces (LATE_SYSTEMD_FILES,
# late_systemd_config), their libraries (as ldd resolves them on the host),
# and the guest configuration the plugin reads (/etc/guest-unlock:
# evidence from the simulated platform). Its busybox init
# (write_late_init) opens the data disks once the system has booted;
# booted with init=/usr/lib/systemd/systemd, systemd does (crypttab).
make_late_rootfs() {
    local dir=$1 tokdir=usr/lib/x86_64-linux-gnu/cryptsetup f
    make_rootfs "$dir" && mkdir -p "$dir/usr/sbin" "$dir/$tokdir" "$dir/usr/lib64" || return 1
    ln -s usr/lib "$dir/lib" && ln -s usr/lib64 "$dir/lib64" || return 1
    mkdir -p "$dir/usr/lib/systemd" || return 1
    cp -L "$(command -v cryptsetup)" "$dir/usr/sbin/cryptsetup" &&
        cp -L "$P" "$dir/$tokdir/libcryptsetup-token-sev-keybroker.so" || return 1
    for f in "${LATE_SYSTEMD_FILES[@]}"; do
        # Files dereferenced (systemd-udevd is a link to /bin/udevadm; /bin
        # is busybox's there), the unit directory as it is.
        if [ -d "$f" ]; then
            mkdir -p "$dir$(dirname "$f")" && cp -a "$f" "$dir$f"
        else
            mkdir -p "$dir$(dirname "$f")" && cp -L "$f" "$dir$f"
        fi || return 1
    done
    late_systemd_config "$dir" || return 1
    # Each library at its own path (/lib is /usr/lib there, as here):
    # libsystemd-shared is found by systemd's RUNPATH, not the search path.
    # shellcheck disable=SC2046 # the executables are several words
    for f in $(ldd "$(command -v cryptsetup)" "$P" $(printf '%s\n' "${LATE_SYSTEMD_FILES[@]}" | grep -v '\.rules$\|/system$') |
        awk 'NF > 1 && $1 ~ /^\// { print $1 } $3 ~ /^\// { print $3 }' | sort -u); do
        mkdir -p "$dir/usr$(dirname "${f#/usr}")" && cp -L "$f" "$dir/usr${f#/usr}" || return 1
    done
    mkdir -p "$dir/etc/guest-unlock" &&
        write_guest_config "$dir/etc/guest-unlock/config.toml" sim:/etc/guest-unlock/sim &&
        cp -a "${VM[sim]}" "$dir/etc/guest-unlock/sim" && rm -f "$dir/etc/guest-unlock/sim/.done" || return 1
    write_late_init "$dir/sbin/init"
}

# The late-boot test root's init: the network as the initramfs had it,
# then plain `cryptsetup open` of the data disks, one LATE line per step
# (tests/vm/lib/events.sh). /dev/vdb must open by its token alone;
# /dev/vdc (the broker refuses it) must not, and then opens with the
# passphrase the kernel command line gives (keybroker.passphrase=),
# through the same cryptsetup open that tries the token first. Then both
# are closed and attached again by systemd-cryptsetup (the binary, run as
# its unit runs it; systemd is not PID 1 here).
write_late_init() {
    cat >"$1" <<EOF
#!/bin/busybox sh
B=/bin/busybox
export PATH=/usr/sbin:/bin DM_DISABLE_UDEV=1
\$B mount -t proc proc /proc 2>/dev/null
\$B mount -t sysfs sys /sys 2>/dev/null
\$B mount -t devtmpfs dev /dev 2>/dev/null
\$B grep -q ' /run ' /proc/mounts || \$B mount -t tmpfs run /run
echo "$MARKER_ROOT root=\$(\$B awk '\$2 == "/" { print \$1 }' /proc/mounts | \$B tail -n 1)"
\$B ip link set eth0 up
\$B ip addr add 10.0.2.15/24 dev eth0 2>/dev/null
late() { echo "$LATE_PREFIX\$*"; }
marker() {
    m=\$(\$B mount -o ro "/dev/mapper/\$1" /mnt && \$B cat /mnt/marker; \$B umount /mnt 2>/dev/null)
    late step=read volume=\$1 by=\$2 marker=\${m:-none}
}
mapped() { if [ -b "/dev/mapper/\$1" ]; then echo 1; else echo 0; fi; }
cryptsetup open --token-only /dev/vdb data
late step=token-only volume=data rc=\$? mapped=\$(mapped data)
marker data token-only
cryptsetup open --token-only /dev/vdc spare
late step=token-only volume=spare rc=\$? mapped=\$(mapped spare)
pass=\$(\$B sed -n 's/.*keybroker\.passphrase=\([^ ]*\).*/\1/p' /proc/cmdline)
printf %s "\$pass" | cryptsetup open /dev/vdc spare
late step=passphrase volume=spare rc=\$? mapped=\$(mapped spare)
marker spare passphrase
# systemd-cryptsetup, as systemd-cryptsetup@.service runs it for a plain
# crypttab line (headless: no passphrase agent here), on the same disks.
cryptsetup close data
cryptsetup close spare
/usr/lib/systemd/systemd-cryptsetup attach data /dev/vdb none luks,headless
late step=systemd-cryptsetup volume=data rc=\$? mapped=\$(mapped data)
marker data systemd-cryptsetup
/usr/lib/systemd/systemd-cryptsetup attach spare /dev/vdc none luks,headless
late step=systemd-cryptsetup volume=spare rc=\$? mapped=\$(mapped spare)
late step=end
\$B sync
\$B poweroff -f
EOF
    chmod 755 "$1"
}

# late_root_template: VM[disks]/lateroot.{img,key}, remade when an input
# changes (busybox, cryptsetup, the plugin, the simulated platform, this
# file). Made only for the scenarios that boot it.
late_root_template() {
    local d=${VM[disks]} h f
    h=$( {
        sha256sum "${VM[busybox]}" "$P" "$(command -v cryptsetup)" "$SYSTEMD_CRYPTSETUP" "$VM_HOME/lib/disks.sh" "$VM_HOME/lib/events.sh"
        find "${VM[sim]}" -type f -exec sha256sum {} + | sort
        dpkg-query -W -f '${Package}=${Version}\n' cryptsetup-bin libcryptsetup12 libc6 systemd 2>/dev/null
        echo "$GUEST_TIMEOUT_SECS $GUEST_CONNECT_TIMEOUT_SECS"
    } | sha256sum | cut -c1-16)
    [ "$(cat "$d/lateroot.hash" 2>/dev/null)" = "$h" ] && [ -s "$d/lateroot.img" ] && return 0
    [ -r "$P" ] || { echo "no $P (scripts/build-test-binaries builds it)" >&2; return 1; }
    for f in "${LATE_SYSTEMD_FILES[@]}"; do
        [ -e "$f" ] || { echo "no $f (Debian's systemd and udev packages)" >&2; return 1; }
    done
    rm -f "$d/lateroot.hash"
    make_late_rootfs "$d/laterootdir" && make_luks "$d/lateroot.img" "$d/lateroot.key" "$d/laterootdir" ||
        { rm -rf "$d/laterootdir"; echo "making the late-boot root template failed" >&2; return 1; }
    rm -rf "$d/laterootdir"
    echo "$h" >"$d/lateroot.hash"
}

# The templates, remade when busybox or the test init change.
provision_disks() {
    local d=$W/disks h
    h=$( { sha256sum "${VM[busybox]}" "$VM_HOME/lib/disks.sh" "$VM_HOME/lib/events.sh"; } | sha256sum | cut -c1-16)
    VM[disks]=$d
    [ "$(cat "$d/.hash" 2>/dev/null)" = "$h" ] && return 0
    rm -rf "$d" && mkdir -p "$d" || die "mkdir $d"
    make_rootfs "$d/rootdir" && make_luks "$d/root.img" "$d/root.key" "$d/rootdir" ||
        die "making the LUKS2 root template failed"
    make_datafs "$d/datadir" && make_luks "$d/data.img" "$d/data.key" "$d/datadir" ||
        die "making the LUKS2 data template failed"
    rm -rf "$d/rootdir" "$d/datadir"
    echo "$h" >"$d/.hash"
}

# disk_copy KIND DIR [NAME]: DIR/NAME.img and DIR/NAME.key (NAME: KIND by
# default) from the template.
disk_copy() {
    local n=${3:-$1}
    cp --sparse=always "${VM[disks]}/$1.img" "$2/$n.img" && cp "${VM[disks]}/$1.key" "$2/$n.key"
}

# bind_volume DIR VOLUME: enrolls DIR/VOLUME.img with the current broker.
# The token must name the broker as the GUEST dials it (10.0.2.100:8443),
# so bind runs in a private network namespace where 10.0.2.100 is a local
# address and a socat there forwards (through a unix socket) to the
# broker on the host's 127.0.0.1. No packet leaves the host's loopback.
bind_volume() {
    local dir=$1 vol=$2 sock=$1/broker-$2.sock spid rc
    rm -f "$sock"
    socat "UNIX-LISTEN:$sock,fork" "TCP:127.0.0.1:${BROKER[port]}" 2>/dev/null &
    spid=$!
    track "$spid"
    for _ in $(seq 1 50); do [ -S "$sock" ] && break; sleep 0.05; done
    unshare -n bash -c '
        set -u
        ip link set lo up && ip addr add "$1/32" dev lo || exit 1
        socat "TCP-LISTEN:$2,bind=$1,fork,reuseaddr" "UNIX-CONNECT:$3" 2>/dev/null &
        fwd=$!
        for i in $(seq 1 50); do
            grep -qi ":$(printf %04X "$2") " /proc/net/tcp 2>/dev/null && break
            sleep 0.05
        done
        shift 3
        "$@"; rc=$?
        kill $fwd 2>/dev/null; wait $fwd 2>/dev/null
        exit $rc
    ' bind "$GUEST_BROKER_IP" "$GUEST_BROKER_PORT" "$sock" \
        "$G" bind "$dir/$vol.img" --broker "$GUEST_BROKER_URL" --volume "$vol" --pin "${BROKER[pin]}" \
        --key-file "$dir/$vol.key" --evidence "sim:${VM[sim]}" >"$dir/bind-$vol.log" 2>&1
    rc=$?
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
    untrack "$spid"
    rm -f "$sock"
    [ $rc -eq 0 ] || { sed 's/^/    bind: /' "$dir/bind-$vol.log" >&2; return 1; }
}

# enrolled_disks DIR VOLUME...: copies of the templates, each volume added
# to the broker (policy vm) and bound: DIR/VOLUME.img.
enrolled_disks() {
    local dir=$1 v
    shift
    for v in "$@"; do
        broker_cli volume add "$v" --policy vm >/dev/null || { fail "broker volume add $v failed"; return 1; }
        disk_copy "$v" "$dir" || { fail "copying the $v disk failed"; return 1; }
        bind_volume "$dir" "$v" || { fail "guest-unlock bind $v failed"; return 1; }
    done
}
