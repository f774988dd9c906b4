package testserver

import "testing"

func TestMatchSampleReadsOnlyTheNamedSeriesWithTheWantedLabels(t *testing.T) {
	cases := []struct {
		line   string
		labels []string
		value  float64
		ok     bool
	}{
		{`lil_sparse_requests_running{model="tiny"} 1.0`, nil, 1, true},
		{`lil_sparse_requests_running{model="tiny"} 2.0`, []string{"model=tiny"}, 2, true},
		{`lil_sparse_requests_running{model="tiny"} 2.0`, []string{"model=other"}, 0, false},
		{`lil_sparse_requests_running_total 5`, nil, 0, false},
		{`# HELP lil_sparse_requests_running Requests decoding.`, nil, 0, false},
		{`lil_sparse_requests_running 3`, nil, 3, true},
	}
	for _, tc := range cases {
		value, ok, err := matchSample(tc.line, "lil_sparse_requests_running", tc.labels)
		if err != nil || ok != tc.ok || value != tc.value {
			t.Fatalf("matchSample(%q, %v) = %v, %v, %v; want %v, %v", tc.line, tc.labels, value, ok, err, tc.value, tc.ok)
		}
	}
}
