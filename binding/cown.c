/*
 * cown.c: the Cown type, and the life of a cown's value.
 *
 * A cown's value is an object that lives in exactly one interpreter (its
 * "home") and may also have a serialised copy (a blob).  The value moves
 * lazily: it is only copied into another interpreter when a behavior
 * running there acquires the cown, so a chain of behaviors that stays on
 * one worker never pays for serialisation.
 *
 * Who may touch the value fields (obj, home, blob, is_exception) and when:
 *   - the holder: a behavior that requested the cown, while it runs, or the
 *     main thread between acquire() and release().  libboc guarantees one
 *     holder at a time and its release/acquire hand-off orders the previous
 *     holder's writes before the next holder's reads;
 *   - the destroyer, once the reference count is zero (no holder exists);
 *   - a stopping worker evacuating its residents, when the runtime is
 *     quiescent (no holder exists) -- racing only with destroyers, which is
 *     settled by the home's lock and a reference taken under it.
 * A resident list per worker interpreter lets that worker serialise every
 * value it still owns before its interpreter ends.
 */
#include "bocpy.h"

#include <sched.h>
#include <string.h>

/* Serialised size above which a value mutated in place is not re-checked
 * at every release (see bocpy_cown_settle). */
#define BOCPY_CHECK_IN_PLACE_MAX (64 * 1024)

static _Thread_local char tls_token_anchor;

uintptr_t bocpy_thread_token(void) {
    /* The address of a thread-local is unique among live threads. */
    return (uintptr_t)&tls_token_anchor;
}

/* ----------------------------------------------------------- residency */

static void resident_unlink_locked(bocpy_interp *rec, bocpy_cown *c) {
    if (!c->resident) {
        return;
    }
    if (c->res_prev != NULL) {
        c->res_prev->res_next = c->res_next;
    } else {
        rec->residents = c->res_next;
    }
    if (c->res_next != NULL) {
        c->res_next->res_prev = c->res_prev;
    }
    c->res_prev = c->res_next = NULL;
    c->resident = false;
}

/* Moves the cown's home to `rec` (the caller holds the cown). */
static void set_home(bocpy_cown *c, bocpy_interp *rec) {
    bocpy_interp *old = atomic_load_explicit(&c->home, memory_order_relaxed);
    if (old == rec) {
        return;
    }
    if (old != NULL && !old->is_main) {
        pthread_mutex_lock(&old->lock);
        resident_unlink_locked(old, c);
        pthread_mutex_unlock(&old->lock);
    }
    if (rec != NULL && !rec->is_main) {
        pthread_mutex_lock(&rec->lock);
        c->res_prev = NULL;
        c->res_next = rec->residents;
        if (rec->residents != NULL) {
            rec->residents->res_prev = c;
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
        bool still_home = atomic_load_explicit(&c->home, memory_order_relaxed) == home;
        if (still_home) {
            resident_unlink_locked(home, c);
        }
        pthread_mutex_unlock(&home->lock);
        if (still_home) {
            break;
        }
    }
    release_object(home, c->obj);
    release_object(home, c->hold_before);
    bocpy_blob_free(c->blob);
    PyMem_RawFree(c);
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

bocpy_cown *bocpy_cown_new_flags(uint32_t flags) {
    bocpy_cown *c = PyMem_RawCalloc(1, sizeof(*c));
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
    char *error;      /* why pickling failed (plain C copy for the caller) */
    bool rolled_back; /* ...and the cown went back to its stale copy */
} foreign_pickle;

static void foreign_pickle_run(void *arg) {
    foreign_pickle *fp = arg;
    bocpy_cown *c = fp->cown;
    fp->blob = bocpy_serialize(fp->home->state, c->obj);
    if (fp->blob == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *text = PyObject_Str(exc);
        const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
        fp->error = strdup(utf8 ? utf8 : "unknown error");
        PyErr_Clear();
        Py_XDECREF(text);
        Py_XDECREF(exc);
        if (!c->blob_stale) {
            return;
        }
        /* The object was mutated in place into something that cannot
         * travel: fall back to the last copy that could. */
        fp->rolled_back = true;
        c->blob_stale = false;
    } else {
        atomic_fetch_add_explicit(&fp->home->stats.foreign_pickles, 1, memory_order_relaxed);
    }
    /* The copy replaces the original: free it while we hold its GIL. */
    PyObject *obj = c->obj;
    c->obj = NULL;
    set_home(c, NULL);
    Py_DECREF(obj);
}

int bocpy_cown_materialize(bocpy_cown *c, bocpy_interp *here) {
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    if (c->obj != NULL && home == here) {
        return 0;
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
    if (c->obj == NULL && c->blob == NULL) {
        return 0; /* the value is None */
    }
    bool rolled_back = false;
    char *rollback_reason = NULL;
    if (c->blob == NULL || c->blob_stale) {
        /* The live object, in another interpreter, is the only current
         * copy: pickle it there.  Values are checked when a hold ends,
         * except large ones changed in place (bocpy_cown_settle), so this
         * fails only if one of those became unpicklable. */
        foreign_pickle fp = {.cown = c, .home = home};
        if (home->state == NULL || !bocpy_interp_call_in(home, foreign_pickle_run, &fp)) {
            PyErr_SetString(PyExc_RuntimeError,
                            "the interpreter holding this cown's value is gone");
            return -1;
        }
        if (fp.blob == NULL && !fp.rolled_back) {
            PyErr_Format(PyExc_TypeError,
                         "the value of this cown could not be sent to the interpreter that "
                         "needs it: %s",
                         fp.error ? fp.error : "out of memory");
            free(fp.error);
            return -1;
        }
        if (fp.blob != NULL) {
            bocpy_blob_free(c->blob);
            c->blob = fp.blob;
            c->blob_stale = false;
        }
        rolled_back = fp.rolled_back;
        rollback_reason = fp.error;
        home = NULL;
    }
    PyObject *value = bocpy_deserialize(here->state, c->blob);
    if (value == NULL) {
        PyObject *cause = PyErr_GetRaisedException();
        PyErr_Format(PyExc_RuntimeError,
                     "the value of this cown could not be rebuilt in this interpreter (%S); "
                     "classes and functions in values must be importable here",
                     cause);
        PyObject *exc = PyErr_GetRaisedException();
        PyException_SetCause(exc, cause);
        PyErr_SetRaisedException(exc);
        return -1;
    }
    PyObject *old = c->obj;
    c->obj = value;
    set_home(c, here);
    release_object(home, old);
    atomic_fetch_add_explicit(&here->stats.migrations_in, 1, memory_order_relaxed);
    if (rolled_back) {
        /* The cown is consistent again (it holds its last transferable
         * value); the behavior that needed it learns why it changed. */
        PyErr_Format(PyExc_TypeError,
                     "a behavior changed this cown's value in place into a state that cannot "
                     "be sent between interpreters (%s); the cown was rolled back to its last "
                     "transferable value, which later behaviors will see",
                     rollback_reason ? rollback_reason : "unknown error");
        free(rollback_reason);
        return -1;
    }
    free(rollback_reason);
    return 0;
}

void bocpy_cown_store(bocpy_cown *c, bocpy_interp *here, PyObject *obj, bool is_exception) {
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    PyObject *old = c->obj;
    c->obj = obj == Py_None ? NULL : Py_NewRef(obj);
    bocpy_blob_free(c->blob);
    c->blob = NULL;
    c->blob_stale = false;
    c->is_exception = is_exception;
    set_home(c, c->obj ? here : NULL);
    release_object(home, old);
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
    bool plain = bocpy_is_plain_immutable(st, now);
    if (plain && now == before && c->blob != NULL && !c->blob_stale) {
        return 0; /* unchanged and unchangeable: the copy is still right */
    }
    if (!here->is_main && plain) {
        /* On a worker, copy lazily: a plain value is cheap to pickle if it
         * ever has to move. */
        if (now != before) {
            bocpy_blob_free(c->blob);
            c->blob = NULL;
            c->blob_stale = false;
        }
        return 0;
    }
    if (!here->is_main && now == before && c->blob != NULL &&
        c->blob->size > BOCPY_CHECK_IN_PLACE_MAX) {
        /* The same large object, perhaps mutated in place: copying it at
         * every release would cost more than most behaviors, so the copy
         * is kept as the last transferable version and the object is
         * pickled afresh only if it ever has to move -- a chain of
         * behaviors that keeps it on one worker never pays for that. */
        c->blob_stale = true;
        return 0;
    }
    /* A new object on a worker, a small one perhaps mutated in place, or
     * any value the main thread releases (so that workers never have to
     * enter the main interpreter for it): check now that it can cross, and
     * keep the copy. */
    bocpy_blob *blob = bocpy_serialize(st, now);
    if (blob == NULL) {
        if (now != before) {
            /* A new object: put the old one back. */
            c->obj = Py_XNewRef(before);
            Py_DECREF(now);
            set_home(c, c->obj ? here : NULL);
        } else if (c->blob != NULL && !c->blob_stale) {
            /* The object itself was changed in place; the copy is the
             * value as this hold found it: go back to that. */
            c->obj = NULL;
            set_home(c, NULL);
            release_object(here, now);
            return -1;
        }
        /* Any copy we had is, at best, of an older version: keep it as the
         * last transferable one. */
        c->blob_stale = c->blob != NULL;
        return -1;
    }
    bocpy_blob_free(c->blob);
    c->blob = blob;
    c->blob_stale = false;
    return 0;
}

void bocpy_cown_evacuate_all(bocpy_state *st, bocpy_interp *rec) {
    for (;;) {
        pthread_mutex_lock(&rec->lock);
        bocpy_cown *c = rec->residents;
        /* Take a reference so that no destroyer can free the cown while we
         * work on it outside the lock; skip cowns already being destroyed
         * (their destroyer is waiting for this lock and will unlink them). */
        while (c != NULL) {
            size_t n = atomic_load_explicit(&c->base.refcount, memory_order_relaxed);
            while (n > 0 && !atomic_compare_exchange_weak_explicit(&c->base.refcount, &n, n + 1,
                                                                   memory_order_relaxed,
                                                                   memory_order_relaxed)) {
            }
            if (n > 0) {
                break;
            }
            c = c->res_next;
        }
        if (c == NULL) {
            bool empty = rec->residents == NULL;
            pthread_mutex_unlock(&rec->lock);
            if (empty) {
                return;
            }
            sched_yield();
            continue;
        }
        resident_unlink_locked(rec, c);
        pthread_mutex_unlock(&rec->lock);

        PyObject *obj = c->obj;
        if (obj != NULL && (c->blob == NULL || c->blob_stale)) {
            bocpy_blob *fresh = bocpy_serialize(st, obj);
            if (fresh == NULL && c->blob != NULL) {
                /* Mutated in place into something that cannot leave this
                 * interpreter: keep the last copy that could, and say so. */
                PyObject *cause = PyErr_GetRaisedException();
                PySys_FormatStderr("bocpy: a cown's value (type '%.200s') was changed in place "
                                   "into a state that cannot leave its worker (%S); it was "
                                   "rolled back to its last transferable value\n",
                                   Py_TYPE(obj)->tp_name, cause);
                Py_XDECREF(cause);
                PyErr_Clear();
                c->blob_stale = false;
            } else if (fresh != NULL) {
                bocpy_blob_free(c->blob);
                c->blob = fresh;
                c->blob_stale = false;
            }
            if (c->blob == NULL) {
                /* The value cannot outlive its interpreter: say so on the
                 * cown rather than losing it silently. */
                PyObject *cause = PyErr_GetRaisedException();
                PyErr_Format(PyExc_RuntimeError,
                             "the value of this cown (type '%.200s') was lost when its "
                             "worker stopped: %S",
                             Py_TYPE(obj)->tp_name, cause);
                PyObject *exc = PyErr_GetRaisedException();
                Py_XDECREF(cause);
                c->blob = bocpy_serialize(st, exc);
                c->is_exception = c->blob != NULL;
                Py_DECREF(exc);
                PyErr_Clear();
            }
        }
        c->obj = NULL;
        /* release: pairs with destroy_one's acquire load of the home. */
        atomic_store_explicit(&c->home, NULL, memory_order_release);
        Py_XDECREF(obj);
        boc_cown_decref(&c->base);
    }
}

/* ----------------------------------------------------------- the type */

static const char NOT_HELD[] =
    "this cown's value is only reachable while you hold the cown: inside a "
    "behavior that requested it (@when(cown)), or on the main thread between "
    "cown.acquire() and cown.release() (or in 'with cown:') once bocpy.wait() or "
    "bocpy.quiesce() has returned";

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
    if (value != Py_None) {
        if (st->interp->is_main || !bocpy_is_plain_immutable(st, value)) {
            /* Check now, where the user can see which value is at fault,
             * and keep the copy: workers will start from it without
             * entering this interpreter. */
            c->blob = bocpy_serialize(st, value);
            if (c->blob == NULL) {
                boc_cown_decref(&c->base);
                return NULL;
            }
        }
        c->obj = Py_NewRef(value);
        set_home(c, st->interp);
    }
    return bocpy_cown_object_new(type, c);
}

static void Cown_dealloc(CownObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->cown != NULL) {
        boc_cown_decref(&self->cown->base);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static bool held_here(bocpy_cown *c) {
    return atomic_load_explicit(&c->holder, memory_order_relaxed) == bocpy_thread_token();
}

static PyObject *Cown_get_value(CownObject *self, void *closure) {
    (void)closure;
    bocpy_cown *c = self->cown;
    if (!held_here(c)) {
        PyErr_SetString(PyExc_RuntimeError, NOT_HELD);
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (bocpy_cown_materialize(c, st->interp) < 0) {
        return NULL;
    }
    return Py_NewRef(c->obj ? c->obj : Py_None);
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
    bocpy_interp *home = atomic_load_explicit(&c->home, memory_order_relaxed);
    PyObject *old = c->obj;
    /* The serialised copy and the "before" snapshot are reconciled when the
     * hold ends (bocpy_cown_settle), where a bad value can be refused. */
    c->obj = value == Py_None ? NULL : Py_NewRef(value);
    c->is_exception = false;
    set_home(c, c->obj ? here : NULL);
    release_object(home, old);
    return 0;
}

static PyObject *Cown_get_acquired(CownObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(held_here(self->cown));
}

static PyObject *Cown_get_exception(CownObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->cown->is_exception);
}

/* Checks shared by acquire() and unwrap(): main interpreter, quiescent. */
static int check_main_quiescent(bocpy_state *st, const char *what) {
    if (!st->interp->is_main) {
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

static atomic_long main_holds;

long bocpy_main_holds(void) { return atomic_load_explicit(&main_holds, memory_order_relaxed); }

static int cown_hold(bocpy_state *st, bocpy_cown *c, const char *what) {
    if (check_main_quiescent(st, what) < 0) {
        return -1;
    }
    uintptr_t holder = atomic_load_explicit(&c->holder, memory_order_relaxed);
    if (holder == bocpy_thread_token()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cown is already acquired by this thread; release() it before "
                        "acquiring it again");
        return -1;
    }
    if (holder != 0 || !boc_cown_try_hold(&c->base, &c->hold_req)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cown is busy (another thread holds it, or a behavior is "
                        "scheduled on it); call bocpy.wait() or bocpy.quiesce() first");
        return -1;
    }
    if (bocpy_cown_materialize(c, st->interp) < 0) {
        boc_cown_unhold(&c->hold_req);
        return -1;
    }
    c->hold_before = Py_XNewRef(c->obj);
    atomic_store_explicit(&c->holder, bocpy_thread_token(), memory_order_relaxed);
    atomic_fetch_add_explicit(&main_holds, 1, memory_order_relaxed);
    return 0;
}

static int cown_unhold(bocpy_state *st, bocpy_cown *c) {
    if (!held_here(c)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this cown is not acquired by this thread; call acquire() first");
        return -1;
    }
    int rc = bocpy_cown_settle(st, c, st->interp, c->hold_before);
    Py_CLEAR(c->hold_before);
    atomic_store_explicit(&c->holder, 0, memory_order_relaxed);
    atomic_fetch_sub_explicit(&main_holds, 1, memory_order_relaxed);
    /* Always let go, even if the new value was refused: a queued behavior
     * must not wait forever on a failed release. */
    boc_cown_unhold(&c->hold_req);
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
    if (cown_hold(st, self->cown, "acquire") < 0) {
        return NULL;
    }
    return Py_NewRef(self);
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
    PyObject *value = Py_NewRef(c->obj ? c->obj : Py_None);
    bool is_exception = c->is_exception;
    bocpy_cown_store(c, st->interp, Py_None, false);
    Py_CLEAR(c->hold_before);
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
     "The owned value; only while this thread holds the cown.", NULL},
    {"acquired", (getter)Cown_get_acquired, NULL, "True while this thread holds the cown.", NULL},
    {"exception", (getter)Cown_get_exception, NULL,
     "True when the value is an exception captured from a behavior.", NULL},
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
