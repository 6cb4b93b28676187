#!/usr/bin/env bash
# Sets up Grove on a Debian machine: installs the Debian packages it needs (only those missing),
# fetches the Brown corpus, builds, and prepares the tokenized dataset. Running it again does no
# repeated work: installed packages, the corpus, the build and the dataset are all reused.
#
#   launch/setup.sh            # build everything (also what the tests need)
#
# Environment: GROVE_BUILD_DIR (default build), GROVE_CUDA (AUTO|ON|OFF, default AUTO: the CUDA
# kernels are compiled whenever nvcc is found, even without a GPU), GROVE_JOBS (build jobs),
# GROVE_INSTALL_CUDA=1 (install Debian's CUDA toolkit when nvcc is missing and the enabled apt
# sources offer CUDA >= 12; opt-in because it is several GB; see docs/testing.md#without-nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${GROVE_BUILD_DIR:-build}
CORPUS_DIR=third_party/corpus/brown
DATA_DIR=runs/data-brown-8192

step() { printf '\n==> %s\n' "$*"; }

# ---- 1. Debian packages (docs/architecture.md#dependencies) -------------------------------------
PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libopenmpi-dev openmpi-bin
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libopenblas-openmp-dev libdnnl-dev libsqlite3-dev libsentencepiece-dev
  nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-torch python3-numpy
  libcpp-httplib-dev chromium python3-prometheus-client
  iproute2 util-linux
)
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  step "Debian packages: all present"
fi

# ---- 1b. CUDA toolkit (optional) ---------------------------------------------------------------
# Without nvcc the CUDA kernels, the GPU tests and the CUDA-emulator tests (which run the CUDA code
# on the CPU, compiled with the toolkit's headers) are not built. Grove's device code is C++20, so
# it needs CUDA >= 12: Debian 12's nvidia-cuda-toolkit (non-free) is CUDA 11.8, too old; later
# releases package CUDA 12. With GROVE_INSTALL_CUDA=1 the package is installed when the enabled
# apt sources offer a recent enough one; otherwise this says what to do.
if [ "${GROVE_CUDA:-AUTO}" != OFF ] && ! command -v nvcc >/dev/null 2>&1 &&
   [ ! -x /usr/local/cuda/bin/nvcc ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  [ "${GROVE_INSTALL_CUDA:-0}" = 1 ] && $SUDO apt-get update -qq
  cuda_pkg=$(apt-cache policy nvidia-cuda-toolkit 2>/dev/null | awk '/Candidate:/ {print $2}')
  cuda_major=${cuda_pkg#*:}  # drop an epoch
  cuda_major=${cuda_major%%.*}
  if [ -n "$cuda_pkg" ] && [ "$cuda_pkg" != "(none)" ] && [ "$cuda_major" -ge 12 ] 2>/dev/null; then
    if [ "${GROVE_INSTALL_CUDA:-0}" = 1 ]; then
      step "installing nvidia-cuda-toolkit $cuda_pkg (GROVE_INSTALL_CUDA=1)"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nvidia-cuda-toolkit
      cuda_installed=1
    else
      step "CUDA toolkit: nvcc not found, so the CUDA kernels, GPU tests and CUDA-emulator tests" \
           "will not be built; Debian's nvidia-cuda-toolkit $cuda_pkg is available (several GB):" \
           "rerun with GROVE_INSTALL_CUDA=1 to install it"
    fi
  else
    msg="CUDA toolkit: nvcc not found, so the CUDA kernels, GPU tests and CUDA-emulator tests will"
    msg+=" not be built. The enabled apt sources offer nvidia-cuda-toolkit ${cuda_pkg:-(none)};"
    msg+=" Grove needs CUDA >= 12: enable the non-free component on a Debian release that packages"
    msg+=" CUDA 12, or install NVIDIA's toolkit into /usr/local/cuda, then rerun"
    if [ "${GROVE_INSTALL_CUDA:-0}" = 1 ]; then
      echo "error: GROVE_INSTALL_CUDA=1: ${msg#CUDA toolkit: }" >&2
      exit 1
    fi
    step "$msg"
  fi
fi

# ---- 2. Corpus -----------------------------------------------------------------------------------
step "Brown corpus -> $CORPUS_DIR"
bash launch/fetch_corpus.sh "$CORPUS_DIR"

# ---- 3. Build ------------------------------------------------------------------------------------
step "building in $BUILD_DIR"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -G Ninja -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DGROVE_CUDA="${GROVE_CUDA:-AUTO}"
elif [ "${cuda_installed:-0}" = 1 ]; then
  # The build was configured without nvcc (its cache says so): look for the compiler again.
  cmake -U CMAKE_CUDA_COMPILER -S . -B "$BUILD_DIR"
fi
cmake --build "$BUILD_DIR" -j "${GROVE_JOBS:-$(nproc)}"

# ---- 3b. Dashboard test driver: playwright-core from npm (drives Debian's chromium; no browser
# download), installed from the committed lock file, again only when the lock file changed.
WEB_TEST=tests/coordinator/web
if [ ! "$WEB_TEST/node_modules/.package-lock.json" -nt "$WEB_TEST/package-lock.json" ]; then
  step "npm ci in $WEB_TEST"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$WEB_TEST" --no-audit --no-fund --ignore-scripts
fi

# ---- 4. Dataset ----------------------------------------------------------------------------------
step "dataset -> $DATA_DIR"
"$BUILD_DIR/data/grove-prepare-data" --corpus "$CORPUS_DIR" --out "$DATA_DIR" --vocab 8192

step "setup done ($ROOT)"
