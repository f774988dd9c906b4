package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/lil-sparse/lil-sparse/client/go/internal/testserver"
	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

// server is shared by every test in the package: starting Python and torch dominates the cost.
var server *testserver.Server

func TestMain(m *testing.M) {
	started, err := testserver.Start(testserver.DefaultConfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: cannot start the Python server:", err)
		os.Exit(1)
	}
	server = started
	code := m.Run()
	removeBinaries()
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: the server did not exit cleanly:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// dial connects to the shared server; every test call gets a generous deadline so a hung
// server fails the test instead of the whole CI job.
func dial(t *testing.T) *lilsparse.Client {
	t.Helper()
	client, err := lilsparse.Dial(context.Background(), server.Address, lilsparse.WithCallTimeout(2*time.Minute))
	if err != nil {
		t.Fatalf("dial %s: %v", server.Address, err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// failWithLogs ends a test with the server's log, which usually says why.
func failWithLogs(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf(format+"\nserver log:\n%s", append(args, server.Logs())...)
}
