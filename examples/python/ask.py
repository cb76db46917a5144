"""Embedding small-agent from Python through its C ABI with ctypes (standard library only).

    SMALL_AGENT_LIB=/path/to/libsmall_agent.so python3 ask.py "What is 17 * 23?"

Without SMALL_AGENT_LIB the library is looked up the usual way (ldconfig paths,
LD_LIBRARY_PATH). Exit status: 0 answered, 1 the run failed, 2 usage or set-up error.
"""
import ctypes
import ctypes.util
import os
import sys

SA_OK = 0
SA_EVENT_TOKEN = 0


class RuntimeParams(ctypes.Structure):
    """Mirror of sa_runtime_params (include/small_agent.h)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("model_path", ctypes.c_char_p),
        ("shard_path", ctypes.c_char_p),
        ("threads", ctypes.c_int32),
        ("context_size", ctypes.c_uint32),
        ("sandbox_timeout_ms", ctypes.c_uint32),
        ("sandbox_memory_mib", ctypes.c_uint32),
        ("python", ctypes.c_int),
    ]


class SessionParams(ctypes.Structure):
    """Mirror of sa_session_params."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("max_steps", ctypes.c_uint32),
        ("sag", ctypes.c_uint32),
        ("grammar", ctypes.c_bool),
        ("temperature", ctypes.c_float),
        ("seed", ctypes.c_uint32),
    ]


EventCallback = ctypes.CFUNCTYPE(
    None, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p
)


def load_library():
    path = os.environ.get("SMALL_AGENT_LIB") or ctypes.util.find_library("small_agent")
    if not path:
        sys.exit("error: libsmall_agent not found: set SMALL_AGENT_LIB to its path")
    lib = ctypes.CDLL(path)
    lib.sa_version.restype = ctypes.c_char_p
    lib.sa_status_name.restype = ctypes.c_char_p
    lib.sa_status_name.argtypes = [ctypes.c_int]
    lib.sa_last_error_message.restype = ctypes.c_char_p
    lib.sa_runtime_default_params.restype = RuntimeParams
    lib.sa_session_default_params.restype = SessionParams
    lib.sa_runtime_new.argtypes = [ctypes.POINTER(RuntimeParams), ctypes.POINTER(ctypes.c_void_p)]
    lib.sa_runtime_free.argtypes = [ctypes.c_void_p]
    lib.sa_session_new.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(SessionParams),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.sa_session_free.argtypes = [ctypes.c_void_p]
    # Returned strings are taken as raw pointers: they must go back to sa_string_free.
    lib.sa_ask_stream.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        EventCallback,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.sa_string_free.argtypes = [ctypes.c_void_p]
    return lib


def failure(lib, status):
    return "%s: %s" % (
        lib.sa_status_name(status).decode(),
        lib.sa_last_error_message().decode("utf-8", "replace"),
    )


def main():
    if len(sys.argv) < 2:
        print("usage: ask.py QUESTION", file=sys.stderr)
        return 2
    lib = load_library()
    params = lib.sa_runtime_default_params()
    runtime = ctypes.c_void_p()
    status = lib.sa_runtime_new(ctypes.byref(params), ctypes.byref(runtime))
    if status != SA_OK:
        print("error: " + failure(lib, status), file=sys.stderr)
        return 2
    sparams = lib.sa_session_default_params()
    session = ctypes.c_void_p()
    status = lib.sa_session_new(runtime, ctypes.byref(sparams), ctypes.byref(session))
    if status != SA_OK:
        print("error: " + failure(lib, status), file=sys.stderr)
        lib.sa_runtime_free(runtime)
        return 2

    def on_event(kind, text, length, _user):
        if kind == SA_EVENT_TOKEN:
            sys.stderr.write(ctypes.string_at(text, length).decode("utf-8", "replace"))

    callback = EventCallback(on_event)
    answer = ctypes.c_void_p()
    question = " ".join(sys.argv[1:]).encode("utf-8")
    status = lib.sa_ask_stream(session, question, callback, None, ctypes.byref(answer), None)
    code = 0
    if status == SA_OK:
        print(ctypes.string_at(answer.value).decode("utf-8"))
        lib.sa_string_free(answer)
    else:
        print("\nerror: " + failure(lib, status), file=sys.stderr)
        code = 1
    lib.sa_session_free(session)
    lib.sa_runtime_free(runtime)
    return code


if __name__ == "__main__":
    sys.exit(main())
