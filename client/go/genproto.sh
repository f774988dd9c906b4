#!/usr/bin/env bash
# Regenerates the Go stubs in lilsparsev1/ from proto/lil_sparse/v1/*.proto.
#
#   client/go/genproto.sh          # rewrite the committed stubs
#   client/go/genproto.sh --check  # regenerate into a temp folder; fail if the committed ones differ
#
# Uses Debian's protoc, protoc-gen-go and protoc-gen-go-grpc (scripts/go-deps.sh installs them),
# whose versions are written into the stubs' headers, so the stubs are reproducible.
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd "$module_dir/../.." && pwd -P)"
committed="$module_dir/lilsparsev1"

generate() {
  local out_dir="$1"
  mkdir -p "$out_dir"
  rm -f "$out_dir"/*.pb.go
  (
    cd "$repo_root/proto"
    protoc \
      --go_out="$out_dir" --go_opt=paths=source_relative \
      --go-grpc_out="$out_dir" --go-grpc_opt=paths=source_relative \
      lil_sparse/v1/*.proto
  )
  # paths=source_relative mirrors proto/'s folders; the Go package lives flat in lilsparsev1/.
  mv "$out_dir"/lil_sparse/v1/*.go "$out_dir"/
  rm -rf "$out_dir/lil_sparse"
}

if [ "${1:-}" = "--check" ]; then
  fresh="$(mktemp -d)"
  trap 'rm -rf "$fresh"' EXIT
  generate "$fresh"
  if ! diff -ru "$committed" "$fresh" >&2; then
    echo "client/go/lilsparsev1 is stale: run client/go/genproto.sh (make go-proto) and commit" >&2
    exit 1
  fi
  echo "client/go/lilsparsev1 matches proto/"
else
  generate "$committed"
fi
