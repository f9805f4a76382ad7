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
 *                 registry and the script image.  The default on
 *                 GIL builds; "threads" on free-threaded ones.
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
 * Captures (extra arguments, defaults, closure cells) are not pickled here
 * either: @when keeps its snapshot as objects (payload live_captures).
 * BOCPY_CHECK_SHARING=1 turns on a check for objects reachable from two
 * cowns of a behavior (below).  docs/backends.md.
 */
#include "bocpy.h"

#include <string.h>

/* ------------------------------------------------------------ selection */

typedef struct bocpy_backend {
    const char *name;
    const boc_runtime_ops *ops;
} bocpy_backend;

static const boc_runtime_ops threads_ops;
static int read_check_sharing(void);
static int body_threads_init(void);

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
    if (read_check_sharing() < 0) {
        return NULL;
    }
    if (b->ops == &threads_ops) {
        if (body_threads_init() < 0) {
            return NULL;
        }
        threads_main_state = st;
    }
    boc_runtime *rt = boc_runtime_new(count, b->ops, NULL);
    if (rt == NULL) {
        PyErr_NoMemory();
    }
    return rt;
}

bool bocpy_backend_shares_values(void) {
    return atomic_load_explicit(&selected, memory_order_relaxed)->ops == &threads_ops;
}

PyObject *bocpy_set_backend(PyObject *module, PyObject *name) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (!bocpy_is_program_thread(st)) {
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

/* ------------------------------------------------ BOCPY_CHECK_SHARING */

/*
 * A debug mode of the threads backend: before a body runs, walk the values
 * of the cowns it holds and refuse to run it (a RuntimeError on its result,
 * naming both cowns) when one object is reachable from two of them -- on
 * this backend such an object is shared memory, and two behaviors holding
 * those cowns separately could touch it at once.
 *
 * What the walk counts as "an object": everything reached through
 * tp_traverse (what gc.get_referents reports) from a value, except
 *   - atoms, shared freely by design: None, bool, int, float, complex, str,
 *     bytes, Ellipsis, NotImplemented;
 *   - code, not data: types, modules, functions, code objects, built-in
 *     functions (every value reaches its class, every function its module's
 *     globals); the walk does not look inside them;
 *   - Cowns: holding a reference to the same cown is what cowns are for.
 * Tuples and frozensets are walked (they can hold mutable objects) but are
 * not reported themselves.  The walk stops after SHARING_MAX_OBJECTS
 * objects per behavior (what lies beyond is not checked).  It only compares
 * the cowns of one behavior: sharing with a cown the behavior does not hold
 * is found by a behavior that holds both.
 *
 * Safety of the walk: every object it reads is reachable from a value this
 * thread holds; a shared one (what it looks for) may be mutated by another
 * holder meanwhile, which on a free-threaded build is still memory-safe for
 * the built-in containers (their storage is freed only after a quiescent
 * state, QSBR) and on a GIL build cannot happen (the walk keeps the GIL).
 * tp_traverse runs no Python code, so nothing is freed under the walk.
 */

#define SHARING_MAX_OBJECTS (1u << 20)

/* Set from $BOCPY_CHECK_SHARING when a runtime is made (by the starter,
 * before its workers exist: thread creation orders it for them); read by
 * the workers.  Relaxed: nothing else is published through it. */
static atomic_bool check_sharing;

static int read_check_sharing(void) {
    const char *v = getenv("BOCPY_CHECK_SHARING");
    if (v == NULL || v[0] == '\0' || strcmp(v, "0") == 0) {
        atomic_store_explicit(&check_sharing, false, memory_order_relaxed);
        return 0;
    }
    if (strcmp(v, "1") == 0) {
        atomic_store_explicit(&check_sharing, true, memory_order_relaxed);
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "BOCPY_CHECK_SHARING is '%.100s': set it to '1' to check, on the threads "
                 "backend, that no object is reachable from two cowns of a behavior, or to "
                 "'0' (or unset it) not to check",
                 v);
    return -1;
}

/* Open-addressing map: object address -> (first walk that reached it,
 * last walk that reached it); a walk is a cown slot of the behavior. */
typedef struct sharing_entry {
    PyObject *obj; /* NULL: empty */
    uint32_t owner, last;
} sharing_entry;

typedef struct sharing_walk {
    sharing_entry *table;
    size_t cap, used; /* cap a power of two; used <= cap / 2 */
    PyObject **stack;
    size_t depth, stack_cap;
    size_t visited;
    bool failed; /* out of memory */
} sharing_walk;

static size_t sharing_hash(PyObject *obj, size_t cap) {
    return (size_t)(((uintptr_t)obj >> 4) * (uintptr_t)0x9E3779B97F4A7C15ull) & (cap - 1);
}

static sharing_entry *sharing_find(sharing_walk *w, PyObject *obj) {
    size_t i = sharing_hash(obj, w->cap);
    while (w->table[i].obj != NULL && w->table[i].obj != obj) {
        i = (i + 1) & (w->cap - 1);
    }
    return &w->table[i];
}

static bool sharing_grow(sharing_walk *w) {
    size_t cap = w->cap ? w->cap * 2 : 256;
    sharing_entry *old = w->table;
    size_t old_cap = w->cap;
    w->table = calloc(cap, sizeof(*w->table));
    if (w->table == NULL) {
        w->table = old;
        return false;
    }
    w->cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].obj != NULL) {
            *sharing_find(w, old[i].obj) = old[i];
        }
    }
    free(old);
    return true;
}

static int sharing_push(PyObject *obj, void *arg) {
    sharing_walk *w = arg;
    if (w->depth == w->stack_cap) {
        size_t cap = w->stack_cap ? w->stack_cap * 2 : 256;
        PyObject **stack = realloc(w->stack, cap * sizeof(*stack));
        if (stack == NULL) {
            w->failed = true;
            return -1; /* stops tp_traverse */
        }
        w->stack = stack;
        w->stack_cap = cap;
    }
    w->stack[w->depth++] = obj;
    return 0;
}

/* Neither reported nor walked (see the comment at the top). */
static bool sharing_ignored(bocpy_state *st, PyObject *obj) {
    return obj == Py_None || obj == Py_Ellipsis || obj == Py_NotImplemented || PyLong_Check(obj) ||
           PyFloat_Check(obj) || PyComplex_Check(obj) || PyUnicode_Check(obj) ||
           PyBytes_Check(obj) || PyType_Check(obj) || PyModule_Check(obj) ||
           PyFunction_Check(obj) || PyCode_Check(obj) || PyCFunction_Check(obj) ||
           bocpy_cown_check(st, obj);
}

/* Walks the value of cown slot `slot`; returns the shared object (borrowed)
 * and sets *other to the slot that reached it first, or NULL (w->failed on
 * an allocation failure). */
static PyObject *sharing_walk_value(bocpy_state *st, sharing_walk *w, PyObject *value,
                                    uint32_t slot, uint32_t *other) {
    w->depth = 0;
    if (sharing_push(value, w) < 0) {
        return NULL;
    }
    while (w->depth > 0 && w->visited < SHARING_MAX_OBJECTS) {
        PyObject *obj = w->stack[--w->depth];
        if (sharing_ignored(st, obj)) {
            continue;
        }
        if ((w->used + 1) * 2 > w->cap && !sharing_grow(w)) {
            w->failed = true;
            return NULL;
        }
        sharing_entry *e = sharing_find(w, obj);
        if (e->obj == NULL) {
            e->obj = obj;
            e->owner = slot;
            w->used++;
        } else if (e->last == slot) {
            continue; /* already walked from this value */
        } else if (!PyTuple_Check(obj) && !PyFrozenSet_Check(obj)) {
            *other = e->owner;
            return obj;
        }
        e->last = slot;
        w->visited++;
        traverseproc traverse =
            PyObject_IS_GC(obj) ? (traverseproc)PyType_GetSlot(Py_TYPE(obj), Py_tp_traverse) : NULL;
        if (traverse != NULL) {
            (void)traverse(obj, sharing_push, w);
            if (w->failed) {
                return NULL;
            }
        }
    }
    return NULL;
}

/* "argument 1" or "argument 1, item 0 of its list", for cown slot `slot`. */
static PyObject *slot_label(bocpy_payload *p, uint32_t slot) {
    const int32_t *groups = bocpy_payload_groups(p);
    uint32_t first = 0;
    for (uint32_t i = 0; i < p->nargs; i++) {
        uint32_t n = groups[i] < 0 ? 1 : (uint32_t)groups[i];
        if (slot < first + n) {
            bocpy_cown *c = p->cowns[slot];
            return groups[i] < 0
                       ? PyUnicode_FromFormat("argument %u (cown id %llu)", i,
                                              (unsigned long long)c->base.id)
                       : PyUnicode_FromFormat("argument %u, item %u of its list (cown id %llu)", i,
                                              slot - first, (unsigned long long)c->base.id);
        }
        first += n;
    }
    return PyUnicode_FromFormat("cown slot %u", slot);
}

/* 0 when no object is reachable from two of the behavior's cowns (or the
 * check is off); -1 with a RuntimeError naming both, or MemoryError. */
static int check_sharing_of(bocpy_state *st, bocpy_payload *p) {
    if (!atomic_load_explicit(&check_sharing, memory_order_relaxed) || p->ncowns < 2) {
        return 0;
    }
    sharing_walk w = {0};
    PyObject *shared = NULL;
    uint32_t first = 0, second = 0;
    for (uint32_t i = 0; shared == NULL && !w.failed && i < p->ncowns; i++) {
        bool repeat = false; /* a cown listed twice is one value */
        for (uint32_t j = 0; j < i; j++) {
            repeat = repeat || p->cowns[j] == p->cowns[i];
        }
        PyObject *value = p->cowns[i]->obj; /* materialised: NULL is None */
        if (!repeat && value != NULL) {
            shared = sharing_walk_value(st, &w, value, i, &first);
            second = i;
        }
    }
    int rc = 0;
    if (w.failed) {
        PyErr_NoMemory();
        rc = -1;
    } else if (shared != NULL) {
        PyObject *name = bocpy_registry_name(st, p->code_id);
        PyObject *a = name ? slot_label(p, first) : NULL;
        PyObject *b = a ? slot_label(p, second) : NULL;
        if (b != NULL) {
            PyErr_Format(PyExc_RuntimeError,
                         "BOCPY_CHECK_SHARING: behavior '%U' did not run: its %U and its %U "
                         "both reach the same '%.200s' object (at %p); on the threads "
                         "backend that object is shared memory, and two behaviors holding "
                         "these cowns separately could use it at once: keep each mutable "
                         "object inside one cown (copy it, or give it a cown of its own)",
                         name, a, b, Py_TYPE(shared)->tp_name, (void *)shared);
        }
        Py_XDECREF(name);
        Py_XDECREF(a);
        Py_XDECREF(b);
        rc = -1;
    }
    free(w.table);
    free(w.stack);
    return rc;
}

/* ------------------------------------------------ the threads backend */

/* Set once by each worker thread of this backend, for its whole life; read
 * only by the same thread. */
static _Thread_local bool on_threads_worker;

/* ---------------------------------------- threads that bodies start */

/*
 * On the interpreters backend a thread that a body starts lives in the
 * worker's interpreter, so it is "inside a behavior", not the program: it
 * may schedule on a runtime that is draining (its behavior's work), and is
 * refused once that runtime is stopping.  On this backend such a thread is
 * a thread of the main interpreter like the program's own, so it is told
 * apart by its origin: the audit hook (lifecycle.c) sees every
 * threading.Thread start, and one started by a worker of this backend (or
 * by such a thread) is recorded in `body_threads`.  Threads started with
 * the low-level _thread.start_new_thread are not recorded (the hook sees
 * only their function): they count as the program's.
 */

/* A weakref.WeakSet of those threading.Thread objects (the main
 * interpreter's; its operations are thread-safe on both builds).  Made by
 * the first starter of a threads runtime, before its workers exist, and
 * kept for the process; acquire/release: whoever sees it sees it made. */
static _Atomic(PyObject *) body_threads;
/* How many threads were ever recorded.  A thread is recorded before it
 * starts (the audit event comes first), and the start orders that for it:
 * a thread that reads 0 here was not recorded.  Relaxed for that reason. */
static atomic_ulong body_threads_recorded;

enum { ORIGIN_UNKNOWN, ORIGIN_PROGRAM, ORIGIN_BODY };
/* The calling thread's origin, found once (it never changes). */
static _Thread_local unsigned char tls_origin;

/* ORIGIN_PROGRAM or ORIGIN_BODY for the calling main-interpreter thread
 * (attached), or -1 with an exception. */
static int thread_origin(void) {
    if (on_threads_worker) {
        return ORIGIN_BODY;
    }
    if (tls_origin != ORIGIN_UNKNOWN) {
        return tls_origin;
    }
    PyObject *set = atomic_load_explicit(&body_threads, memory_order_acquire);
    if (set == NULL || atomic_load_explicit(&body_threads_recorded, memory_order_relaxed) == 0) {
        tls_origin = ORIGIN_PROGRAM;
        return ORIGIN_PROGRAM;
    }
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *current = threading ? PyObject_CallMethod(threading, "current_thread", NULL) : NULL;
    int found = current ? PySequence_Contains(set, current) : -1;
    Py_XDECREF(current);
    Py_XDECREF(threading);
    if (found < 0) {
        return -1;
    }
    tls_origin = found ? ORIGIN_BODY : ORIGIN_PROGRAM;
    return tls_origin;
}

bool bocpy_is_program_thread(bocpy_state *st) {
    if (!st->interp->is_main || on_threads_worker) {
        return false;
    }
    if (tls_origin != ORIGIN_UNKNOWN) {
        return tls_origin == ORIGIN_PROGRAM; /* the common case */
    }
    PyObject *pending = PyErr_GetRaisedException();
    int origin = thread_origin();
    if (origin < 0) {
        /* Not cached: the next call tries again. */
        PyErr_WriteUnraisable(NULL);
        fprintf(stderr, "bocpy: could not tell whether this thread was started by a behavior "
                        "(above); it is treated as a thread of the program\n");
        origin = ORIGIN_PROGRAM;
    }
    PyErr_SetRaisedException(pending);
    return origin == ORIGIN_PROGRAM;
}

bool bocpy_started_by_behavior(bocpy_state *st) {
    return st->interp->is_main && !on_threads_worker && !bocpy_is_program_thread(st);
}

int bocpy_threads_audit_thread_start(PyObject *args) {
    PyObject *set = atomic_load_explicit(&body_threads, memory_order_acquire);
    if (set == NULL || PyInterpreterState_Get() != PyInterpreterState_Main()) {
        return 0; /* no threads runtime ever ran, or another interpreter */
    }
    int origin = thread_origin();
    if (origin != ORIGIN_BODY) {
        return origin < 0 ? -1 : 0;
    }
    PyObject *func =
        PyTuple_Check(args) && PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : NULL;
    if (func == NULL || !PyMethod_Check(func)) {
        return 0; /* _thread.start_new_thread(fn): not recorded (see above) */
    }
    PyObject *thread = PyMethod_GET_SELF(func);
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *type = threading ? PyObject_GetAttrString(threading, "Thread") : NULL;
    int is_thread = type ? PyObject_IsInstance(thread, type) : -1;
    Py_XDECREF(type);
    Py_XDECREF(threading);
    if (is_thread <= 0) {
        return is_thread;
    }
    PyObject *add = PyUnicode_FromString("add");
    PyObject *rv = add ? PyObject_CallMethodOneArg(set, add, thread) : NULL;
    Py_XDECREF(add);
    if (rv == NULL) {
        return -1; /* the start fails: better than a thread taken for the program's */
    }
    Py_DECREF(rv);
    atomic_fetch_add_explicit(&body_threads_recorded, 1, memory_order_relaxed);
    return 0;
}

/* Makes body_threads (the starter of a threads runtime: main interpreter,
 * attached).  0, or -1 with an exception. */
static int body_threads_init(void) {
    if (atomic_load_explicit(&body_threads, memory_order_acquire) != NULL) {
        return 0;
    }
    PyObject *weakref = PyImport_ImportModule("weakref");
    PyObject *set = weakref ? PyObject_CallMethod(weakref, "WeakSet", NULL) : NULL;
    Py_XDECREF(weakref);
    if (set == NULL) {
        return -1;
    }
    /* release: see the declaration.  Kept for the process. */
    atomic_store_explicit(&body_threads, set, memory_order_release);
    return 0;
}

typedef struct threads_worker {
    PyThreadState *tstate; /* this thread in the main interpreter */
    bool attached;
    bool named;             /* threading knows this thread as a non-daemon (below) */
    bocpy_state *state;     /* the main interpreter's */
    bocpy_body_record body; /* for cancel() and the exit report (lifecycle.c) */
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
    /* The id PyThreadState_New gave `ts` (this thread's): what
     * PyThreadState_SetAsyncExc looks for. */
    w->body.thread_ident = PyThread_get_thread_ident();
    atomic_init(&w->body.state, BOCPY_BODY_IDLE);
    atomic_init(&w->body.running_code, 0);
    bocpy_thread_worker_started(index, &w->body);
    on_threads_worker = true; /* worker_start runs on the worker thread */
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
    return bocpy_note_behavior_traceback(PyErr_GetRaisedException());
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

/* Runs func(*args) as the body recorded in `rec`, so that cancel() may
 * interrupt it (bocpy_body_record has the states and their orders). */
static PyObject *call_recorded(bocpy_body_record *rec, int64_t code_id, PyObject *func,
                               PyObject *args) {
    /* relaxed: published by the release of IN_BODY below. */
    atomic_store_explicit(&rec->running_code, code_id, memory_order_relaxed);
    /* seq_cst (it also releases running_code to a cancel() that sees
     * IN_BODY), and the seq_cst load below: with bocpy_cancel's seq_cst
     * store of bocpy_cancelling and then its CAS of this state, either
     * cancel() sees IN_BODY and interrupts the body, or this thread sees
     * the cancel and skips it -- never neither, which left a body starting
     * just as cancel() ran to run on uninterrupted.  (Both may happen: the
     * CAS below then fails and the pending exception is cleared.) */
    atomic_store_explicit(&rec->state, BOCPY_BODY_IN_BODY, memory_order_seq_cst);
    PyObject *result = NULL;
    if (atomic_load_explicit(&bocpy_cancelling, memory_order_seq_cst)) {
        PyErr_SetString(PyExc_RuntimeError, BOCPY_DID_NOT_RUN);
    } else {
        result = PyObject_Call(func, args, NULL);
    }
    int expected = BOCPY_BODY_IN_BODY;
    /* acq_rel: pairs with cancel()'s CAS; whoever wins decides whether an
     * interrupt belongs to this body. */
    if (atomic_compare_exchange_strong_explicit(&rec->state, &expected, BOCPY_BODY_IDLE,
                                                memory_order_acq_rel, memory_order_acquire)) {
        return result;
    }
    /* cancel() won: wait, detached (its PyThreadState_SetAsyncExc may stop
     * the world), until the exception is pending; acquire pairs with its
     * release store of INTERRUPTED. */
    Py_BEGIN_ALLOW_THREADS
        while (atomic_load_explicit(&rec->state, memory_order_acquire) != BOCPY_BODY_INTERRUPTED) {
            sched_yield();
        }
    Py_END_ALLOW_THREADS
    /* The body ended before the exception fired: clear it, so that it does
     * not land in whatever Python code this thread runs next. */
    PyThreadState_SetAsyncExc(rec->thread_ident, NULL);
    atomic_store_explicit(&rec->state, BOCPY_BODY_IDLE, memory_order_relaxed);
    return result;
}

/* Calls the body with its cowns held by this thread; a new reference to
 * its result, or NULL with the exception set. */
static PyObject *call_body(bocpy_state *st, bocpy_payload *p, bocpy_body_record *rec) {
    bocpy_captures cap;
    if (bocpy_captures_open(st, p, &cap) < 0) {
        return NULL;
    }
    PyObject *snapshot = cap.snapshot, *extra = cap.extra;
    PyObject *defaults = cap.defaults, *kwdefaults = cap.kwdefaults, *cells = cap.cells;
    PyObject *func =
        bocpy_build_function(st, p->code_id, defaults, kwdefaults, cells, cap.bare_cells);
    Py_ssize_t nextra = extra != NULL ? PyTuple_GET_SIZE(extra) : 0;
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
    PyObject *result = args ? call_recorded(rec, p->code_id, func, args) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(func);
    Py_XDECREF(snapshot);
    return result;
}

static void threads_run_behavior(bocpy_state *st, boc_behavior *b, bool cancelled,
                                 bocpy_body_record *rec) {
    bocpy_payload *p = boc_behavior_payload(b);
    bocpy_interp *here = st->interp;
    uintptr_t token = bocpy_thread_token();
    PyObject *result = NULL;
    uint32_t held = 0;
    bocpy_noticeboard_behavior_begin();
    if (cancelled) {
        PyErr_SetString(PyExc_RuntimeError, BOCPY_DID_NOT_RUN);
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
    if (check_sharing_of(st, p) < 0) {
        goto done;
    }
    result = call_body(st, p, rec);
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
    if (p->live) {
        Py_CLEAR(p->live_captures); /* attached here: cheaper than behavior_done's way */
    }
    bocpy_noticeboard_behavior_end();
}

/* threading.Thread(...) takes its daemon flag from the thread that makes
 * it, and threading.current_thread() on a thread threading did not start is
 * a _DummyThread, which is a daemon: so a thread a body started would be a
 * daemon, not joined by the interpreter at exit, and its work silently
 * lost.  On the other backend a worker interpreter's thread is not a
 * daemon.  (wait() does not join such threads here: the program's own
 * thread pools start their threads lazily, often from a body, and an idle
 * pool thread ends only at the interpreter's exit, after the pools' exit
 * hooks -- threading joins them then.)  So the worker's dummy is
 * made a non-daemon, once, before its first body: a dummy is never joined
 * itself (threading joins only the threads it started), so this changes
 * nothing but the flag its threads inherit.  `_daemonic` is the attribute
 * behind Thread.daemon on 3.12-3.14 (the property refuses a started
 * thread).  A failure is reported and the worker goes on. */
static void name_worker_thread(threads_worker *w) {
    w->named = true;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *me = threading ? PyObject_CallMethod(threading, "current_thread", NULL) : NULL;
    if (me == NULL || PyObject_SetAttrString(me, "_daemonic", Py_False) < 0) {
        PyErr_WriteUnraisable(NULL);
        fprintf(stderr, "bocpy: could not make a threads-backend worker a non-daemon thread "
                        "(above); threads its behaviors start will be daemons\n");
    }
    Py_XDECREF(me);
    Py_XDECREF(threading);
}

/* The worker is about to end: threading must forget its dummy.  From 3.13
 * a thread-local object does that when PyThreadState_Clear drops it; 3.12
 * keeps the dummy in threading._active for the process (one per worker
 * per runtime, with this thread's id, which a later thread may reuse), so
 * it is removed here, under threading's own lock.  A failure is reported
 * and the worker still stops. */
static void forget_worker_thread(threads_worker *w) {
#if PY_VERSION_HEX < 0x030D0000
    if (!w->named) {
        return;
    }
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *active = threading ? PyObject_GetAttrString(threading, "_active") : NULL;
    PyObject *lock = active ? PyObject_GetAttrString(threading, "_active_limbo_lock") : NULL;
    PyObject *ident = lock ? PyLong_FromUnsignedLong(PyThread_get_thread_ident()) : NULL;
    PyObject *held = ident ? PyObject_CallMethod(lock, "acquire", NULL) : NULL;
    PyObject *popped = held ? PyObject_CallMethod(active, "pop", "OO", ident, Py_None) : NULL;
    /* Released even when the pop failed (its exception set aside). */
    PyObject *failure = held && popped == NULL ? PyErr_GetRaisedException() : NULL;
    PyObject *released = held ? PyObject_CallMethod(lock, "release", NULL) : NULL;
    if (failure != NULL) {
        if (released == NULL) {
            PyErr_WriteUnraisable(NULL); /* the release's; the pop's follows */
        }
        PyErr_SetRaisedException(failure);
    }
    if (popped == NULL || released == NULL) {
        PyErr_WriteUnraisable(NULL);
        fprintf(stderr, "bocpy: could not remove a stopping threads-backend worker from "
                        "threading's table (above)\n");
    }
    Py_XDECREF(released);
    Py_XDECREF(popped);
    Py_XDECREF(held);
    Py_XDECREF(ident);
    Py_XDECREF(lock);
    Py_XDECREF(active);
    Py_XDECREF(threading);
#else
    (void)w;
#endif
}

static void threads_worker_run(void *user, boc_behavior *b, void *arg) {
    (void)user;
    threads_worker *w = arg;
    attach(w);
    if (!w->named) {
        name_worker_thread(w);
    }
    bool cancelled = atomic_load_explicit(&bocpy_cancelling, memory_order_relaxed);
    threads_run_behavior(w->state, b, cancelled, &w->body);
}

static void threads_worker_stop(void *user, unsigned index, void *arg) {
    (void)user;
    (void)index;
    threads_worker *w = arg;
    attach(w);
    bocpy_garbage_drain(w->state->interp);
    forget_worker_thread(w);
    PyThreadState_Clear(w->tstate);
    PyThreadState_DeleteCurrent();
    bocpy_noticeboard_thread_exit();
    free(w);
}

static void threads_behavior_done(void *user, boc_behavior *b) {
    (void)user;
    bocpy_payload *p = boc_behavior_payload(b);
    if (!p->live) {
        bocpy_blob_free(p->captures);
        p->captures = NULL;
    } else if (p->live_captures != NULL) {
        /* Never run (dropped): any thread, maybe with no thread state, so
         * the main interpreter frees it later (no Python, no blocking). */
        bocpy_garbage_push(threads_main_state->interp, p->live_captures);
        p->live_captures = NULL;
    }
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
