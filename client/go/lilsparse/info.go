package lilsparse

import pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"

// Info describes a server: its model, KV geometry, policies, defaults and limits.
type Info struct {
	Model          string          `json:"model"`
	Architecture   string          `json:"architecture"`
	MaxContext     int             `json:"max_context"` // prompt plus output tokens per request
	PageSize       int             `json:"page_size"`   // tokens per KV page
	NumLayers      int             `json:"num_layers"`
	Backend        string          `json:"backend"` // attention backend, e.g. "torch"
	NumPagesTotal  int             `json:"num_pages_total"`
	Policies       []PolicyInfo    `json:"policies"`
	DefaultOptions ResolvedOptions `json:"default_options"`
	Limits         Limits          `json:"limits"`
	ServerVersion  string          `json:"server_version"`
	// Selection is when quest and infllm select pages: "exact" (every budget honoured) or
	// "when_faster" (a step may attend every held page where selection cannot pay; outputs then
	// depend on batch mates of the same policy).
	Selection string `json:"selection"`
	// OverlapScheduling: the server launches each decode step before handling the previous
	// step's tokens (outputs are the same either way).
	OverlapScheduling bool `json:"overlap_scheduling"`
	// WarmUpSeconds is how long the engine's start-up warm-up ran before the server served
	// (dummy requests through every policy, width and batch size); 0 when it did not run.
	WarmUpSeconds float64 `json:"warm_up_seconds"`
}

// PolicyInfo is one policy the server offers, with its default sparse options and budget range.
type PolicyInfo struct {
	Policy          Policy `json:"policy"`
	Defaults        Sparse `json:"defaults"`
	MinBudgetTokens int    `json:"min_budget_tokens"` // one page
	MaxBudgetTokens int    `json:"max_budget_tokens"` // the model's context
}

// Limits are the server's admission limits.
type Limits struct {
	MaxRunning int `json:"max_running"` // requests decoded concurrently
	MaxWaiting int `json:"max_waiting"` // queued beyond MaxRunning before RESOURCE_EXHAUSTED
	MaxContext int `json:"max_context"`
	// MaxNewTokensLimit caps Stopping.MaxNewTokens; above it the server answers INVALID_ARGUMENT.
	MaxNewTokensLimit int `json:"max_new_tokens_limit"`
	// MaxPromptBytes is the largest prompt accepted, in UTF-8 bytes.
	MaxPromptBytes int64 `json:"max_prompt_bytes"`
}

func infoFromProto(response *pb.GetInfoResponse) *Info {
	info := &Info{
		Model:          response.GetModel(),
		Architecture:   response.GetArchitecture(),
		MaxContext:     int(response.GetMaxContext()),
		PageSize:       int(response.GetPageSize()),
		NumLayers:      int(response.GetNumLayers()),
		Backend:        response.GetBackend(),
		NumPagesTotal:  int(response.GetNumPagesTotal()),
		DefaultOptions: resolvedFromProto(response.GetDefaultOptions()),
		Limits: Limits{
			MaxRunning: int(response.GetLimits().GetMaxRunning()),
			MaxWaiting: int(response.GetLimits().GetMaxWaiting()),
			MaxContext: int(response.GetLimits().GetMaxContext()),

			MaxNewTokensLimit: int(response.GetLimits().GetMaxNewTokensLimit()),
			MaxPromptBytes:    response.GetLimits().GetMaxPromptBytes(),
		},
		ServerVersion:     response.GetServerVersion(),
		Selection:         response.GetSelection(),
		OverlapScheduling: response.GetOverlapScheduling(),
		WarmUpSeconds:     response.GetWarmUpSeconds(),
	}
	for _, policy := range response.GetPolicies() {
		info.Policies = append(info.Policies, PolicyInfo{
			Policy:          policyFromProto(policy.GetPolicy()),
			Defaults:        sparseFromProto(policy.GetDefaults()),
			MinBudgetTokens: int(policy.GetMinBudgetTokens()),
			MaxBudgetTokens: int(policy.GetMaxBudgetTokens()),
		})
	}
	return info
}
