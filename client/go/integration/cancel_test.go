package integration

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

const (
	runningGauge = "lil_sparse_requests_running"
	kvUsageGauge = "lil_sparse_kv_cache_usage_ratio"
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

func TestCancelMidStreamFreesTheRequest(t *testing.T) {
	client := dial(t)
	info, err := client.Info(context.Background())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 before the test")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// As long as the context allows, so the request is surely still running when cancelled.
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
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 1 }, "1 while streaming")
	waitForMetric(t, kvUsageGauge, func(v float64) bool { return v > 0 }, "> 0 while streaming")

	cancel()
	for stream.Next() {
		// Chunks already in flight may still arrive; the stream must then end with CANCELED.
	}
	if code := lilsparse.Code(stream.Err()); code != codes.Canceled {
		t.Fatalf("stream error %v has code %v, want CANCELED", stream.Err(), code)
	}
	if _, err := stream.Summary(); lilsparse.Code(err) != codes.Canceled {
		t.Fatalf("Summary after cancel: %v, want CANCELED", err)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 after cancel")
	waitForMetric(t, kvUsageGauge, func(v float64) bool { return v == 0 }, "0 after cancel (pages freed)")
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
	// The deadline may strike before or after the server accepts: both must say DEADLINE_EXCEEDED.
	stream, err := client.Generate(context.Background(), greedyRequest("too slow", info.MaxContext-32))
	if err == nil {
		_, err = stream.Summary()
	}
	if code := lilsparse.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("error %v has code %v, want DEADLINE_EXCEEDED", err, code)
	}
	waitForMetric(t, runningGauge, func(v float64) bool { return v == 0 }, "0 after the deadline")
}
