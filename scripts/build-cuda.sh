#!/usr/bin/env bash
# Builds the CUDA binary (`cargo build --release --features cuda`, into target/cuda/release/rmroute) on
# a fresh Debian 12 machine with no CUDA toolkit, fetching what the build needs first. The CPU build
# and the tests never need this.
#
#   scripts/build-cuda.sh                      # for V100 (compute capability 7.0)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh  # A100 (Ampere); 86 for RTX 30xx/A10, 89 for L4/RTX 40xx
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh  # H100/H200 (Hopper)
#
# The toolkit is CUDA 11.8 from Debian's non-free archive (nvidia-cuda-toolkit, nvidia-cuda-dev and the
# libraries they name), unpacked into $CUDA_PREFIX (default ~/.cache/rmroute/cuda-11.8): each package's
# SHA-256 is checked against Debian's index, and the index's against Debian's release file, whose
# signature gpgv checks with Debian's archive keyring. Nothing is installed system-wide but the host
# compiler g++-11 (Debian main; CUDA 11.8's nvcc refuses GCC 12), through apt-get. Why not PyPI: its
# CUDA 12 wheels (nvidia-cuda-nvcc-cu12, checked 12.1.105 to 12.9.86) ship ptxas and libnvvm but no
# nvcc, and the CUDA 13 wheels that do ship nvcc no longer compile for compute capability 7.0. CUDA 11.8
# compiles for 7.0 through 9.0.
#
# The binary needs, where it runs, an NVIDIA driver for CUDA 11.8 or newer (520+) and the CUDA 11
# libraries it links (libcudart.so.11.0, libcublas.so.11, libcublasLt.so.11, libcurand.so.10,
# libnvrtc.so.11.2): Debian's nvidia-cuda-dev, NVIDIA's CUDA 11.8 installer, or
# LD_LIBRARY_PATH=$CUDA_PREFIX/usr/lib/x86_64-linux-gnu from this script's download.
#
# SKIP_FETCH=1 builds with a toolkit already installed (nvcc on PATH, CUDA_HOME set). Extra arguments
# go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

cap=${CUDA_COMPUTE_CAP:-70}
case "$cap" in
  70 | 72 | 75 | 80 | 86 | 87 | 89 | 90) ;;
  *)
    echo "CUDA_COMPUTE_CAP=$cap: CUDA 11.8 builds for 70, 72, 75, 80, 86, 87, 89 or 90 (no dot: 8.0 is 80)" >&2
    exit 2
    ;;
esac
prefix=${CUDA_PREFIX:-$HOME/.cache/rmroute/cuda-11.8}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in cargo python3; do
  command -v "$tool" >/dev/null || { echo "no $tool: install Rust (rustup) and Python 3 first" >&2; exit 2; }
done

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if [ "${SKIP_FETCH:-0}" != 1 ]; then
  if ! command -v g++-11 >/dev/null; then
    echo "== installing g++-11 (CUDA 11.8's host compiler) with apt-get" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++-11 >/dev/null
  fi
  if [ -e "$prefix" ] && [ ! -e "$prefix/.rmroute-cuda" ] && [ -n "$(ls -A "$prefix")" ]; then
    echo "$prefix holds something this script did not write: choose another CUDA_PREFIX" >&2
    exit 2
  fi
  if [ ! -e "$prefix/.complete" ]; then
    echo "== fetching CUDA 11.8 from Debian's non-free archive into $prefix (about 1.2 GB to download)" >&2
    rm -rf "$prefix"
    mkdir -p "$prefix/debs"
    touch "$prefix/.rmroute-cuda"
    python3 - "$mirror" "$prefix/debs" <<'PY'
"""Downloads the named Debian packages from bookworm's index, checking each one's SHA-256 against the
index, and the index's against the release file, whose signature gpgv checks with Debian's keyring."""
import hashlib, lzma, subprocess, sys, urllib.request

mirror, out = sys.argv[1], sys.argv[2]
release = urllib.request.urlopen(f"{mirror}/dists/bookworm/InRelease").read()
with open(f"{out}/InRelease", "wb") as f:
    f.write(release)
check = subprocess.run(["gpgv", "--keyring", "/usr/share/keyrings/debian-archive-keyring.gpg", f"{out}/InRelease"],
                       capture_output=True, text=True)
if check.returncode != 0:
    sys.exit(f"Debian's release file does not carry a good signature:\n{check.stderr}")
index_sha = {}
section = None
for line in release.decode().splitlines():
    if not line.startswith(" "):
        section = line.rstrip(":")
    elif section == "SHA256":
        digest, _size, name = line.split()
        index_sha[name] = digest
wanted = {
    "non-free": ["nvidia-cuda-toolkit", "nvidia-cuda-dev", "libcudart11.0", "libcublas11",
                 "libcublaslt11", "libcurand10", "libnvrtc11.2", "libnvrtc-builtins11.8", "libnvvm4"],
    "main": ["libthrust-dev", "libcub-dev", "libcu++-dev"],
}
for component, names in wanted.items():
    index = f"{mirror}/dists/bookworm/{component}/binary-amd64/Packages.xz"
    raw = urllib.request.urlopen(index).read()
    if hashlib.sha256(raw).hexdigest() != index_sha.get(f"{component}/binary-amd64/Packages.xz"):
        sys.exit(f"{index}: SHA-256 does not match Debian's signed release file")
    text = lzma.decompress(raw).decode()
    packages = {}
    for block in text.split("\n\n"):
        fields = dict(l.split(": ", 1) for l in block.splitlines() if ": " in l and not l.startswith(" "))
        if "Package" in fields:
            packages[fields["Package"]] = fields
    for name in names:
        if name not in packages:
            sys.exit(f"{name} is not in {index}")
        fields = packages[name]
        data = urllib.request.urlopen(f"{mirror}/{fields['Filename']}").read()
        if hashlib.sha256(data).hexdigest() != fields["SHA256"]:
            sys.exit(f"{name}: SHA-256 does not match Debian's index")
        with open(f"{out}/{name}.deb", "wb") as f:
            f.write(data)
        print(f"   {name} {fields['Version']} ({len(data) >> 20} MiB)", file=sys.stderr)
PY
    for deb in "$prefix"/debs/*.deb; do dpkg-deb -x "$deb" "$prefix"; done
    rm -rf "$prefix/debs"
    # Debian's nvcc.profile (a link to /etc/nvcc.profile) names /usr; this one names the unpacked tree.
    bin=$prefix/usr/lib/nvidia-cuda-toolkit/bin
    rm -f "$bin/nvcc.profile"
    cat >"$bin/nvcc.profile" <<PROFILE
NVVMIR_LIBRARY_DIR = $prefix/usr/lib/nvidia-cuda-toolkit/libdevice
PATH += $bin:$prefix/usr/bin:
INCLUDES += "-I$prefix/usr/include" \$(_SPACE_)
LIBRARIES =+ \$(_SPACE_) "-L$prefix/usr/lib/x86_64-linux-gnu/stubs" "-L$prefix/usr/lib/x86_64-linux-gnu"
PROFILE
    touch "$prefix/.complete"
  fi
  # cudarc looks for libraries under $CUDA_HOME/lib and lib/stubs, and for nvcc under bin.
  home=$prefix/home
  mkdir -p "$home/bin"
  ln -sfn "$prefix/usr/include" "$home/include"
  ln -sfn "$prefix/usr/lib/x86_64-linux-gnu" "$home/lib"
  # A wrapper, not a link: nvcc finds its nvcc.profile beside the path it was started as. Not that
  # folder on PATH either: it holds Debian's gcc and g++ wrappers.
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$prefix/usr/lib/nvidia-cuda-toolkit/bin/nvcc" >"$home/bin/nvcc"
  chmod +x "$home/bin/nvcc"
  export CUDA_HOME=$home
  export PATH=$home/bin:$PATH
  export NVCC_CCBIN=${NVCC_CCBIN:-g++-11}
  export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
command -v nvcc >/dev/null || { echo "no nvcc on PATH: drop SKIP_FETCH, or install a CUDA toolkit" >&2; exit 2; }
export CUDA_COMPUTE_CAP=$cap

# Its own target folder, so the CPU build in target/release is not rebuilt back and forth.
target=${CARGO_TARGET_DIR:-target/cuda}
echo "== $(nvcc --version | tail -1); compute capability $cap; host compiler ${NVCC_CCBIN:-default}" >&2
cargo build --release --locked --features cuda --target-dir "$target" "$@"
echo "== built $target/release/rmroute for compute capability $cap: give it --device cuda (or cuda:N)," >&2
echo "   or \"device\": \"cuda\" in a config" >&2
