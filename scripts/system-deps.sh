#!/usr/bin/env bash
# Installs the system libraries the project needs (Debian/Ubuntu), only when they are missing.
# libseccomp2: the seccomp filter of process isolation (pyseccomp loads it with ctypes).
# Set PYTHON to the interpreter the venv is built from (the Makefile does).
set -euo pipefail
missing=()
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing+=(libseccomp2)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# A C compiler and the headers of the Python that builds the venv: the allocator-cap extension
# (runtimes/restricted/_alloccap.c) is compiled by `pip install -e .`.
command -v cc >/dev/null 2>&1 || missing+=(gcc)
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
  missing+=("$("$PY" -c 'import sys; print("python%d.%d-dev" % sys.version_info[:2])' 2>/dev/null || echo python3-dev)")
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
