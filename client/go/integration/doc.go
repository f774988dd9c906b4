// Package integration holds the Go client's end-to-end tests: they start the real Python
// server (internal/testserver) with a tiny random-weight model and drive it through the
// lilsparse package, the lil-stream CLI and the README example.
package integration
