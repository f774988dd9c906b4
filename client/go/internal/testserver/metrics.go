package testserver

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Metric scrapes the Prometheus endpoint and sums every sample of the named series whose
// labels include all of the given ones (label=value strings). A series with no sample is 0.
func (s *Server) Metric(ctx context.Context, name string, labels ...string) (float64, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, s.MetricsURL, nil)
	if err != nil {
		return 0, err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return 0, err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics endpoint answered %s", response.Status)
	}
	total := 0.0
	scanner := bufio.NewScanner(response.Body)
	for scanner.Scan() {
		value, ok, err := matchSample(scanner.Text(), name, labels)
		if err != nil {
			return 0, err
		}
		if ok {
			total += value
		}
	}
	return total, scanner.Err()
}

// matchSample parses one exposition line `name{a="x",b="y"} value` and reports its value when
// it is a sample of name carrying every wanted label.
func matchSample(line, name string, wanted []string) (float64, bool, error) {
	if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, name) {
		return 0, false, nil
	}
	rest := line[len(name):]
	labelText := ""
	if strings.HasPrefix(rest, "{") {
		end := strings.Index(rest, "}")
		if end < 0 {
			return 0, false, fmt.Errorf("bad metrics line %q", line)
		}
		labelText, rest = rest[1:end], rest[end+1:]
	} else if !strings.HasPrefix(rest, " ") {
		return 0, false, nil // a longer name sharing the prefix, e.g. name_bucket
	}
	for _, label := range wanted {
		key, value, _ := strings.Cut(label, "=")
		if !strings.Contains(labelText, key+`="`+value+`"`) {
			return 0, false, nil
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return 0, false, fmt.Errorf("bad metrics line %q", line)
	}
	value, err := strconv.ParseFloat(fields[0], 64)
	return value, err == nil, err
}
