#!/bin/sh
# banger initrd /init: load the modules the root disk needs, mount root=,
# hand over to its init. Kernel command line knobs:
#   root=/dev/vda | LABEL=x | UUID=x   rootfstype=ext4   rootflags=opts
#   ro | rw   rootdelay=SECONDS (wait for root, default 10)   init=/sbin/init
#   banger.initrd=shell   drop to a shell instead of powering off on failure
#   banger.net=ADDR/PREFIX,GATEWAY,MAC   bring the interface with MAC up with
#       ADDR before the root's init runs, so the guest is on the network the
#       moment its services start (the root's network manager keeps it)
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

say() { echo "banger-initrd: $*"; }

fail() {
	say "ERROR: $*"
	parts="$(cat /proc/partitions 2>/dev/null)"
	say "block devices: ${parts:-none}"
	say "kernel command line: $(cat /proc/cmdline)"
	if [ "$onfail" = shell ]; then
		say "dropping to a shell (banger.initrd=shell); exit it to power off"
		sh
	else
		say "powering off; boot with banger.initrd=shell to get a shell here"
	fi
	poweroff -f
	sleep 5
	exit 1
}

root= rootfstype=ext4 rootflags= mode=rw rootdelay=10 init=/sbin/init onfail=poweroff net=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root="${arg#root=}" ;;
	rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
	rootflags=*) rootflags="${arg#rootflags=}" ;;
	rootdelay=*) rootdelay="${arg#rootdelay=}" ;;
	init=*) init="${arg#init=}" ;;
	ro) mode=ro ;;
	rw) mode=rw ;;
	banger.initrd=shell) onfail=shell ;;
	banger.net=*) net="${arg#banger.net=}" ;;
	esac
done
case "$rootdelay" in '' | *[!0-9]*) rootdelay=10 ;; esac

while read -r mod; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$(uname -r)/$mod" || say "warning: insmod $mod failed"
done </etc/banger-initrd/modules

# netup ADDR/PREFIX,GATEWAY,MAC: a failure is reported, not fatal (the
# root's own network manager tries again).
netup() {
	addr="${1%%,*}"
	rest="${1#*,}"
	gw="${rest%%,*}"
	mac="${rest#*,}"
	dev=
	for d in /sys/class/net/*; do
		[ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && dev="${d##*/}"
	done
	[ -n "$dev" ] || { say "warning: no interface has MAC $mac"; return 1; }
	ip link set lo up
	ip link set "$dev" up && ip addr add "$addr" dev "$dev" && ip route add default via "$gw" dev "$dev" &&
		say "network: $dev $addr via $gw" || say "warning: bringing up $dev with $addr failed"
}
[ -n "$net" ] && netup "$net"

[ -n "$root" ] || fail "no root= on the kernel command line"

# Wait for the root device, bounded: virtio devices appear as soon as their
# drivers bind, so this is normally instant.
dev=
tries=$((rootdelay * 10))
while [ "$tries" -gt 0 ]; do
	case "$root" in
	LABEL=* | UUID=*) dev="$(findfs "$root" 2>/dev/null)" ;;
	*) dev="$root" ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	dev=
	tries=$((tries - 1))
	sleep 0.1
done
[ -n "$dev" ] || fail "root device $root did not appear within ${rootdelay}s"

opts="$mode"
[ -n "$rootflags" ] && opts="$opts,$rootflags"
mount -t "$rootfstype" -o "$opts" "$dev" /newroot || fail "cannot mount $dev ($rootfstype, $opts) on /newroot"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "$init does not exist on $dev"

# The VM's configuration disk (identity, network, keys) goes over the root
# before its init runs; banger's host never writes into the VM's disks.
applied=
for b in /sys/block/vd*; do
	[ -e "$b" ] || continue
	out="$(banger-apply-config "/dev/${b##*/}" /newroot 2>&1)"
	case $? in
	0) say "config: $out"; applied=1; break ;;
	2) ;;
	*) fail "configuration disk /dev/${b##*/}: $out" ;;
	esac
done
[ -n "$applied" ] || say "no configuration disk: booting the root as it is"

say "root $dev mounted $mode, starting $init"
mount --move /dev /newroot/dev || fail "cannot move /dev into the new root"
mount --move /proc /newroot/proc || fail "cannot move /proc into the new root"
mount --move /sys /newroot/sys || fail "cannot move /sys into the new root"
exec switch_root /newroot "$init"
