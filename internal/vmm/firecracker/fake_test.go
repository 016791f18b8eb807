package firecracker

// An in-test stand-in for Firecracker's API server. It is written from
// Firecracker's swagger definition and its error messages, independently of
// the client's types, and rejects what Firecracker rejects: unknown fields,
// wrong types, missing required fields, files that do not exist, a second
// root device, out-of-range machine sizes, and any configuration after
// InstanceStart; and for snapshots: a save of a guest that is not
// paused, a load into a Firecracker already configured, overrides of
// interfaces the snapshot does not have, and drives whose recorded files
// are gone when it is loaded.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

const (
	faultPostBoot = "The requested operation is not supported after starting the microVM."
	faultPreBoot  = "The requested operation is not supported before starting the microVM."
)

type fakeDrive struct {
	DriveID      string          `json:"drive_id"`
	PathOnHost   *string         `json:"path_on_host"`
	IsRootDevice *bool           `json:"is_root_device"`
	IsReadOnly   *bool           `json:"is_read_only"`
	PartUUID     *string         `json:"partuuid"`
	CacheType    *string         `json:"cache_type"`
	IOEngine     *string         `json:"io_engine"`
	RateLimiter  json.RawMessage `json:"rate_limiter"`
	Socket       *string         `json:"socket"`
}

type fakeMachine struct {
	VcpuCount       *int    `json:"vcpu_count"`
	MemSizeMib      *int    `json:"mem_size_mib"`
	Smt             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

type fakeBoot struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args"`
	InitrdPath      *string `json:"initrd_path"`
}

type fakeIface struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   *string         `json:"host_dev_name"`
	GuestMAC      *string         `json:"guest_mac"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
}

type fakeVsock struct {
	GuestCID *uint32 `json:"guest_cid"`
	UDSPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id"`
}

type fakeLogger struct {
	LogPath       *string `json:"log_path"`
	Level         *string `json:"level"`
	ShowLevel     *bool   `json:"show_level"`
	ShowLogOrigin *bool   `json:"show_log_origin"`
	Module        *string `json:"module"`
}

// fakeFirecracker is the API server's state.
type fakeFirecracker struct {
	t *testing.T
	// root, when set, is the jail: paths in requests are inside it.
	root string

	// pid is the stand-in process: "/proc/self/fd/N" in a request is
	// resolved against its descriptors, as Firecracker's own open would.
	pid int

	mu          sync.Mutex
	requests    []string // "METHOD /path", in arrival order
	started     bool
	paused      bool
	loaded      string            // the snapshot /snapshot/load took
	opened      map[string]string // drive id → the file the load opened
	patched     []string          // drive ids PATCHed, in order
	loggerSet   bool
	boot        *fakeBoot
	drives      map[string]fakeDrive
	machine     fakeMachine
	ifaces      map[string]fakeIface
	vsock       *fakeVsock
	vsockLn     net.Listener
	ctrlAltDels int
}

var macRE = regexp.MustCompile(`^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$`)

// serveFake starts the fake on a unix socket at sock.
func serveFake(t *testing.T, sock, root string) *fakeFirecracker {
	t.Helper()
	f := &fakeFirecracker{t: t, root: root, drives: map[string]fakeDrive{}, ifaces: map[string]fakeIface{}}
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("fake firecracker: %v", err)
	}
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		_ = srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.vsockLn != nil {
			_ = f.vsockLn.Close()
		}
	})
	return f
}

func (f *fakeFirecracker) hostPath(p string) string {
	if rest, ok := strings.CutPrefix(p, "/proc/self/"); ok && f.root == "" {
		return fmt.Sprintf("/proc/%d/%s", f.pid, rest)
	}
	if f.root == "" {
		return p
	}
	return filepath.Join(f.root, p)
}

// setPID tells the fake which process it stands for.
func (f *fakeFirecracker) setPID(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pid = pid
}

// fault is an error answered as Firecracker does: 400 with fault_message.
type fault string

func (f *fakeFirecracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	status, body, err := f.handle(r)
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": err.Error()})
		return
	}
	w.WriteHeader(status)
	if body != nil {
		_ = json.NewEncoder(w).Encode(body)
	}
}

// decode reads a JSON body strictly, as serde with deny_unknown_fields does.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("An error occurred when deserializing the json body of a request: %v", err)
	}
	return nil
}

func missing(field string) error {
	return fmt.Errorf("An error occurred when deserializing the json body of a request: missing field `%s`", field)
}

func (f *fakeFirecracker) fileMustExist(what, p string) error {
	st, err := os.Stat(f.hostPath(p))
	if err != nil {
		return fmt.Errorf("%s: %s: %v", what, p, err)
	}
	if st.IsDir() {
		return fmt.Errorf("%s: %s is a directory", what, p)
	}
	return nil
}

func (f *fakeFirecracker) handle(r *http.Request) (int, any, error) {
	path := r.URL.Path
	if r.Method == http.MethodGet && path == "/" {
		state := "Not started"
		if f.started {
			state = "Running"
		}
		if f.paused {
			state = "Paused"
		}
		return http.StatusOK, map[string]string{"id": "anonymous-instance", "state": state,
			"vmm_version": fakeVersion, "app_name": "Firecracker"}, nil
	}
	if r.Method == http.MethodGet && path == "/vm/config" {
		return http.StatusOK, f.fullConfig(), nil
	}
	if r.Method == http.MethodPatch {
		switch {
		case path == "/vm":
			return f.patchVM(r)
		case strings.HasPrefix(path, "/drives/"):
			return f.patchDrive(r, strings.TrimPrefix(path, "/drives/"))
		}
		return 0, nil, fmt.Errorf("Invalid request method and/or path: %s %s.", r.Method, path)
	}
	if r.Method != http.MethodPut {
		return 0, nil, fmt.Errorf("Invalid request method and/or path: %s %s.", r.Method, path)
	}
	switch path {
	case "/actions":
		return f.action(r)
	case "/snapshot/create":
		return f.snapshotCreate(r)
	case "/snapshot/load":
		return f.snapshotLoad(r)
	}
	configPaths := regexp.MustCompile(`^/(logger|boot-source|machine-config|vsock|drives/[^/]+|network-interfaces/[^/]+)$`)
	if !configPaths.MatchString(path) {
		return 0, nil, fmt.Errorf("Invalid request method and/or path: %s %s.", r.Method, path)
	}
	if f.started {
		return 0, nil, errors.New(faultPostBoot)
	}
	switch {
	case path == "/logger":
		return f.logger(r)
	case path == "/boot-source":
		return f.bootSource(r)
	case path == "/machine-config":
		return f.machineConfig(r)
	case path == "/vsock":
		return f.vsockConfig(r)
	case strings.HasPrefix(path, "/drives/"):
		return f.drive(r, strings.TrimPrefix(path, "/drives/"))
	default:
		return f.iface(r, strings.TrimPrefix(path, "/network-interfaces/"))
	}
}

func (f *fakeFirecracker) logger(r *http.Request) (int, any, error) {
	var l fakeLogger
	if err := decode(r, &l); err != nil {
		return 0, nil, err
	}
	if f.loggerSet {
		return 0, nil, errors.New("Logger can only be initialized once.")
	}
	if l.Level != nil {
		switch strings.ToLower(*l.Level) {
		case "error", "warning", "warn", "info", "debug", "trace", "off":
		default:
			return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *l.Level)
		}
	}
	f.loggerSet = true
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) bootSource(r *http.Request) (int, any, error) {
	var b fakeBoot
	if err := decode(r, &b); err != nil {
		return 0, nil, err
	}
	if b.KernelImagePath == nil {
		return 0, nil, missing("kernel_image_path")
	}
	if err := f.fileMustExist("The kernel file cannot be opened", *b.KernelImagePath); err != nil {
		return 0, nil, err
	}
	if b.InitrdPath != nil {
		if err := f.fileMustExist("The initrd file cannot be opened", *b.InitrdPath); err != nil {
			return 0, nil, err
		}
	}
	f.boot = &b
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) drive(r *http.Request, id string) (int, any, error) {
	var d fakeDrive
	if err := decode(r, &d); err != nil {
		return 0, nil, err
	}
	if d.DriveID == "" {
		return 0, nil, missing("drive_id")
	}
	if d.DriveID != id {
		return 0, nil, fmt.Errorf("The id from the path [%s] does not match the id from the body [%s]!", id, d.DriveID)
	}
	if d.IsRootDevice == nil {
		return 0, nil, missing("is_root_device")
	}
	if d.PathOnHost == nil {
		return 0, nil, errors.New("Unable to create the virtio block device: path_on_host is required")
	}
	if err := f.fileMustExist("Unable to open the disk file", *d.PathOnHost); err != nil {
		return 0, nil, err
	}
	if d.CacheType != nil && *d.CacheType != "Unsafe" && *d.CacheType != "Writeback" {
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *d.CacheType)
	}
	if *d.IsRootDevice {
		for other, od := range f.drives {
			if other != id && *od.IsRootDevice {
				return 0, nil, errors.New("A root block device already exists!")
			}
		}
	}
	f.drives[id] = d
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) machineConfig(r *http.Request) (int, any, error) {
	var m fakeMachine
	if err := decode(r, &m); err != nil {
		return 0, nil, err
	}
	if m.VcpuCount == nil {
		return 0, nil, missing("vcpu_count")
	}
	if m.MemSizeMib == nil {
		return 0, nil, missing("mem_size_mib")
	}
	smt := m.Smt != nil && *m.Smt
	if v := *m.VcpuCount; v < 1 || v > 32 || (smt && v > 1 && v%2 == 1) {
		return 0, nil, errors.New("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if *m.MemSizeMib <= 0 {
		return 0, nil, errors.New("The memory size (MiB) is invalid.")
	}
	f.machine = m
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) iface(r *http.Request, id string) (int, any, error) {
	var n fakeIface
	if err := decode(r, &n); err != nil {
		return 0, nil, err
	}
	if n.IfaceID != id {
		return 0, nil, fmt.Errorf("The id from the path [%s] does not match the id from the body [%s]!", id, n.IfaceID)
	}
	if n.HostDevName == nil || *n.HostDevName == "" {
		return 0, nil, errors.New("Could not create the network device: Open tap device failed: host_dev_name is empty")
	}
	// Firecracker opens the tap at once (TUNSETIFF); a name that is no
	// tap fails here. The fake knows the taps its test made.
	if !fakeTaps[*n.HostDevName] {
		return 0, nil, fmt.Errorf("Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", *n.HostDevName)
	}
	if n.GuestMAC != nil && !macRE.MatchString(*n.GuestMAC) {
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: invalid MAC address %q", *n.GuestMAC)
	}
	f.ifaces[id] = n
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) vsockConfig(r *http.Request) (int, any, error) {
	var v fakeVsock
	if err := decode(r, &v); err != nil {
		return 0, nil, err
	}
	if v.GuestCID == nil {
		return 0, nil, missing("guest_cid")
	}
	if v.UDSPath == nil || *v.UDSPath == "" {
		return 0, nil, missing("uds_path")
	}
	if *v.GuestCID < 3 {
		return 0, nil, fmt.Errorf("Cannot create backend for vsock device: invalid guest CID %d", *v.GuestCID)
	}
	// Firecracker binds the unix socket when the device is configured.
	host := f.hostPath(*v.UDSPath)
	if f.vsockLn != nil {
		_ = f.vsockLn.Close()
		f.vsockLn = nil
	}
	if _, err := os.Lstat(host); err == nil {
		return 0, nil, errors.New("Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)")
	}
	ln, err := net.Listen("unix", host)
	if err != nil {
		return 0, nil, fmt.Errorf("Cannot create backend for vsock device: %v", err)
	}
	f.vsockLn = ln
	f.vsock = &v
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) action(r *http.Request) (int, any, error) {
	var a struct {
		ActionType *string `json:"action_type"`
	}
	if err := decode(r, &a); err != nil {
		return 0, nil, err
	}
	if a.ActionType == nil {
		return 0, nil, missing("action_type")
	}
	switch *a.ActionType {
	case "InstanceStart":
		if f.started {
			return 0, nil, errors.New(faultPostBoot)
		}
		if f.boot == nil {
			return 0, nil, errors.New("Cannot start microvm without kernel configuration.")
		}
		// The kernel is loaded at start: x86_64 Firecracker takes an ELF
		// vmlinux, not a bzImage.
		if head, err := readHead(f.hostPath(*f.boot.KernelImagePath), 4); err != nil || string(head) != "\x7fELF" {
			return 0, nil, errors.New("Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image")
		}
		f.started = true
	case "SendCtrlAltDel":
		if !f.started {
			return 0, nil, errors.New(faultPreBoot)
		}
		f.ctrlAltDels++
	case "FlushMetrics":
	default:
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *a.ActionType)
	}
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) snapshot() (requests []string, started bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...), f.started
}

// fakeTaps are the tap names the fake accepts as existing.
var fakeTaps = map[string]bool{"tap-fctest": true, "bg-jail": true}

// readHead reads the first n bytes of the file at p.
func readHead(p string, n int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	_, err = io.ReadFull(f, b)
	return b, err
}

// fakeVersion is the Firecracker release whose API description the fake
// follows (src/firecracker/swagger/firecracker.yaml): it has
// network_overrides and vsock_override on /snapshot/load.
const fakeVersion = "1.17.0-dev"

const (
	faultNotPaused   = "Create snapshot error: the microVM is not paused."
	faultLoadTooLate = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)

// fakeSaved is what the fake writes as a snapshot's state file: the
// devices as configured, with the paths the guest's devices were given.
type fakeSaved struct {
	Drives  map[string]fakeDrive `json:"drives"`
	Ifaces  map[string]fakeIface `json:"ifaces"`
	Vsock   *fakeVsock           `json:"vsock"`
	Machine fakeMachine          `json:"machine"`
}

func (f *fakeFirecracker) fullConfig() map[string]any {
	drives := []fakeDrive{}
	for _, d := range f.drives {
		drives = append(drives, d)
	}
	ifaces := []fakeIface{}
	for _, n := range f.ifaces {
		ifaces = append(ifaces, n)
	}
	return map[string]any{"drives": drives, "network-interfaces": ifaces, "machine-config": f.machine, "vsock": f.vsock}
}

func (f *fakeFirecracker) patchVM(r *http.Request) (int, any, error) {
	var v struct {
		State *string `json:"state"`
	}
	if err := decode(r, &v); err != nil {
		return 0, nil, err
	}
	if v.State == nil {
		return 0, nil, missing("state")
	}
	if !f.started {
		return 0, nil, errors.New(faultPreBoot)
	}
	switch *v.State {
	case "Paused":
		f.paused = true
	case "Resumed":
		f.paused = false
	default:
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Paused` or `Resumed`", *v.State)
	}
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) patchDrive(r *http.Request, id string) (int, any, error) {
	var d struct {
		DriveID     *string         `json:"drive_id"`
		PathOnHost  *string         `json:"path_on_host"`
		RateLimiter json.RawMessage `json:"rate_limiter"`
	}
	if err := decode(r, &d); err != nil {
		return 0, nil, err
	}
	if d.DriveID == nil {
		return 0, nil, missing("drive_id")
	}
	if *d.DriveID != id {
		return 0, nil, fmt.Errorf("The id from the path [%s] does not match the id from the body [%s]!", id, *d.DriveID)
	}
	if !f.started {
		return 0, nil, errors.New(faultPreBoot)
	}
	cur, ok := f.drives[id]
	if !ok {
		return 0, nil, fmt.Errorf("Unable to patch the block device: drive %s not found", id)
	}
	if d.PathOnHost != nil {
		if err := f.fileMustExist("Unable to patch the block device: cannot open the disk file", *d.PathOnHost); err != nil {
			return 0, nil, err
		}
		cur.PathOnHost = d.PathOnHost
	}
	f.drives[id] = cur
	f.patched = append(f.patched, id)
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) snapshotCreate(r *http.Request) (int, any, error) {
	var c struct {
		MemFilePath  *string `json:"mem_file_path"`
		SnapshotPath *string `json:"snapshot_path"`
		SnapshotType *string `json:"snapshot_type"`
	}
	if err := decode(r, &c); err != nil {
		return 0, nil, err
	}
	if c.MemFilePath == nil {
		return 0, nil, missing("mem_file_path")
	}
	if c.SnapshotPath == nil {
		return 0, nil, missing("snapshot_path")
	}
	if c.SnapshotType != nil {
		switch *c.SnapshotType {
		case "Full":
		case "Diff":
			if f.machine.TrackDirtyPages == nil || !*f.machine.TrackDirtyPages {
				return 0, nil, errors.New("Create snapshot error: Diff snapshots require dirty page tracking.")
			}
		default:
			return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *c.SnapshotType)
		}
	}
	if !f.started {
		return 0, nil, errors.New(faultPreBoot)
	}
	if !f.paused {
		return 0, nil, errors.New(faultNotPaused)
	}
	state, err := json.Marshal(fakeSaved{Drives: f.drives, Ifaces: f.ifaces, Vsock: f.vsock, Machine: f.machine})
	if err != nil {
		return 0, nil, err
	}
	if err := os.WriteFile(f.hostPath(*c.SnapshotPath), state, 0o600); err != nil {
		return 0, nil, fmt.Errorf("Create snapshot error: Cannot write the microVM state: %v", err)
	}
	mem := fmt.Sprintf("fake guest memory of %d MiB\n", *f.machine.MemSizeMib)
	if err := os.WriteFile(f.hostPath(*c.MemFilePath), []byte(mem), 0o600); err != nil {
		return 0, nil, fmt.Errorf("Create snapshot error: Cannot write the memory file: %v", err)
	}
	return http.StatusNoContent, nil, nil
}

func (f *fakeFirecracker) snapshotLoad(r *http.Request) (int, any, error) {
	var l struct {
		SnapshotPath        *string `json:"snapshot_path"`
		MemFilePath         *string `json:"mem_file_path"`
		EnableDiffSnapshots *bool   `json:"enable_diff_snapshots"`
		TrackDirtyPages     *bool   `json:"track_dirty_pages"`
		ResumeVM            *bool   `json:"resume_vm"`
		ClockRealtime       *bool   `json:"clock_realtime"`
		MemBackend          *struct {
			BackendType *string `json:"backend_type"`
			BackendPath *string `json:"backend_path"`
		} `json:"mem_backend"`
		NetworkOverrides []struct {
			IfaceID     *string `json:"iface_id"`
			HostDevName *string `json:"host_dev_name"`
		} `json:"network_overrides"`
		VsockOverride *struct {
			UDSPath *string `json:"uds_path"`
		} `json:"vsock_override"`
	}
	if err := decode(r, &l); err != nil {
		return 0, nil, err
	}
	if l.SnapshotPath == nil {
		return 0, nil, missing("snapshot_path")
	}
	if (l.MemFilePath == nil) == (l.MemBackend == nil) {
		return 0, nil, errors.New("An error occurred when deserializing the json body of a request: either `mem_backend` or `mem_file_path` must be present, not both")
	}
	mem := ""
	if l.MemFilePath != nil {
		mem = *l.MemFilePath
	} else {
		if l.MemBackend.BackendType == nil {
			return 0, nil, missing("backend_type")
		}
		if l.MemBackend.BackendPath == nil {
			return 0, nil, missing("backend_path")
		}
		if *l.MemBackend.BackendType != "File" && *l.MemBackend.BackendType != "Uffd" {
			return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *l.MemBackend.BackendType)
		}
		mem = *l.MemBackend.BackendPath
	}
	for _, o := range l.NetworkOverrides {
		if o.IfaceID == nil {
			return 0, nil, missing("iface_id")
		}
		if o.HostDevName == nil {
			return 0, nil, missing("host_dev_name")
		}
	}
	if l.VsockOverride != nil && l.VsockOverride.UDSPath == nil {
		return 0, nil, missing("uds_path")
	}
	if f.started || f.boot != nil || len(f.drives) > 0 || len(f.ifaces) > 0 || f.vsock != nil || f.machine.MemSizeMib != nil {
		return 0, nil, errors.New(faultLoadTooLate)
	}
	data, err := os.ReadFile(f.hostPath(*l.SnapshotPath))
	if err != nil {
		return 0, nil, fmt.Errorf("Load snapshot error: Failed to restore from snapshot: Cannot open the snapshot file: %v", err)
	}
	var saved fakeSaved
	if err := json.Unmarshal(data, &saved); err != nil {
		return 0, nil, fmt.Errorf("Load snapshot error: Failed to restore from snapshot: Cannot deserialize the microVM state: %v", err)
	}
	if err := f.fileMustExist("Load snapshot error: Failed to restore from snapshot: Cannot open the memory file", mem); err != nil {
		return 0, nil, err
	}
	// The devices come back as saved: each drive reopened by its
	// recorded path, each tap by name unless overridden, the vsock
	// socket bound where it was unless overridden.
	f.opened = map[string]string{}
	for id, d := range saved.Drives {
		if err := f.fileMustExist("Load snapshot error: Failed to restore from snapshot: Block device error: cannot open the disk file of drive "+id, *d.PathOnHost); err != nil {
			return 0, nil, err
		}
		target, err := filepath.EvalSymlinks(f.hostPath(*d.PathOnHost))
		if err != nil {
			return 0, nil, err
		}
		f.opened[id] = target
	}
	for _, o := range l.NetworkOverrides {
		n, ok := saved.Ifaces[*o.IfaceID]
		if !ok {
			return 0, nil, fmt.Errorf("Load snapshot error: Invalid network configuration: network override for an interface the snapshot does not have: %s", *o.IfaceID)
		}
		n.HostDevName = o.HostDevName
		saved.Ifaces[*o.IfaceID] = n
	}
	for _, n := range saved.Ifaces {
		if !fakeTaps[*n.HostDevName] {
			return 0, nil, fmt.Errorf("Load snapshot error: Failed to restore from snapshot: Net device error: Open tap device failed: Invalid TUN/TAP Backend provided by %s.", *n.HostDevName)
		}
	}
	if saved.Vsock != nil {
		v := *saved.Vsock
		if l.VsockOverride != nil {
			v.UDSPath = l.VsockOverride.UDSPath
		}
		host := f.hostPath(*v.UDSPath)
		if _, err := os.Lstat(host); err == nil {
			return 0, nil, errors.New("Load snapshot error: Failed to restore from snapshot: Vsock device error: Error binding to the host-side Unix socket: Address in use (os error 98)")
		}
		ln, err := net.Listen("unix", host)
		if err != nil {
			return 0, nil, fmt.Errorf("Load snapshot error: Vsock device error: %v", err)
		}
		f.vsockLn = ln
		f.vsock = &v
	}
	f.drives, f.ifaces, f.machine = saved.Drives, saved.Ifaces, saved.Machine
	f.loaded = *l.SnapshotPath
	f.started = true
	f.paused = l.ResumeVM == nil || !*l.ResumeVM
	return http.StatusNoContent, nil, nil
}
