package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// qmpTimeout bounds one QMP exchange when the caller's context has no
// deadline of its own.
const qmpTimeout = 10 * time.Second

// maxQMPLines bounds how many lines (events included) are read while
// waiting for one reply, so a flood of events cannot keep a caller forever.
const maxQMPLines = 1000

// QMPError is an error reply from QEMU's monitor.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpClient speaks the QEMU Machine Protocol: one JSON object per line. The
// server greets with {"QMP": ...}; the client must send qmp_capabilities
// before any other command; replies are {"return": ...} or {"error": ...},
// and asynchronous {"event": ...} lines may arrive in between.
type qmpClient struct {
	conn net.Conn
	r    *bufio.Reader
}

// qmpMessage is the union of every line QEMU sends.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// dialQMP connects to the monitor socket at path and completes the
// capabilities handshake.
func dialQMP(ctx context.Context, path string) (*qmpClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP socket: %w", err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(qmpTimeout)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, err
	}
	q := &qmpClient{conn: conn, r: bufio.NewReader(conn)}
	greeting, err := q.readMessage()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read QMP greeting: %w", err)
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, errors.New("read QMP greeting: the socket did not greet like QEMU's monitor")
	}
	if err := q.execute("qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpClient) Close() error { return q.conn.Close() }

func (q *qmpClient) readMessage() (qmpMessage, error) {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return qmpMessage{}, err
	}
	var m qmpMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return qmpMessage{}, fmt.Errorf("decode QMP line %q: %w", line, err)
	}
	return m, nil
}

// passFD hands QEMU an open file under name (QMP getfd: the descriptor
// travels with the command as SCM_RIGHTS), for an "fd:NAME" migration URI.
func (q *qmpClient) passFD(name string, f *os.File) error {
	return q.executeWithFD("getfd", map[string]string{"fdname": name}, f, nil)
}

// executeWithFD runs command with f's descriptor attached (SCM_RIGHTS).
func (q *qmpClient) executeWithFD(command string, args any, f *os.File, out any) error {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("qmp %s: not a unix socket", command)
	}
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("qmp %s: send: %w", command, err)
	}
	return q.awaitReply(command, out)
}

// execute runs one command and decodes its return value into out (when
// non-nil). Events that arrive before the reply are skipped.
func (q *qmpClient) execute(command string, args any, out any) error {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: send: %w", command, err)
	}
	return q.awaitReply(command, out)
}

// awaitReply reads the reply to command, skipping events.
func (q *qmpClient) awaitReply(command string, out any) error {
	for range maxQMPLines {
		m, err := q.readMessage()
		if err != nil {
			return fmt.Errorf("qmp %s: read reply: %w", command, err)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return &QMPError{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		case m.Return != nil:
			if out == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
			return nil
		}
	}
	return fmt.Errorf("qmp %s: no reply within %d lines", command, maxQMPLines)
}

// qmpDo dials, runs one command and hangs up. QEMU's monitor serves one
// client at a time, so holding a connection would block every other caller.
func qmpDo(ctx context.Context, path, command string, args, out any) error {
	q, err := dialQMP(ctx, path)
	if err != nil {
		return err
	}
	defer q.Close()
	return q.execute(command, args, out)
}
