/*
 * module.c: the bocpy._core module -- its per-interpreter state and the
 * functions the Python layer (src/bocpy/__init__.py) builds the public API
 * from.  Multi-phase initialisation with module state and heap types, so
 * that every worker sub-interpreter gets its own independent copy, and the
 * module declares support for a per-interpreter GIL.
 */
#include "bocpy.h"

static struct PyModuleDef bocpy_module_def;

bocpy_state *bocpy_state_of_module(PyObject *module) { return PyModule_GetState(module); }

bocpy_state *bocpy_state_of_type(PyTypeObject *tp) {
    PyObject *module = PyType_GetModuleByDef(tp, &bocpy_module_def);
    return module ? PyModule_GetState(module) : NULL;
}

/* ------------------------------------------------------------ functions */

/* Parses this function's (args, nargs, kwnames) into `a`, one slot per
 * name (NULL when an optional one is absent); returns NULL on error. */
#define PARSE_ARGS(fname, nrequired, ...)                                                          \
    static const char *const arg_names[] = {__VA_ARGS__};                                          \
    PyObject *a[sizeof(arg_names) / sizeof(arg_names[0])];                                         \
    if (bocpy_parse_args(fname, args, nargs, kwnames, arg_names,                                   \
                         (Py_ssize_t)(sizeof(arg_names) / sizeof(arg_names[0])), nrequired,        \
                         a) < 0) {                                                                 \
        return NULL;                                                                               \
    }

static PyObject *core_whencall(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError,
                        "whencall(func, args, captures=None) takes 2 or 3 arguments");
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_module(module);
    PyObject *cowns = args[1];
    if (!PyList_Check(cowns) && !PyTuple_Check(cowns)) {
        PyErr_Format(PyExc_TypeError,
                     "whencall() args must be a list of cowns (or lists of cowns), not '%.200s'",
                     Py_TYPE(cowns)->tp_name);
        return NULL;
    }
    PyObject *extra = NULL;
    if (nargs == 3 && args[2] != Py_None) {
        if (!PyList_Check(args[2]) && !PyTuple_Check(args[2])) {
            PyErr_Format(PyExc_TypeError,
                         "whencall() captures must be a list of values, not '%.200s'",
                         Py_TYPE(args[2])->tp_name);
            return NULL;
        }
        extra = PySequence_Tuple(args[2]);
        if (extra == NULL) {
            return NULL;
        }
    }
    PyObject *tuple = PySequence_Tuple(cowns);
    PyObject *result = tuple ? bocpy_whencall(st, args[0], tuple, extra) : NULL;
    Py_XDECREF(tuple);
    Py_XDECREF(extra);
    return result;
}

static PyObject *core_start(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_core.start(worker_count, header, values)");
        return NULL;
    }
    return bocpy_start(bocpy_state_of_module(module), args[0], args[1], args[2]);
}

static PyObject *core_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "_core.wait(timeout, stop, board=False)");
        return NULL;
    }
    int stop = PyObject_IsTrue(args[1]);
    int want_board = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (stop < 0 || want_board < 0) {
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_module(module);
    /* The board, when asked for, is the run's last state: bocpy_wait takes
     * it after the last behavior, before the stop clears the board. */
    PyObject *board = NULL;
    PyObject *stats = bocpy_wait(st, args[0], stop, want_board ? &board : NULL);
    if (stats == NULL) {
        Py_XDECREF(board);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, stats, board ? board : Py_None);
    Py_DECREF(stats);
    Py_XDECREF(board);
    return pair;
}

static PyObject *core_cancel(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return bocpy_cancel(bocpy_state_of_module(module));
}

static PyObject *core_rebuild_cown(PyObject *module, PyObject *arg) {
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    bocpy_cown *c = bocpy_transfer_get_cown(index);
    if (c == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "_rebuild_cown() is internal to bocpy: it only works while bocpy "
                        "unpickles a value");
        return NULL;
    }
    return bocpy_cown_wrap(bocpy_state_of_module(module), c);
}

static PyObject *core_rebuild_function(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_rebuild_function(code_id, defaults, kwdefaults, cells)");
        return NULL;
    }
    long long id = PyLong_AsLongLong(args[0]);
    if (id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_module(module);
    PyObject *func = bocpy_build_function(st, id, args[1], args[2], args[3], false);
    if (func == NULL || func != bocpy_registry_function(st, id)) {
        return func;
    }
    /* The pickler sets the defaults and cells of what this returns
     * (_pickling._set_function_state): a function of its own, never the
     * interpreter's template, which every behavior of this code shares. */
    PyObject *own = PyFunction_New(PyFunction_GET_CODE(func), PyFunction_GET_GLOBALS(func));
    Py_DECREF(func);
    return own;
}

static PyObject *core_register_code(PyObject *module, PyObject *func) {
    if (!PyFunction_Check(func)) {
        PyErr_Format(PyExc_TypeError, "_register_code() needs a function, not '%.200s'",
                     Py_TYPE(func)->tp_name);
        return NULL;
    }
    int64_t id = bocpy_registry_id_for(bocpy_state_of_module(module), func);
    return id < 0 ? NULL : PyLong_FromLongLong(id);
}

static PyObject *core_bootstrap_header(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_bootstrap_header(bocpy_state_of_module(module));
}

static PyObject *core_bootstrap_value(PyObject *module, PyObject *arg) {
    return bocpy_bootstrap_value(bocpy_state_of_module(module), arg);
}

static PyObject *core_set_starter(PyObject *module, PyObject *func) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_XSETREF(st->starter, Py_NewRef(func));
    Py_RETURN_NONE;
}

static PyObject *core_is_main_interpreter(PyObject *module, PyObject *unused) {
    (void)unused;
    /* Not on a threads-backend worker: "the program", not a behavior. */
    return PyBool_FromLong(bocpy_is_program_thread(bocpy_state_of_module(module)));
}

static PyObject *core_is_transferable(PyObject *module, PyObject *obj) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (bocpy_is_plain_immutable(st, obj)) {
        Py_RETURN_TRUE;
    }
    bocpy_blob *blob = bocpy_serialise(st, obj);
    if (blob == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    bocpy_blob_free(blob);
    Py_RETURN_TRUE;
}

static PyObject *core_runtime_info(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    unsigned workers;
    uint64_t live;
    bool running = bocpy_runtime_snapshot(&workers, &live);
    return Py_BuildValue("(OIK)", running ? Py_True : Py_False, workers, (unsigned long long)live);
}

static PyObject *core_running(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_running_behaviors(bocpy_state_of_module(module));
}

static PyObject *core_close_pool(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_close_pool(bocpy_state_of_module(module));
}

static PyObject *core_pool_size(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(bocpy_pool_size());
}

static PyObject *core_registry_size(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(bocpy_registry_size());
}

static PyObject *core_code_cache_size(PyObject *module, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(bocpy_state_of_module(module)->codemap_len);
}

static PyObject *core_forget_code(PyObject *module, PyObject *unused) {
    (void)unused;
    /* A reused worker interpreter re-runs the script's defs: the code
     * objects the cache holds for the old ones would otherwise pile up. */
    bocpy_registry_clear_state(bocpy_state_of_module(module));
    Py_RETURN_NONE;
}

static PyObject *core_pump(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_core.pump(deadline_ms, max_behaviors, raise_on_error)");
        return NULL;
    }
    int raise_on_error = PyObject_IsTrue(args[2]);
    if (raise_on_error < 0) {
        return NULL;
    }
    return bocpy_pump(bocpy_state_of_module(module), args[0], args[1], raise_on_error);
}

static PyObject *core_wake_fd(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return bocpy_wake_fd();
}

static PyObject *core_set_wake_callback(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                        PyObject *kwnames) {
    PARSE_ARGS("set_wake_callback", 1, "callback");
    return bocpy_set_wake_callback(bocpy_state_of_module(module), a[0]);
}

static PyObject *core_set_wait_pump_poll(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                         PyObject *kwnames) {
    (void)module;
    PARSE_ARGS("set_wait_pump_poll", 0, "ms");
    if (a[0] == NULL) {
        PyObject *dflt = PyLong_FromLong(BOCPY_DEFAULT_WAIT_POLL_MS);
        PyObject *rv = dflt ? bocpy_set_wait_pump_poll(dflt) : NULL;
        Py_XDECREF(dflt);
        return rv;
    }
    return bocpy_set_wait_pump_poll(a[0]);
}

static PyObject *core_set_pump_watchdog(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_core.set_pump_watchdog(warn_ms, on_starve)");
        return NULL;
    }
    return bocpy_set_pump_watchdog(bocpy_state_of_module(module), args[0], args[1]);
}

static PyObject *core_stop_watchdog(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return bocpy_stop_watchdog();
}

static PyObject *core_add_late_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_add_late_bind(name, value)");
        return NULL;
    }
    return bocpy_add_late_bind(bocpy_state_of_module(module), args[0], args[1]);
}

static PyObject *core_set_pump_result(PyObject *module, PyObject *cls) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_XSETREF(st->pump_result_type, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyObject *core_notice_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    PARSE_ARGS("notice_write", 2, "key", "value");
    return bocpy_notice_write(bocpy_state_of_module(module), a[0], a[1], false);
}

static PyObject *core_notice_seed(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_core.notice_seed(key, value)");
        return NULL;
    }
    if (!bocpy_is_program_thread(st) || bocpy_pumping()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "notice_seed() is for the main thread between runs; inside a behavior "
                        "use notice_write()");
        return NULL;
    }
    return bocpy_notice_write(st, args[0], args[1], true);
}

static PyObject *core_notice_delete(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames) {
    PARSE_ARGS("notice_delete", 1, "key");
    return bocpy_notice_delete(bocpy_state_of_module(module), a[0]);
}

static PyObject *core_notice_update(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames) {
    PARSE_ARGS("notice_update", 2, "key", "fn", "default");
    bocpy_state *st = bocpy_state_of_module(module);
    return bocpy_notice_update(st, a[0], a[1], a[2] ? a[2] : Py_None, st->removed);
}

static PyObject *core_notice_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    PARSE_ARGS("notice_read", 1, "key", "default");
    return bocpy_notice_read(bocpy_state_of_module(module), a[0], a[1] ? a[1] : Py_None);
}

static PyObject *core_noticeboard(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_noticeboard(bocpy_state_of_module(module), false);
}

static PyObject *core_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    PARSE_ARGS("send", 2, "tag", "contents");
    return bocpy_send(bocpy_state_of_module(module), a[0], a[1]);
}

static PyObject *core_receive(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    PARSE_ARGS("receive", 1, "tags", "timeout", "after");
    return bocpy_receive(bocpy_state_of_module(module), a[0], a[1] ? a[1] : Py_None,
                         a[2] ? a[2] : Py_None);
}

static PyObject *core_drain(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    (void)module;
    PARSE_ARGS("drain", 1, "tags");
    return bocpy_drain(a[0]);
}

static PyObject *core_set_tags(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    PARSE_ARGS("set_tags", 1, "tags");
    bocpy_state *st = bocpy_state_of_module(module);
    if (!bocpy_is_program_thread(st)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "set_tags() is for the main interpreter: it clears every message queue, "
                        "so call it before (or between) runs, not from inside a behavior");
        return NULL;
    }
    return bocpy_set_tags(a[0]);
}

PyDoc_STRVAR(when_doc,
             "when(*cowns)\n--\n\n"
             "Decorator: schedule the decorated function as a behavior.\n\n"
             "The behavior runs once it has exclusive access to every cown named; it gets one "
             "parameter per argument (a list of cowns is a group, delivered as a list).  Extra "
             "trailing parameters with defaults are captures, copied now.\n\n"
             ":param cowns: Cown objects, or lists of them.\n"
             ":returns: a decorator that schedules the function and returns its result Cown "
             "(which replaces the function's name).\n"
             ":raises TypeError: if an argument is not a Cown or a list of Cowns, or the "
             "function's parameters do not fit the cowns.");

PyDoc_STRVAR(whencall_doc, "whencall($module, func, args, captures=None, /)\n--\n\n"
                           "Schedule func on the cowns in args; the C half of bocpy.whencall().");

PyDoc_STRVAR(start_doc, "start($module, worker_count, header, values, /)\n--\n\n"
                        "Start the runtime; the C half of bocpy.start().");

PyDoc_STRVAR(wait_doc,
             "wait($module, timeout, stop, board=False, /)\n--\n\n"
             "Wait for quiescence (and with stop, end the run and clear the board); the C half "
             "of bocpy.wait() and bocpy.quiesce().  Returns (stats, board dict or None).");

PyDoc_STRVAR(pump_doc, "pump($module, deadline_ms, max_behaviors, raise_on_error, /)\n--\n\n"
                       "Run queued pinned behaviors; the C half of bocpy.pump().");

PyDoc_STRVAR(set_pump_watchdog_doc,
             "set_pump_watchdog($module, warn_ms, on_starve, /)\n--\n\n"
             "Arm or disarm the pump watchdog; the C half of bocpy.set_pump_watchdog().");

PyDoc_STRVAR(notice_seed_doc, "notice_seed($module, key, value, /)\n--\n\n"
                              "Write synchronously from the main thread; the C half of "
                              "bocpy.notice_seed().");

PyDoc_STRVAR(wake_fd_doc,
             "wake_fd($module, /)\n--\n\n"
             "The file descriptor that becomes readable when pinned work is queued.\n\n"
             "An event loop watches it (asyncio's add_reader, Tk's createfilehandler) and calls "
             "pump() when it fires; pump() clears it.\n\n"
             ":returns: the descriptor, an int (-1 outside the main interpreter).");

PyDoc_STRVAR(set_wake_callback_doc,
             "set_wake_callback($module, callback)\n--\n\n"
             "Call callback() (on the main thread) whenever pinned work is queued.\n\n"
             ":param callback: a callable taking no arguments, or None to remove it.\n"
             ":raises TypeError: if callback is neither callable nor None.\n"
             ":raises RuntimeError: outside the main interpreter.");

PyDoc_STRVAR(set_wait_pump_poll_doc,
             "set_wait_pump_poll($module, ms=50)\n--\n\n"
             "Set how often wait() and quiesce() look for pinned work when no wake-up "
             "arrives.\n\n"
             ":param ms: the longest sleep between looks, in milliseconds (default 50).\n"
             ":raises TypeError: if ms is not a positive int (bool, float, 0 and negatives "
             "included).");

PyDoc_STRVAR(notice_write_doc,
             "notice_write($module, key, value)\n--\n\n"
             "Set key on the noticeboard to value.\n\n"
             "Behaviors that started before the write keep their snapshot; later ones see it. "
             "The value is copied (pickled) now.\n\n"
             ":param key: a str without NUL characters.\n"
             ":param value: any picklable value; cowns in it stay alive with the entry.\n"
             ":raises TypeError: if key is not a str (\"noticeboard key must be a str\").\n"
             ":raises ValueError: if key contains \"\\0\".\n"
             ":raises RuntimeError: on the main interpreter while no runtime runs (use "
             "notice_seed() to seed the next run), or inside a notice_update() function.");

PyDoc_STRVAR(notice_delete_doc,
             "notice_delete($module, key)\n--\n\n"
             "Remove key from the noticeboard (nothing happens if it is absent).\n\n"
             ":param key: a str without NUL characters.\n"
             ":raises TypeError: if key is not a str.\n"
             ":raises ValueError: if key contains \"\\0\".\n"
             ":raises RuntimeError: on the main interpreter while no runtime runs, or inside a "
             "notice_update() function.");

PyDoc_STRVAR(notice_update_doc,
             "notice_update($module, key, fn, default=None)\n--\n\n"
             "Atomically replace key's value with fn(current value, or default).\n\n"
             "No other write to the board happens between reading the value and storing fn's "
             "result, so concurrent updates are never lost.  Returning bocpy.REMOVED deletes "
             "the key.  fn must not touch the noticeboard itself.  Whatever fn raises "
             "propagates, and the key keeps its value.\n\n"
             ":param key: a str without NUL characters.\n"
             ":param fn: a callable taking the current value and returning the new one.\n"
             ":param default: the value fn gets when key is absent (default None).\n"
             ":raises TypeError: if key is not a str, or fn is not callable.\n"
             ":raises ValueError: if key contains \"\\0\".\n"
             ":raises RuntimeError: on the main interpreter while no runtime runs, or when fn "
             "uses the noticeboard.");

PyDoc_STRVAR(notice_read_doc,
             "notice_read($module, key, default=None)\n--\n\n"
             "Read key from this behavior's noticeboard snapshot.\n\n"
             "Inside a behavior every read sees the board as it was at the behavior's first "
             "read; outside one, the board as it is now.\n\n"
             ":param key: a str without NUL characters.\n"
             ":param default: returned when key is absent (default None).\n"
             ":returns: the value (a fresh copy), or default.\n"
             ":raises TypeError: if key is not a str.\n"
             ":raises ValueError: if key contains \"\\0\".\n"
             ":raises RuntimeError: inside a notice_update() function.");

PyDoc_STRVAR(noticeboard_doc,
             "noticeboard($module, /)\n--\n\n"
             "A read-only view of the whole noticeboard.\n\n"
             ":returns: a collections.abc.Mapping of str keys, fixed at this behavior's snapshot "
             "(or, outside a behavior, at this moment).  Values are read lazily; to_dict() "
             "copies them all.\n"
             ":raises RuntimeError: inside a notice_update() function (so is reading a view "
             "there).");

PyDoc_STRVAR(send_doc, "send($module, tag, contents)\n--\n\n"
                       "Queue a message under tag, from any thread of any interpreter.\n\n"
                       ":param tag: a str.\n"
                       ":param contents: any picklable value (copied now).\n"
                       ":raises TypeError: if tag is not a str.");

PyDoc_STRVAR(receive_doc,
             "receive($module, tags, timeout=-1, after=None)\n--\n\n"
             "Wait for a message under one of tags and return it as [tag, contents].\n\n"
             "Messages of one tag arrive in the order they were sent; with several tags the "
             "first one (in the order given) that has a message wins.  Ctrl-C interrupts a "
             "blocked receive on the main thread.\n\n"
             ":param tags: a str, or a non-empty sequence of str.\n"
             ":param timeout: seconds to wait; negative or None waits as long as it takes.\n"
             ":param after: called (with no arguments) on time-out; its result is returned.\n"
             ":returns: [tag, contents]; on time-out after() if given, else (TIMEOUT, None).\n"
             ":raises TypeError: if tags is not a str or a sequence of str, timeout is not a "
             "number, or after is not callable.\n"
             ":raises RuntimeError: if tags is empty.");

PyDoc_STRVAR(drain_doc, "drain($module, tags)\n--\n\n"
                        "Discard the queued messages of tags; drain([]) does nothing.\n\n"
                        ":param tags: a str, or a sequence of str.\n"
                        ":raises TypeError: if tags is not a str or a sequence of str.");

PyDoc_STRVAR(set_tags_doc,
             "set_tags($module, tags)\n--\n\n"
             "Clear every message queue and make the channels for tags.\n\n"
             "There is no limit on tags, so assigning them in advance is never needed; "
             "set_tags([]) clears every queue and leaves tags to be made on first use.\n\n"
             ":param tags: a str, or a sequence of str (maybe empty).\n"
             ":raises TypeError: if tags is not a str or a sequence of str.\n"
             ":raises RuntimeError: outside the main interpreter.");

#define FAST(f) (PyCFunction)(void (*)(void))(f)
#define KW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef core_methods[] = {
    {"when", FAST(bocpy_when), METH_FASTCALL, when_doc},
    {"whencall", FAST(core_whencall), METH_FASTCALL, whencall_doc},
    {"start", FAST(core_start), METH_FASTCALL, start_doc},
    {"wait", FAST(core_wait), METH_FASTCALL, wait_doc},
    {"_cancel", core_cancel, METH_NOARGS, "_cancel($module, /)\n--\n\n"},
    {"pump", FAST(core_pump), METH_FASTCALL, pump_doc},
    {"wake_fd", core_wake_fd, METH_NOARGS, wake_fd_doc},
    {"set_wake_callback", FAST(core_set_wake_callback), KW, set_wake_callback_doc},
    {"set_wait_pump_poll", FAST(core_set_wait_pump_poll), KW, set_wait_pump_poll_doc},
    {"set_pump_watchdog", FAST(core_set_pump_watchdog), METH_FASTCALL, set_pump_watchdog_doc},
    {"_stop_watchdog", core_stop_watchdog, METH_NOARGS, "_stop_watchdog($module, /)\n--\n\n"},
    {"_set_pump_result", core_set_pump_result, METH_O, "_set_pump_result($module, cls, /)\n--\n\n"},
    {"notice_write", FAST(core_notice_write), KW, notice_write_doc},
    {"notice_seed", FAST(core_notice_seed), METH_FASTCALL, notice_seed_doc},
    {"notice_delete", FAST(core_notice_delete), KW, notice_delete_doc},
    {"notice_update", FAST(core_notice_update), KW, notice_update_doc},
    {"notice_read", FAST(core_notice_read), KW, notice_read_doc},
    {"noticeboard", core_noticeboard, METH_NOARGS, noticeboard_doc},
    {"send", FAST(core_send), KW, send_doc},
    {"receive", FAST(core_receive), KW, receive_doc},
    {"drain", FAST(core_drain), KW, drain_doc},
    {"set_tags", FAST(core_set_tags), KW, set_tags_doc},
    {"_add_late_bind", FAST(core_add_late_bind), METH_FASTCALL,
     "_add_late_bind($module, name, value, /)\n--\n\n"},
    {"_rebuild_cown", core_rebuild_cown, METH_O, "_rebuild_cown($module, index, /)\n--\n\n"},
    {"_rebuild_function", FAST(core_rebuild_function), METH_FASTCALL,
     "_rebuild_function($module, code_id, defaults, kwdefaults, cells, /)\n--\n\n"},
    {"_register_code", core_register_code, METH_O, "_register_code($module, func, /)\n--\n\n"},
    {"_bootstrap_header", core_bootstrap_header, METH_NOARGS,
     "_bootstrap_header($module, /)\n--\n\n"},
    {"_bootstrap_value", core_bootstrap_value, METH_O,
     "_bootstrap_value($module, index, /)\n--\n\n"},
    {"_set_starter", core_set_starter, METH_O, "_set_starter($module, func, /)\n--\n\n"},
    {"_is_main_interpreter", core_is_main_interpreter, METH_NOARGS,
     "_is_main_interpreter($module, /)\n--\n\n"},
    {"_is_transferable", core_is_transferable, METH_O, "_is_transferable($module, obj, /)\n--\n\n"},
    {"_report_unretrieved", bocpy_core_report_unretrieved, METH_O,
     "_report_unretrieved($module, live, /)\n--\n\n"},
    {"_log_forward", bocpy_log_forward, METH_O, "_log_forward($module, record, /)\n--\n\n"},
    {"_log_take", bocpy_log_take, METH_NOARGS, "_log_take($module, /)\n--\n\n"},
    {"_log_wait", bocpy_log_wait, METH_O, "_log_wait($module, timeout, /)\n--\n\n"},
    {"_log_wake", bocpy_log_wake, METH_NOARGS, "_log_wake($module, /)\n--\n\n"},
    {"_set_log_levels", bocpy_set_log_levels, METH_O,
     "_set_log_levels($module, levels, /)\n--\n\n"},
    {"_log_levels", bocpy_log_levels, METH_NOARGS, "_log_levels($module, /)\n--\n\n"},
    {"_runtime_info", core_runtime_info, METH_NOARGS, "_runtime_info($module, /)\n--\n\n"},
    {"_close_pool", core_close_pool, METH_NOARGS, "_close_pool($module, /)\n--\n\n"},
    {"_running", core_running, METH_NOARGS, "_running($module, /)\n--\n\n"},
    {"_pool_size", core_pool_size, METH_NOARGS, "_pool_size($module, /)\n--\n\n"},
    {"_registry_size", core_registry_size, METH_NOARGS, "_registry_size($module, /)\n--\n\n"},
    {"_forget_code", core_forget_code, METH_NOARGS, "_forget_code($module, /)\n--\n\n"},
    {"_code_cache_size", core_code_cache_size, METH_NOARGS, "_code_cache_size($module, /)\n--\n\n"},
    {"_set_backend", bocpy_set_backend, METH_O, "_set_backend($module, name, /)\n--\n\n"},
    {"_backend", bocpy_backend_name, METH_NOARGS, "_backend($module, /)\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

#undef FAST
#undef KW

/* ----------------------------------------------------------- lifecycle */

static int core_exec(PyObject *module) {
    bocpy_state *st = bocpy_state_of_module(module);
    st->module = module;
    PyInterpreterState *interp = PyInterpreterState_Get();
    st->interp = bocpy_interp_acquire_record(interp, interp == PyInterpreterState_Main());
    if (st->interp == NULL) {
        return -1;
    }
    st->interp->state = st;

    st->cown_type = (PyTypeObject *)bocpy_cown_type_spec_create(module);
    if (st->cown_type == NULL || PyModule_AddType(module, st->cown_type) < 0) {
        return -1;
    }
    st->pinned_type = (PyTypeObject *)bocpy_pinned_type_create(module, (PyObject *)st->cown_type);
    if (st->pinned_type == NULL || PyModule_AddType(module, st->pinned_type) < 0) {
        return -1;
    }
    if (st->interp->is_main && (bocpy_pinned_init_fds() < 0 || bocpy_fork_guard_install() < 0)) {
        return -1;
    }
    st->board_view_type = (PyTypeObject *)bocpy_board_view_type_create(module);
    st->removed = bocpy_removed_create(module);
    if (st->board_view_type == NULL || st->removed == NULL ||
        PyModule_AddType(module, st->board_view_type) < 0 ||
        PyModule_AddObjectRef(module, "REMOVED", st->removed) < 0 ||
        PyModule_AddStringConstant(module, "TIMEOUT", BOCPY_TIMEOUT_TAG) < 0) {
        return -1;
    }
    st->when_type = (PyTypeObject *)bocpy_when_type_create(module);
    if (st->when_type == NULL || bocpy_matrix_register(module, st) < 0) {
        return -1;
    }
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) {
        return -1;
    }
    st->dumps = PyObject_GetAttrString(pickle, "dumps");
    st->loads = PyObject_GetAttrString(pickle, "loads");
    st->protocol = PyObject_GetAttrString(pickle, "HIGHEST_PROTOCOL");
    Py_DECREF(pickle);
    PyObject *marshal = PyImport_ImportModule("marshal");
    if (marshal == NULL) {
        return -1;
    }
    st->marshal_dumps = PyObject_GetAttrString(marshal, "dumps");
    st->marshal_loads = PyObject_GetAttrString(marshal, "loads");
    Py_DECREF(marshal);
    st->rebuild_cown = PyObject_GetAttrString(module, "_rebuild_cown");
    if (st->dumps == NULL || st->loads == NULL || st->protocol == NULL ||
        st->marshal_dumps == NULL || st->marshal_loads == NULL || st->rebuild_cown == NULL) {
        return -1;
    }
    if (bocpy_move_module_init(module, st) < 0) {
        return -1;
    }
    /* Matrix moves through the public hook, as a downstream type does. */
    return bocpy_matrix_register_move(module, st);
}

static int core_traverse(PyObject *module, visitproc visit, void *arg) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_VISIT(st->cown_type);
    Py_VISIT(st->pinned_type);
    Py_VISIT(st->board_view_type);
    Py_VISIT(st->removed);
    Py_VISIT(st->pump_result_type);
    Py_VISIT(st->when_type);
    Py_VISIT(st->matrix_type);
    Py_VISIT(st->matrix_rebuild);
    Py_VISIT(st->starter);
    Py_VISIT(st->main_dict);
    Py_VISIT(st->fallback_dumps);
    Py_VISIT(st->dumps);
    Py_VISIT(st->loads);
    Py_VISIT(st->protocol);
    Py_VISIT(st->marshal_dumps);
    Py_VISIT(st->marshal_loads);
    Py_VISIT(st->rebuild_cown);
    return bocpy_move_traverse(st, visit, arg);
}

static int core_clear(PyObject *module) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_CLEAR(st->cown_type);
    Py_CLEAR(st->pinned_type);
    Py_CLEAR(st->board_view_type);
    Py_CLEAR(st->removed);
    Py_CLEAR(st->pump_result_type);
    Py_CLEAR(st->when_type);
    Py_CLEAR(st->matrix_type);
    Py_CLEAR(st->matrix_rebuild);
    Py_CLEAR(st->dumps);
    Py_CLEAR(st->loads);
    Py_CLEAR(st->protocol);
    Py_CLEAR(st->marshal_dumps);
    Py_CLEAR(st->marshal_loads);
    Py_CLEAR(st->fallback_dumps);
    Py_CLEAR(st->rebuild_cown);
    Py_CLEAR(st->starter);
    Py_CLEAR(st->main_dict);
    bocpy_move_clear(st);
    bocpy_registry_clear_state(st);
    return 0;
}

static void core_free(void *module) {
    bocpy_state *st = bocpy_state_of_module(module);
    core_clear(module);
    if (st->interp != NULL) {
        bocpy_interp_release_record(st->interp);
        st->interp = NULL;
    }
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#if PY_VERSION_HEX >= 0x030D0000
    /* Free-threaded builds (3.13t+): importing us must not turn the GIL back
     * on.  Every process-wide structure of the binding has its own lock
     * already (sub-interpreters never shared a GIL), and the per-interpreter
     * ones that the main interpreter's GIL used to serialise are guarded by
     * bocpy_ft_lock (compat.h, docs/backends.md lists them).  GIL builds
     * ignore this slot. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef bocpy_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bocpy._core",
    .m_doc = "The C core of bocpy: cowns, behaviors and worker sub-interpreters.",
    .m_size = sizeof(bocpy_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

/* The import system finds the entry point by name; declared first, as every
 * non-static function of the binding is (-Wmissing-prototypes). */
PyMODINIT_FUNC PyInit__core(void);

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&bocpy_module_def); }
