/*
 * threads_backend.c: the worker backends, and the "threads" backend.
 *
 * The seam.  libboc runs behaviors on its own worker threads and calls the
 * binding through a boc_runtime_ops table (start, run, idle, busy, stop).
 * A backend is one such table plus what it needs from the runtime's
 * starter; the runtime is made with the backend selected when it starts
 * (bocpy_backend_runtime_new), and every other part of the binding --
 * cowns, @when, 2PL, parking, pinned cowns, the noticeboard -- is shared.
 *
 *   interpreters  (worker.c) every worker thread runs in a sub-interpreter
 *                 of its own; values cross by pickling, code by the
 *                 registry and the script image.  The default.
 *   threads       (below) every worker thread is a plain thread of the
 *                 main interpreter: a behavior's body is the main
 *                 interpreter's code, called with its cowns' live objects.
 *                 Nothing is copied for a cown's value, before or after
 *                 the body; the body's result is stored as it is.  On a
 *                 free-threaded build (Py_GIL_DISABLED) the bodies run in
 *                 parallel; on a GIL build they take turns (it works, and
 *                 the suite can test it there, but it gains nothing).
 *
 * Exclusivity on the threads backend is libboc's, as on the other: a body
 * runs only while it holds all its cowns, and the MCS hand-off (acquire/
 * release on the queue links) orders one holder's writes to a value before
 * the next holder's reads.  What the backend cannot stop is one object
 * reachable from two cowns' values: that is shared memory here (on the
 * interpreters backend each cown gets its own copy).  docs/backends.md.
 *
 * What still goes through pickling on this backend: the captures of a
 * behavior (extra arguments, defaults, closure cells), which @when
 * serialises before it knows the backend (when.c); see docs/backends.md.
 */
#include "bocpy.h"

#include <string.h>

/* ------------------------------------------------------------ selection */

typedef struct bocpy_backend {
    const char *name;
    const boc_runtime_ops *ops;
} bocpy_backend;

static const boc_runtime_ops threads_ops;

static const bocpy_backend backends[] = {
    {"interpreters", &bocpy_runtime_ops},
    {"threads", &threads_ops},
};
#define NBACKENDS (sizeof(backends) / sizeof(backends[0]))

/* The backend the next runtime is made with, and the one the running (or
 * last) runtime was made with.  Written by the main interpreter's threads:
 * `selected` by _set_backend, `active` by the starter (which the lifecycle
 * lock makes the only one).  Readers on any thread need no other data
 * through them, so relaxed is enough. */
static _Atomic(const bocpy_backend *) selected = &backends[0];
static _Atomic(const bocpy_backend *) active = &backends[0];

/* The main interpreter's module state, for the threads backend's workers
 * (which start with no thread state, so cannot look it up).  Set by the
 * starter before boc_runtime_start creates them (thread creation orders
 * the write before their reads); the main interpreter's state lives until
 * the process ends. */
static bocpy_state *threads_main_state;

boc_runtime *bocpy_backend_runtime_new(bocpy_state *st, unsigned count) {
    const bocpy_backend *b = atomic_load_explicit(&selected, memory_order_relaxed);
    atomic_store_explicit(&active, b, memory_order_relaxed);
    if (b->ops == &threads_ops) {
        threads_main_state = st;
    }
    return boc_runtime_new(count, b->ops, NULL);
}

bool bocpy_backend_shares_values(void) {
    return atomic_load_explicit(&selected, memory_order_relaxed)->ops == &threads_ops;
}

PyObject *bocpy_set_backend(PyObject *module, PyObject *name) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (!st->interp->is_main) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the worker backend can only be chosen from the main interpreter");
        return NULL;
    }
    const char *text;
    size_t len;
    if (bocpy_str_arg(name, "backend", &text, &len) < 0) {
        return NULL;
    }
    const bocpy_backend *b = NULL;
    for (size_t i = 0; i < NBACKENDS; i++) {
        if (strlen(backends[i].name) == len && memcmp(backends[i].name, text, len) == 0) {
            b = &backends[i];
        }
    }
    if (b == NULL) {
        PyErr_Format(PyExc_ValueError,
                     "unknown bocpy backend %R: use 'interpreters' (a sub-interpreter per "
                     "worker) or 'threads' (workers are threads of the main interpreter)",
                     name);
        return NULL;
    }
    unsigned workers;
    uint64_t live;
    const bocpy_backend *running = atomic_load_explicit(&active, memory_order_relaxed);
    if (bocpy_runtime_snapshot(&workers, &live) && running != b) {
        PyErr_Format(PyExc_RuntimeError,
                     "bocpy is already running with the '%s' backend; call bocpy.wait() "
                     "before starting it with '%s'",
                     running->name, b->name);
        return NULL;
    }
    atomic_store_explicit(&selected, b, memory_order_relaxed);
    Py_RETURN_NONE;
}

PyObject *bocpy_backend_name(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    unsigned workers;
    uint64_t live;
    const bocpy_backend *b = bocpy_runtime_snapshot(&workers, &live)
                                 ? atomic_load_explicit(&active, memory_order_relaxed)
                                 : atomic_load_explicit(&selected, memory_order_relaxed);
    return PyUnicode_FromString(b->name);
}

/* ------------------------------------------------ the threads backend */

typedef struct threads_worker {
    PyThreadState *tstate; /* this thread in the main interpreter */
    bool attached;
    bocpy_state *state; /* the main interpreter's */
} threads_worker;

static void attach(threads_worker *w) {
    if (!w->attached) {
        PyEval_RestoreThread(w->tstate);
        w->attached = true;
    }
}

/* Detached while idle: on a free-threaded build an attached thread that
 * parks would hold up every stop-the-world pause (garbage collection), on
 * a GIL build it would hold the GIL. */
static void detach(threads_worker *w) {
    if (w->attached) {
        bocpy_garbage_drain(w->state->interp);
        PyEval_SaveThread();
        w->attached = false;
    }
}

static void *threads_worker_start(void *user, unsigned index, bool *failed) {
    (void)user;
    (void)index;
    threads_worker *w = calloc(1, sizeof(*w));
    bocpy_state *st = threads_main_state;
    /* PyThreadState_New needs no attached thread state; the main
     * interpreter outlives every runtime. */
    PyThreadState *ts = w != NULL ? PyThreadState_New(st->interp->interp) : NULL;
    if (ts == NULL) {
        free(w);
        *failed = true;
        return NULL;
    }
    w->tstate = ts;
    w->state = st;
    return w;
}

static void threads_worker_busy(void *user, void *arg) {
    (void)user;
    attach(arg);
}

static void threads_worker_idle(void *user, void *arg) {
    (void)user;
    detach(arg);
}

static PyObject *behavior_exception(void) {
    /* The traceback stays on the exception (nothing crosses here); the
     * note gives unwrap() and the result's repr the same text as on the
     * interpreters backend. */
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *tb = PyException_GetTraceback(exc);
    if (tb == NULL) {
        return exc;
    }
    PyObject *traceback = PyImport_ImportModule("traceback");
    PyObject *lines = traceback ? PyObject_CallMethod(traceback, "format_tb", "O", tb) : NULL;
    PyObject *empty = lines ? PyUnicode_FromString("") : NULL;
    PyObject *text = empty ? PyUnicode_Join(empty, lines) : NULL;
    PyObject *note =
        text ? PyUnicode_FromFormat("Behavior traceback (most recent call last):\n%U", text) : NULL;
    PyObject *rv = note ? PyObject_CallMethod(exc, "add_note", "O", note) : NULL;
    if (rv == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(rv);
    Py_XDECREF(note);
    Py_XDECREF(text);
    Py_XDECREF(empty);
    Py_XDECREF(lines);
    Py_XDECREF(traceback);
    Py_DECREF(tb);
    return exc;
}

/* One argument of the body: a Cown, or a list of Cowns for a group. */
static PyObject *argument(bocpy_state *st, bocpy_payload *p, uint32_t i, uint32_t *slot) {
    const int32_t *groups = bocpy_payload_groups(p);
    if (groups[i] < 0) {
        return bocpy_cown_wrap(st, p->cowns[(*slot)++]);
    }
    PyObject *list = PyList_New(groups[i]);
    for (int32_t j = 0; list != NULL && j < groups[i]; j++) {
        PyObject *item = bocpy_cown_wrap(st, p->cowns[(*slot)++]);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, j, item);
    }
    return list;
}

/* Calls the body with its cowns held by this thread; a new reference to
 * its result, or NULL with the exception set. */
static PyObject *call_body(bocpy_state *st, bocpy_payload *p) {
    PyObject *snapshot = NULL, *extra = NULL;
    PyObject *defaults = Py_None, *kwdefaults = Py_None, *cells = Py_None;
    if (p->captures != NULL && p->defaults_only) {
        /* @when sent the defaults tuple alone (when.c). */
        snapshot = bocpy_deserialise(st, p->captures);
        if (snapshot == NULL) {
            return NULL;
        }
        defaults = snapshot;
    } else if (p->captures != NULL) {
        snapshot = bocpy_deserialise(st, p->captures);
        if (snapshot == NULL) {
            return NULL;
        }
        extra = PyTuple_GET_ITEM(snapshot, 0);
        defaults = PyTuple_GET_ITEM(snapshot, 1);
        kwdefaults = PyTuple_GET_ITEM(snapshot, 2);
        cells = PyTuple_GET_ITEM(snapshot, 3);
    }
    PyObject *func = bocpy_build_function(st, p->code_id, defaults, kwdefaults, cells);
    Py_ssize_t nextra = extra != NULL && extra != Py_None ? PyTuple_GET_SIZE(extra) : 0;
    PyObject *args = func ? PyTuple_New((Py_ssize_t)p->nargs + nextra) : NULL;
    uint32_t slot = 0;
    for (uint32_t i = 0; args != NULL && i < p->nargs; i++) {
        PyObject *arg = argument(st, p, i, &slot);
        if (arg == NULL) {
            Py_CLEAR(args);
            break;
        }
        PyTuple_SET_ITEM(args, i, arg);
    }
    for (Py_ssize_t i = 0; args != NULL && i < nextra; i++) {
        PyTuple_SET_ITEM(args, p->nargs + i, Py_NewRef(PyTuple_GET_ITEM(extra, i)));
    }
    PyObject *result = args ? PyObject_Call(func, args, NULL) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(func);
    Py_XDECREF(snapshot);
    return result;
}

static void threads_run_behavior(bocpy_state *st, boc_behavior *b, bool cancelled) {
    bocpy_payload *p = boc_behavior_payload(b);
    bocpy_interp *here = st->interp;
    uintptr_t token = bocpy_thread_token();
    PyObject *result = NULL;
    uint32_t held = 0;
    bocpy_noticeboard_behavior_begin();
    if (cancelled) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this behavior did not run: bocpy shut down before it could start "
                        "(the program was interrupted or exited with an error)");
        goto done;
    }
    /* A value already lives here (the main interpreter) unless it only has
     * a serialised copy (made by the other backend, or by Cown(x)'s check):
     * then it is rebuilt here once, and stays live from then on. */
    for (; held < p->ncowns; held++) {
        bocpy_cown *c = p->cowns[held];
        if (bocpy_cown_materialize(c, here) < 0) {
            goto done;
        }
        c->settled = false;
        /* relaxed: only this thread compares the token with its own. */
        atomic_store_explicit(&c->holder, token, memory_order_relaxed);
    }
    result = call_body(st, p);
done:;
    bool is_exception = result == NULL;
    if (is_exception) {
        result = behavior_exception();
    }
    for (uint32_t i = 0; i < held; i++) {
        bocpy_cown *c = p->cowns[i];
        if (!c->settled) { /* a cown listed twice is settled once */
            c->settled = true;
            bocpy_cown_settle_shared(c);
        }
        atomic_store_explicit(&c->holder, 0, memory_order_relaxed);
    }
    bocpy_cown_store(p->result, here, result, is_exception);
    Py_DECREF(result);
    bocpy_noticeboard_behavior_end();
}

static void threads_worker_run(void *user, boc_behavior *b, void *arg) {
    (void)user;
    threads_worker *w = arg;
    attach(w);
    bool cancelled = atomic_load_explicit(&bocpy_cancelling, memory_order_relaxed);
    threads_run_behavior(w->state, b, cancelled);
}

static void threads_worker_stop(void *user, unsigned index, void *arg) {
    (void)user;
    (void)index;
    threads_worker *w = arg;
    attach(w);
    bocpy_garbage_drain(w->state->interp);
    PyThreadState_Clear(w->tstate);
    PyThreadState_DeleteCurrent();
    bocpy_noticeboard_thread_exit();
    free(w);
}

static void threads_behavior_done(void *user, boc_behavior *b) {
    (void)user;
    bocpy_payload *p = boc_behavior_payload(b);
    bocpy_blob_free(p->captures);
    p->captures = NULL;
}

static const boc_runtime_ops threads_ops = {
    .worker_start = threads_worker_start,
    .worker_stop = threads_worker_stop,
    .run = threads_worker_run,
    .worker_idle = threads_worker_idle,
    .worker_busy = threads_worker_busy,
    .behavior_done = threads_behavior_done,
    .pinned_ready = bocpy_pinned_ready_hook,
    .quiescent = bocpy_quiescent_hook,
};
