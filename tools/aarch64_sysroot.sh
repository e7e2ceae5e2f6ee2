#!/bin/sh
# An aarch64 Python for running the runtime under qemu-user (no ARM hardware, no binfmt): Debian's arm64
# python3.11 and its libraries extracted into DIR/root, the runtime's aarch64 wheels unzipped into DIR/site.
# Used by `make aarch64-check`. Needs root for apt-get (qemu-user-static, the arm64 package lists).
set -eu
DIR=${1:-.aarch64}
PY=${PY:-python3}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac  # still valid after the cd below
command -v qemu-aarch64-static >/dev/null || apt-get install -y -qq qemu-user-static
dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64 && apt-get update -qq; }
mkdir -p "$DIR/debs" "$DIR/root" "$DIR/wheels" "$DIR/site"
cd "$DIR/debs"
for p in python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libffi8 libssl3 \
         libbz2-1.0 liblzma5 libgcc-s1 libstdc++6 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 \
         libcrypt1 libtirpc3 libnsl2 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1; do
  ls "${p}"_*_arm64.deb >/dev/null 2>&1 || apt-get download -q "$p:arm64"
done
for d in *.deb; do dpkg-deb -x "$d" ../root; done
cd ../wheels
# The runtime's pinned set where it has aarch64 wheels; ai-edge-litert's newest aarch64 wheel is 1.4.0.
$PY -m pip download -q --only-binary=:all: --no-deps --python-version 3.11 \
  --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
  numpy==1.26.4 onnxruntime==1.23.0 soundfile==0.13.1 tqdm==4.67.1 ai-edge-litert==1.4.0 cffi flatbuffers pycparser
for w in *.whl; do $PY -m zipfile -e "$w" ../site; done
touch ../.complete  # `make aarch64-check` rebuilds a sysroot that lacks this (an interrupted build)
echo "aarch64 python: qemu-aarch64-static -L $DIR/root $DIR/root/usr/bin/python3.11 (PYTHONPATH=$DIR/site)"
