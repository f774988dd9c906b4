package lilsparse

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"
)

// Stream is one running Generate call. Read it like a bufio.Scanner:
//
//	for stream.Next() {
//		fmt.Print(stream.Chunk().Text)
//	}
//	summary, err := stream.Summary()
//
// A Stream is not safe for concurrent use.
type Stream struct {
	call     pb.LilSparseService_GenerateClient
	cancel   context.CancelFunc
	started  Started
	chunk    Chunk
	summary  Summary
	finished bool
	err      error
}

// openStream reads the Started message that opens every stream; errors before it (a rejected
// request) are returned instead of a Stream.
func openStream(call pb.LilSparseService_GenerateClient, cancel context.CancelFunc) (*Stream, error) {
	first, err := call.Recv()
	if err == io.EOF {
		err = status.Error(codes.Internal, "stream ended before the started message")
	}
	if err != nil {
		cancel()
		return nil, wrapError(err)
	}
	started := first.GetStarted()
	if started == nil {
		cancel()
		return nil, protocolError("the first message is not started: %T", first.GetEvent())
	}
	stream := &Stream{call: call, cancel: cancel, started: startedFromProto(started)}
	stream.summary.RequestID = stream.started.RequestID
	return stream, nil
}

// Started is the request's acceptance: its id, prompt tokens and resolved options.
func (s *Stream) Started() Started { return s.started }

// Next waits for the next chunk and reports whether there is one. It returns false once the
// finished message arrived (Summary then has it) or the call failed (Err says why).
func (s *Stream) Next() bool {
	for !s.finished && s.err == nil {
		message, err := s.call.Recv()
		if err == io.EOF {
			s.fail(protocolError("stream ended without a finished message"))
			return false
		}
		if err != nil {
			s.fail(wrapError(err))
			return false
		}
		switch event := message.GetEvent().(type) {
		case *pb.GenerateResponse_Chunk:
			s.chunk = chunkFromProto(event.Chunk)
			s.summary.addChunk(s.chunk)
			return true
		case *pb.GenerateResponse_Finished:
			s.summary.fillFromFinished(event.Finished)
			s.finished = true
			s.cancel()
		case *pb.GenerateResponse_Started:
			s.fail(protocolError("a second started message"))
		default:
			// An event kind from a newer server: skip it rather than fail the stream.
		}
	}
	return false
}

// Chunk is the chunk Next just read.
func (s *Stream) Chunk() Chunk { return s.chunk }

// Err is why the stream failed, as an *Error keeping the gRPC code (CANCELED after the context
// was cancelled, DEADLINE_EXCEEDED past the deadline); nil while running or after finishing.
func (s *Stream) Err() error { return s.err }

// Summary reads any chunks left and returns the final summary, or the error that ended the
// stream. Text, TokenIDs and Logprobs hold every chunk's, including those read with Next.
func (s *Stream) Summary() (*Summary, error) {
	for s.Next() {
	}
	if s.err != nil {
		return nil, s.err
	}
	summary := s.summary
	summary.emptySlicesNotNil()
	return &summary, nil
}

// Close abandons the call; the server aborts the request and frees its pages. Closing a
// finished stream does nothing.
func (s *Stream) Close() {
	if !s.finished && s.err == nil {
		s.fail(&Error{status: status.New(codes.Canceled, "stream closed by the client")})
	}
}

func (s *Stream) fail(err error) {
	s.err = err
	s.cancel()
}

func protocolError(format string, args ...any) error {
	return &Error{status: status.New(codes.Internal, "protocol: "+fmt.Sprintf(format, args...))}
}
