/*
 * bootstrap.c: how a worker interpreter comes to look like the main one --
 * the script's `__main__` image, worker start-up, and late binds.
 *
 * A behavior defined in a script refers to the script's imports, functions
 * and constants, so each worker needs a `__main__` that provides them,
 * without the script's top-level statements ever running again.  The steps,
 * and the interpreter each runs in:
 *
 *   1. main interpreter, starting the runtime (bocpy.start): the Python
 *      side (bocpy._bootstrap.build_bootstrap) builds the image of
 *      `__main__`; bocpy_bootstrap_build stores it here, serialised, with a
 *      copy of sys.path as plain C strings;
 *   2. each worker thread, in its own interpreter, before any behavior
 *      (bocpy_bootstrap_worker, called by worker.c's worker_start): adopts
 *      that sys.path, imports bocpy, and calls bocpy._bootstrap.bootstrap,
 *      which reads the image back (_core._bootstrap_header and
 *      _bootstrap_value) and applies it to the worker's `__main__`.  A
 *      worker that fails reports why (bocpy_start_error_report), and the
 *      starter raises it;
 *   3. main interpreter, once the runtime started (bocpy.start) and on
 *      every @when (bocpy_late_binds_refresh): when `__main__` gained
 *      globals since it last looked, the Python side
 *      (bocpy._bootstrap.refresh_main) sends them as *late binds*
 *      (_core._add_late_bind);
 *   4. each worker thread, before each behavior (worker.c's worker_run):
 *      sets in its `__main__` the late binds it has not seen yet.
 *
 * Everything here lives from one runtime start to its stop (lifecycle.c
 * calls bocpy_bootstrap_clear); the main interpreter writes it, in
 * lifecycle.c's STARTING state or under late_lock, and workers only read
 * it (but for the start error, which they write under its lock).
 */
#include "bocpy.h"

#include <string.h>

/* What every worker of the current runtime starts from.  Written by the
 * starter in STARTING, before boc_runtime_start makes the worker threads
 * (thread creation orders the writes before their reads), and freed by the
 * stopper after they are joined: workers read it without a lock. */
static struct {
    /* The main interpreter's sys.path, as plain strings: a worker needs it
     * before it can import bocpy itself (and so before it can unpickle). */
    char **sys_path;
    size_t sys_path_len;
    bocpy_blob *header;
    size_t nvalues;
    bocpy_blob **values;
} bootstrap;

/* ----------------------------------------------------------- start errors */

/* The first error a starting worker reports.  Workers start concurrently,
 * so it is written under a lock; the starter reads it (under the same lock)
 * after boc_runtime_start has returned. */
static pthread_mutex_t start_error_lock = PTHREAD_MUTEX_INITIALIZER;
static char start_error[512];

void bocpy_start_error_reset(void) {
    pthread_mutex_lock(&start_error_lock);
    start_error[0] = '\0';
    pthread_mutex_unlock(&start_error_lock);
}

void bocpy_start_error_get(char *buf, size_t size) {
    pthread_mutex_lock(&start_error_lock);
    snprintf(buf, size, "%s", start_error);
    pthread_mutex_unlock(&start_error_lock);
}

void bocpy_start_error_report(unsigned index, const char *what) {
    /* First error wins; later workers usually fail the same way. */
    pthread_mutex_lock(&start_error_lock);
    if (start_error[0] == '\0') {
        snprintf(start_error, sizeof(start_error), "worker %u: %s", index, what);
    }
    pthread_mutex_unlock(&start_error_lock);
}

void bocpy_start_error_report_python(unsigned index) {
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *text = exc ? PyObject_Repr(exc) : NULL;
    const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
    bocpy_start_error_report(index, utf8 ? utf8 : "unknown error");
    PyErr_Clear();
    Py_XDECREF(text);
    Py_XDECREF(exc);
}

/* ------------------------------------------------------------ late binds */

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
    /* relaxed: late_lock orders every access but the workers' unlocked
     * peek, and no worker runs any more when the binds are cleared. */
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
    bocpy_blob *blob = bocpy_serialise(st, value);
    char *copy = blob ? strdup(utf8) : NULL;
    if (copy == NULL) {
        bocpy_blob_free(blob);
        return blob ? PyErr_NoMemory() : NULL;
    }
    pthread_mutex_lock(&late_lock);
    /* relaxed: only this thread (the main one, under late_lock) writes it. */
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
    /* release: pairs with bocpy_late_bind_count's acquire. */
    atomic_store_explicit(&late_count, n + 1, memory_order_release);
    pthread_mutex_unlock(&late_lock);
    Py_RETURN_NONE;
}

size_t bocpy_late_binds_apply(bocpy_state *st, PyObject *namespace, size_t from) {
    pthread_mutex_lock(&late_lock);
    /* relaxed: late_lock orders the entries before this read. */
    size_t n = atomic_load_explicit(&late_count, memory_order_relaxed);
    for (size_t i = from; i < n; i++) {
        PyObject *value = bocpy_deserialise(st, late_binds[i].blob);
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
    PyObject *boot = PyImport_ImportModule(BOCPY_BOOTSTRAP_MODULE);
    PyObject *rv = boot ? PyObject_CallMethod(boot, "refresh_main", NULL) : NULL;
    Py_XDECREF(boot);
    Py_XDECREF(rv);
    return rv == NULL ? -1 : 0;
}

/* ---------------------------------------------- main interpreter: build */

void bocpy_bootstrap_clear(void) {
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

int bocpy_bootstrap_build(bocpy_state *st, PyObject *header, PyObject *values) {
    bocpy_bootstrap_clear();
    if (copy_sys_path() < 0) {
        return -1;
    }
    bootstrap.header = bocpy_serialise(st, header);
    if (bootstrap.header == NULL) {
        return -1;
    }
    Py_ssize_t nvalues = PyList_GET_SIZE(values);
    bootstrap.values = calloc((size_t)nvalues + 1, sizeof(*bootstrap.values));
    if (bootstrap.values == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nvalues; i++) {
        /* A value that cannot be sent is simply absent in workers. */
        bootstrap.values[i] = bocpy_serialise(st, PyList_GET_ITEM(values, i));
        if (bootstrap.values[i] == NULL) {
            PyErr_Clear();
        }
    }
    bootstrap.nvalues = (size_t)nvalues;
    return 0;
}

void bocpy_bootstrap_started(bocpy_state *st) {
    PyObject *main = PyImport_AddModule("__main__"); /* borrowed */
    Py_XSETREF(st->main_dict, main ? Py_NewRef(PyModule_GetDict(main)) : NULL);
    st->main_dict_size = st->main_dict ? PyDict_GET_SIZE(st->main_dict) : 0;
    PyErr_Clear();
}

/* ---------------------------------------------------- worker: apply */

PyObject *bocpy_bootstrap_header(bocpy_state *st) {
    if (bootstrap.header == NULL) {
        Py_RETURN_NONE;
    }
    return bocpy_deserialise(st, bootstrap.header);
}

PyObject *bocpy_bootstrap_value(bocpy_state *st, PyObject *index_obj) {
    Py_ssize_t index = PyLong_AsSsize_t(index_obj);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0 || (size_t)index >= bootstrap.nvalues || bootstrap.values[index] == NULL) {
        PyErr_Format(PyExc_LookupError, "no bootstrap value %zd", index);
        return NULL;
    }
    return bocpy_deserialise(st, bootstrap.values[index]);
}

/* Gives this (new) interpreter the main interpreter's sys.path, so that it
 * imports bocpy, and the user's modules, from the same places. */
static int adopt_sys_path(void) {
    if (bootstrap.sys_path == NULL) {
        return 0;
    }
    PyObject *list = PyList_New((Py_ssize_t)bootstrap.sys_path_len);
    if (list == NULL) {
        return -1;
    }
    for (size_t i = 0; i < bootstrap.sys_path_len; i++) {
        PyObject *entry = PyUnicode_FromString(bootstrap.sys_path[i]);
        if (entry == NULL) {
            Py_DECREF(list);
            return -1;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, entry);
    }
    int rc = PySys_SetObject("path", list);
    Py_DECREF(list);
    return rc;
}

PyObject *bocpy_bootstrap_worker(void) {
    if (adopt_sys_path() < 0) {
        return NULL;
    }
    PyObject *core = PyImport_ImportModule("bocpy._core");
    PyObject *boot = core ? PyImport_ImportModule(BOCPY_BOOTSTRAP_MODULE) : NULL;
    PyObject *rv = boot ? PyObject_CallMethod(boot, "bootstrap", NULL) : NULL;
    Py_XDECREF(rv);
    Py_XDECREF(boot);
    if (rv == NULL) {
        Py_XDECREF(core);
        return NULL;
    }
    return core;
}
