/*
 * worker.c: worker sub-interpreters, and running one behavior.
 *
 * Each libboc worker thread runs in its own sub-interpreter with its own
 * GIL (PEP 684).  worker_start takes one from the pool that earlier
 * runtimes left (pool.c), or creates one; worker_stop puts it back, without
 * a thread state, for the next runtime.  The thread keeps its interpreter's GIL while it has local
 * work, and lets go of it when it goes idle (to steal or park) and between
 * behaviors when another thread is waiting to enter (see interp.c), so that
 * its objects can be reached without waiting for a switch interval.
 *
 * Running a behavior: make every requested cown's value live here, build
 * the function from the registry with its captured defaults and closure,
 * call it with one Cown (or list of Cowns) per @when argument, and store
 * the return value -- or the exception, with the behavior's traceback as a
 * note -- on the result cown.  Nothing a body does can end the worker.
 */
#include "bocpy.h"

#include <sched.h>
#include <string.h>
#include <time.h>

/* A worker thread's view of itself. */
typedef struct worker_context {
    unsigned index;
    PyThreadState *main_tstate;   /* this thread in the main interpreter, if it
                                   * created its interpreter; else NULL */
    PyThreadState *worker_tstate; /* this thread in its own interpreter */
    bool has_gil;
    bocpy_interp *record;
    bocpy_state *state;
    size_t late_binds_seen;
    uint64_t log_levels_seen;
} worker_context;

/* Worker threads between the start of worker_start and the end of
 * worker_stop (or of a failed start): while any exists, the pool must not
 * be ended (bocpy_close_pool) and a fork would kill the child.  relaxed:
 * readers hold the main GIL and only need an eventually exact count; the
 * pool's own lock orders the interpreters themselves. */
static atomic_uint workers_alive;

unsigned bocpy_workers_alive(void) {
    return atomic_load_explicit(&workers_alive, memory_order_relaxed);
}

/* ------------------------------------------- records logged in workers
 *
 * A behavior's logging records belong to the main interpreter's logging
 * configuration.  Workers push each record, pickled by bocpy._logging, on
 * one process-wide FIFO; the main interpreter takes them off (a drain
 * thread, and wait() before it returns) and hands them to its loggers.  One
 * FIFO keeps each worker's records in the order it logged them.  In the
 * other direction, the main interpreter publishes the levels its loggers
 * use, so that workers drop exactly the records it would reject. */

typedef struct log_entry {
    struct log_entry *next;
    size_t len;
    char data[];
} log_entry;

/* log_lock guards the queue, log_woken and the published levels. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t log_ready = PTHREAD_COND_INITIALIZER;
static log_entry *log_head, *log_tail;
static bool log_woken;
static char *log_levels;
static size_t log_levels_len;
/* Bumped (under log_lock) each time the levels change.  A worker reads it
 * before each behavior: release/acquire make the new levels, stored before
 * the bump, visible to a worker that sees the new number. */
static _Atomic uint64_t log_levels_version;

static int bytes_view(PyObject *arg, const char *what, char **data, Py_ssize_t *len) {
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s takes bytes, not '%.200s'", what, Py_TYPE(arg)->tp_name);
        return -1;
    }
    return PyBytes_AsStringAndSize(arg, data, len);
}

PyObject *bocpy_log_forward(PyObject *module, PyObject *arg) {
    (void)module;
    char *data;
    Py_ssize_t len;
    if (bytes_view(arg, "_log_forward()", &data, &len) < 0) {
        return NULL;
    }
    log_entry *entry = malloc(sizeof(*entry) + (size_t)len);
    if (entry == NULL) {
        return PyErr_NoMemory();
    }
    entry->next = NULL;
    entry->len = (size_t)len;
    memcpy(entry->data, data, (size_t)len);
    pthread_mutex_lock(&log_lock);
    if (log_tail != NULL) {
        log_tail->next = entry;
    } else {
        log_head = entry;
    }
    log_tail = entry;
    pthread_cond_broadcast(&log_ready);
    pthread_mutex_unlock(&log_lock);
    Py_RETURN_NONE;
}

PyObject *bocpy_log_take(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    pthread_mutex_lock(&log_lock);
    log_entry *taken = log_head;
    log_head = log_tail = NULL;
    pthread_mutex_unlock(&log_lock);

    PyObject *records = PyList_New(0);
    while (taken != NULL) {
        log_entry *next = taken->next;
        if (records != NULL) {
            PyObject *item = PyBytes_FromStringAndSize(taken->data, (Py_ssize_t)taken->len);
            if (item == NULL || PyList_Append(records, item) < 0) {
                Py_CLEAR(records); /* the rest are freed below, unread */
            }
            Py_XDECREF(item);
        }
        free(taken);
        taken = next;
    }
    return records;
}

PyObject *bocpy_log_wait(PyObject *module, PyObject *arg) {
    (void)module;
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(timeout >= 0.0 && timeout <= 3600.0)) {
        PyErr_Format(PyExc_ValueError, "_log_wait() takes 0 to 3600 seconds, not %R", arg);
        return NULL;
    }
    bool ready;
    Py_BEGIN_ALLOW_THREADS
        ;
        pthread_mutex_lock(&log_lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)timeout;
        until.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000L;
        }
        while (log_head == NULL && !log_woken) {
            if (pthread_cond_timedwait(&log_ready, &log_lock, &until) != 0) {
                break;
            }
        }
        ready = log_head != NULL;
        log_woken = false;
        pthread_mutex_unlock(&log_lock);
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(ready);
}

PyObject *bocpy_log_wake(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    pthread_mutex_lock(&log_lock);
    log_woken = true;
    pthread_cond_broadcast(&log_ready);
    pthread_mutex_unlock(&log_lock);
    Py_RETURN_NONE;
}

PyObject *bocpy_set_log_levels(PyObject *module, PyObject *arg) {
    (void)module;
    char *data;
    Py_ssize_t len;
    if (bytes_view(arg, "_set_log_levels()", &data, &len) < 0) {
        return NULL;
    }
    char *copy = malloc((size_t)len + 1);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    memcpy(copy, data, (size_t)len);
    pthread_mutex_lock(&log_lock);
    free(log_levels);
    log_levels = copy;
    log_levels_len = (size_t)len;
    /* release: see the declaration (the levels are stored before it). */
    atomic_fetch_add_explicit(&log_levels_version, 1, memory_order_release);
    pthread_mutex_unlock(&log_lock);
    Py_RETURN_NONE;
}

PyObject *bocpy_log_levels(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    pthread_mutex_lock(&log_lock);
    PyObject *rv = log_levels ? PyBytes_FromStringAndSize(log_levels, (Py_ssize_t)log_levels_len)
                              : Py_NewRef(Py_None);
    pthread_mutex_unlock(&log_lock);
    return rv;
}

/* Worker thread, holding its GIL: adopt levels published since it last
 * looked.  A failure is reported and the worker carries on with the levels
 * it had. */
static void sync_log_levels(worker_context *ctx) {
    uint64_t version = atomic_load_explicit(&log_levels_version, memory_order_acquire);
    if (version == ctx->log_levels_seen) {
        return;
    }
    ctx->log_levels_seen = version;
    PyObject *boot = PyImport_ImportModule(BOCPY_BOOTSTRAP_MODULE);
    PyObject *rv = boot ? PyObject_CallMethod(boot, "sync_logging", NULL) : NULL;
    if (rv == NULL) {
        PyErr_WriteUnraisable(boot);
    }
    Py_XDECREF(rv);
    Py_XDECREF(boot);
}

/* ------------------------------------------------------ one behavior */

/* A NameError for a global of the script that could not be sent to this
 * worker gets a message that names it and says why (bocpy._bootstrap). */
static void explain_name_error(PyObject *exc) {
    if (!PyErr_GivenExceptionMatches(exc, PyExc_NameError)) {
        return;
    }
    PyObject *worker = PyImport_ImportModule(BOCPY_BOOTSTRAP_MODULE);
    PyObject *rv = worker ? PyObject_CallMethod(worker, "explain_name_error", "O", exc) : NULL;
    if (rv == NULL) {
        PyErr_Clear(); /* the original message stays */
    }
    Py_XDECREF(rv);
    Py_XDECREF(worker);
}

static PyObject *capture_exception(void) {
    PyObject *exc = PyErr_GetRaisedException();
    explain_name_error(exc);
    /* The traceback object cannot cross interpreters; its text can, as a
     * note that unwrap() and the result's repr show. */
    return bocpy_note_behavior_traceback(exc);
}

PyObject *bocpy_note_behavior_traceback(PyObject *exc) {
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

/* Sets `*blob` to a serialised copy of the result, or -- when the result
 * cannot leave this interpreter -- replaces it by an exception that says so
 * (an unpicklable exception keeps its type name and text). */
static void seal_result(bocpy_state *st, PyObject **value, bool *is_exception, bocpy_blob **blob) {
    if (*value == Py_None) {
        return;
    }
    /* Even a plain result gets its copy now: whoever reads it next (often
     * another worker, or the main thread) then need not enter this one. */
    *blob = bocpy_serialise(st, *value);
    if (*blob != NULL) {
        return;
    }
    PyObject *replacement = PyErr_GetRaisedException();
    if (*is_exception) {
        Py_DECREF(replacement);
        PyObject *text = PyObject_Str(*value);
        PyErr_Clear();
        PyErr_Format(PyExc_RuntimeError,
                     "%.200s: %S (the original exception could not be sent between "
                     "interpreters)",
                     Py_TYPE(*value)->tp_name, text ? text : Py_None);
        Py_XDECREF(text);
        replacement = PyErr_GetRaisedException();
    }
    Py_SETREF(*value, replacement);
    *is_exception = true;
    *blob = bocpy_serialise(st, *value);
    PyErr_Clear();
}

static PyObject *dropped_error(void) {
    PyErr_SetString(PyExc_RuntimeError, BOCPY_DID_NOT_RUN);
    return PyErr_GetRaisedException();
}

#define SMALL 8

int bocpy_captures_open(bocpy_state *st, bocpy_payload *p, bocpy_captures *out) {
    *out = (bocpy_captures){
        .defaults = Py_None, .kwdefaults = Py_None, .cells = Py_None, .bare_cells = false};
    if (p->live) { /* threads backend: the objects themselves (when.c) */
        out->snapshot = Py_XNewRef(p->live_captures);
    } else if (p->captures != NULL) {
        out->snapshot = bocpy_deserialise(st, p->captures);
        if (out->snapshot == NULL) {
            return -1;
        }
    }
    PyObject *snap = out->snapshot;
    if (snap != NULL && p->defaults_only) {
        out->defaults = snap; /* @when sent the defaults tuple alone (when.c) */
    } else if (snap != NULL && p->closure_only) {
        out->cells = snap; /* @when sent the cells' contents alone (when.c) */
        out->bare_cells = true;
    } else if (snap != NULL) {
        PyObject *extra = PyTuple_GET_ITEM(snap, 0);
        out->extra = extra == Py_None ? NULL : extra;
        out->defaults = PyTuple_GET_ITEM(snap, 1);
        out->kwdefaults = PyTuple_GET_ITEM(snap, 2);
        out->cells = PyTuple_GET_ITEM(snap, 3);
    }
    return 0;
}

void bocpy_run_behavior(bocpy_state *st, bocpy_interp *here, boc_behavior *b, bool cancelled,
                        bocpy_outcome *out, bocpy_interp **elsewhere) {
    bocpy_payload *p = boc_behavior_payload(b);
    uintptr_t token = bocpy_thread_token();
    PyObject *result = NULL;
    bool is_exception = false;
    PyObject *before_small[SMALL], *argv_small[SMALL];
    PyObject **before = before_small, **argv = argv_small;
    PyObject *snapshot = NULL, *func = NULL;
    uint32_t held = 0;
    Py_ssize_t built = 0;
    bocpy_blob *blob = NULL;
    bool sealed = false, moved = false;

    if (elsewhere != NULL) {
        *elsewhere = NULL;
    }
    bocpy_noticeboard_behavior_begin();
    if (cancelled) {
        result = dropped_error();
        is_exception = true;
        goto store;
    }
    if (p->ncowns > SMALL) {
        before = PyMem_Calloc(p->ncowns, sizeof(*before));
        if (before == NULL) {
            before = before_small;
            PyErr_NoMemory();
            goto failed;
        }
    }
    for (; held < p->ncowns; held++) {
        bocpy_cown *c = p->cowns[held];
        int rc = bocpy_cown_materialize(c, here);
        if (rc == BOCPY_VALUE_STUCK && elsewhere != NULL) {
            /* The value cannot leave the interpreter that holds it: the
             * caller runs the behavior there.  Undo the holds taken so far
             * (the values made live here just stay here, until needed). */
            PyErr_Clear();
            /* relaxed: we hold the cown, and only a holder moves its value
             * (libboc's hand-off ordered the last move before our hold). */
            *elsewhere = atomic_load_explicit(&c->home, memory_order_relaxed);
            for (uint32_t i = 0; i < held; i++) {
                atomic_store_explicit(&p->cowns[i]->holder, 0, memory_order_relaxed);
                Py_XDECREF(before[i]);
            }
            if (before != before_small) {
                PyMem_Free(before);
            }
            bocpy_noticeboard_behavior_end();
            return;
        }
        if (rc < 0) {
            goto failed;
        }
        before[held] = Py_XNewRef(c->obj);
        c->settled = false;
        atomic_store_explicit(&c->holder, token, memory_order_relaxed); /* see bocpy_cown.holder */
    }

    /* A closure over compact values, when the last behavior of this code
     * left its function unshared (bocpy_function_done): the contents are
     * decoded straight into its cells, with no snapshot tuple made and no
     * function built. */
    if (p->closure_only && !p->live && p->captures != NULL) {
        func = bocpy_take_spare_closure(st, p->code_id);
        int rc = func ? bocpy_deserialise_cells(st, p->captures, PyFunction_GET_CLOSURE(func)) : 0;
        if (rc < 0) {
            Py_CLEAR(func);
            goto failed;
        }
        if (rc == 0 && func != NULL) {
            bocpy_return_spare_closure(st, p->code_id, func);
            func = NULL;
        }
    }
    bocpy_captures cap = {
        .defaults = Py_None, .kwdefaults = Py_None, .cells = Py_None, .bare_cells = false};
    if (func == NULL && bocpy_captures_open(st, p, &cap) < 0) {
        goto failed;
    }
    snapshot = cap.snapshot;
    PyObject *extra = cap.extra, *defaults = cap.defaults, *kwdefaults = cap.kwdefaults,
             *cells = cap.cells;
    Py_ssize_t nextra = extra ? PyTuple_GET_SIZE(extra) : 0;
    Py_ssize_t given = (Py_ssize_t)p->nargs + nextra;
    /* Defaults only (the common capture: `def step(c, n=n)`): rather than
     * build a function with them, call the registry's own function with
     * the defaults the call would use passed as positional arguments --
     * the parameters are bound to the same objects, and the function
     * object and its defaults tuple are not made for each behavior. */
    Py_ssize_t filled = 0, first_default = 0;
    if (func == NULL && defaults != Py_None && kwdefaults == Py_None && cells == Py_None &&
        PyTuple_CheckExact(defaults)) {
        func = Py_XNewRef(bocpy_registry_function(st, p->code_id));
        if (func == NULL) {
            goto failed;
        }
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(func);
        Py_ssize_t argcount = code->co_argcount;
        first_default = argcount - PyTuple_GET_SIZE(defaults);
        if (PyCode_GetNumFree(code) == 0 && first_default >= 0 && given >= first_default &&
            given <= argcount) {
            filled = argcount - given;
            first_default = given - first_default; /* index in defaults of the first filled */
        } else {
            Py_CLEAR(func); /* anything unusual: the general way below */
        }
    }
    if (func == NULL) {
        func = bocpy_build_function(st, p->code_id, defaults, kwdefaults, cells, cap.bare_cells);
        if (func == NULL) {
            goto failed;
        }
    }
    Py_ssize_t total = given + filled;
    if (total > SMALL) {
        argv = PyMem_Calloc((size_t)total, sizeof(*argv));
        if (argv == NULL) {
            argv = argv_small;
            PyErr_NoMemory();
            goto failed;
        }
    }
    uint32_t slot = 0;
    const int32_t *groups = bocpy_payload_groups(p);
    for (uint32_t i = 0; i < p->nargs; i++, built++) {
        PyObject *arg;
        if (groups[i] < 0) {
            arg = bocpy_cown_wrap(st, p->cowns[slot++]);
        } else {
            arg = PyList_New(groups[i]);
            for (int32_t j = 0; arg != NULL && j < groups[i]; j++) {
                PyObject *item = bocpy_cown_wrap(st, p->cowns[slot++]);
                if (item == NULL) {
                    Py_CLEAR(arg);
                    break;
                }
                PyList_SET_ITEM(arg, j, item);
            }
        }
        if (arg == NULL) {
            goto failed;
        }
        argv[built] = arg;
    }
    for (Py_ssize_t i = 0; i < nextra; i++, built++) {
        argv[built] = Py_NewRef(PyTuple_GET_ITEM(extra, i));
    }
    for (Py_ssize_t i = 0; i < filled; i++, built++) {
        argv[built] = Py_NewRef(PyTuple_GET_ITEM(defaults, first_default + i));
    }
    /* relaxed: hints for cancel() (bocpy_interp.in_body). */
    atomic_store_explicit(&here->running_code, p->code_id, memory_order_relaxed);
    atomic_store_explicit(&here->in_body, true, memory_order_relaxed);
    result = PyObject_Vectorcall(func, argv, (size_t)total, NULL);
    atomic_store_explicit(&here->in_body, false, memory_order_relaxed);
    if (result != NULL) {
        goto settle;
    }
    if (out != NULL) {
        /* On the main thread, the pump reports body exceptions, and lets
         * KeyboardInterrupt, SystemExit and GeneratorExit propagate. */
        out->body_raised = true;
        result = capture_exception();
        is_exception = true;
        out->first_error = Py_NewRef(result);
        if (!PyObject_TypeCheck(result, (PyTypeObject *)PyExc_Exception)) {
            out->propagate = Py_NewRef(result);
        }
        goto settle;
    }
failed:
    result = capture_exception();
    is_exception = true;
settle:
    /* The result is sealed (copied) BEFORE the cowns settle: settling may
     * move a cown's buffers away (<bocpy/move.h>), and `return c.value`
     * with a movable value would otherwise send an object already stale.
     * So the result is a copy of the value as the body returned it, and the
     * cown keeps (and moves) the original. */
    seal_result(st, &result, &is_exception, &blob);
    sealed = true;
    for (uint32_t i = 0; i < held; i++) {
        bocpy_cown *c = p->cowns[i];
        if (c->settled) {
            continue; /* listed twice: a second settle would see a rollback's NULL as None */
        }
        c->settled = true;
        if (bocpy_cown_settle(st, c, here, before[i]) < 0) {
            /* The body stored something that cannot cross: the cown kept
             * its last good value; the behavior's result says why. */
            Py_XSETREF(result, capture_exception());
            is_exception = true;
            bocpy_blob_free(blob);
            blob = NULL;
            sealed = false;
        }
        /* A blob with moves left by this settle: objects of this
         * interpreter that the result may share are stale now. */
        moved = moved || bocpy_blob_moves(bocpy_cown_blob(c));
    }
    for (uint32_t i = 0; i < held; i++) {
        atomic_store_explicit(&p->cowns[i]->holder, 0, memory_order_relaxed); /* as above */
        Py_XDECREF(before[i]);
    }
store:
    if (!sealed) {
        seal_result(st, &result, &is_exception, &blob);
    }
    /* If the live result may hold objects whose buffers just moved into a
     * cown (`return c.value`, `return [c.value]`), keep only its copy, which
     * every reader, this worker included, rebuilds. */
    bocpy_cown_store_result(p->result, here, moved && blob != NULL ? Py_None : result, is_exception,
                            blob);
    Py_DECREF(result);
    for (Py_ssize_t i = 0; i < built; i++) {
        Py_DECREF(argv[i]);
    }
    if (argv != argv_small) {
        PyMem_Free(argv);
    }
    if (before != before_small) {
        PyMem_Free(before);
    }
    /* The snapshot first: it may hold the closure's contents too, which
     * bocpy_function_done wants held by the function alone. */
    Py_XDECREF(snapshot);
    bocpy_function_done(st, p->code_id, func);
    /* A pinned behavior of the threads backend: this is the main
     * interpreter, attached; the payload's reference goes here. */
    if (p->live) {
        Py_CLEAR(p->live_captures);
    }
    bocpy_noticeboard_behavior_end();
}

/* ----------------------------------------------------------- the hooks */

static void take_gil(worker_context *ctx) {
    if (!ctx->has_gil) {
        PyEval_RestoreThread(ctx->worker_tstate);
        ctx->has_gil = true;
    }
}

static void drop_gil(worker_context *ctx) {
    if (ctx->has_gil) {
        bocpy_garbage_drain(ctx->record);
        PyEval_SaveThread();
        ctx->has_gil = false;
    }
}

/* Undoes a worker_start that failed: ends the worker's interpreter if it
 * was entered (a pooled one too: it may be what failed), and this thread's
 * main-interpreter state if it made one. */
static void *abandon_worker(worker_context *ctx, bool entered, bool *failed) {
    if (entered) {
        Py_EndInterpreter(ctx->worker_tstate);
        if (ctx->main_tstate != NULL) {
            PyEval_RestoreThread(ctx->main_tstate);
        }
    }
    if (ctx->main_tstate != NULL) {
        PyThreadState_Clear(ctx->main_tstate);
        PyThreadState_DeleteCurrent();
    }
    free(ctx);
    *failed = true;
    atomic_fetch_sub_explicit(&workers_alive, 1, memory_order_relaxed); /* see its declaration */
    return NULL;
}

/* Creates a new interpreter and enters it.  Sub-interpreters are created
 * from a thread that holds the main interpreter's GIL; this thread gets a
 * main thread state for that, deleted when the worker stops. */
static bool create_interpreter_locked(worker_context *ctx) {
    ctx->main_tstate = PyThreadState_New(PyInterpreterState_Main());
    if (ctx->main_tstate == NULL) {
        bocpy_start_error_report(ctx->index, "could not create a thread state");
        return false;
    }
    PyEval_RestoreThread(ctx->main_tstate);
    const PyInterpreterConfig config = {
        .use_main_obmalloc = 0,
        .allow_fork = 0,
        .allow_exec = 0,
        .allow_threads = 1,
        .allow_daemon_threads = 0,
        .check_multi_interp_extensions = 1,
        .gil = PyInterpreterConfig_OWN_GIL,
    };
    PyStatus status = Py_NewInterpreterFromConfig(&ctx->worker_tstate, &config);
    if (PyStatus_Exception(status) || ctx->worker_tstate == NULL) {
        bocpy_start_error_report(ctx->index,
                                 status.err_msg ? status.err_msg : "interpreter creation failed");
        return false;
    }
    return true;
}

/* Workers make their interpreters one at a time.  CPython (3.12, 3.13) has
 * races between interpreters being created at once -- "Failed to import
 * encodings module" (cpython#128381, #131485), seen here once in a CI run
 * where four threads started a runtime together -- and creation is a
 * one-off cost (interpreters are kept in a pool between runtimes).  Taken
 * before any GIL: a worker waiting for it holds none, so the one creating
 * can always take the main GIL it needs. */
static pthread_mutex_t creation_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t creation_lock_once = PTHREAD_ONCE_INIT;

/* A child forked while a worker was creating its interpreter would inherit
 * the lock held by a thread it does not have. */
static void creation_lock_reset(void) {
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    creation_lock = fresh;
}

static void creation_lock_init(void) { (void)pthread_atfork(NULL, NULL, creation_lock_reset); }

static bool create_interpreter(worker_context *ctx) {
    pthread_once(&creation_lock_once, creation_lock_init);
    pthread_mutex_lock(&creation_lock);
    bool made = create_interpreter_locked(ctx);
    pthread_mutex_unlock(&creation_lock);
    return made;
}

static void *worker_start(void *user, unsigned index, bool *failed) {
    (void)user;
    worker_context *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        bocpy_start_error_report(index, "out of memory");
        *failed = true;
        return NULL;
    }
    atomic_fetch_add_explicit(&workers_alive, 1, memory_order_relaxed); /* see its declaration */
    ctx->index = index;
    /* An interpreter an earlier runtime left in the pool, if there is one. */
    ctx->worker_tstate = bocpy_pool_enter();
    bool pooled = ctx->worker_tstate != NULL;
    if (!pooled && !create_interpreter(ctx)) {
        return abandon_worker(ctx, false, failed);
    }
    ctx->has_gil = true;
    /* Read before the bootstrap syncs the levels: a later change is seen
     * (acquire, as in sync_log_levels). */
    ctx->log_levels_seen = atomic_load_explicit(&log_levels_version, memory_order_acquire);
    PyObject *core = bocpy_bootstrap_worker();
    if (core == NULL && pooled) {
        /* A behavior of an earlier runtime broke this kept interpreter (it
         * may have emptied sys.modules): end it, and start afresh.  Values
         * kept in it go first (lost if they still cannot be pickled). */
        PyErr_Clear();
        bocpy_interp *kept = bocpy_interp_current();
        if (kept != NULL && kept->state != NULL) {
            bocpy_cown_evacuate_all(kept->state, kept, true);
        }
        Py_EndInterpreter(ctx->worker_tstate);
        if (!create_interpreter(ctx)) {
            return abandon_worker(ctx, false, failed);
        }
        core = bocpy_bootstrap_worker();
    }
    if (core == NULL) {
        bocpy_start_error_report_python(index);
        return abandon_worker(ctx, true, failed);
    }
    ctx->state = bocpy_state_of_module(core);
    ctx->record = ctx->state->interp;
    ctx->record->worker_index = (int)index;
    ctx->record->thread_ident = PyThread_get_thread_ident();
    /* Counters are per runtime (wait(stats=True)); relaxed: counters
     * (bocpy_interp_stats), read after boc_runtime_start returned. */
    atomic_store_explicit(&ctx->record->stats.migrations_in, 0, memory_order_relaxed);
    atomic_store_explicit(&ctx->record->stats.foreign_pickles, 0, memory_order_relaxed);
    Py_DECREF(core); /* sys.modules keeps it, and so the state, alive */
    bocpy_worker_started(index, ctx->record);
    drop_gil(ctx);
    return ctx;
}

static void worker_busy(void *user, void *arg) {
    (void)user;
    worker_context *ctx = arg;
    take_gil(ctx);
    bocpy_garbage_drain(ctx->record);
}

static void worker_idle(void *user, void *arg) {
    (void)user;
    drop_gil(arg);
}

/* A behavior that needs a value stuck in another worker interpreter (see
 * "Values that cannot leave" in cown_value.c) runs there, on this thread:
 * this thread holds every cown the behavior requested, so nothing else can
 * move or touch their values meanwhile; it enters that interpreter as any
 * foreign entry does (bocpy_interp_call_in: it lets go of its own GIL
 * first, so no thread ever waits for one GIL while holding another), and
 * the other values the behavior needs are made live there. */
typedef struct run_elsewhere {
    bocpy_interp *there;
    boc_behavior *b;
    bool cancelled;
    bool ran;
} run_elsewhere;

static void run_elsewhere_in(void *arg) {
    run_elsewhere *e = arg;
    bocpy_interp *there = e->there;
    /* Only a worker interpreter of this runtime: its bocpy state is live and
     * it runs the current __main__ image.  worker_index and thread_ident are
     * written by its own worker with its GIL held, as we hold it now. */
    if (there->state == NULL || there->worker_index < 0) {
        return;
    }
    /* Cancellation interrupts a body by the thread ident of the interpreter's
     * worker (bocpy_cancel): for this body, that is this thread.  Its own
     * worker runs no Python while we hold the GIL, and gets it back after. */
    unsigned long owner = there->thread_ident;
    there->thread_ident = PyThread_get_thread_ident();
    bocpy_run_behavior(there->state, there, e->b, e->cancelled, NULL, NULL);
    there->thread_ident = owner;
    bocpy_garbage_drain(there);
    e->ran = true;
}

static void worker_run(void *user, boc_behavior *b, void *arg) {
    (void)user;
    worker_context *ctx = arg;
    take_gil(ctx);
    if (bocpy_late_bind_count() != ctx->late_binds_seen) {
        PyObject *main = PyImport_AddModule("__main__"); /* borrowed */
        if (main != NULL) {
            ctx->late_binds_seen =
                bocpy_late_binds_apply(ctx->state, PyModule_GetDict(main), ctx->late_binds_seen);
        }
        PyErr_Clear();
    }
    sync_log_levels(ctx);
    /* relaxed: a lone flag (see its definition in lifecycle.c). */
    bool cancelled = atomic_load_explicit(&bocpy_cancelling, memory_order_relaxed);
    bocpy_interp *there = NULL;
    bocpy_run_behavior(ctx->state, ctx->record, b, cancelled, NULL, &there);
    if (there != NULL) {
        run_elsewhere e = {.there = there, .b = b, .cancelled = cancelled, .ran = false};
        if (!bocpy_interp_call_in(there, run_elsewhere_in, &e) || !e.ran) {
            /* That interpreter is gone or not a worker of this runtime: run
             * here, where the behavior gets the error saying why. */
            bocpy_run_behavior(ctx->state, ctx->record, b, cancelled, NULL, NULL);
        }
    }
    bocpy_garbage_drain(ctx->record);
    /* relaxed: a hint (bocpy_interp.gil_wanted). */
    if (atomic_load_explicit(&ctx->record->gil_wanted, memory_order_relaxed) > 0) {
        /* Someone waits to enter this interpreter (to pickle a value that
         * lives here): let them in now rather than after a switch interval.
         * They decrement gil_wanted once they hold our GIL. */
        PyThreadState *ts = PyEval_SaveThread();
        for (int spins = 0; spins < 1000 && atomic_load_explicit(&ctx->record->gil_wanted,
                                                                 memory_order_relaxed) > 0;
             spins++) {
            sched_yield();
        }
        PyEval_RestoreThread(ts);
    }
}

static void worker_stop(void *user, unsigned index, void *arg) {
    (void)user;
    (void)index;
    worker_context *ctx = arg;
    take_gil(ctx);
    PyObject *boot = PyImport_ImportModule(BOCPY_BOOTSTRAP_MODULE);
    PyObject *rv = boot ? PyObject_CallMethod(boot, "shutdown", NULL) : NULL;
    if (rv == NULL) {
        PyErr_WriteUnraisable(boot);
    }
    Py_XDECREF(rv);
    Py_XDECREF(boot);
    /* Values still living here go back to their serialised copies, so that
     * the main thread reads them after wait(); one that cannot be pickled
     * stays here, and goes to the pool with this interpreter. */
    bocpy_cown_evacuate_all(ctx->state, ctx->record, false);
    bocpy_garbage_drain(ctx->record);
    ctx->record->worker_index = -1;
    ctx->record->thread_ident = 0;
    bocpy_pool_leave(ctx->record, ctx->worker_tstate);
    if (ctx->main_tstate != NULL) {
        PyEval_RestoreThread(ctx->main_tstate);
        PyThreadState_Clear(ctx->main_tstate);
        PyThreadState_DeleteCurrent();
    }
    bocpy_noticeboard_thread_exit();
    free(ctx);
    atomic_fetch_sub_explicit(&workers_alive, 1, memory_order_relaxed); /* see its declaration */
}

static void behavior_done(void *user, boc_behavior *b) {
    (void)user;
    bocpy_payload *p = boc_behavior_payload(b);
    /* Live captures exist only under the threads backend, whose own
     * behavior_done (threads_backend.c) drops them. */
    if (!p->live) {
        bocpy_blob_free(p->captures);
        p->captures = NULL;
    }
}

const boc_runtime_ops bocpy_runtime_ops = {
    .worker_start = worker_start,
    .worker_stop = worker_stop,
    .run = worker_run,
    .worker_idle = worker_idle,
    .worker_busy = worker_busy,
    .behavior_done = behavior_done,
    .pinned_ready = bocpy_pinned_ready_hook,
    .quiescent = bocpy_quiescent_hook,
};
