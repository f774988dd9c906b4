#!/usr/bin/env bash
# Regenerates the Go stubs in lilsparsev1/ from proto/lil_sparse/v1/*.proto.
#
# Uses Debian's protoc, protoc-gen-go and protoc-gen-go-grpc (scripts/go-deps.sh installs them),
# so the committed stubs are reproducible: CI reruns this and fails on a diff.
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd "$module_dir/../.." && pwd -P)"
out_dir="$module_dir/lilsparsev1"

rm -f "$out_dir"/*.pb.go
mkdir -p "$out_dir"
cd "$repo_root/proto"
protoc \
  --go_out="$out_dir" --go_opt=paths=source_relative \
  --go-grpc_out="$out_dir" --go-grpc_opt=paths=source_relative \
  lil_sparse/v1/*.proto

# paths=source_relative mirrors proto/'s folders; the Go package lives flat in lilsparsev1/.
mv "$out_dir"/lil_sparse/v1/*.go "$out_dir"/
rm -rf "$out_dir/lil_sparse"
