package lilsparse

import (
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"
)

func TestAbsentOptionsStayAbsentAndZeroIsSent(t *testing.T) {
	request := Request{Prompt: Text("hi"), Sampling: &Sampling{Temperature: Ptr(0.0)}}
	message, err := request.toProto()
	if err != nil {
		t.Fatal(err)
	}
	if message.GetText() != "hi" || message.RequestId != nil {
		t.Fatalf("input/request id wrong: %v", message)
	}
	if message.Sampling.Temperature == nil || *message.Sampling.Temperature != 0 {
		t.Fatalf("an explicit temperature 0 must be sent, got %v", message.Sampling)
	}
	if message.Sampling.TopP != nil || message.Sampling.TopK != nil || message.Sampling.Seed != nil {
		t.Fatalf("unset sampling fields must stay absent, got %v", message.Sampling)
	}
	if message.Stopping != nil || message.Sparse != nil || message.Guardian != nil {
		t.Fatalf("nil option groups must stay absent so server defaults apply: %v", message)
	}
}

func TestEveryOptionReachesTheProto(t *testing.T) {
	request := Request{
		RequestID: "r1",
		Prompt:    Chat(Message{Role: "system", Content: "be brief"}, Message{Role: "user", Content: "hi"}),
		Sampling:  &Sampling{Temperature: Ptr(0.7), TopK: Ptr(40), TopP: Ptr(0.9), Seed: Ptr(int64(7))},
		Stopping:  &Stopping{MaxNewTokens: Ptr(64), StopStrings: []string{"\n\n"}, IgnoreEOS: Ptr(true)},
		Sparse: &Sparse{Policy: PolicyInfLLM, BudgetTokens: Ptr(256), SinkTokens: Ptr(16),
			RecentTokens: Ptr(64), DenseLayers: Ptr(1)},
		Guardian: &Guardian{Enabled: Ptr(true), IntervalTokens: Ptr(100), ThresholdBytes: Ptr(0),
			Mode: GuardianModeIncremental, Source: GuardianSourceTokenIDs},
		Output: Output{TokenIDs: true, Logprobs: true, GuardianTrace: true},
	}
	message, err := request.toProto()
	if err != nil {
		t.Fatal(err)
	}
	chat := message.GetChat().GetMessages()
	if len(chat) != 2 || chat[0].Role != "system" || chat[1].Content != "hi" || message.GetRequestId() != "r1" {
		t.Fatalf("chat input %v", message)
	}
	sampling, stopping, sparse, guardian := message.Sampling, message.Stopping, message.Sparse, message.Guardian
	if sampling.GetTemperature() != 0.7 || sampling.GetTopK() != 40 || sampling.GetTopP() != 0.9 || sampling.GetSeed() != 7 {
		t.Fatalf("sampling %v", sampling)
	}
	if stopping.GetMaxNewTokens() != 64 || len(stopping.StopStrings) != 1 || !stopping.GetIgnoreEos() {
		t.Fatalf("stopping %v", stopping)
	}
	if sparse.Policy != pb.Policy_POLICY_INFLLM || sparse.GetBudgetTokens() != 256 || sparse.GetSinkTokens() != 16 ||
		sparse.GetRecentTokens() != 64 || sparse.GetDenseLayers() != 1 {
		t.Fatalf("sparse %v", sparse)
	}
	if !guardian.GetEnabled() || guardian.GetIntervalTokens() != 100 || guardian.ThresholdBytes == nil ||
		guardian.Mode != pb.GuardianMode_GUARDIAN_MODE_INCREMENTAL ||
		guardian.Source != pb.GuardianSource_GUARDIAN_SOURCE_TOKEN_IDS {
		t.Fatalf("guardian %v", guardian)
	}
	if !message.Output.ReturnTokenIds || !message.Output.ReturnLogprobs || !message.Output.ReturnGuardianTrace {
		t.Fatalf("output %v", message.Output)
	}
	// The resolved-options conversion is the inverse on the same values.
	back := resolvedFromProto(&pb.ResolvedOptions{Sampling: sampling, Stopping: stopping, Sparse: sparse, Guardian: guardian})
	if back.Sparse.Policy != PolicyInfLLM || *back.Sparse.BudgetTokens != 256 || back.Guardian.Mode != GuardianModeIncremental ||
		back.Guardian.Source != GuardianSourceTokenIDs || *back.Sampling.TopK != 40 || *back.Stopping.MaxNewTokens != 64 {
		t.Fatalf("round trip lost values: %+v", back)
	}
}

func TestClientSideRejectionsAreInvalidArgumentNamingTheField(t *testing.T) {
	cases := []struct {
		name    string
		request Request
		field   string
	}{
		{"no prompt", Request{}, "prompt"},
		{"int32 overflow", Request{Prompt: Text("x"), Stopping: &Stopping{MaxNewTokens: Ptr(1 << 33)}}, "max_new_tokens"},
		{"unknown policy", Request{Prompt: Text("x"), Sparse: &Sparse{Policy: "dense"}}, "policy"},
		{"unknown mode", Request{Prompt: Text("x"), Guardian: &Guardian{Mode: "zstd"}}, "mode"},
		{"unknown source", Request{Prompt: Text("x"), Guardian: &Guardian{Source: "bytes"}}, "source"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.request.toProto()
			callError, ok := err.(*Error)
			if !ok || callError.Code() != codes.InvalidArgument || callError.Field() != tc.field {
				t.Fatalf("error %v, want INVALID_ARGUMENT naming %q", err, tc.field)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	for _, name := range []string{"full", "sink", "h2o", "quest", "infllm"} {
		policy, err := ParsePolicy(name)
		if err != nil || string(policy) != name || policyFromProto(policyToProto[policy]) != policy {
			t.Fatalf("ParsePolicy(%q) = %q, %v", name, policy, err)
		}
	}
	if _, err := ParsePolicy(""); err == nil {
		t.Fatal("an empty policy name must be rejected")
	}
	if _, err := ParsePolicy("QUEST"); err == nil {
		t.Fatal("policy names are lower case, as in the proto's docs and the Python client")
	}
}
