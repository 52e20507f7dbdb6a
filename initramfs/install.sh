#!/bin/sh
# Install the guest-unlock initramfs integration.
#
#   initramfs/install.sh [--destdir DIR] [--no-initramfs-tools] [--no-dracut]
#
# Installs (under DIR, default /):
#   /usr/lib/guest-unlock/guest-unlock-initrd       boot helper (both systems)
#   /usr/lib/guest-unlock/guest-unlock-keyscript    crypttab keyscript= (Debian)
#   /usr/share/initramfs-tools/hooks/guest-unlock
#   /usr/share/initramfs-tools/scripts/local-top/guest-unlock
#   /usr/lib/dracut/modules.d/90guest-unlock/
#   /usr/lib/dracut/modules.d/91guest-unlock-token/  the token plugin in a
#       systemd initrd (the plugin itself comes with the package)
# The guest-unlock binary itself is built and installed separately (for
# example `cargo build --profile ship -p guest-unlock`, then
# `install -m 0755 target/ship/guest-unlock /usr/local/bin/`), and
# /etc/guest-unlock/config.toml is written by the administrator: without it
# neither initramfs generator adds anything. Then rebuild the initramfs:
# `update-initramfs -u` or `dracut -f`.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
destdir=
itools=y
dracut=y
while [ $# -gt 0 ]; do
	case "$1" in
	--destdir)
		[ $# -ge 2 ] || { echo "install.sh: --destdir needs a directory" >&2; exit 2; }
		destdir=$2
		shift 2
		;;
	--no-initramfs-tools) itools=n; shift ;;
	--no-dracut) dracut=n; shift ;;
	-h | --help)
		sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "install.sh: unknown argument $1 (see --help)" >&2
		exit 2
		;;
	esac
done

install -d "$destdir/usr/lib/guest-unlock"
install -m 0755 "$here/lib/guest-unlock-initrd" "$destdir/usr/lib/guest-unlock/guest-unlock-initrd"
install -m 0755 "$here/initramfs-tools/keyscript/guest-unlock-keyscript" \
	"$destdir/usr/lib/guest-unlock/guest-unlock-keyscript"

if [ "$itools" = y ]; then
	install -d "$destdir/usr/share/initramfs-tools/hooks" \
		"$destdir/usr/share/initramfs-tools/scripts/local-top"
	install -m 0755 "$here/initramfs-tools/hooks/guest-unlock" \
		"$destdir/usr/share/initramfs-tools/hooks/guest-unlock"
	install -m 0755 "$here/initramfs-tools/scripts/local-top/guest-unlock" \
		"$destdir/usr/share/initramfs-tools/scripts/local-top/guest-unlock"
fi

if [ "$dracut" = y ]; then
	m="$destdir/usr/lib/dracut/modules.d/90guest-unlock"
	install -d "$m"
	install -m 0755 "$here/dracut/90guest-unlock/module-setup.sh" "$m/module-setup.sh"
	install -m 0755 "$here/dracut/90guest-unlock/guest-unlock-settled.sh" "$m/guest-unlock-settled.sh"
	install -m 0644 "$here/dracut/90guest-unlock/guest-unlock.service" "$m/guest-unlock.service"
	t="$destdir/usr/lib/dracut/modules.d/91guest-unlock-token"
	install -d "$t"
	install -m 0755 "$here/dracut/91guest-unlock-token/module-setup.sh" "$t/module-setup.sh"
	install -m 0644 "$here/dracut/91guest-unlock-token/network.conf" "$t/network.conf"
fi

echo "guest-unlock initramfs integration installed${destdir:+ under $destdir}."
[ -r "$destdir/etc/guest-unlock/config.toml" ] ||
	echo "Note: write /etc/guest-unlock/config.toml, then rebuild the initramfs (see docs/operations.md)."
