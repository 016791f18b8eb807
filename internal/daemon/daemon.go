package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"banger/internal/config"
	"banger/internal/forward"
	"banger/internal/privops"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/version"
	"banger/internal/vmm"
	"banger/internal/vmm/firecracker"
)

// Options configure a Daemon.
type Options struct {
	Layout config.Layout
	Config config.Config
	Logger *slog.Logger
	// AllowedUIDs are answered besides root (system mode adds the owner).
	AllowedUIDs []uint32
	// WithoutNetwork serves without the bridge, tap pool, rules and DNS
	// server, for tests of the RPC surface that must not touch the host's
	// network. bangerd never sets it.
	WithoutNetwork bool
	// RootHelper, when set, is the socket of banger's root helper
	// (`bangerd root-helper`): the bridge, taps, rules and the guests' DNS
	// port are asked of it (system mode: this daemon runs as its owner,
	// unprivileged). Empty: done in this process, which must be root.
	RootHelper string
}

// Daemon is the root every service hangs off.
type Daemon struct {
	// warming names the warm snapshots being made by maybeAutoWarm.
	warming sync.Map

	layout  config.Layout
	cfg     config.Config
	log     *slog.Logger
	store   *store.Store
	runner  *system.Exec
	ops     *operations
	started time.Time
	now     func() time.Time

	allowedUIDs []uint32
	host        config.HostInfo
	stateLock   *os.File // flock held for the daemon's life

	// cgroupRoot is where cgroups are mounted (/sys/fs/cgroup; tests
	// point it elsewhere): the jailer puts VMs' cgroups under it.
	cgroupRoot string

	// driverOverride replaces VMM selection (tests of the lifecycle).
	driverOverride vmm.Driver

	pulls pullOnce

	net *network
	// priv does what needs root (privops.Local in this process, or the
	// root helper's client); viaHelper says it is the helper.
	priv           privops.Ops
	viaHelper      bool
	withoutNetwork bool
	agents         agentLocks
	fwd            *forward.Manager

	// allocMu serialises IP allocation with the insert of the VM row.
	allocMu sync.Mutex
	// layersMu serialises clones (which freeze disks into shared layers)
	// with the removal of layers no VM uses.
	layersMu sync.Mutex

	// bgCtx is cancelled when the daemon stops; async work derives from it.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup

	vmLocksMu sync.Mutex
	vmLocks   map[string]*sync.Mutex
}

// Open prepares the state directories and the database (migrating it) and
// returns a daemon ready to Serve.
func Open(ctx context.Context, opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := opts.Layout.Ensure(); err != nil {
		return nil, err
	}
	// One daemon per state directory, decided before anything is touched:
	// a second daemon must not migrate the database or clean up the first
	// one's VMs and then fail on the socket.
	stateLock, err := lockFile(opts.Layout.DBPath+".lock", "uses "+opts.Layout.StateDir)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(opts.Layout.DBPath)
	if err != nil {
		stateLock.Close()
		return nil, err
	}
	if err := st.Migrate(ctx); err != nil {
		st.Close()
		stateLock.Close()
		return nil, err
	}
	d := &Daemon{
		layout:      opts.Layout,
		cfg:         opts.Config,
		log:         opts.Logger,
		store:       st,
		runner:      &system.Exec{},
		ops:         newOperations(),
		started:     time.Now().UTC(),
		now:         func() time.Time { return time.Now().UTC() },
		allowedUIDs: opts.AllowedUIDs,
		vmLocks:     make(map[string]*sync.Mutex),
		host:        config.DetectHost(),
		stateLock:   stateLock,
		cgroupRoot:  firecracker.DefaultCgroupRoot,
	}
	d.priv = privops.Ops(privops.Local{})
	if opts.RootHelper != "" {
		d.priv = &privops.Client{SocketPath: opts.RootHelper}
		d.viaHelper = true
	}
	d.net, err = newNetwork(opts.Config, opts.Logger, st, d.priv)
	if err != nil {
		st.Close()
		stateLock.Close()
		return nil, err
	}
	d.net.sshConfig, d.net.sshKey, d.net.knownHosts = sshConfigFile(opts.Layout.StateDir), opts.Layout.SSHKey, opts.Layout.KnownHosts
	d.withoutNetwork = opts.WithoutNetwork
	d.fwd = forward.NewManager(opts.Logger.With("component", "forward"))
	d.bgCtx, d.bgCancel = context.WithCancel(context.Background())
	d.adoptVMs(ctx)
	return d, nil
}

// Close cancels async work (rolling back unfinished creates), waits for it
// and releases the store. Running VMs keep running.
func (d *Daemon) Close() error {
	d.bgCancel()
	d.bgWG.Wait()
	d.fwd.Close()
	err := d.store.Close()
	d.stateLock.Close()
	return err
}

// Serve listens on the layout's socket and serves until ctx is cancelled.
// Running VMs are left running: their VMMs are not children of the daemon.
func (d *Daemon) Serve(ctx context.Context) error {
	ln, release, err := Listen(ctx, d.layout.SocketPath)
	if err != nil {
		return err
	}
	defer release()
	if !d.withoutNetwork {
		if err := d.net.start(ctx); err != nil {
			return err
		}
		defer d.net.close()
	}

	srv := &rpc.Server{Methods: d.Methods(), Logger: d.log, AllowedUIDs: d.allowedUIDs}
	bg, stopBG := context.WithCancel(ctx)
	defer stopBG()
	go d.pruneLoop(bg)
	go d.watchLoop(bg)

	d.log.Info("bangerd serving", "socket", d.layout.SocketPath, "version", version.Version, "pid", os.Getpid())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		// Cancel async work first: a create holding a VM's lock rolls back
		// and lets the handlers waiting on that lock return.
		d.bgCancel()
		ln.Close()
		srv.Close()
		<-errc
		d.log.Info("bangerd stopped")
		return nil
	case err := <-errc:
		srv.Close()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("serve %s: %w", d.layout.SocketPath, err)
		}
		return nil
	}
}

// vmLock returns the mutex serialising lifecycle changes of one VM name.
func (d *Daemon) vmLock(name string) *sync.Mutex {
	d.vmLocksMu.Lock()
	defer d.vmLocksMu.Unlock()
	m, ok := d.vmLocks[name]
	if !ok {
		m = &sync.Mutex{}
		d.vmLocks[name] = m
	}
	return m
}
