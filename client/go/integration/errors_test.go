package integration

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func TestBadRequestsKeepTheirStatusCode(t *testing.T) {
	client := dial(t)
	info, err := client.Info(context.Background())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	cases := []struct {
		name      string
		mutate    func(*lilsparse.Request)
		wantCodes []codes.Code
		wantField string
	}{
		{"zero budget", func(r *lilsparse.Request) {
			r.Sparse = &lilsparse.Sparse{Policy: lilsparse.PolicyQuest, BudgetTokens: lilsparse.Ptr(0)}
		}, []codes.Code{codes.InvalidArgument}, "budget_tokens"},
		{"negative budget", func(r *lilsparse.Request) {
			r.Sparse = &lilsparse.Sparse{Policy: lilsparse.PolicySink, BudgetTokens: lilsparse.Ptr(-5)}
		}, []codes.Code{codes.InvalidArgument}, "budget_tokens"},
		{"top_p above one", func(r *lilsparse.Request) {
			r.Sampling = &lilsparse.Sampling{TopP: lilsparse.Ptr(1.5)}
		}, []codes.Code{codes.InvalidArgument}, "top_p"},
		{"zero guardian interval", func(r *lilsparse.Request) {
			r.Guardian = &lilsparse.Guardian{Enabled: lilsparse.Ptr(true), IntervalTokens: lilsparse.Ptr(0)}
		}, []codes.Code{codes.InvalidArgument}, "interval_tokens"},
		{"beyond the context", func(r *lilsparse.Request) {
			r.Stopping = &lilsparse.Stopping{MaxNewTokens: lilsparse.Ptr(info.MaxContext + 1)}
		}, []codes.Code{codes.InvalidArgument, codes.OutOfRange}, "max_new_tokens"},
		{"budget overflowing int32 (caught by the client)", func(r *lilsparse.Request) {
			r.Sparse = &lilsparse.Sparse{BudgetTokens: lilsparse.Ptr(1 << 40)}
		}, []codes.Code{codes.InvalidArgument}, "budget_tokens"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			request := lilsparse.Request{Prompt: lilsparse.Text("bad request")}
			tc.mutate(&request)
			stream, err := client.Generate(context.Background(), request)
			if err == nil {
				stream.Close()
				t.Fatalf("the server accepted the request")
			}
			code := status.Code(err) // the plain grpc helper must see the code too
			if !containsCode(tc.wantCodes, code) || lilsparse.Code(err) != code {
				t.Fatalf("error %v has code %v, want one of %v", err, code, tc.wantCodes)
			}
			var callError *lilsparse.Error
			if !errors.As(err, &callError) || callError.Field() != tc.wantField {
				t.Fatalf("error %v names field %q, want %q", err, fieldOf(callError), tc.wantField)
			}
			if !strings.HasPrefix(err.Error(), lilsparse.CodeName(code)+": "+tc.wantField+": ") {
				t.Fatalf("error text %q, want CODE: field: message", err.Error())
			}
		})
	}
}

func containsCode(list []codes.Code, code codes.Code) bool {
	for _, candidate := range list {
		if candidate == code {
			return true
		}
	}
	return false
}

func fieldOf(err *lilsparse.Error) string {
	if err == nil {
		return "<not a *lilsparse.Error>"
	}
	return err.Field()
}
