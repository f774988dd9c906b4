package lilsparse

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call. It keeps the gRPC status, so status.Code(err), status.FromError(err)
// and Code(err) all report the server's code (INVALID_ARGUMENT, OUT_OF_RANGE, CANCELED, ...).
type Error struct {
	status *status.Status
}

// Error returns "CODE: message" with the code's canonical name, as the Python client does:
// "INVALID_ARGUMENT: budget_tokens: must be >= 16 (one page of 16 tokens), got 0".
func (e *Error) Error() string {
	return CodeName(e.status.Code()) + ": " + e.status.Message()
}

var canonicalCodeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
	codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// CodeName is the canonical gRPC name of a code ("INVALID_ARGUMENT"), as in the proto's docs.
func CodeName(code codes.Code) string {
	if name, ok := canonicalCodeNames[code]; ok {
		return name
	}
	return code.String()
}

// GRPCStatus lets the grpc status package read the code back from this error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Code is the gRPC status code.
func (e *Error) Code() codes.Code { return e.status.Code() }

// Message is the server's message without the code.
func (e *Error) Message() string { return e.status.Message() }

// Field is the option the server rejected: its INVALID_ARGUMENT messages start with the field
// name ("budget_tokens: must be >= 16 ..."). Empty when the message names no field.
func (e *Error) Field() string {
	if e.status.Code() != codes.InvalidArgument && e.status.Code() != codes.OutOfRange {
		return ""
	}
	name, _, found := strings.Cut(e.status.Message(), ": ")
	if !found || strings.ContainsAny(name, " \t") {
		return ""
	}
	return name
}

// Code returns the gRPC status code of err: OK for nil, the wrapped code for an *Error found
// anywhere in err's chain, Canceled or DeadlineExceeded for context errors, Unknown otherwise.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var callError *Error
	switch {
	case errors.As(err, &callError):
		return callError.Code()
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return status.Code(err)
}

// wrapError turns any error from a gRPC call into an *Error that keeps its status code. A
// context error seen before the call reached the wire becomes CANCELED or DEADLINE_EXCEEDED.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	var callError *Error
	if errors.As(err, &callError) {
		return err
	}
	if _, isStatus := status.FromError(err); !isStatus {
		// grpc already converts context errors it sees; this catches ones raised around it.
		switch {
		case errors.Is(err, context.Canceled):
			return &Error{status: status.New(codes.Canceled, err.Error())}
		case errors.Is(err, context.DeadlineExceeded):
			return &Error{status: status.New(codes.DeadlineExceeded, err.Error())}
		}
	}
	return &Error{status: status.Convert(err)}
}

func invalidArgument(message string) error {
	return &Error{status: status.New(codes.InvalidArgument, message)}
}
