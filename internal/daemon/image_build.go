package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"banger/internal/api"
	"banger/internal/artifact"
	"banger/internal/disk"
	"banger/internal/kernel"
	"banger/internal/rootdisk"
	"banger/internal/rpc"
	"banger/internal/sshx"
	"banger/internal/store"
	"banger/internal/version"
	"banger/internal/vmcp"
)

// An image build boots a temporary VM on a flat copy of its base's root
// (a base image's, or a stopped VM's), installs packages, copies files
// and runs scripts in it over SSH, removes what made the VM itself,
// powers it off, checks the filesystem and records the copy as a new
// image. The temporary VM is an ordinary VM row with a purpose: hidden
// from vm list, refused by the vm commands, removed when the build ends
// and, if the daemon dies, at its next start (with the build's directory).

// Stage names of an image build, in order. The boot stages are the VM
// boot's own, prefixed "boot: ".
const (
	stageBuildRoot     = "boot: prepare root disk"
	stageBuildIdentity = "boot: make identity"
	stageBuildConnect  = "boot: connect"
	stageBuildGrow     = "boot: grow root filesystem"
	stagePackages      = "packages"
	stageCopy          = "copy"
	stageShutdown      = "shutdown"
	stageFlatten       = "flatten"
	stageRecord        = "record"
)

// buildDirPrefix names an in-progress build's directory under the images
// directory; a directory with it that no running build owns is removed
// at daemon start.
const buildDirPrefix = ".build-"

// Bounds on what a build keeps of its guest's output and reads of a script.
const (
	buildOutputLines = 5000
	buildLineMax     = 4096
	buildScriptMax   = 1 << 20
)

// packageRE is a package name as apt, dnf, apk and pacman take it, with an
// optional version pin (name=1.2-3): nothing a shell would read as more.
var packageRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.+_:~-]*(=[A-Za-z0-9.+_:~-]+)?$`)

// imageBuildOp is one image.build operation: the create stages machinery
// plus the guest's output, kept as lines in a bounded buffer.
type imageBuildOp struct {
	*vmCreateOp

	outMu   sync.Mutex
	out     []string
	dropped int // lines that fell out of out, from the start
	partial []byte
	image   *api.Image
}

// Write takes the guest's output (stdout and stderr together) and keeps
// it as lines.
func (o *imageBuildOp) Write(p []byte) (int, error) {
	o.outMu.Lock()
	defer o.outMu.Unlock()
	buf := append(o.partial, p...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		o.addLineLocked(string(buf[:i]))
		buf = buf[i+1:]
	}
	// A line that never ends is kept in pieces of buildLineMax.
	for len(buf) > buildLineMax {
		o.addLineLocked(string(buf[:buildLineMax]))
		buf = buf[buildLineMax:]
	}
	o.partial = append([]byte(nil), buf...)
	return len(p), nil
}

// note adds a line of banger's own to the output.
func (o *imageBuildOp) note(format string, args ...any) {
	o.outMu.Lock()
	defer o.outMu.Unlock()
	o.flushLocked()
	o.addLineLocked("banger: " + fmt.Sprintf(format, args...))
}

func (o *imageBuildOp) flushLocked() {
	if len(o.partial) > 0 {
		o.addLineLocked(string(o.partial))
		o.partial = nil
	}
}

func (o *imageBuildOp) addLineLocked(line string) {
	line = strings.TrimRight(line, "\r")
	if len(line) > buildLineMax {
		line = line[:buildLineMax] + "…"
	}
	o.out = append(o.out, line)
	if len(o.out) > buildOutputLines {
		n := len(o.out) - buildOutputLines
		o.out = append([]string(nil), o.out[n:]...)
		o.dropped += n
	}
}

// lastLine is the last non-empty line of output since index from.
func (o *imageBuildOp) lastLine(from int) string {
	o.outMu.Lock()
	defer o.outMu.Unlock()
	o.flushLocked()
	for i := len(o.out) - 1; i >= 0 && i+o.dropped >= from; i-- {
		if l := strings.TrimSpace(o.out[i]); l != "" && !strings.HasPrefix(l, "banger: ") {
			return l
		}
	}
	return ""
}

// lines is the index the next output line will have.
func (o *imageBuildOp) lines() int {
	o.outMu.Lock()
	defer o.outMu.Unlock()
	o.flushLocked()
	return o.dropped + len(o.out)
}

func (o *imageBuildOp) buildStatus(since int) api.ImageBuildStatus {
	st := api.ImageBuildStatus{Operation: o.summary()}
	o.stagesMu.Lock()
	st.Stages = append([]api.StageTiming(nil), o.stages...)
	o.stagesMu.Unlock()
	o.outMu.Lock()
	defer o.outMu.Unlock()
	if st.Operation.Done {
		o.flushLocked()
	}
	start := since - o.dropped
	if start < 0 {
		st.Dropped = -start
		start = 0
	}
	if start > len(o.out) {
		start = len(o.out)
	}
	st.Output = append([]string{}, o.out[start:]...)
	st.Next = o.dropped + len(o.out)
	st.Image = o.image
	return st
}

// buildScript is one --script, read when the build begins: what runs is
// what was hashed.
type buildScript struct {
	name string
	data []byte
	sum  string
}

// buildPlan is a validated image build.
type buildPlan struct {
	name     string
	base     store.Image
	kernel   store.Kernel
	srcVM    *store.VM // --from-vm
	size     int64     // the new root's size; 0 keeps the base's
	baseSize int64
	nat      bool
	packages []string
	copies   []api.ImageBuildCopy
	scripts  []buildScript
	keepWork bool
	vcpu     int
	memory   int
}

func (d *Daemon) planBuild(ctx context.Context, p api.ImageBuildParams) (buildPlan, error) {
	plan := buildPlan{name: p.Name, nat: true, keepWork: p.WithWorkDisk, vcpu: p.VCPU, memory: p.MemoryMiB}
	if p.NAT != nil {
		plan.nat = *p.NAT
	}
	if p.Name == "" {
		return plan, api.Errorf(api.CodeBadRequest, "missing the new image's name: banger image build NAME --from IMAGE")
	}
	if err := validateArtifactName("image", p.Name); err != nil {
		return plan, err
	}
	if _, err := d.store.GetImage(ctx, p.Name); err == nil {
		return plan, api.Errorf(api.CodeAlreadyExists, "image %q already exists; pick another name or delete it first (banger image delete %s)", p.Name, p.Name)
	}
	if _, err := os.Lstat(filepath.Join(d.layout.ImagesDir, p.Name)); err == nil {
		return plan, api.Errorf(api.CodeAlreadyExists, "%s already exists though no image %q is recorded; move it away first", filepath.Join(d.layout.ImagesDir, p.Name), p.Name)
	}
	switch {
	case (p.From == "") == (p.FromVM == ""):
		return plan, api.Errorf(api.CodeBadRequest, "give exactly one of --from IMAGE and --from-vm VM")
	case p.From != "":
		im, err := d.store.GetImage(ctx, p.From)
		if api.IsCode(err, api.CodeNotFound) {
			hint := "see banger image list"
			if _, ok := imageCatalog[p.From]; ok {
				hint = "pull it first: banger image pull " + p.From
			}
			return plan, api.Errorf(api.CodeNotFound, "base image %q not found; %s", p.From, hint)
		}
		if err != nil {
			return plan, err
		}
		plan.base = im
	default:
		v, err := d.store.GetVM(ctx, p.FromVM)
		if err == nil {
			err = usersVM(v)
		}
		if err != nil {
			return plan, err
		}
		if v.State != store.StateStopped {
			return plan, api.Errorf(api.CodeBadRequest, "vm %q is %s; stop it first (banger vm stop %s): a build copies disks nobody is writing", v.Name, v.State, v.Name)
		}
		if plan.base, err = d.store.GetImage(ctx, v.Image); err != nil {
			return plan, fmt.Errorf("image %q of vm %s: %w", v.Image, v.Name, err)
		}
		plan.srcVM = &v
	}
	k, err := d.store.GetKernel(ctx, plan.base.Kernel)
	if err != nil {
		if api.IsCode(err, api.CodeNotFound) {
			return plan, api.Errorf(api.CodeNotFound, "kernel %q of image %q not found; import it with banger kernel import", plan.base.Kernel, plan.base.Name)
		}
		return plan, err
	}
	km, err := kernel.LoadManifest(k.Dir)
	if err != nil {
		return plan, api.Errorf(api.CodeOperationFailed, "kernel %q: %v", k.Name, err)
	}
	if !km.HasInitrdFeature(kernel.FeatureConfigDisk) {
		return plan, api.Errorf(api.CodeBadRequest, "kernel %q of image %q is too old for banger's per-VM configuration disks; pull or import a newer build", k.Name, plan.base.Name)
	}
	plan.kernel = k
	st, err := os.Stat(plan.base.RootfsPath)
	if err != nil {
		return plan, api.Errorf(api.CodeOperationFailed, "image %s rootfs: %v", plan.base.Name, err)
	}
	plan.baseSize = st.Size()
	if p.Size != "" {
		if plan.size, err = parseDiskSize(p.Size); err != nil {
			return plan, err
		}
		if plan.size < plan.baseSize {
			return plan, api.Errorf(api.CodeBadRequest, "--size %s is smaller than the base's root (%s); a build can grow a root, not shrink it", p.Size, humanSize(plan.baseSize))
		}
		if plan.size == plan.baseSize {
			plan.size = 0
		}
	}
	for _, pkg := range p.Packages {
		if !packageRE.MatchString(pkg) {
			return plan, api.Errorf(api.CodeBadRequest, "invalid package name %q: use the package manager's name, optionally with =VERSION", pkg)
		}
		plan.packages = append(plan.packages, pkg)
	}
	for _, s := range p.Scripts {
		sc, err := readBuildScript(s)
		if err != nil {
			return plan, err
		}
		plan.scripts = append(plan.scripts, sc)
	}
	for _, c := range p.Copies {
		if !filepath.IsAbs(c.Src) {
			return plan, api.Errorf(api.CodeBadRequest, "--copy source %q is not an absolute path", c.Src)
		}
		if _, err := os.Lstat(c.Src); err != nil {
			return plan, api.Errorf(api.CodeBadRequest, "--copy source %s: %v", c.Src, errors.Unwrap(err))
		}
		if !strings.HasPrefix(c.Dst, "/") || path.Clean(c.Dst) == "/" {
			return plan, api.Errorf(api.CodeBadRequest, "--copy destination %q must be an absolute path in the guest below / (--copy SRC:/opt/tool)", c.Dst)
		}
		plan.copies = append(plan.copies, c)
	}
	var err2 error
	plan.vcpu, plan.memory, err2 = d.machineSize(plan.vcpu, plan.memory)
	return plan, err2
}

func readBuildScript(p string) (buildScript, error) {
	if !filepath.IsAbs(p) {
		return buildScript{}, api.Errorf(api.CodeBadRequest, "--script %q is not an absolute path", p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return buildScript{}, api.Errorf(api.CodeBadRequest, "--script %s: %v", p, errors.Unwrap(err))
	}
	if !st.Mode().IsRegular() {
		return buildScript{}, api.Errorf(api.CodeBadRequest, "--script %s is not a regular file", p)
	}
	if st.Size() > buildScriptMax {
		return buildScript{}, api.Errorf(api.CodeBadRequest, "--script %s is %s; a script is at most 1 MiB (--copy larger files in)", p, humanSize(st.Size()))
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return buildScript{}, api.Errorf(api.CodeBadRequest, "--script %s: %v", p, err)
	}
	sum := sha256.Sum256(data)
	return buildScript{name: filepath.Base(p), data: data, sum: hex.EncodeToString(sum[:])}, nil
}

func humanSize(n int64) string {
	const gib = 1 << 30
	if n >= gib && n%gib == 0 {
		return fmt.Sprintf("%dG", n/gib)
	}
	return fmt.Sprintf("%dM", n>>20)
}

func (d *Daemon) imageBuildBegin(ctx context.Context, p api.ImageBuildParams) (api.ImageBuildBeginResult, error) {
	plan, err := d.planBuild(ctx, p)
	if err != nil {
		return api.ImageBuildBeginResult{}, err
	}
	drv, err := d.driverFor("")
	if err != nil {
		return api.ImageBuildBeginResult{}, api.Errorf(api.CodeOperationFailed, "%v", err)
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	cplan := createPlan{name: "imgbuild-" + hex.EncodeToString(suffix), image: plan.base, kernel: plan.kernel,
		vcpu: plan.vcpu, memoryMiB: plan.memory, nat: plan.nat, purpose: store.PurposeImageBuild}
	if cplan.diskSize, err = parseDiskSize(d.cfg.VMDefaults.DiskSize); err != nil {
		return api.ImageBuildBeginResult{}, err
	}

	opID := rpc.NewOpID()
	log := d.log.With("op_id", opID, "image", plan.name)
	bg, cancel := context.WithCancel(rpc.WithLogger(rpc.WithOpID(d.bgCtx, opID), log))
	op := &imageBuildOp{vmCreateOp: &vmCreateOp{opCore: newOpCore(opID, api.OpKindImageBuild, plan.name, cancel, d.now)}}

	// One build per name at a time; the VM is reserved under the same lock
	// as creates take.
	d.allocMu.Lock()
	for _, other := range d.ops.imageBuild.List() {
		if !other.IsDone() && other.summary().Target == plan.name {
			d.allocMu.Unlock()
			cancel()
			return api.ImageBuildBeginResult{}, api.Errorf(api.CodeAlreadyExists, "image %q is being built by operation %s", plan.name, other.ID())
		}
	}
	vm, err := d.reserveVM(ctx, cplan, drv.Name(), nil)
	if err == nil {
		d.ops.imageBuild.Insert(op)
	}
	d.allocMu.Unlock()
	if err != nil {
		cancel()
		return api.ImageBuildBeginResult{}, err
	}
	op.vmName = vm.Name
	log.Info("image.build begun", "base", plan.base.Name, "vm", vm.Name, "request_op_id", rpc.OpID(ctx))
	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		defer cancel()
		err := d.runBuild(bg, op, plan, vm)
		if err != nil {
			log.Warn("image.build failed", "err", err)
		} else {
			log.Info("image.build done")
		}
		op.finish(err)
	}()
	if ctx.Err() != nil {
		op.Cancel()
	}
	return api.ImageBuildBeginResult{OpID: opID, Name: plan.name}, nil
}

func (d *Daemon) imageBuildStatus(ctx context.Context, p api.ImageBuildStatusParams) (api.ImageBuildStatus, error) {
	op, ok := d.ops.imageBuild.Get(p.OpID)
	if !ok {
		return api.ImageBuildStatus{}, api.Errorf(api.CodeNotFound, "image build operation %q not found (finished operations are forgotten after %s)", p.OpID, time.Duration(d.cfg.OpsRetention))
	}
	return op.buildStatus(p.Since), nil
}

// runBuild is the build's work. The temporary VM goes whatever happens;
// its root (the future image) lives in the build's directory, which
// becomes the image's on success and is removed otherwise.
func (d *Daemon) runBuild(ctx context.Context, op *imageBuildOp, plan buildPlan, vm store.VM) (err error) {
	log := rpc.Logger(ctx)
	mu := d.vmLock(vm.Name)
	mu.Lock()
	defer mu.Unlock()
	buildDir := filepath.Join(d.layout.ImagesDir, buildDirPrefix+op.ID())
	root := filepath.Join(buildDir, "rootfs.ext4")
	work := filepath.Join(buildDir, "work.ext4")
	var client *ssh.Client
	defer func() {
		if client != nil {
			client.Close()
		}
		if errors.Is(err, errVMMStillRunning) {
			// Kept so it can be killed; the next daemon start removes it.
			d.keepUnstoppableVM(ctx, &vm, err)
			return
		}
		d.removeBuildVM(context.WithoutCancel(ctx), vm)
		if err != nil {
			_ = os.RemoveAll(buildDir)
		}
	}()

	steps := []step{
		{stageBuildRoot, nil, func(ctx context.Context) (func(context.Context) error, error) {
			return func(context.Context) error { return os.RemoveAll(buildDir) }, d.prepareBuildDisks(ctx, op, plan, &vm, buildDir, root, work)
		}},
		{stageBuildIdentity, nil, func(ctx context.Context) (func(context.Context) error, error) {
			undo := func(context.Context) error { return sshx.RemoveHost(d.layout.KnownHosts, vm.IP, vm.Name+".vm") }
			return undo, d.makeIdentity(vm)
		}},
	}
	for _, s := range d.bootSteps(&vm) {
		s.name = "boot: " + s.name
		steps = append(steps, s)
	}
	steps = append(steps, step{stageBuildConnect, nil, func(ctx context.Context) (func(context.Context) error, error) {
		signer, err := sshx.EnsureKey(d.layout.SSHKey)
		if err != nil {
			return nil, err
		}
		pub, _, err := d.hostPublicKey(vm)
		if err != nil {
			return nil, err
		}
		client, err = sshx.Dial(ctx, vm.IP+":22", sshx.ClientConfig("root", signer, ssh.FixedHostKey(pub)))
		return nil, err
	}})
	if plan.size > 0 {
		steps = append(steps, step{stageBuildGrow, nil, func(ctx context.Context) (func(context.Context) error, error) {
			return nil, op.guest(ctx, client, "grow the root filesystem", "resize2fs /dev/vda", nil)
		}})
	}
	if len(plan.packages) > 0 {
		steps = append(steps, step{stagePackages, nil, func(ctx context.Context) (func(context.Context) error, error) {
			op.note("installing %s", strings.Join(plan.packages, " "))
			return nil, op.guest(ctx, client, "installing packages", installScript(plan.packages), nil)
		}})
	}
	if len(plan.copies) > 0 {
		steps = append(steps, step{stageCopy, nil, func(ctx context.Context) (func(context.Context) error, error) {
			return nil, op.copyIn(ctx, client, vm.Name, plan.copies)
		}})
	}
	for i, sc := range plan.scripts {
		name := fmt.Sprintf("script %d (%s)", i+1, sc.name)
		steps = append(steps, step{name, nil, func(ctx context.Context) (func(context.Context) error, error) {
			return nil, op.runScript(ctx, client, i+1, sc)
		}})
	}
	steps = append(steps, step{stageShutdown, nil, func(ctx context.Context) (func(context.Context) error, error) {
		if err := op.guest(ctx, client, "clean the guest before saving it", scrubScript(plan.keepWork), nil); err != nil {
			return nil, err
		}
		client.Close()
		client = nil
		if err := d.stop(ctx, &vm, false); err != nil {
			return nil, err
		}
		if vm.LastError != "" {
			op.note("the guest did not power off by itself (%s); the filesystem check decides whether its disk is usable", vm.LastError)
		}
		return nil, nil
	}})
	if err := runSteps(ctx, log, op.vmCreateOp, nil, steps); err != nil {
		return err
	}

	// The VM is off: check and record what it left.
	final := []step{
		{stageFlatten, nil, func(ctx context.Context) (func(context.Context) error, error) {
			return nil, d.checkBuiltDisks(ctx, op, root, work, plan)
		}},
		{stageRecord, nil, func(ctx context.Context) (func(context.Context) error, error) {
			im, err := d.recordBuild(ctx, plan, buildDir, root, work)
			if err != nil {
				return nil, err
			}
			ai := toAPIImage(im)
			op.outMu.Lock()
			op.image = &ai
			op.outMu.Unlock()
			return nil, nil
		}},
	}
	return runSteps(ctx, log, op.vmCreateOp, nil, final)
}

// prepareBuildDisks makes the build VM's disks: its root, a flat copy of
// the base's (grown to the requested size), in the build directory, and
// its work disk: a copy of the source VM's (--with-work-disk) or of the
// base's work seed, else an empty one in the VM's directory.
func (d *Daemon) prepareBuildDisks(ctx context.Context, op *imageBuildOp, plan buildPlan, vm *store.VM, buildDir, root, work string) error {
	if err := os.MkdirAll(buildDir, 0o700); err != nil {
		return err
	}
	paths := d.pathsFor(vm.ID)
	if err := os.MkdirAll(paths.dir, 0o700); err != nil {
		return err
	}
	srcRoot := rootdisk.NewRaw(plan.base.RootfsPath)
	var srcWork *rootdisk.Disk
	if seed := workSeedOf(plan.base); seed != "" {
		w := rootdisk.NewRaw(seed)
		srcWork = &w
	}
	if plan.srcVM != nil {
		// The source must stay stopped while its disks are read.
		smu := d.vmLock(plan.srcVM.Name)
		smu.Lock()
		defer smu.Unlock()
		src, err := d.store.GetVM(ctx, plan.srcVM.Name)
		if err != nil {
			return err
		}
		if src.State != store.StateStopped {
			return api.Errorf(api.CodeBadRequest, "vm %q is %s now; stop it first", src.Name, src.State)
		}
		rd, wd, err := d.disksOf(src)
		if err != nil {
			return err
		}
		srcRoot, srcWork = rd, nil
		if plan.keepWork {
			srcWork = &wd
		}
	}
	need := allocatedBytes(srcRoot.Path)
	if srcWork != nil {
		need += allocatedBytes(srcWork.Path)
	}
	if err := rootdisk.CheckFree(buildDir, need); err != nil {
		return spaceError(err)
	}
	op.note("copying the root of %s", describeBase(plan))
	if err := rootdisk.Flatten(ctx, d.diskRunner(), srcRoot, root, "banger-build-"+shortID(vm.ID)); err != nil {
		return spaceError(err)
	}
	if plan.size > 0 {
		// The guest grows the filesystem online once booted.
		if err := os.Truncate(root, plan.size); err != nil {
			return spaceError(err)
		}
	}
	vm.RootDisk = encodeDisk(rootdisk.NewRaw(root))
	if srcWork != nil {
		if err := rootdisk.Flatten(ctx, d.diskRunner(), *srcWork, work, "banger-build-work-"+shortID(vm.ID)); err != nil {
			return spaceError(err)
		}
		vm.WorkDisk = encodeDisk(rootdisk.NewRaw(work))
	} else {
		if err := disk.CreateWorkDisk(ctx, d.runner, paths.work, vm.DiskSizeBytes); err != nil {
			return spaceError(err)
		}
		vm.WorkDisk = encodeDisk(rootdisk.NewRaw(paths.work))
	}
	return d.store.UpdateVM(context.WithoutCancel(ctx), *vm)
}

func describeBase(plan buildPlan) string {
	if plan.srcVM != nil {
		return "vm " + plan.srcVM.Name
	}
	return "image " + plan.base.Name
}

// allocatedBytes is the space the file at p takes (holes excluded).
func allocatedBytes(p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// workSeedOf is the work seed file of an image that has one.
func workSeedOf(im store.Image) string {
	if !imageManifestOf(im).WorkSeed {
		return ""
	}
	return filepath.Join(filepath.Dir(im.RootfsPath), "work.ext4")
}

// guest runs cmd in the build VM as root, its output going to the build's
// output; a non-zero exit is an error naming what and the last line.
func (o *imageBuildOp) guest(ctx context.Context, c *ssh.Client, what, cmd string, stdin io.Reader) error {
	from := o.lines()
	code, err := sshx.RunOn(ctx, c, cmd, stdin, o, o)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%s: exited with status %d; last line of output: %q", what, code, o.lastLine(from))
	}
	return nil
}

// installScript installs pkgs with whichever package manager the guest
// has, refreshing its indexes first.
func installScript(pkgs []string) string {
	list := strings.Join(pkgs, " ")
	return `set -e
if command -v apt-get >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends ` + list + `
elif command -v dnf >/dev/null 2>&1; then
	dnf install -y ` + list + `
elif command -v yum >/dev/null 2>&1; then
	yum install -y ` + list + `
elif command -v apk >/dev/null 2>&1; then
	apk add ` + list + `
elif command -v pacman >/dev/null 2>&1; then
	pacman -Sy --noconfirm ` + list + `
elif command -v zypper >/dev/null 2>&1; then
	zypper --non-interactive install ` + list + `
else
	echo "no package manager found (apt-get, dnf, yum, apk, pacman, zypper)" >&2
	exit 127
fi
`
}

// copyIn copies each --copy source into the guest over SFTP, making the
// destination's parent directories first.
func (o *imageBuildOp) copyIn(ctx context.Context, c *ssh.Client, vmName string, copies []api.ImageBuildCopy) error {
	sc, err := sftp.NewClient(c, sftp.UseConcurrentWrites(true))
	if err != nil {
		return fmt.Errorf("open sftp session: %w", err)
	}
	defer sc.Close()
	cp := &vmcp.Copier{Client: sc, GuestName: vmName, Recursive: true, Warn: func(msg string) { o.note("%s", msg) }}
	for _, cpy := range copies {
		dst := vmcp.GuestPath(cpy.Dst)
		if err := sc.MkdirAll(path.Dir(path.Clean(dst))); err != nil {
			return fmt.Errorf("--copy %s:%s: make %s in the guest: %w", cpy.Src, cpy.Dst, path.Dir(path.Clean(dst)), err)
		}
		st, err := cp.Copy(ctx, vmcp.ToGuest, cpy.Src, dst)
		if err != nil {
			return fmt.Errorf("--copy %s:%s: %w", cpy.Src, cpy.Dst, err)
		}
		o.note("copied %s to %s (%d files, %d bytes)", cpy.Src, cpy.Dst, st.Files, st.Bytes)
	}
	return nil
}

// runScript uploads one script and runs it as root in /root: by its #!
// line when it has one, else with /bin/sh.
func (o *imageBuildOp) runScript(ctx context.Context, c *ssh.Client, n int, sc buildScript) error {
	file := fmt.Sprintf("/run/banger-build/script-%d", n)
	upload := "install -d -m 0700 /run/banger-build && cat > " + file + " && chmod 0700 " + file
	if err := o.guest(ctx, c, "upload script "+sc.name, upload, strings.NewReader(string(sc.data))); err != nil {
		return err
	}
	run := "cd /root && exec " + file
	if !strings.HasPrefix(string(sc.data), "#!") {
		run = "cd /root && exec /bin/sh " + file
	}
	o.note("running script %d (%s)", n, sc.name)
	from := o.lines()
	code, err := sshx.RunOn(ctx, c, run, nil, o, o)
	if err != nil {
		return fmt.Errorf("script %s: %w", sc.name, err)
	}
	if code != 0 {
		return fmt.Errorf("script %s exited with status %d; its last line of output: %q", sc.name, code, o.lastLine(from))
	}
	return nil
}

// scrubScript runs last in the build VM: package caches go, and so does
// everything that made this VM itself (host keys, machine-id, random
// seed, banger's per-VM files, shell histories), so every VM of the image
// gets its own; then the free space is trimmed (holes in the image file).
func scrubScript(keepWork bool) string {
	s := `set -e
if command -v apt-get >/dev/null 2>&1; then apt-get clean; rm -rf /var/lib/apt/lists/*; fi
if command -v dnf >/dev/null 2>&1; then dnf clean all >/dev/null; fi
if command -v yum >/dev/null 2>&1; then yum clean all >/dev/null; fi
if command -v apk >/dev/null 2>&1; then rm -rf /var/cache/apk/*; fi
if command -v pacman >/dev/null 2>&1; then pacman -Scc --noconfirm >/dev/null; fi
rm -rf /run/banger-build
rm -f /etc/ssh/ssh_host_*
rm -f /etc/ssh/banger_authorized_keys /etc/systemd/network/10-banger.network
if [ -f /etc/machine-id ]; then : > /etc/machine-id; fi
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then rm -f /var/lib/dbus/machine-id; fi
# The seed is saved again when its service stops: stop it first.
if command -v systemctl >/dev/null 2>&1; then systemctl stop systemd-random-seed.service 2>/dev/null || true; fi
rm -f /var/lib/systemd/random-seed
for h in /home/* /root; do
	[ -d "$h" ] || continue
	rm -f "$h/.bash_history" "$h/.zsh_history" "$h/.sh_history" "$h/.ash_history" "$h/.python_history" "$h/.lesshst" "$h/.viminfo"
	rm -rf "$h/.local/share/fish/fish_history"
done
if command -v journalctl >/dev/null 2>&1; then journalctl --rotate >/dev/null 2>&1 || true; journalctl --vacuum-time=1s >/dev/null 2>&1 || true; fi
sync
fstrim / 2>/dev/null || true
`
	if keepWork {
		s += "fstrim /root 2>/dev/null || true\n"
	}
	return s + "sync\n"
}

// checkBuiltDisks checks the new image's filesystems read-only (the host
// changes nothing on a filesystem the guest wrote) and refuses one that
// is not clean.
func (d *Daemon) checkBuiltDisks(ctx context.Context, op *imageBuildOp, root, work string, plan buildPlan) error {
	files := []string{root}
	if fileExists(work) {
		files = append(files, work)
	}
	for _, f := range files {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		out, err := d.runner.Run(cctx, "e2fsck", "-f", "-n", f)
		cancel()
		if err != nil {
			op.note("%s", strings.TrimSpace(string(out)))
			return fmt.Errorf("the built filesystem %s is not clean (e2fsck -fn): %w", filepath.Base(f), err)
		}
	}
	op.note("filesystem clean; root holds %s of %s", humanSize(allocatedBytes(root)), humanSize(fileSize(root)))
	return nil
}

func fileSize(p string) int64 {
	if st, err := os.Stat(p); err == nil {
		return st.Size()
	}
	return 0
}

// recordBuild moves the build's directory to the image's and records it,
// with its manifest.
func (d *Daemon) recordBuild(ctx context.Context, plan buildPlan, buildDir, root, work string) (store.Image, error) {
	sum, size, err := artifact.HashFile(root)
	if err != nil {
		return store.Image{}, err
	}
	man := api.ImageManifest{Kind: api.ImageKindBuild, BuiltAt: d.now().UTC(), Base: plan.base.Name, BaseSHA256: plan.base.SHA256,
		SizeBytes: size, ContentBytes: allocatedBytes(root), SHA256: sum, Packages: -1, Kernel: plan.base.Kernel,
		BuildPackages: plan.packages, BangerVersion: version.Version, WorkSeed: fileExists(work)}
	base := imageManifestOf(plan.base)
	man.PackageManager, man.HasSystemd, man.HasSSHD, man.Init = base.PackageManager, base.HasSystemd, base.HasSSHD, base.Init
	man.KernelVersion = base.KernelVersion
	source := "built from " + plan.base.Name
	if plan.srcVM != nil {
		man.Kind, man.FromVM = api.ImageKindFromVM, plan.srcVM.Name
		source = "built from vm " + plan.srcVM.Name
	}
	for _, c := range plan.copies {
		man.Copies = append(man.Copies, c.Src+":"+c.Dst)
	}
	for _, s := range plan.scripts {
		man.Scripts = append(man.Scripts, api.BuildScript{Name: s.name, SHA256: s.sum})
	}
	mj, err := json.Marshal(man)
	if err != nil {
		return store.Image{}, err
	}
	dir := filepath.Join(d.layout.ImagesDir, plan.name)
	if _, err := os.Lstat(dir); err == nil {
		return store.Image{}, api.Errorf(api.CodeAlreadyExists, "%s appeared during the build; move it away and build again", dir)
	}
	if err := os.Chmod(buildDir, 0o755); err != nil {
		return store.Image{}, err
	}
	if err := os.Rename(buildDir, dir); err != nil {
		return store.Image{}, err
	}
	im := store.Image{Name: plan.name, Kernel: plan.base.Kernel, RootfsPath: filepath.Join(dir, "rootfs.ext4"), Source: source,
		SHA256: sum, Manifest: string(mj), SizeBytes: size}
	if err := d.store.CreateImage(context.WithoutCancel(ctx), &im); err != nil {
		_ = os.RemoveAll(dir)
		return store.Image{}, err
	}
	return im, nil
}

// removeBuildVM removes the build's temporary VM: its VMM if it still
// runs, its runtime, files and row.
func (d *Daemon) removeBuildVM(ctx context.Context, vm store.VM) {
	cur, err := d.store.GetVM(ctx, vm.Name)
	if err != nil {
		cur = vm
	}
	d.removeOrphanVM(ctx, cur)
	d.syncNetwork(ctx)
}

// removeBuildLeftovers removes the directories of builds no running
// operation owns (the daemon that ran them died).
func (d *Daemon) removeBuildLeftovers() {
	entries, err := os.ReadDir(d.layout.ImagesDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), buildDirPrefix) {
			continue
		}
		if op, ok := d.ops.imageBuild.Get(strings.TrimPrefix(e.Name(), buildDirPrefix)); ok && !op.IsDone() {
			continue
		}
		p := filepath.Join(d.layout.ImagesDir, e.Name())
		d.log.Warn("removing the directory of an image build a previous daemon left", "dir", p)
		if err := os.RemoveAll(p); err != nil {
			d.log.Error("remove build leftovers", "dir", p, "err", err)
		}
	}
}
