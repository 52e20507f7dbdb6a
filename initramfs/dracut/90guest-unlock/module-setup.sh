#!/bin/bash
# shellcheck disable=SC2154 # moddir, initdir, systemdsystemunitdir, SYSTEMCTL: set by dracut
# dracut module: guest-unlock unlocks LUKS2 volumes with keys that the
# owner's broker releases after SEV-SNP attestation, before the crypt
# module asks for a passphrase.
#
# Opt-out: without /etc/guest-unlock/config.toml the module is not
# included (and `-a guest-unlock` fails with a message).
# Build-time overrides: GUEST_UNLOCK_BIN, GUEST_UNLOCK_CONFIG,
# GUEST_UNLOCK_INITRD (as for the initramfs-tools hook).

gu_config() {
    echo "${GUEST_UNLOCK_CONFIG:-/etc/guest-unlock/config.toml}"
}

gu_bin() {
    local b=${GUEST_UNLOCK_BIN:-}
    [[ $b ]] || b=$(PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin" command -v guest-unlock)
    [[ -x $b ]] && echo "$b"
}

gu_helper() {
    local h
    for h in "${GUEST_UNLOCK_INITRD:-}" /usr/lib/guest-unlock/guest-unlock-initrd \
        "$moddir/../../lib/guest-unlock-initrd"; do
        [[ $h && -r $h ]] && { echo "$h"; return 0; }
    done
    return 1
}

# called by dracut
check() {
    if [[ ! -r "$(gu_config)" ]]; then
        dinfo "guest-unlock: $(gu_config) not found (opt-out)"
        return 1
    fi
    if [[ -z "$(gu_bin)" ]]; then
        derror "guest-unlock: binary not found (install it or set GUEST_UNLOCK_BIN)"
        return 1
    fi
    if ! gu_helper > /dev/null; then
        derror "guest-unlock: guest-unlock-initrd not found (run initramfs/install.sh)"
        return 1
    fi
    return 0
}

# called by dracut
depends() {
    echo crypt dm network
    return 0
}

# called by dracut
installkernel() {
    # Evidence: the SNP guest driver, configfs-tsm where the kernel has it,
    # the TPM drivers of Azure's vTPM (CRB on Hyper-V, TIS on qemu) for the
    # azure-vtpm provider (raw TPM 2.0 on /dev/tpmrm0, nothing else).
    # dm-crypt and the kernel crypto of aes-xts-plain64 LUKS2 volumes.
    # Network drivers of the usual confidential-VM platforms. Missing or
    # built-in modules are skipped.
    hostonly='' instmods sev-guest tsm_report tsm tpm tpm_tis_core tpm_tis tpm_crb \
        dm_mod dm_crypt algif_skcipher af_alg algif_hash \
        aesni_intel aes_generic xts ecb cbc cryptd \
        sha256_generic sha256_ssse3 sha512_generic hmac \
        virtio_net virtio_pci gve hv_netvsc hv_vmbus mana ena
    return 0
}

# called by dracut
install() {
    local config bin helper evidence simdir f
    config=$(gu_config)
    bin=$(gu_bin)
    helper=$(gu_helper)

    inst_binary "$bin" /usr/bin/guest-unlock
    inst_simple "$helper" /usr/lib/guest-unlock/guest-unlock-initrd
    chmod 0755 "$initdir/usr/lib/guest-unlock/guest-unlock-initrd"
    inst_simple "$config" /etc/guest-unlock/config.toml
    inst_multiple cat grep sed tail sleep mkdir mount modprobe

    # A simulated platform (tests and demos only).
    evidence=$(sed -n 's/^[[:space:]]*evidence[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$config" | tail -n 1)
    if [[ $evidence == sim:* ]]; then
        simdir=${evidence#sim:}
        dwarn "guest-unlock: adding the SIMULATED SEV-SNP platform $simdir (tests only)"
        inst_dir "$simdir"
        for f in "$simdir"/*; do
            [[ -f $f ]] && inst_simple "$f" "$f"
        done
    fi

    # Bring the network up even when the root file system is local.
    mkdir -p "$initdir/etc/cmdline.d"
    echo "rd.neednet=1" > "$initdir/etc/cmdline.d/90guest-unlock.conf"

    if dracut_module_included "systemd"; then
        # systemd initrd: a oneshot unit ordered before cryptsetup-pre.target;
        # systemd-cryptsetup@ then finds the volumes active ("Volume ... already
        # active") or asks for the passphrase.
        inst_simple "$moddir/guest-unlock.service" "$systemdsystemunitdir/guest-unlock.service"
        $SYSTEMCTL -q --root "$initdir" add-wants cryptsetup.target guest-unlock.service
    else
        # Shell initrd: the first job of each settled initqueue pass, before
        # the crypt module's cryptroot-ask jobs (which skip active mappings).
        inst_hook initqueue/settled 00 "$moddir/guest-unlock-settled.sh"
    fi
}
