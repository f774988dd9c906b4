package integration

import (
	"context"
	"testing"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func TestGuardianShadowReportsTheStopWithoutStopping(t *testing.T) {
	client := dial(t)
	request := greedyRequest("Guardian shadow test", 30)
	// Every check after the first says stop; in shadow mode none is applied. The request ends 6
	// tokens after its last check, past the server's lag bound, so that check is in the report.
	request.Guardian = &lilsparse.Guardian{
		Enabled: lilsparse.Ptr(true), IntervalTokens: lilsparse.Ptr(8), ThresholdBytes: lilsparse.Ptr(1000000),
		Shadow: lilsparse.Ptr(true),
	}
	stream, err := client.Generate(context.Background(), request)
	if err != nil {
		failWithLogs(t, "Generate: %v", err)
	}
	if shadow := stream.Started().Options.Guardian.Shadow; shadow == nil || !*shadow {
		t.Fatalf("resolved guardian options %+v, want shadow true", stream.Started().Options.Guardian)
	}
	summary, err := stream.Summary()
	if err != nil {
		failWithLogs(t, "stream: %v", err)
	}
	guardian := summary.Guardian
	if summary.FinishReason != lilsparse.FinishLength || summary.CompletionTokens != 30 {
		t.Fatalf("finish %q after %d tokens, want length after 30", summary.FinishReason, summary.CompletionTokens)
	}
	// Checks at 8, 16 and 24; the second one would stop.
	if !guardian.Shadow || guardian.Checks != 3 || guardian.StopStep == nil || *guardian.StopStep != 16 ||
		guardian.AppliedAtStep != nil {
		t.Fatalf("guardian %+v: want shadow, 3 checks, would-stop step 16, not applied", guardian)
	}
}

func TestGuardianAnswerForcesAShortAnswerAfterTheStop(t *testing.T) {
	client := dial(t)
	request := greedyRequest("Guardian answer test", 64)
	request.Guardian = &lilsparse.Guardian{
		Enabled: lilsparse.Ptr(true), IntervalTokens: lilsparse.Ptr(4), ThresholdBytes: lilsparse.Ptr(1000000),
		Action: lilsparse.GuardianActionAnswer, AnswerMaxTokens: lilsparse.Ptr(3),
	}
	stream, err := client.Generate(context.Background(), request)
	if err != nil {
		failWithLogs(t, "Generate: %v", err)
	}
	if resolved := stream.Started().Options.Guardian; resolved.Action != lilsparse.GuardianActionAnswer ||
		resolved.AnswerMaxTokens == nil || *resolved.AnswerMaxTokens != 3 {
		t.Fatalf("resolved guardian options %+v, want action answer with 3 tokens", resolved)
	}
	answerTokens, tokens := 0, 0
	for stream.Next() {
		chunk := stream.Chunk()
		if answerTokens > 0 && chunk.AnswerTokens != chunk.TokenCount {
			t.Fatalf("chunk %+v after the answer began: every token must be an answer token", chunk)
		}
		answerTokens += chunk.AnswerTokens
		tokens += chunk.TokenCount
	}
	summary, err := stream.Summary()
	if err != nil {
		failWithLogs(t, "stream: %v", err)
	}
	g := summary.Guardian
	if summary.FinishReason != lilsparse.FinishEarlyStop || g.AnswerStartedAt == nil || g.StopStep == nil ||
		*g.StopStep != 8 || *g.AnswerStartedAt != *g.AppliedAtStep || g.AnswerTokens != 3 ||
		g.AnswerPromptTokens < 1 {
		t.Fatalf("finish %q, guardian %+v: want early_stop after the stop at 8 and a 3-token answer",
			summary.FinishReason, g)
	}
	if summary.CompletionTokens != *g.AnswerStartedAt+g.AnswerPromptTokens+3 || tokens != summary.CompletionTokens ||
		answerTokens != g.AnswerPromptTokens+3 {
		t.Fatalf("%d tokens (%d streamed, %d marked answer), guardian %+v", summary.CompletionTokens, tokens,
			answerTokens, g)
	}
}
