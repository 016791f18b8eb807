package daemon

// vmCreateOp is one vm.create operation: the VM being made and the stage
// it is in.
type vmCreateOp struct {
	opCore
	vmName string
}
