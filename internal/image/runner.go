package image

import "context"

// Runner runs a host command from an argv slice and returns its stdout.
// *system.Exec satisfies it; tests use fakes.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}
