package lilsparse

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestWrappedErrorsKeepTheGRPCCode(t *testing.T) {
	serverError := status.Error(codes.OutOfRange, "max_new_tokens: prompt plus 5000 exceed the context of 2048")
	wrapped := wrapError(serverError)
	if status.Code(wrapped) != codes.OutOfRange || Code(wrapped) != codes.OutOfRange {
		t.Fatalf("codes %v / %v, want OUT_OF_RANGE", status.Code(wrapped), Code(wrapped))
	}
	if wrapped.Error() != "OUT_OF_RANGE: max_new_tokens: prompt plus 5000 exceed the context of 2048" {
		t.Fatalf("message %q", wrapped.Error())
	}
	if field := wrapped.(*Error).Field(); field != "max_new_tokens" {
		t.Fatalf("field %q", field)
	}
	// Wrapping again, or by the caller with %w, keeps the code for Code().
	if Code(fmt.Errorf("generate: %w", wrapError(wrapped))) != codes.OutOfRange {
		t.Fatal("a wrapped *Error lost its code")
	}
}

func TestContextErrorsMapToTheirCodes(t *testing.T) {
	if Code(wrapError(fmt.Errorf("dial: %w", context.Canceled))) != codes.Canceled {
		t.Fatal("context.Canceled must be CANCELED")
	}
	if Code(fmt.Errorf("x: %w", context.DeadlineExceeded)) != codes.DeadlineExceeded {
		t.Fatal("context.DeadlineExceeded must be DEADLINE_EXCEEDED")
	}
	if Code(nil) != codes.OK || Code(fmt.Errorf("plain")) != codes.Unknown {
		t.Fatal("nil is OK and a plain error is UNKNOWN")
	}
}

func TestFieldOnlyForArgumentErrorsThatNameOne(t *testing.T) {
	cases := []struct {
		code    codes.Code
		message string
		field   string
	}{
		{codes.InvalidArgument, "top_p: must be in (0, 1], got 1.5", "top_p"},
		{codes.InvalidArgument, "the request has no input", ""},
		{codes.ResourceExhausted, "queue: full", ""},
	}
	for _, tc := range cases {
		err := &Error{status: status.New(tc.code, tc.message)}
		if err.Field() != tc.field {
			t.Fatalf("Field() of %v = %q, want %q", err, err.Field(), tc.field)
		}
	}
	if CodeName(codes.Canceled) != "CANCELLED" || CodeName(codes.InvalidArgument) != "INVALID_ARGUMENT" {
		t.Fatal("canonical names differ from grpc's")
	}
}
