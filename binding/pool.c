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
 * stay imported.
 *
 * What a pooled interpreter is (the invariants):
 *  - it has no thread state: its last worker cleared and deleted its own
 *    before putting it here, which also released its GIL;
 *  - no cown value lives in it (the worker evacuated its residents), so no
 *    other thread has a reason to enter it;
 *  - its bocpy record is live (the interpreter still has bocpy._core) and
 *    has worker_index -1.
 * A worker that takes one out owns it until it puts it back.  Interpreters
 * are ended only by the main thread, with its GIL held and no runtime
 * running (so no worker can be taking or putting one at the same time);
 * pool_lock still guards the array, because workers of one runtime start
 * and stop concurrently.
 */
#include "bocpy.h"

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static bocpy_interp **pool;
static size_t pool_len;
static size_t pool_capacity;

bocpy_interp *bocpy_pool_take(void) {
    pthread_mutex_lock(&pool_lock);
    bocpy_interp *rec = pool_len > 0 ? pool[--pool_len] : NULL;
    pthread_mutex_unlock(&pool_lock);
    return rec;
}

bool bocpy_pool_put(bocpy_interp *rec) {
    pthread_mutex_lock(&pool_lock);
    if (pool_len == pool_capacity) {
        size_t capacity = pool_capacity ? pool_capacity * 2 : 16;
        bocpy_interp **grown = realloc(pool, capacity * sizeof(*grown));
        if (grown == NULL) {
            pthread_mutex_unlock(&pool_lock);
            return false; /* the caller ends the interpreter instead */
        }
        pool = grown;
        pool_capacity = capacity;
    }
    pool[pool_len++] = rec;
    pthread_mutex_unlock(&pool_lock);
    return true;
}

size_t bocpy_pool_size(void) {
    pthread_mutex_lock(&pool_lock);
    size_t n = pool_len;
    pthread_mutex_unlock(&pool_lock);
    return n;
}

void bocpy_pool_trim(size_t keep) {
    for (;;) {
        pthread_mutex_lock(&pool_lock);
        bocpy_interp *rec = pool_len > keep ? pool[--pool_len] : NULL;
        pthread_mutex_unlock(&pool_lock);
        if (rec == NULL) {
            return;
        }
        /* As _interpreters.destroy() does: a thread state for it on this
         * thread, made current after this thread let go of the main GIL
         * (never two GILs at once), then ended.  Py_EndInterpreter leaves
         * no thread state current; the main one is restored after. */
        PyThreadState *here = PyEval_SaveThread();
        PyThreadState *there = PyThreadState_New(rec->interp);
        if (there == NULL) {
            PyEval_RestoreThread(here);
            (void)bocpy_pool_put(rec); /* out of memory: try again another time */
            return;
        }
        PyEval_RestoreThread(there);
        Py_EndInterpreter(there);
        PyEval_RestoreThread(here);
    }
}
