package lilsparse

import (
	"encoding/json"
	"math"
	"strings"

	pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"
)

// FinishReason says why a request stopped; the values match the Python client's.
type FinishReason string

// Finish reasons. A cancelled or timed-out call has none: its Stream ends with an error.
const (
	FinishLength     FinishReason = "length"      // max_new_tokens reached
	FinishEOS        FinishReason = "eos"         // the model emitted end-of-sequence
	FinishStopString FinishReason = "stop_string" // the output contains a stop string
	FinishEarlyStop  FinishReason = "early_stop"  // Guardian: the sequence stopped carrying information
	FinishAborted    FinishReason = "aborted"     // the server aborted it (shutdown)
)

func finishReasonFromProto(reason pb.FinishReason) FinishReason {
	// FINISH_REASON_EARLY_STOP -> early_stop; a newer server's unknown value still reads sensibly.
	return FinishReason(strings.ToLower(strings.TrimPrefix(reason.String(), "FINISH_REASON_")))
}

// Started is the first message of a stream: the request was accepted by the engine.
type Started struct {
	RequestID    string          `json:"request_id"`
	PromptTokens int             `json:"prompt_tokens"`
	Options      ResolvedOptions `json:"options"`
}

// ResolvedOptions are the options a request actually runs with, server defaults filled in:
// every pointer is set and every enum is named.
type ResolvedOptions struct {
	Sampling Sampling `json:"sampling"`
	Stopping Stopping `json:"stopping"`
	Sparse   Sparse   `json:"sparse"`
	Guardian Guardian `json:"guardian"`
}

// Chunk is newly generated text. Slow readers get merged chunks; no token is ever dropped, so
// the chunks' TokenCount sums to Summary.CompletionTokens.
type Chunk struct {
	TokenCount int      `json:"token_count"`
	Text       string   `json:"text"`                // may be empty mid multi-byte character
	TokenIDs   []int32  `json:"token_ids,omitempty"` // with Output.TokenIDs
	Logprobs   Logprobs `json:"logprobs,omitempty"`  // with Output.Logprobs
	// The last AnswerTokens tokens follow a Guardian stop with GuardianActionAnswer.
	AnswerTokens int `json:"answer_tokens,omitempty"`
}

// Summary is what a finished request reports, plus what the client gathered from its chunks.
type Summary struct {
	RequestID        string         `json:"request_id"`
	FinishReason     FinishReason   `json:"finish_reason"`
	PromptTokens     int            `json:"prompt_tokens"`
	CompletionTokens int            `json:"completion_tokens"`
	Text             string         `json:"text"`               // every chunk's text, in order
	TokenIDs         []int32        `json:"token_ids"`          // with Output.TokenIDs
	Logprobs         Logprobs       `json:"logprobs,omitempty"` // with Output.Logprobs (see Logprobs)
	Chunks           int            `json:"chunks"`             // chunk messages received
	Timings          Timings        `json:"timings"`
	Guardian         GuardianReport `json:"guardian"`
	KV               KVReport       `json:"kv"`
}

// Logprobs are the log-probabilities of generated tokens, one per token (natural log, <= 0),
// returned with Output.Logprobs. Summary.Logprobs joins every chunk's, in order, as the Python
// client's Summary.logprobs does; without Output.Logprobs it is nil and absent from JSON, as from
// lil-client's --json. The server sends NaN for the tokens of a forced Guardian answer prompt,
// which the model did not choose. JSON cannot hold NaN, so a non-finite value encodes as null,
// as lil-client's --json writes it, and null decodes back as NaN.
type Logprobs []float32

// MarshalJSON writes the values as a JSON array, null where a value is not finite.
func (l Logprobs) MarshalJSON() ([]byte, error) {
	if l == nil {
		return []byte("null"), nil
	}
	values := make([]*float32, len(l))
	for i, value := range l {
		if !math.IsNaN(float64(value)) && !math.IsInf(float64(value), 0) {
			values[i] = &l[i]
		}
	}
	return json.Marshal(values)
}

// UnmarshalJSON reads a JSON array, null as NaN.
func (l *Logprobs) UnmarshalJSON(data []byte) error {
	var values []*float32
	if err := json.Unmarshal(data, &values); err != nil {
		return err
	}
	if values == nil {
		*l = nil
		return nil
	}
	decoded := make(Logprobs, len(values))
	for i, value := range values {
		decoded[i] = float32(math.NaN())
		if value != nil {
			decoded[i] = *value
		}
	}
	*l = decoded
	return nil
}

// Timings are the engine's latencies in seconds.
type Timings struct {
	QueueSeconds   float64 `json:"queue_seconds"`    // arrival -> prefill start
	TTFTSeconds    float64 `json:"ttft_seconds"`     // arrival -> first token
	TBTMeanSeconds float64 `json:"tbt_mean_seconds"` // mean gap between tokens
	TBTP50Seconds  float64 `json:"tbt_p50_seconds"`
	TBTP95Seconds  float64 `json:"tbt_p95_seconds"`
	DecodeSeconds  float64 `json:"decode_seconds"` // first token -> last token
	JCTSeconds     float64 `json:"jct_seconds"`    // arrival -> finish
}

// GuardianReport is Guardian's trajectory for one request.
type GuardianReport struct {
	Enabled         bool            `json:"enabled"`
	Checks          int             `json:"checks"`
	CompressedBytes []int64         `json:"compressed_bytes"`
	StopStep        *int            `json:"stop_step"`       // nil when no check said stop
	AppliedAtStep   *int            `json:"applied_at_step"` // nil when not stopped
	CPUSeconds      float64         `json:"cpu_seconds"`
	Trace           []GuardianCheck `json:"trace,omitempty"` // with Output.GuardianTrace
	// Shadow: the verdicts were recorded, never applied; StopStep is where Guardian would have
	// stopped and AppliedAtStep stays nil.
	Shadow bool `json:"shadow"`
	// With GuardianActionAnswer: thinking tokens before the forced answer prompt (nil when no
	// answer was forced), the prompt's tokens, and the tokens the model answered with.
	AnswerStartedAt    *int `json:"answer_started_at"`
	AnswerPromptTokens int  `json:"answer_prompt_tokens"`
	AnswerTokens       int  `json:"answer_tokens"`
}

// GuardianCheck is one Guardian check.
type GuardianCheck struct {
	GeneratedTokens int     `json:"generated_tokens"`
	CompressedBytes int64   `json:"compressed_bytes"`
	GrowthBytes     *int64  `json:"growth_bytes"` // nil on the first check
	Stop            bool    `json:"stop"`
	CPUSeconds      float64 `json:"cpu_seconds"`
}

// KVReport is the KV cache use of one request, in one-head pages over all KV heads.
type KVReport struct {
	PeakPages            int       `json:"peak_pages"`
	AttendedPagesPerStep []float64 `json:"attended_pages_per_step"`
	MeanAttendedPages    float64   `json:"mean_attended_pages"`
}

func startedFromProto(started *pb.Started) Started {
	return Started{
		RequestID:    started.GetRequestId(),
		PromptTokens: int(started.GetPromptTokens()),
		Options:      resolvedFromProto(started.GetOptions()),
	}
}

func resolvedFromProto(options *pb.ResolvedOptions) ResolvedOptions {
	return ResolvedOptions{
		Sampling: samplingFromProto(options.GetSampling()),
		Stopping: stoppingFromProto(options.GetStopping()),
		Sparse:   sparseFromProto(options.GetSparse()),
		Guardian: guardianFromProto(options.GetGuardian()),
	}
}

func chunkFromProto(chunk *pb.Chunk) Chunk {
	return Chunk{
		TokenCount:   int(chunk.GetTokenCount()),
		Text:         chunk.GetText(),
		TokenIDs:     chunk.GetTokenIds(),
		Logprobs:     chunk.GetLogprobs(),
		AnswerTokens: int(chunk.GetAnswerTokens()),
	}
}

// addChunk joins a chunk into the summary the stream gathers: its text, token ids and logprobs
// are appended in order, as the Python client's Summary joins them.
func (s *Summary) addChunk(chunk Chunk) {
	s.Chunks++
	s.Text += chunk.Text
	s.TokenIDs = append(s.TokenIDs, chunk.TokenIDs...)
	s.Logprobs = append(s.Logprobs, chunk.Logprobs...)
}

// fillFromFinished copies the server's final report into the summary the stream has been
// gathering (request id, text, token ids, logprobs and chunk count are already there).
func (s *Summary) fillFromFinished(finished *pb.Finished) {
	s.FinishReason = finishReasonFromProto(finished.GetFinishReason())
	s.PromptTokens = int(finished.GetUsage().GetPromptTokens())
	s.CompletionTokens = int(finished.GetUsage().GetCompletionTokens())
	timings := finished.GetTimings()
	s.Timings = Timings{
		QueueSeconds:   timings.GetQueueSeconds(),
		TTFTSeconds:    timings.GetTtftSeconds(),
		TBTMeanSeconds: timings.GetTbtMeanSeconds(),
		TBTP50Seconds:  timings.GetTbtP50Seconds(),
		TBTP95Seconds:  timings.GetTbtP95Seconds(),
		DecodeSeconds:  timings.GetDecodeSeconds(),
		JCTSeconds:     timings.GetJctSeconds(),
	}
	guardian := finished.GetGuardian()
	s.Guardian = GuardianReport{
		Enabled:            guardian.GetEnabled(),
		Checks:             int(guardian.GetChecks()),
		CompressedBytes:    guardian.GetCompressedBytes(),
		StopStep:           optionalInt(guardian.StopStep),
		AppliedAtStep:      optionalInt(guardian.AppliedAtStep),
		CPUSeconds:         guardian.GetCpuSeconds(),
		Shadow:             guardian.GetShadow(),
		AnswerStartedAt:    optionalInt(guardian.AnswerStartedAt),
		AnswerPromptTokens: int(guardian.GetAnswerPromptTokens()),
		AnswerTokens:       int(guardian.GetAnswerTokens()),
	}
	for _, check := range guardian.GetTrace() {
		s.Guardian.Trace = append(s.Guardian.Trace, GuardianCheck{
			GeneratedTokens: int(check.GetGeneratedTokens()),
			CompressedBytes: check.GetCompressedBytes(),
			GrowthBytes:     check.GrowthBytes,
			Stop:            check.GetStop(),
			CPUSeconds:      check.GetCpuSeconds(),
		})
	}
	kv := finished.GetKv()
	s.KV = KVReport{
		PeakPages:            int(kv.GetPeakPages()),
		AttendedPagesPerStep: kv.GetAttendedPagesPerStep(),
		MeanAttendedPages:    kv.GetMeanAttendedPages(),
	}
}

// emptySlicesNotNil makes absent lists encode as [] rather than null in JSON, as in Python.
func (s *Summary) emptySlicesNotNil() {
	if s.TokenIDs == nil {
		s.TokenIDs = []int32{}
	}
	if s.Guardian.CompressedBytes == nil {
		s.Guardian.CompressedBytes = []int64{}
	}
	if s.KV.AttendedPagesPerStep == nil {
		s.KV.AttendedPagesPerStep = []float64{}
	}
}

func optionalInt(value *int32) *int {
	if value == nil {
		return nil
	}
	return Ptr(int(*value))
}

func samplingFromProto(options *pb.SamplingOptions) Sampling {
	if options == nil {
		return Sampling{}
	}
	return Sampling{
		Temperature: options.Temperature,
		TopK:        optionalInt(options.TopK),
		TopP:        options.TopP,
		Seed:        options.Seed,
	}
}

func stoppingFromProto(options *pb.StoppingOptions) Stopping {
	if options == nil {
		return Stopping{}
	}
	return Stopping{
		MaxNewTokens: optionalInt(options.MaxNewTokens),
		StopStrings:  options.GetStopStrings(),
		IgnoreEOS:    options.IgnoreEos,
	}
}

func sparseFromProto(options *pb.SparseOptions) Sparse {
	if options == nil {
		return Sparse{}
	}
	return Sparse{
		Policy:       policyFromProto(options.GetPolicy()),
		BudgetTokens: optionalInt(options.BudgetTokens),
		SinkTokens:   optionalInt(options.SinkTokens),
		RecentTokens: optionalInt(options.RecentTokens),
		DenseLayers:  optionalInt(options.DenseLayers),
	}
}

func guardianFromProto(options *pb.GuardianOptions) Guardian {
	if options == nil {
		return Guardian{}
	}
	guardian := Guardian{
		Enabled:         options.Enabled,
		IntervalTokens:  optionalInt(options.IntervalTokens),
		ThresholdBytes:  optionalInt(options.ThresholdBytes),
		Shadow:          options.Shadow,
		AnswerMaxTokens: optionalInt(options.AnswerMaxTokens),
	}
	switch options.GetAction() {
	case pb.GuardianAction_GUARDIAN_ACTION_TRUNCATE:
		guardian.Action = GuardianActionTruncate
	case pb.GuardianAction_GUARDIAN_ACTION_ANSWER:
		guardian.Action = GuardianActionAnswer
	}
	switch options.GetMode() {
	case pb.GuardianMode_GUARDIAN_MODE_FULL:
		guardian.Mode = GuardianModeFull
	case pb.GuardianMode_GUARDIAN_MODE_INCREMENTAL:
		guardian.Mode = GuardianModeIncremental
	}
	switch options.GetSource() {
	case pb.GuardianSource_GUARDIAN_SOURCE_TEXT:
		guardian.Source = GuardianSourceText
	case pb.GuardianSource_GUARDIAN_SOURCE_TOKEN_IDS:
		guardian.Source = GuardianSourceTokenIDs
	}
	return guardian
}
