package daemon

import (
	"context"
	"os"

	"banger/internal/api"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/version"
)

// Methods is bangerd's one dispatch table. docs/rpc.md documents every
// entry; TestDispatchTableMatchesDocs holds the two equal.
func (d *Daemon) Methods() rpc.Methods {
	return rpc.Methods{
		"ping":                   rpc.Typed(d.ping),
		"daemon.version":         rpc.Typed(d.versionInfo),
		"daemon.operations.list": rpc.Typed(d.operationsList),
	}
}

type noParams struct{}

func (d *Daemon) ping(ctx context.Context, _ noParams) (api.PingResult, error) {
	return api.PingResult{Version: version.Version, ProtocolVersion: api.ProtocolVersion, PID: os.Getpid(), StartedAt: d.started}, nil
}

func (d *Daemon) versionInfo(ctx context.Context, _ noParams) (api.VersionResult, error) {
	return api.VersionResult{Version: version.Version, Commit: version.Commit, ProtocolVersion: api.ProtocolVersion, SchemaVersion: store.LatestSchemaVersion()}, nil
}

func (d *Daemon) operationsList(ctx context.Context, _ noParams) (api.OperationsListResult, error) {
	return d.ListOperations(ctx), nil
}
