/*
 * interp.c: what the binding keeps per interpreter.
 *
 * Objects belong to the interpreter that created them: only a thread that
 * holds that interpreter's GIL may touch them, and only that interpreter
 * may free them.  This file provides the three tools the rest of the
 * binding uses to respect that rule across worker sub-interpreters:
 *
 *  - records: one per interpreter that imported bocpy._core, found from any
 *    thread, recycled but never freed;
 *  - garbage: a lock-free stack of objects released on the wrong thread,
 *    drained later by a thread that holds the right GIL;
 *  - foreign entry: briefly running a function inside another interpreter
 *    (used to pickle a value that lives there and has no serialised copy).
 */
#include "bocpy.h"

#include <sched.h>

/* All records ever made, newest first.  Appended under records_lock; the
 * list is only ever walked under it too. */
static pthread_mutex_t records_lock = PTHREAD_MUTEX_INITIALIZER;
static bocpy_interp *records;

/* Per-thread cache of the last record looked up. */
static _Thread_local bocpy_interp *tls_record;

bocpy_interp *bocpy_interp_acquire_record(PyInterpreterState *interp, bool is_main) {
    pthread_mutex_lock(&records_lock);
    bocpy_interp *rec = NULL;
    for (bocpy_interp *r = records; r != NULL; r = r->next_record) {
        if (r->interp == NULL) {
            rec = r;
            break;
        }
    }
    if (rec == NULL) {
        rec = PyMem_RawCalloc(1, sizeof(*rec));
        if (rec == NULL) {
            pthread_mutex_unlock(&records_lock);
            PyErr_NoMemory();
            return NULL;
        }
        pthread_mutex_init(&rec->lock, NULL);
        rec->next_record = records;
        records = rec;
    }
    rec->interp = interp;
    rec->interp_id = PyInterpreterState_GetID(interp);
    rec->is_main = is_main;
    rec->worker_index = -1;
    rec->state = NULL;
    rec->residents = NULL;
    /* relaxed: the record is not in use yet; records_lock, and then the
     * module state that points to it, publish it. */
    atomic_store_explicit(&rec->garbage, NULL, memory_order_relaxed);
    atomic_store_explicit(&rec->gil_wanted, 0, memory_order_relaxed);
    atomic_store_explicit(&rec->in_body, false, memory_order_relaxed);
    rec->thread_ident = 0;
    rec->next_pooled = NULL;
    rec->placeholder = NULL;
    atomic_store_explicit(&rec->stats.migrations_in, 0, memory_order_relaxed);
    atomic_store_explicit(&rec->stats.foreign_pickles, 0, memory_order_relaxed);
    pthread_mutex_unlock(&records_lock);
    return rec;
}

void bocpy_interp_release_record(bocpy_interp *rec) {
    /* The interpreter is finalising its bocpy module: whatever garbage is
     * left belongs to it and can still be freed here (we hold its GIL).
     * Values still resident (it ended without being evacuated: a crash at
     * exit) must not keep pointing at it once the record is recycled. */
    bocpy_cown_abandon_residents(rec);
    bocpy_garbage_drain(rec);
    pthread_mutex_lock(&records_lock);
    rec->state = NULL;
    rec->interp = NULL;
    pthread_mutex_unlock(&records_lock);
    if (tls_record == rec) {
        tls_record = NULL;
    }
}

bocpy_interp *bocpy_interp_current(void) {
    PyInterpreterState *interp = PyInterpreterState_Get();
    bocpy_interp *rec = tls_record;
    if (rec != NULL && rec->interp == interp) {
        return rec;
    }
    pthread_mutex_lock(&records_lock);
    for (rec = records; rec != NULL; rec = rec->next_record) {
        if (rec->interp == interp) {
            break;
        }
    }
    pthread_mutex_unlock(&records_lock);
    tls_record = rec;
    return rec;
}

bool bocpy_interp_is_current(const bocpy_interp *rec) {
    PyThreadState *ts = bocpy_tstate_unchecked();
    /* A non-NULL current thread state means this thread holds its GIL. */
    return ts != NULL && PyThreadState_GetInterpreter(ts) == rec->interp;
}

static int drain_main_garbage(void *arg) {
    (void)arg;
    bocpy_interp *rec = bocpy_interp_current();
    if (rec != NULL) {
        bocpy_garbage_drain(rec);
    }
    return 0;
}

void bocpy_garbage_push(bocpy_interp *rec, PyObject *obj) {
    bocpy_garbage *node = malloc(sizeof(*node));
    if (node == NULL) {
        /* Leaking one object beats freeing it in the wrong interpreter. */
        return;
    }
    node->obj = obj;
    /* relaxed: only a first guess of the head; the CAS checks it. */
    bocpy_garbage *head = atomic_load_explicit(&rec->garbage, memory_order_relaxed);
    do {
        node->next = head;
        /* release: the drainer's acquire exchange must see node->obj/next. */
    } while (!atomic_compare_exchange_weak_explicit(&rec->garbage, &head, node,
                                                    memory_order_release, memory_order_relaxed));
    if (head == NULL && rec->is_main) {
        /* Nobody may drain the main interpreter for a while (it might be
         * running user code): ask its eval loop to do it.  If the pending
         * queue is full the next drain point catches up. */
        (void)Py_AddPendingCall(drain_main_garbage, NULL);
    }
}

void bocpy_garbage_drain(bocpy_interp *rec) {
    /* Cheap check first: this runs between every two behaviors.  relaxed: a
     * push it misses is drained next time (the GIL holder drains before
     * each behavior and before letting go of the GIL). */
    if (atomic_load_explicit(&rec->garbage, memory_order_relaxed) == NULL) {
        return;
    }
    /* acquire pairs with the pushers' release CAS. */
    bocpy_garbage *node = atomic_exchange_explicit(&rec->garbage, NULL, memory_order_acquire);
    while (node != NULL) {
        bocpy_garbage *next = node->next;
        Py_DECREF(node->obj);
        free(node);
        node = next;
    }
}

bool bocpy_interp_call_in(bocpy_interp *rec, void (*fn)(void *), void *arg) {
    PyThreadState *here = PyEval_SaveThread();
    /* Announce ourselves so that rec's worker lets go of its GIL at the end
     * of its current behavior instead of after a 5 ms switch interval.
     * relaxed is enough: it is a hint, the GIL itself does the ordering. */
    atomic_fetch_add_explicit(&rec->gil_wanted, 1, memory_order_relaxed);
    PyThreadState *there = PyThreadState_New(rec->interp);
    if (there == NULL) {
        atomic_fetch_sub_explicit(&rec->gil_wanted, 1, memory_order_relaxed);
        PyEval_RestoreThread(here);
        return false;
    }
    PyEval_RestoreThread(there);
    atomic_fetch_sub_explicit(&rec->gil_wanted, 1, memory_order_relaxed); /* a hint, as above */
    fn(arg);
    PyThreadState_Clear(there);
    PyThreadState_DeleteCurrent();
    PyEval_RestoreThread(here);
    return true;
}
