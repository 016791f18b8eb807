// Package version holds the build's version strings, set at link time:
//
//	go build -ldflags "-X banger/internal/version.Version=v0.2.0 -X banger/internal/version.Commit=abc123"
package version

// Version is the release version ("dev" for local builds).
var Version = "dev"

// Commit is the source commit the binary was built from.
var Commit = "unknown"

// UpdateKey is the public half of the key releases are signed with
// (base64 PKIX DER, ECDSA P-256), set by make release. Empty leaves
// banger update disabled: nothing could be verified.
var UpdateKey = ""
