// Package e2e holds banger's end-to-end tests (build tag e2e): a real
// bangerd in a temporary XDG tree, inside a network namespace the test
// creates, booting real VMs with QEMU. Run them with `make e2e`.
package e2e
