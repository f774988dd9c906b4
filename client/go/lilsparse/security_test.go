package lilsparse

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestTLSFilesRefuseHalfAClientCertificate(t *testing.T) {
	_, err := TLSFiles{CertFile: "client.pem"}.Config()
	if err == nil || !strings.HasPrefix(err.Error(), "cert file: ") {
		t.Fatalf("got %v, want a cert file error", err)
	}
	_, err = TLSFiles{CAFile: filepath.Join(t.TempDir(), "missing.pem")}.Config()
	if err == nil || !strings.HasPrefix(err.Error(), "ca file: ") {
		t.Fatalf("got %v, want a ca file error", err)
	}
}

func TestBearerTokenMetadata(t *testing.T) {
	metadata, err := bearerToken("abc").GetRequestMetadata(context.Background())
	if err != nil || metadata["authorization"] != "Bearer abc" {
		t.Fatalf("got %v, %v", metadata, err)
	}
}
