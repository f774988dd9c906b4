package integration

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

const (
	runningGauge    = "lil_sparse_requests_running"
	kvUsageGauge    = "lil_sparse_kv_cache_usage_ratio"
	finishedCounter = "lil_sparse_requests_finished_total"
)

// waitForMetric polls the server's Prometheus endpoint until want(value) holds, value summing
// the samples of name with the given labels (label=value). It waits for a state, not a speed:
// the generous limit only stops a broken server from hanging the test.
func waitForMetric(t *testing.T, name string, want func(float64) bool, what string, labels ...string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		value, err := server.Metric(ctx, name, labels...)
		if err == nil && want(value) {
			return value
		}
		select {
		case <-ctx.Done():
			failWithLogs(t, "%s never became %s (last %v, err %v)", name, what, value, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pauseServer freezes the shared server (testserver.Server.Pause) until resume is called or
// the test ends, whichever comes first: a failing test must not leave it frozen for the next.
func pauseServer(t *testing.T) (resume func()) {
	t.Helper()
	if err := server.Pause(); err != nil {
		t.Fatalf("pausing the server: %v", err)
	}
	resume = func() {
		if err := server.Resume(); err != nil {
			t.Errorf("resuming the server: %v", err)
		}
	}
	t.Cleanup(resume) // resuming twice is harmless
	return resume
}

// finishCounts reads how many requests the server finished as cancelled (aborted because the
// client went away: a cancel or a deadline) and by length.
func finishCounts(t *testing.T) (cancelled, length float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cancelled, err := server.Metric(ctx, finishedCounter, "finish_reason=cancelled")
	if err == nil {
		length, err = server.Metric(ctx, finishedCounter, "finish_reason=length")
	}
	if err != nil {
		failWithLogs(t, "scraping %s: %v", finishedCounter, err)
	}
	return cancelled, length
}

// checkAbortedMidStream waits until the server aborted a request for its client's cancel or
// deadline (counted finish_reason="cancelled", apart from the server's own aborts) since the
// counts before and fails if one ran to its length meanwhile: the test's request (no EOS, no
// stop, no Guardian) ends one way or the other, and cancelled means the server still ran it when
// the cancel or deadline reached it. At least one, not exactly one: a request an earlier test
// gave up on before the server accepted it may be aborted late.
func checkAbortedMidStream(t *testing.T, abortedBefore, lengthBefore float64) {
	t.Helper()
	waitForMetric(t, finishedCounter, func(v float64) bool { return v > abortedBefore }, "one more cancelled than before",
		"finish_reason=cancelled")
	if _, length := finishCounts(t); length != lengthBefore {
		failWithLogs(t, "%v requests ran to their length, want none: the stream ended before the cancel or deadline",
			length-lengthBefore)
	}
}

func TestCancelMidStreamFreesTheRequest(t *testing.T) {
	client := dial(t)
	info, err := client.Info(context.Background())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 before the test")
	abortedBefore, lengthBefore := finishCounts(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// As long as the context allows (about 2000 tokens, seconds on the tiny model), so the
	// stream outlasts the two chunks and the scrapes below.
	request := greedyRequest("cancel me please", info.MaxContext-32)
	stream, err := client.Generate(ctx, request)
	if err != nil {
		failWithLogs(t, "Generate: %v", err)
	}
	for i := 0; i < 2; i++ {
		if !stream.Next() {
			failWithLogs(t, "the stream ended after %d chunks: %v", i, stream.Err())
		}
	}
	// Scraped before the pause: a paused server answers no scrape.
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 1 }, "1 while streaming")
	waitForMetric(t, kvUsageGauge, func(v float64) bool { return v > 0 }, "> 0 while streaming")

	// Paused, the server cannot finish the stream before the cancel reaches it, however this
	// test is scheduled: it sees the cancel first thing when it resumes.
	resume := pauseServer(t)
	cancel()
	for stream.Next() {
		// Chunks already in flight may still arrive; the stream must then end with CANCELED, at
		// once: the client ends a cancelled call itself, the paused server sends nothing.
	}
	resume()
	if code := lilsparse.Code(stream.Err()); code != codes.Canceled {
		t.Fatalf("stream error %v has code %v, want CANCELED", stream.Err(), code)
	}
	if _, err := stream.Summary(); lilsparse.Code(err) != codes.Canceled {
		t.Fatalf("Summary after cancel: %v, want CANCELED", err)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 after cancel")
	waitForMetric(t, kvUsageGauge, func(v float64) bool { return v == 0 }, "0 after cancel (pages freed)")
	checkAbortedMidStream(t, abortedBefore, lengthBefore)
}

func TestCallTimeoutIsDeadlineExceeded(t *testing.T) {
	client, err := lilsparse.Dial(context.Background(), server.Address, lilsparse.WithCallTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer client.Close()
	info, err := dial(t).Info(context.Background())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 before the test")
	abortedBefore, lengthBefore := finishCounts(t)
	// The deadline may strike before or after the server accepts: both must say DEADLINE_EXCEEDED.
	stream, err := client.Generate(context.Background(), greedyRequest("too slow", info.MaxContext-32))
	accepted := err == nil
	if accepted {
		// Paused, the server cannot finish the stream before the deadline, however fast it runs.
		resume := pauseServer(t)
		_, err = stream.Summary()
		resume()
	}
	if code := lilsparse.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("error %v has code %v, want DEADLINE_EXCEEDED", err, code)
	}
	if accepted {
		checkAbortedMidStream(t, abortedBefore, lengthBefore)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 after the deadline")
}
