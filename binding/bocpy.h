/*
 * bocpy._core: the CPython binding of libboc.
 *
 * This header is shared by the binding's files only.  The binding owns
 * everything Python: one sub-interpreter (with its own GIL) per worker
 * thread, the values of cowns and how they move between interpreters, the
 * code registry through which behavior functions reach workers, and the
 * Python types `Cown` and the `@when` decorator.
 *
 * Files:
 *   module.c       module state, and the module functions (thin wrappers
 *                  over the files below)
 *   when.c         @when / whencall: building and scheduling behaviors
 *   registry.c     behavior code: process-wide registry, per-interpreter caches
 *   transfer.c     serialised values ("blobs") and the pickling context
 *   move.c         types that cross by moving their buffer (<bocpy/move.h>)
 *   cown_value.c   the Cown type and the life of a cown's value
 *   interp.c       per-interpreter records: residents, garbage, foreign entry
 *   lifecycle.c    the runtime's lifecycle: start, wait/quiesce, stop, cancel
 *   bootstrap.c    the script's __main__ image, worker start-up, late binds
 *   worker.c       worker sub-interpreters and running a behavior
 *   threads_backend.c  the worker backends; workers as main-interpreter threads
 *   pool.c         worker interpreters kept from one runtime to the next
 *   pump.c         PinnedCown, pump(), wake-ups and the starvation watchdog
 *   noticeboard.c  the multi-version key/value board
 *   messaging.c    the send/receive channels
 *   strtable.c     the string-keyed hash table both of those use
 *   args.c         argument checks shared by the module functions
 *   matrix.c       the Matrix type (matrix.h)
 * README.md walks through them in the order a behavior meets them.
 */
#ifndef BOCPY_H
#define BOCPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "boc.h"
#include "bocpy/move.h"
#include "compat.h"
#include "matrix.h"

typedef struct bocpy_interp bocpy_interp;
typedef struct bocpy_cown bocpy_cown;
typedef struct bocpy_blob bocpy_blob;
typedef struct bocpy_state bocpy_state;
typedef struct bocpy_move_entry bocpy_move_entry;

/* ------------------------------------------------------------ interpreters */

/* A deferred Py_DECREF for an object owned by another interpreter. */
typedef struct bocpy_garbage {
    struct bocpy_garbage *next;
    PyObject *obj;
} bocpy_garbage;

/* Per-interpreter counters reported by wait(stats=True).  Relaxed
 * everywhere: each change is one atomic add, they are read only for the
 * report, and no other memory is published through them. */
typedef struct bocpy_interp_stats {
    atomic_uint_fast64_t migrations_in;   /* values deserialised here */
    atomic_uint_fast64_t foreign_pickles; /* values pickled by entering another interpreter */
} bocpy_interp_stats;

/*
 * What the binding knows about one interpreter that imported bocpy._core.
 * Records are never freed, only recycled (interp == NULL marks a free one),
 * so a pointer to a record stays valid memory for the life of the process;
 * that lets a cown destroyed on any thread safely look at its value's home.
 */
struct bocpy_interp {
    PyInterpreterState *interp; /* NULL: free record */
    int64_t interp_id;
    int worker_index; /* -1 unless a bocpy worker */
    bool is_main;
    bocpy_state *state;
    /* Guards `residents` and every change of a resident cown's home.  Only
     * worker interpreters track residents: they must evacuate them before
     * the interpreter ends.  The main interpreter outlives every runtime. */
    pthread_mutex_t lock;
    bocpy_cown *residents;
    /* Objects of this interpreter released by other threads; drained by a
     * thread holding this interpreter's GIL (Treiber stack: release push,
     * acquire drain, see interp.c). */
    _Atomic(bocpy_garbage *) garbage;
    /* Threads waiting to enter this interpreter from outside.  Its worker
     * lets go of the GIL between behaviors while this is non-zero.  Relaxed
     * everywhere: a hint -- a worker that misses it keeps the GIL until the
     * switch interval, one that sees it late yields once for nothing -- and
     * the GIL itself orders what the entering thread does. */
    atomic_int gil_wanted;
    /* The worker thread's id, and whether it is inside a behavior body (so
     * that shutting down can interrupt a long body, see bocpy_cancel).
     * in_body and running_code: relaxed everywhere, hints for cancel() and
     * the report of running behaviors.  A body that ends just after the read
     * is named once too often; the interrupt itself checks in_body again
     * inside the interpreter, under its GIL, which orders it. */
    unsigned long thread_ident;
    atomic_bool in_body;
    /* The registry id of the body running while in_body (to name behaviors
     * abandoned at exit). */
    _Atomic int64_t running_code;
    bocpy_interp_stats stats;
    bocpy_interp *next_record;
    /* pool.c: the next interpreter in the pool, and (CPython 3.12 only) the
     * idle thread state that keeps a pooled interpreter's list non-empty. */
    bocpy_interp *next_pooled;
    PyThreadState *placeholder;
};

bocpy_interp *bocpy_interp_acquire_record(PyInterpreterState *interp, bool is_main);
void bocpy_interp_release_record(bocpy_interp *rec);
/* The record of the interpreter whose GIL the calling thread holds. */
bocpy_interp *bocpy_interp_current(void);
/* True when the calling thread holds `rec`'s GIL right now. */
bool bocpy_interp_is_current(const bocpy_interp *rec);
void bocpy_garbage_push(bocpy_interp *rec, PyObject *obj);
void bocpy_garbage_drain(bocpy_interp *rec);

/*
 * Runs `fn(arg)` inside interpreter `rec`, from a thread that currently
 * holds the GIL of another interpreter (its thread state `here`).  The
 * caller's GIL is released first, so no thread ever holds two GILs and no
 * GIL-order deadlock is possible.  `fn` must not let exceptions escape: it
 * reports failure through `arg`.  Returns false (without calling `fn`) if no
 * thread state could be made for `rec`.
 */
bool bocpy_interp_call_in(bocpy_interp *rec, void (*fn)(void *), void *arg);

/* ------------------------------------------------------------------ blobs */

/* A buffer handed over by a movable type's detach (move.c), on its way
 * to the attach that ends its trip.  `payload` is NULL once attached. */
typedef struct bocpy_moved {
    const bocpy_move_entry *type;
    void *payload;
} bocpy_moved;

/* A value serialised for another interpreter: pickle bytes plus the cowns
 * the pickle refers to, each holding a strong reference for as long as the
 * blob exists (a cown inside a value must outlive its trip), plus the
 * buffers moved out of it (bocpy_serialise_move).  A blob with moves is
 * single use: reading it attaches its buffers. */
struct bocpy_blob {
    size_t size;
    bocpy_cown **cowns;
    bocpy_moved *moves;
    uint32_t ncowns;
    uint32_t nmoves;
    bool whole;   /* the value is moves[0] itself: no pickle */
    bool compact; /* data is the compact encoding (transfer.c), not a pickle */
    /* Allocated with offsetof(bocpy_blob, data) + size bytes (transfer.c's
     * blob_alloc; `size` never changes): a Cown(int) keeps a blob
     * of about 45 bytes, where the struct's tail padding would count. */
    char data[];
};

/* Called by Cown.__reduce__ while a blob is being made: the index of the
 * cown in the blob, -1 when no bocpy serialisation is under way, -2 on
 * memory error (exception set). */
Py_ssize_t bocpy_transfer_add_cown(bocpy_cown *cown);
/* Called by _rebuild_cown while a blob is being read: the cown at `index`
 * (borrowed), or NULL when the index is not one of this blob's. */
bocpy_cown *bocpy_transfer_get_cown(Py_ssize_t index);
/* NULL with TypeError naming the type when `obj` cannot cross. */
bocpy_blob *bocpy_serialise(bocpy_state *st, PyObject *obj);
/* The same for a cown's value: objects of registered move types in it are
 * detached into the blob rather than copied.  When the result has moves
 * (bocpy_blob_moves), `obj` is stale and the caller must drop it.  On
 * failure nothing was detached. */
bocpy_blob *bocpy_serialise_move(bocpy_state *st, PyObject *obj);
/* The contents of the cells of `closure` (a function's closure tuple) as
 * the compact blob that bocpy_serialise would make of a tuple of them,
 * without making that tuple; NULL without an exception when a cell is
 * empty, there are more than 16, or a content is not a compact value (the
 * caller takes the general way), NULL with one on failure. */
bocpy_blob *bocpy_serialise_cells(bocpy_state *st, PyObject *closure);
/* Reads a blob that bocpy_serialise made of a tuple of `closure`'s size (as
 * bocpy_serialise_cells makes) straight into `closure`'s cells, which are
 * empty: 1; 0, with nothing changed, when the blob is not such a compact
 * tuple (the caller takes the general way, bocpy_deserialise); -1 with an
 * exception, some cells filled. */
int bocpy_deserialise_cells(bocpy_state *st, const bocpy_blob *blob, PyObject *closure);
/* True when `blob` (may be NULL) carries moved buffers: it is single use,
 * and the object it was made from is stale. */
static inline bool bocpy_blob_moves(const bocpy_blob *blob) {
    return blob != NULL && blob->nmoves > 0;
}
/* Called by _rebuild_moved while a blob is being read: the object rebuilt
 * from the blob's move at `index`, or NULL with an exception. */
PyObject *bocpy_transfer_take_move(bocpy_state *st, Py_ssize_t index);
/* Called by the move reducer while a move blob is being made: the
 * (rebuild, (index,)) reduction of `obj`, whose buffer is detached into
 * the blob; or its own __reduce_ex__ when no move is under way. */
PyObject *bocpy_transfer_reduce_move(bocpy_state *st, PyObject *obj);
PyObject *bocpy_deserialise(bocpy_state *st, const bocpy_blob *blob);
/* No GIL needed. */
void bocpy_blob_free(bocpy_blob *blob);
/* Values that need no serialised copy to be checked or cached: they are
 * immutable and always picklable (None, bool, int, float, complex, str,
 * bytes, Cown handles, and tuples of those). */
bool bocpy_is_plain_immutable(bocpy_state *st, PyObject *obj);

/* ------------------------------------------------------------------ cowns */

/*
 * The rarely used parts of a cown, allocated on demand (bocpy_cown.extra):
 * a main-thread hold, an unread exception's list links, the reason a value
 * is unavailable, and the links of a value that lives in a worker
 * interpreter (a plain scalar never does: it is inline).  Most cowns never
 * have one, which keeps bocpy_cown small (88 bytes, a 96-byte malloc chunk).
 * Installed at most once, by whichever thread first needs it (a holder, or
 * the main thread about to try a hold), with a compare-and-swap: release on
 * success, acquire on failure, and every read of bocpy_cown.extra is an
 * acquire load, so the record's zeroed contents are visible to all.  It is
 * never replaced or freed while the cown lives; its destroyer frees it.
 * Each field keeps its own rule:
 */
typedef struct bocpy_cown_extra {
    /* Links in the list of cowns with an unretrieved exception, and whether
     * the cown is in it (guarded by that list's lock, in cown_value.c). */
    bocpy_cown *unret_prev, *unret_next;
    bool unret_listed;
    /* Why behaviors can no longer have this value (it failed to rebuild in a
     * worker), or NULL; malloc'd.  The main thread may still read the value
     * and give the cown a new one, which clears this.  Holder only. */
    char *unavailable;
    /* A main-thread hold (Cown.acquire; hold_lock, see cown_value.c) and the
     * value as it was then (that holder only). */
    boc_request hold_req;
    PyObject *hold_before;
    /* Links in the resident list of the cown's home (guarded by its lock;
     * bocpy_cown.resident says whether the cown is in it).  The record is
     * made before the cown's first move into a worker (home_reserve in
     * cown_value.c), so linking never needs memory. */
    bocpy_cown *res_prev, *res_next;
} bocpy_cown_extra;

/* What bocpy_cown.inline_kind says the value is (see bocpy_cown.scalar). */
enum {
    BOCPY_INLINE_NONE = 0, /* not inline: obj/blob hold the value */
    BOCPY_INLINE_INT,      /* an exact int, scalar.i */
    BOCPY_INLINE_FLOAT,    /* an exact float, scalar.f */
    BOCPY_INLINE_TRUE,
    BOCPY_INLINE_FALSE,
};

struct bocpy_cown {
    boc_cown base; /* first: libboc hands us boc_cown pointers */
    /*
     * The value.  Touched only by the cown's holder (exclusivity is libboc's
     * guarantee, and the MCS hand-off orders one holder's writes before the
     * next holder's reads), by its destroyer (refcount zero: no holder), or
     * by a stopping worker evacuating residents (quiescent: no holder).
     *   inline_kind != 0: the value is the plain scalar in `scalar` (an
     *         exact int that fits 64 bits, a float, a bool), which shares
     *         its bytes with `blob`; then obj is NULL, there is no blob,
     *         home is NULL, and the cown is not resident
     *   obj   live object owned by interpreter `home`, or NULL
     *   blob  serialised copy, or NULL; when both exist they are equal
     *   neither: the value is None
     * An inline value needs no object and no copy: any interpreter rebuilds
     * it without pickling (bocpy_cown_materialize), which makes it the
     * value outside a hold again; a hold always materialises it first, so
     * inside a hold inline_kind is 0, and settling puts a plain scalar back
     * inline (bocpy_cown_settle).
     */
    PyObject *obj;
    _Atomic(bocpy_interp *) home;
    union {
        bocpy_blob *blob; /* while inline_kind == 0 */
        union {
            int64_t i;
            double f;
        } scalar; /* while inline_kind != 0 */
    };
    /* Outside a hold the blob, when there is one, is an exact copy of the
     * value: every release checks (pickles) a value that may have changed.
     * Inside a hold, once the holder stored another object, the blob is
     * only the value as the hold found it (kept to go back to if the new
     * value is refused at release): then `blob_stale` is set and `obj`
     * (NULL meaning None) is the value. */
    bool blob_stale;
    bool is_exception;
    /* The exception a behavior left here has not been read (unwrap(),
     * .value, .exception): it is reported through logging if the cown dies,
     * or the program ends, first.  Holder or destroyer only. */
    bool unretrieved;
    /* run_behavior: this hold has been settled (a behavior may list one cown
     * more than once; it must be settled once).  Holder only. */
    bool settled;
    /* In the resident list of `home` (extra->res_prev/next; home->lock). */
    bool resident;
    /* BOCPY_INLINE_*: holder or destroyer only, like the value. */
    uint8_t inline_kind;
    /* (The flags sit together: each alone between pointers would be padded
     * to 8 bytes, more bytes of every cown's allocation.) */
    /* Token of the thread allowed to touch `.value` right now, or 0.
     * Relaxed everywhere: a thread compares it only with its own token, and
     * it can read its own token only if its own last store put it there (no
     * other thread stores that token), i.e. while it holds the cown; the
     * value itself is ordered by libboc's hand-off, not by this field. */
    atomic_uintptr_t holder;
    /* The rarely used parts, or NULL (see bocpy_cown_extra). */
    _Atomic(bocpy_cown_extra *) extra;
};

/* The cown's copy, or NULL (none: also while the value is inline).  The
 * holder's or destroyer's to call, like the value's fields. */
static inline bocpy_blob *bocpy_cown_blob(const bocpy_cown *c) {
    return c->inline_kind == BOCPY_INLINE_NONE ? c->blob : NULL;
}

typedef struct {
    PyObject_HEAD bocpy_cown *cown;
} CownObject;

bocpy_cown *bocpy_cown_new(void);
bocpy_cown *bocpy_cown_new_flags(uint32_t flags);
PyObject *bocpy_cown_wrap(bocpy_state *st, bocpy_cown *cown);
/* Cown(value=None)-style constructors: parses the value; the module state,
 * or NULL with an exception. */
bocpy_state *bocpy_cown_parse_new(PyTypeObject *type, PyObject *args, PyObject *kwds,
                                  const char *format, PyObject **value);
/* A new `type` object for `c`, taking over the caller's reference to it. */
PyObject *bocpy_cown_object_new(PyTypeObject *type, bocpy_cown *c);
bool bocpy_cown_check(bocpy_state *st, PyObject *obj);
uintptr_t bocpy_thread_token(void);
/* Makes the value live in `here` (whose GIL the caller holds).  Returns 0,
 * or a negative number with an exception set: BOCPY_VALUE_STUCK when the
 * value lives in another worker interpreter and cannot be pickled out of it
 * (it stays there; a worker may run the behavior there instead, see
 * bocpy_run_behavior), -1 for any other failure. */
#define BOCPY_VALUE_STUCK (-2)
int bocpy_cown_materialize(bocpy_cown *c, bocpy_interp *here);
/* Replaces the value with `obj` (a new reference is taken) living in `here`:
 * 0, or -1 with MemoryError and nothing changed (storing None never fails;
 * nor does storing in the main interpreter). */
int bocpy_cown_store(bocpy_cown *c, bocpy_interp *here, PyObject *obj, bool is_exception);
/* A behavior's result into its result cown (the holder): `obj` and `blob`,
 * its copy (or NULL), taken over.  A plain scalar is kept inline; without
 * memory to keep `obj` here, the copy alone is the value. */
void bocpy_cown_store_result(bocpy_cown *c, bocpy_interp *here, PyObject *obj, bool is_exception,
                             bocpy_blob *blob);
/* After a holder may have changed the value: keeps the serialised cache
 * honest and checks a newly stored value can cross.  `before` is the object
 * the cown held when the hold began.  On failure the old value is restored
 * and -1 is returned with an exception set. */
int bocpy_cown_settle(bocpy_state *st, bocpy_cown *c, bocpy_interp *here, PyObject *before);
/* Serialises every resident of worker interpreter `rec` (the caller holds
 * its GIL; no behavior runs).  A value that cannot be pickled stays resident
 * unless `final` (the interpreter is about to end): then it is lost, the cown
 * gets an exception saying so, and a report waits for
 * bocpy_report_lost_values. */
void bocpy_cown_evacuate_all(bocpy_state *st, bocpy_interp *rec, bool final);
/* Last resort when a worker interpreter's bocpy module is freed with values
 * still resident (its interpreter ended without bocpy_cown_evacuate_all):
 * drops them without Python (caller holds that interpreter's GIL). */
void bocpy_cown_abandon_residents(bocpy_interp *rec);
/* Main interpreter, its GIL held: logs (logger "bocpy", warning) each value
 * lost because the interpreter holding it ended (see above). */
void bocpy_report_lost_values(void);
/* Main interpreter, its GIL held: logs (logger "bocpy") each exception that
 * a behavior left on a result cown nobody read before the cown died; with
 * `live`, also those on cowns still alive (the program is ending).  Returns
 * how many were reported, or -1 with an exception set. */
Py_ssize_t bocpy_report_unretrieved(bocpy_state *st, bool live);
/* bocpy._core._report_unretrieved(live) -> number reported. */
PyObject *bocpy_core_report_unretrieved(PyObject *module, PyObject *live);
PyObject *bocpy_cown_type_spec_create(PyObject *module);

/* --------------------------------------------------------------- registry */

typedef struct bocpy_code_info {
    int64_t id;
} bocpy_code_info;

/* The registry id of `func`'s code, registering it on first sight. */
int64_t bocpy_registry_id_for(bocpy_state *st, PyObject *func);
/* A function for `id` bound to this interpreter's import of its module
 * (borrowed reference), or NULL with an exception. */
PyObject *bocpy_registry_function(bocpy_state *st, int64_t id);
void bocpy_registry_clear_state(bocpy_state *st);

/* --------------------------------------------------------------- behaviors */

/* What libboc carries for us: everything here is plain C memory, so a
 * behavior can be freed on any thread without a GIL. */
typedef struct bocpy_payload {
    int64_t code_id;
    union {
        bocpy_blob *captures;    /* (extra_args, defaults, kwdefaults, closure) or NULL, */
        PyObject *live_captures; /* when `live` (below) */
    };
    bocpy_cown *result;     /* borrowed: the behavior holds a reference */
    uint32_t ncowns;        /* cowns across all arguments */
    uint16_t nargs;         /* arguments given to @when (at most UINT16_MAX) */
    bool defaults_only : 1; /* the captures are the defaults tuple alone */
    bool closure_only : 1;  /* the captures are the closure cells' contents alone */
    bool grouped : 1;       /* the groups are stored (bocpy_payload_groups) */
    /* The threads backend keeps the captures as objects of the main
     * interpreter (`live_captures`, sharing `captures`' slot), so that
     * locks, lambdas and files can be captured.  A strong reference, or NULL
     * once dropped: by whoever runs the body, attached to the main
     * interpreter (threads_backend.c, bocpy_run_behavior for pinned
     * behaviors), else by the backend's behavior_done through the main
     * interpreter's garbage list (any thread, no Python). */
    bool live : 1;
    /* The cowns (borrowed, argument order), then, when `grouped`, the groups
     * (int32_t[nargs], per argument -1 for a cown, else the group length).
     * 32 bytes before the cowns: with one cown and libboc's 112-byte header
     * (two requests), a queued behavior is a 160-byte malloc chunk. */
    bocpy_cown *cowns[];
} bocpy_payload;

/* @when arguments that are all single cowns, up to this many, store no
 * groups: they read bocpy_ungrouped. */
#define BOCPY_UNGROUPED_MAX 16
extern const int32_t bocpy_ungrouped[BOCPY_UNGROUPED_MAX];

/* Per @when argument: -1 for a cown, else the length of its group. */
static inline const int32_t *bocpy_payload_groups(const bocpy_payload *p) {
    return p->grouped ? (const int32_t *)(p->cowns + p->ncowns) : bocpy_ungrouped;
}

PyObject *bocpy_when_type_create(PyObject *module);
PyObject *bocpy_whencall(bocpy_state *st, PyObject *func, PyObject *args, PyObject *extra);
PyObject *bocpy_when(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* "module.qualname" of the code with registry `id`, or NULL with an
 * exception (registry.c). */
PyObject *bocpy_registry_name(bocpy_state *st, int64_t id);
/* Code objects registered so far (process-wide; registry.c). */
size_t bocpy_registry_size(void);
/* The function a behavior of code `id` left unshared (bocpy_function_done),
 * its closure cells empty, as a new reference that is no longer the spare;
 * NULL when there is none.  Only GIL builds keep one (see
 * function_unshared), under the interpreter's GIL. */
PyObject *bocpy_take_spare_closure(bocpy_state *st, int64_t id);
/* Gives a function taken with bocpy_take_spare_closure back, its cells empty
 * again (its reference passes; dropped when another became the spare). */
void bocpy_return_spare_closure(bocpy_state *st, int64_t id, PyObject *func);
/* The kept function of code `id` (see bocpy_state.spare_local) when its
 * closure has `ncells` cells, as a new reference that is no longer kept;
 * NULL when there is none. */
PyObject *bocpy_take_spare_local(bocpy_state *st, int64_t id, Py_ssize_t ncells);
/* A function for registry `id` with the given defaults and closure snapshot
 * (each may be None; `cells` as in bocpy_captures, `bare_cells` saying which
 * form), built in the calling interpreter (registry.c). */
PyObject *bocpy_build_function(bocpy_state *st, int64_t id, PyObject *defaults,
                               PyObject *kwdefaults, PyObject *cells, bool bare_cells);
/* Gives back (steals) a function that bocpy_build_function returned for
 * registry `id`, once its call is over; NULL is ignored. */
void bocpy_function_done(bocpy_state *st, int64_t id, PyObject *func);
/* Main-thread holds (Cown.acquire) currently open (cown_value.c). */
long bocpy_main_holds(void);

/* --------------------------------------------------------------- lifecycle */

/* The runtime behaviors are scheduled on; NULL when none is running.  Only
 * safe to use without a pin on a worker thread inside a behavior (its
 * behavior keeps the runtime alive); everyone else pins (lifecycle.c). */
boc_runtime *bocpy_runtime(void);
/* How bocpy_runtime_pin treats a runtime that is not RUNNING:
 *   SCHEDULE  wait while it starts or stops; start one when none runs
 *             (main interpreter) -- the runtime a behavior is scheduled on
 *   QUIESCE   wait while it starts or stops; NULL (no exception) when none
 *   PEEK      never wait; NULL (no exception) unless running or draining */
typedef enum bocpy_pin_mode {
    BOCPY_PIN_SCHEDULE,
    BOCPY_PIN_QUIESCE,
    BOCPY_PIN_PEEK,
} bocpy_pin_mode;
/* The current runtime, kept alive (not freed, not stopped) until
 * bocpy_runtime_unpin(*pinned).  NULL with an exception on error (SCHEDULE:
 * always an error; the others: only when an exception is set).  GIL held. */
boc_runtime *bocpy_runtime_pin(bocpy_state *st, bocpy_pin_mode mode, bool *pinned);
void bocpy_runtime_unpin(bool pinned);
/* Worker count and live behaviors of the current runtime, read safely from
 * any thread; false (zeros) when none runs. */
bool bocpy_runtime_snapshot(unsigned *workers, uint64_t *live);
/* Refuses os.fork() (through an audit hook) while worker interpreters run:
 * CPython aborts a forked child of a process with live sub-interpreters.
 * Main interpreter, once per process. */
int bocpy_fork_guard_install(void);
/* bocpy._core.start(count, header, values): True when a runtime with `count`
 * workers runs (after waiting out one that starts or stops); False when none
 * runs and `header` is None (build the bootstrap and call again); with a
 * header, this thread starts one from it. */
PyObject *bocpy_start(bocpy_state *st, PyObject *count, PyObject *header, PyObject *values);
/* wait() (stop) or quiesce(): the stats list, and with `board` non-NULL
 * the noticeboard as the run left it in *board. */
PyObject *bocpy_wait(bocpy_state *st, PyObject *timeout, bool stop, PyObject **board);
/* Skips the bodies of queued behaviors and interrupts running ones. */
PyObject *bocpy_cancel(bocpy_state *st);
/* Ends the pooled worker interpreters (no runtime may be running). */
PyObject *bocpy_close_pool(bocpy_state *st);
/* The behaviors whose bodies run on workers right now, as "worker N:
 * name" strings (main interpreter; an empty list when none runs). */
PyObject *bocpy_running_behaviors(bocpy_state *st);
/* Worker `index` of the starting runtime has bootstrapped its interpreter,
 * whose record is `record` (worker thread; read after the start). */
void bocpy_worker_started(unsigned index, bocpy_interp *record);
/* Set by cancel(): workers skip bodies until the runtime stops. */
extern atomic_bool bocpy_cancelling;

/*
 * A threads-backend worker's record of the body it runs (threads_backend.c),
 * so that cancel() can interrupt it and exit can name it.  The worker's own
 * thread state lives in the main interpreter, so the main thread interrupts
 * the body directly (PyThreadState_SetAsyncExc), with no call_in.
 *
 * `state` moves IDLE -> IN_BODY (worker, before the call) -> IDLE (worker,
 * after it), or IN_BODY -> INTERRUPTING (cancel, by CAS) -> INTERRUPTED
 * (cancel, once the exception is pending) -> IDLE (worker).  The CAS makes
 * the interrupt exclusive with the body's end: cancel only raises into a
 * thread whose CAS it won while the body ran, and a worker whose end-of-body
 * CAS fails waits (detached) for INTERRUPTED and then clears the exception
 * if the body ended before it fired, so it never lands outside a body.
 * acq_rel on the CASes, acquire/release on INTERRUPTED: cancel's pending
 * exception is set before the worker reads INTERRUPTED.  `running_code`:
 * relaxed, a name for the report (written before IN_BODY is released).
 */
/* The exception text of a behavior that cancel() kept from running. */
#define BOCPY_DID_NOT_RUN                                                                          \
    "this behavior did not run: bocpy shut down before it could start (the program was "           \
    "interrupted or exited with an error)"
enum { BOCPY_BODY_IDLE, BOCPY_BODY_IN_BODY, BOCPY_BODY_INTERRUPTING, BOCPY_BODY_INTERRUPTED };
typedef struct bocpy_body_record {
    unsigned long thread_ident; /* the worker thread's; set before it runs */
    atomic_int state;
    _Atomic int64_t running_code;
} bocpy_body_record;
/* Worker `index` of the starting threads-backend runtime keeps `record`
 * until it stops (worker thread; read after the start, while pinned). */
void bocpy_thread_worker_started(unsigned index, bocpy_body_record *record);

/* --------------------------------------------------------------- bootstrap */

/* The module bootstrap.c and worker.c call into: the Python side of the
 * image, of worker start-up and shut-down, and of late binds. */
#define BOCPY_BOOTSTRAP_MODULE "bocpy._bootstrap"

/* Main interpreter, STARTING: stores the image (`header`, and the list of
 * bind `values` it refers to) and sys.path for the workers about to start.
 * 0, or -1 with an exception. */
int bocpy_bootstrap_build(bocpy_state *st, PyObject *header, PyObject *values);
/* Main interpreter, the runtime started: remembers __main__'s namespace, so
 * that @when notices globals made after this (late binds). */
void bocpy_bootstrap_started(bocpy_state *st);
/* Frees the bootstrap and the late binds (no worker may be running). */
void bocpy_bootstrap_clear(void);
/* Worker thread, in its new (or pooled) interpreter, GIL held: adopts the
 * main sys.path and applies the image.  bocpy._core (new reference), or
 * NULL with an exception set. */
PyObject *bocpy_bootstrap_worker(void);
/* _core._bootstrap_header() and _bootstrap_value(index), read by the Python
 * side in a worker: the image header (None when there is none) and the bind
 * value at `index` (LookupError when it could not be sent). */
PyObject *bocpy_bootstrap_header(bocpy_state *st);
PyObject *bocpy_bootstrap_value(bocpy_state *st, PyObject *index);
/* The first error a starting worker reported: written by any worker thread
 * (report; report_python takes the exception set), read by the starter once
 * boc_runtime_start returned (get). */
void bocpy_start_error_reset(void);
void bocpy_start_error_get(char *buf, size_t size);
void bocpy_start_error_report(unsigned index, const char *what);
void bocpy_start_error_report_python(unsigned index);
/* Globals the main script assigned after the runtime started ("late
 * binds"): workers apply the ones they have not seen before each behavior.
 * The count is free to read from any thread. */
size_t bocpy_late_bind_count(void);
/* Main interpreter: _core._add_late_bind(name, value). */
PyObject *bocpy_add_late_bind(bocpy_state *st, PyObject *name, PyObject *value);
/* Worker: sets, in `namespace`, late binds [from, count); returns the new
 * count. */
size_t bocpy_late_binds_apply(bocpy_state *st, PyObject *namespace, size_t from);
/* Main interpreter, on each @when: notices new __main__ globals. */
int bocpy_late_binds_refresh(bocpy_state *st);

/* ----------------------------------------------------------------- workers */

extern const boc_runtime_ops bocpy_runtime_ops;
/* What running a behavior on the main thread reports back to pump(). */
typedef struct bocpy_outcome {
    bool body_raised;      /* the body raised; the exception is on the result cown */
    PyObject *first_error; /* new reference to that exception (for raise_on_error) */
    PyObject *propagate;   /* new reference to a BaseException that must propagate */
} bocpy_outcome;

/* Adds the behavior's traceback to `exc` as a note ("Behavior traceback
 * ..."), which unwrap() and the result's repr show, and returns `exc` (its
 * reference passes through; a failure to add the note is ignored). */
PyObject *bocpy_note_behavior_traceback(PyObject *exc);
/* A behavior's captures (when.c), unpacked for bocpy_build_function:
 * `snapshot` is a new reference the caller releases (NULL with none); the
 * others are borrowed from it (Py_None when absent; `extra`, the whencall
 * arguments, NULL when absent).  Live objects on the threads backend, else
 * rebuilt from the payload's blob in the calling interpreter.  `cells` holds
 * an entry per closure cell, (True, value) or (False,) when empty, or with
 * `bare_cells` the values themselves (no cell was empty). */
typedef struct bocpy_captures {
    PyObject *snapshot, *extra, *defaults, *kwdefaults, *cells;
    bool bare_cells;
} bocpy_captures;
/* 0, or -1 with an exception (the blob could not be rebuilt). */
int bocpy_captures_open(bocpy_state *st, bocpy_payload *p, bocpy_captures *out);
/* Runs one behavior on the calling thread (which holds `here`'s GIL).  With
 * `cancelled`, the body is skipped and the result cown records why.  `out`
 * may be NULL (workers capture everything).  With `elsewhere` non-NULL, a
 * requested cown whose value is stuck in another interpreter (see
 * bocpy_cown_materialize) makes it stop before the body, undo what it did,
 * and set *elsewhere to that interpreter: the caller must run the behavior
 * there.  Otherwise *elsewhere (when given) is NULL and the behavior ran. */
void bocpy_run_behavior(bocpy_state *st, bocpy_interp *here, boc_behavior *b, bool cancelled,
                        bocpy_outcome *out, bocpy_interp **elsewhere);
/* Worker threads that exist right now (starting, running or stopping). */
unsigned bocpy_workers_alive(void);
/* Records logged in workers, on their way to the main interpreter, and the
 * main interpreter's levels on their way to workers; the _core._log_*
 * functions. */
PyObject *bocpy_log_forward(PyObject *module, PyObject *arg);
PyObject *bocpy_log_take(PyObject *module, PyObject *unused);
PyObject *bocpy_log_wait(PyObject *module, PyObject *arg);
PyObject *bocpy_log_wake(PyObject *module, PyObject *unused);
PyObject *bocpy_set_log_levels(PyObject *module, PyObject *arg);
PyObject *bocpy_log_levels(PyObject *module, PyObject *unused);

/* -------------------------------------------------------------------- pump */

typedef struct bocpy_pump_result {
    uint64_t executed;
    bool deadline_reached;
    uint64_t raised;
} bocpy_pump_result;

void bocpy_pinned_ready_hook(void *user);
void bocpy_quiescent_hook(void *user);
int bocpy_pinned_init_fds(void);
void bocpy_pinned_wait_for_wake(int64_t timeout_ms);
bool bocpy_pumping(void);
/* Runs pinned behaviors on the calling (main) thread.  busy_is_error: a
 * public pump() on a free-threaded build raises when another thread is
 * pumping; wait()/quiesce() pass false and find nothing to do. */
int bocpy_pump_run(bocpy_state *st, uint64_t deadline_ns, uint64_t max_behaviors,
                   bool raise_on_error, bool busy_is_error, bocpy_pump_result *out);
void bocpy_pinned_runtime_gone(void);
PyObject *bocpy_pinned_type_create(PyObject *module, PyObject *base);
/* The module functions of pump.c: pump(), the wake fd and callback, the
 * poll interval of wait(), and the starvation watchdog. */
PyObject *bocpy_pump(bocpy_state *st, PyObject *deadline, PyObject *max_behaviors,
                     int raise_on_error);
PyObject *bocpy_wake_fd(void);
PyObject *bocpy_set_wake_callback(bocpy_state *st, PyObject *callback);
PyObject *bocpy_set_wait_pump_poll(PyObject *ms);
PyObject *bocpy_set_pump_watchdog(bocpy_state *st, PyObject *warn_ms, PyObject *on_starve);
PyObject *bocpy_stop_watchdog(void);
/* Diagnostics go through logging's "bocpy" logger (pump.c).
 * bocpy_logger_call logs `message` at `level` ("warning", "error") and
 * returns the call's result, or NULL with an exception set;
 * bocpy_log_warning steals `message` (NULL: an exception is set) and
 * reports through sys.unraisablehook if logging itself fails. */
PyObject *bocpy_logger_call(const char *level, PyObject *message);
void bocpy_log_warning(PyObject *message);

/* ------------------------------------------------------------------- pool */

/* Worker interpreters kept between runtimes (pool.c).
 *   enter: a worker thread holding no GIL takes a pooled interpreter and
 *          enters it with a new thread state (returned); NULL when the
 *          pool is empty.
 *   leave: the worker thread, holding `rec`'s GIL through `current`, puts
 *          its interpreter in the pool and deletes `current` (releasing
 *          that GIL).  The interpreter must hold no cown values.
 *   trim:  main interpreter, its GIL held: ends pooled interpreters
 *          beyond the first `keep` (see pool.c for why it may race with a
 *          starting runtime).
 * The pool holds as many interpreters as the largest runtime used. */
PyThreadState *bocpy_pool_enter(void);
void bocpy_pool_leave(bocpy_interp *rec, PyThreadState *current);
size_t bocpy_pool_size(void);
void bocpy_pool_trim(size_t keep);

/* Worker backends (threads_backend.c): the runtime made with the backend
 * selected by _core._set_backend ("interpreters", the default, or
 * "threads"), or NULL with an exception (a bad $BOCPY_CHECK_SHARING, or
 * out of memory); the _core._set_backend and _core._backend functions. */
boc_runtime *bocpy_backend_runtime_new(bocpy_state *st, unsigned count);
/* True on a thread of the program itself: the main interpreter, and not a
 * worker thread of the threads backend (whose bodies run in the main
 * interpreter too).  What "not from inside a behavior" checks test. */
bool bocpy_is_program_thread(bocpy_state *st);
/* True on a main-interpreter thread that a body of the threads backend
 * started (or that such a thread started): not the program's, though not a
 * worker either (threads_backend.c). */
bool bocpy_started_by_behavior(bocpy_state *st);
/* The audit hook's part for "_thread.start_new_thread" and
 * "_thread.start_joinable_thread" (their arguments): records a thread that
 * a body starts.  0, or -1 with an exception (the start then fails). */
int bocpy_threads_audit_thread_start(PyObject *args);

PyObject *bocpy_set_backend(PyObject *module, PyObject *name);
PyObject *bocpy_backend_name(PyObject *module, PyObject *unused);
/* True when the selected backend is "threads": values stay live objects of
 * the main interpreter and are never checked for, or copied by, pickling. */
bool bocpy_backend_shares_values(void);
/* Threads backend, after a hold: the live object (in the main interpreter)
 * is the value; any serialised copy is dropped (cown_value.c). */
void bocpy_cown_settle_shared(bocpy_cown *c);

/* ------------------------------------------------------ string tables */

typedef struct bocpy_strtable_slot {
    char *key; /* NUL-terminated copy; NULL marks an empty slot */
    size_t len;
    uint64_t hash;
    void *value;
} bocpy_strtable_slot;

typedef struct bocpy_strtable {
    bocpy_strtable_slot *slots;
    size_t cap, used;
} bocpy_strtable;

/* The slot of `key` (made, with a NULL value, if `create`); NULL if absent,
 * or out of memory when creating. */
bocpy_strtable_slot *bocpy_strtable_find(bocpy_strtable *t, const char *key, size_t len,
                                         bool create);
/* ------------------------------------------------------------ arguments */

/* The UTF-8 bytes of a str argument, or TypeError naming `what`. */
int bocpy_str_arg(PyObject *obj, const char *what, const char **key, size_t *len);
/* A real number (not bool, not NaN); huge ints are a ValueError. */
int bocpy_float_arg(PyObject *obj, const char *what, double *out);
/* An int (not bool) in [lo, hi]; anything else is a TypeError/ValueError. */
int bocpy_int_arg(PyObject *obj, const char *what, long long lo, long long hi, long long *out);
/* Seconds to nanoseconds, UINT64_MAX ("no limit") when it would overflow. */
uint64_t bocpy_seconds_to_ns(double seconds);
/* METH_FASTCALL|METH_KEYWORDS arguments of `fname`, by position or by
 * keyword: out[i] gets parameter `names[i]` (borrowed), or NULL when an
 * optional one is absent.  The first `nrequired` are required. */
int bocpy_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, Py_ssize_t nparams, Py_ssize_t nrequired,
                     PyObject **out);
/* The largest millisecond count whose nanoseconds fit an int64 (the
 * reference's limit): larger bounds are an OverflowError. */
#define BOCPY_MAX_MS (INT64_MAX / 1000000 - 1)
/* set_wait_pump_poll()'s default, in milliseconds. */
#define BOCPY_DEFAULT_WAIT_POLL_MS 50
/* A positive int (not bool): TypeError otherwise, naming `what` (and
 * saying None is accepted too when `none_ok`: the caller handles None).
 * With `milliseconds`, values past BOCPY_MAX_MS are an OverflowError;
 * without, values too large for C become LLONG_MAX. */
int bocpy_positive_int_arg(PyObject *obj, const char *what, bool none_ok, bool milliseconds,
                           long long *out);

/* ------------------------------------------------- noticeboard, messages */

#define BOCPY_TIMEOUT_TAG "__bocpy_timeout__"

void bocpy_noticeboard_behavior_begin(void);
void bocpy_noticeboard_behavior_end(void);
void bocpy_noticeboard_thread_exit(void);
PyObject *bocpy_board_view_type_create(PyObject *module);
PyObject *bocpy_removed_create(PyObject *module);
PyObject *bocpy_noticeboard(bocpy_state *st, bool fresh);
/* notice_write, or with `seed` notice_seed (which may write while no
 * runtime runs: it seeds the next run's board). */
PyObject *bocpy_notice_write(bocpy_state *st, PyObject *key, PyObject *value, bool seed);
PyObject *bocpy_notice_delete(bocpy_state *st, PyObject *key);
/* Empties the board (wait() does, as it ends a run); -1 with an exception. */
int bocpy_noticeboard_clear(void);
PyObject *bocpy_notice_update(bocpy_state *st, PyObject *key, PyObject *fn, PyObject *dflt,
                              PyObject *removed);
PyObject *bocpy_notice_read(bocpy_state *st, PyObject *key, PyObject *dflt);
PyObject *bocpy_send(bocpy_state *st, PyObject *tag, PyObject *contents);
PyObject *bocpy_receive(bocpy_state *st, PyObject *tags, PyObject *timeout, PyObject *after);
PyObject *bocpy_drain(PyObject *tags);
PyObject *bocpy_set_tags(PyObject *tags);

/* ------------------------------------------------------------ move types */

/* A registered movable type, process-wide (one per stable name).  Never
 * freed, so blobs may point at it from any thread. */
struct bocpy_move_entry {
    char *name;   /* "<__module__>.<__qualname__>" */
    char *module; /* imported to register the type where it is missing */
    BocPyMoveType spec;
    bocpy_move_entry *next;
};

/* Per interpreter (in its module state). */
typedef struct bocpy_move_state {
    PyObject *types;    /* dict: type -> int (bocpy_move_entry address) */
    PyObject *names;    /* dict: name -> type registered here under it */
    PyObject *dispatch; /* dict: type -> reducer, a pickler dispatch_table */
    PyObject *rebuild;  /* _core._rebuild_moved */
    PyObject *pickler;  /* pickle.Pickler */
    PyObject *bytesio;  /* io.BytesIO */
} bocpy_move_state;

/* Module exec: the capsule and the move functions; 0 or -1. */
int bocpy_move_module_init(PyObject *module, bocpy_state *st);
int bocpy_move_traverse(bocpy_state *st, visitproc visit, void *arg);
void bocpy_move_clear(bocpy_state *st);
/* The entry of `obj`'s exact type when it is registered here, else NULL. */
const bocpy_move_entry *bocpy_move_entry_of(bocpy_state *st, PyObject *obj);
/* Detaches `obj`'s buffer (a payload), or NULL with an exception. */
void *bocpy_move_detach(const bocpy_move_entry *type, PyObject *obj);
void bocpy_move_restore(const bocpy_move_entry *type, PyObject *obj, void *payload);
/* A new object owning `*payload` in this interpreter (which is then set to
 * NULL), or NULL with an exception and `*payload` untouched. */
PyObject *bocpy_move_attach(bocpy_state *st, const bocpy_move_entry *type, void **payload);
/* Any thread, no GIL needed. */
void bocpy_move_free(const bocpy_move_entry *type, void *payload);

/* ----------------------------------------------------------- module state */

typedef struct bocpy_codemap_entry {
    PyObject *code; /* strong */
    int64_t id;
} bocpy_codemap_entry;

struct bocpy_state {
    PyTypeObject *cown_type;
    PyTypeObject *pinned_type;
    PyTypeObject *when_type;
    PyTypeObject *board_view_type;
    PyTypeObject *matrix_type;  /* bocpy.Matrix of this interpreter */
    PyObject *matrix_rebuild;   /* _core._matrix_rebuild (unpickles a Matrix) */
    PyObject *removed;          /* bocpy.REMOVED of this interpreter */
    PyObject *pump_result_type; /* bocpy.PumpResult (main interpreter) */
    PyObject *module;           /* borrowed: the state lives inside it */
    PyObject *dumps, *loads, *protocol;
    PyObject *marshal_dumps, *marshal_loads;
    PyObject *fallback_dumps;  /* bocpy._pickling.dumps, imported lazily */
    PyObject *rebuild_cown;    /* _core._rebuild_cown */
    PyObject *starter;         /* bocpy.start (main interpreter; _set_starter) */
    PyObject *main_dict;       /* __main__.__dict__ when the runtime started */
    Py_ssize_t main_dict_size; /* its size when last looked at */
    bocpy_interp *interp;
    /* code object -> registry id, keyed by identity (open addressing) */
    bocpy_codemap_entry *codemap;
    size_t codemap_cap, codemap_len;
    /* registry id -> function bound to this interpreter's module globals */
    PyObject **functions;
    size_t functions_cap;
    /* A function with a closure, of registry id `spare_id`, that its last
     * behavior left unshared: the next behavior of that id reuses it with
     * new cell contents (bocpy_build_function, bocpy_function_done).  NULL
     * when there is none. */
    PyObject *spare_closure;
    int64_t spare_id;
    /* A function defined in a function, of registry id `spare_local_id`,
     * that arrived in a behavior's captures holding itself (transfer.c's
     * 'S') and that nothing else held when the behavior was done: the
     * next compact decoding of that id reuses it (bocpy_take_spare_local),
     * its closure cells empty and no defaults.  NULL when there is none. */
    PyObject *spare_local;
    int64_t spare_local_id;
    bocpy_move_state move;
    /* Free-threaded builds: guards codemap, functions, main_dict_size and
     * fallback_dumps against the interpreter's other threads (compat.h). */
    bocpy_ft_mutex ft_lock;
};

/* True when some type is registered as movable in this interpreter. */
static inline bool bocpy_move_any(const bocpy_state *st) {
    return st->move.types != NULL && PyDict_GET_SIZE(st->move.types) > 0;
}

bocpy_state *bocpy_state_of_type(PyTypeObject *tp);
bocpy_state *bocpy_state_of_module(PyObject *module);

#endif /* BOCPY_H */
