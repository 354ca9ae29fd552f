#!/usr/bin/env bash
# Fetches the wheels that benchmarks/accelerator.sh needs on an accelerator machine that has JAX,
# Flax, Optax, Orbax, NumPy, OpenCV and Pillow but not the rest of the project's packages, and no
# network: run this where pip can reach an index, carry DIR along, and give it to
# `benchmarks/accelerator.sh --wheels=DIR`.
#
# Usage: benchmarks/accelerator_wheels.sh DIR [PYTHON_VERSION (default 3.12)]
#
# The versions are the ones constraints.txt pins. The list is what `benchmarks/run.py` imports
# beyond such a machine's packages (the import closure of run.py, the trainer and the sampler).
set -euo pipefail

if (($# < 1)) || [[ "$1" == -h || "$1" == --help ]]; then
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  (($# >= 1)) && exit 0 || exit 2
fi
DIR="$1"
PYVER="${2:-3.12}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGES=(array_record clu googleapis-common-protos grain immutabledict ml_collections portpicker
  promise tensorboardX tensorflow-datasets tensorflow-metadata toml)

pins=()
for name in "${PACKAGES[@]}"; do
  pattern="^${name//[-_]/[-_]}=="
  pin="$(grep -iE "$pattern" "$ROOT/constraints.txt" | head -n 1 || true)"
  if [[ -z "$pin" ]]; then
    echo "accelerator_wheels.sh: constraints.txt pins no version of $name" >&2
    exit 1
  fi
  pins+=("$pin")
done

mkdir -p "$DIR"
for pin in "${pins[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DIR" "$pin" 2>/dev/null; then
    # No wheel on the index (promise ships a source archive only): build one here, which works
    # for pure-Python packages (the wheel must be tagged py3-none-any to run there).
    python3 -m pip wheel -q --no-deps -w "$DIR" "$pin"
    name="${pin%%==*}"
    if ! ls "$DIR" | grep -iE "^${name//[-_]/[-_]}-.*-py3-none-any\.whl$" >/dev/null; then
      echo "accelerator_wheels.sh: $pin has no wheel for Python $PYVER and is not pure Python" >&2
      exit 1
    fi
  fi
done
ls -1 "$DIR"
du -sh "$DIR"
