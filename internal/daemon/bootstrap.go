package daemon

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"text/template"

	"github.com/cavaliergopher/cpio"

	"banger/internal/guestfs"
	"banger/internal/kernel"
	"banger/internal/oci"
	"banger/internal/store"
)

// An image converted from a registry was made to run under a container
// runtime, not to boot. bootstrap.go makes it bootable under banger:
//
//	has systemd and sshd ─► init "systemd": banger-bootstrap.service runs
//	                        `banger-init setup` (hostname, network from the
//	                        per-VM 10-banger.network, SSH host keys), sshd's
//	                        unit is enabled, fstab mounts the work disk,
//	                        banger-acpid.service powers off on the ACPI
//	                        power button.
//	anything else        ─► init "banger-init": /sbin/init is banger's
//	                        script, which mounts, brings up the network,
//	                        installs openssh-server with the image's package
//	                        manager if missing, and runs sshd as PID 1's child.
//
// The kernel's initrd carries a static busybox; it is copied into the
// image so the script has a shell, mount and ip even where the image has
// none.

// Guest paths of the bootstrap.
const (
	guestBangerDir    = "/usr/lib/banger"
	guestInitPath     = guestBangerDir + "/banger-init"
	guestBusyboxPath  = guestBangerDir + "/busybox"
	guestBootstrapSvc = "/etc/systemd/system/banger-bootstrap.service"
	guestAcpidSvc     = "/etc/systemd/system/banger-acpid.service"

	initSystemd = "systemd"
	initBanger  = "banger-init"
)

//go:embed guestinit.sh
var guestInitTemplate string

var guestInitTmpl = template.Must(template.New("banger-init").Parse(guestInitTemplate))

// packageManagers says how banger-init installs sshd (and ip, when the
// image lacks it) with each package manager oci detects.
var packageManagers = map[string]struct{ name, install, sshPkg, ipPkg string }{
	"apt": {"apt-get", `DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs`, "openssh-server", "iproute2"},
	"apk": {"apk", `apk add --no-cache $pkgs`, "openssh-server", "iproute2"},
	"dnf": {"dnf", `dnf install -y $pkgs`, "openssh-server", "iproute"},
	"yum": {"yum", `yum install -y $pkgs`, "openssh-server", "iproute"},
}

// renderGuestInit generates banger-init for an image whose package
// manager is pm ("" when it has none banger knows). withBusybox says
// whether busybox is placed beside it (it then runs the script).
func renderGuestInit(pm string, withBusybox bool) ([]byte, error) {
	data := struct {
		Shell, Busybox, PackageManagerName, Install, SSHPackage, IPPackage string
	}{Shell: "/bin/sh", PackageManagerName: "none"}
	if withBusybox {
		data.Shell, data.Busybox = guestBusyboxPath+" sh", guestBusyboxPath
	}
	if m, ok := packageManagers[pm]; ok {
		data.PackageManagerName, data.Install, data.SSHPackage, data.IPPackage = m.name, m.install, m.sshPkg, m.ipPkg
	} else if pm != "" {
		return nil, fmt.Errorf("no install recipe for package manager %q", pm)
	}
	var b bytes.Buffer
	if err := guestInitTmpl.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("render banger-init: %w", err)
	}
	return b.Bytes(), nil
}

// bootstrapUnit runs `banger-init setup` under an image's own systemd.
const bootstrapUnit = `[Unit]
Description=banger guest bootstrap (hostname, network, SSH host keys)
After=local-fs.target systemd-udev-trigger.service
Before=ssh.service sshd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + guestInitPath + ` setup

[Install]
WantedBy=multi-user.target
`

// acpidUnit powers the guest off on the ACPI power button, which images
// without udev and logind would ignore.
const acpidUnit = `[Unit]
Description=banger: power off on the ACPI power button

[Service]
ExecStart=` + guestInitPath + ` acpid
Restart=on-failure

[Install]
WantedBy=multi-user.target
`

const bootstrapFstab = `# banger: /dev/vda is the VM's root disk, /dev/vdb its work disk.
/dev/vda / ext4 defaults 0 1
/dev/vdb /root ext4 defaults,nofail 0 2
`

// mountPoints must exist for the initrd to move /dev, /proc and /sys into
// the root, and for init to mount the rest; container images often lack
// them.
var mountPoints = []struct {
	path string
	mode fs.FileMode
}{
	{"/dev", 0o755}, {"/proc", 0o555}, {"/sys", 0o555}, {"/run", 0o755},
	{"/tmp", fs.ModeSticky | 0o777}, {"/root", 0o700},
}

// guestProber is what the bootstrap reads from an image.
type guestProber interface {
	Lstat(ctx context.Context, p string) (guestfs.FileInfo, error)
	ReadFile(ctx context.Context, p string) ([]byte, error)
}

// exists reports whether p is in the image (a dangling symlink counts).
func exists(ctx context.Context, g guestProber, p string) (bool, error) {
	_, err := g.Lstat(ctx, p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// firstExisting returns the first of paths present in the image, or "".
func firstExisting(ctx context.Context, g guestProber, paths ...string) (string, error) {
	for _, p := range paths {
		ok, err := exists(ctx, g, p)
		if err != nil || ok {
			return p, err
		}
	}
	return "", nil
}

// injectBootstrap edits the converted image at img so it boots under
// banger and returns the init it chose (initSystemd or initBanger).
func injectBootstrap(ctx context.Context, img *guestfs.Image, res oci.Result, busybox []byte) (string, error) {
	var e guestfs.Edit
	init, err := planInit(ctx, img, &e, res)
	if err != nil {
		return "", err
	}
	if err := planCommon(ctx, img, &e, res, busybox); err != nil {
		return "", err
	}
	if err := img.Apply(ctx, &e); err != nil {
		return "", fmt.Errorf("inject banger's bootstrap: %w", err)
	}
	return init, nil
}

// planCommon adds what every converted image gets: banger-init (and
// busybox), the mount points, and no baked-in SSH host keys (each VM
// makes its own on first boot).
func planCommon(ctx context.Context, g guestProber, e *guestfs.Edit, res oci.Result, busybox []byte) error {
	if busybox == nil {
		hasSh, err := exists(ctx, g, "/bin/sh")
		if err != nil {
			return err
		}
		if !hasSh {
			return errors.New("the image has no /bin/sh and the kernel's initrd has no busybox to run banger's bootstrap with; use a kernel built by banger (banger kernel pull) or an image with a shell")
		}
	} else if err := e.WriteFile(guestBusyboxPath, busybox, 0o755, 0, 0); err != nil {
		return err
	}
	script, err := renderGuestInit(res.PackageManager, busybox != nil)
	if err != nil {
		return err
	}
	if err := e.WriteFile(guestInitPath, script, 0o755, 0, 0); err != nil {
		return err
	}
	for _, mp := range mountPoints {
		ok, err := exists(ctx, g, mp.path)
		if err != nil {
			return err
		}
		if !ok {
			if err := e.MkdirAll(mp.path, mp.mode, 0, 0); err != nil {
				return err
			}
		}
	}
	for _, t := range []string{"rsa", "dsa", "ecdsa", "ed25519"} {
		for _, suffix := range []string{"", ".pub"} {
			if err := e.Remove("/etc/ssh/ssh_host_" + t + "_key" + suffix); err != nil {
				return err
			}
		}
	}
	return nil
}

// planInit picks the guest's init and adds its wiring.
func planInit(ctx context.Context, g guestProber, e *guestfs.Edit, res oci.Result) (string, error) {
	if res.HasSystemd && res.HasSSHD {
		unit, err := firstExisting(ctx, g,
			"/etc/systemd/system/sshd.service", "/usr/lib/systemd/system/ssh.service", "/lib/systemd/system/ssh.service",
			"/usr/lib/systemd/system/sshd.service", "/lib/systemd/system/sshd.service")
		if err != nil {
			return "", err
		}
		if unit != "" {
			return initSystemd, planSystemd(ctx, g, e, unit)
		}
	}
	return initBanger, e.Symlink(guestInitPath, "/sbin/init")
}

func planSystemd(ctx context.Context, g guestProber, e *guestfs.Edit, sshdUnit string) error {
	wants := "/etc/systemd/system/multi-user.target.wants/"
	steps := []func() error{
		func() error { return e.WriteFile(guestBootstrapSvc, []byte(bootstrapUnit), 0o644, 0, 0) },
		func() error { return e.Symlink(guestBootstrapSvc, wants+path.Base(guestBootstrapSvc)) },
		func() error { return e.WriteFile(guestAcpidSvc, []byte(acpidUnit), 0o644, 0, 0) },
		func() error { return e.Symlink(guestAcpidSvc, wants+path.Base(guestAcpidSvc)) },
		func() error { return e.Symlink(sshdUnit, wants+path.Base(sshdUnit)) },
		func() error { return e.WriteFile("/etc/fstab", []byte(bootstrapFstab), 0o644, 0, 0) },
		// Empty: systemd makes a fresh machine id on each VM's first boot.
		func() error { return e.WriteFile("/etc/machine-id", nil, 0o444, 0, 0) },
		func() error { return planSSHDInclude(ctx, g, e) },
		func() error { return planSystemdInit(ctx, g, e) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// planSSHDInclude makes sshd read /etc/ssh/sshd_config.d, where the daemon
// puts each VM's key-only settings.
func planSSHDInclude(ctx context.Context, g guestProber, e *guestfs.Edit) error {
	const cfg = "/etc/ssh/sshd_config"
	data, err := g.ReadFile(ctx, cfg)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = nil, nil
	}
	if err != nil {
		return err
	}
	if bytes.Contains(data, []byte("sshd_config.d/")) {
		return nil
	}
	data = append([]byte("Include /etc/ssh/sshd_config.d/*.conf\n"), data...)
	return e.WriteFile(cfg, data, 0o644, 0, 0)
}

// planSystemdInit points /sbin/init at systemd when the image has no
// /sbin/init (container images rarely do).
func planSystemdInit(ctx context.Context, g guestProber, e *guestfs.Edit) error {
	ok, err := exists(ctx, g, "/sbin/init")
	if err != nil || ok {
		return err
	}
	systemd, err := firstExisting(ctx, g, "/lib/systemd/systemd", "/usr/lib/systemd/systemd")
	if err != nil {
		return err
	}
	if systemd == "" {
		return errors.New("the image has systemd but neither /lib/systemd/systemd nor /usr/lib/systemd/systemd")
	}
	return e.Symlink(systemd, "/sbin/init")
}

// maxBusybox bounds what is read from an initrd for busybox.
const maxBusybox = 32 << 20

// initrdBusybox returns the static busybox inside a kernel's initrd (a
// gzip'ed newc cpio as banger's kernel builder writes it).
func initrdBusybox(k store.Kernel, km kernel.Manifest) ([]byte, error) {
	p, err := km.Path(k.Dir, kernel.RoleInitrd)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("initrd %s is not gzip'ed: %w", p, err)
	}
	cr := cpio.NewReader(zr)
	for {
		hdr, err := cr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("initrd %s has no bin/busybox", p)
		}
		if err != nil {
			return nil, fmt.Errorf("read initrd %s: %w", p, err)
		}
		if strings.TrimPrefix(strings.TrimPrefix(hdr.Name, "./"), "/") != "bin/busybox" || !hdr.Mode.IsRegular() {
			continue
		}
		if hdr.Size > maxBusybox {
			return nil, fmt.Errorf("initrd %s: bin/busybox is %d bytes, over the %d limit", p, hdr.Size, maxBusybox)
		}
		data, err := io.ReadAll(io.LimitReader(cr, maxBusybox))
		if err != nil {
			return nil, fmt.Errorf("read busybox from initrd %s: %w", p, err)
		}
		if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
			return nil, fmt.Errorf("initrd %s: bin/busybox is not an ELF binary", p)
		}
		return data, nil
	}
}

// countPackages counts the installed packages in the image's package
// database; -1 when it cannot (rpm's database is not plain text).
func countPackages(ctx context.Context, g guestProber, pm string) int {
	switch pm {
	case "apt":
		data, err := g.ReadFile(ctx, "/var/lib/dpkg/status")
		if err != nil {
			return -1
		}
		n := 0
		for _, stanza := range strings.Split(string(data), "\n\n") {
			if strings.Contains(stanza, "\nStatus: install ok installed") || strings.HasPrefix(stanza, "Status: install ok installed") {
				n++
			}
		}
		return n
	case "apk":
		for _, p := range []string{"/lib/apk/db/installed", "/usr/lib/apk/db/installed"} {
			if data, err := g.ReadFile(ctx, p); err == nil {
				return strings.Count("\n"+string(data), "\nP:")
			}
		}
	}
	return -1
}
