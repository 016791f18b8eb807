//go:build !faultinject

package daemon

// faultAfter is the fault-injection hook of the steps runner; without the
// faultinject build tag (every release and normal build) it does nothing.
func faultAfter(string) error { return nil }
