package integration

import (
	"context"
	"reflect"
	"testing"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

// greedy runs to max_new_tokens regardless of EOS, so the token count is known in advance.
func greedyRequest(prompt string, maxNewTokens int) lilsparse.Request {
	return lilsparse.Request{
		Prompt:   lilsparse.Text(prompt),
		Sampling: &lilsparse.Sampling{Temperature: lilsparse.Ptr(0.0)},
		Stopping: &lilsparse.Stopping{MaxNewTokens: lilsparse.Ptr(maxNewTokens), IgnoreEOS: lilsparse.Ptr(true)},
		Output:   lilsparse.Output{TokenIDs: true, Logprobs: true},
	}
}

func TestStreamArrivesInOrderAndCountsMatch(t *testing.T) {
	client := dial(t)
	request := greedyRequest("The quick brown fox", 24)
	request.RequestID = "go-order-1"
	request.Sparse = &lilsparse.Sparse{Policy: lilsparse.PolicyQuest, BudgetTokens: lilsparse.Ptr(32)}
	stream, err := client.Generate(context.Background(), request)
	if err != nil {
		failWithLogs(t, "Generate: %v", err)
	}
	started := stream.Started()
	if started.RequestID != "go-order-1" || started.PromptTokens <= 0 {
		t.Fatalf("started = %+v, want request id go-order-1 and a positive prompt count", started)
	}
	if started.Options.Sparse.Policy != lilsparse.PolicyQuest || *started.Options.Sparse.BudgetTokens != 32 {
		t.Fatalf("resolved sparse options = %+v, want quest with budget 32", started.Options.Sparse)
	}
	if started.Options.Sampling.TopP == nil || started.Options.Guardian.Enabled == nil {
		t.Fatalf("resolved options leave server defaults unset: %+v", started.Options)
	}

	var tokenIDs []int32
	var logprobs []float32
	var text string
	tokenCount := 0
	for stream.Next() {
		chunk := stream.Chunk()
		if chunk.TokenCount <= 0 || len(chunk.TokenIDs) != chunk.TokenCount || len(chunk.Logprobs) != chunk.TokenCount {
			t.Fatalf("chunk %+v: token_count, token_ids and logprobs disagree", chunk)
		}
		for _, logprob := range chunk.Logprobs {
			if logprob > 0 {
				t.Fatalf("logprob %v > 0", logprob)
			}
		}
		tokenIDs = append(tokenIDs, chunk.TokenIDs...)
		logprobs = append(logprobs, chunk.Logprobs...)
		text += chunk.Text
		tokenCount += chunk.TokenCount
	}
	summary, err := stream.Summary()
	if err != nil {
		failWithLogs(t, "stream: %v", err)
	}
	if summary.FinishReason != lilsparse.FinishLength {
		t.Fatalf("finish reason %q, want length", summary.FinishReason)
	}
	if tokenCount != 24 || summary.CompletionTokens != 24 || len(summary.TokenIDs) != 24 {
		t.Fatalf("tokens: chunks sum %d, completion %d, ids %d; want 24 each",
			tokenCount, summary.CompletionTokens, len(summary.TokenIDs))
	}
	if summary.PromptTokens != started.PromptTokens || summary.RequestID != "go-order-1" {
		t.Fatalf("summary %+v disagrees with started %+v", summary, started)
	}
	if summary.Text != text || !equalIDs(summary.TokenIDs, tokenIDs) {
		t.Fatalf("summary text/ids differ from the chunks read with Next")
	}
	if len(summary.Logprobs) != 24 || !reflect.DeepEqual([]float32(summary.Logprobs), logprobs) {
		t.Fatalf("summary logprobs %v differ from the chunks' %v", summary.Logprobs, logprobs)
	}
	if summary.Timings.TTFTSeconds <= 0 || summary.Timings.JCTSeconds < summary.Timings.TTFTSeconds {
		t.Fatalf("timings %+v: want 0 < ttft <= jct", summary.Timings)
	}
	if len(summary.KV.AttendedPagesPerStep) != 23 || summary.KV.PeakPages <= 0 {
		t.Fatalf("kv %+v: want 23 decode steps (24 tokens, the first from prefill) and peak pages > 0", summary.KV)
	}

	// Order: greedy decoding is deterministic, so a shorter run must be this run's prefix.
	shorter, err := client.Complete(context.Background(), withPolicy(greedyRequest("The quick brown fox", 10), request.Sparse))
	if err != nil {
		t.Fatalf("shorter run: %v", err)
	}
	if !equalIDs(shorter.TokenIDs, tokenIDs[:10]) {
		t.Fatalf("10-token run %v is not the prefix of the 24-token run %v", shorter.TokenIDs, tokenIDs)
	}
}

func TestChatPromptGoesThroughTheTemplate(t *testing.T) {
	client := dial(t)
	content := "hello there"
	plain, err := client.Complete(context.Background(), greedyRequest(content, 2))
	if err != nil {
		t.Fatalf("text prompt: %v", err)
	}
	chatRequest := greedyRequest("", 2)
	chatRequest.Prompt = lilsparse.Chat(lilsparse.Message{Role: "user", Content: content})
	chat, err := client.Complete(context.Background(), chatRequest)
	if err != nil {
		t.Fatalf("chat prompt: %v", err)
	}
	if chat.PromptTokens <= plain.PromptTokens {
		t.Fatalf("chat prompt has %d tokens, plain %d: the template added nothing", chat.PromptTokens, plain.PromptTokens)
	}
	ids := lilsparse.TokenIDs(5, 6, 7, 8, 9)
	tokenRequest := greedyRequest("", 2)
	tokenRequest.Prompt = ids
	fromIDs, err := client.Complete(context.Background(), tokenRequest)
	if err != nil {
		t.Fatalf("token-id prompt: %v", err)
	}
	if fromIDs.PromptTokens != 5 {
		t.Fatalf("token-id prompt counted %d tokens, want 5", fromIDs.PromptTokens)
	}
}

func TestGuardianStopsEarlyAndReportsItsTrace(t *testing.T) {
	client := dial(t)
	request := greedyRequest("Guardian test", 64)
	// No text grows by a million compressed bytes in 4 tokens: the second check says stop.
	request.Guardian = &lilsparse.Guardian{
		Enabled: lilsparse.Ptr(true), IntervalTokens: lilsparse.Ptr(4), ThresholdBytes: lilsparse.Ptr(1000000),
		Mode: lilsparse.GuardianModeFull, Source: lilsparse.GuardianSourceText,
	}
	request.Output.GuardianTrace = true
	summary, err := client.Complete(context.Background(), request)
	if err != nil {
		failWithLogs(t, "Complete: %v", err)
	}
	guardian := summary.Guardian
	if summary.FinishReason != lilsparse.FinishEarlyStop {
		t.Fatalf("finish reason %q, want early_stop; guardian %+v", summary.FinishReason, guardian)
	}
	if guardian.StopStep == nil || *guardian.StopStep != 8 || guardian.AppliedAtStep == nil ||
		*guardian.AppliedAtStep < 8 || summary.CompletionTokens >= 64 {
		t.Fatalf("guardian %+v after %d tokens: want stop at step 8, applied at >= 8, before 64",
			guardian, summary.CompletionTokens)
	}
	if !guardian.Enabled || guardian.Checks < 2 || len(guardian.CompressedBytes) != guardian.Checks ||
		len(guardian.Trace) != guardian.Checks {
		t.Fatalf("guardian %+v: want >= 2 checks with one size and one trace record each", guardian)
	}
	first, second := guardian.Trace[0], guardian.Trace[1]
	if first.GeneratedTokens != 4 || first.GrowthBytes != nil || first.Stop {
		t.Fatalf("first check %+v: want 4 tokens, no growth, no stop", first)
	}
	if second.GeneratedTokens != 8 || second.GrowthBytes == nil || !second.Stop ||
		*second.GrowthBytes != second.CompressedBytes-first.CompressedBytes {
		t.Fatalf("second check %+v after %+v: want 8 tokens, growth = size difference, stop", second, first)
	}
}

func withPolicy(request lilsparse.Request, sparse *lilsparse.Sparse) lilsparse.Request {
	request.Sparse = sparse
	return request
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
