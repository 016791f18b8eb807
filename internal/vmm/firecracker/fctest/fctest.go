// Package fctest is test support for code that drives Firecracker: a
// stand-in for Firecracker's API server, written from Firecracker's
// swagger definition (src/firecracker/swagger/firecracker.yaml, 1.17) and
// its error messages, independently of the driver's types. It rejects
// what Firecracker rejects: unknown fields, wrong types, missing required
// fields, files that do not exist, a second root device, out-of-range
// machine sizes, any configuration after InstanceStart; for snapshots, a
// save of a guest that is not paused, a load into a Firecracker already
// configured, overrides of interfaces the snapshot does not have, and
// drives whose recorded files are gone when it is loaded.
//
// It is imported only by tests (the driver's, and the daemon's, which run
// it as a stand-in firecracker process) and must not be used by
// production code.
package fctest

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
)

const (
	FaultPostBoot = "The requested operation is not supported after starting the microVM."
	FaultPreBoot  = "The requested operation is not supported before starting the microVM."
)

type Drive struct {
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

type Machine struct {
	VcpuCount       *int    `json:"vcpu_count"`
	MemSizeMib      *int    `json:"mem_size_mib"`
	Smt             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

type Boot struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args"`
	InitrdPath      *string `json:"initrd_path"`
}

type Iface struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   *string         `json:"host_dev_name"`
	GuestMAC      *string         `json:"guest_mac"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
}

type Vsock struct {
	GuestCID *uint32 `json:"guest_cid"`
	UDSPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id"`
}

type Logger struct {
	LogPath       *string `json:"log_path"`
	Level         *string `json:"level"`
	ShowLevel     *bool   `json:"show_level"`
	ShowLogOrigin *bool   `json:"show_log_origin"`
	Module        *string `json:"module"`
}

// Server is the API server's state.
type Server struct {
	// Root, when set, is the jail: paths in requests are inside it.
	Root string
	// PID, when set, is the process that stands for Firecracker:
	// "/proc/self/..." in a request is resolved against it, as
	// Firecracker's own open would. Zero: this process.
	PID int
	// TapExists says whether a tap device of that name exists
	// (Firecracker opens it at once). Nil: none does.
	TapExists func(name string) bool
	// OnRun, when set, is called (with the lock held) the first time
	// the guest runs: at InstanceStart, or the first resume of a loaded
	// snapshot. OnVsock is given the vsock device's listener when it is
	// bound. OnCtrlAltDel is called for each SendCtrlAltDel.
	OnRun        func(s *Server)
	OnVsock      func(ln net.Listener)
	OnCtrlAltDel func()

	sync.Mutex
	Requests    []string // "METHOD /path", in arrival order
	Started     bool
	Paused      bool
	Loaded      string            // the snapshot /snapshot/load took
	Opened      map[string]string // drive id → the file the load opened
	Patched     []string          // drive ids PATCHed, in order
	Boot        *Boot
	Drives      map[string]Drive
	Machine     Machine
	Ifaces      map[string]Iface
	Vsock       *Vsock
	CtrlAltDels int

	loggerSet bool
	ran       bool
	mapped    os.FileInfo // the memory file a loaded snapshot mapped
	vsockLn   net.Listener
}

// New returns a server with nothing configured.
func New() *Server {
	return &Server{Drives: map[string]Drive{}, Ifaces: map[string]Iface{}}
}

// Close releases the vsock listener.
func (f *Server) Close() {
	f.Lock()
	defer f.Unlock()
	if f.vsockLn != nil {
		_ = f.vsockLn.Close()
		f.vsockLn = nil
	}
}

var macRE = regexp.MustCompile(`^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$`)

func (f *Server) hostPath(p string) string {
	if rest, ok := strings.CutPrefix(p, "/proc/self/"); ok && f.Root == "" && f.PID != 0 {
		return fmt.Sprintf("/proc/%d/%s", f.PID, rest)
	}
	if f.Root == "" {
		return p
	}
	return filepath.Join(f.Root, p)
}

// SetPID tells the server which process it stands for.
func (f *Server) SetPID(pid int) {
	f.Lock()
	defer f.Unlock()
	f.PID = pid
}

// fault is an error answered as Firecracker does: 400 with fault_message.
type fault string

// ServeHTTP answers one API request as Firecracker would.
func (f *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.Lock()
	defer f.Unlock()
	f.Requests = append(f.Requests, r.Method+" "+r.URL.Path)
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

func (f *Server) fileMustExist(what, p string) error {
	st, err := os.Stat(f.hostPath(p))
	if err != nil {
		return fmt.Errorf("%s: %s: %v", what, p, err)
	}
	if st.IsDir() {
		return fmt.Errorf("%s: %s is a directory", what, p)
	}
	return nil
}

func (f *Server) handle(r *http.Request) (int, any, error) {
	path := r.URL.Path
	if r.Method == http.MethodGet && path == "/" {
		state := "Not started"
		if f.Started {
			state = "Running"
		}
		if f.Paused {
			state = "Paused"
		}
		return http.StatusOK, map[string]string{"id": "anonymous-instance", "state": state,
			"vmm_version": Version, "app_name": "Firecracker"}, nil
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
	if f.Started {
		return 0, nil, errors.New(FaultPostBoot)
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

func (f *Server) logger(r *http.Request) (int, any, error) {
	var l Logger
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

func (f *Server) bootSource(r *http.Request) (int, any, error) {
	var b Boot
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
	f.Boot = &b
	return http.StatusNoContent, nil, nil
}

func (f *Server) drive(r *http.Request, id string) (int, any, error) {
	var d Drive
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
		for other, od := range f.Drives {
			if other != id && *od.IsRootDevice {
				return 0, nil, errors.New("A root block device already exists!")
			}
		}
	}
	f.Drives[id] = d
	return http.StatusNoContent, nil, nil
}

func (f *Server) machineConfig(r *http.Request) (int, any, error) {
	var m Machine
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
	f.Machine = m
	return http.StatusNoContent, nil, nil
}

func (f *Server) iface(r *http.Request, id string) (int, any, error) {
	var n Iface
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
	if !f.tapExists(*n.HostDevName) {
		return 0, nil, fmt.Errorf("Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", *n.HostDevName)
	}
	if n.GuestMAC != nil && !macRE.MatchString(*n.GuestMAC) {
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: invalid MAC address %q", *n.GuestMAC)
	}
	f.Ifaces[id] = n
	return http.StatusNoContent, nil, nil
}

func (f *Server) vsockConfig(r *http.Request) (int, any, error) {
	var v Vsock
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
	f.Vsock = &v
	if f.OnVsock != nil {
		f.OnVsock(ln)
	}
	return http.StatusNoContent, nil, nil
}

func (f *Server) action(r *http.Request) (int, any, error) {
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
		if f.Started {
			return 0, nil, errors.New(FaultPostBoot)
		}
		if f.Boot == nil {
			return 0, nil, errors.New("Cannot start microvm without kernel configuration.")
		}
		// The kernel is loaded at start: x86_64 Firecracker takes an ELF
		// vmlinux, not a bzImage.
		if head, err := readHead(f.hostPath(*f.Boot.KernelImagePath), 4); err != nil || string(head) != "\x7fELF" {
			return 0, nil, errors.New("Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image")
		}
		f.run()
	case "SendCtrlAltDel":
		if !f.Started {
			return 0, nil, errors.New(FaultPreBoot)
		}
		f.CtrlAltDels++
		if f.OnCtrlAltDel != nil {
			f.OnCtrlAltDel()
		}
	case "FlushMetrics":
	default:
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *a.ActionType)
	}
	return http.StatusNoContent, nil, nil
}

// Seen returns the requests so far and whether the guest started.
func (f *Server) Seen() (requests []string, started bool) {
	f.Lock()
	defer f.Unlock()
	return append([]string(nil), f.Requests...), f.Started
}

func (f *Server) tapExists(name string) bool { return f.TapExists != nil && f.TapExists(name) }

// run marks the guest running and tells OnRun, once.
func (f *Server) run() {
	f.Started = true
	if !f.ran && f.OnRun != nil {
		f.ran = true
		f.OnRun(f)
	}
}

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

// Version is the Firecracker release whose API description the fake
// follows (src/firecracker/swagger/firecracker.yaml): it has
// network_overrides and vsock_override on /snapshot/load.
const Version = "1.17.0-dev"

const (
	FaultNotPaused   = "Create snapshot error: the microVM is not paused."
	FaultLoadTooLate = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)

// saved is what the fake writes as a snapshot's state file: the
// devices as configured, with the paths the guest's devices were given.
type saved struct {
	Drives  map[string]Drive `json:"drives"`
	Ifaces  map[string]Iface `json:"ifaces"`
	Vsock   *Vsock           `json:"vsock"`
	Machine Machine          `json:"machine"`
}

func (f *Server) fullConfig() map[string]any {
	drives := []Drive{}
	for _, d := range f.Drives {
		drives = append(drives, d)
	}
	ifaces := []Iface{}
	for _, n := range f.Ifaces {
		ifaces = append(ifaces, n)
	}
	return map[string]any{"drives": drives, "network-interfaces": ifaces, "machine-config": f.Machine, "vsock": f.Vsock}
}

func (f *Server) patchVM(r *http.Request) (int, any, error) {
	var v struct {
		State *string `json:"state"`
	}
	if err := decode(r, &v); err != nil {
		return 0, nil, err
	}
	if v.State == nil {
		return 0, nil, missing("state")
	}
	if !f.Started {
		return 0, nil, errors.New(FaultPreBoot)
	}
	switch *v.State {
	case "Paused":
		f.Paused = true
	case "Resumed":
		f.Paused = false
		f.run()
	default:
		return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Paused` or `Resumed`", *v.State)
	}
	return http.StatusNoContent, nil, nil
}

func (f *Server) patchDrive(r *http.Request, id string) (int, any, error) {
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
	if !f.Started {
		return 0, nil, errors.New(FaultPreBoot)
	}
	cur, ok := f.Drives[id]
	if !ok {
		return 0, nil, fmt.Errorf("Unable to patch the block device: drive %s not found", id)
	}
	if d.PathOnHost != nil {
		if err := f.fileMustExist("Unable to patch the block device: cannot open the disk file", *d.PathOnHost); err != nil {
			return 0, nil, err
		}
		cur.PathOnHost = d.PathOnHost
	}
	f.Drives[id] = cur
	f.Patched = append(f.Patched, id)
	return http.StatusNoContent, nil, nil
}

func (f *Server) snapshotCreate(r *http.Request) (int, any, error) {
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
			if f.Machine.TrackDirtyPages == nil || !*f.Machine.TrackDirtyPages {
				return 0, nil, errors.New("Create snapshot error: Diff snapshots require dirty page tracking.")
			}
		default:
			return 0, nil, fmt.Errorf("An error occurred when deserializing the json body of a request: unknown variant `%s`", *c.SnapshotType)
		}
	}
	if !f.Started {
		return 0, nil, errors.New(FaultPreBoot)
	}
	if !f.Paused {
		return 0, nil, errors.New(FaultNotPaused)
	}
	state, err := json.Marshal(saved{Drives: f.Drives, Ifaces: f.Ifaces, Vsock: f.Vsock, Machine: f.Machine})
	if err != nil {
		return 0, nil, err
	}
	if err := os.WriteFile(f.hostPath(*c.SnapshotPath), state, 0o600); err != nil {
		return 0, nil, fmt.Errorf("Create snapshot error: Cannot write the microVM state: %v", err)
	}
	mem := fmt.Sprintf("fake guest memory of %d MiB\n", *f.Machine.MemSizeMib)
	// Firecracker truncates the memory file it writes: were it the file
	// the guest's memory is mapped from, the guest would lose its memory.
	if st, err := os.Stat(f.hostPath(*c.MemFilePath)); err == nil && f.mapped != nil && os.SameFile(st, f.mapped) {
		return 0, nil, errors.New("Create snapshot error: the memory file is the one this guest's memory is mapped from; writing it would truncate the guest's memory (the fake refuses what would corrupt a real guest)")
	}
	if err := os.WriteFile(f.hostPath(*c.MemFilePath), []byte(mem), 0o600); err != nil {
		return 0, nil, fmt.Errorf("Create snapshot error: Cannot write the memory file: %v", err)
	}
	return http.StatusNoContent, nil, nil
}

func (f *Server) snapshotLoad(r *http.Request) (int, any, error) {
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
	if f.Started || f.Boot != nil || len(f.Drives) > 0 || len(f.Ifaces) > 0 || f.Vsock != nil || f.Machine.MemSizeMib != nil {
		return 0, nil, errors.New(FaultLoadTooLate)
	}
	data, err := os.ReadFile(f.hostPath(*l.SnapshotPath))
	if err != nil {
		return 0, nil, fmt.Errorf("Load snapshot error: Failed to restore from snapshot: Cannot open the snapshot file: %v", err)
	}
	var saved saved
	if err := json.Unmarshal(data, &saved); err != nil {
		return 0, nil, fmt.Errorf("Load snapshot error: Failed to restore from snapshot: Cannot deserialize the microVM state: %v", err)
	}
	if err := f.fileMustExist("Load snapshot error: Failed to restore from snapshot: Cannot open the memory file", mem); err != nil {
		return 0, nil, err
	}
	// The devices come back as saved: each drive reopened by its
	// recorded path, each tap by name unless overridden, the vsock
	// socket bound where it was unless overridden.
	f.Opened = map[string]string{}
	for id, d := range saved.Drives {
		if err := f.fileMustExist("Load snapshot error: Failed to restore from snapshot: Block device error: cannot open the disk file of drive "+id, *d.PathOnHost); err != nil {
			return 0, nil, err
		}
		target, err := filepath.EvalSymlinks(f.hostPath(*d.PathOnHost))
		if err != nil {
			return 0, nil, err
		}
		f.Opened[id] = target
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
		if !f.tapExists(*n.HostDevName) {
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
		f.Vsock = &v
		if f.OnVsock != nil {
			f.OnVsock(ln)
		}
	}
	f.Drives, f.Ifaces, f.Machine = saved.Drives, saved.Ifaces, saved.Machine
	f.Loaded = *l.SnapshotPath
	// Firecracker maps the memory file privately: the guest's memory is
	// that file's pages until it writes them.
	if st, err := os.Stat(f.hostPath(mem)); err == nil {
		f.mapped = st
	}
	f.Started = true
	f.Paused = l.ResumeVM == nil || !*l.ResumeVM
	if !f.Paused {
		f.run()
	}
	return http.StatusNoContent, nil, nil
}
