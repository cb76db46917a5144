# The guest half of the sandbox: loaded once per interpreter, before any user code, into a
# module of its own (`_sandbox`), never into `__main__`. It runs each snippet, captures the value
# of a final expression, formats errors, exposes the host's tools as plain functions and talks
# to the host through one narrow transport. Nothing here is a security boundary: the WASM
# sandbox is. The import allow-list reproduces the reference agent's policy, and a snippet that
# subverts this module can only break its own session.
import builtins as _builtins
import json as _json
import sys as _sys
import traceback as _traceback
import ast as _ast
import os as _os
import __main__ as _main

_PyCF_ONLY_AST = 0x400
_CODE_NAME = "<code>"
_config = {}
_send = None  # set by boot(): bytes -> bytes (the answer)
_orig_import = _builtins.__import__
_streams = (_sys.stdout, _sys.stderr)
# The snippets' globals: a plain dict that looks like `__main__`'s, not `__main__.__dict__`
# itself. CPython 3.15 watches every module's dict and sends an event on each store to it,
# and a snippet's top-level variables are globals: measured, a module-level loop ran 13%
# slower in `__main__.__dict__` than in a plain dict.
_ns = {
    "__name__": "__main__",
    "__doc__": None,
    "__package__": None,
    "__loader__": None,
    "__spec__": None,
    "__builtins__": _builtins,
}


class FinalAnswerReached(BaseException):
    """Raised by final_answer() to unwind the snippet; a BaseException so that a bare
    `except Exception` in user code does not swallow it."""


class ToolError(Exception):
    """A host tool failed or refused the call."""


def _request(obj):
    raw = _json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    answer = _send(raw)
    return _json.loads(answer.decode("utf-8")) if answer else {}


def _allowed(name):
    allowed = _config.get("allowed_imports")
    if allowed is None:
        return True
    parts = name.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def _is_library(frame, globals):
    # An import made by a library (numpy importing its own helpers, the stdlib importing
    # `numbers`, the reactor's own frozen modules) is the library's business; one made by the
    # snippet, compiled as "<code>", or by source it exec()s ("<string>"), is the snippet's.
    # A library is code loaded from a file, or code running in a real module's namespace.
    name = frame.f_code.co_filename if frame is not None else "<code>"
    if name.startswith("/") or name.startswith("<frozen"):
        return True
    if not isinstance(globals, dict):
        return False
    mod = _sys.modules.get(globals.get("__name__"))
    return mod is not None and mod is not _main and getattr(mod, "__dict__", None) is globals


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and not _allowed(name) and not _is_library(_sys._getframe(1), globals):
        allowed = ", ".join(sorted(_config.get("allowed_imports") or []))
        raise ImportError(
            f"Import of '{name}' is not allowed in this sandbox. Allowed imports: {allowed}",
            name=name,
        )
    return _orig_import(name, globals, locals, fromlist, level)


def _make_tool(spec):
    name = spec["name"]
    params = [p["name"] for p in spec["params"]]

    def tool(*args, **kwargs):
        if len(args) > len(params):
            raise TypeError(f"{name}() takes {len(params)} arguments but {len(args)} were given")
        call = dict(zip(params, args))
        for k, v in kwargs.items():
            if k in call:
                raise TypeError(f"{name}() got multiple values for argument '{k}'")
            call[k] = v
        try:
            _json.dumps(call, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}(): arguments must be JSON-serializable: {e}") from None
        answer = _request({"op": "tool", "name": name, "args": call})
        if answer.get("ok"):
            return answer.get("value")
        raise ToolError(f"{name}: {answer.get('error', 'failed')}")

    tool.__name__ = name
    tool.__qualname__ = name
    tool.__doc__ = spec.get("description", "")
    return tool


def final_answer(answer):
    """Hand `answer` to the host and end this run."""
    try:
        value = _json.loads(_json.dumps(answer, allow_nan=False))
    except (TypeError, ValueError):
        value = None
    _request({"op": "final", "value": value, "repr": _short_repr(answer)})
    raise FinalAnswerReached()


def _short_repr(value):
    cap = _config.get("value_chars", 20000)
    try:
        text = repr(value)
    except BaseException as e:  # a hostile __repr__ must not kill the driver
        text = f"<repr failed: {type(e).__name__}>"
    return text[: cap + 1]


def _flush():
    for stream in (_sys.stdout, _sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _error(e):
    tb = e.__traceback__
    line = None
    for frame, lineno in _traceback.walk_tb(tb):
        if frame.f_code.co_filename == _CODE_NAME:
            line = lineno
    try:
        message = str(e)
    except BaseException:
        message = "<str failed>"
    # Only the innermost frames: a runaway recursion leaves a traceback of millions.
    frames = [f for f in _traceback.extract_tb(tb, limit=-20) if f.filename != "<sandbox>"]
    text = "".join(_traceback.format_list(frames)[-8:])
    text += "".join(_traceback.format_exception_only(type(e), e))
    return {
        "kind": "runtime",
        "type": type(e).__name__,
        "message": message,
        "line": line,
        "traceback": text[-4000:],
    }


def step(code):
    """Run one snippet in the session's namespace and report to the host. Returns None, so that the turn's
    interactive echo prints nothing."""
    result = {"op": "result"}
    # A previous snippet may have replaced or closed the streams; every exec starts clean.
    _sys.stdout, _sys.stderr = _streams
    try:
        try:
            tree = compile(code, _CODE_NAME, "exec", _PyCF_ONLY_AST)
            last = None
            if tree.body and isinstance(tree.body[-1], _ast.Expr):
                last = _ast.Expression(tree.body.pop().value)
            body = compile(tree, _CODE_NAME, "exec")
            tail = None if last is None else compile(last, _CODE_NAME, "eval")
        except SyntaxError as e:
            result["error"] = {
                "kind": "syntax",
                "type": type(e).__name__,
                "message": e.msg,
                "line": e.lineno,
                "column": e.offset,
                "text": (e.text or "").rstrip("\n"),
                "traceback": "".join(_traceback.format_exception_only(type(e), e)),
            }
            return None
        g = _ns
        try:
            exec(body, g)
            if tail is not None:
                value = eval(tail, g)
                if value is not None:
                    result["value"] = _short_repr(value)
        except FinalAnswerReached:
            result["final"] = True
        except BaseException as e:
            try:
                result["error"] = _error(e)
            except BaseException:
                # Formatting failed too (e.g. MemoryError again): report the bare type.
                result["error"] = {"kind": "runtime", "type": type(e).__name__, "message": "(details unavailable)", "line": None, "traceback": type(e).__name__}
            finally:
                e = None
        return None
    finally:
        _flush()
        _request(result)


def _ctypes_stand_in():
    # Pure-Python packages sometimes import ctypes only to size a C type (sympy's
    # `sizeof(c_long)`). A build without ctypes gets this stand-in: sizes of wasm32's C types,
    # and no way to load or call native code.
    try:
        import ctypes  # noqa: F401  (the real one, where the build has it)
        return
    except ImportError:
        pass
    import types

    m = types.ModuleType("ctypes", "Stand-in: C type sizes only; no foreign function interface.")
    for name, size in (("c_char", 1), ("c_byte", 1), ("c_short", 2), ("c_int", 4), ("c_long", 4),
                       ("c_longlong", 8), ("c_size_t", 4), ("c_void_p", 4), ("c_float", 4), ("c_double", 8)):
        setattr(m, name, type(name, (), {"_size": size}))
    m.sizeof = lambda t: t._size
    _sys.modules["ctypes"] = m


def boot(config, send):
    global _config, _send, _streams
    _config = config
    _send = send
    _sys.path.extend(config.get("sys_path", []))
    _ctypes_stand_in()
    for spec in config.get("tools", []):
        _ns[spec["name"]] = _make_tool(spec)
    _ns["final_answer"] = final_answer
    # A lite template restored from disk carries the `random` state of the process that
    # booted it (when the boot imported it): reseed from the host's entropy (WASI random_get).
    _random = _sys.modules.get("random")
    if _random is not None:
        _random.seed()
    _builtins.__import__ = _guarded_import
    _builtins.__sandbox_step__ = step
    # The host's view of the guest's environment is empty; `os.environ` is what WASI gave.
    _sys.argv = ["<sandbox>"]
    # Line-buffered, like a terminal: stdout and stderr then reach the capture in the order
    # they were printed.
    for stream in (_sys.stdout, _sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except BaseException:
            pass
    _streams = (_sys.stdout, _sys.stderr)


# The lite flavour's transport: a command module has no host import, so frames travel over
# the process's own pipes. Guest -> host on fd 1, host -> guest on fd 0, each frame a fixed
# header (marker + 8 hex digits of length) and a UTF-8 JSON payload. Printed output goes to
# fd 2 instead, so it can never be confused with a frame by accident.
_MARK = b"\x1eSA"
# The exit status that parks the interpreter (must match PARK_EXIT in lite.rs). The host
# honours it only while the interpreter boots; anywhere else it is a plain exit.
_PARK_EXIT = 0x7061726B
_TURN_ARGS = None


def _read_exact(n):
    chunks = []
    while n:
        chunk = _os.read(0, n)
        if not chunk:
            raise SystemExit(0)  # nothing queued: the host sent no (more) frames
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame():
    head = _read_exact(len(_MARK) + 8)
    if head[: len(_MARK)] != _MARK:
        raise SystemExit(3)
    return _read_exact(int(head[len(_MARK) :], 16))


def _frame(raw):
    return _MARK + b"%08x" % len(raw) + raw


def lite_send(raw):
    _os.write(1, _frame(raw))
    return _read_frame()


def lite_turn():
    """One host turn, called from the host below the parked frames: read one request, serve
    it, return None. Nothing may escape: an exception left pending here would be seen by the
    host as a failed call and the interpreter thrown away."""
    try:
        request = _json.loads(_read_frame().decode("utf-8"))
        op = request.get("op")
        if op == "exec":
            step(request["code"])
        elif op == "boot":
            result = {"op": "result"}
            try:
                boot(request["config"], lite_send)
            except BaseException as e:
                result["error"] = {"kind": "runtime", "type": type(e).__name__, "message": str(e)}
            lite_send(_json.dumps(result).encode("utf-8"))
    except BaseException:
        pass
    return None


def lite_park():
    """End of the boot program: tell the host where the turn entry lives, then stop.

    The host calls `sys.call_tracing(lite_turn, ())` through the C function behind
    `sys.call_tracing`, with this module's `_TURN_ARGS` as its argument array; it checks every
    address here against the objects' memory before trusting it."""
    global _TURN_ARGS
    _sys.stdout = _sys.stderr
    _TURN_ARGS = (lite_turn, ())
    info = {
        "op": "park",
        "call_tracing": id(_sys.call_tracing),
        "sys": id(_sys),
        "builtin_type": id(type(len)),
        "args": id(_TURN_ARGS),
        "tuple_type": id(tuple),
        "turn": id(lite_turn),
        "function_type": id(type(lite_turn)),
        "empty": id(()),
    }
    _os.write(1, _frame(_json.dumps(info).encode("utf-8")))
    _os._exit(_PARK_EXIT)
