"""MetaSchedule tuning (``tvm.s_tir.meta_schedule`` in TVM 0.27) with a persistent JSON database.

* Tasks are the fused TIR functions of :func:`tvm_integration.compile.prepare`
  -- exactly what :func:`tvm_integration.compile.build` later looks up in the
  database, so every record found is applied.
* The database lives in ``work_dir`` (``database_workload.json`` +
  ``database_tuning_record.json``, MetaSchedule's JSON format); by default
  that is one *shared* directory per target under the user's cache
  (:func:`default_database_dir`), reused across models and runs.  Records are
  matched with ``module_equality="anchor-block"``: a kernel whose main block
  (the conv / matmul) was tuned before -- in any model, with any fused
  epilogue -- is *reused*, not tuned again, so a second model with the same
  convolutions tunes in seconds.
* CPU targets tune with weight prepacking (layout-free weights, MetaSchedule's
  ``RewriteLayout``), as ``relax.get_pipeline("static_shape_tuning",
  cpu_weight_prepack=True)`` does; :func:`tvm_integration.compile.build`
  applies the same setting.
* Trial allocation (:func:`plan_trials`): small rounds (``num_trials_per_iter``)
  so every task gets several rounds and the gradient task scheduler can move
  the budget to the tasks that dominate the latency, capped per task
  (``max_trials_per_task``).
* Builder/runner workers get an initializer that imports only the tensor
  intrinsics the target needs (see :mod:`tvm_integration._worker`); without it
  the first build in every worker imports all of ``tvm.s_tir.tensor_intrin``
  (~60 s), exceeds the 30 s build timeout, and every candidate fails.
* ``rpc_tracker="HOST:PORT", rpc_key=KEY`` measures candidates on remote
  boards through MetaSchedule's ``RPCRunner``; the tracker is checked with a
  short timeout first, so a wrong address fails in seconds with one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import MissingToolError, TVMError

DB_FILES = ("database_workload.json", "database_tuning_record.json")
SUMMARY_FILE = "tune_summary.json"
LOGGER_NAME = "tvm.s_tir.meta_schedule"
LOCK_FILE = ".tuning.lock"
MODULE_EQUALITY = "anchor-block"
DB_ENV = "COLLAPSE_PASSES_TVM_DB"
# Rounds every task should get on average.  MetaSchedule's gradient scheduler
# (gradient_based.cc) gives each task ONE round-robin round, then picks the task
# with the largest weight * (0.8 * best / rounds + 0.2 * recent gain): with two
# rounds per task, half of the budget goes where the latency is.  A round has
# a fixed cost that dominates on this shared 2-core machine (evolutionary
# search over the population plus a cost-model update: 17-45 s per round at
# load 4 with a population of 256, against 3-8 s to build and measure 6
# candidates; 780 s for 136 trials in rounds of 6), so rounds are few and big:
# at least 16 trials unless the budget is tiny.
ROUNDS_PER_TASK = 2
MIN_TRIALS_PER_ROUND = 16
# Evolutionary-search population (TVM's default is 512): its cost is paid every
# round, its benefit shrinks with the small budgets that fit in minutes.
MAX_POPULATION = 128
# The fixed cost of one round measured on busy 2-core hosts (docs/tvm.md; 30-57 s per round for
# torchvision MobileNetV3-Small at 224, where 32 trials over 49 tasks became 16 rounds of 2 and ran
# 26 minutes for both models): said before a budget below MIN_TRIALS_PER_ROUND per task starts.
ROUND_FIXED_S = (17, 57)
# The budget docs/tvm.md measured as useful; said by the plan line and by the CLI's notes on a small budget.
USEFUL_BUDGET = ("512 trials, about 30 per kernel, brought the 17 kernels of a CIFAR MobileNetV2 to 0.74-1.10x "
                 "onnxruntime in 4-9.6 minutes of tuning on 2 cores, docs/tvm.md")


# --------------------------------------------------------------------------- shared database


def default_database_root() -> str:
    """``$COLLAPSE_PASSES_TVM_DB``, else ``$XDG_CACHE_HOME/collapse_passes/tvm-db``
    (``~/.cache/collapse_passes/tvm-db``)."""
    env = os.environ.get(DB_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "collapse_passes", "tvm-db")


def database_key(target, prepack: bool | None = None) -> str:
    """Directory name of a target's database: readable prefix + hash of the full target.

    MetaSchedule's JSON database does not separate records by target when it is
    queried, so each target (kind, mcpu, cores, arch, features) and prepacking
    setting gets its own directory.
    """
    import hashlib
    import re

    from .compile import _as_target, default_prepack

    target = _as_target(target)
    if prepack is None:
        prepack = default_prepack(target)
    d = json.loads(str(target))
    parts = [target.kind.name]
    for key in ("mtriple", "mcpu", "arch"):
        if d.get(key):
            parts.append(str(d[key]).split("-")[0] if key == "mtriple" else str(d[key]))
    if d.get("num-cores"):
        parts.append(f"{d['num-cores']}c")
    if not prepack and target.kind.name == "llvm":
        parts.append("noprepack")
    digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)) + "-" + digest


def default_database_dir(target, prepack: bool | None = None) -> str:
    """The shared tuning database of ``target``: ``default_database_root()/database_key(target)``."""
    return os.path.join(default_database_root(), database_key(target, prepack))


def plan_trials(trials: int, num_tasks: int, *, num_trials_per_iter: int | None = None,
                max_trials_per_task: int | None = None) -> tuple[int, int]:
    """``(num_trials_per_iter, max_trials_per_task)`` for a global budget over ``num_tasks``.

    ``num_trials_per_iter = ceil(trials / tasks)`` (what this package did
    before) gives every task one round, so the gradient scheduler never gets
    to move budget.  Here a round is about ``trials / (tasks * 2)`` (16..64,
    fewer only when the budget is below 16 trials per task): after one
    round-robin round per task, the rest goes to the tasks the scheduler
    picks by weighted latency, and a task may take up to 3x its fair share.
    """
    n = max(1, int(num_tasks))
    trials = max(0, int(trials))
    floor = max(2, min(MIN_TRIALS_PER_ROUND, trials // n))
    per_iter = num_trials_per_iter or max(floor, min(64, trials // (n * ROUNDS_PER_TASK)))
    cap = max_trials_per_task or min(trials, max(per_iter * ROUNDS_PER_TASK, math.ceil(3 * trials / n)))
    return int(per_iter), int(max(cap, per_iter))


def describe_plan(trials: int, num_tasks: int, per_iter: int, per_task: int) -> str:
    """The plan of :func:`plan_trials` in words, said before tuning starts: rounds, tasks left without a trial,
    and for a small budget (rounds under ``MIN_TRIALS_PER_ROUND`` trials) what it will cost. A round's fixed
    search cost is paid whatever its size, so a tiny budget over many tasks buys many rounds of 1-2 trials
    (minutes each few trials), and the user learns it only from the clock."""
    n = max(1, int(num_tasks))
    rounds = math.ceil(max(0, int(trials)) / max(1, int(per_iter)))
    line = f"{rounds} round(s) of {per_iter} trial(s), at most {per_task} per task"
    if rounds < n:   # the gradient scheduler's first pass is round-robin, heaviest task first
        line += f"; the {n - rounds} lightest task(s) get no trial"
    if per_iter < MIN_TRIALS_PER_ROUND:
        lo, hi = (rounds * s / 60 for s in ROUND_FIXED_S)
        line += (f"; a small budget for {n} task(s): each round also costs a fixed {ROUND_FIXED_S[0]}-"
                 f"{ROUND_FIXED_S[1]} s of search whatever its size (busy 2-core hosts), so these {rounds} round(s) "
                 f"take about {lo:.0f}-{hi:.0f} min, mostly that; a useful budget: {USEFUL_BUDGET}")
    return line


# --------------------------------------------------------------------------- RPC


def parse_tracker(spec: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; TVMError on a malformed value."""
    if not isinstance(spec, str) or ":" not in spec:
        raise TVMError(f"--rpc-tracker must be HOST:PORT, got {spec!r}")
    host, _, port_s = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise TVMError(f"--rpc-tracker must be HOST:PORT, got {spec!r}") from None
    if not 0 < port < 65536:
        raise TVMError(f"--rpc-tracker port out of range: {port}")
    return host, port


def check_tracker(spec: str, key: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """Fail fast (one-line :class:`TVMError`) unless the tracker answers and has a server for ``key``.

    Returns ``{"host", "port", "key", "servers"}`` (servers registered under the key).
    """
    host, port = parse_tracker(spec)
    if not key:
        raise TVMError("--rpc-tracker needs --rpc-key (the key the RPC servers registered with)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise TVMError(
            f"RPC tracker {host}:{port} is unreachable ({reason}); start one with "
            f"`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}`"
        ) from None

    result: dict[str, Any] = {}

    def _query():
        try:
            from tvm import rpc

            tracker = rpc.connect_tracker(host, port)
            result["summary"] = tracker.summary()
        except Exception as e:  # pragma: no cover - reported below
            result["error"] = e

    t = threading.Thread(target=_query, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive() or "summary" not in result:
        why = result.get("error")
        raise TVMError(
            f"RPC tracker {host}:{port} accepted the connection but did not answer"
            + (f" ({why})" if why else f" within {timeout:g} s")
            + "; is it a TVM RPC tracker?"
        )
    servers = 0
    for item in result["summary"].get("server_info", []):
        item_key = str(item.get("key", "")).split(":", 1)[-1]
        if item_key == key:
            servers += 1
    queue = result["summary"].get("queue_info", {}).get(key, {})
    if servers == 0 and not queue.get("free", 0):
        raise TVMError(
            f"no RPC server is registered under key {key!r} at tracker {host}:{port}; start one "
            f"with `python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`"
        )
    return {"host": host, "port": port, "key": key, "servers": servers}


# --------------------------------------------------------------------------- builder


def _make_pooled_builder(max_workers: int, timeout_sec: float, initializer, f_export=None):
    """A LocalBuilder that keeps its worker processes between batches.

    ``meta_schedule.LocalBuilder`` starts a fresh process pool for every batch
    of candidates; each worker then imports TVM again (~3-8 s on a small
    machine), which dominates small tuning budgets.  This builder reuses the
    pool (workers are recycled after 64 builds to bound leaks) and runs the
    same worker function as LocalBuilder, with the intrinsic-preloading
    initializer.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import (
        _serialize_params,
        _worker_func,
    )
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledLocalBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.timeout_sec = timeout_sec
            self.pool = PopenPoolExecutor(
                max_workers=max_workers,
                timeout=timeout_sec,
                initializer=initializer,
                maximum_process_uses=64,
            )

        def build(self, build_inputs):
            # a safe point: a signal recorded during tuning (outputs.signals_deferred) stops the run here, at
            # the next batch, not after the whole budget (the exception ends ms.tune_tasks)
            _raise_if_interrupted()
            results = []
            for map_result in self.pool.map_with_error_catching(
                lambda x: _worker_func(*x),
                [
                    (None, f_export, bi.mod, bi.target, _serialize_params(bi.params))
                    for bi in build_inputs
                ],
            ):
                if map_result.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(map_result.value, None))
                elif map_result.status == StatusKind.TIMEOUT:
                    results.append(
                        BuilderResult(None, f"LocalBuilder: Timeout, killed after {self.timeout_sec} seconds")
                    )
                else:
                    results.append(
                        BuilderResult(None, "LocalBuilder: An exception occurred\n" + str(map_result.value))
                    )
            return results

        def shutdown(self):
            try:
                self.pool.shutdown()
            except Exception:  # pragma: no cover
                pass

    return PooledLocalBuilder()


def _raise_if_interrupted() -> None:
    """outputs.raise_if_interrupted: Interrupted if a SIGINT/SIGTERM came during this run (the CLIs' guard)."""
    from collapse_passes.outputs import raise_if_interrupted

    raise_if_interrupted()


def _stop_on_interrupt_callback():
    """A measure callback (after every batch, once its records are committed) that raises Interrupted after
    a signal: together with the builder's check, the run stops at the next batch, not after the budget."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class StopOnInterrupt(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            _raise_if_interrupted()

    return StopOnInterrupt()


def _register_worker_module_by_value() -> None:
    import cloudpickle

    from . import _worker

    try:
        cloudpickle.register_pickle_by_value(_worker)
    except ValueError:  # already registered
        pass


# --------------------------------------------------------------------------- reporting


@dataclass
class TaskReport:
    name: str
    flops: float
    weight: int
    reused: bool
    skipped: bool = False
    best_us: float | None = None
    records: int = 0  # measured candidates in the database for this kernel (all runs)
    source: str = ""  # where a reused schedule came from: "work_dir" or "shared"


@dataclass
class TuneReport:
    """What a :func:`tune_with_report` call did (also written to ``work_dir/tune_summary.json``)."""

    work_dir: str
    trials_requested: int
    target: str
    tasks: list[TaskReport] = field(default_factory=list)
    tasks_reused: int = 0
    tasks_tuned: int = 0
    tasks_skipped: int = 0
    new_records: int = 0
    total_records: int = 0
    seconds: float = 0.0
    rpc: dict[str, Any] | None = None
    builder: str = "pooled-local"
    note: str = ""
    prepack: bool = False
    module_equality: str = MODULE_EQUALITY
    num_trials_per_iter: int | None = None
    max_trials_per_task: int | None = None
    threads: dict[str, Any] | None = None
    shared_database: str | None = None
    published: int = 0  # records copied to the shared database after tuning

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks_from_database"] = self.tasks_from_database()
        d["tasks_from_shared_database"] = [t.name for t in self.tasks if t.source == "shared"]
        return d

    def tasks_from_database(self) -> list[str]:
        """Kernels whose schedule was already in the database before this run (not tuned now)."""
        return [t.name for t in self.tasks if t.reused]

    def estimated_total_us(self) -> float | None:
        """Sum over tasks of weight x best measured latency (what the tuning log reports)."""
        vals = [(t.weight, t.best_us) for t in self.tasks if not t.skipped]
        if not vals or any(b is None for _, b in vals):
            return None
        return float(sum(w * b for w, b in vals))


def _db_paths(work_dir: str) -> list[str]:
    return [os.path.join(work_dir, f) for f in DB_FILES]


def target_identity(target) -> str:
    """A target as the records of a tuning database compare it: its JSON without ``host`` and ``tag`` (a TVM tag
    and the dict it stands for are the same hardware), keys sorted."""
    if isinstance(target, str):
        try:
            target = json.loads(target)
        except ValueError:
            pass
    if not isinstance(target, dict):
        from .compile import _as_target

        target = json.loads(str(_as_target(target)))
    return json.dumps({k: v for k, v in target.items() if k not in ("host", "tag")}, sort_keys=True,
                      separators=(",", ":"))


def _short_target(ident: str) -> str:
    d = json.loads(ident)
    keep = {k: d[k] for k in ("kind", "mtriple", "mcpu", "arch", "num-cores") if k in d}
    return json.dumps(keep, separators=(",", ":"))


def foreign_record_targets(record_targets, target) -> list[str]:
    """The targets among ``record_targets`` (TVM targets, dicts or JSON) that are not ``target``, shortened, sorted."""
    mine = target_identity(target)
    return sorted({_short_target(i) for i in map(target_identity, record_targets) if i != mine})


def check_database_target(work_dir: str, target, prepack: bool | None = None, flag: str = "--tune-dir") -> None:
    """Refuse a database directory tuned for another target (or prepacking setting) than ``target``.

    MetaSchedule's JSON database answers a query with the best record of the kernel whatever target it was tuned
    for: a ``--tune-dir`` used for ``cpu`` and then for ``cuda`` or ``aarch64`` built that target with the x86
    schedules (a CUDA library of CPU loop nests, reported as tuned). Reads the record file as text (no TVM), so the
    CLI can check it before any work. Raises TVMError naming both targets and the way out."""
    from .compile import _as_target, default_prepack

    rec_path = _db_paths(work_dir)[1]
    targets: dict[str, Any] = {}
    try:
        with open(rec_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    t = json.loads(line)[1][2]
                except (ValueError, IndexError, TypeError, KeyError):
                    continue   # a line TVM itself cannot read is open_database's business
                if isinstance(t, dict):   # TVM 0.27 writes a target as its JSON dict
                    targets.setdefault(json.dumps(t, sort_keys=True), t)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TVMError(f"cannot read the tuning database in {work_dir} ({exc.strerror or exc}); move it away or "
                       f"pass another {flag}") from None
    t = _as_target(target)
    foreign = foreign_record_targets(targets.values(), t)
    mine = _short_target(target_identity(t))
    if foreign:
        raise TVMError(f"the tuning database in {work_dir} holds records tuned for {', '.join(foreign[:2])}"
                       f"{' ...' if len(foreign) > 2 else ''}, not for {mine}: their schedules would be built into "
                       f"this target's library; pass another {flag} (the default is one per target) or move it away")
    if prepack is None:
        prepack = default_prepack(t)
    try:
        with open(os.path.join(work_dir, SUMMARY_FILE)) as f:
            was = json.load(f).get("prepack")
    except (OSError, ValueError, AttributeError):
        was = None
    if isinstance(was, bool) and targets and was != bool(prepack):
        raise TVMError(f"the tuning database in {work_dir} was tuned with weight prepacking "
                       f"{'on' if was else 'off'}, this build has it {'on' if prepack else 'off'}: pass the same "
                       f"prepack setting, another {flag}, or move it away")


def open_database(work_dir: str, *, create: bool = True, say=None):
    """The JSON database in ``work_dir`` (None when absent and ``create`` is False).

    Opened with ``module_equality="anchor-block"``: a query matches any record
    whose kernel has the same anchor block (conv, matmul...), whatever it fused.
    TVM refuses to open a database holding one record whose trace does not replay on its
    workload (``parallel_for_dynamic error``); such records (written before
    :func:`_on_stored_workloads`: a trace of another model's block names) are dropped from the
    file, ``say`` tells how many, and the rest is opened. Anything else is a one-line TVMError.
    """
    from tvm.s_tir import meta_schedule as ms

    if not create and not all(os.path.exists(p) for p in _db_paths(work_dir)):
        return None
    os.makedirs(work_dir, exist_ok=True)
    try:
        return ms.database.JSONDatabase(work_dir=work_dir, module_equality=MODULE_EQUALITY)
    except Exception as exc:  # noqa: BLE001 - TVM's error says neither which record nor why
        first = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:
            dropped = _drop_unreplayable_records(work_dir)
        except Exception:  # noqa: BLE001 - a damaged workload file: not ours to guess at
            dropped = 0
        if dropped:
            try:
                db = ms.database.JSONDatabase(work_dir=work_dir, module_equality=MODULE_EQUALITY)
            except Exception:  # noqa: BLE001
                db = None
            if db is not None:
                (say or (lambda _m: None))(
                    f"dropped {dropped} record(s) from the tuning database in {work_dir}: their schedule "
                    "does not apply to their kernel (written by an earlier version); those kernels stay untuned until tuned again")
                return db
        raise TVMError(f"the tuning database in {work_dir} cannot be read ({first}); move it away or "
                       "pass another --tune-dir") from None


def _write_summary(work_dir: str, summary: dict) -> None:
    """``work_dir/tune_summary.json``, atomically (temp file, fsync, rename: collapse_passes' writer), with
    the signals held: an ``open(..., "w")`` truncated the previous summary first, and a failure while
    writing (a value json cannot take, a full disk) left half a file that a later --export copied."""
    from collapse_passes.onnx.graph import write_text_atomic
    from collapse_passes.outputs import signals_blocked

    text = json.dumps(summary, indent=2)
    with signals_blocked():
        write_text_atomic(text, os.path.join(work_dir, SUMMARY_FILE), "the tuning summary")


def _drop_unreplayable_records(work_dir: str) -> int:
    """Rewrite ``work_dir``'s record file without the records whose trace fails on their workload (what
    makes TVM refuse the whole database); returns how many were dropped. Written atomically."""
    from tvm.s_tir import meta_schedule as ms

    wl_path, rec_path = _db_paths(work_dir)
    with open(wl_path) as f:
        workloads = [ms.database.Workload.from_json(json.loads(line)) for line in f if line.strip()]
    keep, dropped = [], 0
    with open(rec_path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                idx, rec = json.loads(line)
                ms.database.TuningRecord.from_json(rec, workloads[idx])
                keep.append(line if line.endswith("\n") else line + "\n")
            except Exception:  # noqa: BLE001 - exactly the records TVM cannot load
                dropped += 1
    if dropped:
        from collapse_passes.outputs import temp_path

        tmp = temp_path(rec_path)
        try:
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, rec_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dropped


def _replays(trace, mod) -> bool:
    """Whether ``trace`` applies to ``mod`` (its blocks are found by name)."""
    from tvm.s_tir import Schedule

    try:
        trace.apply_to_schedule(Schedule(mod), remove_postproc=False)
        return True
    except Exception:  # noqa: BLE001
        return False


def _on_stored_workloads(tasks, db) -> list:
    """``tasks`` with each kernel the database already holds (anchor-block match, no record yet)
    replaced by the stored module.

    MetaSchedule files a measured schedule under the stored workload equal to the task, but equality
    ignores block names, which TOPI takes from Relax variables (``lv11_red`` in one model, ``lv18_red``
    in the same kernel of another, or of the same model after a collapse). A trace tuned on the task's
    names and filed under the stored names replays nowhere: the build fails (``get-block``) and TVM
    refuses to load the database again. Tuning the stored module keeps names and trace together; the
    build applies the record to this model's kernel as to any anchor-block match.
    """
    from tvm.s_tir import meta_schedule as ms

    out = []
    for task in tasks:
        tmod = task.dispatched[0]
        if db.has_workload(tmod):
            stored = db.commit_workload(tmod).mod   # the existing workload; nothing new is written
            if not stored.same_as(tmod):
                task = ms.ExtractedTask(task.task_name, task.mod, task.target, [stored], task.weight)
        out.append(task)
    return out


@contextlib.contextmanager
def _exclusive(work_dir: str, say):
    """Serialise tuning runs that share a database directory (advisory ``flock``)."""
    import fcntl

    with open(os.path.join(work_dir, LOCK_FILE), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say(f"waiting for another tuning run that uses {work_dir}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_best(src, dst, task_mod, target) -> bool:
    """Copy ``src``'s best record for ``task_mod`` (anchor-block match) into ``dst``.

    The record keeps the workload it was tuned on (maybe another epilogue);
    ``MetaScheduleApplyDatabase`` then replays its trace on the anchor block.
    """
    from tvm.s_tir import meta_schedule as ms

    if not src.has_workload(task_mod):
        return False
    rec = src.query_tuning_record(task_mod, target, "main")
    if rec is None:
        return False
    workload = dst.commit_workload(rec.workload.mod)   # dst's own when it holds an equal one
    if not workload.mod.same_as(rec.workload.mod) and not _replays(rec.trace, workload.mod):
        return False   # other block names (see _on_stored_workloads): filed there it would replay nowhere
    dst.commit_tuning_record(
        ms.database.TuningRecord(rec.trace, workload, rec.run_secs, rec.target, rec.args_info)
    )
    return True


def _record_count(db, task_mod) -> int:
    try:
        if not db.has_workload(task_mod):
            return 0
        return len(db.get_top_k(db.commit_workload(task_mod), 100000))
    except Exception:  # pragma: no cover - API drift
        return 0


def _best_us(db, task_mod, target) -> float | None:
    rec = db.query_tuning_record(task_mod, target, "main")
    if rec is None or rec.run_secs is None:
        return None
    secs = [float(x) for x in rec.run_secs]
    good = [s for s in secs if s < 1e9]
    return (sum(good) / len(good) * 1e6) if good else None


def _is_view_only(task_name: str, flops: float) -> bool:
    """Pure reshapes: ``RewriteDataflowReshape`` lowers them to a VM view, so tuning is wasted."""
    return flops == 0.0 and task_name.rstrip("0123456789_").endswith("reshape")


def _configure_logging(progress: bool) -> list:
    """Prepare MetaSchedule's logger; returns foreign handlers detached from it.

    MetaSchedule sizes its console handler from this logger's level when it
    (re)creates its loggers for a work dir; file logs stay at DEBUG.  It also
    re-lists the logger's current handlers *by name* in a ``dictConfig``, which
    crashes (``'NoneType' object has no attribute 'format'``) when an unnamed
    handler is attached -- e.g. pytest's LogCaptureHandler.  Those are detached
    here and given back by :func:`_restore_handlers`.
    """
    import logging

    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO if progress else logging.WARNING)
    foreign = [h for h in logger.handlers if not h.get_name()]
    for h in foreign:
        logger.removeHandler(h)
    return foreign


def _restore_handlers(foreign: list) -> None:
    import logging

    logger = logging.getLogger(LOGGER_NAME)
    for h in foreign:
        if h not in logger.handlers:
            logger.addHandler(h)


def _run_tune_tasks(
    tasks,
    target_info,
    work_dir: str,
    db,
    *,
    trials: int,
    per_iter: int,
    max_trials_per_task: int | None,
    population: int,
    num_threads: int,
    host_threads: int,
    seed: int | None,
    rpc_info: dict[str, Any] | None,
    builder_timeout_s: float,
    runner_timeout_s: float,
) -> None:
    """MetaSchedule proper: contexts, builder, runner, task scheduler."""
    import functools

    from tvm.s_tir import meta_schedule as ms

    from . import _worker

    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks,
        work_dir,
        strategy=ms.search_strategy.EvolutionarySearch(
            population_size=population, init_min_unmeasured=min(50, population)
        ),
        num_threads=num_threads,
        seed=seed,
    )
    _register_worker_module_by_value()
    initializer = _worker.make_initializer(target_info.intrin_modules)
    f_export = None
    if target_info.cross_compiler:
        # Cross targets: ship a linked .so (the board needs no compiler).
        f_export = functools.partial(
            _worker.export_with_cross_compiler, cxx=target_info.cross_compiler
        )
    builder = _make_pooled_builder(
        max_workers=host_threads,
        timeout_sec=builder_timeout_s,
        initializer=initializer,
        f_export=f_export,
    )
    runner = None
    try:
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50)
        if rpc_info is not None:
            runner = ms.runner.RPCRunner(
                rpc_config=ms.runner.RPCConfig(
                    tracker_host=rpc_info["host"],
                    tracker_port=rpc_info["port"],
                    tracker_key=rpc_info["key"],
                    session_timeout_sec=int(runner_timeout_s),
                ),
                evaluator_config=evaluator,
                max_workers=1,
                initializer=initializer,
            )
        else:
            runner = ms.runner.LocalRunner(
                timeout_sec=runner_timeout_s, evaluator_config=evaluator, initializer=initializer
            )
        from collapse_passes.outputs import signals_deferred

        with signals_deferred():   # a signal is acted on at the next batch (builder, measure callback)
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=work_dir,
                max_trials_global=trials,
                max_trials_per_task=max_trials_per_task,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=runner,
                database=db,
                module_equality=MODULE_EQUALITY,
                cost_model="xgb",
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _stop_on_interrupt_callback()],
                task_scheduler="gradient",
            )
    except RuntimeError as e:   # TVM's own errors (tvm.error.* are RuntimeErrors): one line, not a traceback
        _raise_if_interrupted()   # TVM's own error for the Interrupted raised at a safe point: the interruption
        from .compile import _first_line

        raise TVMError(f"MetaSchedule tuning failed: {_first_line(e)}") from e
    except BaseException:
        _raise_if_interrupted()
        raise
    finally:
        builder.shutdown()
        # the runner's worker pool, shut down here in the main thread: left to the garbage collector, its
        # __del__ ran in one of its own threads after a Ctrl-C and printed "Exception ignored ... RuntimeError:
        # cannot join current thread" under the run's last line
        pool = getattr(runner, "pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.shutdown(wait=True)
    _raise_if_interrupted()   # a signal after the last batch: the records are whole, the rest of the run is not done


# --------------------------------------------------------------------------- main API


def tune(
    mod,
    target,
    target_info=None,
    work_dir: str | None = None,
    trials: int = 64,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: bool = True,
    **kwargs,
):
    """Tune ``mod`` for ``target`` with MetaSchedule; returns the database (or None).

    See :func:`tune_with_report` for the parameters; this returns only the
    database (``None`` when ``trials == 0`` and ``work_dir`` holds no database).
    """
    db, _ = tune_with_report(
        mod,
        target,
        target_info,
        work_dir=work_dir,
        trials=trials,
        rpc_tracker=rpc_tracker,
        rpc_key=rpc_key,
        progress=progress,
        **kwargs,
    )
    return db


def tune_with_report(
    mod,
    target,
    target_info=None,
    work_dir: str | None = None,
    trials: int = 64,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: bool = True,
    *,
    num_trials_per_iter: int | None = None,
    max_trials_per_task: int | None = None,
    population_size: int | None = None,
    seed: int | None = 0,
    builder_timeout_s: float = 60.0,
    runner_timeout_s: float = 60.0,
    tracker_timeout_s: float = 5.0,
    retune: bool = False,
    prepack: bool | None = None,
    layout: str | None = None,
    shared_database: str | bool | None = None,
    log=None,
):
    """Tune with MetaSchedule; returns ``(database, TuneReport)``.

    Parameters
    ----------
    mod: Relax ``IRModule`` (e.g. from :func:`~tvm_integration.compile.import_onnx`).
    target, target_info: from :func:`~tvm_integration.targets.resolve_target`
        (``target`` may also be a name / JSON dict; then ``target_info`` is derived).
    work_dir: holds the JSON database, MetaSchedule's logs and ``tune_summary.json``;
        default: the target's shared database (:func:`default_database_dir`).
    trials: global trial budget for the tasks that still need tuning.  ``0``
        tunes nothing and returns the database already in ``work_dir``, if any.
    num_trials_per_iter, max_trials_per_task: override :func:`plan_trials`.
    prepack: tune with layout-free weights (default: on for CPU); build with
        the same value (``compile.build`` has the same default).
    layout: convolution layout, "NCHW" or "NHWC" (default
        :func:`~tvm_integration.compile.default_layout`); build with the same.
    shared_database: a database directory shared across models and runs
        (default: :func:`default_database_dir`; ``False``: none).  Tasks
        ``work_dir`` lacks are looked up there first (copied, not tuned), and
        the best record of every task tuned now is added to it.
    rpc_tracker, rpc_key: measure candidates on boards behind a TVM RPC tracker.
    progress: show MetaSchedule's per-task progress tables on stdout.
    retune: tune tasks even if the database already has records for them.
    log: callable(str) for one-line status messages (default: nothing).
    """
    from tvm.s_tir import meta_schedule as ms

    from . import _worker
    from .compile import _as_target, check_layout, default_layout, default_prepack, prepare
    from .targets import configure_runtime_threads, resolve_target

    say = log or (lambda _msg: None)
    if target_info is None:
        if isinstance(target, (str, dict)):
            target, target_info = resolve_target(target)
        else:
            from .targets import _info_for

            target_info = _info_for(target, "json")
    target = _as_target(target)
    trials = int(trials)
    if trials < 0:
        raise TVMError(f"--tune-trials must be >= 0, got {trials}")
    if prepack is None:
        prepack = default_prepack(target)
    layout = check_layout(default_layout(target) if layout is None else layout)
    if shared_database is None or shared_database is True:
        shared_database = default_database_dir(target, prepack)
    if work_dir is None:
        if not shared_database:
            raise TVMError("tune_with_report needs a work_dir when shared_database=False")
        work_dir = shared_database
    work_dir = os.path.abspath(os.path.expanduser(os.fspath(work_dir)))
    shared_dir = os.path.abspath(os.path.expanduser(os.fspath(shared_database))) if shared_database else None
    if shared_dir == work_dir:
        shared_dir = None
    check_database_target(work_dir, target, prepack)   # records of another target must not be reused here
    report = TuneReport(work_dir=work_dir, trials_requested=trials, target=str(target), prepack=bool(prepack))
    t_start = time.perf_counter()

    if trials == 0:
        db = open_database(work_dir, create=False, say=say)
        if db is not None:
            report.total_records = len(db)
            report.note = "trials=0: reused the existing database, tuned nothing"
        else:
            report.note = "trials=0: no tuning"
        report.seconds = time.perf_counter() - t_start
        return db, report

    try:
        # MetaSchedule imports it only when the cost model first trains, after a whole round of
        # measurements: fail before any work instead (a missing or a broken install alike)
        import xgboost  # noqa: F401
    except Exception as exc:
        raise MissingToolError(f"MetaSchedule's cost model needs xgboost, which cannot be imported "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                               "pip install xgboost (or pip install -e '.[tvm]')") from None

    rpc_info = None
    if rpc_tracker:
        rpc_info = check_tracker(rpc_tracker, rpc_key, timeout=tracker_timeout_s)
        report.rpc = rpc_info
    elif rpc_key:
        raise TVMError("--rpc-key needs --rpc-tracker HOST:PORT")
    elif not target_info.runs_on_host:
        raise TVMError(
            f"cannot tune for {target_info.name!r} here: this machine cannot run it; "
            "pass --rpc-tracker HOST:PORT --rpc-key KEY to measure on a device"
        )

    # Importing tvm.s_tir.tensor_intrin in full (TuneContext does) costs ~60 s:
    # install the light placeholder in this process too.
    _worker.preload_intrinsics(target_info.intrin_modules)

    if target_info.kind == "cuda" and rpc_info is None:
        # Runner workers inherit TVM_CUDA_COMPILE_MODE (nvcc when cuda-bindings is missing).
        from .compile import ensure_cuda_runtime_compiler

        ensure_cuda_runtime_compiler()
    if target_info.kind == "llvm" and target_info.runs_on_host and rpc_info is None:
        # Candidates must be measured with as many threads as the kernels are scheduled for.
        report.threads = configure_runtime_threads(target_info.num_cores)

    prepared = prepare(mod, target, prepack=prepack, layout=layout)
    all_tasks = list(
        ms.relax_integration.extract_tasks(prepared, target, module_equality=MODULE_EQUALITY)
    )
    os.makedirs(work_dir, exist_ok=True)
    with _exclusive(work_dir, say):
        return _tune_locked(
            all_tasks, target, target_info, work_dir, report, t_start, say,
            trials=trials, rpc_info=rpc_info, rpc_tracker=rpc_tracker, rpc_key=rpc_key,
            progress=progress, retune=retune, num_trials_per_iter=num_trials_per_iter,
            max_trials_per_task=max_trials_per_task, population_size=population_size, seed=seed,
            builder_timeout_s=builder_timeout_s, runner_timeout_s=runner_timeout_s, shared_dir=shared_dir,
        )


def _tune_locked(all_tasks, target, target_info, work_dir, report, t_start, say, *, trials, rpc_info,
                 rpc_tracker, rpc_key, progress, retune, num_trials_per_iter, max_trials_per_task,
                 population_size, seed, builder_timeout_s, runner_timeout_s, shared_dir):
    """The part of :func:`tune_with_report` that runs under the database lock."""
    db = open_database(work_dir, say=say)
    records_before = len(db)
    shared = None
    from_shared: set[str] = set()
    if shared_dir is not None:
        report.shared_database = shared_dir
        os.makedirs(shared_dir, exist_ok=True)
        with _exclusive(shared_dir, say):
            shared = open_database(shared_dir, say=say)
            if not retune:
                for task in all_tasks:
                    tmod = task.dispatched[0]
                    if db.query_tuning_record(tmod, target, "main") is None and _copy_best(shared, db, tmod, target):
                        from_shared.add(task.task_name)
        records_before = len(db)

    from tvm.s_tir.analysis import estimate_tir_flops

    todo, task_reports = [], {}
    for task in all_tasks:
        tmod = task.dispatched[0]
        try:
            flops = float(estimate_tir_flops(tmod))
        except Exception:  # pragma: no cover
            flops = 0.0
        skipped = _is_view_only(task.task_name, flops)
        reused = (
            (not skipped)
            and (not retune)
            and db.query_tuning_record(tmod, target, "main") is not None
        )
        task_reports[task.task_name] = TaskReport(
            name=task.task_name,
            flops=flops,
            weight=int(task.weight),
            reused=reused,
            skipped=skipped,
            source=("shared" if task.task_name in from_shared else "work_dir") if reused else "",
        )
        if not reused and not skipped:
            todo.append((flops, task))
    report.tasks_reused = sum(1 for r in task_reports.values() if r.reused)
    report.tasks_skipped = sum(1 for r in task_reports.values() if r.skipped)

    if todo:
        todo.sort(key=lambda ft: -ft[0])  # heavy tasks first: they get the budget
        tasks = _on_stored_workloads([t for _, t in todo], db)
        n = len(tasks)
        per_iter, per_task = plan_trials(
            trials, n, num_trials_per_iter=num_trials_per_iter, max_trials_per_task=max_trials_per_task
        )
        report.num_trials_per_iter, report.max_trials_per_task = per_iter, per_task
        pop = population_size or max(64, min(MAX_POPULATION, 4 * trials))
        host_threads = os.cpu_count() or 1
        # Threads of the search (cost model, evolutionary search) run on this host.
        num_threads = int(target_info.num_cores or host_threads) if target_info.kind == "llvm" else host_threads
        shared_n = sum(r.source == "shared" for r in task_reports.values())
        say(
            f"tuning {n} task(s) ({report.tasks_reused} reused from {work_dir}, {shared_n} of them copied from the "
            f"shared database) "
            f"with {trials} trials on {target_info.name}"
            + (f" via RPC {rpc_tracker} key={rpc_key}" if rpc_tracker else "")
            + f": {describe_plan(trials, n, per_iter, per_task)}"
        )
        foreign_handlers = _configure_logging(progress)
        try:
            _run_tune_tasks(
                tasks,
                target_info,
                work_dir,
                db,
                trials=trials,
                per_iter=per_iter,
                max_trials_per_task=per_task,
                population=pop,
                num_threads=min(num_threads, host_threads),
                host_threads=host_threads,
                seed=seed,
                rpc_info=rpc_info,
                builder_timeout_s=builder_timeout_s,
                runner_timeout_s=runner_timeout_s,
            )
        finally:
            _restore_handlers(foreign_handlers)
    else:
        say(
            f"all {len(all_tasks) - report.tasks_skipped} tunable task(s) already tuned in "
            f"{work_dir}: reusing the records, tuning nothing"
        )

    for task in all_tasks:
        task_reports[task.task_name].best_us = _best_us(db, task.dispatched[0], target)
        task_reports[task.task_name].records = _record_count(db, task.dispatched[0])
    # tuned = got a measured schedule now; a budget below one round per task leaves the rest untried
    untried = [t.task_name for _, t in todo if task_reports[t.task_name].best_us is None]
    report.tasks_tuned = len(todo) - len(untried)
    if shared_dir is not None and todo:
        with _exclusive(shared_dir, say):
            shared = open_database(shared_dir, say=say)  # re-read: another run may have added records
            for _, task in todo:
                if _copy_best(db, shared, task.dispatched[0], target):
                    report.published += 1
    report.tasks = list(task_reports.values())
    report.total_records = len(db)
    report.new_records = report.total_records - records_before
    report.seconds = time.perf_counter() - t_start
    if todo and report.new_records == 0:
        report.note = (
            "no candidate was built and measured successfully; see "
            f"{os.path.join(work_dir, 'logs')}"
        )
    elif todo and any(task_reports[t.task_name].best_us is None for _, t in todo):
        # A rerun with the same work dir tunes exactly those tasks.
        report.note = "some tasks got no trial within the budget; raise --tune-trials"
    _raise_if_interrupted()
    _write_summary(work_dir, report.to_dict())
    say(
        f"tuning done in {report.seconds:.1f} s: {report.tasks_tuned} task(s) tuned, "
        f"{report.tasks_reused} reused, {report.new_records} new record(s)"
        + (f"; {len(untried)} task(s) still without a measured schedule (raise --tune-trials)" if untried else "")
    )
    if report.tasks_reused:
        say("from the database (not tuned again): " + ", ".join(
            t.name + (" [shared]" if t.source == "shared" else "") for t in report.tasks if t.reused))
    return db, report

