package lilsparse

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
)

// TLSFiles names the PEM files of a TLS dial: CAFile verifies the server (empty: the system's
// root CAs); CertFile and KeyFile, given together, are the client certificate for mTLS.
// ServerName overrides the name checked against the server's certificate.
type TLSFiles struct {
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
}

// Config reads the files into a tls.Config for WithTLS.
func (files TLSFiles) Config() (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: files.ServerName}
	if files.CAFile != "" {
		pem, err := os.ReadFile(files.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca file: no PEM certificate in %s", files.CAFile)
		}
		config.RootCAs = pool
	}
	if (files.CertFile == "") != (files.KeyFile == "") {
		return nil, errors.New("cert file: give the client certificate and its key together (mTLS)")
	}
	if files.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert file: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

// bearerToken sends "authorization: Bearer <token>" with every call.
type bearerToken string

func (token bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(token)}, nil
}

// RequireTransportSecurity is false so the token also works on a pod-local plaintext link;
// anywhere else, dial WithTLS too.
func (token bearerToken) RequireTransportSecurity() bool { return false }

// WithBearerToken sends the token the server's --auth-token-file holds with every call.
func WithBearerToken(token string) DialOption {
	return WithGRPCOptions(grpc.WithPerRPCCredentials(bearerToken(token)))
}

// ReadToken reads a token file (surrounding whitespace dropped), as the server reads its own.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("token file: %s is empty", path)
	}
	return token, nil
}
