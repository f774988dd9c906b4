// Command stream is the README's Go example: stream one completion with Quest sparse decode and
// Guardian early stop, then print why and when it finished. The integration tests build and run it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func main() {
	address := flag.String("address", "localhost:50051", "lil-sparse server address")
	flag.Parse()

	ctx := context.Background()
	client, err := lilsparse.Dial(ctx, *address, lilsparse.WithCallTimeout(2*time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	stream, err := client.Generate(ctx, lilsparse.Request{
		Prompt:   lilsparse.Chat(lilsparse.Message{Role: "user", Content: "Why is the sky blue?"}),
		Sparse:   &lilsparse.Sparse{Policy: lilsparse.PolicyQuest, BudgetTokens: lilsparse.Ptr(128)},
		Guardian: &lilsparse.Guardian{Enabled: lilsparse.Ptr(true)},
		Stopping: &lilsparse.Stopping{MaxNewTokens: lilsparse.Ptr(256)},
	})
	if err != nil {
		log.Fatal(err) // a rejected option is codes.InvalidArgument: lilsparse.Code(err)
	}
	for stream.Next() {
		fmt.Print(stream.Chunk().Text)
	}
	summary, err := stream.Summary()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\nfinish_reason=%s completion_tokens=%d ttft=%.3fs mean_attended_pages=%.1f\n",
		summary.FinishReason, summary.CompletionTokens, summary.Timings.TTFTSeconds, summary.KV.MeanAttendedPages)
}
