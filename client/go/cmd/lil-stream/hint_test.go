package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
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

// http10Server answers every connection as Python's http.server (the metrics endpoint) answers
// bytes it cannot parse as HTTP/1.x, then closes it.
func http10Server(t *testing.T) string {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			buffer := make([]byte, 1024)
			conn.Read(buffer) //nolint:errcheck // whatever the client sent first
			fmt.Fprint(conn, "HTTP/1.0 400 Bad request version ('HTTP/2.0')\r\nConnection: close\r\n\r\n")
			conn.Close()
		}
	}()
	return listener.Addr().String()
}

func TestAnHTTPPortIsNamedInTheHint(t *testing.T) {
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "# HELP lil_sparse_requests_total ...")
	}))
	defer server.Close()
	for _, address := range []string{strings.TrimPrefix(server.URL, "http://"), http10Server(t)} {
		for _, args := range [][]string{{"-info"}, {"hi"}} {
			checkHTTPHint(t, address, args)
		}
	}
}

// checkHTTPHint runs lil-stream with args against address, an HTTP/1.x server, and checks that
// grpc's error is followed by the hint that names the address an HTTP port.
func checkHTTPHint(t *testing.T, address string, args []string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	argv := append([]string{"-address", address, "-timeout", "20s"}, args...)
	code := run(context.Background(), argv, &stdout, &stderr)
	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	want := "lil-stream: " + address + " answered, but not in gRPC: is it an HTTP port, such as the" +
		" server's Prometheus port, 9400 by default? The gRPC port is 50051 by default"
	if code != 1 || len(lines) != 2 || !strings.HasPrefix(lines[0], "lil-stream: UNAVAILABLE: ") || lines[1] != want {
		t.Fatalf("%s %v: exit %d, stderr %q", address, args, code, stderr.String())
	}
	t.Logf("%s %v: %s", address, args, lines[0])
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
		{status.Error(codes.Unavailable, "connection error: desc = \"error reading server preface: http2: frame too large\""), 0,
			"\nlil-stream: localhost:50051 answered, but not in gRPC: is it an HTTP port, such as the server's" +
				" Prometheus port, 9400 by default? The gRPC port is 50051 by default"},
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

func TestGuardianFlagsWithoutGuardianGetTheNote(t *testing.T) {
	startedWith := func(enabled bool) lilsparse.Started {
		return lilsparse.Started{Options: lilsparse.ResolvedOptions{Guardian: lilsparse.Guardian{Enabled: &enabled}}}
	}
	cases := []struct {
		args    []string
		started lilsparse.Started
		want    string
	}{
		{[]string{"-guardian-interval", "50", "-guardian-mode", "incremental", "hi"}, startedWith(false),
			"note: -guardian-interval, -guardian-mode changed nothing: Guardian is off (the server's default);" +
				" add -guardian"},
		{[]string{"-guardian-shadow", "hi"}, startedWith(false),
			"note: -guardian-shadow changed nothing: Guardian is off (the server's default); add -guardian"},
		{[]string{"-guardian-interval", "50", "hi"}, startedWith(true), ""},                     // the server's default runs it
		{[]string{"-guardian", "-guardian-interval", "50", "hi"}, startedWith(true), ""},        // asked for
		{[]string{"-guardian=false", "-guardian-interval", "50", "hi"}, startedWith(false), ""}, // turned off on purpose
		{[]string{"hi"}, startedWith(false), ""},
	}
	for _, c := range cases {
		parsed, err := parseFlags(c.args, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if got := guardianNote(&parsed.request, c.started); got != c.want {
			t.Errorf("%v: note %q, want %q", c.args, got, c.want)
		}
	}
}
