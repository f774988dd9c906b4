package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lil-sparse/lil-sparse/client/go/internal/testserver"
	"github.com/lil-sparse/lil-sparse/client/go/lilsparse"
)

// pki writes a CA, a server certificate for 127.0.0.1, a client certificate and a token into dir.
func pki(t *testing.T, dir string) {
	t.Helper()
	caKey, caCert := certificate(t, dir, "ca", nil, nil, func(template *x509.Certificate) {
		template.IsCA, template.BasicConstraintsValid = true, true
		template.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	})
	certificate(t, dir, "server", caKey, caCert, func(template *x509.Certificate) {
		template.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	certificate(t, dir, "client", caKey, caCert, func(template *x509.Certificate) {
		template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	writeFile(t, filepath.Join(dir, "token"), []byte("go-s3cret\n"))
}

// certificate makes a key pair and a certificate signed by the parent (self-signed when nil).
func certificate(t *testing.T, dir, name string, parentKey *ecdsa.PrivateKey, parent *x509.Certificate,
	edit func(*x509.Certificate)) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	edit(template)
	if parent == nil {
		parent, parentKey = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, parsed
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTLSClientCertificateAndTokenAgainstTheRealServer starts a second Python server with TLS,
// mTLS and a bearer token, then checks the Go client and lil-stream against it.
func TestTLSClientCertificateAndTokenAgainstTheRealServer(t *testing.T) {
	dir := t.TempDir()
	pki(t, dir)
	file := func(name string) string { return filepath.Join(dir, name) }
	config := testserver.DefaultConfig
	config.ExtraArgs = []string{
		"--tls-cert-file", file("server.pem"), "--tls-key-file", file("server.key"),
		"--tls-client-ca-file", file("ca.pem"), "--auth-token-file", file("token"),
	}
	secured, err := testserver.Start(config)
	if err != nil {
		t.Fatalf("starting the TLS server: %v", err)
	}
	defer func() { _ = secured.Stop() }()

	files := lilsparse.TLSFiles{CAFile: file("ca.pem"), CertFile: file("client.pem"), KeyFile: file("client.key")}
	tlsConfig, err := files.Config()
	if err != nil {
		t.Fatal(err)
	}
	info := func(options ...lilsparse.DialOption) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		client, err := lilsparse.Dial(ctx, secured.Address, options...)
		if err != nil {
			return err
		}
		defer client.Close()
		_, err = client.Info(ctx)
		return err
	}
	if err := info(lilsparse.WithTLS(tlsConfig), lilsparse.WithBearerToken("go-s3cret")); err != nil {
		t.Fatalf("TLS + client certificate + token: %v\n%s", err, secured.Logs())
	}
	if err := info(lilsparse.WithTLS(tlsConfig), lilsparse.WithBearerToken("wrong")); lilsparse.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: got %v, want UNAUTHENTICATED", err)
	}
	noClientCert := &tls.Config{RootCAs: tlsConfig.RootCAs, MinVersion: tls.VersionTLS12}
	if err := info(lilsparse.WithTLS(noClientCert), lilsparse.WithBearerToken("go-s3cret")); lilsparse.Code(err) != codes.Unavailable {
		t.Fatalf("mTLS without a client certificate: got %v, want UNAVAILABLE", err)
	}
	if err := info(lilsparse.WithInsecure(), lilsparse.WithBearerToken("go-s3cret")); lilsparse.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext against TLS: got %v, want UNAVAILABLE", err)
	}

	binary := build(t, "cmd/lil-stream")
	stdout, stderr, code := runBinary(t, binary, "-address", secured.Address, "-ca-file", file("ca.pem"),
		"-cert-file", file("client.pem"), "-key-file", file("client.key"), "-token-file", file("token"), "-info")
	if code != 0 || !strings.Contains(stdout, "policies:") {
		t.Fatalf("lil-stream -info over mTLS exited %d: %s%s", code, stdout, stderr)
	}
	_, stderr, code = runBinary(t, binary, "-address", secured.Address, "-ca-file", file("ca.pem"),
		"-cert-file", file("client.pem"), "-key-file", file("client.key"), "-info")
	if code != 1 || !strings.Contains(stderr, "UNAUTHENTICATED") {
		t.Fatalf("lil-stream without a token exited %d: %s", code, stderr)
	}
}
