// Command lil-stream streams a completion from a lil-sparse server: it prints the text live,
// then a summary (finish reason, tokens, TTFT, TBT, JCT, sparse use, Guardian). It mirrors the
// Python `lil-client generate`.
//
//	lil-stream -address localhost:50051 -policy quest -budget 128 -guardian "Why is the sky blue?"
//	lil-stream -json -max-new-tokens 32 "Hello"
//	lil-stream -raw "Once upon a time"   # no chat template
//	lil-stream -info
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole command; it returns the exit status: 0 done, 1 the call failed, 2 bad usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	parsed, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "lil-stream:", err)
		return 2
	}
	if parsed.showHelp {
		return 0
	}
	if parsed.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, parsed.timeout)
		defer cancel()
	}
	dialOptions, err := connectionOptions(parsed)
	if err != nil {
		fmt.Fprintln(stderr, "lil-stream:", err)
		return 2
	}
	client, err := lilsparse.Dial(ctx, parsed.address, dialOptions...)
	if err != nil {
		fmt.Fprintln(stderr, "lil-stream:", err.Error()+errorHint(err, parsed.address, parsed.timeout))
		return 1
	}
	defer client.Close()
	if parsed.info {
		err = printInfo(ctx, client, parsed, stdout)
	} else {
		err = generate(ctx, client, parsed, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "lil-stream:", err.Error()+errorHint(err, parsed.address, parsed.timeout))
		return 1
	}
	return 0
}

// connectionOptions turns the TLS and token flags into dial options.
func connectionOptions(parsed *options) ([]lilsparse.DialOption, error) {
	dialOptions := []lilsparse.DialOption{lilsparse.WithInsecure()}
	if parsed.useTLS {
		config, err := parsed.tls.Config()
		if err != nil {
			return nil, err
		}
		dialOptions = []lilsparse.DialOption{lilsparse.WithTLS(config)}
	}
	if parsed.tokenFile != "" {
		token, err := lilsparse.ReadToken(parsed.tokenFile)
		if err != nil {
			return nil, err
		}
		dialOptions = append(dialOptions, lilsparse.WithBearerToken(token))
	}
	return dialOptions, nil
}

func printInfo(ctx context.Context, client *lilsparse.Client, parsed *options, stdout io.Writer) error {
	info, err := client.Info(ctx)
	if err != nil {
		return err
	}
	if parsed.json {
		return writeJSON(stdout, info)
	}
	writeText(stdout, formatInfo(info))
	return nil
}

// generate streams the text live (or nothing with -json), then prints the summary like
// `lil-client generate`: "---", the summary lines and the lines the output flags ask for, or
// one JSON line (logprobs in it only with -logprobs, null for NaN); then, on stderr, the
// budget and Guardian notes (budgetNote, guardianNote) where they apply.
func generate(ctx context.Context, client *lilsparse.Client, parsed *options, stdout, stderr io.Writer) error {
	stream, err := client.Generate(ctx, parsed.request)
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Next() {
		if !parsed.json {
			writeText(stdout, stream.Chunk().Text)
		}
	}
	summary, err := stream.Summary()
	if err != nil {
		if !parsed.json {
			writeText(stdout, "\n")
		}
		return err
	}
	if parsed.json {
		err = writeJSON(stdout, summary)
	} else {
		writeText(stdout, "\n---\n"+formatSummary(summary)+"\n"+formatOutputs(summary, &parsed.request))
	}
	for _, note := range []string{budgetNote(&parsed.request, stream.Started()), guardianNote(&parsed.request, stream.Started())} {
		if note != "" {
			fmt.Fprintln(stderr, "lil-stream:", note)
		}
	}
	return err
}

// writeJSON writes value as one line of JSON, as the Python client does.
func writeJSON(stdout io.Writer, value any) error {
	return json.NewEncoder(stdout).Encode(value)
}
