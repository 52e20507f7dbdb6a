#!/bin/bash
# shellcheck disable=SC2154 # initdir, systemdsystemunitdir: set by dracut
# dracut module: the libcryptsetup token plugin of guest-unlock
# (libcryptsetup-token-sev-keybroker.so) in a systemd initrd, so that
# systemd-cryptsetup opens volumes bound with `guest-unlock bind` from a
# plain crypttab line (`root UUID=... none luks`): it attests to the broker
# through the plugin, and asks for the passphrase when the broker refuses.
# As dracut's 91tpm2-tss and 91fido2 modules do for systemd's own tokens.
#
# Without /etc/guest-unlock/config.toml or the plugin it is not included.
# Build-time overrides: GUEST_UNLOCK_CONFIG, GUEST_UNLOCK_TOKEN_PLUGIN (the
# plugin file to put into the image).

gu_config() {
    echo "${GUEST_UNLOCK_CONFIG:-/etc/guest-unlock/config.toml}"
}

# Where libcryptsetup looks for token plugins (its compiled-in path, which
# `cryptsetup --help` prints), and so where the plugin goes in the image.
gu_token_dir() {
    local d
    for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
        [[ -d $d/cryptsetup ]] && { echo "$d/cryptsetup"; return 0; }
    done
    echo /usr/lib/x86_64-linux-gnu/cryptsetup
}

gu_plugin() {
    local p=${GUEST_UNLOCK_TOKEN_PLUGIN:-}
    [[ $p ]] || p=$(gu_token_dir)/libcryptsetup-token-sev-keybroker.so
    [[ -r $p ]] && echo "$p"
}

# called by dracut
check() {
    [[ -x /usr/lib/systemd/systemd-cryptsetup || -x /lib/systemd/systemd-cryptsetup ]] || return 1
    [[ -r "$(gu_config)" ]] || return 1
    [[ -n "$(gu_plugin)" ]] || return 1
    return 0
}

# called by dracut
depends() {
    echo systemd crypt network
    return 0
}

# called by dracut
installkernel() {
    # Evidence: the SNP guest driver, configfs-tsm, the vTPM (Azure).
    hostonly='' instmods sev-guest tsm_report tsm tpm tpm_tis_core tpm_tis tpm_crb
    return 0
}

# called by dracut
install() {
    local config plugin evidence simdir f
    config=$(gu_config)
    plugin=$(gu_plugin)
    inst_library "$plugin" "$(gu_token_dir)/libcryptsetup-token-sev-keybroker.so"
    inst_simple "$config" /etc/guest-unlock/config.toml

    # A simulated platform (tests and demos only).
    evidence=$(sed -n 's/^[[:space:]]*evidence[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$config" | tail -n 1)
    if [[ $evidence == sim:* ]]; then
        simdir=${evidence#sim:}
        dwarn "guest-unlock-token: adding the SIMULATED SEV-SNP platform $simdir (tests only)"
        inst_dir "$simdir"
        for f in "$simdir"/*; do
            [[ -f $f ]] && inst_simple "$f" "$f"
        done
    fi

    # The broker is reached over the network: bring it up, and start each
    # systemd-cryptsetup@ unit once it is online.
    mkdir -p "$initdir/etc/cmdline.d" "$initdir$systemdsystemunitdir/systemd-cryptsetup@.service.d"
    echo "rd.neednet=1" > "$initdir/etc/cmdline.d/91guest-unlock-token.conf"
    inst_simple "$moddir/network.conf" "$systemdsystemunitdir/systemd-cryptsetup@.service.d/91guest-unlock-token.conf"
}
