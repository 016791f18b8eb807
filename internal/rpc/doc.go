// Package rpc is banger's JSON-RPC 2.0 transport over a Unix socket: the
// server that bangerd runs and the client that the CLI uses.
//
// Wire format: one request per connection, one JSON object per line each way.
// The request carries the banger protocol version beside the JSON-RPC fields:
//
//	{"jsonrpc":"2.0","id":1,"method":"ping","params":{},"protocol_version":1}
//
// Errors carry a typed banger code in their data:
//
//	{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"vm \"web\" not found","data":{"code":"not_found"}}}
//
// One request per connection keeps cancellation exact: when the client goes
// away the server sees EOF on the otherwise idle connection and cancels the
// request's context. So a client must keep its write side open until the
// reply arrives (a half-close, as `nc -N` does, reads as hanging up). The server owns framing, limits (request size, idle
// time), the peer-credential check, op ids and request logging. It does not
// know any method: the daemon hands it a dispatch table.
package rpc
