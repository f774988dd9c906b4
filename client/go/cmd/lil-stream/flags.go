package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

// options are the parsed command line. Option flags the user did not give stay unset in the
// request, so the server's defaults apply (as in the Python lil-client).
type options struct {
	address   string
	useTLS    bool
	tls       lilsparse.TLSFiles
	tokenFile string
	timeout   time.Duration
	json      bool
	info      bool
	chat      bool
	raw       bool
	request   lilsparse.Request
	showHelp  bool
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// parseFlags reads `lil-stream [flags] PROMPT...`; the prompt words are joined with spaces.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	flags := flag.NewFlagSet("lil-stream", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: lil-stream [flags] PROMPT...\n\nStreams a completion from a lil-sparse server, then prints a summary.")
		flags.PrintDefaults()
	}
	parsed := &options{}
	flags.StringVar(&parsed.address, "address", "localhost:50051", "server address host:port")
	flags.BoolVar(&parsed.useTLS, "tls", false, "dial with TLS (system root CAs unless -ca-file)")
	flags.StringVar(&parsed.tls.CAFile, "ca-file", "", "PEM CA bundle to verify the server (turns on TLS)")
	flags.StringVar(&parsed.tls.CertFile, "cert-file", "", "PEM client certificate for mTLS (with -key-file)")
	flags.StringVar(&parsed.tls.KeyFile, "key-file", "", "PEM private key of -cert-file")
	flags.StringVar(&parsed.tls.ServerName, "server-name", "", "name to check the server certificate against")
	flags.StringVar(&parsed.tokenFile, "token-file", "", "file holding the bearer token to send")
	allowSpecial := flags.Bool("allow-special-tokens", false, "parse control tokens such as <|im_start|> in the prompt")
	flags.DurationVar(&parsed.timeout, "timeout", 0, "deadline for the whole call, e.g. 30s (0: none)")
	flags.BoolVar(&parsed.json, "json", false, "print one JSON object (the summary) instead of live text")
	flags.BoolVar(&parsed.info, "info", false, "show the served model, policies and defaults instead")
	flags.BoolVar(&parsed.raw, "raw", false, "send the prompt text as is, without the chat template")
	flags.BoolVar(&parsed.chat, "chat", false, "the default (one user chat message); kept for old scripts")
	requestID := flags.String("request-id", "", "request id (default: the server picks one)")

	temperature := flags.Float64("temperature", 0, "sampling temperature (0 greedy)")
	topK := flags.Int("top-k", 0, "top-k filter (0 off)")
	topP := flags.Float64("top-p", 1, "nucleus mass in (0, 1] (1 off)")
	seed := flags.Int64("seed", 0, "sampling seed")
	maxNewTokens := flags.Int("max-new-tokens", 0, "maximum generated tokens")
	var stops stringList
	flags.Var(&stops, "stop", "stop string (repeatable)")
	ignoreEOS := flags.Bool("ignore-eos", false, "keep generating past end-of-sequence")

	policy := flags.String("policy", "", "sparse policy: full, sink, h2o, quest, infllm (any case)")
	budget := flags.Int("budget", 0, "KV tokens attended per decode step")
	sinkTokens := flags.Int("sink-tokens", 0, "attention-sink tokens kept (sink, infllm)")
	recentTokens := flags.Int("recent-tokens", 0, "recent tokens kept (h2o, infllm)")
	denseLayers := flags.Int("dense-layers", 0, "leading dense layers (quest, infllm)")

	guardian := flags.Bool("guardian", false, "enable Guardian early stop")
	interval := flags.Int("guardian-interval", 0, "Guardian: tokens between checks")
	threshold := flags.Int("guardian-threshold", 0, "Guardian: minimum compressed growth in bytes")
	mode := flags.String("guardian-mode", "", "Guardian: full or incremental")
	source := flags.String("guardian-source", "", "Guardian: text or token_ids")
	shadow := flags.Bool("guardian-shadow", false, "Guardian: record where it would stop, without stopping")
	action := flags.String("guardian-action", "", "Guardian: what a stop does, truncate or answer")
	answerMax := flags.Int("guardian-answer-max-tokens", 0, "Guardian: tokens of the answer (-guardian-action answer)")

	flags.BoolVar(&parsed.request.Output.TokenIDs, "token-ids", false, "return token ids (printed after the summary, or in -json)")
	flags.BoolVar(&parsed.request.Output.Logprobs, "logprobs", false, "return logprobs (printed after the summary, or in -json)")
	flags.BoolVar(&parsed.request.Output.GuardianTrace, "guardian-trace", false, "return the Guardian trace (printed after the summary, or in -json)")

	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			parsed.showHelp = true
			return parsed, nil
		}
		return nil, err
	}
	given := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { given[f.Name] = true })

	request := &parsed.request
	request.RequestID = *requestID
	if given["allow-special-tokens"] {
		request.AllowSpecialTokens = allowSpecial
	}
	if parsed.tls.CAFile != "" || parsed.tls.CertFile != "" {
		parsed.useTLS = true
	}
	if err := flagAfterPrompt(flags, args); err != nil {
		return nil, err
	}
	if !parsed.info {
		prompt := strings.Join(flags.Args(), " ")
		if prompt == "" {
			return nil, errors.New("a prompt is required: lil-stream [flags] PROMPT")
		}
		if parsed.raw && parsed.chat {
			return nil, errors.New("-raw and -chat contradict each other (chat is the default)")
		}
		// The chat template by default, as lil-client and lil-sparse generate; -raw sends the text as is.
		request.Prompt = lilsparse.Chat(lilsparse.Message{Role: "user", Content: prompt})
		if parsed.raw {
			request.Prompt = lilsparse.Text(prompt)
		}
	}
	if given["temperature"] || given["top-k"] || given["top-p"] || given["seed"] {
		request.Sampling = &lilsparse.Sampling{
			Temperature: pick(given["temperature"], *temperature),
			TopK:        pick(given["top-k"], *topK),
			TopP:        pick(given["top-p"], *topP),
			Seed:        pick(given["seed"], *seed),
		}
	}
	if given["max-new-tokens"] || given["stop"] || given["ignore-eos"] {
		request.Stopping = &lilsparse.Stopping{
			MaxNewTokens: pick(given["max-new-tokens"], *maxNewTokens),
			StopStrings:  stops,
			IgnoreEOS:    pick(given["ignore-eos"], *ignoreEOS),
		}
	}
	if given["policy"] || given["budget"] || given["sink-tokens"] || given["recent-tokens"] || given["dense-layers"] {
		request.Sparse = &lilsparse.Sparse{
			BudgetTokens: pick(given["budget"], *budget),
			SinkTokens:   pick(given["sink-tokens"], *sinkTokens),
			RecentTokens: pick(given["recent-tokens"], *recentTokens),
			DenseLayers:  pick(given["dense-layers"], *denseLayers),
		}
		if given["policy"] {
			parsedPolicy, err := lilsparse.ParsePolicy(strings.ToLower(*policy)) // any case, as lil-client takes it
			if err != nil {
				return nil, err
			}
			request.Sparse.Policy = parsedPolicy
		}
	}
	if given["guardian"] || given["guardian-interval"] || given["guardian-threshold"] ||
		given["guardian-mode"] || given["guardian-source"] || given["guardian-shadow"] ||
		given["guardian-action"] || given["guardian-answer-max-tokens"] {
		request.Guardian = &lilsparse.Guardian{
			Enabled:         pick(given["guardian"], *guardian),
			IntervalTokens:  pick(given["guardian-interval"], *interval),
			ThresholdBytes:  pick(given["guardian-threshold"], *threshold),
			Mode:            lilsparse.GuardianMode(*mode),
			Source:          lilsparse.GuardianSource(*source),
			Shadow:          pick(given["guardian-shadow"], *shadow),
			Action:          lilsparse.GuardianAction(*action),
			AnswerMaxTokens: pick(given["guardian-answer-max-tokens"], *answerMax),
		}
	}
	return parsed, nil
}

// flagAfterPrompt refuses a flag written after the prompt: Go's flag package stops at the first
// word that is not a flag, so "lil-stream hi -max-new-tokens 5" would send "hi -max-new-tokens 5"
// as the prompt and silently ignore the flag. A "--" before the prompt lets it start with a flag.
func flagAfterPrompt(flags *flag.FlagSet, args []string) error {
	rest := flags.Args()
	if len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
		return nil
	}
	for _, word := range rest {
		name, _, _ := strings.Cut(strings.TrimLeft(word, "-"), "=")
		if strings.HasPrefix(word, "-") && name != "" && flags.Lookup(name) != nil {
			return fmt.Errorf("flag %s after the prompt: flags go before it (lil-stream [flags] PROMPT; "+
				"\"--\" first sends a prompt that starts with a flag name)", word)
		}
	}
	return nil
}

// pick returns a pointer to value only when its flag was given, so absent means server default.
func pick[T any](given bool, value T) *T {
	if !given {
		return nil
	}
	return &value
}
