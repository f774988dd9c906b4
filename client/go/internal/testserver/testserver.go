// Package testserver starts the real Python lil-sparse server with a tiny random-weight model,
// so the Go tests exercise the actual gRPC contract rather than a fake.
//
// The Python interpreter is $LIL_SPARSE_PYTHON (default python3); it needs the repository's
// Python dependencies. PYTHONPATH is set to the repository root and client/python.
package testserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// startTimeout bounds model building plus server start-up (torch import dominates on CI).
const startTimeout = 180 * time.Second

// Config are the server settings the tests pin, so they can check them back through GetInfo.
type Config struct {
	Architecture string // tiny model architecture: "llama" or "qwen2"
	MaxRunning   int
	MaxWaiting   int
	PageSize     int
	ExtraArgs    []string // more `python -m server` flags, e.g. TLS files
}

// DefaultConfig is what the integration tests run against.
var DefaultConfig = Config{Architecture: "llama", MaxRunning: 4, MaxWaiting: 8, PageSize: 16}

// Server is a running Python server process.
type Server struct {
	Config     Config
	Address    string // host:port of the gRPC endpoint
	MetricsURL string // http URL of the Prometheus endpoint
	ModelDir   string
	RepoRoot   string

	command *exec.Cmd
	workDir string
	logs    *lockedBuffer
	exited  chan error
}

var servingLine = regexp.MustCompile(`lil-sparse serving port=(\d+) metrics_port=(\d+)`)

// Start builds a tiny model in a temporary folder and starts the server on a free port. It
// returns once the server printed its ports (after the model loaded), or fails with its logs.
func Start(config Config) (*Server, error) {
	repoRoot, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	workDir, err := os.MkdirTemp("", "lil-sparse-go-test-")
	if err != nil {
		return nil, err
	}
	server := &Server{Config: config, RepoRoot: repoRoot, workDir: workDir, logs: &lockedBuffer{}}
	server.ModelDir = filepath.Join(workDir, "tiny-"+config.Architecture)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := server.buildModel(ctx); err != nil {
		server.cleanup()
		return nil, err
	}
	if err := server.launch(ctx); err != nil {
		server.Stop()
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, server.Logs())
	}
	return server, nil
}

// Python is the interpreter the tests run the server with.
func Python() string {
	if python := os.Getenv("LIL_SPARSE_PYTHON"); python != "" {
		return python
	}
	return "python3"
}

// RepoRoot is $LIL_SPARSE_REPO_ROOT, or the folder three levels above client/go/internal.
func RepoRoot() (string, error) {
	if root := os.Getenv("LIL_SPARSE_REPO_ROOT"); root != "" {
		return root, nil
	}
	_, thisFile, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the repository root; set LIL_SPARSE_REPO_ROOT")
	}
	root := filepath.Join(filepath.Dir(thisFile), "..", "..", "..", "..")
	if _, err := os.Stat(filepath.Join(root, "server", "__main__.py")); err != nil {
		return "", fmt.Errorf("no server/__main__.py under %s; set LIL_SPARSE_REPO_ROOT: %w", root, err)
	}
	return root, nil
}

func (s *Server) pythonCommand(ctx context.Context, args ...string) *exec.Cmd {
	command := exec.CommandContext(ctx, Python(), args...)
	command.Dir = s.RepoRoot
	pythonPath := s.RepoRoot + string(os.PathListSeparator) + filepath.Join(s.RepoRoot, "client", "python")
	command.Env = append(os.Environ(), "PYTHONPATH="+pythonPath, "PYTHONUNBUFFERED=1")
	setParentDeathSignal(command)
	return command
}

func (s *Server) buildModel(ctx context.Context) error {
	// Three layers: Quest's default two dense layers must leave one sparse layer.
	command := s.pythonCommand(ctx, "-m", "lil_sparse.testing.tiny_model", s.ModelDir,
		"--architecture", s.Config.Architecture, "--num-layers", "3")
	output, err := command.CombinedOutput()
	if err != nil {
		return fmt.Errorf("building the tiny model with %s failed: %w\n%s", Python(), err, output)
	}
	return nil
}

func (s *Server) launch(ctx context.Context) error {
	metricsPort, err := freePort()
	if err != nil {
		return err
	}
	// Not CommandContext: the server must outlive ctx, which only bounds the start-up.
	args := []string{"-m", "server",
		"--model", s.ModelDir,
		"--host", "127.0.0.1",
		"--port", "0",
		"--metrics-port", strconv.Itoa(metricsPort),
		"--max-running", strconv.Itoa(s.Config.MaxRunning),
		"--max-waiting", strconv.Itoa(s.Config.MaxWaiting),
		"--page-size", strconv.Itoa(s.Config.PageSize),
		"--grace-period-seconds", "5",
	}
	s.command = s.pythonCommand(context.Background(), append(args, s.Config.ExtraArgs...)...)
	stderr, err := s.command.StderrPipe()
	if err != nil {
		return err
	}
	s.command.Stdout = s.logs
	if err := s.command.Start(); err != nil {
		return fmt.Errorf("starting %s -m server: %w", Python(), err)
	}
	ports := make(chan []string, 1)
	go s.scanLogs(stderr, ports)
	s.exited = make(chan error, 1)
	go func() { s.exited <- s.command.Wait() }()
	select {
	case match := <-ports:
		s.Address = "127.0.0.1:" + match[1]
		s.MetricsURL = "http://127.0.0.1:" + match[2] + "/metrics"
		return nil
	case err := <-s.exited:
		s.exited <- err // Stop reads it again
		return fmt.Errorf("the server exited before serving: %v", err)
	case <-ctx.Done():
		return fmt.Errorf("the server did not start within %s", startTimeout)
	}
}

// scanLogs keeps the server's log (shown when a test fails) and reports the ports line.
func (s *Server) scanLogs(stderr io.Reader, ports chan<- []string) {
	scanner := bufio.NewScanner(stderr)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	reported := false
	for scanner.Scan() {
		line := scanner.Text()
		_, _ = s.logs.Write([]byte(line + "\n"))
		if match := servingLine.FindStringSubmatch(line); match != nil && !reported {
			reported = true
			ports <- match
		}
	}
}

// Logs is everything the server printed so far.
func (s *Server) Logs() string { return s.logs.String() }

// Stop sends SIGTERM (the server drains and exits 0; a paused one is resumed to do so), kills it
// if it lingers, and removes the model folder. It returns the process's exit error, if any.
func (s *Server) Stop() error {
	var exitErr error
	if s.command != nil && s.command.Process != nil && s.exited != nil {
		_ = s.command.Process.Signal(syscall.SIGTERM)
		_ = s.Resume() // a paused server would hold the SIGTERM until it runs again
		select {
		case exitErr = <-s.exited:
		case <-time.After(30 * time.Second):
			_ = s.command.Process.Kill()
			exitErr = fmt.Errorf("the server ignored SIGTERM for 30 s: %v", <-s.exited)
		}
	}
	s.cleanup()
	return exitErr
}

func (s *Server) cleanup() { _ = os.RemoveAll(s.workDir) }

func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

// lockedBuffer is a log buffer written by the scanner goroutine and read by failing tests.
type lockedBuffer struct {
	mu      sync.Mutex
	builder strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.builder.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.builder.String()
}
