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
		`^kv: peak [1-9]\d* pages \(all KV heads\), \d+\.\d pages attended per step and KV head$`,
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
	want := "lil-stream: INVALID_ARGUMENT: budget_tokens: must be >= 16 (one page of 16 tokens), got 0 (flag -budget)\n"
	if code != 1 || stderr != want || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and %q", code, stdout, stderr, want)
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

func TestLilStreamInfoReadsAsLilClientInfo(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	stdout, stderr, code := runBinary(t, binary, "-address", server.Address, "-info")
	if code != 0 {
		failWithLogs(t, "lil-stream -info exited %d: %s", code, stderr)
	}
	if python := pythonClient(t, "info"); stdout != python {
		t.Fatalf("lil-stream -info:\n%s\nlil-client info:\n%s", stdout, python)
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

// pythonClient runs `python -m lil_client --address ... ARGS...` against the shared server.
func pythonClient(t *testing.T, args ...string) string {
	t.Helper()
	python := exec.Command(testserver.Python(), append([]string{"-m", "lil_client", "--address", server.Address}, args...)...)
	python.Env = append(os.Environ(), "PYTHONPATH="+server.RepoRoot+string(os.PathListSeparator)+
		filepath.Join(server.RepoRoot, "client", "python"))
	output, err := python.Output()
	if err != nil {
		t.Fatalf("python -m lil_client %q: %v", args, err)
	}
	return string(output)
}

// answerFlags make Guardian stop at token 8 (every check after the first says stop) and force an
// answer prompt, whose tokens the server sends with NaN logprobs, then 3 answer tokens.
var answerFlags = []string{"-max-new-tokens", "64", "-ignore-eos", "-temperature", "0", "-guardian",
	"-guardian-interval", "4", "-guardian-threshold", "1000000", "-guardian-action", "answer",
	"-guardian-answer-max-tokens", "3", "-token-ids", "-logprobs"}

func TestLilStreamPrintsLogprobsLikeThePythonClient(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	pythonFlags := make([]string, len(answerFlags))
	for i, flag := range answerFlags {
		pythonFlags[i] = strings.Replace(flag, "-", "--", 1)
	}

	// -json: logprobs joined from the chunks, one per completion token, null for the forced prompt.
	goJSON, stderr, code := runBinary(t, binary, append(append([]string{"-address", server.Address, "-json"},
		answerFlags...), "Log me")...)
	if code != 0 {
		failWithLogs(t, "lil-stream -json exited %d: %s", code, stderr)
	}
	var decoded struct {
		CompletionTokens int        `json:"completion_tokens"`
		Logprobs         []*float64 `json:"logprobs"`
		Guardian         struct {
			AnswerStartedAt    *int `json:"answer_started_at"`
			AnswerPromptTokens int  `json:"answer_prompt_tokens"`
		} `json:"guardian"`
	}
	if err := json.Unmarshal([]byte(goJSON), &decoded); err != nil {
		t.Fatalf("-json output %q: %v", goJSON, err)
	}
	start, forced := decoded.Guardian.AnswerStartedAt, decoded.Guardian.AnswerPromptTokens
	if start == nil || *start != 8 || forced < 1 || decoded.CompletionTokens != *start+forced+3 ||
		len(decoded.Logprobs) != decoded.CompletionTokens {
		t.Fatalf("-json %s: want an answer forced at token 8 and one logprob per completion token", goJSON)
	}
	for i, logprob := range decoded.Logprobs {
		isForced := i >= *start && i < *start+forced
		if (logprob == nil) != isForced || (logprob != nil && *logprob > 0) {
			t.Fatalf("logprob %d = %v: want null exactly for the forced prompt [%d, %d), else <= 0",
				i, logprob, *start, *start+forced)
		}
	}
	pythonJSON := pythonClient(t, append(append([]string{"generate", "Log me", "--json"}, pythonFlags...))...)
	var pythonDecoded struct {
		Logprobs []*float64 `json:"logprobs"`
	}
	if err := json.Unmarshal([]byte(pythonJSON), &pythonDecoded); err != nil {
		t.Fatalf("lil-client --json output %q: %v", pythonJSON, err)
	}
	if len(pythonDecoded.Logprobs) != len(decoded.Logprobs) {
		t.Fatalf("logprobs: go %d, python %d", len(decoded.Logprobs), len(pythonDecoded.Logprobs))
	}
	for i := range decoded.Logprobs {
		// Both hold the server's float32: Go writes its shortest float32 form, Python its float64 one.
		goValue, pythonValue := decoded.Logprobs[i], pythonDecoded.Logprobs[i]
		if (goValue == nil) != (pythonValue == nil) || (goValue != nil && float32(*goValue) != float32(*pythonValue)) {
			t.Fatalf("logprob %d: go %s, python %s (same greedy request)", i, goJSON, pythonJSON)
		}
	}

	// Text: the token ids and logprobs lines after the summary read as lil-client's, "nan" included.
	goText, stderr, code := runBinary(t, binary, append(append([]string{"-address", server.Address},
		answerFlags...), "Log me")...)
	if code != 0 {
		failWithLogs(t, "lil-stream exited %d: %s", code, stderr)
	}
	pythonText := pythonClient(t, append([]string{"generate", "Log me"}, pythonFlags...)...)
	_, goSummary, _ := strings.Cut(goText, "\n---\n")
	_, pythonSummary, _ := strings.Cut(pythonText, "\n---\n")
	goLines, pythonLines := strings.Split(goSummary, "\n"), strings.Split(pythonSummary, "\n")
	if len(goLines) != 8 || len(pythonLines) != 8 || goLines[7] != "" {
		t.Fatalf("want 5 summary lines, token ids and logprobs:\ngo:\n%s\npython:\n%s", goSummary, pythonSummary)
	}
	printed := strings.Split(strings.TrimPrefix(goLines[6], "logprobs: "), " ")
	if len(printed) != decoded.CompletionTokens || printed[*start] != "nan" || printed[*start-1] == "nan" {
		t.Fatalf("logprobs line %q: want %d values, nan from token %d", goLines[6], decoded.CompletionTokens, *start)
	}
	for _, i := range []int{5, 6} {
		if goLines[i] != pythonLines[i] {
			t.Fatalf("line %d after the summary: go %q, python %q", i, goLines[i], pythonLines[i])
		}
	}
}

// A budget without a policy runs the server's default policy, full here, which ignores it: the
// command says so on stderr, as lil-client does, and not when a policy was asked for.
func TestLilStreamNotesABudgetThatChangedNothing(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	_, stderr, code := runBinary(t, binary, "-address", server.Address, "-max-new-tokens", "2", "-budget", "64", "hi")
	want := "lil-stream: note: -budget 64 changed nothing: the server's default policy is full (dense)," +
		" which attends every page; add -policy quest, infllm, sink or h2o\n"
	if code != 0 || stderr != want {
		failWithLogs(t, "exit %d, stderr %q; want 0 and %q", code, stderr, want)
	}
	_, stderr, code = runBinary(t, binary, "-address", server.Address, "-max-new-tokens", "2", "-policy", "quest",
		"-budget", "64", "hi")
	if code != 0 || stderr != "" {
		failWithLogs(t, "with -policy quest: exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
}

func TestLilStreamNotesGuardianFlagsThatChangedNothing(t *testing.T) {
	binary := build(t, "cmd/lil-stream")
	_, stderr, code := runBinary(t, binary, "-address", server.Address, "-max-new-tokens", "2",
		"-guardian-interval", "50", "hi")
	want := "lil-stream: note: -guardian-interval changed nothing: Guardian is off (the server's default);" +
		" add -guardian\n"
	if code != 0 || stderr != want {
		failWithLogs(t, "exit %d, stderr %q; want 0 and %q", code, stderr, want)
	}
	_, stderr, code = runBinary(t, binary, "-address", server.Address, "-max-new-tokens", "2", "-guardian",
		"-guardian-interval", "50", "hi")
	if code != 0 || stderr != "" {
		failWithLogs(t, "with -guardian: exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
}
