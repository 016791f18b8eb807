package firecracker

// An in-test stand-in for Firecracker's API server. It is written from
// Firecracker's swagger definition and its error messages, independently of
// the client's types, and rejects what Firecracker rejects: unknown fields,
// wrong types, missing required fields, files that do not exist, a second
// root device, out-of-range machine sizes, and any configuration after
// InstanceStart.

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

	mu          sync.Mutex
	requests    []string // "METHOD /path", in arrival order
	started     bool
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
	if f.root == "" {
		return p
	}
	return filepath.Join(f.root, p)
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
		return http.StatusOK, map[string]string{"id": "anonymous-instance", "state": state,
			"vmm_version": "1.12.0", "app_name": "Firecracker"}, nil
	}
	if r.Method != http.MethodPut {
		return 0, nil, fmt.Errorf("Invalid request method and/or path: %s %s.", r.Method, path)
	}
	if path == "/actions" {
		return f.action(r)
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
