#!/usr/bin/env bash
# Everything CI checks for the Go client: fresh stubs, gofmt, go vet, then the tests.
# The integration tests start the Python server with $LIL_SPARSE_PYTHON (default python3).
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
"$module_dir/genproto.sh" --check
unformatted="$(gofmt -l "$module_dir")"
if [ -n "$unformatted" ]; then
  echo "gofmt needed on: $unformatted" >&2
  exit 1
fi
"$module_dir/gopath.sh" go vet ./...
# -count=1: the integration tests depend on the Python server, which go's test cache cannot see.
"$module_dir/gopath.sh" go test -count=1 "$@" ./...
