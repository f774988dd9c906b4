package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestNoServerAtTheAddressSaysHowToStartOne(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0") // a port nobody listens on once it closes
	if err != nil {
		t.Fatal(err)
	}
	address := listener.Addr().String()
	listener.Close()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-address", address, "-timeout", "20s", "hi"}, &stdout, &stderr)
	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	if code != 1 || len(lines) != 2 || !strings.HasPrefix(lines[0], "lil-stream: UNAVAILABLE: ") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	want := "lil-stream: no server answered at " + address + ": start one (`make run`, or `lil-sparse serve`)" +
		" or pass -address HOST:PORT (the gRPC port, 50051 by default)"
	if lines[1] != want {
		t.Fatalf("hint %q, want %q", lines[1], want)
	}
}

func TestHintsForATimeoutAndARefusedField(t *testing.T) {
	cases := []struct {
		err     error
		timeout time.Duration
		want    string
	}{
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), 500 * time.Millisecond,
			"\nlil-stream: the call ran past -timeout 500ms; raise it, or leave it out (no deadline)"},
		{status.Error(codes.DeadlineExceeded, "deadline set by the server"), 0, ""},
		{status.Error(codes.InvalidArgument, "budget_tokens: must be >= 16 (one page of 16 tokens), got 0"), 0,
			" (flag -budget)"},
		{status.Error(codes.InvalidArgument, "stop_strings[2]: at most 256 bytes, got 300"), 0, " (flag -stop)"},
		{status.Error(codes.InvalidArgument, "interval_tokens: must be >= 1"), 0, " (flag -guardian-interval)"},
		{status.Error(codes.InvalidArgument, "top_p: must be in (0, 1], got 0.0"), 0, " (flag -top-p)"},
		{status.Error(codes.InvalidArgument, "sink_tokens: must be >= 0, got -1"), 0, " (flag -sink-tokens)"},
		{status.Error(codes.InvalidArgument, "prompt: must not be empty"), 0, ""}, // no flag sets it
		{status.Error(codes.Unavailable, "the server is draining"), 0, ""},
	}
	for _, c := range cases {
		if got := errorHint(c.err, "localhost:50051", c.timeout); got != c.want {
			t.Errorf("%v: hint %q, want %q", c.err, got, c.want)
		}
	}
}

func TestBudgetWithoutPolicyOnAFullServerGetsTheNote(t *testing.T) {
	startedWith := func(policy lilsparse.Policy) lilsparse.Started {
		return lilsparse.Started{Options: lilsparse.ResolvedOptions{Sparse: lilsparse.Sparse{Policy: policy}}}
	}
	want := "note: -budget 100 changed nothing: the server's default policy is full (dense), which" +
		" attends every page; add -policy quest, infllm, sink or h2o"
	cases := []struct {
		args    []string
		started lilsparse.Started
		want    string
	}{
		{[]string{"-budget", "100", "hi"}, startedWith(lilsparse.PolicyFull), want},
		{[]string{"-budget", "100", "hi"}, startedWith(lilsparse.PolicyQuest), ""},                   // the server's default selects
		{[]string{"-policy", "full", "-budget", "100", "hi"}, startedWith(lilsparse.PolicyFull), ""}, // asked for
		{[]string{"-policy", "quest", "-budget", "100", "hi"}, startedWith(lilsparse.PolicyQuest), ""},
		{[]string{"-sink-tokens", "16", "hi"}, startedWith(lilsparse.PolicyFull), ""}, // no budget given
		{[]string{"hi"}, startedWith(lilsparse.PolicyFull), ""},
	}
	for _, c := range cases {
		parsed, err := parseFlags(c.args, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if got := budgetNote(&parsed.request, c.started); got != c.want {
			t.Errorf("%v: note %q, want %q", c.args, got, c.want)
		}
	}
}
