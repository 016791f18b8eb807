// Command banger-agent is banger's guest agent: it runs inside every VM, as
// root under systemd (or banger's init), and answers the host's health and
// ports requests. Build it static (CGO_ENABLED=0). See package
// banger/internal/agent for the protocol and the transports.
//
//	banger-agent [--transport auto|virtio-serial|vsock] [--port-name org.banger.agent] [--vsock-port 52]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/agent"
	"banger/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: it parses args, then serves until ctx
// ends. It returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("banger-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		transport   = fs.String("transport", agent.TransportAuto, "transport: auto, virtio-serial (QEMU) or vsock (Firecracker)")
		portName    = fs.String("port-name", agent.PortName, "virtio-serial port name (/dev/virtio-ports/NAME)")
		vsockPort   = fs.Uint("vsock-port", uint(agent.VsockPort), "AF_VSOCK port to listen on")
		procRoot    = fs.String("proc", "/proc", "where procfs is mounted")
		debug       = fs.Bool("debug", false, "log debug messages")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "banger-agent: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "banger-agent %s (%s), protocol %d\n", version.Version, version.Commit, agent.ProtocolVersion)
		return 0
	}
	switch *transport {
	case agent.TransportAuto, agent.TransportVirtioSerial, agent.TransportVsock:
	default:
		fmt.Fprintf(stderr, "banger-agent: --transport %q: want auto, virtio-serial or vsock\n", *transport)
		return 2
	}
	if *vsockPort == 0 || *vsockPort > 0xFFFFFFFE {
		fmt.Fprintf(stderr, "banger-agent: --vsock-port %d out of range\n", *vsockPort)
		return 2
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	srv := &agent.Server{AgentVersion: version.Version, ProcRoot: *procRoot, Logger: log}
	log.Info("banger-agent starting", "version", version.Version, "protocol", agent.ProtocolVersion, "transport", *transport)
	err := srv.Run(ctx, agent.Options{Transport: *transport, PortName: *portName, VsockPort: uint32(*vsockPort)})
	if err != nil {
		log.Error("banger-agent failed", "err", err)
		return 1
	}
	log.Info("banger-agent stopping")
	return 0
}
