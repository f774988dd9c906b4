package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// flagOfField names the flag that sets a request field the server refuses by its options.proto
// name ("budget_tokens: must be >= 16 ..."), whether or not the two names differ; as lil-client's.
var flagOfField = map[string]string{
	"max_new_tokens":    "-max-new-tokens",
	"temperature":       "-temperature",
	"top_k":             "-top-k",
	"top_p":             "-top-p",
	"seed":              "-seed",
	"sink_tokens":       "-sink-tokens",
	"recent_tokens":     "-recent-tokens",
	"dense_layers":      "-dense-layers",
	"request_id":        "-request-id",
	"budget_tokens":     "-budget",
	"stop_strings":      "-stop",
	"enabled":           "-guardian",
	"interval_tokens":   "-guardian-interval",
	"threshold_bytes":   "-guardian-threshold",
	"mode":              "-guardian-mode",
	"source":            "-guardian-source",
	"shadow":            "-guardian-shadow",
	"action":            "-guardian-action",
	"answer_max_tokens": "-guardian-answer-max-tokens",
}

// errorHint is the text printed after a failed call's error so that it says what to do: a line
// when the address answered but not in gRPC (answeredNotInGRPC; asked as a question, since a
// server that dies mid-call can leave some of the same words), when no server answered at
// address or when the -timeout passed, or " (flag -x)" after a refused field that a flag sets;
// "" otherwise. It mirrors lil-client's hints.
func errorHint(err error, address string, timeout time.Duration) string {
	message := status.Convert(err).Message() // the server's words, without the code
	lower := strings.ToLower(message)
	switch lilsparse.Code(err) {
	case codes.Unavailable:
		if answeredNotInGRPC(lower) {
			return fmt.Sprintf("\nlil-stream: %s answered, but not in gRPC: is it an HTTP port, such as the"+
				" server's Prometheus port, 9400 by default? The gRPC port is 50051 by default", address)
		}
		if strings.Contains(lower, "error while dialing") || strings.Contains(lower, "connection refused") ||
			strings.Contains(lower, "no such host") {
			return fmt.Sprintf("\nlil-stream: no server answered at %s: start one (`make run`, or"+
				" `lil-sparse serve`) or pass -address HOST:PORT (the gRPC port, 50051 by default)", address)
		}
	case codes.DeadlineExceeded:
		if timeout > 0 {
			return fmt.Sprintf("\nlil-stream: the call ran past -timeout %s; raise it, or leave it out (no deadline)", timeout)
		}
	case codes.InvalidArgument:
		field := strings.FieldsFunc(message, func(r rune) bool { return r == ':' || r == '[' })
		if len(field) > 0 {
			if flag, ok := flagOfField[field[0]]; ok {
				return " (flag " + flag + ")"
			}
		}
	}
	return ""
}

// budgetNote is a note when -budget was given without -policy and the server's default policy,
// which the request ran with (started reports it resolved), is full: dense decode ignores the
// budget (README, per-call options). "" otherwise. It mirrors lil-client's budget_note.
func budgetNote(request *lilsparse.Request, started lilsparse.Started) string {
	sparse := request.Sparse
	if sparse == nil || sparse.BudgetTokens == nil || sparse.Policy != lilsparse.PolicyDefault {
		return ""
	}
	if started.Options.Sparse.Policy != lilsparse.PolicyFull {
		return ""
	}
	return fmt.Sprintf("note: -budget %d changed nothing: the server's default policy is full (dense),"+
		" which attends every page; add -policy quest, infllm, sink or h2o", *sparse.BudgetTokens)
}

// guardianNote is a note when Guardian flags were given without -guardian (true or false) and
// the request ran with Guardian off, the server's default: the flags tune a Guardian that never
// ran. "" otherwise. It mirrors lil-client's guardian_note.
func guardianNote(request *lilsparse.Request, started lilsparse.Started) string {
	guardian := request.Guardian
	if guardian == nil || guardian.Enabled != nil {
		return ""
	}
	if on := started.Options.Guardian.Enabled; on != nil && *on {
		return ""
	}
	var given []string
	for _, flag := range []struct {
		set  bool
		name string
	}{
		{guardian.IntervalTokens != nil, "-guardian-interval"},
		{guardian.ThresholdBytes != nil, "-guardian-threshold"},
		{guardian.Mode != "", "-guardian-mode"},
		{guardian.Source != "", "-guardian-source"},
		{guardian.Shadow != nil, "-guardian-shadow"},
		{guardian.Action != "", "-guardian-action"},
		{guardian.AnswerMaxTokens != nil, "-guardian-answer-max-tokens"},
	} {
		if flag.set {
			given = append(given, flag.name)
		}
	}
	if len(given) == 0 {
		return ""
	}
	return "note: " + strings.Join(given, ", ") + " changed nothing: Guardian is off (the server's default);" +
		" add -guardian"
}

// answeredNotInGRPC is whether a failed call's (lower-case) message says that the address
// accepted the connection but did not speak HTTP/2: an HTTP/1.x server, such as the metrics
// endpoint, answers the client's preface with bytes grpc-go cannot read as a frame or closes the
// connection. These are grpc-go's words for it against Python's http.server (the metrics
// endpoint: "use of closed network connection" or "frame too large") and Go's net/http
// ("connection closed"), as hint_test.go checks against both kinds of server.
func answeredNotInGRPC(lower string) bool {
	if lower == "connection closed" {
		return true
	}
	for _, words := range []string{"server preface", "frame too large", "use of closed network connection",
		"malformed http"} {
		if strings.Contains(lower, words) {
			return true
		}
	}
	return false
}
