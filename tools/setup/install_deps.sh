#!/bin/bash
# Installs the Debian 12 (bookworm) packages that building and testing moe-engine need, and
# nothing else. Run as root. Idempotent and fast on reruns: it asks dpkg-query what is
# missing and runs `apt-get update` + `apt-get install` only when something is.
#
#   tools/setup/install_deps.sh           install what is missing
#   tools/setup/install_deps.sh --check   only report; exit 1 if something is missing
set -euo pipefail

PACKAGES=(
  bazel-bootstrap         # Bazel 4.2.3; offline with the stand-ins in third_party/bazel
  build-essential         # gcc / g++ (C++17), make, libc headers
  python3                 # tools/run_tests.sh counts test cases with it
  libabsl-dev             # absl 20220623: Status, StatusOr, strings
  libprotobuf-dev         # protobuf runtime and headers
  protobuf-compiler       # protoc, called by genrules
  libgrpc++-dev           # gRPC C++ (server/)
  protobuf-compiler-grpc  # grpc_cpp_plugin
  prometheus-cpp-dev      # prometheus-cpp 1.0: moe_server's metrics endpoint
  openssl                 # the TLS tests make their certificates with it
  libgtest-dev            # GoogleTest
  libgmock-dev            # GoogleMock
  googletest              # GoogleTest sources
  libbenchmark-dev        # Google Benchmark
  libdnnl-dev             # oneDNN 2.6: the CPU backend's matmuls
  libze-dev               # Level Zero loader and headers (xpu backend)
  openmpi-bin             # mpirun: the expert-parallel tests (engine/dist)
  libopenmpi-dev          # Open MPI 4.1 headers and libmpi (engine/dist/mpi_communicator)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  state="$(dpkg-query -W -f='${db:Status-Status}' "${pkg}" 2>/dev/null || true)"
  if [[ "${state}" != "installed" ]]; then
    missing+=("${pkg}")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi
echo "install_deps: missing: ${missing[*]}"
if [[ "${1:-}" == "--check" ]]; then
  exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install_deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install_deps: installed ${missing[*]}"
