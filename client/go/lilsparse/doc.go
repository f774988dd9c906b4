// Package lilsparse is a Go client for the lil-sparse inference sidecar.
//
// It wraps the generated stubs in package lilsparsev1 with a small API: Dial a server, describe
// a request with plain Go values (Request), stream its chunks (Client.Generate returns a Stream
// that reads like bufio.Scanner), and read a final Summary. Errors keep their gRPC status code:
// status.Code(err) and Code(err) both return it.
//
//	client, err := lilsparse.Dial(ctx, "localhost:50051")
//	stream, err := client.Generate(ctx, lilsparse.Request{
//		Prompt: lilsparse.Text("Why is the sky blue?"),
//		Sparse: &lilsparse.Sparse{Policy: lilsparse.PolicyQuest, BudgetTokens: lilsparse.Ptr(128)},
//	})
//	for stream.Next() {
//		fmt.Print(stream.Chunk().Text)
//	}
//	summary, err := stream.Summary()
package lilsparse
