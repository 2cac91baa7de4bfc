#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored through .git/info/exclude) for a GPU machine that reaches no package
# registry: the pinned TVM for the machine's Python, split in two so that each half fits the device
# tool's 64 MiB carry limit beside the working tree.
#
#   .gpu/a/compiler.xz  libtvm_compiler.so, xz -9e (~60 MB): carried by the first call alone
#   .gpu/b/py.tar.xz    the rest of tvm, tvm_ffi (cp312), xgboost-cpu (MetaSchedule's cost model),
#                       onnxslim, onnx-graphsurgeon (~10 MB)
#   .gpu/b/run.sh       the device side: unpack to /tmp/gpupy, then gpu_torch_check + gpu_check
#
# On the device: call 1 carries .gpu/a and runs `bash benchmarks/gpu_bundle.sh --unpack-a`; call 2,
# at once (the machine stays warm ~30 s), carries .gpu/b and runs `bash .gpu/b/run.sh`.
# xz -9e of the compiler takes ~6 minutes here.
set -euo pipefail
cd "$(dirname "$0")/.."
P=/tmp/gpupy
if [ "${1:-}" = "--unpack-a" ]; then
  mkdir -p $P/tvm/lib && xz -T8 -dc .gpu/a/compiler.xz > $P/tvm/lib/libtvm_compiler.so && ls -la $P/tvm/lib
  exit 0
fi
PY=${GPU_PY:-3.12}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
.venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version "$PY" -d "$W" \
  apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 xgboost-cpu onnxslim onnx-graphsurgeon
mkdir -p "$W/x" .gpu/a .gpu/b
for f in "$W"/*.whl; do .venv/bin/python -m zipfile -e "$f" "$W/x"; done
mv "$W/x/tvm/lib/libtvm_compiler.so" "$W/compiler.so"
rm -rf "$W/x/tvm/3rdparty" "$W/x/tvm/web" "$W/x/tvm/src"
xz -9e -T4 -c "$W/compiler.so" > .gpu/a/compiler.xz
tar cf - -C "$W/x" . | xz -9e -T4 > .gpu/b/py.tar.xz
cat > .gpu/b/run.sh <<'RUN'
#!/usr/bin/env bash
# device side (call 2): needs /tmp/gpupy/tvm/lib/libtvm_compiler.so from call 1
set -u
P=/tmp/gpupy; T0=$(date +%s)
xz -dc .gpu/b/py.tar.xz | tar xf - -C $P
CUDART=$(find / -xdev -name 'libcudart.so.13*' -not -path '/proc/*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$(dirname "$CUDART"):${LD_LIBRARY_PATH:-} PYTHONPATH=$P:$(pwd)
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader
python3 -c "import tvm, xgboost; print('tvm', tvm.__version__, 'cuda', tvm.cuda(0).exist)"
timeout ${TORCH_S:-120} python3 benchmarks/gpu_torch_check.py --out $OUT 2>&1 | tail -8
timeout ${UNTUNED_S:-240} python3 benchmarks/gpu_check.py --out $OUT/untuned --batches 1 32 --repeat 100 2>&1 | tail -8
timeout ${TUNED_S:-400} python3 benchmarks/gpu_check.py --out $OUT/tuned --batches 1 --repeat 100 --trials ${TRIALS:-256} 2>&1 | tail -20
echo "done in $(( $(date +%s) - T0 )) s"
RUN
du -cb .gpu/a/* .gpu/b/* | tail -1
