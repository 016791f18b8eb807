package api

import (
	"errors"
	"fmt"
)

// Code is a typed error code carried in the data of a JSON-RPC error.
type Code string

// The complete set of error codes the daemon returns. The CLI maps each to
// a non-zero exit and prints the message as one sentence.
const (
	CodeNotFound        Code = "not_found"
	CodeAlreadyExists   Code = "already_exists"
	CodeBadRequest      Code = "bad_request"
	CodeBadVersion      Code = "bad_version"
	CodeUnauthorized    Code = "unauthorized"
	CodeUnknownMethod   Code = "unknown_method"
	CodeOperationFailed Code = "operation_failed"
	CodeNotRunning      Code = "not_running"
)

// Codes lists every code, for documentation tests.
var Codes = []Code{CodeNotFound, CodeAlreadyExists, CodeBadRequest, CodeBadVersion,
	CodeUnauthorized, CodeUnknownMethod, CodeOperationFailed, CodeNotRunning}

// Error is an error with a code. Services return it (wrapped or bare) and the
// RPC layer turns it into a JSON-RPC error whose data carries the code.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, or
// CodeOperationFailed when there is none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeOperationFailed
}

// IsCode reports whether err carries code.
func IsCode(err error, code Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
