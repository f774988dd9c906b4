package main

import (
	"bytes"
	"context"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func TestOnlyGivenFlagsBecomeOptions(t *testing.T) {
	parsed, err := parseFlags([]string{"-policy", "quest", "-budget", "128", "-temperature", "0", "hello", "world"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	request := parsed.request
	if request.Stopping != nil || request.Guardian != nil {
		t.Fatalf("untouched groups must stay nil (server defaults): %+v", request)
	}
	if request.Sparse.Policy != lilsparse.PolicyQuest || *request.Sparse.BudgetTokens != 128 || request.Sparse.SinkTokens != nil {
		t.Fatalf("sparse %+v", request.Sparse)
	}
	if *request.Sampling.Temperature != 0 || request.Sampling.TopP != nil {
		t.Fatalf("an explicit -temperature 0 is sent, an absent -top-p is not: %+v", request.Sampling)
	}
	want := lilsparse.Chat(lilsparse.Message{Role: "user", Content: "hello world"})
	if !reflect.DeepEqual(request.Prompt, want) {
		t.Fatalf("prompt %#v, want the words joined as one user chat message", request.Prompt)
	}
}

func TestRawSendsTextAndChatIsTheDefault(t *testing.T) {
	raw, err := parseFlags([]string{"-raw", "hello", "world"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if raw.request.Prompt != lilsparse.Text("hello world") {
		t.Fatalf("-raw prompt %#v, want plain text", raw.request.Prompt)
	}
	chat, err := parseFlags([]string{"-chat", "hello", "world"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := parseFlags([]string{"hello", "world"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(chat.request.Prompt, plain.request.Prompt) {
		t.Fatalf("-chat %#v must equal the default %#v", chat.request.Prompt, plain.request.Prompt)
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-raw", "-chat", "x"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Fatalf("-raw -chat: exit %d, want 2 (stderr %q)", code, stderr.String())
	}
}

func TestGuardianAndStopFlags(t *testing.T) {
	parsed, err := parseFlags([]string{"-guardian", "-guardian-interval", "50", "-guardian-mode", "incremental",
		"-stop", "A", "-stop", "B", "-chat", "q"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	guardian, stopping := parsed.request.Guardian, parsed.request.Stopping
	if !*guardian.Enabled || *guardian.IntervalTokens != 50 || guardian.ThresholdBytes != nil ||
		guardian.Mode != lilsparse.GuardianModeIncremental || guardian.Shadow != nil {
		t.Fatalf("guardian %+v", guardian)
	}
	shadowOnly, err := parseFlags([]string{"-guardian-shadow", "q"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if g := shadowOnly.request.Guardian; g == nil || g.Shadow == nil || !*g.Shadow || g.Enabled != nil {
		t.Fatalf("-guardian-shadow alone: %+v", shadowOnly.request.Guardian)
	}
	answer, err := parseFlags([]string{"-guardian-action", "answer", "-guardian-answer-max-tokens", "16", "q"},
		&bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if g := answer.request.Guardian; g == nil || g.Action != lilsparse.GuardianActionAnswer ||
		g.AnswerMaxTokens == nil || *g.AnswerMaxTokens != 16 {
		t.Fatalf("-guardian-action answer: %+v", answer.request.Guardian)
	}
	if len(stopping.StopStrings) != 2 || stopping.MaxNewTokens != nil {
		t.Fatalf("stopping %+v", stopping)
	}
	if parsed.request.Prompt == lilsparse.Text("q") {
		t.Fatal("-chat must send a chat message, not plain text")
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{{}, {"-policy", "dense", "x"}, {"-no-such-flag", "x"}} {
		var stderr bytes.Buffer
		if code := run(context.Background(), args, &bytes.Buffer{}, &stderr); code != 2 {
			t.Fatalf("args %q: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
}

func TestFlagAfterThePromptIsRefused(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-policy", "quest", "hi", "-max-new-tokens", "5"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Fatalf("flag after the prompt: exit %d, want 2 (stderr %q)", code, stderr.String())
	}
	want := "lil-stream: flag -max-new-tokens after the prompt: flags go before it " +
		"(lil-stream [flags] PROMPT; \"--\" first sends a prompt that starts with a flag name)\n"
	if stderr.String() != want {
		t.Fatalf("stderr %q, want %q", stderr.String(), want)
	}
	// After "--" a flag name is prompt text; words that only look like flags always are.
	for text, args := range map[string][]string{"-raw mode": {"--", "-raw", "mode"}, "a - b --x -5": {"a", "-", "b", "--x", "-5"}} {
		parsed, err := parseFlags(args, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("args %q: %v", args, err)
		}
		want := lilsparse.Chat(lilsparse.Message{Role: "user", Content: text})
		if !reflect.DeepEqual(parsed.request.Prompt, want) {
			t.Fatalf("args %q: prompt %#v, want %#v", args, parsed.request.Prompt, want)
		}
	}
}

func TestSummaryMatchesThePythonClient(t *testing.T) {
	summary := &lilsparse.Summary{
		FinishReason: lilsparse.FinishEarlyStop, PromptTokens: 12, CompletionTokens: 503,
		Timings: lilsparse.Timings{TTFTSeconds: 0.0123, TBTMeanSeconds: 0.00125, TBTP50Seconds: 0.0011,
			TBTP95Seconds: 0.002, JCTSeconds: 0.65},
		Guardian: lilsparse.GuardianReport{Enabled: true, Checks: 2, StopStep: lilsparse.Ptr(500),
			AppliedAtStep: lilsparse.Ptr(503), CPUSeconds: 0.00042},
		KV: lilsparse.KVReport{PeakPages: 40, MeanAttendedPages: 7.96},
	}
	want := strings.Join([]string{
		"finish: early_stop",
		"tokens: prompt 12, completion 503",
		"ttft: 12.3 ms  tbt: mean 1.25 ms, p50 1.10 ms, p95 2.00 ms  jct: 650.0 ms",
		"guardian: on, 2 checks, stop at token 500 (applied 503), 0.42 ms CPU",
		"kv: peak 40 pages (all KV heads), 8.0 pages attended per step and KV head",
	}, "\n")
	if got := formatSummary(summary); got != want {
		t.Fatalf("summary\n%s\nwant\n%s", got, want)
	}
	summary.Guardian.AnswerStartedAt = lilsparse.Ptr(503)
	summary.Guardian.AnswerPromptTokens, summary.Guardian.AnswerTokens = 9, 32
	answerLine := "\nguardian: on, 2 checks, stop at token 500 (applied 503), answer: 9 prompt + 32 tokens, 0.42 ms CPU\n"
	if got := formatSummary(summary); !strings.Contains(got, answerLine) {
		t.Fatalf("guardian answer line missing:\n%s", got)
	}
	summary.Guardian = lilsparse.GuardianReport{Enabled: true, Shadow: true, Checks: 4,
		StopStep: lilsparse.Ptr(500), CPUSeconds: 0.00042}
	if got := formatSummary(summary); !strings.Contains(got, "\nguardian: shadow, 4 checks, would stop at token 500, 0.42 ms CPU\n") {
		t.Fatalf("guardian shadow line missing:\n%s", got)
	}
	summary.Guardian.StopStep = nil
	if got := formatSummary(summary); !strings.Contains(got, "\nguardian: shadow, 4 checks, would not stop, 0.42 ms CPU\n") {
		t.Fatalf("guardian shadow line without a stop missing:\n%s", got)
	}
	summary.Guardian = lilsparse.GuardianReport{}
	if got := formatSummary(summary); !strings.Contains(got, "\nguardian: off\n") {
		t.Fatalf("guardian off line missing:\n%s", got)
	}
}

func TestSecurityFlagsAndAllowSpecialTokens(t *testing.T) {
	parsed, err := parseFlags([]string{"-ca-file", "ca.pem", "-token-file", "token", "-allow-special-tokens", "hi"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !parsed.useTLS || parsed.tls.CAFile != "ca.pem" || parsed.tokenFile != "token" {
		t.Fatalf("a CA file turns TLS on and the token file is kept: %+v", parsed)
	}
	if parsed.request.AllowSpecialTokens == nil || !*parsed.request.AllowSpecialTokens {
		t.Fatalf("-allow-special-tokens must be sent: %+v", parsed.request)
	}
	plain, err := parseFlags([]string{"hi"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if plain.useTLS || plain.request.AllowSpecialTokens != nil {
		t.Fatalf("no flags: plaintext and the field absent: %+v", plain)
	}
}

func TestOutputFlagsPrintLinesAfterTheSummaryLikeThePythonClient(t *testing.T) {
	nan := float32(math.NaN())
	summary := &lilsparse.Summary{
		RequestID: "r-1", TokenIDs: []int32{5, 17, 2}, Logprobs: lilsparse.Logprobs{-0.25, nan, -1.03125},
		Guardian: lilsparse.GuardianReport{Enabled: true, Trace: []lilsparse.GuardianCheck{
			{GeneratedTokens: 4, CompressedBytes: 40, CPUSeconds: 0.0001},
			{GeneratedTokens: 8, CompressedBytes: 43, GrowthBytes: lilsparse.Ptr(int64(3)), Stop: true, CPUSeconds: 0.00025},
		}},
	}
	parsed, err := parseFlags([]string{"-request-id", "r-1", "-token-ids", "-logprobs", "-guardian-trace", "q"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	// lil-client prints the same lines (client/python/lil_client/cli_output.py, format_outputs); NaN, the
	// forced answer prompt's, prints as Python prints it.
	want := "request: r-1\n" +
		"token ids: 5 17 2\n" +
		"logprobs: -0.2500 nan -1.0312\n" +
		"guardian trace: 2 checks\n" +
		"  token 4: 40 bytes, first check, go on, 0.10 ms CPU\n" +
		"  token 8: 43 bytes, +3 bytes, stop, 0.25 ms CPU\n"
	if got := formatOutputs(summary, &parsed.request); got != want {
		t.Fatalf("output lines\n%q\nwant\n%q", got, want)
	}
	plain, err := parseFlags([]string{"q"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if got := formatOutputs(summary, &plain.request); got != "" {
		t.Fatalf("no output flags: %q, want nothing after the summary", got)
	}
	// -json: the summary's logprobs, NaN as null (strict JSON), as lil-client --json writes them.
	var out bytes.Buffer
	if err := writeJSON(&out, summary); err != nil {
		t.Fatalf("-json with a NaN logprob: %v", err)
	}
	if !strings.Contains(out.String(), `"logprobs":[-0.25,null,-1.03125]`) {
		t.Fatalf("-json %s: want logprobs [-0.25,null,-1.03125]", out.String())
	}
}

func TestPolicyNamesTakeAnyCase(t *testing.T) {
	parsed, err := parseFlags([]string{"-policy", "Quest", "hi"}, &bytes.Buffer{})
	if err != nil || parsed.request.Sparse == nil || parsed.request.Sparse.Policy != lilsparse.PolicyQuest {
		t.Fatalf("-policy Quest: %+v, %v", parsed, err)
	}
}
