package integration

import (
	"context"
	"testing"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func TestGuardianShadowReportsTheStopWithoutStopping(t *testing.T) {
	client := dial(t)
	request := greedyRequest("Guardian shadow test", 20)
	// Every check after the first says stop; in shadow mode none is applied.
	request.Guardian = &lilsparse.Guardian{
		Enabled: lilsparse.Ptr(true), IntervalTokens: lilsparse.Ptr(4), ThresholdBytes: lilsparse.Ptr(1000000),
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
	if summary.FinishReason != lilsparse.FinishLength || summary.CompletionTokens != 20 {
		t.Fatalf("finish %q after %d tokens, want length after 20", summary.FinishReason, summary.CompletionTokens)
	}
	// Checks at 4, 8, 12, 16 (the length stop at 20 comes first); the second one would stop.
	if !guardian.Shadow || guardian.Checks != 4 || guardian.StopStep == nil || *guardian.StopStep != 8 ||
		guardian.AppliedAtStep != nil {
		t.Fatalf("guardian %+v: want shadow, 4 checks, would-stop step 8, not applied", guardian)
	}
}
