package lilsparse

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"
)

func TestSummaryJoinsTheChunksLogprobsLikeTheirTokenIDs(t *testing.T) {
	nan := float32(math.NaN())
	var summary Summary
	for _, chunk := range []*pb.Chunk{
		{TokenCount: 2, Text: "Hel", TokenIds: []int32{5, 6}, Logprobs: []float32{-0.25, -1.5}},
		{TokenCount: 3, Text: "lo", TokenIds: []int32{7, 8, 9}, Logprobs: []float32{nan, nan, -0.125}, AnswerTokens: 3},
	} {
		summary.addChunk(chunkFromProto(chunk))
	}
	if summary.Chunks != 2 || summary.Text != "Hello" || !reflect.DeepEqual(summary.TokenIDs, []int32{5, 6, 7, 8, 9}) {
		t.Fatalf("summary %+v: want 2 chunks, Hello, ids 5..9", summary)
	}
	// The forced answer prompt's NaNs keep their places, as in the Python client's Summary.
	if !sameLogprobs(summary.Logprobs, Logprobs{-0.25, -1.5, nan, nan, -0.125}) {
		t.Fatalf("logprobs %v, want [-0.25 -1.5 NaN NaN -0.125]", summary.Logprobs)
	}
}

// sameLogprobs compares two lists value by value, a NaN equal to a NaN.
func sameLogprobs(got, want Logprobs) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		bothNaN := math.IsNaN(float64(got[i])) && math.IsNaN(float64(want[i]))
		if got[i] != want[i] && !bothNaN {
			return false
		}
	}
	return true
}

func TestLogprobsEncodeNaNAsNullAndDecodeItBack(t *testing.T) {
	summary := Summary{Logprobs: Logprobs{-0.5, float32(math.NaN()), -1.25, float32(math.Inf(-1))}}
	encoded, err := json.Marshal(summary)
	if err != nil {
		t.Fatalf("a summary with NaN logprobs must encode (strict JSON has no NaN): %v", err)
	}
	if !strings.Contains(string(encoded), `"logprobs":[-0.5,null,-1.25,null]`) {
		t.Fatalf("JSON %s: want logprobs [-0.5,null,-1.25,null]", encoded)
	}
	var decoded Summary
	if err := json.Unmarshal(encoded, &decoded); err != nil {
		t.Fatal(err)
	}
	nan := float32(math.NaN())
	if !sameLogprobs(decoded.Logprobs, Logprobs{-0.5, nan, -1.25, nan}) {
		t.Fatalf("decoded logprobs %v, want [-0.5 NaN -1.25 NaN]", decoded.Logprobs)
	}
	// A chunk with a forced answer prompt's NaN encodes too.
	if encoded, err := json.Marshal(Chunk{TokenCount: 1, Logprobs: Logprobs{float32(math.NaN())}}); err != nil ||
		!strings.Contains(string(encoded), `"logprobs":[null]`) {
		t.Fatalf("chunk JSON %s, err %v: want logprobs [null]", encoded, err)
	}
}

func TestLogprobsAreAbsentFromJSONUnlessReturned(t *testing.T) {
	summary := Summary{}
	summary.emptySlicesNotNil()
	encoded, err := json.Marshal(summary)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(encoded), "logprobs") || !strings.Contains(string(encoded), `"token_ids":[]`) {
		t.Fatalf("JSON %s: want token_ids [] and no logprobs key, as lil-client --json without --logprobs", encoded)
	}
}
