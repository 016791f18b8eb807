#!{{.Shell}}
# banger-init: the bootstrap banger puts into images it converts from a
# container registry, so that they boot as banger VMs. Generated for the
# image's package manager: {{.PackageManagerName}}.
#
#   banger-init                 as /sbin/init (PID 1): mount the kernel file
#                               systems and the work disk, bring up the network
#                               from /etc/systemd/network/10-banger.network,
#                               install openssh-server if missing, run sshd.
#   banger-init setup           from banger-bootstrap.service, under the
#                               image's own systemd: hostname, network and SSH
#                               host keys only.
#   banger-init acpid           from banger-acpid.service: power off through
#                               systemd on the ACPI power button.
#   banger-init print-network [FILE [SYSFS_NET_DIR]]
#                               print the ip commands the network step runs.
#
# Nothing here pretends: when a step fails it says why on the console and,
# as PID 1, powers the VM off.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
BB={{.Busybox}}
NETWORK_FILE=/etc/systemd/network/10-banger.network
SYS_NET=/sys/class/net
MODE=setup
DRY=

say() { echo "banger-init: $*"; }

power_off() {
	say "powering off"
	sync
	echo o >/proc/sysrq-trigger
	tool sleep 10
	exit 1
}

fail() {
	say "ERROR: $*"
	[ "$MODE" = init ] && power_off
	exit 1
}

# find_prog prints the path of the image's own program $1.
find_prog() {
	for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
		if [ -x "$d/$1" ]; then
			echo "$d/$1"
			return 0
		fi
	done
	return 1
}

# tool runs the image's program $1, or busybox's applet of that name.
tool() {
	name=$1
	shift
	if p=$(find_prog "$name"); then
		"$p" "$@"
	elif [ -n "$BB" ] && [ -x "$BB" ]; then
		"$BB" "$name" "$@"
	else
		say "the image has no $name and there is no busybox to stand in for it"
		return 127
	fi
}

run() {
	if [ -n "$DRY" ]; then
		echo "$*"
		return 0
	fi
	tool "$@"
}

mount_kernel_fs() {
	[ -e /proc/self ] || tool mount -t proc proc /proc || fail "cannot mount /proc"
	[ -d /sys/class ] || tool mount -t sysfs sysfs /sys || fail "cannot mount /sys"
	[ -c /dev/null ] || tool mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
	tool mkdir -p /dev/pts /dev/shm /run
	tool mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || say "warning: cannot mount /dev/pts; ssh sessions get no terminal"
	tool mount -t tmpfs -o mode=1777 tmpfs /dev/shm || say "warning: cannot mount /dev/shm"
	tool mount -t tmpfs -o mode=755 tmpfs /run || say "warning: cannot mount /run"
	if [ -b /dev/vdb ]; then
		tool mkdir -p /root
		tool mount -t ext4 /dev/vdb /root || say "warning: cannot mount the work disk /dev/vdb on /root"
	fi
}

set_hostname() {
	[ -r /etc/hostname ] || return 0
	read -r name </etc/hostname
	[ -n "$name" ] && echo "$name" >/proc/sys/kernel/hostname
	return 0
}

# iface_for prints the name of the interface whose MAC address is $1.
iface_for() {
	for d in "$SYS_NET"/*; do
		[ -r "$d/address" ] || continue
		read -r have <"$d/address"
		if [ "$have" = "$1" ]; then
			echo "${d##*/}"
			return 0
		fi
	done
	return 1
}

# network applies the MACAddress=, Address= and Gateway= that banger wrote
# for this VM with ip (the image's, or busybox's).
network() {
	file=$1
	[ -r "$file" ] || fail "$file is missing; banger writes it for each VM (was this disk booted outside banger?)"
	mac=
	addr=
	gw=
	while IFS='=' read -r key value || [ -n "$key" ]; do
		case "$key" in
		MACAddress) mac=$value ;;
		Address) addr=$value ;;
		Gateway) gw=$value ;;
		esac
	done <"$file"
	[ -n "$mac" ] || fail "no MACAddress= in $file"
	[ -n "$addr" ] || fail "no Address= in $file"
	dev=$(iface_for "$mac") || fail "no network interface has MAC address $mac (is virtio_net loaded?)"
	run ip link set lo up || return 1
	run ip link set dev "$dev" up || return 1
	run ip addr replace "$addr" dev "$dev" || return 1
	if [ -n "$gw" ]; then
		run ip route replace default via "$gw" dev "$dev" || return 1
	fi
	[ -n "$DRY" ] || say "network: $dev $addr${gw:+ via $gw}"
	return 0
}

install_missing() {
	find_prog sshd >/dev/null && return 0
{{- if .Install}}
	pkgs="{{.SSHPackage}}"
	find_prog ip >/dev/null || pkgs="$pkgs {{.IPPackage}}"
	say "installing $pkgs with {{.PackageManagerName}}; this needs the VM to reach the distribution's package mirrors"
	{{.Install}} || fail "installing $pkgs with {{.PackageManagerName}} failed (exit $?; see above). Give the VM a route to the package mirrors, or pull an image that has openssh-server."
	find_prog sshd >/dev/null || fail "{{.PackageManagerName}} finished but the image still has no sshd"
{{- else}}
	fail "the image has no sshd and no package manager banger knows (apt-get, apk, dnf, yum) to install openssh-server; pull an image that has openssh-server"
{{- end}}
}

host_keys() {
	tool mkdir -p /etc/ssh
	for t in ed25519 ecdsa; do
		f=/etc/ssh/ssh_host_${t}_key
		[ -e "$f" ] && continue
		tool ssh-keygen -q -t "$t" -N "" -f "$f" || fail "ssh-keygen -t $t failed"
	done
}

serve_sshd() {
	sshd=$(find_prog sshd) || fail "the image has no sshd"
	tool mkdir -p /run/sshd /var/empty
	# sshd refuses to start without a config file; the options below are
	# all banger needs.
	cfg=/etc/ssh/sshd_config
	[ -f "$cfg" ] || cfg=/dev/null
	set -- -D -e -f "$cfg" \
		-o "AuthorizedKeysFile=.ssh/authorized_keys /etc/ssh/banger_authorized_keys" \
		-o PermitRootLogin=prohibit-password -o PasswordAuthentication=no \
		-h /etc/ssh/ssh_host_ed25519_key -h /etc/ssh/ssh_host_ecdsa_key
	quick=0
	while :; do
		started=$(tool date +%s)
		"$sshd" "$@" &
		pid=$!
		say "sshd started (pid $pid)"
		# wait also reaps the orphans that PID 1 inherits.
		while kill -0 "$pid" 2>/dev/null; do
			wait "$pid"
		done
		if [ $(($(tool date +%s) - started)) -lt 10 ]; then
			quick=$((quick + 1))
		else
			quick=0
		fi
		[ "$quick" -lt 5 ] || fail "sshd exited 5 times in a row right after starting; see its messages above"
		say "sshd exited; starting it again in 2s"
		tool sleep 2
	done
}

# prepare_acpid readies busybox's acpid to run the command $1 when the
# ACPI power button (how banger stops a QEMU VM) is pressed. Firecracker's
# Ctrl-Alt-Del needs no acpid.
ACPI_DIR=/run/banger-acpi
prepare_acpid() {
	if [ -z "$BB" ] || [ ! -x "$BB" ]; then
		say "warning: no busybox for acpid; the ACPI power button is ignored (banger vm stop kills the VM after its timeout)"
		return 1
	fi
	for m in button evdev; do
		"$BB" modprobe "$m" 2>/dev/null || say "warning: cannot load kernel module $m; the ACPI power button may be ignored"
	done
	"$BB" mkdir -p "$ACPI_DIR" || return 1
	printf '#!%s sh\n%s\n' "$BB" "$1" >"$ACPI_DIR/power-off" || return 1
	"$BB" chmod 755 "$ACPI_DIR/power-off"
	echo "PWRF power-off" >"$ACPI_DIR/acpid.conf"
}

run_acpid() {
	"$BB" acpid -f -c "$ACPI_DIR" -a "$ACPI_DIR/acpid.conf" -M "$ACPI_DIR/default.map" -p "$ACPI_DIR/acpid.pid" -l /dev/console
}

main_init() {
	MODE=init
	mount_kernel_fs
	[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
	trap power_off INT TERM
	# Ctrl-Alt-Del (how banger stops a VM) signals PID 1 instead of rebooting.
	echo 0 >/proc/sys/kernel/ctrl-alt-del
	prepare_acpid "kill -INT 1" && run_acpid &
	set_hostname
	network "$NETWORK_FILE" || fail "bringing up the network from $NETWORK_FILE failed"
	install_missing
	host_keys
	serve_sshd
}

main_setup() {
	set_hostname
	network "$NETWORK_FILE" || fail "bringing up the network from $NETWORK_FILE failed"
	host_keys
}

case "${1:-}" in
setup) main_setup ;;
acpid)
	systemctl=$(find_prog systemctl) || fail "acpid mode is for images with systemd; no systemctl found"
	prepare_acpid "$systemctl poweroff" || exit 1
	run_acpid
	;;
print-network)
	DRY=1
	[ -n "${3:-}" ] && SYS_NET=$3
	network "${2:-$NETWORK_FILE}"
	;;
"")
	[ "$$" = 1 ] || fail "run as /sbin/init (PID 1), or give a subcommand: setup, print-network"
	main_init
	;;
*) fail "unknown subcommand $1; use setup, acpid or print-network" ;;
esac
