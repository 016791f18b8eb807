//go:build !faultinject

package daemon

import "sync/atomic"

// testFault is the unit tests' fault hook (nil unless a _test file sets
// it): it runs where faultAfter is called, e.g. to end the goroutine of
// an operation as a crash would. Nothing outside the tests sets it.
var testFault atomic.Pointer[func(stage string) error]

// faultAfter is the fault-injection hook of the steps runner; without the
// faultinject build tag (every release and normal build) it does nothing
// but call testFault when a unit test set one.
func faultAfter(stage string) error {
	if f := testFault.Load(); f != nil {
		return (*f)(stage)
	}
	return nil
}
