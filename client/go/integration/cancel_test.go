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

// waitForMetric polls the server's Prometheus endpoint until want(value) holds. It waits for a
// state, not a speed: the generous limit only stops a broken server from hanging the test.
func waitForMetric(t *testing.T, name string, want func(float64) bool, what string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		value, err := server.Metric(ctx, name)
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

// finishCounts reads how many requests the server finished as aborted and otherwise (length,
// eos, ...). They are counted before the running gauge drops, so final once it reads 0.
func finishCounts(t *testing.T) (aborted, other float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aborted, err := server.Metric(ctx, finishedCounter, "finish_reason=aborted")
	if err != nil {
		failWithLogs(t, "scraping %s: %v", finishedCounter, err)
	}
	all, err := server.Metric(ctx, finishedCounter)
	if err != nil {
		failWithLogs(t, "scraping %s: %v", finishedCounter, err)
	}
	return aborted, all - aborted
}

// checkAbortedMidStream fails unless every request the server finished since the counts
// before was aborted, the test's own among them: the server still ran it when the cancel or
// deadline reached it. At least one, not exactly one: a request an earlier test gave up on
// before the server accepted it may be aborted late, and no gauge shows it pending.
func checkAbortedMidStream(t *testing.T, abortedBefore, otherBefore float64) {
	t.Helper()
	aborted, other := finishCounts(t)
	if aborted < abortedBefore+1 || other != otherBefore {
		failWithLogs(t, "finished requests: aborted %v -> %v, otherwise %v -> %v; want ours aborted, none otherwise",
			abortedBefore, aborted, otherBefore, other)
	}
}

func TestCancelMidStreamFreesTheRequest(t *testing.T) {
	client := dial(t)
	info, err := client.Info(context.Background())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 before the test")
	abortedBefore, otherBefore := finishCounts(t)

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
	checkAbortedMidStream(t, abortedBefore, otherBefore)
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
	abortedBefore, otherBefore := finishCounts(t)
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
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 after the deadline")
	if accepted {
		checkAbortedMidStream(t, abortedBefore, otherBefore)
	}
}
