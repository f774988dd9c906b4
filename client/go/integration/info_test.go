package integration

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/lil-sparse/lil-sparse/client/go/internal/testserver"
	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func TestGetInfoDescribesTheServedModel(t *testing.T) {
	info, err := dial(t).Info(context.Background())
	if err != nil {
		failWithLogs(t, "Info: %v", err)
	}
	config := testserver.DefaultConfig
	if filepath.Base(info.Model) != filepath.Base(server.ModelDir) || info.Architecture != config.Architecture {
		t.Fatalf("model %q (%s), want %s (%s)", info.Model, info.Architecture, server.ModelDir, config.Architecture)
	}
	if info.PageSize != config.PageSize || info.Limits.MaxRunning != config.MaxRunning ||
		info.Limits.MaxWaiting != config.MaxWaiting {
		t.Fatalf("page size %d, limits %+v: want the flags the server was started with (%+v)",
			info.PageSize, info.Limits, config)
	}
	if info.MaxContext <= 0 || info.Limits.MaxContext != info.MaxContext || info.NumLayers <= 0 ||
		info.NumPagesTotal <= 0 || info.Backend == "" || info.ServerVersion == "" {
		t.Fatalf("info %+v has empty or inconsistent fields", info)
	}
	if info.Selection != "exact" || info.OverlapScheduling || info.WarmUpSeconds != 0 { // the CPU server's resolved modes
		t.Fatalf("selection %q, overlap scheduling %v, warm-up %v s: want exact, off and none on CPU",
			info.Selection, info.OverlapScheduling, info.WarmUpSeconds)
	}
	offered := map[lilsparse.Policy]lilsparse.PolicyInfo{}
	for _, policy := range info.Policies {
		offered[policy.Policy] = policy
	}
	for _, want := range []lilsparse.Policy{
		lilsparse.PolicyFull, lilsparse.PolicySink, lilsparse.PolicyH2O, lilsparse.PolicyQuest, lilsparse.PolicyInfLLM,
	} {
		policy, ok := offered[want]
		if !ok {
			t.Fatalf("policy %q missing from %+v", want, info.Policies)
		}
		if want != lilsparse.PolicyFull && (policy.MinBudgetTokens != info.PageSize || policy.MaxBudgetTokens != info.MaxContext) {
			t.Fatalf("policy %+v: want budget range [page size %d, context %d]", policy, info.PageSize, info.MaxContext)
		}
	}
	defaults := info.DefaultOptions
	if defaults.Sparse.Policy == lilsparse.PolicyDefault || defaults.Stopping.MaxNewTokens == nil ||
		defaults.Sampling.Temperature == nil || defaults.Guardian.IntervalTokens == nil || defaults.Guardian.Mode == "" {
		t.Fatalf("default options %+v: want every field resolved", defaults)
	}
}
