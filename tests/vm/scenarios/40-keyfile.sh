# shellcheck shell=bash
# keyfile: the reference boot without the project. Debian's cryptroot opens
# the root with a key file inside the initramfs: the baseline for what
# guest-unlock adds to a boot's time.

fixture keyfile keyfile
fx_keyfile() {
    local dir=$1
    disk_copy root "$dir" || { fail "copying the root disk failed"; return 1; }
    quiet cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file "$dir/root.key" "$dir/root.img" "$KEYFILE_KEY" ||
        { fail "cryptsetup luksAddKey failed"; return 1; }
    BOOT_BROKER_PORT=9 boot keyfile "${IMAGE[keyfile]}" "$STOP_RE" "$dir/root.img"
}
scenario keyfile keyfile check_keyfile \
    "reference boot without the project: cryptroot opens the root with a key file in the initramfs"
check_keyfile() {
    root_mounted "${BOOT[log]}" || { no_root; return 1; }
    refute_event "${BOOT[log]}" 'event~.'
}
