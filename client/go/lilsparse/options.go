package lilsparse

import (
	"fmt"
	"math"

	pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"
)

// Ptr returns a pointer to v. Optional option fields are pointers because the proto tells an
// absent value (take the server default) from an explicit zero (temperature 0 is greedy).
func Ptr[T any](v T) *T { return &v }

// Policy names a KV page-selection policy. The zero value takes the server's default.
type Policy string

// The policies the server offers (GetInfo lists them with their defaults).
const (
	PolicyDefault Policy = ""
	PolicyFull    Policy = "full"
	PolicySink    Policy = "sink"
	PolicyH2O     Policy = "h2o"
	PolicyQuest   Policy = "quest"
	PolicyInfLLM  Policy = "infllm"
)

var policyToProto = map[Policy]pb.Policy{
	PolicyDefault: pb.Policy_POLICY_UNSPECIFIED,
	PolicyFull:    pb.Policy_POLICY_FULL,
	PolicySink:    pb.Policy_POLICY_SINK,
	PolicyH2O:     pb.Policy_POLICY_H2O,
	PolicyQuest:   pb.Policy_POLICY_QUEST,
	PolicyInfLLM:  pb.Policy_POLICY_INFLLM,
}

// ParsePolicy maps a policy name ("quest") to a Policy, or fails naming the known ones.
func ParsePolicy(name string) (Policy, error) {
	policy := Policy(name)
	if _, ok := policyToProto[policy]; !ok || policy == PolicyDefault {
		return "", fmt.Errorf("policy: unknown policy %q; choose one of full, sink, h2o, quest, infllm", name)
	}
	return policy, nil
}

func policyFromProto(policy pb.Policy) Policy {
	for name, value := range policyToProto {
		if value == policy {
			return name
		}
	}
	return Policy(policy.String())
}

// GuardianMode picks how Guardian compresses: "full" recompresses everything (the Lil paper),
// "incremental" streams only the new bytes. The zero value takes the server's default.
type GuardianMode string

// Guardian compression modes.
const (
	GuardianModeDefault     GuardianMode = ""
	GuardianModeFull        GuardianMode = "full"
	GuardianModeIncremental GuardianMode = "incremental"
)

// GuardianAction picks what a Guardian stop does: "truncate" ends the request (the Lil paper),
// "answer" appends an answer prompt and lets the model answer briefly. The zero value takes the
// server's default.
type GuardianAction string

// Guardian stop actions.
const (
	GuardianActionDefault  GuardianAction = ""
	GuardianActionTruncate GuardianAction = "truncate"
	GuardianActionAnswer   GuardianAction = "answer"
)

// GuardianSource picks which bytes Guardian compresses. The zero value takes the server default.
type GuardianSource string

// Guardian byte sources.
const (
	GuardianSourceDefault  GuardianSource = ""
	GuardianSourceText     GuardianSource = "text"
	GuardianSourceTokenIDs GuardianSource = "token_ids"
)

// Sampling mirrors lil_sparse.v1.SamplingOptions; nil fields take the server's defaults.
type Sampling struct {
	Temperature *float64 `json:"temperature,omitempty"` // >= 0; 0 is greedy
	TopK        *int     `json:"top_k,omitempty"`       // >= 0; 0 disables top-k
	TopP        *float64 `json:"top_p,omitempty"`       // in (0, 1]; 1 disables nucleus sampling
	Seed        *int64   `json:"seed,omitempty"`        // in [0, 2^63) for reproducible sampling
}

// Stopping mirrors lil_sparse.v1.StoppingOptions; nil fields take the server's defaults.
type Stopping struct {
	MaxNewTokens *int     `json:"max_new_tokens,omitempty"` // >= 1
	StopStrings  []string `json:"stop_strings,omitempty"`
	IgnoreEOS    *bool    `json:"ignore_eos,omitempty"`
}

// Sparse mirrors lil_sparse.v1.SparseOptions; nil fields take the server's defaults.
type Sparse struct {
	Policy       Policy `json:"policy,omitempty"`
	BudgetTokens *int   `json:"budget_tokens,omitempty"` // KV tokens attended per decode step, rounded down to whole pages
	SinkTokens   *int   `json:"sink_tokens,omitempty"`
	RecentTokens *int   `json:"recent_tokens,omitempty"`
	DenseLayers  *int   `json:"dense_layers,omitempty"`
}

// Guardian mirrors lil_sparse.v1.GuardianOptions (early stop when the compressed sequence stops
// growing); nil fields take the server's defaults.
type Guardian struct {
	Enabled        *bool          `json:"enabled,omitempty"`
	IntervalTokens *int           `json:"interval_tokens,omitempty"` // generated tokens between checks, >= 1
	ThresholdBytes *int           `json:"threshold_bytes,omitempty"` // minimum compressed growth between checks to keep going, >= 0
	Mode           GuardianMode   `json:"mode,omitempty"`
	Source         GuardianSource `json:"source,omitempty"`
	// Shadow records where Guardian would stop (GuardianReport.StopStep) without stopping.
	Shadow *bool `json:"shadow,omitempty"`
	// Action is what a stop does; AnswerMaxTokens bounds the answer with GuardianActionAnswer (>= 1).
	Action          GuardianAction `json:"action,omitempty"`
	AnswerMaxTokens *int           `json:"answer_max_tokens,omitempty"`
}

// Output mirrors lil_sparse.v1.OutputOptions: what the stream carries besides text.
type Output struct {
	TokenIDs      bool // fill Chunk.TokenIDs
	Logprobs      bool // fill Chunk.Logprobs
	GuardianTrace bool // fill Summary.Guardian.Trace
}

// Request is one generation request. Exactly one prompt form must be set; option groups left
// nil take the server's defaults, which Stream.Started reports as resolved.
type Request struct {
	RequestID string // optional; empty lets the server choose one
	Prompt    Prompt
	Sampling  *Sampling
	Stopping  *Stopping
	Sparse    *Sparse
	Guardian  *Guardian
	Output    Output
	// AllowSpecialTokens parses control tokens such as "<|im_start|>" written in the prompt;
	// nil or false reads them as plain text, so user text cannot forge a chat turn.
	AllowSpecialTokens *bool
}

func (r *Request) toProto() (*pb.GenerateRequest, error) {
	if r.Prompt == nil {
		return nil, invalidArgument("prompt: is required (Text, Chat or TokenIDs)")
	}
	request := &pb.GenerateRequest{
		Output: &pb.OutputOptions{
			ReturnTokenIds:      r.Output.TokenIDs,
			ReturnLogprobs:      r.Output.Logprobs,
			ReturnGuardianTrace: r.Output.GuardianTrace,
		},
	}
	if r.RequestID != "" {
		request.RequestId = Ptr(r.RequestID)
	}
	request.AllowSpecialTokens = r.AllowSpecialTokens
	r.Prompt.setOn(request)
	var err error
	if request.Sampling, err = r.Sampling.toProto(); err != nil {
		return nil, err
	}
	if request.Stopping, err = r.Stopping.toProto(); err != nil {
		return nil, err
	}
	if request.Sparse, err = r.Sparse.toProto(); err != nil {
		return nil, err
	}
	if request.Guardian, err = r.Guardian.toProto(); err != nil {
		return nil, err
	}
	return request, nil
}

func (s *Sampling) toProto() (*pb.SamplingOptions, error) {
	if s == nil {
		return nil, nil
	}
	topK, err := toInt32("top_k", s.TopK)
	if err != nil {
		return nil, err
	}
	return &pb.SamplingOptions{Temperature: s.Temperature, TopK: topK, TopP: s.TopP, Seed: s.Seed}, nil
}

func (s *Stopping) toProto() (*pb.StoppingOptions, error) {
	if s == nil {
		return nil, nil
	}
	maxNewTokens, err := toInt32("max_new_tokens", s.MaxNewTokens)
	if err != nil {
		return nil, err
	}
	return &pb.StoppingOptions{MaxNewTokens: maxNewTokens, StopStrings: s.StopStrings, IgnoreEos: s.IgnoreEOS}, nil
}

func (s *Sparse) toProto() (*pb.SparseOptions, error) {
	if s == nil {
		return nil, nil
	}
	policy, ok := policyToProto[s.Policy]
	if !ok {
		return nil, invalidArgument(fmt.Sprintf("policy: unknown policy %q", s.Policy))
	}
	options := &pb.SparseOptions{Policy: policy}
	fields := []struct {
		name   string
		value  *int
		target **int32
	}{
		{"budget_tokens", s.BudgetTokens, &options.BudgetTokens},
		{"sink_tokens", s.SinkTokens, &options.SinkTokens},
		{"recent_tokens", s.RecentTokens, &options.RecentTokens},
		{"dense_layers", s.DenseLayers, &options.DenseLayers},
	}
	for _, field := range fields {
		converted, err := toInt32(field.name, field.value)
		if err != nil {
			return nil, err
		}
		*field.target = converted
	}
	return options, nil
}

func (g *Guardian) toProto() (*pb.GuardianOptions, error) {
	if g == nil {
		return nil, nil
	}
	interval, err := toInt32("interval_tokens", g.IntervalTokens)
	if err != nil {
		return nil, err
	}
	threshold, err := toInt32("threshold_bytes", g.ThresholdBytes)
	if err != nil {
		return nil, err
	}
	answerMaxTokens, err := toInt32("answer_max_tokens", g.AnswerMaxTokens)
	if err != nil {
		return nil, err
	}
	options := &pb.GuardianOptions{
		Enabled: g.Enabled, IntervalTokens: interval, ThresholdBytes: threshold, Shadow: g.Shadow,
		AnswerMaxTokens: answerMaxTokens,
	}
	switch g.Action {
	case GuardianActionDefault:
	case GuardianActionTruncate:
		options.Action = pb.GuardianAction_GUARDIAN_ACTION_TRUNCATE
	case GuardianActionAnswer:
		options.Action = pb.GuardianAction_GUARDIAN_ACTION_ANSWER
	default:
		return nil, invalidArgument(fmt.Sprintf("action: must be 'truncate' or 'answer', got %q", g.Action))
	}
	switch g.Mode {
	case GuardianModeDefault:
	case GuardianModeFull:
		options.Mode = pb.GuardianMode_GUARDIAN_MODE_FULL
	case GuardianModeIncremental:
		options.Mode = pb.GuardianMode_GUARDIAN_MODE_INCREMENTAL
	default:
		return nil, invalidArgument(fmt.Sprintf("mode: must be 'full' or 'incremental', got %q", g.Mode))
	}
	switch g.Source {
	case GuardianSourceDefault:
	case GuardianSourceText:
		options.Source = pb.GuardianSource_GUARDIAN_SOURCE_TEXT
	case GuardianSourceTokenIDs:
		options.Source = pb.GuardianSource_GUARDIAN_SOURCE_TOKEN_IDS
	default:
		return nil, invalidArgument(fmt.Sprintf("source: must be 'text' or 'token_ids', got %q", g.Source))
	}
	return options, nil
}

// toInt32 narrows an optional Go int to the proto's int32; out-of-range values fail here, as
// INVALID_ARGUMENT naming the field, instead of silently wrapping around.
func toInt32(field string, value *int) (*int32, error) {
	if value == nil {
		return nil, nil
	}
	if *value < math.MinInt32 || *value > math.MaxInt32 {
		return nil, invalidArgument(fmt.Sprintf("%s: %d does not fit in int32", field, *value))
	}
	return Ptr(int32(*value)), nil
}
