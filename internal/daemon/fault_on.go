//go:build faultinject

package daemon

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// errInjected is the failure BANGER_FAULT=STAGE:error injects.
var errInjected = errors.New("injected fault")

// faultAfter runs after a step finished: with BANGER_FAULT=STAGE:error
// the step named STAGE fails as if its own work had (its undo still
// runs), with BANGER_FAULT=STAGE:kill the daemon is SIGKILLed right after
// it. Built only with -tags faultinject, for the fault-injection tests.
func faultAfter(stage string) error {
	if f := testFault.Load(); f != nil {
		return (*f)(stage)
	}
	spec := os.Getenv("BANGER_FAULT")
	// Stage names may hold a colon ("delete: stop"); the mode follows the last.
	i := strings.LastIndexByte(spec, ':')
	if i < 0 || spec[:i] != stage {
		return nil
	}
	mode := spec[i+1:]
	switch mode {
	case "kill":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns: the signal ends the process
	case "error":
		return errInjected
	}
	return fmt.Errorf("BANGER_FAULT %q: mode is error or kill", spec)
}
