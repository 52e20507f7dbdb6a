#!/usr/bin/env bash
# Regenerates tpm2-tools-swtpm.txt: the commands tpm2-tools (tpm2-tss) sends
# to a fresh swtpm, and swtpm's responses, for the operations an Azure guest
# performs. Independent byte strings for keybroker-vtpm's marshalling tests.
# Needs swtpm and tpm2-tools (Debian: apt-get install swtpm tpm2-tools).
# The output differs from run to run (fresh keys, session nonces).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$swtpm_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/state"
port=${PORT:-2421}
swtpm socket --tpm2 --tpmstate dir="$work/state" \
    --server type=tcp,port=$port,bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear &
swtpm_pid=$!
sleep 1
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port"
cd "$work"
run() { TSS2_LOG=tcti+debug "$@" 2>>trace.log >/dev/null; }
run tpm2_createprimary -C o -G rsa2048:rsassa-sha256:null \
    -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda' -c ak.ctx
run tpm2_evictcontrol -C o -c ak.ctx 0x81000003
run tpm2_readpublic -c 0x81000003
run tpm2_nvdefine -C o -s 64 -a "ownerread|ownerwrite|authread|authwrite" 0x01400002
python3 -c "import sys; sys.stdout.buffer.write(bytes(range(64)))" > ud.bin
run tpm2_nvwrite -C o -i ud.bin 0x01400002
run tpm2_nvread -C o -s 64 0x01400002
run tpm2_quote -c 0x81000003 -l sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23 \
    -q 6368616c6c656e6765 -m q.msg -s q.sig -o q.pcrs -g sha256
{
    echo "# tpm2-tools $(tpm2_quote --version | sed -n 's/.*version="\([^"]*\)".*/\1/p') against $(swtpm --version | head -1)"
    echo "# made by make-tpm2-tools-trace.sh; each command is followed by its response"
    python3 "$here/tcti-trace-to-text.py" trace.log
} > "$here/tpm2-tools-swtpm.txt"
