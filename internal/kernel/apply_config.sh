#!/bin/sh
# banger-apply-config DEVICE ROOT [WORKDIR]: copy the files of banger's
# per-VM configuration disk DEVICE (a tar whose first entry is
# "banger-config/", built by the host at every boot) over the root
# filesystem mounted at ROOT. The initrd runs it before the root's init,
# so the VM's identity (hostname, network, SSH keys, machine-id) is in
# place before any of its services start. Exit status: 0 applied,
# 2 DEVICE is not a configuration disk, 1 it is but could not be applied.
dev="$1"
root="$2"
work="${3:-/banger-config}"
[ -n "$dev" ] && [ -n "$root" ] || { echo "usage: banger-apply-config DEVICE ROOT [WORKDIR]"; exit 2; }
[ "$(head -c 14 "$dev" 2>/dev/null)" = "banger-config/" ] || exit 2
rm -rf "$work"
mkdir -p "$work" || exit 1
tar -xf "$dev" -C "$work" || { echo "cannot unpack $dev"; exit 1; }
version="$(cat "$work/banger-config/version" 2>/dev/null)"
[ "$version" = 1 ] || { echo "$dev has layout version '$version'; this initrd applies version 1"; exit 1; }
cd "$work/banger-config/root" || exit 1
find . ! -type d >"$work/list" || exit 1
failed=
while read -r f; do
	f="${f#./}"
	case "$f" in */*) mkdir -p "$root/${f%/*}" || failed="$failed $f" ;; esac
	# A link or file the image has at that path is replaced, never
	# followed: the copy lands on the root filesystem itself.
	rm -rf "$root/$f"
	cp -a "$f" "$root/$f" || failed="$failed $f"
done <"$work/list"
[ -z "$failed" ] || { echo "could not place:$failed"; exit 1; }
echo "$(wc -l <"$work/list") files from $dev"
