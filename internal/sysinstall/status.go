package sysinstall

import (
	"context"
	"fmt"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/rpc"
)

// Client is an RPC client for the system daemon, which runs as owner.
func Client(socket string, owner int) *rpc.Client {
	return &rpc.Client{SocketPath: socket, TrustUID: func(uid int) bool { return uid == owner || uid == 0 }}
}

// WaitAnswer pings the daemon on socket until it answers (as owner) or
// limit passes.
func WaitAnswer(ctx context.Context, socket string, owner int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var err error
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = Client(socket, owner).Call(pctx, "ping", nil, nil)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer on %s within %s: %w", socket, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// UnitState is one unit's state as systemctl reports it.
type UnitState struct {
	Unit   string `json:"unit"`
	Active string `json:"active"` // active, inactive, failed, ...
}

// Status is what `banger system status` shows.
type Status struct {
	Units  []UnitState     `json:"units"`
	Daemon *api.PingResult `json:"daemon,omitempty"`
	Error  string          `json:"error,omitempty"`
	Socket string          `json:"socket"`
}

// OK says whether both units run and the daemon answers.
func (s Status) OK() bool {
	for _, u := range s.Units {
		if u.Active != "active" {
			return false
		}
	}
	return s.Daemon != nil
}

// GetStatus asks systemctl about both units and pings the daemon.
func GetStatus(ctx context.Context, r Runner, socket string, owner int) Status {
	st := Status{Socket: socket}
	for _, u := range []string{HelperUnit, DaemonUnit} {
		// is-active exits non-zero for anything but active; its output
		// says what.
		out, _ := r.Run(ctx, "systemctl", "is-active", u)
		state := strings.TrimSpace(string(out))
		if state == "" {
			state = "unknown"
		}
		st.Units = append(st.Units, UnitState{Unit: u, Active: state})
	}
	var ping api.PingResult
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := Client(socket, owner).Call(pctx, "ping", nil, &ping); err != nil {
		st.Error = err.Error()
	} else {
		st.Daemon = &ping
	}
	return st
}

// Restart restarts the helper and the daemon and waits for the daemon.
func Restart(ctx context.Context, r Runner, socket string, owner int) error {
	if _, err := r.Run(ctx, "systemctl", "restart", HelperUnit, DaemonUnit); err != nil {
		return err
	}
	return WaitAnswer(ctx, socket, owner, 30*time.Second)
}
