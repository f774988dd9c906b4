package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/lil-sparse/lil-sparse/client/go/internal/testserver"
	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

const modulePath = "github.com/lil-sparse/lil-sparse/client/go"

var (
	binariesMu  sync.Mutex
	binariesDir string
	binaries    = map[string]string{}
)

// build compiles a command of this module once per test run, with the same go tool and
// environment (GOPATH mode or modules) as the test itself.
func build(t *testing.T, pkg string) string {
	t.Helper()
	binariesMu.Lock()
	defer binariesMu.Unlock()
	if binary, ok := binaries[pkg]; ok {
		return binary
	}
	if binariesDir == "" {
		dir, err := os.MkdirTemp("", "lil-sparse-go-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binariesDir = dir
	}
	binary := filepath.Join(binariesDir, filepath.Base(pkg))
	output, err := exec.Command("go", "build", "-o", binary, modulePath+"/"+pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, output)
	}
	binaries[pkg] = binary
	return binary
}

func removeBinaries() {
	if binariesDir != "" {
		_ = os.RemoveAll(binariesDir)
	}
}

// runBinary runs a built command and returns stdout, stderr and the exit status.
func runBinary(t *testing.T, binary string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	command := exec.Command(binary, args...)
	command.Stdout, command.Stderr = &stdout, &stderr
	err := command.Run()
	var exitError *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exitError):
		return stdout.String(), stderr.String(), exitError.ExitCode()
	default:
		t.Fatalf("running %s: %v", binary, err)
		return "", "", -1
	}
}

func TestLilStreamPrintsTextThenTheSummary(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	stdout, stderr, code := runBinary(t, binary, "-address", server.Address,
		"-max-new-tokens", "12", "-ignore-eos", "-policy", "sink", "-budget", "48", "-guardian", "Once upon")
	if code != 0 {
		failWithLogs(t, "lil-stream exited %d: %s", code, stderr)
	}
	text, summary, found := strings.Cut(stdout, "\n---\n")
	if !found {
		t.Fatalf("no --- between text and summary in %q", stdout)
	}
	lines := strings.Split(strings.TrimSuffix(summary, "\n"), "\n")
	patterns := []string{
		`^finish: length$`,
		`^tokens: prompt [1-9]\d*, completion 12$`,
		`^ttft: \d+\.\d ms  tbt: mean \d+\.\d\d ms, p50 \d+\.\d\d ms, p95 \d+\.\d\d ms  jct: \d+\.\d ms$`,
		`^guardian: on, \d+ checks, \d+\.\d\d ms CPU$`,
		`^kv: peak [1-9]\d* pages, \d+\.\d pages attended per step$`,
	}
	if len(lines) != len(patterns) {
		t.Fatalf("summary has %d lines, want %d:\n%s", len(lines), len(patterns), summary)
	}
	for i, pattern := range patterns {
		if !regexp.MustCompile(pattern).MatchString(lines[i]) {
			t.Fatalf("summary line %d %q does not match %s", i, lines[i], pattern)
		}
	}

	// -json: one line with the same request's summary; greedy, so the same text.
	stdout, stderr, code = runBinary(t, binary, "-address", server.Address, "-json", "-token-ids",
		"-max-new-tokens", "12", "-ignore-eos", "-policy", "sink", "-budget", "48", "-guardian", "Once upon")
	if code != 0 {
		failWithLogs(t, "lil-stream -json exited %d: %s", code, stderr)
	}
	if strings.Count(strings.TrimSuffix(stdout, "\n"), "\n") != 0 {
		t.Fatalf("-json printed more than one line: %q", stdout)
	}
	var decoded lilsparse.Summary
	if err := json.Unmarshal([]byte(stdout), &decoded); err != nil {
		t.Fatalf("-json output %q: %v", stdout, err)
	}
	if decoded.FinishReason != lilsparse.FinishLength || decoded.CompletionTokens != 12 ||
		len(decoded.TokenIDs) != 12 || decoded.Text != text || !decoded.Guardian.Enabled {
		t.Fatalf("-json summary %+v; want length, 12 tokens and ids, text %q, guardian on", decoded, text)
	}
}

func TestLilStreamReportsAStatusCodeAndExitsOne(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	stdout, stderr, code := runBinary(t, binary, "-address", server.Address, "-policy", "quest", "-budget", "0", "hi")
	if code != 1 || !strings.HasPrefix(stderr, "lil-stream: INVALID_ARGUMENT: budget_tokens: ") || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and an INVALID_ARGUMENT budget_tokens message", code, stdout, stderr)
	}
	_, stderr, code = runBinary(t, binary, "-address", server.Address, "-policy", "bogus", "hi")
	if code != 2 || !strings.Contains(stderr, "unknown policy") {
		t.Fatalf("exit %d, stderr %q; want 2 for a usage error", code, stderr)
	}
}

func TestLilStreamInfo(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	stdout, stderr, code := runBinary(t, binary, "-address", server.Address, "-info")
	if code != 0 {
		failWithLogs(t, "lil-stream -info exited %d: %s", code, stderr)
	}
	for _, want := range []string{"model: " + filepath.Base(server.ModelDir) + " (llama)", "page size 16", "full", "quest", "infllm",
		"limits: 4 running, 8 waiting"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("-info output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestReadmeExampleBuildsAndStreams(t *testing.T) {
	binary := build(t, "examples/stream")
	stdout, stderr, code := runBinary(t, binary, "-address", server.Address)
	if code != 0 {
		failWithLogs(t, "examples/stream exited %d: %s", code, stderr)
	}
	match := regexp.MustCompile(`\nfinish_reason=(\w+) completion_tokens=(\d+) ttft=\d+\.\d{3}s mean_attended_pages=\d+\.\d\n$`).
		FindStringSubmatch(stdout)
	if match == nil {
		t.Fatalf("example output does not end with its summary line:\n%s", stdout)
	}
	if match[1] != "length" && match[1] != "eos" && match[1] != "early_stop" {
		t.Fatalf("finish reason %q", match[1])
	}
}

func TestLilStreamMirrorsThePythonClient(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	goOut, stderr, code := runBinary(t, binary, "-address", server.Address,
		"-max-new-tokens", "10", "-ignore-eos", "-temperature", "0", "Mirror me")
	if code != 0 {
		failWithLogs(t, "lil-stream exited %d: %s", code, stderr)
	}
	python := exec.Command(testserver.Python(), "-m", "lil_client", "--address", server.Address, "generate",
		"Mirror me", "--max-new-tokens", "10", "--ignore-eos", "--temperature", "0")
	python.Env = append(os.Environ(), "PYTHONPATH="+server.RepoRoot+string(os.PathListSeparator)+
		filepath.Join(server.RepoRoot, "client", "python"))
	pythonOut, err := python.Output()
	if err != nil {
		t.Fatalf("python -m lil_client: %v", err)
	}
	goText, goSummary, _ := strings.Cut(goOut, "\n---\n")
	pythonText, pythonSummary, _ := strings.Cut(string(pythonOut), "\n---\n")
	if goText != pythonText {
		t.Fatalf("same greedy request, different text:\ngo:     %q\npython: %q", goText, pythonText)
	}
	goLines, pythonLines := strings.Split(goSummary, "\n"), strings.Split(pythonSummary, "\n")
	if len(goLines) != len(pythonLines) {
		t.Fatalf("summary lines differ:\ngo:\n%s\npython:\n%s", goSummary, pythonSummary)
	}
	// Timings differ run to run; everything else must read the same.
	for _, i := range []int{0, 1, 3} {
		if goLines[i] != pythonLines[i] {
			t.Fatalf("summary line %d: go %q, python %q", i, goLines[i], pythonLines[i])
		}
	}
	for i := range goLines {
		goLabel, _, _ := strings.Cut(goLines[i], ":")
		pythonLabel, _, _ := strings.Cut(pythonLines[i], ":")
		if goLabel != pythonLabel {
			t.Fatalf("summary line %d label: go %q, python %q", i, goLabel, pythonLabel)
		}
	}
}
