package main

import (
	"fmt"
	"io"
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
		fmt.Sprintf("kv: peak %d pages, %.1f pages attended per step", kv.PeakPages, kv.MeanAttendedPages),
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

// formatInfo is the human `-info` output, matching `lil-client info`.
func formatInfo(info *lilsparse.Info) string {
	names := make([]string, len(info.Policies))
	for i, policy := range info.Policies {
		names[i] = string(policy.Policy)
	}
	return fmt.Sprintf("model: %s (%s)\n", info.Model, info.Architecture) +
		fmt.Sprintf("context: %d tokens, page size %d, %d layers\n", info.MaxContext, info.PageSize, info.NumLayers) +
		fmt.Sprintf("backend: %s, %d KV pages\n", info.Backend, info.NumPagesTotal) +
		fmt.Sprintf("policies: %s\n", strings.Join(names, ", ")) +
		fmt.Sprintf("limits: %d running, %d waiting\n", info.Limits.MaxRunning, info.Limits.MaxWaiting) +
		fmt.Sprintf("selection: %s; overlap scheduling: %s\n", orDefault(info.Selection, "exact"), onOff(info.OverlapScheduling)) +
		fmt.Sprintf("server: %s\n", info.ServerVersion)
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
