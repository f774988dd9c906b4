package lilsparse

import (
	"context"
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"
)

// Client talks to one lil-sparse server. It is safe for concurrent use; Close it when done.
type Client struct {
	conn        *grpc.ClientConn
	stub        pb.LilSparseServiceClient
	callTimeout time.Duration
}

type dialConfig struct {
	tlsConfig   *tls.Config // nil with useTLS: the system's root CAs
	useTLS      bool
	block       bool
	callTimeout time.Duration
	grpcOptions []grpc.DialOption
}

// DialOption configures Dial.
type DialOption func(*dialConfig)

// WithInsecure dials without TLS, the default: the sidecar usually listens on localhost or a
// pod-local address.
func WithInsecure() DialOption {
	return func(config *dialConfig) { config.useTLS, config.tlsConfig = false, nil }
}

// WithTLS dials with TLS; a nil config verifies the server against the system's root CAs.
func WithTLS(config *tls.Config) DialOption {
	return func(dial *dialConfig) { dial.useTLS, dial.tlsConfig = true, config }
}

// WithCallTimeout gives every call a deadline this far away. A deadline already on the call's
// context still applies when it is earlier. Zero (the default) adds none.
func WithCallTimeout(timeout time.Duration) DialOption {
	return func(config *dialConfig) { config.callTimeout = timeout }
}

// WithBlock makes Dial wait until the connection is up (or ctx ends) instead of connecting in
// the background on the first call.
func WithBlock() DialOption {
	return func(config *dialConfig) { config.block = true }
}

// WithGRPCOptions passes extra options to grpc.DialContext (interceptors, keepalive, ...).
func WithGRPCOptions(options ...grpc.DialOption) DialOption {
	return func(config *dialConfig) { config.grpcOptions = append(config.grpcOptions, options...) }
}

// Dial connects to a server at address ("host:port"). ctx bounds the dial only with WithBlock.
func Dial(ctx context.Context, address string, options ...DialOption) (*Client, error) {
	config := dialConfig{}
	for _, option := range options {
		option(&config)
	}
	grpcOptions := []grpc.DialOption{grpc.WithInsecure()}
	if config.useTLS {
		grpcOptions = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(config.tlsConfig))}
	}
	if config.block {
		grpcOptions = append(grpcOptions, grpc.WithBlock())
	}
	grpcOptions = append(grpcOptions, config.grpcOptions...)
	conn, err := grpc.DialContext(ctx, address, grpcOptions...)
	if err != nil {
		return nil, wrapError(err)
	}
	return NewClient(conn, config.callTimeout), nil
}

// NewClient wraps a connection the caller dialed; Close then closes it.
func NewClient(conn *grpc.ClientConn, callTimeout time.Duration) *Client {
	return &Client{conn: conn, stub: pb.NewLilSparseServiceClient(conn), callTimeout: callTimeout}
}

// Close closes the connection; streams still open fail with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, e.g. for the grpc health client.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// callContext applies the per-call timeout. The caller must call the returned cancel.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.callTimeout > 0 {
		return context.WithTimeout(ctx, c.callTimeout)
	}
	return context.WithCancel(ctx)
}

// Info describes the served model, its policies, defaults and limits.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	response, err := c.stub.GetInfo(ctx, &pb.GetInfoRequest{})
	if err != nil {
		return nil, wrapError(err)
	}
	return infoFromProto(response), nil
}

// Generate sends a request and waits until the server accepts it, so a rejected request (a bad
// option is INVALID_ARGUMENT) fails here. Read the chunks with Stream.Next, then the
// Stream.Summary. Cancelling ctx ends the call and the server frees the request.
func (c *Client) Generate(ctx context.Context, request Request) (*Stream, error) {
	message, err := request.toProto()
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.callContext(ctx)
	call, err := c.stub.Generate(ctx, message)
	if err != nil {
		cancel()
		return nil, wrapError(err)
	}
	return openStream(call, cancel)
}

// Complete runs a request to the end and returns its summary, text included.
func (c *Client) Complete(ctx context.Context, request Request) (*Summary, error) {
	stream, err := c.Generate(ctx, request)
	if err != nil {
		return nil, err
	}
	return stream.Summary()
}
