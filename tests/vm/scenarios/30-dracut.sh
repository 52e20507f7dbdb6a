# shellcheck shell=bash
# dracut-unlock, dracut-refused: the same, with a dracut systemd initrd
# and the project's dracut module.

fixture dracut-unlock dracut-root
fx_dracut_unlock() {
    local dir=$1 mark
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    enrolled_disks "$dir" root || return 1
    mark=$(audit_mark)
    BOOT_APPEND=rd.neednet=1 boot dracut-unlock "${IMAGE[dracut-root]}" "$STOP_RE" "$dir/root.img"
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}
scenario dracut-unlock dracut-unlock check_root_unlocked \
    "as unlock, with dracut's systemd initrd and the project's dracut module"

fixture dracut-refused dracut-root
fx_dracut_refused() { BOOT_APPEND=rd.neednet=1 fx_refused_on dracut-root dracut-refused "$1"; }
scenario dracut-refused dracut-refused check_refused \
    "as refused, with dracut: systemd's passphrase prompt, no hang"
