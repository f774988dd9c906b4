package main

import (
	"fmt"
	"io"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

// writeSummary prints the fields the Python lil-client prints after the text, one per line.
func writeSummary(out io.Writer, started lilsparse.Started, summary *lilsparse.Summary) {
	timings := summary.Timings
	sparse := started.Options.Sparse
	fmt.Fprintln(out, "---")
	fmt.Fprintf(out, "request_id: %s\n", summary.RequestID)
	fmt.Fprintf(out, "finish_reason: %s\n", summary.FinishReason)
	fmt.Fprintf(out, "tokens: prompt=%d completion=%d chunks=%d\n",
		summary.PromptTokens, summary.CompletionTokens, summary.Chunks)
	fmt.Fprintf(out, "ttft: %s\n", milliseconds(timings.TTFTSeconds))
	fmt.Fprintf(out, "tbt: mean=%s p50=%s p95=%s\n",
		milliseconds(timings.TBTMeanSeconds), milliseconds(timings.TBTP50Seconds), milliseconds(timings.TBTP95Seconds))
	fmt.Fprintf(out, "jct: %s (queue %s, decode %s)\n",
		milliseconds(timings.JCTSeconds), milliseconds(timings.QueueSeconds), milliseconds(timings.DecodeSeconds))
	fmt.Fprintf(out, "sparse: policy=%s budget_tokens=%s mean_attended_pages=%.1f peak_pages=%d\n",
		sparse.Policy, optional(sparse.BudgetTokens), summary.KV.MeanAttendedPages, summary.KV.PeakPages)
	fmt.Fprintf(out, "guardian: %s\n", guardianLine(summary.Guardian))
}

func guardianLine(report lilsparse.GuardianReport) string {
	if !report.Enabled {
		return "off"
	}
	line := fmt.Sprintf("checks=%d stop_step=%s applied_at_step=%s cpu=%s",
		report.Checks, optional(report.StopStep), optional(report.AppliedAtStep), milliseconds(report.CPUSeconds))
	if n := len(report.CompressedBytes); n > 0 {
		line += fmt.Sprintf(" compressed_bytes=%d", report.CompressedBytes[n-1])
	}
	return line
}

func milliseconds(seconds float64) string { return fmt.Sprintf("%.1f ms", seconds*1000) }

func optional(value *int) string {
	if value == nil {
		return "-"
	}
	return fmt.Sprint(*value)
}
