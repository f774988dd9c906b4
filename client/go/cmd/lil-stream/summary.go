package main

import (
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

// formatSummary is the human summary printed after the streamed text; it matches the Python
// lil-client's line for line, so scripts and eyes read both the same way.
func formatSummary(summary *lilsparse.Summary) string {
	timings, kv := summary.Timings, summary.KV
	lines := []string{
		"finish: " + string(summary.FinishReason),
		fmt.Sprintf("tokens: prompt %d, completion %d", summary.PromptTokens, summary.CompletionTokens),
		fmt.Sprintf("ttft: %.1f ms  tbt: mean %.2f ms, p50 %.2f ms, p95 %.2f ms  jct: %.1f ms",
			timings.TTFTSeconds*1e3, timings.TBTMeanSeconds*1e3, timings.TBTP50Seconds*1e3,
			timings.TBTP95Seconds*1e3, timings.JCTSeconds*1e3),
		"guardian: " + guardianLine(summary.Guardian),
		// PeakPages counts one-head pages over all KV heads, MeanAttendedPages per KV head
		// (report.proto); the budget, in pages, compares with the second.
		fmt.Sprintf("kv: peak %d pages (all KV heads), %.1f pages attended per step and KV head",
			kv.PeakPages, kv.MeanAttendedPages),
	}
	return strings.Join(lines, "\n")
}

func guardianLine(report lilsparse.GuardianReport) string {
	if !report.Enabled {
		return "off"
	}
	if report.Shadow {
		stop := ", would not stop"
		if report.StopStep != nil {
			stop = fmt.Sprintf(", would stop at token %d", *report.StopStep)
		}
		return fmt.Sprintf("shadow, %d checks%s, %.2f ms CPU", report.Checks, stop, report.CPUSeconds*1e3)
	}
	stop := ""
	if report.StopStep != nil {
		stop = fmt.Sprintf(", stop at token %d (applied %s)", *report.StopStep, optional(report.AppliedAtStep))
	}
	if report.AnswerStartedAt != nil {
		stop += fmt.Sprintf(", answer: %d prompt + %d tokens", report.AnswerPromptTokens, report.AnswerTokens)
	}
	return fmt.Sprintf("on, %d checks%s, %.2f ms CPU", report.Checks, stop, report.CPUSeconds*1e3)
}

// optional prints an absent value as Python prints None.
func optional(value *int) string {
	if value == nil {
		return "None"
	}
	return fmt.Sprint(*value)
}

// formatOutputs is the lines -request-id, -token-ids, -logprobs and -guardian-trace ask for,
// printed after the summary ("" when none was given); they match lil-client's line for line.
func formatOutputs(summary *lilsparse.Summary, request *lilsparse.Request) string {
	var lines []string
	if request.RequestID != "" {
		lines = append(lines, "request: "+summary.RequestID)
	}
	if request.Output.TokenIDs {
		ids := make([]string, len(summary.TokenIDs))
		for i, id := range summary.TokenIDs {
			ids[i] = fmt.Sprint(id)
		}
		lines = append(lines, "token ids: "+strings.Join(ids, " "))
	}
	if request.Output.Logprobs {
		values := make([]string, len(summary.Logprobs))
		for i, logprob := range summary.Logprobs {
			values[i] = formatLogprob(logprob)
		}
		lines = append(lines, "logprobs: "+strings.Join(values, " "))
	}
	if request.Output.GuardianTrace {
		trace := summary.Guardian.Trace
		lines = append(lines, fmt.Sprintf("guardian trace: %d checks", len(trace)))
		for _, check := range trace {
			growth, verdict := "first check", "go on"
			if check.GrowthBytes != nil {
				growth = fmt.Sprintf("%+d bytes", *check.GrowthBytes)
			}
			if check.Stop {
				verdict = "stop"
			}
			lines = append(lines, fmt.Sprintf("  token %d: %d bytes, %s, %s, %.2f ms CPU",
				check.GeneratedTokens, check.CompressedBytes, growth, verdict, check.CPUSeconds*1e3))
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// formatLogprob prints a logprob to 4 decimals, and a forced answer prompt's NaN (or an
// infinity) as Python prints it ("nan", "-inf"), so both CLIs read the same.
func formatLogprob(logprob float32) string {
	value := float64(logprob)
	switch {
	case math.IsNaN(value):
		return "nan"
	case math.IsInf(value, 1):
		return "inf"
	case math.IsInf(value, -1):
		return "-inf"
	}
	return fmt.Sprintf("%.4f", value)
}

// formatInfo is the human `-info` output, line for line `lil-client info`'s (format_info in
// client/python/lil_client/cli_output.py): the served model, limits, policies and defaults.
func formatInfo(info *lilsparse.Info) string {
	names := make([]string, len(info.Policies))
	for i, policy := range info.Policies {
		names[i] = string(policy.Policy)
	}
	warmUp := "off"
	if info.WarmUpSeconds > 0 {
		warmUp = fmt.Sprintf("%.1f s", info.WarmUpSeconds)
	}
	return fmt.Sprintf("model: %s (%s)\n", info.Model, info.Architecture) +
		fmt.Sprintf("context: %d tokens, page size %d, %d layers\n", info.MaxContext, info.PageSize, info.NumLayers) +
		fmt.Sprintf("backend: %s, %d KV pages\n", info.Backend, info.NumPagesTotal) +
		fmt.Sprintf("policies: %s\n", strings.Join(names, ", ")) +
		fmt.Sprintf("limits: %d running, %d waiting, max_new_tokens up to %d\n", info.Limits.MaxRunning,
			info.Limits.MaxWaiting, info.Limits.MaxNewTokensLimit) +
		fmt.Sprintf("selection: %s; overlap scheduling: %s; warm-up: %s\n", orDefault(info.Selection, "exact"),
			onOff(info.OverlapScheduling), warmUp) +
		formatDefaults(info.DefaultOptions) +
		fmt.Sprintf("server: %s\n", info.ServerVersion)
}

// formatDefaults is the options a request gets when it sets none, as -info prints them (three
// lines, lil-client's format_defaults): floats as Python's "{:g}", unset enums "unspecified".
func formatDefaults(options lilsparse.ResolvedOptions) string {
	sampling, stopping, sparse, guardian := options.Sampling, options.Stopping, options.Sparse, options.Guardian
	return fmt.Sprintf("defaults: policy %s, budget %d tokens (full ignores it), sink %d, recent %d (0: auto), "+
		"dense layers %d\n", orDefault(string(sparse.Policy), "unspecified"), intOf(sparse.BudgetTokens),
		intOf(sparse.SinkTokens), intOf(sparse.RecentTokens), intOf(sparse.DenseLayers)) +
		fmt.Sprintf("  max_new_tokens %d, temperature %.6g, top_k %d, top_p %.6g, ignore_eos %t\n",
			intOf(stopping.MaxNewTokens), floatOf(sampling.Temperature), intOf(sampling.TopK),
			floatOf(sampling.TopP), stopping.IgnoreEOS != nil && *stopping.IgnoreEOS) +
		fmt.Sprintf("  guardian %s: interval %d tokens, threshold %d bytes, mode %s, action %s\n",
			onOff(guardian.Enabled != nil && *guardian.Enabled), intOf(guardian.IntervalTokens),
			intOf(guardian.ThresholdBytes), orDefault(string(guardian.Mode), "unspecified"),
			orDefault(string(guardian.Action), "unspecified"))
}

func intOf(value *int) int {
	if value == nil {
		return 0
	}
	return *value
}

func floatOf(value *float64) float64 {
	if value == nil {
		return 0
	}
	return *value
}

func orDefault(value, fallback string) string {
	if value == "" {
		return fallback
	}
	return value
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func writeText(out io.Writer, text string) { _, _ = io.WriteString(out, text) }
