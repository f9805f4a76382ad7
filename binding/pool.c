/*
 * pool.c: worker interpreters kept from one runtime to the next.
 *
 * CPython does not give all of a sub-interpreter's memory back when the
 * interpreter ends (3.13: about 1.7 MiB each, and several MiB once modules
 * are imported), so a program that calls wait() in a loop would grow
 * without bound if every runtime made its workers fresh interpreters.  A
 * stopping worker instead leaves its interpreter here, and a worker of the
 * next runtime takes it back: a new OS thread, a new thread state, the same
 * interpreter.  It also makes start() cheaper: modules the behaviors import
 * stay imported.  Ending the surplus when a smaller runtime starts would
 * not give its memory back either, so the pool keeps as many interpreters
 * as the largest runtime used, until exit (or fork: see bocpy/__init__.py).
 *
 * What a pooled interpreter is (the invariants):
 *  - no thread runs in it: its last worker deleted its own thread state,
 *    which released its GIL (on 3.12 an idle placeholder state remains,
 *    see below);
 *  - no cown value lives in it (the worker evacuated its residents) except
 *    values that could not be pickled when it left (cown_value.c, "Values
 *    that cannot leave"): they stay, with every change made to them, and
 *    the only thread that enters it meanwhile is one that needs such a value
 *    (bocpy_interp_call_in, to try pickling it again); the next runtime's
 *    workers take the interpreters holding values first, so that behaviors
 *    can run against those values there;
 *  - its bocpy record is live (the interpreter still has bocpy._core) and
 *    has worker_index -1.
 * A worker that takes one out owns it until it puts it back, which it does
 * only after deleting its thread state.  pool_lock guards the list: the
 * workers of one runtime start and stop concurrently, and trimming (main
 * interpreter; refused while any worker exists, see bocpy_close_pool) may
 * race with a runtime that starts meanwhile.  Each pop hands an
 * interpreter to exactly one owner, so that race is harmless: whatever the
 * trim took is ended, whatever a worker took is used.  Trimming ends the
 * values still kept in an interpreter: each such cown gets an exception
 * saying its value was lost, and the bocpy logger reports it.
 */
#include "bocpy.h"

/* CPython 3.12 gives an interpreter whose thread-state list is empty its
 * built-in first thread state again, and aborts ("thread state already
 * initialized") if that one was used before; 3.13 resets it.  On 3.12 a
 * pooled interpreter therefore keeps one idle placeholder state, made by
 * the worker that leaves it and deleted by the thread that enters it next. */
#if PY_VERSION_HEX < 0x030D0000
#define KEEP_PLACEHOLDER 1
#else
#define KEEP_PLACEHOLDER 0
#endif

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static bocpy_interp *pool;
static size_t pool_len;

/* Whether values are kept in `rec` (lock order: pool_lock, then rec->lock). */
static bool holds_values(bocpy_interp *rec) {
    pthread_mutex_lock(&rec->lock);
    bool holds = rec->residents != NULL;
    pthread_mutex_unlock(&rec->lock);
    return holds;
}

static bocpy_interp *pool_pop(size_t keep) {
    pthread_mutex_lock(&pool_lock);
    bocpy_interp *rec = NULL;
    if (pool_len > keep) {
        /* Prefer one that keeps values: a worker then runs in it. */
        bocpy_interp **link = &pool;
        for (bocpy_interp **l = &pool; *l != NULL; l = &(*l)->next_pooled) {
            if (holds_values(*l)) {
                link = l;
                break;
            }
        }
        rec = *link;
        *link = rec->next_pooled;
        rec->next_pooled = NULL;
        pool_len--;
    }
    pthread_mutex_unlock(&pool_lock);
    return rec;
}

static void pool_push(bocpy_interp *rec) {
    pthread_mutex_lock(&pool_lock);
    rec->next_pooled = pool;
    pool = rec;
    pool_len++;
    pthread_mutex_unlock(&pool_lock);
}

/* Enters a pooled interpreter from a thread that holds no GIL. */
static PyThreadState *enter(bocpy_interp *rec) {
    PyThreadState *ts = PyThreadState_New(rec->interp);
    if (ts == NULL) {
        return NULL;
    }
    PyEval_RestoreThread(ts);
    if (rec->placeholder != NULL) {
        PyThreadState_Clear(rec->placeholder);
        PyThreadState_Delete(rec->placeholder);
        rec->placeholder = NULL;
    }
    return ts;
}

PyThreadState *bocpy_pool_enter(void) {
    bocpy_interp *rec = pool_pop(0);
    if (rec == NULL) {
        return NULL;
    }
    PyThreadState *ts = enter(rec);
    if (ts == NULL) {
        pool_push(rec); /* untouched: still fit for another worker */
    }
    return ts;
}

void bocpy_pool_leave(bocpy_interp *rec, PyThreadState *current) {
    if (KEEP_PLACEHOLDER) {
        /* If this fails (out of memory) the next enter on 3.12 aborts;
         * ending the interpreter here would need the main GIL. */
        rec->placeholder = PyThreadState_New(rec->interp);
    }
    PyThreadState_Clear(current);
    PyThreadState_DeleteCurrent(); /* and lets go of rec's GIL */
    /* Only now is it a pooled interpreter: a thread state made for it
     * before CPython has finished deleting this one could get the
     * interpreter's built-in first state while that is still in use
     * ("thread state already initialized"). */
    pool_push(rec);
}

size_t bocpy_pool_size(void) {
    pthread_mutex_lock(&pool_lock);
    size_t n = pool_len;
    pthread_mutex_unlock(&pool_lock);
    return n;
}

void bocpy_pool_trim(size_t keep) {
    for (bocpy_interp *rec; (rec = pool_pop(keep)) != NULL;) {
        /* As _interpreters.destroy() does: a thread state for it on this
         * thread, made current after this thread let go of the main GIL
         * (never two GILs at once), then ended.  Py_EndInterpreter leaves
         * no thread state current; the main one is restored after. */
        PyThreadState *here = PyEval_SaveThread();
        PyThreadState *there = enter(rec);
        if (there == NULL) {
            PyEval_RestoreThread(here);
            pool_push(rec); /* out of memory: try again another time */
            return;
        }
        if (rec->state != NULL) {
            bocpy_cown_evacuate_all(rec->state, rec, true);
        }
        Py_EndInterpreter(there);
        PyEval_RestoreThread(here);
    }
}
