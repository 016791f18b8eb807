package daemon

import (
	"context"
	"os"
	"runtime"

	"banger/internal/api"
	"banger/internal/rpc"
	"banger/internal/store"
	"banger/internal/version"
)

// Methods is bangerd's one dispatch table. docs/rpc.md documents every
// entry; TestDispatchTableMatchesDocs holds the two equal.
func (d *Daemon) Methods() rpc.Methods {
	return rpc.Methods{
		"ping":                     rpc.Typed(d.ping),
		"daemon.version":           rpc.Typed(d.versionInfo),
		"daemon.operations.list":   rpc.Typed(d.operationsList),
		"daemon.operations.cancel": rpc.Typed(d.cancelOperation),
		"daemon.leaks":             rpc.Typed(d.leaks),

		"vm.create.begin":  rpc.Typed(d.vmCreateBegin),
		"vm.clone.begin":   rpc.Typed(d.vmCloneBegin),
		"vm.health":        rpc.Typed(d.vmHealth),
		"vm.forward":       rpc.Typed(d.vmForward),
		"vm.forward.list":  rpc.Typed(d.vmForwardList),
		"vm.forward.stop":  rpc.Typed(d.vmForwardStop),
		"vm.ports":         rpc.Typed(d.vmPorts),
		"vm.create.status": rpc.Typed(d.vmCreateStatus),
		"vm.create.cancel": rpc.Typed(d.vmCreateCancel),
		"vm.list":          rpc.Typed(d.vmList),
		"vm.show":          rpc.Typed(d.vmShow),
		"vm.start":         rpc.Typed(d.vmStart),
		"vm.stop":          rpc.Typed(d.vmStop),
		"vm.restart":       rpc.Typed(d.vmRestart),
		"vm.kill":          rpc.Typed(d.vmKill),
		"vm.delete":        rpc.Typed(d.vmDelete),
		"vm.set":           rpc.Typed(d.vmSet),
		"vm.logs":          rpc.Typed(d.vmLogs),
		"vm.ssh_info":      rpc.Typed(d.vmSSHInfo),
		"vm.prune":         rpc.Typed(d.vmPrune),
		"vm.snapshot":      rpc.Typed(d.vmSnapshot),
		"snapshot.list":    rpc.Typed(d.snapshotList),
		"snapshot.rm":      rpc.Typed(d.snapshotRm),
		"image.warm":       rpc.Typed(d.imageWarm),

		"kernel.import":      rpc.Typed(d.kernelImport),
		"kernel.list":        rpc.Typed(d.kernelList),
		"kernel.pull":        rpc.Typed(d.kernelPull),
		"kernel.catalog":     rpc.Typed(d.kernelCatalogList),
		"kernel.show":        rpc.Typed(d.kernelShow),
		"kernel.rm":          rpc.Typed(d.kernelRm),
		"image.register":     rpc.Typed(d.imageRegister),
		"image.list":         rpc.Typed(d.imageList),
		"image.pull":         rpc.Typed(d.imagePull),
		"image.show":         rpc.Typed(d.imageShow),
		"image.delete":       rpc.Typed(d.imageDelete),
		"image.promote":      rpc.Typed(d.imagePromote),
		"image.cache_prune":  rpc.Typed(d.imageCachePrune),
		"image.build.begin":  rpc.Typed(d.imageBuildBegin),
		"image.build.status": rpc.Typed(d.imageBuildStatus),
	}
}

type noParams struct{}

func (d *Daemon) ping(ctx context.Context, _ noParams) (api.PingResult, error) {
	res := api.PingResult{Version: version.Version, ProtocolVersion: api.ProtocolVersion, PID: os.Getpid(), StartedAt: d.started,
		Goroutines: runtime.NumGoroutine()}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		res.OpenFDs = len(fds)
	}
	res.DBConnections, res.DBInUse = d.store.Connections()
	return res, nil
}

func (d *Daemon) versionInfo(ctx context.Context, _ noParams) (api.VersionResult, error) {
	return api.VersionResult{Version: version.Version, Commit: version.Commit, ProtocolVersion: api.ProtocolVersion, SchemaVersion: store.LatestSchemaVersion()}, nil
}

func (d *Daemon) leaks(ctx context.Context, _ noParams) (api.LeaksResult, error) {
	res, err := d.findLeaks(ctx)
	if res.Leaks == nil {
		res.Leaks = []api.Leak{}
	}
	return res, err
}

func (d *Daemon) operationsList(ctx context.Context, _ noParams) (api.OperationsListResult, error) {
	return d.ListOperations(ctx), nil
}
