"""The output plan: every path a run will write, resolved and checked before any work.

Why: a run that has worked for minutes must not then find that `--report` names the input model,
that `-o` is /dev/null, or that `--export .` would replace the working directory. So all outputs
are resolved first (symlinks followed, hard links compared by device and inode) and refused in one
line when they alias an input or each other, are not regular files, or sit in a folder that is
missing or cannot be written. Data is staged in temp files beside each target, with a name the
next run recognises (`.NAME.~cp<pid>-<rand>.tmp`), and renamed in a fixed order only once the run
has succeeded. docs/file_safety.md lists the promises.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import shutil
import signal
import stat
import string
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CollapseError

EXPORT_MARKER = ".collapse-passes-export"   # written into every --export directory this tool makes
#: what an export holds (tvm_integration.cli_hook writes it): a marked directory holding anything else is
#: not replaced, since the replacement would delete files the user put there
EXPORT_LAYOUT = {EXPORT_MARKER: None, "model.so": None, "report.json": None,
                 "tuning": {"database_workload.json", "database_tuning_record.json", "tune_summary.json"}}
NAME_MAX = 255
_TAG = "~cp"
# fullmatch, DOTALL: a name with a newline in it (`-o $'a\nb.onnx'`) is a temp name too ('.' skipped the
# newline, so a killed run's temp file was never removed), and `$` would also match before a final newline
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.~cp(?P<pid>\d+)-[0-9a-z]{6}\.(?P<kind>tmp|tmpdir|old)", re.DOTALL)
_ALPHABET = string.ascii_lowercase + string.digits
# the model's data file lands before the model that refers to it; export is committed by the TVM hand-off
COMMIT_ORDER = ("model_data", "model", "scores", "plot", "report")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised in the main thread so cleanup runs like for ^C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        _RAISED[0] += 1   # one more interruption on its way (see _unraisable: a resend is only for a swallowed one)


_RAISED = [0]   # Interrupted made so far in this process


# ------------------------------------------------------------------------------- temp names

def temp_path(dest: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh, recognisable temp name beside `dest` (name shortened so it stays <= 255 bytes)."""
    dest = Path(dest)
    name = os.fsencode(dest.name)[:NAME_MAX - 40].decode(errors="ignore") or "out"
    rand = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    return dest.parent / f".{name}.{_TAG}{os.getpid()}-{rand}.{kind}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.fullmatch(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folders, keep=()) -> list[Path]:
    """Remove temp files/dirs this tool left in `folders` when a run was killed (its pid is gone).
    `keep`: the run's inputs (resolved paths): one whose name looks like a temp name (a killed run's file
    renamed back by hand), or that lies in a folder with such a name, is read by this run; it was deleted
    before it was read (or, the model, after it was loaded)."""
    removed = []
    keep = {Path(k) for k in keep}
    for d in dict.fromkeys(Path(f) for f in folders):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            m = _TEMP_RE.fullmatch(e.name)
            if not m or _pid_alive(int(m.group("pid"))):
                continue
            if keep and any(_inside(k, Path(os.path.realpath(e.path))) for k in keep):   # the input or its folder
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


def create_temp_file(dest: str | os.PathLike) -> tuple[int, Path]:
    """Open a new temp file beside `dest` with the mode a plain open() would give: 0666 & ~umask
    for a new file, the existing file's permission bits when `dest` is replaced."""
    while True:
        tmp = temp_path(dest)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        st = os.stat(dest)
        if stat.S_ISREG(st.st_mode):
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
    except OSError:
        pass
    return fd, tmp


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike):
    """`with atomic_path(path) as tmp:` a new temp file's path beside `path` for a writer that takes a path (an
    exporter), renamed onto `path` when the block ends, removed on any error or ^C: an interrupted write never
    leaves a truncated `path`. For the scripts that write models, weights and data outside a run's OutputPlan.
    The path gets the library writers' checks first (checked_output_file): renaming onto it replaced a FIFO or
    a device node (`export_onnx(model, "/dev/null")` as root) with a regular file, and a symlink with a file
    instead of writing through it."""
    dest = checked_output_file(dest)
    tmp = None
    try:   # from before the temp file exists: a signal held over its creation is raised right after
        with signals_blocked():
            fd, made = create_temp_file(dest)
            os.close(fd)
            tmp = made
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike):
    """`with atomic_file(path) as fh:` atomic_path with the temp file open for binary writing (and fsynced)."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_chunks(fh, data) -> None:
    """Write bytes, or an iterable of byte strings (onnx/graph.serialized_pieces), to `fh`."""
    for chunk in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
        fh.write(chunk)


def write_temp(dest: str | os.PathLike, data) -> Path:
    """Write `data` (bytes or byte-string chunks) to a new temp file beside `dest`, fsync it, return
    the temp path."""
    tmp = None
    try:   # from before the temp file exists (see atomic_path)
        with signals_blocked():
            fd, tmp = create_temp_file(dest)
        with os.fdopen(fd, "wb") as fh:
            write_chunks(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return tmp


def checked_output_file(path, flag: str = "output", role: str = "file") -> Path:
    """The CLI's checks of one output file (OutputPlan._check_one: a folder, device or FIFO, a missing or
    unwritable folder, an immutable file, a NUL byte, an overlong name), for library writers
    (onnx/graph.write_bytes_atomic): one CollapseError, nothing created. A missing folder is refused, not
    made: a library call creates no folder its caller did not ask for. Returns the resolved target."""
    plan = OutputPlan()
    plan.add_output(role, flag, path)
    plan._check_one(plan.outputs[role])
    return plan.outputs[role].final


# ------------------------------------------------------------------------------- signals

_RECEIVED: list = []   # signals that arrived while interrupt_guard was active (see received_signal)


_FINISHED: list = []   # the exit code, once the run is over

_RENAMED_DIRS: set = set()   # directories renamed into place by this run's code outside the plan (TVM --export)


def note_dir_renamed(final) -> None:
    """Record that `final` was just renamed into place (call with the signals held, right after the rename):
    the export is renamed deep inside the TVM hand-off, and an interruption before that returned said the
    export was not written although it was."""
    _RENAMED_DIRS.add(os.path.realpath(os.fspath(final)))


def finish_run(code: int) -> None:
    _FINISHED[:] = [code]


def finished_exit_code() -> int | None:
    """The exit code of a run that has ended (all written, message printed), else None."""
    return _FINISHED[0] if _FINISHED else None


def received_signal() -> int | None:
    """The first SIGINT/SIGTERM of this run, even if a C extension (TVM's FFI) turned the Interrupted
    raised in its callback into an error of its own with the signal number as the message."""
    return _RECEIVED[0] if _RECEIVED else None


def raise_if_interrupted() -> None:
    """Raise Interrupted if a signal arrived whose Interrupted was swallowed on the way (raised inside
    a library's callback or `except BaseException`): seen once, a SIGINT ignored that way let a run
    finish and write everything with exit 0. Called before anything is renamed into place."""
    if _RECEIVED and not _FINISHED:
        raise Interrupted(_RECEIVED[0])


@contextlib.contextmanager
def interrupt_guard():
    """Turn SIGTERM (and SIGINT) into Interrupted in the main thread; a no-op elsewhere."""
    def handler(signum, _frame):
        if _FINISHED:   # main() is returning its exit code: nothing left to interrupt
            return
        _RECEIVED.append(signum)
        if _RESEND:   # the resend of a swallowed Interrupted (or a signal that came before it): one stop, not two
            since = _RESEND.pop()[1]
            if _RAISED[0] != since:   # another Interrupted was raised since: the run is already stopping
                return
        if _DEFERRED:   # inside C++ that calls Python back: raise_if_interrupted() raises at a safe point
            return
        if _HELD:   # inside signals_blocked(): raised when the block ends
            return
        raise Interrupted(signum)

    _RECEIVED.clear()
    _FINISHED.clear()
    _RENAMED_DIRS.clear()
    _RESEND.clear()

    old = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread
        pass
    old_hook = sys.unraisablehook
    if old:
        sys.unraisablehook = functools.partial(_unraisable, old_hook)
    try:
        yield
    finally:
        with signals_blocked(deliver=False):   # a signal now is delivered after both handlers are restored
            pending = _cancel_resend()
            for s, h in old.items():
                signal.signal(s, h)
            if old:
                sys.unraisablehook = old_hook
    # a swallowed Interrupted whose resend had not come when the block ended normally: the signal arrived inside
    # the block, so the block ends with it (the timer fired after the handlers were restored: the caller's
    # SIGTERM handler, or SIG_DFL, got a signal this guard had already taken; a run that had finished is not
    # interrupted)
    if pending is not None and not _FINISHED:
        raise Interrupted(pending)


def _unraisable(previous, unraisable) -> None:
    """sys.unraisablehook inside interrupt_guard. The handler's Interrupted can land in code whose
    exceptions Python only prints (a weakref callback of importlib's module locks, a __del__): seen, a
    SIGINT during an import printed "Exception ignored in ... Traceback ... Interrupted: 2" and the run went
    on. The signal is recorded (_RECEIVED); another thread sends it again 20 ms later, so that the handler raises
    in the main thread's ordinary code (signal.raise_signal would run the handler inside this hook), and
    raise_if_interrupted() still stops anything from landing if that one is swallowed too."""
    exc = unraisable.exc_value
    if isinstance(exc, Interrupted):
        if not _FINISHED and not _RESEND:
            resend = threading.Timer(0.02, _resend, (exc.signum,))   # once this hook has returned
            resend.daemon = True
            _RESEND[:] = [(resend, _RAISED[0], exc.signum)]
            resend.start()
        return
    previous(unraisable)


_RESEND: list = []   # [(timer, _RAISED when the swallowed Interrupted was made, signum)] while its resend is due


def _resend(signum) -> None:
    """The timer's action: the signal again, unless the run stopped meanwhile. Dropped when another
    Interrupted came first (raise_if_interrupted, the user's second ^C): resent anyway, it was raised inside
    that one's cleanup (the plan's discard, a finally) and a temp file stayed with a traceback."""
    due = _RESEND[0] if _RESEND else None
    if due is None or due[0] is not threading.current_thread():
        return
    if due[1] == _RAISED[0] and not _FINISHED:
        os.kill(os.getpid(), signum)   # the handler takes the entry
    elif _RESEND and _RESEND[0] is due:   # not sent: a later signal of the user's is raised as usual
        _RESEND.clear()


def _cancel_resend():
    """End a pending resend (interrupt_guard's exit): its signal number if the swallowed Interrupted is the
    last one made (nothing stopped the block since), else None."""
    if not _RESEND:
        return None
    timer, since, signum = _RESEND.pop()
    timer.cancel()
    if timer is not threading.current_thread():
        timer.join()   # a kill under way lands now, while our handler (which only records it here) is in place
    return signum if since == _RAISED[0] else None


def _program_signal(signum, _frame):
    """SIGINT/SIGTERM outside main()'s own handler, in a process that runs the CLI as its program. Before
    main() (the imports: seconds with torch/onnxruntime cold) nothing has been written: one line, exit
    130/143. Once the run is over (everything written, the message printed) a signal during interpreter
    shutdown (TVM's worker pools join at exit) ends the process with the run's own exit code instead of a
    KeyboardInterrupt traceback / death by signal."""
    code = finished_exit_code()
    if code is None:   # before main() took over (the imports) or after it gave up (a usage error): nothing written
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        os.write(2, f"interrupted ({name}); nothing written\n".encode())   # not a KeyboardInterrupt traceback
        os._exit(128 + signum)
    _flush_std()
    os._exit(code)


def _flush_std() -> None:
    import sys

    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.flush()


def take_program_signals() -> None:
    """Install _program_signal for SIGINT/SIGTERM: the first thing `python -m collapse_passes` and the
    `collapse-passes` script do (this module imports nothing heavy)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _program_signal)


class _TolerantStdout:
    """The run's stdout (the report table, "wrote ...", -q's path, --list-keys), which only informs: a stdout that
    cannot take it never changes what the run writes or its exit code. Seen: `... | head` closed the pipe and
    rich ended the process with SystemExit(1) mid-run (exit 1 says "verification failed"; no word, no file);
    `> /dev/full` stopped the run with "error: No space left on device" (as if the outputs' disk were full);
    a non-ASCII output path under an ASCII stdout was a UnicodeEncodeError traceback (exit 3) after the model
    had been written. Now: a character the encoding lacks is written escaped (as Python does on stderr); on a
    write error the rest of the output goes to /dev/null (fd 1 too: TVM's C++ logs), with a note on stderr
    unless the reader just went away (EPIPE, `| head`), and the run goes on."""

    def __init__(self, stream):
        self._stream = stream
        self.lost: OSError | None = None

    def write(self, text):
        if self.lost is None:
            try:
                try:
                    return self._stream.write(text)
                except UnicodeEncodeError:
                    enc = getattr(self._stream, "encoding", None) or "ascii"
                    return self._stream.write(text.encode(enc, "backslashreplace").decode(enc))
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self.lost is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        self.lost = exc
        with contextlib.suppress(Exception):   # later writes (and the buffered rest) go nowhere, also at exit
            fd = self._stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        if exc.errno != errno.EPIPE:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"note: stdout: {exc.strerror or exc}; the rest of the output is not shown "
                                 "(the files are still written)\n")
                sys.stderr.flush()

    def __getattr__(self, name):   # isatty, encoding, fileno, ...: rich reads them
        return getattr(self._stream, name)


@contextlib.contextmanager
def tolerant_stdout():
    """sys.stdout as _TolerantStdout for the block (the CLIs' main())."""
    previous = sys.stdout
    if previous is None or isinstance(previous, _TolerantStdout):   # fd 1 closed at start-up: print() is a no-op
        yield
        return
    wrapper = sys.stdout = _TolerantStdout(previous)
    try:
        yield
    finally:
        wrapper.flush()
        if sys.stdout is wrapper:
            sys.stdout = previous


def leave_program(code: int):
    """End the process with `code` the way the CLI's programs do: the exit hooks under our handler, then
    os._exit. Python's own finalization puts SIG_DFL back before the C++ libraries (TVM, LLVM) tear down,
    so a signal then killed the process after a complete run, and it collected MetaSchedule's
    PopenPoolExecutor in one of that pool's own threads after an interrupted tuning run ("Exception ignored
    in ... __del__ ... RuntimeError: cannot join current thread", a traceback under the last line)."""
    import atexit

    atexit._run_exitfuncs()
    _flush_std()
    os._exit(code)


_DEFERRED: list = []   # non-empty while signals_deferred() is active


@contextlib.contextmanager
def signals_deferred():
    """Make the guard's handler only record SIGINT/SIGTERM (no exception) inside this block, for library code
    that calls Python back from C++: an Interrupted raised in MetaSchedule's logging callback (a C++
    destructor) killed the run with std::terminate (SIGSEGV, exit -11, no cleanup); raised elsewhere in its
    callbacks it was swallowed and tuning went on for minutes. The code inside calls raise_if_interrupted()
    where stopping is safe (between batches)."""
    _DEFERRED.append(True)
    try:
        yield
    finally:
        _DEFERRED.pop()


def rearm_signal_handlers() -> None:
    """Install Python's SIGINT/SIGTERM handlers again at the C level. LLVM (inside a TVM build)
    registers its own handlers, which remove LLVM's temp files and then kill the process by the
    signal: no cleanup of ours, no message, exit -2/-15. Python still reports its own handler."""
    for s in (signal.SIGINT, signal.SIGTERM):
        h = signal.getsignal(s)
        if h is not None:
            with contextlib.suppress(ValueError, OSError):   # not the main thread
                signal.signal(s, h)


_HELD: list = []   # non-empty while signals_blocked() holds the signals


@contextlib.contextmanager
def signals_blocked(deliver: bool = True):
    """Hold SIGINT/SIGTERM while a rename and its bookkeeping happen, so the interruption message
    is exact; a pending signal is delivered right after (deliver: as Interrupted, when the block ends
    normally outside signals_deferred()).

    pthread_sigmask alone holds them for this thread only: with other threads running (onnxruntime's
    pools, always there in a run) the kernel hands the signal to one of those and CPython runs the
    handler in the main thread at its next instruction, inside the block. So interrupt_guard's handler
    only records a signal while _HELD is set, and it is raised here. (Python handlers run in the main thread
    only: a block in another thread holds nothing for them, as before, and raises nothing here.)"""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        with _thread_mask(sigs):
            yield
        return
    seen = len(_RECEIVED)
    # outside the CLI (a library call: export_onnx, write_bytes_atomic) SIGINT is Python's KeyboardInterrupt, raised
    # inside the block the same way (a temp file created, its name not yet returned: left behind); held as well
    library = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if library:
        held = len(_LIBRARY_HELD)
        signal.signal(signal.SIGINT, _hold_interrupt)
    _HELD.append(True)
    try:
        with _thread_mask(sigs):
            yield
    finally:
        _HELD.pop()
        if library:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if library and len(_LIBRARY_HELD) > held:
        del _LIBRARY_HELD[held:]
        raise KeyboardInterrupt
    if deliver and not _HELD and not _DEFERRED and not _FINISHED and len(_RECEIVED) > seen:
        raise Interrupted(_RECEIVED[seen])


_LIBRARY_HELD: list = []   # SIGINTs held by signals_blocked() where Python's own handler was in place


def _hold_interrupt(signum, _frame):
    _LIBRARY_HELD.append(signum)


@contextlib.contextmanager
def _thread_mask(sigs):
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------------------- the plan

def _show(p) -> str:
    return os.fspath(p)


def check_path_form(flag: str, p: str | os.PathLike) -> None:
    s = os.fspath(p)
    if not s:
        raise CollapseError(f"{flag}: empty path; give a path")
    if "\x00" in s:
        raise CollapseError(f"{flag}: the path contains a NUL byte; give a plain file name")
    for part in Path(s).parts:
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            raise CollapseError(f"{flag}: path component {part[:24]!r}... is {n} bytes, longer than the "
                                f"{NAME_MAX} bytes file systems allow; use a shorter name")


def check_folder_reachable(flag: str, given: str | os.PathLike) -> None:
    """The folder an output is created in must exist as the kernel resolves the path *as given*.
    realpath (which makes Output.final) keeps a missing or non-folder component and lets a later '..'
    cancel it, so `-o sub/../o.onnx` with no folder `sub` came out as `./o.onnx`, where open() fails
    with ENOENT: the run wrote a file the path cannot name. Refused in one line instead, naming the
    first component the kernel cannot go through."""
    s = os.fspath(given)
    head = os.path.dirname(s.rstrip(os.sep) or s) or os.curdir   # a folder output (`exp/`) is created in `.`
    try:
        if stat.S_ISDIR(os.stat(head).st_mode):
            return
    except OSError:
        pass
    parts = Path(head).parts
    problem = None
    for i in range(len(parts)):
        prefix = os.path.join(*parts[:i + 1])
        try:
            if not stat.S_ISDIR(os.stat(prefix).st_mode):
                problem = os.strerror(errno.ENOTDIR)
        except FileNotFoundError:
            problem = ""
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem is not None:
            break
    else:   # each prefix is a folder yet the whole is not (it changed meanwhile): name the whole
        prefix, problem, i = head, os.strerror(errno.ENOTDIR), len(parts)
    why = " (a later '..' does not skip it: the system resolves every component)" if os.pardir in parts[i + 1:] else ""
    if problem == "":
        raise CollapseError(f"{flag} {s}: folder {prefix} does not exist{why}; create it first or choose another path")
    raise CollapseError(f"{flag} {s}: {prefix}: {problem}{why}; choose another path")


def _kind_of(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _identity(p: Path):
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of an earlier export directory that the export did not write (EXPORT_LAYOUT), sorted."""
    out = []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        want = EXPORT_LAYOUT.get(e.name, False)
        if want is None and e.is_file(follow_symlinks=False):
            continue
        if isinstance(want, set) and e.is_dir(follow_symlinks=False):
            out += [f"{e.name}/{f.name}" for f in sorted(os.scandir(e.path), key=lambda f: f.name)
                    if f.name not in want or not f.is_file(follow_symlinks=False)]
            continue
        out.append(e.name + ("/" if e.is_dir(follow_symlinks=False) else ""))
    return out


_FS_IOC_GETFLAGS = 0x80086601          # linux/fs.h; the flags lsattr shows
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _check_replaceable(flag: str, given: str, final: Path) -> None:
    """An existing output that is immutable or append-only (chattr +i / +a) cannot be renamed over, not
    even by root, and the folder probe cannot tell: the run did all its work, renamed the model into place,
    and only then failed on the report (exit 2 with a file written). Read with the ioctl lsattr uses;
    file systems without these flags (ENOTTY) and other systems are taken as replaceable."""
    try:
        import array
        import fcntl
    except ImportError:   # not a POSIX system
        return
    try:
        fd = os.open(final, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return   # unreadable: the write says why
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        flags = buf[0]
    except OSError:
        return
    finally:
        os.close(fd)
    if flags & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        what = "immutable" if flags & _FS_IMMUTABLE_FL else "append-only"
        raise CollapseError(f"{flag} {given} is {what} (chattr +{'i' if what == 'immutable' else 'a'}), so it cannot be "
                            f"replaced; choose another path or remove the flag (chattr -{'i' if what == 'immutable' else 'a'})")


def _check_sticky_owner(flag: str, given: str, final: Path, st) -> None:
    """In a sticky folder (chmod +t: /tmp) only the file's owner, the folder's owner or root may rename over
    a file, and the folder probe (a temp file of our own) cannot tell: an output left there by another user
    was refused (EPERM) at the rename, after the whole run."""
    euid = os.geteuid() if hasattr(os, "geteuid") else 0
    if euid == 0:
        return
    try:
        folder = os.stat(final.parent)
    except OSError:
        return
    if folder.st_mode & stat.S_ISVTX and euid not in (st.st_uid, folder.st_uid):
        raise CollapseError(f"{flag} {given} belongs to another user (uid {st.st_uid}) and lies in the sticky folder "
                            f"{final.parent}, where only its owner may replace it; choose another path")


def _suffix(role: str) -> str:
    return {"model": ".onnx", "plot": ".png"}.get(role, ".json")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


@dataclass
class Output:
    role: str          # model | model_data | scores | plot | report | export | tune
    flag: str          # the flag that named it, for messages
    given: str         # the path as the user wrote it
    final: Path        # where the data lands (absolute, symlinks resolved)
    kind: str = "file"  # file | dir (replaced as a whole) | tree (written in place)
    staged: Path | None = None
    written: bool = False


@dataclass
class OutputPlan:
    outputs: dict = field(default_factory=dict)    # role -> Output
    inputs: list = field(default_factory=list)     # (label, given path, resolved Path, identity)
    removed_stale: list = field(default_factory=list)
    tvm_started: bool = False
    _rename = staticmethod(os.replace)   # a seam for the interruption tests

    # ---------------------------------------------------------------- building
    def add_input(self, label: str, path) -> None:
        if path is None:
            return
        check_path_form(label, path)
        p = Path(path)
        if not os.path.exists(p):
            return  # the loader names a missing input
        mode = os.stat(p).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):   # reading a FIFO would block forever
            raise CollapseError(f"{label} {_show(path)} is {_kind_of(mode)}; give a regular file")
        self.inputs.append((label, _show(path), Path(os.path.realpath(p)), _identity(p)))
        if p.is_dir():
            for f in sorted(p.glob("*.npy")):
                try:
                    fmode = os.stat(f).st_mode
                except OSError:
                    continue   # a dangling link: the loader names it
                if not (stat.S_ISREG(fmode) or stat.S_ISDIR(fmode)):   # np.load would block on a FIFO
                    raise CollapseError(f"{label} {_show(f)} is {_kind_of(fmode)}; give regular .npy files")
                self.inputs.append((label, _show(f), Path(os.path.realpath(f)), _identity(f)))

    def add_model_input(self, path, external_data=None) -> None:
        """The model and its external data files. `external_data`: those files when the caller has
        parsed the model already (the CLI parses its input once per run: onnx/graph.ModelFile), else
        they are read from the proto without loading the data."""
        self.add_input("input model", path)
        if external_data is None:
            try:
                import onnx

                from .onnx.graph import external_data_files

                external_data = external_data_files(onnx.load(os.fspath(path), load_external_data=False), path)
            except Exception:
                return  # not loadable: load_model says why, later
        for f in external_data:
            self.add_input("input model's external data", f)

    def add_output(self, role: str, flag: str, path, kind: str = "file") -> None:
        if path is None:
            return
        check_path_form(flag, path)
        if os.fspath(path) == "-":   # the usual "stdout": not a file name anyone means
            raise CollapseError(f"{flag} -: the tool writes files (atomically), not to stdout; give a file path "
                                f"(./- for a file named '-')")
        if kind == "file" and os.path.basename(os.fspath(path)) in ("", ".", ".."):
            # realpath drops a trailing '/': `-o new/` would write a *file* named `new`
            raise CollapseError(f"{flag} {_show(path)} names a folder (it ends in '{os.sep}', '.' or '..'); "
                                f"give a file path, e.g. {flag} {os.path.join(os.path.normpath(_show(path)), 'out' + _suffix(role))}")
        # realpath resolves each component in order, so "link/../x" follows the link like the kernel does
        final = Path(os.path.realpath(os.fspath(path)))
        self.outputs[role] = Output(role, flag, _show(path), final, kind)

    def add_model_data(self, flag: str) -> Output:
        """The model output's external data file, `<model file>.data` beside the file the model lands in
        (onnx/graph.data_file_for), as `model_data`. The model records it by name only, and loaders look
        for it beside the path they open: a model output that is a symlink into another folder would be
        written with its data where loading it through the link never finds it, so that is refused; so is a
        data file that is a symlink (onnx refuses external data read through one)."""
        from .onnx.graph import data_file_for

        model = self.outputs["model"]
        given_dir = os.path.realpath(os.path.dirname(os.path.abspath(model.given)))
        if Path(given_dir) != model.final.parent:
            raise CollapseError(f"{model.flag} {model.given} is a symbolic link into {model.final.parent}, and the "
                                f"model is written with an external data file, which loaders look for beside "
                                f"{model.given}; give the link's target {model.final} or a path that is no link")
        link = data_file_for(model.final)
        if os.path.islink(link):   # written through, the model recorded the target's name: loaders found nothing
            raise CollapseError(f"{flag} {os.path.join(os.path.dirname(model.given), link.name)} is a symbolic link "
                                f"(to {os.readlink(link)}); the model names its data file, which onnx does not read "
                                f"through a link: remove the link or choose another path for {model.flag}")
        self.add_output("model_data", flag, link)
        data = self.outputs["model_data"]
        data.given = os.path.join(os.path.dirname(model.given), data.final.name)   # where it really lands
        return data

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Refuse the run, in one line, before any work; then remove stale temps of killed runs."""
        outs = list(self.outputs.values())
        for o in outs:
            self._check_one(o)
        for i, a in enumerate(outs):
            for b in outs[i + 1:]:
                same = a.final == b.final or (_identity(a.final) is not None and _identity(a.final) == _identity(b.final))
                if same:
                    raise CollapseError(f"{a.flag} and {b.flag} name the same file {a.given}; give each its own path")
                for x, y in ((a, b), (b, a)):
                    if x.kind == "dir" and _inside(y.final, x.final):
                        raise CollapseError(f"{y.flag} {y.given} lies inside {x.flag} {x.given}, which is replaced "
                                            f"as a whole; put it elsewhere")
        folders = {o.final.parent for o in outs}
        self.removed_stale = remove_stale_temps(folders, keep=[ip for _, _, ip, _ in self.inputs])

    def _check_one(self, o: Output) -> None:
        flag, given, final = o.flag, o.given, o.final
        check_folder_reachable(flag, given)
        for label, ig, ip, ident in self.inputs:
            if final == ip or (ident is not None and _identity(final) == ident):
                model = self.outputs.get("model")   # the data file's name follows the model's: -o is the way out
                way = model.flag if o.role == "model_data" and model is not None else flag
                raise CollapseError(f"{flag} {given} is the {label} {ig}; inputs are never overwritten: "
                                    f"choose another path for {way}")
            if o.kind == "dir" and _inside(ip, final):
                raise CollapseError(f"{flag} {given} holds the input {ig}; that directory would be replaced: "
                                    f"choose a new directory for {flag}")
        try:
            st = os.stat(final)
        except FileNotFoundError:
            try:   # -o /dev/stdout into a pipe: realpath ends in "pipe:[N]", which only the kernel finds
                st = os.stat(given) if o.kind == "file" else None
            except OSError:
                st = None
        except OSError as exc:
            raise CollapseError(f"{flag} {given}: {exc.strerror or exc}; choose another path") from None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                if o.kind == "file":
                    raise CollapseError(f"{flag} {given} is a directory; only regular files are written: give a "
                                        f"file path")
                if o.kind == "dir" and not os.path.isfile(final / EXPORT_MARKER):
                    raise CollapseError(f"{flag} {given} exists and was not made by this tool (no {EXPORT_MARKER} "
                                        f"marker), so it is not replaced; name a new directory, e.g. "
                                        f"{flag} {given.rstrip('/') or given}-export")
                foreign = _foreign_entries(final) if o.kind == "dir" else []
                if foreign:
                    raise CollapseError(f"{flag} {given} holds files an export does not write ({', '.join(foreign[:3])}"
                                        f"{', ...' if len(foreign) > 3 else ''}); replacing the directory would delete "
                                        f"them: move them out or name a new directory")
            elif o.kind != "file":
                raise CollapseError(f"{flag} {given} exists and is not a directory; name a new directory")
            elif not stat.S_ISREG(st.st_mode):
                model = self.outputs.get("model")
                way = ("give a file path" if not flag.startswith(("-", "the default")) else
                       "use --dry-run to write no model" if o.role == "model" else
                       # no flag names the data file: "drop -o's data file" named no way out
                       f"move it away or choose another path for {model.flag}" if o.role == "model_data" and model
                       else f"drop {flag} to write none")
                raise CollapseError(f"{flag} {given} is {_kind_of(st.st_mode)}; only regular files are written "
                                    f"({way})")
        if st is not None and (stat.S_ISREG(st.st_mode) or o.kind == "dir"):
            _check_replaceable(flag, given, final)
            _check_sticky_owner(flag, given, final, st)
        if o.role == "model_data" and st is not None and stat.S_ISREG(st.st_mode):
            self._check_data_file_owner(o)
        parent = final.parent
        if not parent.is_dir():
            raise CollapseError(f"{flag} {given}: folder {parent} does not exist; create it first or choose "
                                "another path")
        self._probe(flag, given, parent)

    def _check_data_file_owner(self, o: Output) -> None:
        """An existing `<model>.data` is named by no flag: replace it only when the model file being
        replaced refers to it (an earlier run's output), never another model's weights. An empty one holds no
        weights to lose: it is what a run writes when no weight is large enough for the data file (each under
        EXTERNAL_MIN_BYTES), and the model refers to nothing in it, so rerunning into the same -o was refused."""
        model = self.outputs.get("model")
        with contextlib.suppress(OSError):
            if os.path.getsize(o.final) == 0:
                return
        owned = False
        if model is not None and os.path.isfile(model.final):
            try:
                import onnx

                from .onnx.graph import external_data_files

                proto = onnx.load(os.fspath(model.final), load_external_data=False)
                owned = any(_identity(r) == _identity(o.final) for r in external_data_files(proto, model.final))
            except Exception:   # noqa: BLE001 - not a model that refers to it: not replaced
                owned = False
        if not owned:
            name = f"{model.flag} {model.given}" if model is not None else "the model"
            raise CollapseError(f"{o.flag} {o.given} exists and is not the data file of {name} (another model's "
                                f"weights?); it is not overwritten: move it away or choose another output path")

    @staticmethod
    def _probe(flag: str, given: str, folder: Path) -> None:
        """Create and remove a temp file: the only test of writability that root, chattr +i and
        read-only mounts all answer truthfully."""
        try:
            with signals_blocked():   # an interruption here must not leave the probe behind
                fd, tmp = create_temp_file(folder / "probe")
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            raise CollapseError(f"{flag} {given}: cannot write in folder {folder} ({exc.strerror or exc}); "
                                "choose another path") from None

    # ---------------------------------------------------------------- staging and commit
    def path(self, role: str) -> Path | None:
        o = self.outputs.get(role)
        return o.final if o else None

    def stage(self, role: str, data) -> None:
        """Write `data` (bytes or byte-string chunks) to a temp file beside the role's target."""
        o = self.outputs[role]
        if o.staged is not None:
            with contextlib.suppress(OSError):
                os.unlink(o.staged)
        try:
            with signals_blocked():   # the temp is recorded (for discard) the moment it exists
                fd, o.staged = create_temp_file(o.final)
            with os.fdopen(fd, "wb") as fh:
                write_chunks(fh, data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise CollapseError(f"{o.flag} {o.given}: cannot write ({exc.strerror or exc})"
                                f"{self._written_clause()}") from None

    def commit(self, roles=COMMIT_ORDER) -> list[Output]:
        """Rename staged files onto their targets in the fixed order; record each one done. The signals
        are held over all of them: a model and its data file (whose offsets it records) land together."""
        raise_if_interrupted()
        done = []
        with signals_blocked():
            for role in roles:
                o = self.outputs.get(role)
                if o is None or o.staged is None:
                    continue
                try:
                    self._rename(o.staged, o.final)
                except OSError as exc:
                    raise CollapseError(f"{o.flag} {o.given}: cannot write ({exc.strerror or exc})"
                                        f"{self._written_clause()}") from None
                o.staged, o.written = None, True
                done.append(o)
        return done

    def mark_written(self, role: str) -> None:
        if role in self.outputs:
            self.outputs[role].written = True

    def discard(self) -> None:
        """Remove every staged temp file (called on any failure or interruption)."""
        for o in self.outputs.values():
            if o.staged is not None:
                with contextlib.suppress(OSError):
                    os.unlink(o.staged)
                o.staged = None

    def written(self) -> list[Output]:
        return [o for o in self.outputs.values()
                if o.written or (o.kind == "dir" and os.path.realpath(o.final) in _RENAMED_DIRS)]

    def _written_clause(self) -> str:
        w = self.written()
        return "; already written: " + ", ".join(o.given for o in w) if w else "; nothing written"

    def summary(self) -> str:
        """Exactly what this run wrote, for the message after a failure or interruption."""
        w = self.written()
        text = ("wrote " + ", ".join(f"{o.given} ({o.role})" for o in w)) if w else "nothing written"
        t = self.outputs.get("tune")
        if self.tvm_started and t is not None and t.final.is_dir():
            text += f"; the TVM tuning database {t.given} may hold new records"
        return text
