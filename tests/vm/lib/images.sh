# shellcheck shell=bash
# tests/vm: initramfs images, each built once per variant by the real
# mkinitramfs or dracut, and cached under $W/initrd/ by a hash of their
# inputs.
#
# The builders run in a private mount namespace (in_build_ns) where
# directories of the work dir lie over the host's /etc, /usr/lib,
# /usr/share and /boot as read-only overlays ("layers"):
#   kernel   the extracted kernel: /boot/config-KVER, /usr/lib/modules/KVER
#            (a host without /lib/modules builds as well as one with it)
#   project  initramfs/install.sh --destdir of the integration under test
#            (the checkout's initramfs/, or KEYBROKER_VM_INITRAMFS_SRC): its
#            files shadow any copy installed on the host
#   config   the variant's /etc/crypttab and /etc/guest-unlock (the guest's
#            config.toml and the simulated platform)
# Nothing on the host changes; the mounts end with the namespace. More
# layers (packages extracted with dpkg-deb -x, say) stack the same way.

declare -A IMAGE=()       # variant -> image file
declare -A IMAGE_ERR=()   # variant -> why it could not be built
declare -A IMAGE_BUILDER=() IMAGE_VOLUMES=() IMAGE_EVIDENCE=()
KEYFILE_KEY=$W/initrd/keyfile-baseline.key # the keyfile variant's key

# image_def VARIANT BUILDER VOLUMES [EVIDENCE]: BUILDER is initramfs-tools,
# dracut or keyfile; VOLUMES the crypttab's entries (root on /dev/vda, data
# on /dev/vdb); EVIDENCE the guest config's provider (default: the
# simulated platform, which the image then carries).
image_def() { IMAGE_BUILDER[$1]=$2 IMAGE_VOLUMES[$1]=$3 IMAGE_EVIDENCE[$1]=${4:-sim:/etc/guest-unlock/sim}; }

image_def it-root initramfs-tools root
image_def it-root-data initramfs-tools "root data"
image_def dracut-root dracut root
image_def keyfile keyfile root
# The guest-unlock .deb's dracut module 91guest-unlock-token: systemd-cryptsetup
# opens plain crypttab lines through the token plugin.
image_def dracut-token dracut-token "root data"

# in_build_ns LAYER... -- COMMAND...: COMMAND in a private mount namespace
# with the layers over /etc, /usr/lib, /usr/share and /boot (the first
# layer on top).
in_build_ns() {
    local layers=()
    while [ "$1" != -- ]; do layers+=("$1"); shift; done
    shift
    unshare -m bash -c '
        set -e
        mount --make-rprivate /
        n=$1; shift
        for d in etc usr/lib usr/share boot; do
            lower=
            for l in "${@:1:$n}"; do [ ! -d "$l/$d" ] || lower=$lower$l/$d:; done
            [ -z "$lower" ] || mount -t overlay -o "ro,lowerdir=$lower/$d" "keybroker-vm-$d" "/$d"
        done
        shift "$n"
        exec "$@"
    ' build-ns "${#layers[@]}" "${layers[@]}" "$@"
}

# write_guest_config FILE EVIDENCE: the guest's configuration, as the
# initramfs carries it.
write_guest_config() {
    cat >"$1" <<TOML
# VM tests only.
evidence = "$2"
timeout_secs = $GUEST_TIMEOUT_SECS
connect_timeout_secs = $GUEST_CONNECT_TIMEOUT_SECS
TOML
}

# config_layer DIR VOLUMES EVIDENCE [KEYFILE] [plain]: /etc/crypttab and
# /etc/guest-unlock. With KEYFILE, Debian's own cryptroot opens the root
# with it (no project); with "plain", the crypttab lines are `luks` only.
config_layer() {
    local d=$1 vols=$2 evidence=$3 keyfile=${4:-}
    rm -rf "$d" && mkdir -p "$d/etc" || return 1
    if [ -n "$keyfile" ]; then
        printf 'root\t/dev/vda\t%s\tluks,initramfs\n' "$keyfile" >"$d/etc/crypttab"
        mkdir -p "$d/etc/cryptsetup-initramfs"
        printf 'KEYFILE_PATTERN="%s"\nUMASK=0077\n' "$keyfile" >"$d/etc/cryptsetup-initramfs/conf-hook"
        return 0
    fi
    : >"$d/etc/crypttab"
    if [ "${5:-}" = plain ]; then
        # What an admin writes for systemd-cryptsetup: nothing of the project.
        for v in $vols; do
            case $v in root) printf 'root\t/dev/vda\tnone\tluks\n' ;; data) printf 'data\t/dev/vdb\tnone\tluks\n' ;; esac
        done >"$d/etc/crypttab"
    fi
    if [ "${5:-}" != plain ]; then
        [[ " $vols " != *" root "* ]] || printf 'root\t/dev/vda\tnone\tluks,initramfs\n' >>"$d/etc/crypttab"
        [[ " $vols " != *" data "* ]] || printf 'data\t/dev/vdb\tnone\tluks,initramfs\n' >>"$d/etc/crypttab"
    fi
    mkdir -p "$d/etc/guest-unlock" && write_guest_config "$d/etc/guest-unlock/config.toml" "$evidence" || return 1
    [ "$evidence" != sim:/etc/guest-unlock/sim ] ||
        { cp -a "${VM[sim]}" "$d/etc/guest-unlock/sim" && rm -f "$d/etc/guest-unlock/sim/.done"; }
}

# The integration under test, installed the way a user installs it (one
# layer per content of $IRD: a broken copy gets its own).
project_layer() {
    local d h
    h=$(cd "$IRD" 2>/dev/null && find . -type f -exec sha256sum {} + | sort | sha256sum | cut -c1-16)
    d=$W/layers/project-$h
    [ -e "$d/.done" ] && { printf '%s\n' "$d"; return 0; }
    rm -rf "$W"/layers/project-* && mkdir -p "$d" || return 1
    [ -r "$IRD/install.sh" ] || { echo "no $IRD/install.sh" >&2; return 1; }
    quiet sh "$IRD/install.sh" --destdir "$d" || { echo "$IRD/install.sh --destdir failed" >&2; return 1; }
    touch "$d/.done" && printf '%s\n' "$d"
}

# initramfs-tools' configuration directory (mkinitramfs -d): the modules the
# guest needs, named (no host probing), zstd -1 for a quick build.
it_confdir() {
    local d=$1
    rm -rf "$d" && mkdir -p "$d/conf.d" "$d/hooks" "$d/scripts" || return 1
    printf '%s\n' MODULES=list BUSYBOX=y COMPRESS=zstd COMPRESSLEVEL=1 DEVICE= NFSROOT=auto \
        RUNSIZE=10% FSTYPE=ext4 >"$d/initramfs.conf"
    echo RESUME=none >"$d/conf.d/resume"
    printf '%s\n' virtio_pci virtio_blk virtio_net af_packet dm_mod dm_crypt crc32c_generic ext4 >"$d/modules"
}

# The guest-unlock package as built by scripts/package (target/debian),
# extracted (dpkg-deb -x) as a layer: its dracut modules, hooks and token
# plugin lie over the host's /usr/lib and /usr/share as if installed.
deb_layer() {
    local deb d h
    deb=$(find "$ROOT/target/debian" -maxdepth 1 -name 'guest-unlock_*.deb' 2>/dev/null | sort | tail -n 1)
    [ -n "$deb" ] || { echo "no target/debian/guest-unlock_*.deb: run scripts/package" >&2; return 1; }
    h=$(sha256sum "$deb" | cut -c1-16)
    d=$W/layers/deb-$h
    [ -e "$d/.done" ] && { printf '%s\n' "$d"; return 0; }
    rm -rf "$W"/layers/deb-* && mkdir -p "$d" || return 1
    dpkg-deb -x "$deb" "$d" || { echo "dpkg-deb -x $deb failed" >&2; return 1; }
    touch "$d/.done" && printf '%s\n' "$d"
}

# The inputs of an image, hashed: it is rebuilt only when one changes
# (the Debian packages that end up in it included).
inputs_hash() {
    {
        sha256sum "${VM[vmlinuz]}" "$VM_HOME/lib/images.sh" "$G"
        [ ! -e "$P" ] || sha256sum "$P"
        ls -R "${VM[kernel]}/usr/lib/modules" # a layer that lost its modules rebuilds the images
        find "${VM[sim]}" -type f -exec sha256sum {} + | sort
        [ -d "$IRD" ] && (cd "$IRD" && find . -type f -exec sha256sum {} + | sort)
        dpkg-query -W -f '${Package}=${Version}\n' initramfs-tools-core cryptsetup-initramfs \
            cryptsetup-bin libcryptsetup12 busybox klibc-utils udev kmod libc6 dracut-core \
            dracut-network systemd 2>/dev/null
        echo "$GUEST_TIMEOUT_SECS $GUEST_CONNECT_TIMEOUT_SECS $*"
    } | sha256sum | cut -c1-16
}

# build_image VARIANT: sets IMAGE[VARIANT], or IMAGE_ERR[VARIANT] (a
# message; prefixed "skip:" when the builder is not installed).
build_image() {
    local v=$1 builder=${IMAGE_BUILDER[$1]} vols=${IMAGE_VOLUMES[$1]}
    local h out log conf cfg project kf='' plain='' deb=''
    case $builder in
        dracut) command -v dracut >/dev/null || { IMAGE_ERR[$v]="skip: dracut not installed"; return; } ;;
        dracut-token)
            command -v dracut >/dev/null || { IMAGE_ERR[$v]="skip: dracut not installed"; return; }
            plain=plain
            [ -r "$P" ] || { IMAGE_ERR[$v]="no $P (scripts/build-test-binaries builds it)"; return; }
            deb=$(deb_layer 2>&1) || { IMAGE_ERR[$v]=$deb; return; }
            ;;
        keyfile) kf=$KEYFILE_KEY ;;
    esac
    mkdir -p "$W/initrd"
    if [ -n "$kf" ] && [ ! -s "$kf" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$kf") || return 1
    fi
    h=$(inputs_hash "$v" "$builder" "$vols" "${IMAGE_EVIDENCE[$v]}" "${kf:+$(cat "$kf")}" "$deb")
    out=$W/initrd/$v.$h.img
    if [ -s "$out" ]; then IMAGE[$v]=$out; return; fi
    rm -f "$W/initrd/$v".*.img
    log=$W/initrd/$v.log
    cfg=$W/layers/config-$v
    config_layer "$cfg" "$vols" "${IMAGE_EVIDENCE[$v]}" "$kf" "$plain" || { IMAGE_ERR[$v]="writing the config layer failed"; return; }
    if [ "$builder" = initramfs-tools ] || [ "$builder" = dracut ]; then
        project=$(project_layer 2>"$log") || { IMAGE_ERR[$v]="$(cat "$log")"; return; }
    fi
    case $builder in
        initramfs-tools | keyfile)
            conf=$W/initrd/$v.conf
            it_confdir "$conf" || { IMAGE_ERR[$v]="mkinitramfs -d dir"; return; }
            GUEST_UNLOCK_BIN=$G in_build_ns "$cfg" ${project:+"$project"} "${VM[kernel]}" -- \
                mkinitramfs -v -d "$conf" -o "$out.tmp" "${VM[kver]}" >"$log" 2>&1 ||
                { IMAGE_ERR[$v]="mkinitramfs failed (log: $log)"; return; }
            ;;
        dracut)
            mkdir -p "$W/initrd/dracut-conf.d"
            GUEST_UNLOCK_BIN=$G in_build_ns "$cfg" "$project" "${VM[kernel]}" -- \
                dracut --force --no-hostonly --no-hostonly-cmdline --conf /dev/null \
                    --confdir "$W/initrd/dracut-conf.d" --kver "${VM[kver]}" --add "crypt guest-unlock" \
                    --omit "plymouth iscsi nbd nfs lunmask nvdimm resume overlay-root virtiofs i18n console-setup modsign" \
                    --drivers "virtio_pci virtio_blk virtio_net dm_crypt crc32c_generic ext4" \
                    --include /etc/crypttab /etc/crypttab \
                    --compress "zstd -1" "$out.tmp" >"$log" 2>&1 ||
                { IMAGE_ERR[$v]="dracut failed (log: $log)"; return; }
            grep -q "Including module: guest-unlock" "$log" ||
                { IMAGE_ERR[$v]="dracut did not include the guest-unlock module (log: $log)"; return; }
            ;;
        dracut-token)
            # The package's module, with the plugin of the test build (the
            # packaged one has no simulated platform) put where it goes.
            mkdir -p "$W/initrd/dracut-conf.d"
            GUEST_UNLOCK_TOKEN_PLUGIN=$P in_build_ns "$cfg" "$deb" "${VM[kernel]}" -- \
                dracut --force --no-hostonly --no-hostonly-cmdline --conf /dev/null \
                    --confdir "$W/initrd/dracut-conf.d" --kver "${VM[kver]}" --add "crypt guest-unlock-token" \
                    --omit "guest-unlock plymouth iscsi nbd nfs lunmask nvdimm resume overlay-root virtiofs i18n console-setup modsign" \
                    --drivers "virtio_pci virtio_blk virtio_net dm_crypt crc32c_generic ext4" \
                    --include /etc/crypttab /etc/crypttab \
                    --compress "zstd -1" "$out.tmp" >"$log" 2>&1 ||
                { IMAGE_ERR[$v]="dracut failed (log: $log)"; return; }
            grep -q "Including module: guest-unlock-token" "$log" ||
                { IMAGE_ERR[$v]="dracut did not include the guest-unlock-token module (log: $log)"; return; }
            ! grep -q "Including module: guest-unlock$" "$log" ||
                { IMAGE_ERR[$v]="dracut included the guest-unlock module (log: $log)"; return; }
            ;;
        *) IMAGE_ERR[$v]="unknown builder $builder"; return ;;
    esac
    mv "$out.tmp" "$out" && IMAGE[$v]=$out
}
