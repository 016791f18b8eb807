package rpc

import (
	"bufio"
	"encoding/json"
	"net"
	"testing"
	"time"
)

// FuzzRequest sends arbitrary bytes as one request line: the server always
// answers one well-formed JSON-RPC reply (a result or an error with a
// banger code) or closes, never panics, and keeps serving.
func FuzzRequest(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"name":"web","count":3},"protocol_version":1}`,
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"name":7}}`,
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"nope":true},"protocol_version":1}`,
		`{"jsonrpc":"2.0","id":"x","method":"panic","protocol_version":1}`,
		`{"jsonrpc":"1.0","method":"echo"}`,
		`{"id":[1,2],"method":null}`,
		`[]`, `null`, `"`, "\x00\xff", `{"jsonrpc":"2.0","id":1,"method":"echo","params":[1,2,3],"protocol_version":1}`,
	} {
		f.Add([]byte(seed))
	}
	h := startServer(f, 0)
	f.Fuzz(func(t *testing.T, line []byte) {
		for i, b := range line {
			if b == '\n' {
				line = line[:i]
				break
			}
		}
		conn, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(append(line, '\n')); err != nil {
			return
		}
		reply, err := bufio.NewReader(conn).ReadBytes('\n')
		if err != nil {
			if len(reply) == 0 {
				return // closed without an answer (an empty line)
			}
			t.Fatalf("partial reply %q: %v", reply, err)
		}
		var m struct {
			JSONRPC string          `json:"jsonrpc"`
			Result  json.RawMessage `json:"result"`
			Error   *struct {
				Data struct {
					Code string `json:"code"`
				} `json:"data"`
			} `json:"error"`
		}
		if err := json.Unmarshal(reply, &m); err != nil || m.JSONRPC != "2.0" {
			t.Fatalf("reply %q to %q is not JSON-RPC: %v", reply, line, err)
		}
		if (m.Error == nil) == (m.Result == nil) || (m.Error != nil && m.Error.Data.Code == "") {
			t.Fatalf("reply %q to %q: want exactly one of result and an error with a code", reply, line)
		}
	})
}
