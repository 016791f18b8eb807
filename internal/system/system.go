// Package system is the only place in banger that starts host commands.
//
// Every command runs from an argv slice (never a shell string), so user input
// can never be interpreted by a shell. Packages that need to run commands
// declare a narrow Runner interface of their own and accept a *Exec (or a
// fake in their tests). A policy test keeps os/exec out of every other
// package.
package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Exec runs commands on the host.
type Exec struct {
	// Env, when non-nil, is appended to the process environment.
	Env []string
}

// CommandError reports a command that ran and failed, with the tail of
// its stderr so the caller can show the user why.
type CommandError struct {
	Argv     []string
	ExitCode int
	Stderr   string
	Err      error
}

func (e *CommandError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 2000 {
		msg = "..." + msg[len(msg)-2000:]
	}
	if msg == "" {
		return fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Argv, " "), e.Err, msg)
}

func (e *CommandError) Unwrap() error { return e.Err }

// Run runs argv and returns its stdout. A non-zero exit becomes a
// *CommandError carrying stderr.
func (x *Exec) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return x.RunInput(ctx, nil, argv...)
}

// cancelWaitDelay bounds how long a cancelled command's output is
// waited for once its process group is killed.
const cancelWaitDelay = 5 * time.Second

// RunInput is Run with stdin fed from input.
func (x *Exec) RunInput(ctx context.Context, input []byte, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("system: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if x != nil && x.Env != nil {
		cmd.Env = append(os.Environ(), x.Env...)
	}
	// A cancelled command ends with everything it started: wrappers such
	// as fakeroot run their command as a child, which would otherwise
	// run on holding the output pipes (and Wait with them).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				return os.ErrProcessDone // it had exited: no cancel error
			}
			return err
		}
		return nil
	}
	cmd.WaitDelay = cancelWaitDelay
	if input != nil {
		cmd.Stdin = bytes.NewReader(input)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		ce := &CommandError{Argv: argv, ExitCode: -1, Stderr: stderr.String(), Err: err}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ce.ExitCode = ee.ExitCode()
		}
		return stdout.Bytes(), ce
	}
	return stdout.Bytes(), nil
}

// LookPath finds a binary on PATH.
func LookPath(name string) (string, error) { return exec.LookPath(name) }

// DetachedSpec describes a long-lived process started outside the caller's
// process group, so that it outlives the caller (VMMs outlive bangerd).
type DetachedSpec struct {
	Argv []string
	Dir  string
	Env  []string
	// Stdout and Stderr are files the process writes to (nil: /dev/null).
	Stdout *os.File
	Stderr *os.File
	// ExtraFiles are inherited as fds 3, 4, ...
	ExtraFiles []*os.File
}

// StartDetached starts a process in its own session and returns its pid.
// The caller does not wait for it; the process is reaped by init once the
// caller exits, or by the caller through Reap while it lives.
func StartDetached(spec DetachedSpec) (*os.Process, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("system: empty command")
	}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Dir = spec.Dir
	if spec.Env != nil {
		cmd.Env = append(os.Environ(), spec.Env...)
	}
	cmd.Stdout = spec.Stdout
	cmd.Stderr = spec.Stderr
	cmd.ExtraFiles = spec.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Argv[0], err)
	}
	return cmd.Process, nil
}

// ExecReplace replaces the current process with argv (used by the CLI to
// hand the terminal to ssh).
func ExecReplace(argv []string, env []string) error {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(path, argv, env)
}

// RunAttached runs argv with the given standard streams (typically the
// CLI's own terminal) and returns its exit status. err is set only when the
// command could not be run at all.
func RunAttached(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if len(argv) == 0 {
		return -1, errors.New("system: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}
