package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/sshx"
	"banger/internal/vmcp"
)

// cpBarThreshold is the smallest transfer that gets a progress bar.
const cpBarThreshold = 8 << 20

// cpDialTimeout bounds connecting to the guest (TCP, handshake, auth).
const cpDialTimeout = 30 * time.Second

// guestSSHPort is the port sshd listens on in guests (a variable so tests
// can point it at their own server).
var guestSSHPort = "22"

const cpLong = `Copy files and directory trees between the host and a VM, over SFTP.

Exactly one of SRC and DST is in a VM, written NAME:PATH; the other is a
host path. A relative guest path is taken from /root, the home of root (as
whom banger logs in), so NAME:notes.txt is /root/notes.txt and NAME: alone
is /root. Guest paths are paths in the guest's own filesystem, cleaned with
the guest's / as their root: ".." stops there, and a guest path can never
name a host path. A host path with ':' before any '/' reads as NAME:PATH;
write it as ./PATH.

As with cp: directories need -r. Copying into an existing directory puts
SRC's base name inside it; otherwise DST is the new name, and its parent
must exist. SRC written as DIR/. copies DIR's contents. Existing files are
overwritten; existing directories are merged into.

Kept: permission bits, modification times (to the second) and symbolic
links, copied as links and never followed (a SRC that is itself a link is
followed without -r, as cp does). Sparse files stay sparse, and runs of
zeros are not sent to the VM. Not kept: ownership (files land owned by root
in the VM and by you on the host) and hard links. Devices, FIFOs and
sockets are skipped with a warning.

The VM must be running. On a terminal, transfers over 8 MiB show a progress
bar; in every case one summary line is printed at the end.`

const cpExample = `  banger vm cp ./notes.txt web:             # to /root/notes.txt
  banger vm cp -r ./src web:/srv/app        # /srv/app/src if /srv/app exists, else /srv/app
  banger vm cp web:/var/log/syslog .
  banger vm cp -r web:project/. ./backup    # the contents of /root/project into ./backup`

func newVMCpCommand(app *App) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:     "cp [-r] SRC DST",
		Short:   "Copy files and directories between the host and a VM",
		Long:    cpLong,
		Example: cpExample,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := parseCpArgs(args[0], args[1])
			if err != nil {
				return err
			}
			return runCp(cmd.Context(), app, a, recursive)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories and everything in them")
	return cmd
}

// cpArgs is a parsed `vm cp` command line.
type cpArgs struct {
	vm       string
	dir      vmcp.Direction
	src, dst string // the guest side resolved by vmcp.GuestPath
}

// splitVMPath reads arg as NAME:PATH, the way scp does: a ':' with a
// non-empty name before it and no '/' before it.
func splitVMPath(arg string) (vm, p string, ok bool) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", "", false
	}
	return arg[:i], arg[i+1:], true
}

func parseCpArgs(src, dst string) (cpArgs, error) {
	svm, sp, srcInVM := splitVMPath(src)
	dvm, dp, dstInVM := splitVMPath(dst)
	switch {
	case srcInVM && dstInVM:
		return cpArgs{}, fmt.Errorf("both %s and %s are in a VM; banger vm cp copies between the host and one VM, so copy through a host directory", src, dst)
	case !srcInVM && !dstInVM:
		return cpArgs{}, fmt.Errorf("neither %q nor %q is in a VM; write the VM side as NAME:PATH (e.g. web:/root/notes.txt), and use cp for copies on the host", src, dst)
	case srcInVM:
		if dst == "" {
			return cpArgs{}, errors.New("the destination (a host path) is empty; use . for the current directory")
		}
		return cpArgs{vm: svm, dir: vmcp.ToHost, src: vmcp.GuestPath(sp), dst: dst}, nil
	default:
		if src == "" {
			return cpArgs{}, errors.New("the source (a host path) is empty")
		}
		return cpArgs{vm: dvm, dir: vmcp.ToGuest, src: src, dst: vmcp.GuestPath(dp)}, nil
	}
}

func runCp(ctx context.Context, app *App, a cpArgs, recursive bool) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := app.client(ctx)
	if err != nil {
		return err
	}
	var info api.VMSSHInfo
	if err := c.Call(ctx, "vm.ssh_info", api.VMRef{Name: a.vm}, &info); err != nil {
		return err // e.g. not_running, whose message says how to start it
	}
	if err := info.Validate(); err != nil {
		return fmt.Errorf("refusing what bangerd answered: %w", err)
	}
	sshClient, err := dialGuest(ctx, info, net.JoinHostPort(info.IP, guestSSHPort))
	if err != nil {
		return err
	}
	defer sshClient.Close()
	// SFTP calls take no context; closing the connection ends them.
	defer context.AfterFunc(ctx, func() { sshClient.Close() })()
	sc, err := sftp.NewClient(sshClient, sftp.UseConcurrentWrites(true))
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("open an SFTP session on %s: %w; the guest needs OpenSSH's sftp-server (Debian: apt-get install openssh-sftp-server)", info.Name, err)
	}
	defer sc.Close()

	copier := &vmcp.Copier{Client: sc, GuestName: info.Name, Recursive: recursive}
	var bar *progressbar.ProgressBar
	copier.Warn = func(msg string) {
		if bar != nil {
			_ = bar.Clear()
		}
		fmt.Fprintf(app.Stderr, "warning: %s\n", msg)
	}
	if isTerminal(app.Stderr) {
		total, err := copier.Measure(ctx, a.dir, a.src)
		if err != nil {
			return cpError(ctx, a, err)
		}
		if total.Bytes > cpBarThreshold {
			bar = newCopyBar(app, total.Bytes)
			copier.Progress = func(n int64) { _ = bar.Add64(n) }
		}
	}
	start := time.Now()
	st, err := copier.Copy(ctx, a.dir, a.src, a.dst)
	if bar != nil {
		if err == nil {
			_ = bar.Finish()
		} else {
			_ = bar.Exit() // ends the line where the bar stopped
		}
	}
	if err != nil {
		return cpError(ctx, a, err)
	}
	fmt.Fprintln(app.Stdout, cpSummary(st, time.Since(start)))
	return nil
}

// cpError adds what an interrupted copy left behind.
func cpError(ctx context.Context, a cpArgs, err error) error {
	if ctx.Err() == nil {
		return err
	}
	dst := a.dst
	if a.dir == vmcp.ToGuest {
		dst = a.vm + ":" + dst
	}
	return fmt.Errorf("copy interrupted (%w); %s may be partly written", context.Cause(ctx), dst)
}

func cpSummary(st vmcp.Stats, took time.Duration) string {
	n := st.Files + st.Links
	noun := "files"
	if n == 1 {
		noun = "file"
	}
	round := 100 * time.Millisecond
	if took < time.Second {
		round = time.Millisecond
	}
	return fmt.Sprintf("copied %d %s (%.1f MiB) in %s", n, noun, float64(st.Bytes)/(1<<20), took.Round(round))
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newCopyBar(app *App, total int64) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(app.Stderr),
		progressbar.OptionSetDescription("  copying"),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(app.Stderr) }),
	)
}

// dialGuest opens banger's SSH connection to a guest at addr, with
// banger's key and its known_hosts checked strictly: the daemon pinned the
// guest's host key before the VM first booted, so an unknown or changed
// key is an error, never trusted on first use.
func dialGuest(ctx context.Context, info api.VMSSHInfo, addr string) (*ssh.Client, error) {
	keyPEM, err := os.ReadFile(info.KeyPath)
	if err != nil {
		return nil, fmt.Errorf("read banger's SSH key: %w (bangerd creates it; is this the same user as the daemon's?)", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("banger's SSH key %s cannot be used: %w", info.KeyPath, err)
	}
	known, err := knownhosts.New(info.KnownHostsPath)
	if err != nil {
		return nil, fmt.Errorf("read banger's known hosts %s: %w", info.KnownHostsPath, err)
	}
	alias := info.HostAlias
	if alias == "" {
		alias = info.IP
	}
	user := info.User
	if user == "" {
		user = "root"
	}
	cfg := sshx.ClientConfig(user, signer, pinnedHostKey(info.Name, alias, info.KnownHostsPath, known))
	dctx, cancel := context.WithTimeout(ctx, cpDialTimeout)
	defer cancel()
	client, err := sshx.Dial(dctx, addr, cfg)
	if err != nil {
		var changed *sshx.HostKeyChangedError
		var notPinned *hostKeyNotPinnedError
		if errors.As(err, &changed) || errors.As(err, &notPinned) || ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("ssh to %s: %w; is the VM still booting? see banger vm logs %s", info.Name, err, info.Name)
	}
	return client, nil
}

// hostKeyNotPinnedError: known_hosts has no key for the guest.
type hostKeyNotPinnedError struct{ name, alias, path string }

func (e *hostKeyNotPinnedError) Error() string {
	return fmt.Sprintf("no host key is pinned for %s (%s) in %s; banger pins it when the VM is created, so its line was removed: recreate the VM (banger vm delete, banger vm create)", e.name, e.alias, e.path)
}

// pinnedHostKey checks the offered key against the one known_hosts pins
// under alias (as ssh's HostKeyAlias does), whatever address was dialled.
func pinnedHostKey(name, alias, path string, known ssh.HostKeyCallback) ssh.HostKeyCallback {
	lookup := net.JoinHostPort(alias, "22")
	return func(_ string, remote net.Addr, key ssh.PublicKey) error {
		err := known(lookup, remote, key)
		var keyErr *knownhosts.KeyError
		if !errors.As(err, &keyErr) {
			return err
		}
		if len(keyErr.Want) == 0 {
			return &hostKeyNotPinnedError{name: name, alias: alias, path: path}
		}
		pinned := make([]string, 0, len(keyErr.Want))
		for _, w := range keyErr.Want {
			pinned = append(pinned, ssh.FingerprintSHA256(w.Key))
		}
		return &sshx.HostKeyChangedError{Name: name, Address: alias, PinnedAs: alias, Pinned: pinned,
			Offered: ssh.FingerprintSHA256(key), KnownHosts: path}
	}
}
