#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored through .git/info/exclude) for a GPU machine that reaches no package
# registry, so that one device call carries the pinned TVM for the machine's Python (default 3.12):
#
#   .gpu/compiler.xz   libtvm_compiler.so, xz with the x86 filter, -9e (259 MB -> 57.8 MB; ~6 min here)
#   .gpu/deps.tar.xz   the rest of tvm (no CUTLASS headers, C++ sources, web, tflite front end), tvm_ffi
#                      (cp312; keeps libtvm_ffi_testing.so, which tvm_ffi's core links against),
#                      xgboost-cpu (MetaSchedule's cost model), onnxslim, onnx-graphsurgeon (~6.9 MB)
#   .gpu/run.sh        the device side: unpack to /tmp/gpupy, then gpu_check (untuned rows, then tuning)
#
# The device tool carries at most 64 MiB: the working tree (~7 MB) plus .gpu/ (~65 MB) is over, so
#   benchmarks/gpu_bundle.sh --trim     deletes from the working tree the committed files the check does
#                                       not read (tests/, docs/, models/examples/, benchmarks/ but for
#                                       gpu_check.py, merge_latency.py and itself), listed in
#                                       .git/gpu_bundle_trimmed; refuses on uncommitted changes there
#   (device) run: `bash .gpu/run.sh`, carry [".gpu"]; knobs: BATCHES, MODELS, TRIALS, GPU_S, MAXS, TUNE_UNTIL
#   benchmarks/gpu_bundle.sh --restore  brings back the files --trim deleted (its list), and no other: a file
#                                       you deleted yourself stays deleted (it brought back every deleted file)
# Measured with this layout (2026-11-29, H200): setup 10-18 s on the device, then gpu_check.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIM=(tests docs models/examples benchmarks)
LIST=$(git rev-parse --git-path gpu_bundle_trimmed)   # what --trim deleted (NUL-separated): all --restore touches
if [ "${1:-}" = "--trim" ]; then
  if [ -e "$LIST" ]; then
    echo "gpu_bundle: the tree is trimmed already ($LIST lists the files); --restore first" >&2; exit 2
  fi
  if ! git diff --quiet HEAD -- "${TRIM[@]}"; then
    echo "gpu_bundle: uncommitted changes under ${TRIM[*]}: commit them first (--restore checks out HEAD)" >&2; exit 2
  fi
  # the committed files still in the tree (one you deleted yourself is not ours to bring back)
  KEEP='^benchmarks/\(gpu_check\.py\|merge_latency\.py\|gpu_bundle\.sh\)$'
  git ls-files -z -- "${TRIM[@]}" | { grep -zv "$KEEP" || true; } \
    | while IFS= read -r -d '' f; do if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done > "$LIST.tmp"
  mv "$LIST.tmp" "$LIST"
  xargs -0 -r rm -f -- < "$LIST"
  echo "tree + .gpu: $(( ( $(git ls-files -z | xargs -0 cat 2>/dev/null | wc -c) + $(cat .gpu/* | wc -c) ) / 1048576 )) MiB (limit 64)"
  exit 0
fi
if [ "${1:-}" = "--restore" ]; then
  if [ ! -e "$LIST" ]; then
    echo "gpu_bundle: nothing to restore ($LIST not found: --trim did not run here); a file you deleted yourself" \
      "comes back with: git checkout -- <path>" >&2; exit 2
  fi
  # only the files --trim deleted that are still missing (one written again since is yours: left as it is)
  while IFS= read -r -d '' f; do if [ ! -e "$f" ] && [ ! -L "$f" ]; then printf '%s\0' "$f"; fi; done < "$LIST" \
    | xargs -0 -r git checkout --
  rm -f "$LIST"
  exit 0
fi
PY=${GPU_PY:-3.12}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
.venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$W" \
  apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 xgboost-cpu==3.2.0 onnxslim==0.1.98 onnx-graphsurgeon==0.6.1
mkdir -p "$W/x" .gpu
for f in "$W"/*.whl; do .venv/bin/python -m zipfile -e "$f" "$W/x"; done
mv "$W/x/tvm/lib/libtvm_compiler.so" "$W/compiler.so"
rm -rf "$W/x/tvm/3rdparty" "$W/x/tvm/web" "$W/x/tvm/src" "$W/x/tvm/relax/frontend/tflite" \
  "$W/x/tvm_ffi/3rdparty/libbacktrace" "$W/x/xgboost/testing" "$W/x/xgboost/dask" "$W/x/xgboost/spark"
xz --x86 --lzma2=preset=9e,dict=256MiB -c "$W/compiler.so" > .gpu/compiler.xz
tar cf - -C "$W/x" . | xz --x86 --lzma2=preset=9e,dict=64MiB > .gpu/deps.tar.xz
cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# device side: TVM into /tmp/gpupy, then gpu_check (untuned rows for every batch first, then tuning)
set -u
P=/tmp/gpupy; T0=$(date +%s); mkdir -p $P/tvm/lib
xz -dc .gpu/compiler.xz > $P/tvm/lib/libtvm_compiler.so
xz -dc .gpu/deps.tar.xz | tar xf - -C $P
CUDART=$(find /usr/local /opt -name 'libcudart.so.13*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$(dirname "$CUDART"):${LD_LIBRARY_PATH:-} PYTHONPATH=$P:$(pwd) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader
python3 -c "import tvm, xgboost; print('tvm', tvm.__version__, 'cuda', tvm.cuda(0).exist)" || exit 4
echo "setup $(( $(date +%s) - T0 )) s"
timeout ${GPU_S:-480} python3 benchmarks/gpu_check.py --out $OUT --batches ${BATCHES:-1 32} --models ${MODELS:-c a} \
  --repeat 100 --trials ${TRIALS:-256} --max-seconds ${MAXS:-150} --tune-until ${TUNE_UNTIL:-330} 2>&1 \
  | tee $OUT/gpu_check.log | grep -v "^  " | tail -40
echo "rc ${PIPESTATUS[0]} done in $(( $(date +%s) - T0 )) s"
RUN
du -cb .gpu/* | tail -1
