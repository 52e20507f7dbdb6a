# shellcheck shell=bash
# tests/vm: what every scenario shares, made once per run (and cached under
# $W across runs): the Debian packages (scripts/setup), the kernel, a static
# busybox, the binaries, the accelerator, the simulated platform, the LUKS2
# disk templates and the initramfs images.

declare -A VM=() # kver vmlinuz boot_kernel kernel busybox accel sim measurement disks

provision_packages() {
    "$ROOT/scripts/setup" build vm || die "scripts/setup could not install the packages the VM tests need"
}

# fetch_deb PACKAGE DIR: PACKAGE's .deb extracted into DIR (never installed).
fetch_deb() {
    local pkg=$1 dir=$2 debs=$W/debs
    mkdir -p "$debs" && rm -rf "$dir" && mkdir -p "$dir" || return 1
    (cd "$debs" && rm -f "${pkg}"_*.deb && quiet apt-get download "$pkg") || return 1
    dpkg-deb -x "$debs/${pkg}"_*.deb "$dir"
}

# Debian's kernel (the current dependency of linux-image-amd64), extracted
# as a layer: boot/ and usr/lib/modules/ (depmod run on it).
provision_kernel() {
    local pkg kver dir
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$pkg" ]; then # no package lists yet (a fresh container)
        quiet apt-get update -o DPkg::Lock::Timeout=600 || die "apt-get update failed"
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || die "apt-cache depends linux-image-amd64 names no kernel"
    kver=${pkg#linux-image-}
    dir=$W/kernel/$pkg
    # The marker names the layout: a kernel extracted by an older harness
    # (modules under lib/, marker .done) is extracted again.
    if [ ! -e "$dir/.layer-done" ] || [ ! -d "$dir/usr/lib/modules/$kver" ]; then
        note "fetching $pkg"
        fetch_deb "$pkg" "$dir" || die "apt-get download $pkg failed"
        depmod -b "$dir" "$kver" || die "depmod failed"
        # merged /usr, as the build namespace lays it over /usr/lib
        mkdir -p "$dir/usr/lib" && mv "$dir/lib/modules" "$dir/usr/lib/" && rm -rf "${dir:?}/lib" ||
            die "moving the modules to usr/lib failed"
        touch "$dir/.layer-done"
    fi
    VM[kver]=$kver VM[kernel]=$dir VM[vmlinuz]=$dir/boot/vmlinuz-$kver
    [ -r "${VM[vmlinuz]}" ] || die "no ${VM[vmlinuz]}"
    VM[boot_kernel]=${VM[vmlinuz]}
    if [ "${KEYBROKER_VM_PVH:-1}" = 1 ]; then
        [ -s "$dir/vmlinux" ] || [ -e "$dir/vmlinux.none" ] || unpack_vmlinux "${VM[vmlinuz]}" "$dir/vmlinux"
        [ ! -s "$dir/vmlinux" ] || VM[boot_kernel]=$dir/vmlinux
    fi
}

# unpack_vmlinux VMLINUZ OUT: the uncompressed kernel, when it has the PVH
# entry note (Debian's has: CONFIG_PVH). qemu then starts it directly at
# that entry, without firmware and without decompressing it in emulation:
# about 4 s less per boot under TCG, for the same kernel code from then on.
unpack_vmlinux() {
    local z=$1 out=$2 off magic unpack
    for magic in '\xfd7zXZ\x00:xz -dcq' '\x28\xb5\x2f\xfd:zstd -dcq'; do
        off=$(LC_ALL=C grep -obUaP "${magic%%:*}" "$z" 2>/dev/null | head -n 1 | cut -d: -f1)
        [ -n "$off" ] || continue
        unpack=${magic#*:}
        tail -c +$((off + 1)) "$z" | $unpack >"$out.tmp" 2>/dev/null
        if [ "$(head -c 4 "$out.tmp" 2>/dev/null | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
            readelf -n "$out.tmp" 2>/dev/null | grep -q 'Xen.*0x00000012\|Unknown note type: (0x00000012)'; then
            mv "$out.tmp" "$out"
            return 0
        fi
    done
    rm -f "$out.tmp"
    touch "$out.none"
    note "no PVH entry in $z: booting it through the firmware"
}

# A static busybox for the test root (busybox-static conflicts with the
# busybox package, so it is extracted, not installed).
provision_busybox() {
    VM[busybox]=$W/pkgs/busybox-static/bin/busybox
    [ -x "${VM[busybox]}" ] && return 0
    fetch_deb busybox-static "$W/pkgs/busybox-static" || die "apt-get download busybox-static failed"
    [ -x "${VM[busybox]}" ] || die "no static busybox in busybox-static"
}

# The broker and guest-unlock with the simulated platform and the crash
# points (scripts/build-test-binaries, which the demo runs too).
provision_binaries() {
    if [ "${KEYBROKER_VM_NO_BUILD:-0}" != 1 ]; then
        note "scripts/build-test-binaries"
        quiet "$ROOT/scripts/build-test-binaries" || die "scripts/build-test-binaries failed"
    fi
    [ -x "$B" ] && [ -x "$G" ] || die "no $B or $G"
    local c
    for c in bind unlock list sim-platform; do
        "$G" "$c" --help >/dev/null 2>&1 || die "$G has no '$c' subcommand (built without the sim feature?)"
    done
}

# KVM only when a probe boot of this very kernel reaches userspace under it
# (cached per kernel); otherwise TCG. KEYBROKER_VM_ACCEL=tcg|kvm forces.
provision_accel() {
    local want=${KEYBROKER_VM_ACCEL:-probe} cache=$W/accel.${VM[kver]} d=$W/kvm-probe
    case $want in
        tcg | kvm) VM[accel]=$want; return 0 ;;
    esac
    if [ ! -e "$cache" ]; then
        local verdict=tcg
        if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
            rm -rf "$d" && mkdir -p "$d/root"
            cp "${VM[busybox]}" "$d/root/busybox"
            printf '#!/busybox sh\n/busybox echo KVM-PROBE-OK\n/busybox poweroff -f\n' >"$d/root/init"
            chmod +x "$d/root/init"
            (cd "$d/root" && find . | cpio -o -H newc 2>/dev/null) >"$d/initrd"
            # Under a working KVM this takes about a second.
            # (in a group whose stderr is discarded: qemu may abort, and the
            # shell would report it)
            { timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -monitor none \
                -no-reboot -nic none -serial "file:$d/serial.log" -kernel "${VM[boot_kernel]}" -initrd "$d/initrd" \
                -append "console=ttyS0 panic=-1 quiet" </dev/null >"$d/qemu.log" 2>&1; } 2>/dev/null
            grep -q KVM-PROBE-OK "$d/serial.log" 2>/dev/null && verdict=kvm
        fi
        echo "$verdict" >"$cache"
    fi
    VM[accel]=$(cat "$cache")
}

# The simulated SEV-SNP platform, shared by every scenario (copied into the
# initramfs as /etc/guest-unlock/sim: tests only).
provision_sim() {
    VM[sim]=$W/sim
    if [ ! -e "${VM[sim]}/.done" ]; then
        rm -rf "${VM[sim]}"
        quiet "$G" sim-platform init --dir "${VM[sim]}" || die "sim-platform init failed"
        touch "${VM[sim]}/.done"
    fi
    VM[measurement]=$("$G" sim-platform show --dir "${VM[sim]}" | awk '/^measurement:/ { print $2 }')
    [ -n "${VM[measurement]}" ] || die "sim-platform show printed no measurement"
}

# provision_images VARIANT...: each image built at most once. The images
# of the packaged integration first need the .debs (scripts/package: a
# cargo no-op and dpkg-deb once the ship builds exist; CI builds them in
# its own step, before the tests).
provision_images() {
    local v t
    for v in "$@"; do
        [ "${IMAGE_BUILDER[$v]}" = dracut-token ] || continue
        if [ "${KEYBROKER_VM_NO_BUILD:-0}" != 1 ]; then
            note "scripts/package"
            quiet "$ROOT/scripts/package" --no-lintian || die "scripts/package failed"
        fi
        break
    done
    for v in "$@"; do
        [ -n "${IMAGE[$v]:-}${IMAGE_ERR[$v]:-}" ] && continue
        t=$(now)
        build_image "$v"
        note "image $v: ${IMAGE[$v]:-${IMAGE_ERR[$v]:-?}} ($(elapsed "$t")s)"
    done
}
