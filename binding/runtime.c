/*
 * runtime.c: the one bocpy runtime of the process -- starting it, waiting
 * for it to go quiet, and tearing it down.
 *
 * The runtime is started and stopped only by the main interpreter, with its
 * GIL held, so those transitions are serialised.  Other threads (workers
 * scheduling nested behaviors) only read the pointer, and a worker can only
 * be running while the runtime it belongs to is alive.  Every wait here is
 * sliced (at most 50 ms at a time with the GIL released) so that Ctrl-C and
 * timeouts are noticed promptly.
 */
#include "bocpy.h"

#include <math.h>
#include <string.h>

atomic_bool bocpy_cancelling;
char bocpy_start_error[512];

/* acquire/release: a thread that sees the runtime also sees it started. */
static _Atomic(boc_runtime *) current_runtime;
static bocpy_bootstrap bootstrap;
static bocpy_interp **worker_records;
static unsigned worker_records_len;

#define WAIT_SLICE_NS (50 * 1000 * 1000)

boc_runtime *bocpy_runtime(void) {
    return atomic_load_explicit(&current_runtime, memory_order_acquire);
}

const bocpy_bootstrap *bocpy_current_bootstrap(void) { return &bootstrap; }

void bocpy_worker_started(unsigned index, bocpy_interp *record) {
    if (index < worker_records_len) {
        worker_records[index] = record;
    }
}

typedef struct late_bind {
    char *name;
    bocpy_blob *blob;
} late_bind;

/* Appended by the main thread, read by workers: both under late_lock.  The
 * count is also kept atomic so that workers can check it for free. */
static pthread_mutex_t late_lock = PTHREAD_MUTEX_INITIALIZER;
static late_bind *late_binds;
static size_t late_capacity;
static atomic_size_t late_count;

static void late_binds_clear(void) {
    pthread_mutex_lock(&late_lock);
    size_t n = atomic_load_explicit(&late_count, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        free(late_binds[i].name);
        bocpy_blob_free(late_binds[i].blob);
    }
    free(late_binds);
    late_binds = NULL;
    late_capacity = 0;
    atomic_store_explicit(&late_count, 0, memory_order_relaxed);
    pthread_mutex_unlock(&late_lock);
}

size_t bocpy_late_bind_count(void) {
    /* acquire pairs with the release in add_late_bind: a worker that sees
     * the new count finds the entry complete (it also takes the lock). */
    return atomic_load_explicit(&late_count, memory_order_acquire);
}

PyObject *bocpy_add_late_bind(bocpy_state *st, PyObject *name, PyObject *value) {
    const char *utf8 = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (utf8 == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "late bind names are str");
        }
        return NULL;
    }
    bocpy_blob *blob = bocpy_serialize(st, value);
    char *copy = blob ? strdup(utf8) : NULL;
    if (copy == NULL) {
        bocpy_blob_free(blob);
        return blob ? PyErr_NoMemory() : NULL;
    }
    pthread_mutex_lock(&late_lock);
    size_t n = atomic_load_explicit(&late_count, memory_order_relaxed);
    if (n == late_capacity) {
        size_t capacity = late_capacity ? late_capacity * 2 : 16;
        late_bind *grown = realloc(late_binds, capacity * sizeof(*grown));
        if (grown == NULL) {
            pthread_mutex_unlock(&late_lock);
            free(copy);
            bocpy_blob_free(blob);
            return PyErr_NoMemory();
        }
        late_binds = grown;
        late_capacity = capacity;
    }
    late_binds[n] = (late_bind){copy, blob};
    atomic_store_explicit(&late_count, n + 1, memory_order_release);
    pthread_mutex_unlock(&late_lock);
    Py_RETURN_NONE;
}

size_t bocpy_late_binds_apply(bocpy_state *st, PyObject *namespace, size_t from) {
    pthread_mutex_lock(&late_lock);
    size_t n = atomic_load_explicit(&late_count, memory_order_relaxed);
    for (size_t i = from; i < n; i++) {
        PyObject *value = bocpy_deserialize(st, late_binds[i].blob);
        if (value == NULL || PyDict_SetItemString(namespace, late_binds[i].name, value) < 0) {
            PyErr_Clear(); /* as in the image: an unusable global stays absent */
        }
        Py_XDECREF(value);
    }
    pthread_mutex_unlock(&late_lock);
    return n;
}

int bocpy_late_binds_refresh(bocpy_state *st) {
    if (st->main_dict == NULL || PyDict_GET_SIZE(st->main_dict) == st->main_dict_size) {
        return 0;
    }
    st->main_dict_size = PyDict_GET_SIZE(st->main_dict);
    PyObject *worker = PyImport_ImportModule("bocpy._worker");
    PyObject *rv = worker ? PyObject_CallMethod(worker, "refresh_main", NULL) : NULL;
    Py_XDECREF(worker);
    Py_XDECREF(rv);
    return rv == NULL ? -1 : 0;
}

static void bootstrap_clear(void) {
    late_binds_clear();
    for (size_t i = 0; i < bootstrap.sys_path_len; i++) {
        free(bootstrap.sys_path[i]);
    }
    free(bootstrap.sys_path);
    bocpy_blob_free(bootstrap.header);
    for (size_t i = 0; i < bootstrap.nvalues; i++) {
        bocpy_blob_free(bootstrap.values[i]);
    }
    free(bootstrap.values);
    memset(&bootstrap, 0, sizeof(bootstrap));
    free(worker_records);
    worker_records = NULL;
    worker_records_len = 0;
}

/* Copies the main interpreter's sys.path (its str entries) into C memory. */
static int copy_sys_path(void) {
    PyObject *path = PySys_GetObject("path"); /* borrowed */
    if (path == NULL || !PyList_Check(path)) {
        return 0;
    }
    Py_ssize_t n = PyList_GET_SIZE(path);
    bootstrap.sys_path = calloc((size_t)n + 1, sizeof(char *));
    if (bootstrap.sys_path == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(path, i);
        const char *utf8 = PyUnicode_Check(entry) ? PyUnicode_AsUTF8(entry) : NULL;
        if (utf8 == NULL) {
            PyErr_Clear();
            continue;
        }
        char *copy = strdup(utf8);
        if (copy == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        bootstrap.sys_path[bootstrap.sys_path_len++] = copy;
    }
    return 0;
}

int bocpy_ensure_runtime(bocpy_state *st) {
    if (bocpy_runtime() != NULL) {
        return 0;
    }
    if (!st->interp->is_main || st->starter == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the bocpy runtime is not running; import bocpy in the main "
                        "interpreter and schedule behaviors from there");
        return -1;
    }
    PyObject *rv = PyObject_CallNoArgs(st->starter);
    Py_XDECREF(rv);
    return rv == NULL ? -1 : 0;
}

static int check_main(bocpy_state *st, const char *name) {
    if (!st->interp->is_main) {
        PyErr_Format(PyExc_RuntimeError,
                     "bocpy.%s() can only be called from the main interpreter, not from "
                     "inside a behavior",
                     name);
        return -1;
    }
    return 0;
}

PyObject *bocpy_start(bocpy_state *st, PyObject *count_obj, PyObject *header, PyObject *values) {
    if (check_main(st, "start") < 0) {
        return NULL;
    }
    long long count;
    if (bocpy_int_arg(count_obj, "worker_count (None means bocpy.WORKER_COUNT)", 1, 1024, &count) <
        0) {
        return NULL;
    }
    boc_runtime *rt = bocpy_runtime();
    if (rt != NULL) {
        if ((unsigned)count != boc_runtime_worker_count(rt)) {
            PyErr_Format(PyExc_RuntimeError,
                         "bocpy is already running with %u workers; call bocpy.wait() before "
                         "starting it again with %lld",
                         boc_runtime_worker_count(rt), count);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "start(): values must be a list");
        return NULL;
    }
    bootstrap_clear();
    if (copy_sys_path() < 0) {
        bootstrap_clear();
        return NULL;
    }
    bootstrap.header = bocpy_serialize(st, header);
    if (bootstrap.header == NULL) {
        return NULL;
    }
    Py_ssize_t nvalues = PyList_GET_SIZE(values);
    bootstrap.values = calloc((size_t)nvalues + 1, sizeof(*bootstrap.values));
    worker_records = calloc((size_t)count, sizeof(*worker_records));
    if (bootstrap.values == NULL || worker_records == NULL) {
        bootstrap_clear();
        return PyErr_NoMemory();
    }
    worker_records_len = (unsigned)count;
    for (Py_ssize_t i = 0; i < nvalues; i++) {
        /* A value that cannot be sent is simply absent in workers. */
        bootstrap.values[i] = bocpy_serialize(st, PyList_GET_ITEM(values, i));
        if (bootstrap.values[i] == NULL) {
            PyErr_Clear();
        }
    }
    bootstrap.nvalues = (size_t)nvalues;

    bocpy_start_error[0] = '\0';
    atomic_store_explicit(&bocpy_cancelling, false, memory_order_relaxed);
    rt = boc_runtime_new((unsigned)count, &bocpy_runtime_ops, NULL);
    if (rt == NULL) {
        bootstrap_clear();
        return PyErr_NoMemory();
    }
    int rc;
    /* Workers need the main GIL while they create their interpreters. */
    Py_BEGIN_ALLOW_THREADS
        rc = boc_runtime_start(rt);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        boc_runtime_free(rt);
        bootstrap_clear();
        PyErr_Format(PyExc_RuntimeError, "bocpy could not start its workers: %s",
                     bocpy_start_error[0] ? bocpy_start_error : "thread creation failed");
        return NULL;
    }
    PyObject *main = PyImport_AddModule("__main__"); /* borrowed */
    Py_XSETREF(st->main_dict, main ? Py_NewRef(PyModule_GetDict(main)) : NULL);
    st->main_dict_size = st->main_dict ? PyDict_GET_SIZE(st->main_dict) : 0;
    PyErr_Clear();
    atomic_store_explicit(&current_runtime, rt, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *collect_stats(boc_runtime *rt) {
    unsigned n = boc_runtime_worker_count(rt);
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    for (unsigned i = 0; i < n; i++) {
        boc_worker_stats ws;
        boc_runtime_stats(rt, i, &ws);
        bocpy_interp *rec = i < worker_records_len ? worker_records[i] : NULL;
        unsigned long long received =
            rec ? atomic_load_explicit(&rec->stats.migrations_in, memory_order_relaxed) : 0;
        unsigned long long fetched =
            rec ? atomic_load_explicit(&rec->stats.foreign_pickles, memory_order_relaxed) : 0;
        PyObject *d =
            Py_BuildValue("{s:I,s:K,s:K,s:K,s:K,s:K,s:K}", "worker", i, "behaviors_run",
                          (unsigned long long)ws.behaviors_run, "pushed_local",
                          (unsigned long long)ws.pushed_local, "steals",
                          (unsigned long long)ws.steals, "parks", (unsigned long long)ws.parks,
                          "values_received", received, "values_sent_from_here", fetched);
        if (d == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, d);
    }
    return list;
}

static void stop_runtime(boc_runtime *rt) {
    atomic_store_explicit(&current_runtime, NULL, memory_order_release);
    Py_BEGIN_ALLOW_THREADS
        /* A thread that picked up the pointer just before we cleared it may
         * still be scheduling: let that work finish before the workers go. */
        while (boc_runtime_wait_quiescent(rt, WAIT_SLICE_NS) != 0) {
        }
        boc_runtime_stop(rt);
        bocpy_pinned_runtime_gone();
    Py_END_ALLOW_THREADS
    boc_runtime_free(rt);
    bootstrap_clear();
    atomic_store_explicit(&bocpy_cancelling, false, memory_order_relaxed);
}

PyObject *bocpy_wait(bocpy_state *st, PyObject *timeout_obj, bool stop) {
    if (check_main(st, stop ? "wait" : "quiesce") < 0) {
        return NULL;
    }
    if (bocpy_pumping()) {
        PyErr_Format(PyExc_RuntimeError,
                     "bocpy.%s() cannot be called from inside a pinned behavior: the "
                     "behavior itself is still running",
                     stop ? "wait" : "quiesce");
        return NULL;
    }
    double timeout = -1.0;
    if (timeout_obj != Py_None) {
        if (bocpy_float_arg(timeout_obj, "timeout (seconds, or None)", &timeout) < 0) {
            return NULL;
        }
        if (timeout < 0) {
            PyErr_Format(PyExc_ValueError,
                         "timeout must be >= 0 seconds, or None to wait as long as it takes; "
                         "got %R",
                         timeout_obj);
            return NULL;
        }
    }
    boc_runtime *rt = bocpy_runtime();
    if (rt == NULL) {
        bocpy_garbage_drain(st->interp);
        return PyList_New(0);
    }
    if (bocpy_main_holds() > 0 && boc_runtime_live(rt) > 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the main thread still holds acquired cowns while behaviors are in "
                        "flight; release() them (or leave their 'with' block) before waiting");
        return NULL;
    }
    uint64_t start = boc_now_ns();
    uint64_t budget = timeout < 0 ? UINT64_MAX : bocpy_seconds_to_ns(timeout);
    for (;;) {
        /* Pinned behaviors run here, on the main thread, while we wait. */
        bocpy_pump_result pumped;
        if (bocpy_pump_run(st, 0, 0, false, &pumped) < 0) {
            return NULL; /* a pinned body raised KeyboardInterrupt or SystemExit */
        }
        /* acquire (inside): the work of every completed behavior is visible. */
        if (boc_runtime_wait_quiescent(rt, 0) == 0) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL; /* Ctrl-C: the runtime keeps running */
        }
        uint64_t elapsed = boc_now_ns() - start;
        if (budget != UINT64_MAX && elapsed >= budget) {
            char seconds[32]; /* PyErr_Format has no floating-point conversions */
            snprintf(seconds, sizeof(seconds), "%.3g", timeout);
            PyErr_Format(PyExc_TimeoutError,
                         "%llu behaviors were still in flight after %s s; the runtime keeps "
                         "running: call %s() again to keep waiting",
                         (unsigned long long)boc_runtime_live(rt), seconds,
                         stop ? "wait" : "quiesce");
            return NULL;
        }
        int64_t left_ms = WAIT_SLICE_NS / 1000000;
        if (budget != UINT64_MAX && (budget - elapsed) / 1000000 < (uint64_t)left_ms) {
            left_ms = (int64_t)((budget - elapsed) / 1000000) + 1;
        }
        Py_BEGIN_ALLOW_THREADS
            bocpy_pinned_wait_for_wake(left_ms);
        Py_END_ALLOW_THREADS
        bocpy_garbage_drain(st->interp);
    }
    PyObject *stats = collect_stats(rt);
    if (stats == NULL) {
        return NULL;
    }
    if (stop) {
        stop_runtime(rt);
        bocpy_garbage_drain(st->interp);
    }
    return stats;
}

PyObject *bocpy_close_pool(bocpy_state *st) {
    if (check_main(st, "_close_pool") < 0) {
        return NULL;
    }
    if (bocpy_runtime() != NULL || bocpy_workers_alive() > 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the bocpy runtime is running (or starting or stopping its workers); "
                        "call bocpy.wait() before ending its worker interpreters");
        return NULL;
    }
    bocpy_pool_trim(0);
    Py_RETURN_NONE;
}

static void interrupt_body(void *arg) {
    bocpy_interp *rec = arg;
    /* Raised in the body at its next bytecode; a body blocked in C (a
     * sleep, a lock) sees it when that call returns. */
    if (atomic_load_explicit(&rec->in_body, memory_order_relaxed)) {
        PyThreadState_SetAsyncExc(rec->thread_ident, PyExc_KeyboardInterrupt);
    }
}

PyObject *bocpy_cancel(void) {
    /* From now on workers skip bodies: each queued behavior completes at
     * once with a "did not run" exception on its result cown, which frees
     * its cowns for the next one, so the whole graph drains quickly. */
    atomic_store_explicit(&bocpy_cancelling, true, memory_order_relaxed);
    for (unsigned i = 0; bocpy_runtime() != NULL && i < worker_records_len; i++) {
        bocpy_interp *rec = worker_records[i];
        if (rec != NULL && atomic_load_explicit(&rec->in_body, memory_order_relaxed)) {
            bocpy_interp_call_in(rec, interrupt_body, rec);
        }
    }
    Py_RETURN_NONE;
}
