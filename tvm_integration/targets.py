"""Target names -> ``tvm.target.Target`` plus what the rest of the package needs to know.

Accepted specs (see :func:`resolve_target`):

``cpu`` / ``host`` / ``llvm``
    Host LLVM target with the detected ``mcpu`` (LLVM's host CPU name) and
    ``num-cores = os.cpu_count()``.
``cuda`` / ``gpu``
    CUDA with ``arch`` from ``cuda_arch`` (``--cuda-arch sm_90``), else from
    ``nvidia-smi`` when a GPU is visible, else a clear error.
``aarch64`` / ``arm`` / ``arm64``
    64-bit Arm Linux (``mtriple aarch64-linux-gnu``, ``+neon``), cross-compiled
    and linked with Debian's ``aarch64-linux-gnu-g++``.
``aarch64:<board>``
    a recommended dict from :data:`AARCH64_TARGETS` (``rpi4``, ``rpi5``,
    ``orin-cpu``, ``graviton2``, ``graviton3``): ``mcpu`` and ``num-cores`` set.
a TVM target tag
    e.g. ``raspberry-pi/4b-aarch64`` or ``nvidia/geforce-rtx-3090-ti``; the list
    is :func:`list_target_tags` (``tvm.target.tag.list_tags()`` in TVM 0.27).
a JSON target dict (string or ``dict``)
    e.g. ``{"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 8}``.  TVM
    0.27 no longer parses CLI-style strings such as ``"llvm -mcpu=x"``.
"""

from __future__ import annotations

import difflib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import MissingToolError, TVMError, UnknownTargetError

AARCH64_CXX = "aarch64-linux-gnu-g++"
AARCH64_APT = "g++-aarch64-linux-gnu"
CROSS_HINT = f"run `make cross` or `apt-get install -y {AARCH64_APT}`"

CPU_NAMES = ("cpu", "host", "llvm")
CUDA_NAMES = ("cuda", "gpu")
AARCH64_NAMES = ("aarch64", "arm", "arm64")
BUILTIN_NAMES = CPU_NAMES + CUDA_NAMES + AARCH64_NAMES

# Default core count for the generic aarch64 target (most boards: 4).
AARCH64_DEFAULT_CORES = 4

# Recommended aarch64 Linux targets (``--target aarch64:<board>``).  ``mcpu``
# lets LLVM schedule for the core and enables its extensions (dotprod on
# A76/Neoverse, SVE on V1); ``num-cores`` is what MetaSchedule parallelises for
# (big cores only on big.LITTLE boards).  TVM's own tags cover some boards too
# (``raspberry-pi/4b-aarch64``, ``arm/rasp4b64``; see list_target_tags()).
AARCH64_TARGETS: dict[str, dict[str, Any]] = {
    "rpi4": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
             "mattr": ["+neon"], "num-cores": 4},
    "rpi5": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
             "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    "orin-cpu": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae",
                 "mattr": ["+neon", "+dotprod"], "num-cores": 8},
    "graviton2": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1",
                  "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    "graviton3": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1",
                  "mattr": ["+neon", "+dotprod", "+sve"], "num-cores": 4},
}


@dataclass(frozen=True)
class TargetInfo:
    """What the integration needs to know about a resolved target.

    Attributes
    ----------
    name:
        The spec as the user gave it (or ``"json"`` for a raw dict).
    kind:
        TVM target kind (``"llvm"``, ``"cuda"``...).
    arch:
        Hardware family: ``"x86_64"``, ``"aarch64"``, ``"cuda"``, ...
    runs_on_host:
        Whether a module built for it can be loaded and run on this machine.
    device:
        TVM device name to run on (``"cpu"``, ``"cuda"``).
    cross_compiler:
        Compiler used to link the exported shared library, when it is not the
        host compiler (``"aarch64-linux-gnu-g++"``), else ``None``.
    intrin_modules:
        Modules of ``tvm.s_tir.tensor_intrin`` the MetaSchedule workers must
        import for this target (``("x86",)``, ``("arm_cpu",)``, ``("cuda",)``).
        Importing all of ``tvm.s_tir.tensor_intrin`` costs ~60 s of CPU.
    num_cores:
        ``num-cores`` of an LLVM target (MetaSchedule needs it), else ``None``.
    target_json:
        The target as a JSON-able dict (what ``str(target)`` prints).
    """

    name: str
    kind: str
    arch: str
    runs_on_host: bool
    device: str
    cross_compiler: str | None = None
    intrin_modules: tuple[str, ...] = ()
    num_cores: int | None = None
    target_json: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["intrin_modules"] = list(self.intrin_modules)
        return d


# --------------------------------------------------------------------------- helpers


def host_cpu_name() -> str | None:
    """LLVM's name for the host CPU (``znver4``, ``skylake-avx512``...), or None."""
    try:
        import tvm

        f = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName", allow_missing=True)
        if f is not None:
            name = str(f())
            if name and name != "generic":
                return name
    except Exception:  # pragma: no cover - LLVM-less TVM builds
        pass
    return None


def host_physical_cores() -> int:
    """Physical cores of this host (hyper-threads do not help dense kernels); logical count as fallback."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:  # pragma: no cover - psutil missing
        pass
    return os.cpu_count() or 1


def configure_runtime_threads(num_cores: int | None = None) -> dict[str, Any]:
    """Make TVM's runtime thread pool use ``num_cores`` threads; returns what it uses.

    Gotcha (TVM 0.27, x86): without ``TVM_NUM_THREADS`` the runtime takes
    ``hardware_concurrency() / 2`` threads (it assumes hyper-threading), i.e.
    **one** thread on a 2-core VM, while the kernels were scheduled for
    ``num-cores`` and onnxruntime uses every core.  The pool reads the variable
    once, when it is first used, so this must run before the first parallel
    kernel in this process (MetaSchedule's runner workers inherit it).  A value
    the user set is respected.
    """
    import tvm

    wanted = int(num_cores or host_physical_cores())
    source = "user"
    if not os.environ.get("TVM_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(wanted)
        source = "set"
    f = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    used = int(f()) if f is not None else None
    return {"TVM_NUM_THREADS": os.environ["TVM_NUM_THREADS"], "source": source, "runtime_threads": used,
            "wanted": wanted}


def host_arch() -> str:
    """Normalised machine name of this host: ``x86_64``, ``aarch64``..."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def list_target_tags() -> list[str]:
    """Names of TVM's registered target tags (``tvm.target.tag.list_tags()``)."""
    from tvm.target.tag import list_tags

    tags = list_tags() or {}
    return sorted(str(k) for k in tags.keys())


def detect_cuda_arch() -> str | None:
    """``sm_XY`` of GPU 0 from ``nvidia-smi``, or None when no GPU/driver is visible."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\.(\d+)", line)
        if m:
            return f"sm_{m.group(1)}{m.group(2)}"
    return None


def _normalise_cuda_arch(arch: str, what: str = "--cuda-arch") -> str:
    a = str(arch).strip().lower()
    m = re.fullmatch(r"(\d{1,2})\.(\d)([a-z]?)", a)   # nvidia-smi's compute capability: 8.6, 12.0
    if m:
        return f"sm_{m.group(1)}{m.group(2)}{m.group(3)}"
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})([a-z]?)", a)   # sm_90, sm_90a, sm_120, 86
    if not m:
        raise TVMError(f"invalid {what} {arch!r}: expected e.g. sm_90, sm_86, sm_120, 8.0, 12.0")
    return f"sm_{m.group(1)}{m.group(2)}"


def _require_cross_compiler(cxx: str = AARCH64_CXX) -> str:
    if shutil.which(cxx) is None:
        raise MissingToolError(
            f"the aarch64 target needs the cross compiler {cxx}, which is not installed: {CROSS_HINT}"
        )
    return cxx


def _intrin_modules_for(kind: str, arch: str) -> tuple[str, ...]:
    if kind == "cuda":
        return ("cuda",)
    if kind == "rocm":
        return ("rocm",)
    if kind == "metal":
        return ("metal",)
    if kind == "llvm":
        if arch in ("x86_64", "i386", "i686", "x86"):
            return ("x86",)
        if arch in ("aarch64", "arm"):
            return ("arm_cpu",)
        if arch.startswith("riscv"):
            return ("riscv_cpu",)
        if arch == "hexagon":
            return ("hexagon",)
    return ()


def _arch_of_llvm_target(target) -> str:
    mtriple = str(target.attrs.get("mtriple", "") or "")
    if not mtriple:
        return host_arch()
    head = mtriple.split("-", 1)[0].lower()
    if head in ("aarch64", "arm64", "aarch64_be"):
        return "aarch64"
    if head.startswith("arm") or head.startswith("thumb"):
        return "arm"
    if head in ("x86_64", "amd64"):
        return "x86_64"
    if head in ("i386", "i686"):
        return "i386"
    return head


def _check_buildable(target) -> None:
    """UnknownTargetError for a target kind this TVM cannot compile to: no code generator in the wheel
    (``{"kind": "vulkan"}``: "Cannot find global function target.build.vulkan") or no Relax pipeline
    (``{"kind": "c"}``, ``ext_dev``). Both failed only at the build, after the collapse had run and written its
    model; the target is refused here, before any work, like an unknown name."""
    import tvm

    from .compile import _backend_pipeline_module

    kind = target.kind.name
    if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
        raise UnknownTargetError(f"this TVM ({tvm.__version__}) has no code generator for target kind {kind!r} (it "
                                 f"was built without it); use cpu, cuda, aarch64 or another kind it has")
    try:
        _backend_pipeline_module(target)
    except TVMError as e:
        raise UnknownTargetError(f"{e}, so it cannot compile a model for it; use cpu, cuda, aarch64 or a GPU "
                                 "kind (opencl, rocm, metal, webgpu)") from None


def _info_for(target, name: str) -> TargetInfo:
    """Build a TargetInfo from an already created tvm Target."""
    import tvm

    kind = target.kind.name
    _check_buildable(target)
    target_json = json.loads(str(target))
    num_cores = target.attrs.get("num-cores", None)
    num_cores = int(num_cores) if num_cores is not None else None
    if kind == "llvm":
        arch = _arch_of_llvm_target(target)
        cross = None
        if arch != host_arch():
            if arch == "aarch64":
                cross = _require_cross_compiler()
            else:
                raise MissingToolError(
                    f"target {name!r} is for {arch}; only host ({host_arch()}) and aarch64 "
                    "cross compilation are set up here"
                )
        return TargetInfo(
            name=name,
            kind=kind,
            arch=arch,
            runs_on_host=cross is None,
            device="cpu",
            cross_compiler=cross,
            intrin_modules=_intrin_modules_for(kind, arch),
            num_cores=num_cores,
            target_json=target_json,
        )
    if kind == "cuda":
        try:
            runs = bool(tvm.cuda(0).exist)
        except Exception:  # pragma: no cover
            runs = False
        return TargetInfo(
            name=name,
            kind=kind,
            arch="cuda",
            runs_on_host=runs,
            device="cuda",
            cross_compiler=None,
            intrin_modules=_intrin_modules_for(kind, "cuda"),
            num_cores=None,
            target_json=target_json,
        )
    # Other kinds (rocm, metal, vulkan, opencl...): compile-only, best effort.
    try:
        runs = bool(tvm.device(kind, 0).exist)
    except Exception:
        runs = False
    return TargetInfo(
        name=name,
        kind=kind,
        arch=kind,
        runs_on_host=runs,
        device=kind,
        intrin_modules=_intrin_modules_for(kind, kind),
        num_cores=num_cores,
        target_json=target_json,
    )


_JSON_WAY_OUT = ("give a JSON object in shell quotes, such as '{\"kind\": \"llvm\", \"num-cores\": 4}', or a name "
                 "such as cpu")


def _valid_names_message() -> str:
    return (
        "valid names: "
        + ", ".join(BUILTIN_NAMES)
        + ", a TVM target tag (e.g. raspberry-pi/4b-aarch64; see "
        "tvm_integration.targets.list_target_tags()), or a JSON target dict "
        'such as \'{"kind": "llvm", "num-cores": 4}\''
    )


# --------------------------------------------------------------------------- main API


def resolve_target(spec: str | dict, cuda_arch: str | None = None):
    """Resolve a user target spec into ``(tvm.target.Target, TargetInfo)``.

    Raises :class:`~tvm_integration.errors.UnknownTargetError` (a ``ValueError``
    and a ``TVMError``) for unknown names, and ``TVMError`` subclasses for a
    missing cross compiler or a CUDA arch that cannot be determined.
    """
    from tvm.target import Target

    if isinstance(spec, dict):
        return _from_dict(dict(spec), "json", cuda_arch)
    if not isinstance(spec, str):
        raise UnknownTargetError(f"target must be a name or a JSON dict, got {type(spec).__name__}")
    s = spec.strip()
    if s.startswith("{"):
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise UnknownTargetError(f"--target looks like JSON but does not parse ({e}); {_JSON_WAY_OUT}") from None
        if not isinstance(d, dict):
            raise UnknownTargetError(f"--target JSON must be an object; {_JSON_WAY_OUT}")
        return _from_dict(d, "json", cuda_arch)

    low = s.lower()
    if low in CPU_NAMES:
        cfg: dict[str, Any] = {"kind": "llvm", "num-cores": host_physical_cores()}
        mcpu = host_cpu_name()
        if mcpu:
            cfg["mcpu"] = mcpu
        target = Target(cfg)
        return target, _info_for(target, low)

    if low in CUDA_NAMES:
        arch = cuda_arch or detect_cuda_arch()
        if arch is None:
            raise TVMError(
                "target 'cuda' needs --cuda-arch (e.g. --cuda-arch sm_90): no GPU visible "
                "through nvidia-smi to detect it from"
            )
        arch = _normalise_cuda_arch(arch)
        target = Target({"kind": "cuda", "arch": arch, **cuda_limits(arch)})
        return target, _info_for(target, low)

    if low in AARCH64_NAMES:
        _require_cross_compiler()
        target = Target(
            {
                "kind": "llvm",
                "mtriple": "aarch64-linux-gnu",
                "mattr": ["+neon"],
                "num-cores": AARCH64_DEFAULT_CORES,
            }
        )
        return target, _info_for(target, low)

    if low.startswith("aarch64:"):
        board = low.split(":", 1)[1]
        if board not in AARCH64_TARGETS:
            raise UnknownTargetError(
                f"unknown aarch64 board {board!r}; known: {', '.join(sorted(AARCH64_TARGETS))} "
                "(or give a JSON target dict)"
            )
        _require_cross_compiler()
        target = Target(dict(AARCH64_TARGETS[board]))
        return target, _info_for(target, low)

    if "/" in s:
        tags = list_target_tags()
        if s in tags:
            target = Target(s)
            if target.kind.name == "cuda" and cuda_arch:
                d = json.loads(str(target))
                arch = _normalise_cuda_arch(cuda_arch)
                if str(d.get("arch", "")).rstrip("a") != arch.rstrip("a"):
                    # another GPU than the tag's: its limits (L2 size, ...) are those of that arch, not the tag's
                    d = {"kind": "cuda", "keys": d.get("keys", ["cuda", "gpu"]), **cuda_limits(arch),
                         **({"host": d["host"]} if "host" in d else {})}
                d["arch"] = arch
                target = Target(d)
            return target, _info_for(target, s)
        raise UnknownTargetError(f"unknown TVM target tag {s!r}; {_valid_names_message()}")

    raise UnknownTargetError(f"unknown target {spec!r}; {_valid_names_message()}")


# What every NVIDIA GPU since Maxwell (sm_50) allows a thread block; a TVM tag of the same arch
# refines it (the H100's L2 size, say).
_CUDA_BLOCK_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                      "registers_per_block": 65536, "thread_warp_size": 32}


def cuda_limits(arch: str) -> dict[str, Any]:
    """Per-block limits for a CUDA target of ``arch`` (``sm_90``).

    A bare ``{"kind": "cuda", "arch": ...}`` target compiles, but MetaSchedule's thread-binding
    rules refuse it (``missing attribute max_threads_per_block``): the limits come from TVM's tag
    of the same arch where there is one (``nvidia/nvidia-h100`` for sm_90), else the defaults above.
    """
    from tvm.target.tag import list_tags

    limits = dict(_CUDA_BLOCK_LIMITS)
    for tag_target in (list_tags() or {}).values():
        cfg = json.loads(str(tag_target))
        if cfg.get("kind") == "cuda" and str(cfg.get("arch", "")).rstrip("a") == arch.rstrip("a"):
            limits.update({k: v for k, v in cfg.items() if k not in ("kind", "tag", "keys", "arch")})
            break
    return limits


def _from_dict(d: dict[str, Any], name: str, cuda_arch: str | None):
    from tvm.target import Target

    if "kind" not in d:
        raise UnknownTargetError('a JSON target needs a "kind", e.g. {"kind": "llvm"}')
    given = json.dumps(d)   # what the user wrote, for the error below (before the defaults are added)
    if d["kind"] == "cuda":
        if cuda_arch:
            d["arch"] = _normalise_cuda_arch(cuda_arch)
        elif "arch" in d:
            d["arch"] = _normalise_cuda_arch(d["arch"], 'target "arch"')
        else:
            detected = detect_cuda_arch()
            if detected is None:
                raise TVMError(
                    'the CUDA target needs an "arch" (or --cuda-arch, e.g. sm_90): no GPU '
                    "visible through nvidia-smi to detect it from"
                )
            d["arch"] = detected
        if "max_num_threads" in d:   # the user's thread cap bounds the block too
            d.setdefault("max_threads_per_block", d["max_num_threads"])
        for key, value in cuda_limits(str(d["arch"])).items():
            d.setdefault(key, value)
    if d["kind"] == "llvm" and d.get("mcpu"):
        _check_llvm_cpu(d, given)
    if "num-cores" in d:   # TVM takes any integer; MetaSchedule and the thread pool fail on it much later
        n = d["num-cores"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UnknownTargetError(f'invalid target {given}: "num-cores" must be a whole number >= 1, got {n!r}')
    if d["kind"] == "llvm" and "num-cores" not in d:
        # MetaSchedule refuses LLVM targets without num-cores.
        d["num-cores"] = (os.cpu_count() or 1) if not d.get("mtriple") else AARCH64_DEFAULT_CORES
    try:
        target = Target(d)
    except Exception as e:  # TVM raises ValueError / TVMError with long texts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnknownTargetError(f"invalid target {given}: {first}") from None
    return target, _info_for(target, name)


def _check_llvm_cpu(d: dict[str, Any], given: str) -> None:
    """An "mcpu" LLVM does not know for the triple is refused here: LLVM itself prints two error lines
    and quietly builds for a generic CPU, so the user's tuning would target the wrong chip."""
    from tvm.target import Target, codegen

    base = {k: v for k, v in d.items() if k in ("kind", "mtriple")}
    try:
        known = {str(c) for c in codegen.llvm_get_cpu_archlist(Target(base))}
    except Exception:  # noqa: BLE001 - no list for this triple: let LLVM judge
        return
    if known and str(d["mcpu"]) not in known:
        near = difflib.get_close_matches(str(d["mcpu"]), sorted(known), n=3)
        raise UnknownTargetError(f"invalid target {given}: LLVM knows no CPU {d['mcpu']!r} for "
                                 f"{d.get('mtriple') or 'this host'}"
                                 + (f" (did you mean {', '.join(near)}?)" if near else ""))


def target_slug(info: TargetInfo) -> str:
    """A short file-system friendly name of a target (for default work dirs)."""
    if info.name not in ("json",):
        base = info.name
    else:
        # two JSON targets of one arch (another mcpu, num-cores) must not share a default tuning dir: its
        # records would be built into the other's library
        import hashlib
        import json as _json

        ident = _json.dumps({k: v for k, v in info.target_json.items() if k not in ("host", "tag")}, sort_keys=True)
        base = (info.kind + ("-" + info.arch if info.arch != info.kind else "") + "-"
                + hashlib.sha1(ident.encode()).hexdigest()[:8])
    if info.kind == "cuda":
        arch = info.target_json.get("arch")
        if arch and arch not in base:
            base = f"{base}-{arch}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "target"
