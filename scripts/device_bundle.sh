#!/usr/bin/env bash
# Pack the Python packages that the device machine lacks into one carried file (run HERE,
# where PyPI is reachable; the device machine reaches no registry).
#
#   scripts/device_bundle.sh            # -> .whl/device-site.tar.xz (git-ignored), its size printed
#
# The device image (KINDS.md: Python 3.12, numpy 2.5, scipy, pandas, pyarrow, scikit-learn,
# scikit-image, statsmodels, matplotlib, jinja2, pyyaml, psutil, tqdm, pytest, CuPy for CUDA 13,
# numba, nvidia-ml-py, cuda-core) has everything else. Each package below is pinned to a version
# that works with the others: dask and distributed at the version dask-cuda 26.10 pins (through
# rapids-dask-dependency), bokeh below 3.10 for the same reason. Wheels only, for CPython 3.12 on
# manylinux x86_64 (glibc up to 2.34; the image is Ubuntu 24.04, glibc 2.39), no dependency resolution (--no-deps: the list IS the resolution). They are
# unpacked into one site folder (pip --target, no .pyc) and packed with xz -9: SimpleITK alone is
# a 53 MB wheel, 28 MB once unpacked and xz'ed, and a call carries at most 64 MiB.
# scripts/device_check.sh unpacks it into /tmp/site and puts that on PYTHONPATH.
#
# PYVER=3.11 builds the same set for CPython 3.11 (to rehearse scripts/device_check.sh here).
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${PYVER:-3.12}"
python="${PYTHON:-python3}"
[[ -x /work/venv/bin/python ]] && python="${PYTHON:-/work/venv/bin/python}"
out=".whl/device-site${PYVER:+-$pyver}.tar.xz"
[[ -z "${PYVER:-}" ]] && out=".whl/device-site.tar.xz"

# package==version, one per line: what the [project] dependencies and dask-cuda need beyond the image.
PACKAGES=(
  simpleitk==2.5.7                                  # resampling, N4, NIfTI/NRRD
  pydicom==3.0.2 pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0
  pylibjpeg-rle==2.2.0 pyjpegls==1.5.1 highdicom==0.28.2
  pynetdicom==3.0.4 dicomweb-client==0.61.2 retrying==1.4.2   # sarco fetch / export (issue 22)
  dask==2026.7.1 distributed==2026.7.1              # dask-cuda 26.10's pin (rapids-dask-dependency)
  partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
  bokeh==3.9.2 xyzservices==2026.9.1                # the dashboard (distributed warns without it)
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  blake3==1.0.11
  dask-cuda==26.10.0 rapids-dask-dependency==26.10.0
)

wheels="$(mktemp -d)"; site="$(mktemp -d)"
trap 'rm -rf "$wheels" "$site"' EXIT
platforms=(--platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d "$wheels" "${PACKAGES[@]}"
"$python" -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: --python-version "$pyver" \
  --implementation cp "${platforms[@]}" --target "$site/site" "$wheels"/*.whl
rm -rf "$site/site/bin"  # console scripts point at this machine's interpreter
mkdir -p .whl
XZ_OPT="-9 -T${XZ_THREADS:-2}" tar -C "$site" -cJf "$out.tmp" site
mv "$out.tmp" "$out"
echo "$out: $(du -m "$out" | cut -f1) MiB ($(stat -c %s "$out") bytes), ${#PACKAGES[@]} packages:" \
  "$(printf '%s ' "${PACKAGES[@]}")"
