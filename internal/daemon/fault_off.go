//go:build !faultinject

package daemon

// faultAfter is the fault-injection hook of the steps runner; without the
// faultinject build tag (every release and normal build) it does nothing
// but call testFault when a unit test set one.
func faultAfter(stage string) error {
	if f := testFault.Load(); f != nil {
		return (*f)(stage)
	}
	return nil
}
