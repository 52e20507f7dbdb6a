# shellcheck shell=bash
# azure, azure-refused: an Azure confidential VM without Azure. qemu boots
# with a TPM (-tpmdev emulator) that is Debian's swtpm behind the simulated
# paravisor (`guest-unlock sim-platform paravisor`): the vTPM holds an HCL
# report signed by the simulated platform's VCEK and refreshes it when the
# guest writes its user data, as Azure's paravisor does. The initramfs's
# guest-unlock uses the azure-vtpm provider on /dev/tpmrm0.
#
# ONE fixture, the owner's workflow in two boots:
#   1. the policy admits the paravisor but pins another image's PCR 0: the
#      guest is refused (POLICY_PCRS_NOT_ALLOWED) and falls back to the
#      passphrase prompt; the broker's audit records the PCR values the
#      guest's quote proved (scenario azure-refused);
#   2. the owner pins those PCRs (0-9, docs/operations.md, "Azure
#      confidential VMs"): the next boot unlocks its root (scenario azure).

image_def it-azure initramfs-tools root azure-vtpm

# The qemu arguments of a TPM behind the paravisor's socket $1.
azure_qemu_args() {
    echo "-chardev socket,id=chrtpm,path=$1 -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0"
}

# wait_socket PATH PID: PATH appears while PID lives (10 s at most).
wait_socket() {
    for _ in $(seq 1 100); do
        [ -S "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# stop_pid PID: ended by id, waited for.
stop_pid() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; untrack "$1"; }

# azure_vtpm_provision DIR: a fresh swtpm state in DIR, provisioned by the
# simulated paravisor as Azure's vTPM (attestation key, HCL report index,
# user data index).
azure_vtpm_provision() {
    local d=$1 pid rc
    rm -rf "$d" && mkdir -p "$d" || return 1
    swtpm socket --tpm2 --tpmstate "dir=$d" --server "type=unixio,path=$d/data.sock" \
        --ctrl "type=unixio,path=$d/provision-ctrl.sock" --flags not-need-init,startup-clear \
        >"$d/provision.log" 2>&1 &
    pid=$!
    track "$pid"
    wait_socket "$d/data.sock" "$pid" || { stop_pid "$pid"; return 1; }
    "$G" sim-platform azure-provision --dir "${VM[sim]}" --tpm "$d/data.sock" >>"$d/provision.log" 2>&1
    rc=$?
    stop_pid "$pid"
    rm -f "$d"/*.sock
    return $rc
}

# azure_boot NAME DIR STOP_RE: one boot of DIR/root.img with the vTPM of
# DIR/vtpm attached (swtpm for qemu, the paravisor in front of it). It
# boots the vmlinuz through the firmware, not the vmlinux at its PVH entry:
# with a TPM, SeaBIOS's ACPI tables grow by the TPM's event log and qemu's
# PVH loader puts the initrd over them (no ACPI, so no TPM device); about
# 4 s more per boot.
azure_boot() {
    local name=$1 d=$2/vtpm stop=$3 sw pv pvh=${VM[boot_kernel]}
    rm -f "$d"/*.sock
    swtpm socket --tpm2 --tpmstate "dir=$d" --ctrl "type=unixio,path=$d/swtpm-ctrl.sock" \
        >"$LOGS/$name.swtpm.log" 2>&1 &
    sw=$!
    track "$sw"
    wait_socket "$d/swtpm-ctrl.sock" "$sw" || { stop_pid "$sw"; fail "swtpm did not start (log: $LOGS/$name.swtpm.log)"; return 1; }
    "$G" sim-platform paravisor --dir "${VM[sim]}" --qemu-ctrl "$d/qemu-ctrl.sock" \
        --swtpm-ctrl "$d/swtpm-ctrl.sock" >"$LOGS/$name.paravisor.log" 2>&1 &
    pv=$!
    track "$pv"
    wait_socket "$d/qemu-ctrl.sock" "$pv" ||
        { stop_pid "$pv"; stop_pid "$sw"; fail "the simulated paravisor did not start (log: $LOGS/$name.paravisor.log)"; return 1; }
    VM[boot_kernel]=${VM[vmlinuz]}
    BOOT_QEMU_ARGS=$(azure_qemu_args "$d/qemu-ctrl.sock") boot "$name" "${IMAGE[it-azure]}" "$stop" "$2/root.img"
    VM[boot_kernel]=$pvh
    stop_pid "$pv"
    stop_pid "$sw"
}

# policy_set_vtpm NAME PCRS: policy NAME admits only Azure guests on the
# simulated paravisor whose PCRs match PCRS (a TOML inline table's body,
# e.g. `0 = "…", 7 = "…"`).
policy_set_vtpm() {
    policy_put "$1" "" "
[vtpm]
accept = true
paravisor_measurements = [\"${VM[paravisor]}\"]

[[vtpm.pcr_sets]]
name = \"vm-image\"
pcrs = { $2 }"
}

# The PCRs 0-9 that the broker's newest Attest decision verified, as a
# TOML inline table's body (what the owner pins).
audited_pcrs() {
    broker_cli audit --kind attest --limit 1 --json 2>/dev/null | jq -r '
        .[-1].details.pcrs // {} | to_entries
        | map(select((.key | tonumber) < 10)) | sort_by(.key | tonumber)
        | map("\(.key) = \"\(.value)\"") | join(", ")'
}

# What the first boot left, for azure-refused's check (BOOT[] holds the
# fixture's last boot).
declare -A AZ_REFUSED=()

fixture azure it-azure
fx_azure() {
    local dir=$1 mark pcrs
    command -v swtpm >/dev/null || { skip "swtpm is not installed (scripts/setup installs it)"; return 77; }
    broker_new "$dir/broker" || { fail "broker setup (init, serve, policy set) failed: ${BROKER[error]:-see its log}"; return 1; }
    # Azure guests send no certificate table: the broker finds the
    # (simulated) VCEK in its certificate directory, as an owner imports it.
    sed -i "s|^# certs_dir = .*|certs_dir = \"${VM[sim]}\"|" "${BROKER[cfg]}" &&
        grep -q "^certs_dir = " "${BROKER[cfg]}" || { fail "could not set certs_dir in the broker's config"; return 1; }
    broker_serve || { fail "broker restart failed: ${BROKER[error]:-see its log}"; return 1; }
    VM[paravisor]=$("$G" sim-platform show --dir "${VM[sim]}" | awk '/^paravisor:/ { print $2 }')
    [ -n "${VM[paravisor]}" ] || { fail "sim-platform show printed no paravisor measurement"; return 1; }
    enrolled_disks "$dir" root || return 1
    azure_vtpm_provision "$dir/vtpm" || { fail "provisioning the simulated vTPM failed (log: $dir/vtpm/provision.log)"; return 1; }

    # 1. Another image's PCR 0: refused, the prompt follows.
    policy_set_vtpm vm "0 = \"$(printf '%064d' 0 | tr 0 e)\"" || { fail "broker policy set (refusing PCRs) failed"; return 1; }
    mark=$(audit_mark)
    azure_boot azure-refused "$dir" "$FALLBACK_RE" || return 1
    audit_since "$mark" >"$dir/audit-refused"
    AZ_REFUSED=([log]=${BOOT[log]} [stopped]=${BOOT[stopped]} [timed_out]=${BOOT[timed_out]})

    # 2. The owner pins what the refused guest's quote proved.
    pcrs=$(audited_pcrs)
    [ -n "$pcrs" ] || { fail "the broker's audit of the refused boot holds no PCRs: $(cat "$dir/audit-refused")"; return 1; }
    printf '%s\n' "$pcrs" >"$dir/pcrs"
    policy_set_vtpm vm "$pcrs" || { fail "broker policy set (the guest's PCRs) failed"; return 1; }
    mark=$(audit_mark)
    azure_boot azure "$dir" "$STOP_RE" || return 1
    audit_since "$mark" >"$dir/audit"
    audit_text_since "$mark" >"$dir/decisions"
}

scenario azure-refused azure check_azure_refused \
    "Azure vTPM (swtpm + simulated paravisor): PCRs of another image, POLICY_PCRS_NOT_ALLOWED, the passphrase prompt"
check_azure_refused() {
    local dir=$1 rc last_log=${BOOT[log]} last_stopped=${BOOT[stopped]} last_timed_out=${BOOT[timed_out]}
    # The first boot's, for fell_back and the FAIL line; the last boot's
    # again afterwards, for check_azure.
    BOOT[log]=${AZ_REFUSED[log]} BOOT[stopped]=${AZ_REFUSED[stopped]} BOOT[timed_out]=${AZ_REFUSED[timed_out]}
    check_refused_by_pcrs "$dir"
    rc=$?
    [ $rc -eq 0 ] || return $rc
    BOOT[log]=$last_log BOOT[stopped]=$last_stopped BOOT[timed_out]=$last_timed_out
}

check_refused_by_pcrs() {
    local dir=$1 decision
    fell_back || return 1
    refute_event "${BOOT[log]}" event=unlocked volume=root || return 1
    expect_event "${BOOT[log]}" event=refused volume=root device=/dev/vda \
        'reasons~(^|,)POLICY_PCRS_NOT_ALLOWED(,|$)' || return 1
    decision=$(kv_field "$EV" decision)
    kv_lines "$dir/audit-refused" "audit: " verdict=deny "id=$decision" \
        'reasons~^POLICY_PCRS_NOT_ALLOWED$' | grep -q . ||
        fail "the broker's audit has no refusal $decision for POLICY_PCRS_NOT_ALLOWED alone: $(cat "$dir/audit-refused")"
}

scenario azure azure check_azure \
    "Azure vTPM: the PCRs the refused boot proved pinned, guest-unlock (azure-vtpm) opens the root with the broker's key"
check_azure() {
    local dir=$1
    check_root_unlocked "$dir" || return 1
    EXTRA="$EXTRA, pinned PCRs $(grep -oE '(^|, )[0-9]+ =' "$dir/pcrs" | grep -oE '[0-9]+' | paste -sd, -)"
}
