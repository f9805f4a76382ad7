/*
 * cown_value.c: the Cown type, and the life of a cown's value.
 *
 * A cown's value is an object that lives in exactly one interpreter (its
 * "home") and may also have a serialised copy (a blob).  The value moves
 * lazily: it is only copied into another interpreter when a behavior
 * running there acquires the cown, so a chain of behaviors that stays on
 * one worker never pays for serialisation.
 *
 * Who may touch the value fields (obj, home, blob, is_exception) and when:
 *   - the holder: a behavior that requested the cown, while it runs, or the
 *     main thread between acquire() and release() -- or for the length of
 *     one read of .value/.exception outside a hold (read_unheld), which takes
 *     a hold for that time.  libboc guarantees one holder at a time and its
 *     release/acquire hand-off orders the previous holder's writes before
 *     the next holder's reads;
 *   - the destroyer, once the reference count is zero (no holder exists);
 *   - a stopping worker evacuating its residents, when the runtime is
 *     quiescent (no holder exists) -- racing only with destroyers, which is
 *     settled by the home's lock and a reference taken under it.
 * A resident list per worker interpreter lets that worker serialise every
 * value it still owns before its interpreter ends.
 *
 * Values that cannot leave.  A value whose pickled form is over 64 KiB is
 * not pickled again when a behavior changes it in place (that would copy it
 * at every release: quadratic for a chain that grows it); its copy goes
 * stale and it is pickled when it has to move.  A behavior may have left it
 * unpicklable by then (a list that gained a lock).  The rule is that no
 * successful behavior's effect is ever lost, so such a value is never put
 * back to an older copy; it stays, with every change, in the interpreter
 * that holds it (its home):
 *   - a behavior that needs it on another worker runs there instead: the
 *     worker gets BOCPY_VALUE_STUCK from bocpy_cown_materialize, undoes the
 *     holds it took, and runs the whole behavior inside the home
 *     interpreter on its own thread (worker.c, run_elsewhere), bringing the
 *     behavior's other values there;
 *   - when its worker stops (wait()), evacuation keeps it resident, and the
 *     interpreter goes to the pool with it (pool.c); the next runtime's
 *     workers take such interpreters first, so behaviors reach it again;
 *   - a reader elsewhere -- the main thread (.value, acquire(), unwrap()),
 *     a pinned behavior -- gets a TypeError naming the cown, the type and
 *     the cause, and nothing moves: it is never handed stale data.
 * Exact limits: (1) the value is lost only when its interpreter ends (the
 * pool closed: at exit, before fork(), or a kept interpreter that fails to
 * start again); then the cown gets a RuntimeError saying so (type, cause),
 * and the bocpy logger warns, naming the cown and the type.  (2) A behavior
 * that needs two such values stuck in two different interpreters, or one
 * stuck in a kept interpreter that no worker of this runtime took (a run
 * with fewer workers than interpreters holding such values), fails with the
 * TypeError, and the values stay as they are.  (3) The failure is found
 * when the value must move, not at the behavior that broke it: that
 * behavior, and every one after it, succeed.  A value that is picklable
 * again when it must move loses nothing at all.
 */
#include "bocpy.h"

#include <sched.h>
#include <string.h>

/* Serialised size above which a value changed in place is not re-checked
 * at every release (see bocpy_cown_settle). */
#define BOCPY_CHECK_IN_PLACE_MAX (64 * 1024)

static _Thread_local char tls_token_anchor;

uintptr_t bocpy_thread_token(void) {
    /* The address of a thread-local is unique among live threads. */
    return (uintptr_t)&tls_token_anchor;
}

/* ------------------------------------------------------ the side record */

/* The cown's side record, or NULL when it has none yet (any thread). */
static bocpy_cown_extra *extra_peek(bocpy_cown *c) {
    /* acquire: pairs with extra_get's release CAS (the record's contents). */
    return atomic_load_explicit(&c->extra, memory_order_acquire);
}

/* The cown's side record, made now if it has none; NULL when out of memory
 * (no exception set).  Safe on any thread that may touch the cown: the
 * record is installed once by compare-and-swap, a loser frees its own. */
static bocpy_cown_extra *extra_get(bocpy_cown *c) {
    bocpy_cown_extra *e = extra_peek(c);
    if (e != NULL) {
        return e;
    }
    bocpy_cown_extra *mine = calloc(1, sizeof(*mine));
    if (mine == NULL) {
        return NULL;
    }
    /* release on success: publishes the zeroed record; acquire on failure:
     * the winner's record, as extra_peek. */
    if (atomic_compare_exchange_strong_explicit(&c->extra, &e, mine, memory_order_acq_rel,
                                                memory_order_acquire)) {
        return mine;
    }
    free(mine);
    return e;
}

/* Why behaviors cannot have the value, or NULL (holder only). */
static const char *unavailable_of(bocpy_cown *c) {
    bocpy_cown_extra *e = extra_peek(c);
    return e != NULL ? e->unavailable : NULL;
}

/* The value is available again: a new one was stored (holder only). */
static void unavailable_clear(bocpy_cown *c) {
    bocpy_cown_extra *e = extra_peek(c);
    if (e != NULL && e->unavailable != NULL) {
        free(e->unavailable);
        e->unavailable = NULL;
    }
}

/* Behaviors can no longer have the value, because of `why` (malloc'd; taken
 * over, freed if there is nowhere to keep it).  Holder only. */
static void unavailable_set(bocpy_cown *c, char *why) {
    bocpy_cown_extra *e = why != NULL ? extra_get(c) : NULL;
    if (e == NULL) {
        free(why); /* out of memory: behaviors get the rebuild error each time */
        return;
    }
    free(e->unavailable);
    e->unavailable = why;
}

/* ------------------------------------------------------- inline values */

/* Whether `obj` can be held inline in a cown (bocpy_cown.scalar): sets the
 * kind and the scalar when it can.  Exact types only: a subclass may carry
 * state or behave differently, and goes through pickle like any object. */
static bool inline_of(PyObject *obj, uint8_t *kind, int64_t *i, double *f) {
    if (obj == Py_True || obj == Py_False) {
        *kind = obj == Py_True ? BOCPY_INLINE_TRUE : BOCPY_INLINE_FALSE;
        return true;
    }
    if (PyFloat_CheckExact(obj)) {
        *kind = BOCPY_INLINE_FLOAT;
        *f = PyFloat_AS_DOUBLE(obj);
        return true;
    }
    if (PyLong_CheckExact(obj)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return false;
        }
        *kind = BOCPY_INLINE_INT;
        *i = (int64_t)v;
        return true;
    }
    return false;
}

/* A new object for the cown's inline value, in the calling interpreter;
 * NULL with an exception (out of memory). */
static PyObject *inline_build(const bocpy_cown *c) {
    switch (c->inline_kind) {
    case BOCPY_INLINE_INT:
        return PyLong_FromLongLong((long long)c->scalar.i);
    case BOCPY_INLINE_FLOAT:
        return PyFloat_FromDouble(c->scalar.f);
    case BOCPY_INLINE_TRUE:
        Py_RETURN_TRUE;
    default:
        Py_RETURN_FALSE;
    }
}

/* ----------------------------------------------------------- residency */

/* The links of a cown that is (or was) resident: it has a side record,
 * made before it first moved into a worker (home_reserve). */
static bocpy_cown_extra *res_links(bocpy_cown *c) {
    /* relaxed: the home's lock, or the hold that made the record, orders
     * its install before this read. */
    return atomic_load_explicit(&c->extra, memory_order_relaxed);
}

static void resident_unlink_locked(bocpy_interp *rec, bocpy_cown *c) {
    if (!c->resident) {
        return;
    }
    bocpy_cown_extra *e = res_links(c);
    if (e->res_prev != NULL) {
        res_links(e->res_prev)->res_next = e->res_next;
    } else {
        rec->residents = e->res_next;
    }
    if (e->res_next != NULL) {
        res_links(e->res_next)->res_prev = e->res_prev;
    }
    e->res_prev = e->res_next = NULL;
    c->resident = false;
}

/* Makes sure the cown can move into `rec` (a worker's resident list needs
 * the side record): 0, or -1 with MemoryError.  Every path that may give a
 * cown a worker home calls this first, before it changes anything, so
 * set_home itself never fails. */
static int home_reserve(bocpy_cown *c, bocpy_interp *rec) {
    if (rec == NULL || rec->is_main || extra_get(c) != NULL) {
        return 0;
    }
    PyErr_NoMemory();
    return -1;
}

/* Moves the cown's home to `rec` (the caller holds the cown, and reserved
 * the move: home_reserve). */
static void set_home(bocpy_cown *c, bocpy_interp *rec) {
    /* relaxed: the holder is the only writer, and libboc's hand-off ordered
     * the previous holder's store before this hold. */
    bocpy_interp *old = atomic_load_explicit(&c->home, memory_order_relaxed);
    /* (resident is read without the lock: only a holder, or a thread that
     * excludes holders, changes it.)  The same worker home but not listed:
     * the value was a plain scalar given a home without a place
     * (set_home_unlisted); the object it is now needs the place. */
    if (old == rec && (rec == NULL || rec->is_main || c->resident)) {
        return;
    }
    if (old != NULL && old != rec && !old->is_main && c->resident) {
        pthread_mutex_lock(&old->lock);
        resident_unlink_locked(old, c);
        pthread_mutex_unlock(&old->lock);
    }
    if (rec != NULL && !rec->is_main) {
        bocpy_cown_extra *e = extra_peek(c);
        if (e == NULL) {
            /* Unreachable: every caller reserved the move (home_reserve)
             * and a record is never removed while the cown lives. */
            Py_FatalError("bocpy: a cown moved into a worker without its side record");
        }
        pthread_mutex_lock(&rec->lock);
        e->res_prev = NULL;
        e->res_next = rec->residents;
        if (rec->residents != NULL) {
            res_links(rec->residents)->res_prev = c;
        }
        rec->residents = c;
        c->resident = true;
        /* release: a destroyer that reads the new home under rec->lock, or
         * without the lock with acquire, sees the links made above. */
        atomic_store_explicit(&c->home, rec, memory_order_release);
        pthread_mutex_unlock(&rec->lock);
    } else {
        atomic_store_explicit(&c->home, rec, memory_order_release);
    }
}

/* Gives the cown's value, a plain scalar object (inline_of) of `rec`, its
 * home there without a place in the resident list, so without needing the
 * side record (the caller holds the cown).  Such an object never outlives
 * the hold: settling puts a plain scalar back inline before the hold ends
 * (bocpy_cown_settle), so no worker can stop with it.  A later store of
 * another object in the same hold links the cown (set_home). */
static void set_home_unlisted(bocpy_cown *c, bocpy_interp *rec) {
    /* relaxed: as in set_home. */
    bocpy_interp *old = atomic_load_explicit(&c->home, memory_order_relaxed);
    if (old != NULL && !old->is_main && c->resident) {
        pthread_mutex_lock(&old->lock);
        resident_unlink_locked(old, c);
        pthread_mutex_unlock(&old->lock);
    }
    /* release: as set_home. */
    atomic_store_explicit(&c->home, rec, memory_order_release);
}

/* Frees an object of `home` from any thread. */
static void release_object(bocpy_interp *home, PyObject *obj) {
    if (obj == NULL) {
        return;
    }
    if (home == NULL || bocpy_interp_is_current(home)) {
        Py_DECREF(obj);
    } else {
        bocpy_garbage_push(home, obj);
    }
}

/* ------------------------------------------------ unretrieved exceptions */

/* Cowns holding an exception that no one has read yet (so that the program's
 * end can report them), and the exceptions of such cowns that died (their
 * copies, or on the threads backend the exception objects themselves,
 * reported by the main interpreter when it next can).  One lock guards both
 * lists and every cown's unret_* links. */
typedef struct unretrieved_dead {
    struct unretrieved_dead *next;
    uint64_t id;
    bocpy_blob *blob; /* the copy, or NULL: then `obj` */
    /* A strong reference to a main-interpreter exception (a live value,
     * never serialised: the threads backend).  Taken over from the cown by
     * its destroyer, which may have no thread state: only the reporter,
     * a main-interpreter thread, touches its refcount. */
    PyObject *obj;
} unretrieved_dead;

static pthread_mutex_t unret_lock = PTHREAD_MUTEX_INITIALIZER;
static bocpy_cown *unret_live;
static unretrieved_dead *unret_dead, **unret_dead_tail = &unret_dead;
/* Whether unret_dead is non-empty: lets Cown_dealloc skip the lock.  relaxed:
 * a stale "empty" only delays a report to the next chance (wait(), exit). */
static atomic_bool unret_dead_pending;

/* The record of a listed cown (which has one: it was made before listing,
 * and the list's lock orders that before any walk that finds the cown). */
static bocpy_cown_extra *unret_links(bocpy_cown *c) {
    /* relaxed: unret_lock orders the install before this read (above). */
    return atomic_load_explicit(&c->extra, memory_order_relaxed);
}

static void unretrieved_unlink_locked(bocpy_cown *c) {
    bocpy_cown_extra *e = extra_peek(c);
    if (e == NULL || !e->unret_listed) {
        return;
    }
    if (e->unret_prev != NULL) {
        unret_links(e->unret_prev)->unret_next = e->unret_next;
    } else {
        unret_live = e->unret_next;
    }
    if (e->unret_next != NULL) {
        unret_links(e->unret_next)->unret_prev = e->unret_prev;
    }
    e->unret_prev = e->unret_next = NULL;
    e->unret_listed = false;
}

/* The holder stored a behavior's exception: it must be read. */
static void unretrieved_list(bocpy_cown *c) {
    c->unretrieved = true;
    bocpy_cown_extra *e = extra_get(c);
    if (e == NULL) {
        return; /* out of memory: only the report of a live cown at exit is lost */
    }
    pthread_mutex_lock(&unret_lock);
    if (!e->unret_listed) {
        e->unret_prev = NULL;
        e->unret_next = unret_live;
        if (unret_live != NULL) {
            unret_links(unret_live)->unret_prev = c;
        }
        unret_live = c;
        e->unret_listed = true;
    }
    pthread_mutex_unlock(&unret_lock);
}

/* The value was read or replaced (holder only). */
static void unretrieved_forget(bocpy_cown *c) {
    if (!c->unretrieved) {
        return; /* the common case: no lock */
    }
    c->unretrieved = false;
    pthread_mutex_lock(&unret_lock);
    unretrieved_unlink_locked(c);
    pthread_mutex_unlock(&unret_lock);
}

/* The destroyer of a cown whose exception nobody read: keep its copy (or,
 * with `live`, the main interpreter's exception object itself) for the main
 * interpreter to report.  Takes over `c->blob`, or with `live` `c->obj`. */
static void unretrieved_bury(bocpy_cown *c, bool live) {
    unretrieved_dead *dead = malloc(sizeof(*dead));
    if (dead == NULL) {
        return; /* the report is lost, the program is not */
    }
    dead->next = NULL;
    dead->id = c->base.id;
    dead->blob = NULL;
    dead->obj = NULL;
    if (live) {
        dead->obj = c->obj;
        c->obj = NULL;
    } else {
        dead->blob = c->blob;
        c->blob = NULL;
    }
    pthread_mutex_lock(&unret_lock);
    *unret_dead_tail = dead;
    unret_dead_tail = &dead->next;
    /* relaxed: see the declaration. */
    atomic_store_explicit(&unret_dead_pending, true, memory_order_relaxed);
    pthread_mutex_unlock(&unret_lock);
}

/* ------------------------------------------------------------ lifecycle */

/* Destruction may cascade (a blob holds cowns whose blobs hold cowns...);
 * the outermost destroy on a thread owns a work list that nested ones push
 * to, which keeps the C stack flat however long the chain. */
typedef struct doomed_list {
    bocpy_cown *small[32];
    bocpy_cown **items;
    size_t len, cap;
} doomed_list;

static _Thread_local doomed_list *tls_doomed;

static void destroy_one(bocpy_cown *c) {
    bocpy_interp *home;
    for (;;) {
        /* acquire pairs with set_home's and evacuation's release stores. */
        home = atomic_load_explicit(&c->home, memory_order_acquire);
        if (home == NULL || home->is_main) {
            break;
        }
        pthread_mutex_lock(&home->lock);
        /* relaxed: home->lock, taken by every change away from `home`,
         * orders this read. */
        bool still_home = atomic_load_explicit(&c->home, memory_order_relaxed) == home;
        if (still_home) {
            resident_unlink_locked(home, c);
        }
        pthread_mutex_unlock(&home->lock);
        if (still_home) {
            break;
        }
    }
    bocpy_cown_extra *e = extra_peek(c);
    if (e != NULL && e->unret_listed) {
        pthread_mutex_lock(&unret_lock);
        unretrieved_unlink_locked(c);
        pthread_mutex_unlock(&unret_lock);
    }
    if (c->unretrieved && c->inline_kind == BOCPY_INLINE_NONE && c->blob != NULL &&
        !c->blob_stale) {
        unretrieved_bury(c, false);
    } else if (c->unretrieved && c->obj != NULL && home != NULL && home->is_main) {
        /* No copy (the threads backend stores results as they are): the
         * object itself is reported, by a main-interpreter thread. */
        unretrieved_bury(c, true);
    }
    release_object(home, c->obj);
    if (c->inline_kind == BOCPY_INLINE_NONE) {
        bocpy_blob_free(c->blob);
    }
    if (e != NULL) {
        release_object(home, e->hold_before);
        free(e->unavailable);
        free(e);
    }
    boc_block_free(c, sizeof(*c));
}

static bool doomed_push(doomed_list *list, bocpy_cown *c) {
    if (list->len == list->cap) {
        size_t cap = list->cap * 2;
        bocpy_cown **grown = list->items == list->small
                                 ? malloc(cap * sizeof(*grown))
                                 : realloc(list->items, cap * sizeof(*grown));
        if (grown == NULL) {
            return false;
        }
        if (list->items == list->small) {
            memcpy(grown, list->small, sizeof(list->small));
        }
        list->items = grown;
        list->cap = cap;
    }
    list->items[list->len++] = c;
    return true;
}

static void cown_destroy(boc_cown *base) {
    bocpy_cown *c = (bocpy_cown *)base;
    doomed_list *outer = tls_doomed;
    if (outer != NULL) {
        if (!doomed_push(outer, c)) {
            destroy_one(c); /* no room to defer: recurse this once */
        }
        return; /* the outermost call will get to it */
    }
    doomed_list list = {.len = 0, .cap = 32};
    list.items = list.small;
    tls_doomed = &list;
    destroy_one(c);
    while (list.len > 0) {
        destroy_one(list.items[--list.len]);
    }
    tls_doomed = NULL;
    if (list.items != list.small) {
        free(list.items);
    }
}

/* The size that makes a cown's malloc chunk 96 bytes (glibc: the request
 * plus an 8-byte header, rounded up to 16): keep new fields rare, in
 * bocpy_cown_extra. */
#if SIZE_MAX == UINT64_MAX
_Static_assert(sizeof(bocpy_cown) <= 88, "bocpy_cown outgrew its 96-byte malloc chunk");
#endif

bocpy_cown *bocpy_cown_new_flags(uint32_t flags) {
    /* Usually freed by a worker when made by the main thread, and the other
     * way round: boc_block_alloc recycles it without malloc's arena lock. */
    bocpy_cown *c = boc_block_alloc(sizeof(*c));
    if (c == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    boc_cown_init(&c->base, flags, cown_destroy);
    return c;
}

bocpy_cown *bocpy_cown_new(void) { return bocpy_cown_new_flags(0); }

/* -------------------------------------------------------------- values */

typedef struct foreign_pickle {
    bocpy_cown *cown;
    bocpy_interp *home;
    bocpy_blob *blob;
    char *error; /* why pickling failed (plain C copy for the caller) */
    char *type;  /* the value's type name, when pickling failed */
} foreign_pickle;

/* strdup of str(obj), or of `fallback` (clears any error). */
static char *text_of(PyObject *obj, const char *fallback) {
    PyObject *text = obj ? PyObject_Str(obj) : NULL;
    const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
    char *copy = strdup(utf8 ? utf8 : fallback);
    PyErr_Clear();
    Py_XDECREF(text);
    return copy;
}

static void foreign_pickle_run(void *arg) {
    foreign_pickle *fp = arg;
    bocpy_cown *c = fp->cown;
    fp->blob = bocpy_serialise_move(fp->home->state, c->obj);
    if (fp->blob == NULL) {
        /* A plain value kept without a copy (then this is MemoryError or
         * an interrupt), or a large one changed in place that can no longer
         * be pickled: either way it stays here, as it is -- nothing that
         * behaviors did to it is undone (see "Values that cannot leave"). */
        PyObject *exc = PyErr_GetRaisedException();
        fp->error = text_of(exc, "unknown error");
        fp->type = strdup(Py_TYPE(c->obj)->tp_name);
        Py_XDECREF(exc);
        return;
    }
    /* relaxed: a counter (bocpy_interp_stats). */
    atomic_fetch_add_explicit(&fp->home->stats.foreign_pickles, 1, memory_order_relaxed);
    /* The copy replaces the original: free it while we hold its GIL. */
    PyObject *obj = c->obj;
    c->obj = NULL;
    set_home(c, NULL);
    Py_DECREF(obj);
}

/* Adds `note` (a new reference, may be NULL) to exception `exc` (best effort). */
static void add_note(PyObject *exc, PyObject *note) {
    PyObject *rv = note ? PyObject_CallMethod(exc, "add_note", "O", note) : NULL;
    if (rv == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(rv);
    Py_XDECREF(note);
}

/* The value's copy failed to rebuild in `here`: the pending exception is the
 * original one (what unpickling raised); it gets a note saying where, and a
 * worker marks the value unavailable to behaviors from now on, so that later
 * behaviors get a clear error rather than the same failure each time. */
static int rebuild_failed(bocpy_cown *c, bocpy_interp *here) {
    PyObject *exc = PyErr_GetRaisedException();
    if (!PyErr_GivenExceptionMatches(exc, PyExc_Exception) ||
        PyErr_GivenExceptionMatches(exc, PyExc_MemoryError)) {
        PyErr_SetRaisedException(exc); /* Ctrl-C, out of memory: not the value's fault */
        return -1;
    }
    PyObject *where = here->is_main ? PyUnicode_FromString("the main interpreter")
                                    : PyUnicode_FromFormat("worker %d", here->worker_index);
    if (where == NULL) {
        PyErr_Clear();
        PyErr_SetRaisedException(exc);
        return -1;
    }
    add_note(exc, PyUnicode_FromFormat(
                      "bocpy: raised while rebuilding the value of cown %llu in %U%s",
                      (unsigned long long)c->base.id, where,
                      here->is_main ? ""
                                    : "; the value is now unavailable to behaviors (the main "
                                      "thread can still read it, or give the cown a new value)"));
    if (!here->is_main && unavailable_of(c) == NULL) {
        PyObject *text = PyUnicode_FromFormat(
            "the value of this cown is permanently unavailable to behaviors: it could not be "
            "rebuilt in %U (%.200s: %S); make its class importable (and its pickling work) in "
            "every interpreter, then give the cown a new value from the main thread",
            where, Py_TYPE(exc)->tp_name, exc);
        const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
        unavailable_set(c, strdup(utf8 ? utf8 : "the value of this cown could not be rebuilt"));
        Py_XDECREF(text);
        PyErr_Clear();
    }
    Py_DECREF(where);
    PyErr_SetRaisedException(exc);
    return -1;
}

int bocpy_cown_materialize(bocpy_cown *c, bocpy_interp *here) {
    const char *unavailable = here->is_main ? NULL : unavailable_of(c);
    if (unavailable != NULL) {
        PyErr_SetString(PyExc_RuntimeError, unavailable);
        return -1;
    }
    if (c->inline_kind != BOCPY_INLINE_NONE) {
        /* Rebuilt here without pickling; the object is the value until the
         * hold settles (and puts it back inline). */
        PyObject *value = inline_build(c);
        if (value == NULL) {
            return -1;
        }
        c->inline_kind = BOCPY_INLINE_NONE;
        c->blob = NULL; /* the scalar's bytes: no copy now */
        c->obj = value;
        /* A home without a place in its resident list (no side record
         * needed): the object is a plain scalar that settling puts back
         * inline before the hold ends, so no worker can stop with it --
         * unless the holder stores another (not plain scalar) value, which
         * reserves the move (Cown_set_value) and links the cown then.  An
         * inline cown is never resident (see bocpy_cown.inline_kind). */
        set_home_unlisted(c, here);
        return 0;
    }
    /* relaxed: the caller holds the cown (see set_home). */
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    if (c->obj != NULL && home == here) {
        return 0;
    }
    if (home_reserve(c, here) < 0) {
        return -1;
    }
    if (c->base.flags & BOC_COWN_PINNED) {
        if (here->is_main) {
            return 0; /* None, or the object already here */
        }
        PyErr_SetString(PyExc_RuntimeError,
                        "the value of a PinnedCown never leaves the main interpreter; schedule "
                        "a behavior on it (@when(pinned)) and it runs on the main thread, inside "
                        "bocpy.pump() or wait()");
        return -1;
    }
    if (c->obj == NULL && (c->blob == NULL || c->blob_stale)) {
        return 0; /* the value is None (perhaps stored during this hold) */
    }
    if (c->blob == NULL || c->blob_stale) {
        /* The live object, in another interpreter, is the only current
         * copy: pickle it there.  Values are checked when a hold ends,
         * except plain ones and large ones changed in place
         * (bocpy_cown_settle), so this fails only if one of those became
         * unpicklable. */
        if (home == NULL || home->state == NULL) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the interpreter holding this cown's value is gone");
            return -1;
        }
        foreign_pickle fp = {.cown = c, .home = home};
        if (!bocpy_interp_call_in(home, foreign_pickle_run, &fp)) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the interpreter holding this cown's value is gone");
            return -1;
        }
        if (fp.blob == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "the value of cown %llu (type '%.200s') cannot be copied out of the "
                         "worker interpreter that holds it: a behavior changed it in place "
                         "into a state that cannot be pickled (%s).  Nothing is lost: it stays "
                         "there with every change made to it.  %s; make it picklable again (or "
                         "give the cown a new value) in a behavior",
                         (unsigned long long)c->base.id, fp.type ? fp.type : "?",
                         fp.error ? fp.error : "out of memory",
                         here->is_main
                             ? "Behaviors that request the cown run there, but the main thread "
                               "cannot read it"
                             : "This behavior could not run there: it also needs a value that "
                               "another interpreter holds in the same state, or no worker of "
                               "this run owns that interpreter (start more workers)");
            free(fp.error);
            free(fp.type);
            return BOCPY_VALUE_STUCK;
        }
        bocpy_blob_free(c->blob);
        c->blob = fp.blob;
        c->blob_stale = false;
        home = NULL;
    }
    PyObject *value = bocpy_deserialise(here->state, c->blob);
    if (value == NULL) {
        return rebuild_failed(c, here);
    }
    PyObject *old = c->obj;
    c->obj = value;
    set_home(c, here);
    release_object(home, old);
    if (bocpy_blob_moves(c->blob)) {
        /* Its buffers now belong to `value`: the blob was single use. */
        bocpy_blob_free(c->blob);
        c->blob = NULL;
    }
    /* relaxed: a counter (bocpy_interp_stats). */
    atomic_fetch_add_explicit(&here->stats.migrations_in, 1, memory_order_relaxed);
    return 0;
}

int bocpy_cown_store(bocpy_cown *c, bocpy_interp *here, PyObject *obj, bool is_exception) {
    if (obj != Py_None && home_reserve(c, here) < 0) {
        return -1;
    }
    /* relaxed: the caller holds the cown (see set_home). */
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    PyObject *old = c->obj;
    c->obj = obj == Py_None ? NULL : Py_NewRef(obj);
    if (c->inline_kind == BOCPY_INLINE_NONE) {
        bocpy_blob_free(c->blob);
    }
    c->inline_kind = BOCPY_INLINE_NONE;
    c->blob = NULL;
    c->blob_stale = false;
    c->is_exception = is_exception;
    unavailable_clear(c);
    /* A behavior's exception must be read, or it is reported; not the ones
     * that only say a behavior was dropped because the program is ending
     * on an error (that error is reported already). */
    /* relaxed: a lone flag (see its definition in lifecycle.c). */
    if (is_exception && !atomic_load_explicit(&bocpy_cancelling, memory_order_relaxed)) {
        unretrieved_list(c);
    } else {
        unretrieved_forget(c);
    }
    set_home(c, c->obj ? here : NULL);
    release_object(home, old);
    return 0;
}

void bocpy_cown_store_result(bocpy_cown *c, bocpy_interp *here, PyObject *obj, bool is_exception,
                             bocpy_blob *blob) {
    uint8_t kind = BOCPY_INLINE_NONE;
    int64_t ival = 0;
    double fval = 0.0;
    if (!is_exception && obj != Py_None && inline_of(obj, &kind, &ival, &fval)) {
        /* A plain scalar result: inline, no object, no copy. */
        bocpy_cown_store(c, here, Py_None, false); /* cannot fail: None */
        bocpy_blob_free(blob);
        c->inline_kind = kind;
        if (kind == BOCPY_INLINE_INT) {
            c->scalar.i = ival;
        } else if (kind == BOCPY_INLINE_FLOAT) {
            c->scalar.f = fval;
        }
        return;
    }
    if (bocpy_cown_store(c, here, obj, is_exception) < 0) {
        /* No memory to keep the live object here: the copy alone is the
         * value (None without one).  Storing None never fails. */
        PyErr_Clear();
        bocpy_cown_store(c, here, Py_None, is_exception);
    }
    c->blob = blob;
}

int bocpy_cown_settle(bocpy_state *st, bocpy_cown *c, bocpy_interp *here, PyObject *before) {
    PyObject *now = c->obj;
    if (c->base.flags & BOC_COWN_PINNED) {
        return 0; /* the value never leaves the main interpreter */
    }
    if (now == NULL) {
        bocpy_blob_free(c->blob);
        c->blob = NULL;
        c->blob_stale = false;
        return 0;
    }
    uint8_t kind = BOCPY_INLINE_NONE;
    int64_t ival = 0;
    double fval = 0.0;
    if (inline_of(now, &kind, &ival, &fval)) {
        /* A plain scalar (exact int that fits 64 bits, float, bool): kept
         * inline, with no object and no copy -- it always crosses, and any
         * interpreter rebuilds it without pickling. */
        /* relaxed: the caller holds the cown (see set_home). */
        bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
        bocpy_blob_free(c->blob);
        c->blob = NULL;
        c->blob_stale = false;
        c->obj = NULL;
        set_home(c, NULL); /* leaves the resident list: the union is free */
        c->inline_kind = kind;
        if (kind == BOCPY_INLINE_INT) {
            c->scalar.i = ival;
        } else if (kind == BOCPY_INLINE_FLOAT) {
            c->scalar.f = fval;
        }
        release_object(home, now);
        return 0;
    }
    bool plain = bocpy_is_plain_immutable(st, now);
    if (plain && now == before && c->blob != NULL && !c->blob_stale) {
        return 0; /* unchanged and unchangeable: the copy is still right */
    }
    if (!here->is_main && plain) {
        /* On a worker, copy lazily: a plain value is cheap to pickle if it
         * ever has to move, and it cannot become unpicklable.  The copy
         * stays right only if the object is the one it was made from. */
        if (now != before) {
            bocpy_blob_free(c->blob);
            c->blob = NULL;
        }
        c->blob_stale = false;
        return 0;
    }
    if (!here->is_main && now == before && c->blob != NULL &&
        c->blob->size > BOCPY_CHECK_IN_PLACE_MAX) {
        /* The same large object, perhaps changed in place: copying it at
         * every release would make a chain of behaviors that grows it cost
         * quadratic time, so it is pickled afresh only when it has to move
         * (the live object is the value; the copy is older).  If it cannot
         * be pickled then, it stays here with every change made to it, and
         * the behavior that needed it elsewhere gets the error (see
         * bocpy_cown_materialize). */
        c->blob_stale = true;
        return 0;
    }
    /* A new object, a small one perhaps changed in place, or any value the
     * main thread releases (so that workers never have to enter the main
     * interpreter for it): check now that it can cross, and keep the copy.
     * A refusal belongs to this hold: the cown goes back to the value it
     * found, and no other behavior's work is undone. */
    bocpy_blob *blob = bocpy_serialise_move(st, now);
    if (blob == NULL) {
        if (now != before) {
            /* A new object: put back the one the hold found (the live
             * object is the value again; any copy may be older). */
            c->obj = Py_XNewRef(before);
            c->blob_stale = c->blob != NULL;
            set_home(c, c->obj ? here : NULL);
            Py_DECREF(now);
        } else if (c->blob != NULL) {
            /* The object itself was changed in place.  It is small (or on
             * the main thread), so its copy was exact when the hold began
             * (such values are checked at every release, and a hold never
             * replaces the copy): go back to it. */
            c->obj = NULL;
            c->blob_stale = false;
            set_home(c, NULL);
            release_object(here, now);
        }
        return -1;
    }
    bocpy_blob_free(c->blob);
    c->blob = blob;
    c->blob_stale = false;
    if (bocpy_blob_moves(blob)) {
        /* Buffers moved into the blob (<bocpy/move.h>): what is left here
         * is stale, and the blob is now the value. */
        c->obj = NULL;
        set_home(c, NULL);
        release_object(here, now);
    }
    return 0;
}

/* Reports of values lost because the interpreter holding them ended: made
 * in that interpreter (maybe on a worker thread), logged by the main one. */
typedef struct lost_report {
    struct lost_report *next;
    char *text;
} lost_report;

static pthread_mutex_t lost_lock = PTHREAD_MUTEX_INITIALIZER;
static lost_report *lost_head, **lost_tail = &lost_head;

static void lost_push(char *text) {
    lost_report *r = text ? malloc(sizeof(*r)) : NULL;
    if (r == NULL) {
        free(text);
        return; /* the report is lost; the cown still says why */
    }
    r->next = NULL;
    r->text = text;
    pthread_mutex_lock(&lost_lock);
    *lost_tail = r;
    lost_tail = &r->next;
    pthread_mutex_unlock(&lost_lock);
}

void bocpy_report_lost_values(void) {
    for (;;) {
        pthread_mutex_lock(&lost_lock);
        lost_report *r = lost_head;
        if (r != NULL) {
            lost_head = r->next;
            if (lost_head == NULL) {
                lost_tail = &lost_head;
            }
        }
        pthread_mutex_unlock(&lost_lock);
        if (r == NULL) {
            return;
        }
        bocpy_log_warning(PyUnicode_FromString(r->text));
        free(r->text);
        free(r);
    }
}

/* The interpreter holding `obj`, the value of `c`, ends and it cannot be
 * pickled (that error is pending): the value is gone.  The cown gets an
 * exception that says so -- never an older copy, which would silently undo
 * the behaviors that changed it since -- and the main interpreter logs it. */
static void lose_value(bocpy_state *st, bocpy_cown *c, PyObject *obj) {
    PyObject *cause = PyErr_GetRaisedException();
    PyErr_Format(PyExc_RuntimeError,
                 "bocpy: the value of cown %llu (type '%.200s') was lost: the worker "
                 "interpreter holding it ended (the pool of worker interpreters was closed: "
                 "at exit, before fork(), or by a failed worker start) while a behavior had "
                 "left it in a state that cannot be pickled (%S)",
                 (unsigned long long)c->base.id, Py_TYPE(obj)->tp_name, cause);
    PyObject *exc = PyErr_GetRaisedException();
    Py_XDECREF(cause);
    lost_push(text_of(exc, "bocpy: the value of a cown was lost"));
    bocpy_blob_free(c->blob);
    c->blob = exc ? bocpy_serialise(st, exc) : NULL;
    c->blob_stale = false;
    c->is_exception = c->blob != NULL;
    Py_XDECREF(exc);
    PyErr_Clear();
}

static void resident_link_locked(bocpy_interp *rec, bocpy_cown *c) {
    bocpy_cown_extra *e = res_links(c); /* it was resident: it has one */
    e->res_prev = NULL;
    e->res_next = rec->residents;
    if (rec->residents != NULL) {
        res_links(rec->residents)->res_prev = c;
    }
    rec->residents = c;
    c->resident = true;
}

/* Takes the first resident of `rec` off its list, with a reference so that
 * no destroyer frees it while the caller works on it outside the lock; NULL
 * once none is left.  Cowns already being destroyed are skipped: their
 * destroyer waits for this lock and unlinks them, and we wait for that. */
static bocpy_cown *resident_take(bocpy_interp *rec) {
    for (;;) {
        pthread_mutex_lock(&rec->lock);
        bocpy_cown *c = rec->residents;
        /* Take a reference so that no destroyer can free the cown while we
         * work on it outside the lock; skip cowns already being destroyed
         * (their destroyer is waiting for this lock and will unlink them).
         * Holding rec->lock keeps a listed cown's memory valid for the try,
         * as boc_cown_try_incref requires. */
        while (c != NULL && !boc_cown_try_incref(&c->base)) {
            c = res_links(c)->res_next;
        }
        if (c != NULL) {
            resident_unlink_locked(rec, c);
        }
        bool empty = rec->residents == NULL;
        pthread_mutex_unlock(&rec->lock);
        if (c != NULL || empty) {
            return c;
        }
        sched_yield();
    }
}

void bocpy_cown_evacuate_all(bocpy_state *st, bocpy_interp *rec, bool final) {
    /* Cowns whose value stays here (it cannot be pickled): taken off the
     * list while we work, with a reference, and put back at the end. */
    bocpy_cown *kept = NULL;
    for (;;) {
        bocpy_cown *c = resident_take(rec);
        if (c == NULL) {
            break;
        }

        PyObject *obj = c->obj;
        if (obj != NULL && (c->blob == NULL || c->blob_stale)) {
            bocpy_blob *fresh = bocpy_serialise_move(st, obj);
            if (fresh == NULL && !final) {
                /* A behavior changed it in place into something that cannot
                 * be pickled.  Going back to an older copy would undo every
                 * behavior since, so it stays here, with this interpreter,
                 * in the pool; a later behavior runs here to reach it. */
                PyErr_Clear();
                res_links(c)->res_next = kept;
                kept = c;
                continue; /* keeps our reference until it is linked again */
            }
            if (fresh == NULL) {
                lose_value(st, c, obj);
            } else {
                bocpy_blob_free(c->blob);
                c->blob = fresh;
                c->blob_stale = false;
            }
        }
        c->obj = NULL;
        /* release: pairs with destroy_one's acquire load of the home. */
        atomic_store_explicit(&c->home, NULL, memory_order_release);
        Py_XDECREF(obj);
        boc_cown_decref(&c->base);
    }
    /* This is still their home (no one moves a value while no behavior
     * runs): link each again, then drop our reference outside the lock --
     * a last one destroys the cown, whose destroyer takes the lock. */
    while (kept != NULL) {
        bocpy_cown *c = kept;
        kept = res_links(c)->res_next;
        pthread_mutex_lock(&rec->lock);
        resident_link_locked(rec, c);
        pthread_mutex_unlock(&rec->lock);
        boc_cown_decref(&c->base);
    }
}

void bocpy_cown_abandon_residents(bocpy_interp *rec) {
    for (;;) {
        bocpy_cown *c = resident_take(rec);
        if (c == NULL) {
            return;
        }
        PyObject *obj = c->obj;
        if (obj != NULL && (c->blob == NULL || c->blob_stale)) {
            /* No copy is current and Python can no longer make one here:
             * behaviors get this error; the main thread reads None. */
            char text[256];
            snprintf(text, sizeof(text),
                     "bocpy: the value of cown %llu (type '%.100s') was lost: the worker "
                     "interpreter holding it ended before it could be pickled",
                     (unsigned long long)c->base.id, Py_TYPE(obj)->tp_name);
            unavailable_set(c, strdup(text));
            lost_push(strdup(text));
            bocpy_blob_free(c->blob);
            c->blob = NULL;
            c->blob_stale = false;
        }
        c->obj = NULL;
        /* release: pairs with destroy_one's acquire load of the home. */
        atomic_store_explicit(&c->home, NULL, memory_order_release);
        Py_XDECREF(obj);
        boc_cown_decref(&c->base);
    }
}

/* ------------------------------------------- reporting unread exceptions */

/* Logs one unread exception (`exc`, or NULL when it could not be rebuilt:
 * then the rebuild error is pending).  Never fails: a failing handler is
 * reported as unraisable, as logging itself does. */
static void log_unretrieved(PyObject *error_method, uint64_t id, PyObject *exc) {
    PyObject *info = exc;
    const char *format = "bocpy: an exception raised by a behavior was never retrieved (result "
                         "cown %llu): read it with unwrap(), .value or .exception";
    if (exc == NULL) {
        info = PyErr_GetRaisedException();
        format = "bocpy: an exception raised by a behavior was never retrieved (result cown "
                 "%llu), and it could not be rebuilt here to show it";
    }
    PyObject *message = PyUnicode_FromFormat(format, (unsigned long long)id);
    PyObject *args = message ? PyTuple_Pack(1, message) : NULL;
    PyObject *kwargs = args
                           ? Py_BuildValue("{sO}", "exc_info",
                                           info && PyExceptionInstance_Check(info) ? info : Py_None)
                           : NULL;
    PyObject *rv = kwargs ? PyObject_Call(error_method, args, kwargs) : NULL;
    if (rv == NULL) {
        PyErr_WriteUnraisable(error_method);
    }
    Py_XDECREF(rv);
    Py_XDECREF(kwargs);
    Py_XDECREF(args);
    Py_XDECREF(message);
    if (exc == NULL) {
        Py_XDECREF(info);
    }
}

/* The unread exception of a live cown, for the report at exit (the caller
 * holds the cown): new reference, or NULL with the rebuild error set. */
static PyObject *unretrieved_value(bocpy_state *st, bocpy_cown *c) {
    /* relaxed: the caller holds the cown (see set_home). */
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    if (c->obj != NULL && home == st->interp) {
        return Py_NewRef(c->obj);
    }
    if (c->blob != NULL && !c->blob_stale) {
        return bocpy_deserialise(st, c->blob);
    }
    PyErr_SetString(PyExc_RuntimeError, "its value lives in a worker that is still running");
    return NULL;
}

/* Reports the live cowns with an unread exception (the program is ending). */
static Py_ssize_t report_live(bocpy_state *st, PyObject *error_method) {
    /* Take a reference to each under the lock (skipping cowns already being
     * destroyed: their destroyer waits for the lock and then buries them),
     * and report outside it, where logging may run any code.  The lock keeps
     * a listed cown's memory valid for boc_cown_try_incref. */
    size_t n = 0, cap = 0;
    bocpy_cown **cowns = NULL;
    pthread_mutex_lock(&unret_lock);
    for (bocpy_cown *c = unret_live; c != NULL; c = unret_links(c)->unret_next) {
        cap++;
    }
    cowns = cap ? malloc(cap * sizeof(*cowns)) : NULL;
    for (bocpy_cown *c = unret_live; cowns != NULL && c != NULL; c = unret_links(c)->unret_next) {
        if (boc_cown_try_incref(&c->base)) {
            cowns[n++] = c;
        }
    }
    pthread_mutex_unlock(&unret_lock);
    if (cap > 0 && cowns == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t reported = 0;
    for (size_t i = 0; i < n; i++) {
        bocpy_cown *c = cowns[i];
        boc_request req;
        /* A cown still held or awaited is someone's to read. */
        if (boc_cown_try_hold(&c->base, &req)) {
            if (c->unretrieved) {
                PyObject *exc = unretrieved_value(st, c);
                unretrieved_forget(c);
                log_unretrieved(error_method, c->base.id, exc);
                Py_XDECREF(exc);
                reported++;
            }
            boc_cown_unhold(&req);
        }
        boc_cown_decref(&c->base);
    }
    free(cowns);
    return reported;
}

Py_ssize_t bocpy_report_unretrieved(bocpy_state *st, bool live) {
    /* A handler that drops a cown must not report from inside this report.
     * Per thread: on a free-threaded build two program threads may report
     * at once, each popping its own entries under unret_lock. */
    static _Thread_local bool reporting;
    assert(st->interp->is_main);
    if (reporting) {
        return 0;
    }
    bocpy_report_lost_values();
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "bocpy") : NULL;
    PyObject *error_method = logger ? PyObject_GetAttrString(logger, "error") : NULL;
    Py_XDECREF(logger);
    Py_XDECREF(logging);
    if (error_method == NULL) {
        return -1;
    }
    reporting = true;
    Py_ssize_t reported = 0;
    for (;;) {
        pthread_mutex_lock(&unret_lock);
        unretrieved_dead *dead = unret_dead;
        if (dead != NULL) {
            unret_dead = dead->next;
            if (unret_dead == NULL) {
                unret_dead_tail = &unret_dead;
            }
        } else {
            /* relaxed: see the declaration (under unret_lock, like the set). */
            atomic_store_explicit(&unret_dead_pending, false, memory_order_relaxed);
        }
        pthread_mutex_unlock(&unret_lock);
        if (dead == NULL) {
            break;
        }
        PyObject *exc = dead->obj != NULL ? dead->obj : bocpy_deserialise(st, dead->blob);
        log_unretrieved(error_method, dead->id, exc);
        Py_XDECREF(exc); /* dead->obj's reference too */
        bocpy_blob_free(dead->blob);
        free(dead);
        reported++;
    }
    if (live) {
        Py_ssize_t more = report_live(st, error_method);
        reported = more < 0 ? -1 : reported + more;
    }
    reporting = false;
    Py_DECREF(error_method);
    return reported;
}

PyObject *bocpy_core_report_unretrieved(PyObject *module, PyObject *live) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (!st->interp->is_main) {
        PyErr_SetString(PyExc_RuntimeError, "_report_unretrieved() is for the main interpreter");
        return NULL;
    }
    int all = PyObject_IsTrue(live);
    if (all < 0) {
        return NULL;
    }
    Py_ssize_t reported = bocpy_report_unretrieved(st, all);
    return reported < 0 ? NULL : PyLong_FromSsize_t(reported);
}

/* ----------------------------------------------------------- the type */

static const char NOT_HELD[] =
    "this cown's value is only reachable while you hold the cown: inside a "
    "behavior that requested it (@when(cown)), or on the main thread between "
    "cown.acquire() and cown.release() (or in 'with cown as value:'); the main "
    "thread may also read it whenever no behavior holds the cown or waits for it "
    "(after bocpy.wait() or bocpy.quiesce())";

static const char BUSY_READ[] =
    "this cown's value cannot be read now: a behavior holds the cown or waits for "
    "it (or another thread acquired it); read it inside a behavior that requests "
    "it (@when(cown)), or after bocpy.wait() or bocpy.quiesce()";

static const char PINNED_BUSY_READ[] =
    "this PinnedCown's value cannot be read now: a pinned behavior running on the "
    "main thread holds it (or another thread acquired it); read it inside a "
    "behavior that requests it, or between pumps";

bool bocpy_cown_check(bocpy_state *st, PyObject *obj) {
    return PyObject_TypeCheck(obj, st->cown_type);
}

PyObject *bocpy_cown_wrap(bocpy_state *st, bocpy_cown *cown) {
    PyTypeObject *type = (cown->base.flags & BOC_COWN_PINNED) ? st->pinned_type : st->cown_type;
    CownObject *self = PyObject_New(CownObject, type);
    if (self == NULL) {
        return NULL;
    }
    boc_cown_incref(&cown->base);
    self->cown = cown;
    return (PyObject *)self;
}

bocpy_state *bocpy_cown_parse_new(PyTypeObject *type, PyObject *args, PyObject *kwds,
                                  const char *format, PyObject **value) {
    static char *kwlist[] = {"value", NULL};
    *value = Py_None;
    /* The common `Cown(v)` without the parser (~300 instructions, at each
     * cown); keywords and mistakes take the parser's way and messages. */
    if ((kwds == NULL || PyDict_GET_SIZE(kwds) == 0) && PyTuple_GET_SIZE(args) <= 1) {
        if (PyTuple_GET_SIZE(args) == 1) {
            *value = PyTuple_GET_ITEM(args, 0);
        }
        return bocpy_state_of_type(type);
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, kwlist, value)) {
        return NULL;
    }
    return bocpy_state_of_type(type);
}

PyObject *bocpy_cown_object_new(PyTypeObject *type, bocpy_cown *c) {
    CownObject *self = (CownObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        boc_cown_decref(&c->base);
        return NULL;
    }
    self->cown = c; /* takes over the caller's reference */
    return (PyObject *)self;
}

static PyObject *Cown_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *value;
    bocpy_state *st = bocpy_cown_parse_new(type, args, kwds, "|O:Cown", &value);
    if (st == NULL) {
        return NULL;
    }
    bocpy_cown *c = bocpy_cown_new();
    if (c == NULL) {
        return NULL;
    }
    uint8_t kind = BOCPY_INLINE_NONE;
    int64_t ival = 0;
    double fval = 0.0;
    if (value != Py_None && !bocpy_backend_shares_values() &&
        inline_of(value, &kind, &ival, &fval)) {
        /* A plain scalar: inline, no object and no copy (see bocpy_cown). */
        c->inline_kind = kind;
        if (kind == BOCPY_INLINE_INT) {
            c->scalar.i = ival;
        } else if (kind == BOCPY_INLINE_FLOAT) {
            c->scalar.f = fval;
        }
    } else if (value != Py_None) {
        if (home_reserve(c, st->interp) < 0) {
            boc_cown_decref(&c->base);
            return NULL;
        }
        /* (On the threads backend values never cross: no check, no copy.) */
        if (!bocpy_backend_shares_values() &&
            (st->interp->is_main || !bocpy_is_plain_immutable(st, value))) {
            /* Check now, where the user can see which value is at fault,
             * and keep the copy: workers will start from it without
             * entering this interpreter. */
            c->blob = bocpy_serialise_move(st, value);
            if (c->blob == NULL) {
                boc_cown_decref(&c->base);
                return NULL;
            }
        }
        if (!bocpy_blob_moves(c->blob)) { /* else the cown owns the moved buffers */
            c->obj = Py_NewRef(value);
            set_home(c, st->interp);
        }
    }
    return bocpy_cown_object_new(type, c);
}

static void Cown_dealloc(CownObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->cown != NULL) {
        boc_cown_decref(&self->cown->base);
    }
    tp->tp_free((PyObject *)self);
    /* A result cown whose exception nobody read may just have died: say so
     * now, as asyncio does when a task's exception is never retrieved. */
    /* relaxed: see the declaration (a stale "empty" only delays a report). */
    if (atomic_load_explicit(&unret_dead_pending, memory_order_relaxed) && !bocpy_is_finalizing()) {
        PyObject *pending = PyErr_GetRaisedException();
        bocpy_state *st = bocpy_state_of_type(tp);
        /* A program thread: not a threads-backend worker in a body (bodies
         * do not log for the program; the main thread reports soon). */
        if (st != NULL && st->interp != NULL && bocpy_is_program_thread(st) &&
            bocpy_report_unretrieved(st, false) < 0) {
            PyErr_WriteUnraisable(NULL);
        }
        PyErr_Clear();
        PyErr_SetRaisedException(pending);
    }
    Py_DECREF(tp);
}

static bool held_here(bocpy_cown *c) {
    /* relaxed: see bocpy_cown.holder (only our own store shows our token). */
    return atomic_load_explicit(&c->holder, memory_order_relaxed) == bocpy_thread_token();
}

/* What a read outside a hold returns. */
typedef enum { READ_VALUE, READ_EXCEPTION } read_what;

static PyObject *read_result(bocpy_cown *c, read_what what) {
    unretrieved_forget(c);
    if (what == READ_EXCEPTION) {
        return PyBool_FromLong(c->is_exception);
    }
    return Py_NewRef(c->obj ? c->obj : Py_None);
}

/* A read of `.value` or `.exception` by a thread that does not hold the
 * cown.  Allowed in the main interpreter whenever no behavior holds the cown
 * or waits for it -- known, race-free, by taking a hold for the length of
 * the read: libboc grants one (boc_cown_try_hold) only when the cown's queue
 * is empty, and a behavior scheduled meanwhile queues behind it.  Like
 * acquire(), the read brings the value into the main interpreter; its copy
 * stays exact (nothing changed it), so a later behavior still rebuilds it
 * from that copy wherever it runs.
 * A PinnedCown's value always lives here and only the main thread's pump
 * runs its behaviors, each holding it (`holder`) while its body runs: with
 * the GIL held, holder == 0 means no body is running against it, even if
 * behaviors are queued. */
static PyObject *read_unheld(bocpy_state *st, bocpy_cown *c, read_what what) {
    if (!bocpy_is_program_thread(st)) {
        PyErr_SetString(PyExc_RuntimeError, NOT_HELD);
        return NULL;
    }
    if (c->base.flags & BOC_COWN_PINNED) {
        /* relaxed: holder is only written by threads holding the main GIL,
         * which we hold too. */
        if (atomic_load_explicit(&c->holder, memory_order_relaxed) != 0) {
            PyErr_SetString(PyExc_RuntimeError, PINNED_BUSY_READ);
            return NULL;
        }
        return read_result(c, what);
    }
    boc_request req;
    if (!boc_cown_try_hold(&c->base, &req)) {
        PyErr_SetString(PyExc_RuntimeError, BUSY_READ);
        return NULL;
    }
    PyObject *result = bocpy_cown_materialize(c, st->interp) < 0 ? NULL : read_result(c, what);
    boc_cown_unhold(&req);
    return result;
}

static PyObject *Cown_get_value(CownObject *self, void *closure) {
    (void)closure;
    bocpy_cown *c = self->cown;
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (!held_here(c)) {
        return read_unheld(st, c, READ_VALUE);
    }
    if (bocpy_cown_materialize(c, st->interp) < 0) {
        return NULL;
    }
    return read_result(c, READ_VALUE);
}

static int Cown_set_value(CownObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "a cown's value cannot be deleted; assign None instead");
        return -1;
    }
    bocpy_cown *c = self->cown;
    if (!held_here(c)) {
        PyErr_SetString(PyExc_RuntimeError, NOT_HELD);
        return -1;
    }
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    bocpy_interp *here = st->interp;
    /* A hold materialised the value (inline_kind is 0), except a pinned
     * behavior's: a PinnedCown is never inline. */
    if (c->inline_kind != BOCPY_INLINE_NONE && bocpy_cown_materialize(c, here) < 0) {
        return -1;
    }
    /* A plain scalar (`c.value += 1`) needs no place in the resident list,
     * so no side record: settling puts it back inline before the hold ends
     * (set_home_unlisted).  Anything else reserves the move first. */
    uint8_t kind = BOCPY_INLINE_NONE;
    int64_t ival = 0;
    double fval = 0.0;
    bool scalar = value != Py_None && inline_of(value, &kind, &ival, &fval);
    if (value != Py_None && !scalar && home_reserve(c, here) < 0) {
        return -1;
    }
    /* relaxed: this thread holds the cown (held_here; see set_home). */
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    PyObject *old = c->obj;
    /* The copy is now only the value as this hold found it, kept in case the
     * new value is refused at release (bocpy_cown_settle): it must not be
     * read as the value again (assigning None leaves obj NULL). */
    c->obj = value == Py_None ? NULL : Py_NewRef(value);
    c->blob_stale = c->blob != NULL;
    c->is_exception = false;
    unretrieved_forget(c);
    unavailable_clear(c);
    if (scalar) {
        set_home_unlisted(c, here);
    } else {
        set_home(c, c->obj ? here : NULL);
    }
    release_object(home, old);
    return 0;
}

static PyObject *Cown_get_acquired(CownObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(held_here(self->cown));
}

static PyObject *Cown_get_exception(CownObject *self, void *closure) {
    (void)closure;
    bocpy_cown *c = self->cown;
    if (!held_here(c)) {
        return read_unheld(bocpy_state_of_type(Py_TYPE(self)), c, READ_EXCEPTION);
    }
    return read_result(c, READ_EXCEPTION);
}

static int Cown_set_exception(CownObject *self, PyObject *value, void *closure) {
    (void)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "a cown's exception flag cannot be deleted; assign False instead");
        return -1;
    }
    bocpy_cown *c = self->cown;
    if (!held_here(c)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a cown's exception flag can only be set by its holder: inside a "
                        "behavior that requested it (@when(cown)), or on the main thread "
                        "between cown.acquire() and cown.release() (or in 'with cown:')");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    c->is_exception = truth;
    unretrieved_forget(c); /* the holder has seen it */
    return 0;
}

/* Checks shared by acquire() and unwrap(): main interpreter, quiescent. */
static int check_main_quiescent(bocpy_state *st, const char *what) {
    if (!bocpy_is_program_thread(st)) {
        PyErr_Format(PyExc_RuntimeError,
                     "Cown.%s() is for the main interpreter; inside a behavior, request "
                     "the cown with @when instead",
                     what);
        return -1;
    }
    unsigned workers;
    uint64_t live;
    if (bocpy_runtime_snapshot(&workers, &live) && live > 0) {
        PyErr_Format(PyExc_RuntimeError,
                     "Cown.%s() while %llu behaviors are still in flight; call "
                     "bocpy.wait() or bocpy.quiesce() first",
                     what, (unsigned long long)live);
        return -1;
    }
    return 0;
}

/* Open main-thread holds.  Relaxed everywhere: each change is one atomic
 * add, so the count is exact; wait() consults it only to refuse a wait that
 * could never end, and no other memory is published through it. */
static atomic_long main_holds;

long bocpy_main_holds(void) { return atomic_load_explicit(&main_holds, memory_order_relaxed); }

/*
 * Every cown has one hold_req (in its side record), so two threads of the main interpreter must
 * never run boc_cown_try_hold on the same cown at once: the loser's failed
 * attempt still resets the request's fields (next, scheduled), which would
 * cut the winner's MCS successor loose.  hold_lock makes "holder is 0, try
 * the hold, publish the holder" one step, and "clear the holder, let go" the
 * other: under it, holder == 0 means no main-thread hold exists (a worker's
 * token is only stored while a behavior holds the cown, when try_hold
 * fails).  On GIL builds the GIL already made both steps atomic (nothing in
 * them releases it); free-threaded builds need the lock (compat.h).  The
 * value's materialisation, which runs Python code, stays outside it.
 */
static bocpy_ft_mutex hold_lock;

static void hold_drop(bocpy_cown *c) {
    bocpy_ft_lock(&hold_lock);
    /* relaxed: see bocpy_cown.holder; hold_lock orders the hold itself. */
    atomic_store_explicit(&c->holder, 0, memory_order_relaxed);
    /* The record exists: cown_hold made it before taking the hold. */
    boc_cown_unhold(&extra_peek(c)->hold_req);
    bocpy_ft_unlock(&hold_lock);
}

static int cown_hold(bocpy_state *st, bocpy_cown *c, const char *what) {
    if (check_main_quiescent(st, what) < 0) {
        return -1;
    }
    /* Made before the hold (and kept: it is never freed while the cown
     * lives), so a hold never fails half-way for want of memory. */
    bocpy_cown_extra *e = extra_get(c);
    if (e == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uintptr_t me = bocpy_thread_token();
    bocpy_ft_lock(&hold_lock);
    /* relaxed: see bocpy_cown.holder; hold_lock orders the hold itself. */
    uintptr_t holder = atomic_load_explicit(&c->holder, memory_order_relaxed);
    bool held = holder == 0 && boc_cown_try_hold(&c->base, &e->hold_req);
    if (held) {
        /* relaxed: as above. */
        atomic_store_explicit(&c->holder, me, memory_order_relaxed);
    }
    bocpy_ft_unlock(&hold_lock);
    if (holder == me) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cown is already acquired by this thread; release() it before "
                        "acquiring it again");
        return -1;
    }
    if (!held) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cown is busy (another thread holds it, or a behavior is "
                        "scheduled on it); call bocpy.wait() or bocpy.quiesce() first");
        return -1;
    }
    if (bocpy_cown_materialize(c, st->interp) < 0) {
        hold_drop(c);
        return -1;
    }
    e->hold_before = Py_XNewRef(c->obj);
    atomic_fetch_add_explicit(&main_holds, 1, memory_order_relaxed);
    return 0;
}

static int cown_unhold(bocpy_state *st, bocpy_cown *c) {
    /* A main-thread hold made the side record (cown_hold); without one,
     * this thread holds the cown some other way (a pinned behavior). */
    bocpy_cown_extra *e = extra_peek(c);
    if (!held_here(c) || e == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cown is not acquired by this thread; call acquire() first");
        return -1;
    }
    int rc = 0;
    if (bocpy_backend_shares_values()) {
        bocpy_cown_settle_shared(c);
    } else {
        rc = bocpy_cown_settle(st, c, st->interp, e->hold_before);
    }
    Py_CLEAR(e->hold_before);
    atomic_fetch_sub_explicit(&main_holds, 1, memory_order_relaxed);
    /* Always let go, even if the new value was refused: a queued behavior
     * must not wait forever on a failed release. */
    hold_drop(c);
    return rc;
}

static PyObject *Cown_acquire(CownObject *self, PyObject *unused) {
    (void)unused;
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (cown_hold(st, self->cown, "acquire") < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Cown_release(CownObject *self, PyObject *unused) {
    (void)unused;
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (cown_unhold(st, self->cown) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Cown_enter(CownObject *self, PyObject *unused) {
    (void)unused;
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    bocpy_cown *c = self->cown;
    if (cown_hold(st, c, "acquire") < 0) {
        return NULL;
    }
    /* `with cown as value:` binds the value, as in the reference; the cown
     * stays held (and `cown.value = ...` works) until the block ends. */
    return read_result(c, READ_VALUE);
}

static PyObject *Cown_exit(CownObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (cown_unhold(st, self->cown) < 0) {
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *Cown_unwrap(CownObject *self, PyObject *unused) {
    (void)unused;
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    bocpy_cown *c = self->cown;
    bool was_held = held_here(c);
    if (!was_held && cown_hold(st, c, "unwrap") < 0) {
        return NULL;
    }
    PyObject *value = read_result(c, READ_VALUE);
    bool is_exception = c->is_exception;
    bocpy_cown_store(c, st->interp, Py_None, false);
    bocpy_cown_extra *e = extra_peek(c);
    if (e != NULL) {
        Py_CLEAR(e->hold_before);
    }
    if (!was_held && cown_unhold(st, c) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    if (is_exception && PyExceptionInstance_Check(value)) {
        PyErr_SetRaisedException(value);
        return NULL;
    }
    return value;
}

static PyObject *Cown_repr(CownObject *self) {
    bocpy_cown *c = self->cown;
    PyObject *name = PyType_GetName(Py_TYPE(self)); /* Cown, PinnedCown, subclasses */
    if (name == NULL) {
        return NULL;
    }
    PyObject *repr;
    if (!held_here(c)) {
        repr = PyUnicode_FromFormat("%U(<not acquired, id %llu>)", name,
                                    (unsigned long long)c->base.id);
    } else {
        bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
        repr = bocpy_cown_materialize(c, st->interp) < 0
                   ? NULL
                   : PyUnicode_FromFormat("%U(%R)", name, c->obj ? c->obj : Py_None);
    }
    Py_DECREF(name);
    return repr;
}

static Py_hash_t Cown_hash(CownObject *self) {
    Py_hash_t h = (Py_hash_t)self->cown->base.id;
    return h == -1 ? -2 : h;
}

static PyObject *Cown_richcompare(PyObject *a, PyObject *b, int op) {
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(a));
    if (st == NULL || !bocpy_cown_check(st, b)) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    uint64_t x = ((CownObject *)a)->cown->base.id;
    uint64_t y = ((CownObject *)b)->cown->base.id;
    Py_RETURN_RICHCOMPARE(x, y, op);
}

static PyObject *Cown_reduce(CownObject *self, PyObject *unused) {
    (void)unused;
    Py_ssize_t index = bocpy_transfer_add_cown(self->cown);
    if (index == -2) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_TypeError,
                        "Cown objects cannot be pickled on their own: they travel between "
                        "interpreters inside bocpy (as cown values, behavior captures and "
                        "results), which keeps the cown alive on the way");
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    return Py_BuildValue("O(n)", st->rebuild_cown, index);
}

static PyObject *Cown_copy(PyObject *self, PyObject *unused) {
    (void)unused;
    return Py_NewRef(self); /* a handle: copies are the same cown */
}

static PyObject *Cown_get_id(CownObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->cown->base.id);
}

static PyMethodDef Cown_methods[] = {
    {"acquire", (PyCFunction)Cown_acquire, METH_NOARGS,
     "Acquire the cown on the main thread (the runtime must be quiescent)."},
    {"release", (PyCFunction)Cown_release, METH_NOARGS, "Release a cown acquired with acquire()."},
    {"unwrap", (PyCFunction)Cown_unwrap, METH_NOARGS,
     "Return the value and leave None behind, or re-raise the captured exception."},
    {"__enter__", (PyCFunction)Cown_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Cown_exit, METH_FASTCALL, NULL},
    {"__reduce__", (PyCFunction)Cown_reduce, METH_NOARGS, NULL},
    {"__copy__", Cown_copy, METH_NOARGS, NULL},
    {"__deepcopy__", Cown_copy, METH_O, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "Cown[T] for type hints."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Cown_getset[] = {
    {"value", (getter)Cown_get_value, (setter)Cown_set_value,
     "The owned value: read and written by the cown's holder; the main thread may also "
     "read it whenever no behavior holds the cown or waits for it.",
     NULL},
    {"acquired", (getter)Cown_get_acquired, NULL, "True while this thread holds the cown.", NULL},
    {"exception", (getter)Cown_get_exception, (setter)Cown_set_exception,
     "True when the value is an exception captured from a behavior; the holder may set or "
     "clear it.",
     NULL},
    {"_id", (getter)Cown_get_id, NULL, "The cown's unique id (its place in the lock order).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Cown_doc, "Cown(value=None)\n--\n\n"
                       "A concurrently-owned value.  Behaviors scheduled with @when(cown) get "
                       "exclusive access to it.");

static PyType_Slot Cown_slots[] = {
    {Py_tp_new, Cown_new},
    {Py_tp_dealloc, Cown_dealloc},
    {Py_tp_repr, Cown_repr},
    {Py_tp_hash, Cown_hash},
    {Py_tp_richcompare, Cown_richcompare},
    {Py_tp_methods, Cown_methods},
    {Py_tp_getset, Cown_getset},
    {Py_tp_doc, (void *)Cown_doc},
    {0, NULL},
};

static PyType_Spec Cown_spec = {
    .name = "bocpy.Cown",
    .basicsize = sizeof(CownObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Cown_slots,
};

PyObject *bocpy_cown_type_spec_create(PyObject *module) {
    return PyType_FromModuleAndSpec(module, &Cown_spec, NULL);
}

void bocpy_cown_settle_shared(bocpy_cown *c) {
    /* Holder only.  The body ran in the main interpreter, where the live
     * object is (materialised there before the body), and may have changed
     * it in place or replaced it: a serialised copy is now at best as old as
     * the object, so the object alone is the value.  The value is not
     * checked for picklability: on the threads backend it never crosses.
     * (Were the interpreters backend to run next, a worker that needs it
     * pickles it then, from the main interpreter: bocpy_cown_materialize.) */
    if (c->obj != NULL || c->blob_stale) {
        bocpy_blob_free(c->blob);
        c->blob = NULL;
    }
    c->blob_stale = false;
}
