/*
 * lifecycle.c: the one bocpy runtime of the process -- starting it, waiting
 * for it to go quiet, and tearing it down -- and the lifecycle state machine
 * that lets any Python thread schedule at any time.
 *
 * The lifecycle (one state, one lock, one transition at a time):
 *
 *            start()                      ok
 *   STOPPED ---------> STARTING ------------------> RUNNING
 *      ^                   |  failed                 |   ^
 *      |                   v                  wait() |   | timeout, Ctrl-C,
 *      +---------------- STOPPED                     v   | held cowns
 *      |                                         DRAINING
 *      |   workers joined, runtime freed             |  pins == 0 and
 *      +------------------------------------ JOINING <--+  live == 0
 *
 *   STOPPED   no runtime.  A main-interpreter thread that schedules starts
 *             one (through bocpy.start); other interpreters get an error.
 *   STARTING  one thread (the starter) makes the runtime; everyone else
 *             who needs it waits (GIL released) for RUNNING or STOPPED.
 *   RUNNING   anyone may pin the runtime and schedule on it.
 *   DRAINING  one thread (the stopper, in wait()) waits for the work to
 *             finish.  Work that belongs to the runtime being drained may
 *             still schedule on it: behaviors' own nested scheduling,
 *             threads of worker interpreters, a thread that already holds a
 *             pin, pinned bodies and the stopper itself.  Any other
 *             main-interpreter thread waits for the next runtime, and
 *             starts it if nobody else has: its behavior is never lost and
 *             never lands on a runtime that is going away.
 *   JOINING   the work is done: the stopper stops the workers and frees the
 *             runtime.  Nobody may schedule (a worker-interpreter thread
 *             that tries gets an error that says why); main-interpreter
 *             schedulers wait.
 *
 * Invariants (lc_lock guards all of them):
 *   - current_runtime != NULL exactly in RUNNING and DRAINING;
 *   - `pins` counts threads between bocpy_runtime_pin() and unpin(): a
 *     pinned runtime is not freed.  A scheduler holds its pin from before
 *     it pickles the captures until boc_schedule has counted the behavior
 *     as live, so the stopper's check "pins == 0 and live == 0", made under
 *     lc_lock, sees every behavior anyone is still scheduling;
 *   - a worker thread running a behavior needs no pin: its own behavior is
 *     live, so the runtime cannot leave DRAINING under it;
 *   - lc_lock is a leaf: nobody takes the GIL, or waits, while holding it
 *     (waiting is pthread_cond_timedwait with the GIL released).
 * Every wait here is sliced (at most 50 ms at a time with the GIL released)
 * so that Ctrl-C and timeouts are noticed promptly.
 */
#include "bocpy.h"

#include <math.h>
#include <string.h>
#include <time.h>

/* Set by cancel(), cleared when a runtime starts or stops.  A lone flag
 * that publishes nothing, so relaxed almost everywhere: a worker (or pump)
 * that misses a fresh cancel runs one more body, as if cancel() had come a
 * moment later -- and cancel() then interrupts that body, because the one
 * race that matters, a threads-backend body starting as cancel() runs, is
 * closed by seq_cst on both sides (the store in bocpy_cancel, and the
 * store/load pair in threads_backend.c's call_recorded).  The clears
 * happen with no worker thread running (before the start creates them,
 * after the stop joins them). */
atomic_bool bocpy_cancelling;

typedef enum lifecycle_state {
    LC_STOPPED,
    LC_STARTING,
    LC_RUNNING,
    LC_DRAINING,
    LC_JOINING,
} lifecycle_state;

static pthread_mutex_t lc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lc_cond;
static pthread_once_t lc_once = PTHREAD_ONCE_INIT;
static lifecycle_state lc_state = LC_STOPPED;
static uint64_t lc_generation; /* bumped on every transition */
static unsigned long lc_pins;
/* acquire/release: a thread that sees the runtime also sees it started.
 * Written under lc_lock; read without it only by worker threads (whose own
 * behavior keeps it alive) and by the pump watchdog (see pump.c). */
static _Atomic(boc_runtime *) current_runtime;
/* The thread that owns STARTING or DRAINING/JOINING; its pins nest. */
static _Thread_local bool tls_lifecycle_owner;
static _Thread_local unsigned tls_pins;
/* Per worker of the running runtime, indexed by worker: its interpreter's
 * record (interpreters backend) or its body record (threads backend); the
 * other array's entries stay NULL.  Written by the workers while STARTING,
 * read under a pin (RUNNING/DRAINING), freed after the stop. */
static bocpy_interp **worker_records;
static bocpy_body_record **thread_records;
static unsigned worker_records_len;

#define WAIT_SLICE_NS (50 * 1000 * 1000)

static void lc_init(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&lc_cond, &attr);
    pthread_condattr_destroy(&attr);
}

static void lc_lock_acquire(void) {
    pthread_once(&lc_once, lc_init);
    pthread_mutex_lock(&lc_lock);
}

/* Caller holds lc_lock. */
static void lc_transition(lifecycle_state to) {
    lc_state = to;
    lc_generation++;
    pthread_cond_broadcast(&lc_cond);
}

/* Sleeps (GIL released) until the next transition after `seen`, or one
 * slice.  Caller holds the GIL and not lc_lock.  -1 on Ctrl-C (exception
 * set; only the main thread ever sees one). */
static int lc_wait_for_change(uint64_t seen) {
    Py_BEGIN_ALLOW_THREADS
        lc_lock_acquire();
        if (lc_generation == seen) {
            struct timespec at;
            clock_gettime(CLOCK_MONOTONIC, &at);
            at.tv_nsec += WAIT_SLICE_NS;
            at.tv_sec += at.tv_nsec / 1000000000L;
            at.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&lc_cond, &lc_lock, &at);
        }
        pthread_mutex_unlock(&lc_lock);
    Py_END_ALLOW_THREADS
    return PyErr_CheckSignals();
}

boc_runtime *bocpy_runtime(void) {
    /* acquire pairs with the starter's release: the runtime is started. */
    return atomic_load_explicit(&current_runtime, memory_order_acquire);
}

/* May the calling thread schedule on a DRAINING runtime?  Yes when what it
 * schedules belongs to the work being drained (see the top of the file).
 * `program` is bocpy_is_program_thread(), found before taking lc_lock (it
 * may run Python the first time, see threads_backend.c). */
static bool belongs_to_draining_work(bool program) {
    return !program || tls_lifecycle_owner || tls_pins > 0 || bocpy_pumping();
}

boc_runtime *bocpy_runtime_pin(bocpy_state *st, bocpy_pin_mode mode, bool *pinned) {
    *pinned = false;
    if (boc_current_worker() >= 0) {
        /* A worker thread of the running runtime, inside a behavior (the only
         * time its interpreter runs Python, bar worker_stop): that behavior
         * is live, so the runtime stays until it is done.  No pin, no lock. */
        boc_runtime *rt = bocpy_runtime();
        if (rt == NULL && mode == BOCPY_PIN_SCHEDULE) {
            PyErr_SetString(PyExc_RuntimeError,
                            "bocpy is shutting down: a behavior cannot be scheduled while the "
                            "workers stop (an atexit callback of a worker interpreter?)");
        }
        return rt;
    }
    bool program = bocpy_is_program_thread(st);
    for (;;) {
        lc_lock_acquire();
        lifecycle_state state = lc_state;
        uint64_t seen = lc_generation;
        bool allowed =
            state == LC_RUNNING || (state == LC_DRAINING && belongs_to_draining_work(program));
        if (allowed) {
            lc_pins++;
            tls_pins++;
            *pinned = true;
            /* relaxed: written under lc_lock, which we hold. */
            boc_runtime *rt = atomic_load_explicit(&current_runtime, memory_order_relaxed);
            pthread_mutex_unlock(&lc_lock);
            assert(rt != NULL);
            return rt;
        }
        pthread_mutex_unlock(&lc_lock);
        if (mode == BOCPY_PIN_PEEK) {
            return NULL;
        }
        if (state == LC_STOPPED) {
            if (mode == BOCPY_PIN_QUIESCE) {
                return NULL;
            }
            if (bocpy_started_by_behavior(st)) {
                PyErr_SetString(PyExc_RuntimeError,
                                "bocpy is shutting down or has shut down: the runtime that ran "
                                "the behavior which started this thread has stopped, so this "
                                "thread cannot schedule any more; a thread that a behavior "
                                "started must schedule before that behavior returns (or join "
                                "the thread inside the behavior)");
                return NULL;
            }
            if (!program || st->starter == NULL) {
                PyErr_SetString(PyExc_RuntimeError,
                                "the bocpy runtime is not running; import bocpy in the main "
                                "interpreter and schedule behaviors from there");
                return NULL;
            }
            PyObject *rv = PyObject_CallNoArgs(st->starter);
            if (rv == NULL) {
                return NULL;
            }
            Py_DECREF(rv);
            continue;
        }
        if (state != LC_STARTING && (tls_lifecycle_owner || belongs_to_draining_work(program))) {
            /* Waiting would wait for ourselves (or for the behavior we are
             * part of): the runtime is in its last steps. */
            PyErr_SetString(PyExc_RuntimeError,
                            "bocpy is shutting down: every behavior has run and the workers "
                            "are stopping, so this one cannot be scheduled; a thread that a "
                            "behavior started must schedule before that behavior returns (or "
                            "join the thread inside the behavior)");
            return NULL;
        }
        /* STARTING, or DRAINING/JOINING on behalf of another thread. */
        if (lc_wait_for_change(seen) < 0) {
            return NULL;
        }
    }
}

void bocpy_runtime_unpin(bool pinned) {
    if (!pinned) {
        return;
    }
    lc_lock_acquire();
    assert(lc_pins > 0 && tls_pins > 0);
    lc_pins--;
    tls_pins--;
    /* The stopper (wait(), in DRAINING) sleeps on the internal wake fd until
     * the last pin goes.  Its own pins (each slice pumps, and pumping pins)
     * must not wake it: it checks lc_pins itself right after, and a wake-up
     * here left the fd readable, so every slice's poll returned at once and
     * wait() spun a whole core for as long as a behavior ran. */
    bool wake = lc_pins == 0 && lc_state == LC_DRAINING && !tls_lifecycle_owner;
    pthread_mutex_unlock(&lc_lock);
    if (wake) {
        bocpy_quiescent_hook(NULL); /* the stopper polls the internal wake fd */
    }
}

bool bocpy_runtime_snapshot(unsigned *workers, uint64_t *live) {
    lc_lock_acquire();
    /* relaxed: written under lc_lock, which we hold.  The runtime is freed
     * only after it is cleared under lc_lock. */
    boc_runtime *rt = atomic_load_explicit(&current_runtime, memory_order_relaxed);
    *workers = rt ? boc_runtime_worker_count(rt) : 0;
    *live = rt ? boc_runtime_live(rt) : 0;
    pthread_mutex_unlock(&lc_lock);
    return rt != NULL;
}

void bocpy_worker_started(unsigned index, bocpy_interp *record) {
    if (index < worker_records_len) {
        worker_records[index] = record;
    }
}

void bocpy_thread_worker_started(unsigned index, bocpy_body_record *record) {
    if (index < worker_records_len) {
        thread_records[index] = record;
    }
}

/* Forgets what the last start made (bootstrap.c's bootstrap and late binds,
 * and the records of its workers). */
static void bootstrap_clear(void) {
    bocpy_bootstrap_clear();
    free(worker_records);
    worker_records = NULL;
    free(thread_records);
    thread_records = NULL;
    worker_records_len = 0;
}

static int check_main(bocpy_state *st, const char *name) {
    if (!bocpy_is_program_thread(st)) {
        PyErr_Format(PyExc_RuntimeError,
                     "bocpy.%s() can only be called from the main interpreter, not from "
                     "inside a behavior",
                     name);
        return -1;
    }
    return 0;
}

/* Caller owns STARTING: back to STOPPED, waking whoever waits. */
static void start_failed(void) {
    bootstrap_clear();
    lc_lock_acquire();
    tls_lifecycle_owner = false;
    lc_transition(LC_STOPPED);
    pthread_mutex_unlock(&lc_lock);
}

/* Caller owns STARTING: makes the runtime from the bootstrap and starts its
 * workers.  0, or -1 with an exception (the state is STOPPED again). */
static int start_owned(bocpy_state *st, long long count, PyObject *header, PyObject *values) {
    bootstrap_clear();
    if (bocpy_bootstrap_build(st, header, values) < 0) {
        start_failed();
        return -1;
    }
    worker_records = calloc((size_t)count, sizeof(*worker_records));
    thread_records = calloc((size_t)count, sizeof(*thread_records));
    if (worker_records == NULL || thread_records == NULL) {
        start_failed();
        PyErr_NoMemory();
        return -1;
    }
    worker_records_len = (unsigned)count;

    bocpy_start_error_reset();
    atomic_store_explicit(&bocpy_cancelling, false, memory_order_relaxed); /* see its definition */
    boc_runtime *rt = bocpy_backend_runtime_new(st, (unsigned)count);
    if (rt == NULL) { /* the exception is set */
        start_failed();
        return -1;
    }
    int rc;
    /* Workers need the main GIL while they create their interpreters. */
    Py_BEGIN_ALLOW_THREADS
        rc = boc_runtime_start(rt);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        boc_runtime_free(rt);
        char why[512];
        bocpy_start_error_get(why, sizeof(why));
        start_failed();
        PyErr_Format(PyExc_RuntimeError, "bocpy could not start its workers: %s",
                     why[0] ? why : "thread creation failed");
        return -1;
    }
    bocpy_bootstrap_started(st);
    lc_lock_acquire();
    /* release: a worker or the watchdog that reads it sees it started. */
    atomic_store_explicit(&current_runtime, rt, memory_order_release);
    tls_lifecycle_owner = false;
    lc_transition(LC_RUNNING);
    pthread_mutex_unlock(&lc_lock);
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
    if (header != Py_None && !PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "start(): values must be a list");
        return NULL;
    }
    /* True: a runtime with `count` workers runs.  False: none runs and
     * `header` is None -- build the bootstrap and call again. */
    for (;;) {
        lc_lock_acquire();
        lifecycle_state state = lc_state;
        uint64_t seen = lc_generation;
        /* A program thread (check_main passed). */
        if (state == LC_RUNNING || (state == LC_DRAINING && belongs_to_draining_work(true))) {
            /* relaxed: written under lc_lock, which we hold. */
            boc_runtime *rt = atomic_load_explicit(&current_runtime, memory_order_relaxed);
            unsigned running = boc_runtime_worker_count(rt);
            pthread_mutex_unlock(&lc_lock);
            if ((unsigned)count != running) {
                PyErr_Format(PyExc_RuntimeError,
                             "bocpy is already running with %u workers; call bocpy.wait() "
                             "before starting it again with %lld",
                             running, count);
                return NULL;
            }
            Py_RETURN_TRUE;
        }
        if (state == LC_STOPPED) {
            if (header == Py_None) {
                pthread_mutex_unlock(&lc_lock);
                Py_RETURN_FALSE;
            }
            /* This thread makes the runtime; the others wait for it. */
            tls_lifecycle_owner = true;
            lc_transition(LC_STARTING);
            pthread_mutex_unlock(&lc_lock);
            if (start_owned(st, count, header, values) < 0) {
                return NULL;
            }
            Py_RETURN_TRUE;
        }
        pthread_mutex_unlock(&lc_lock);
        if (state != LC_STARTING && (tls_lifecycle_owner || belongs_to_draining_work(true))) {
            PyErr_SetString(PyExc_RuntimeError,
                            "bocpy.start() cannot be called while this thread is stopping the "
                            "runtime (from inside wait())");
            return NULL;
        }
        if (lc_wait_for_change(seen) < 0) {
            return NULL;
        }
    }
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
        /* relaxed: counters (bocpy_interp_stats). */
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

/* The stopper, in JOINING: joins the workers and frees the runtime. */
static void stop_runtime(boc_runtime *rt) {
    Py_BEGIN_ALLOW_THREADS
        /* Already quiescent (checked under lc_lock with no pins left), and
         * nobody can schedule on it any more: the workers may go. */
        assert(boc_runtime_live(rt) == 0);
        boc_runtime_stop(rt);
        bocpy_pinned_runtime_gone();
    Py_END_ALLOW_THREADS
    boc_runtime_free(rt);
    bootstrap_clear();
    /* The board belongs to the run that just ended: clear it before any
     * other thread can start the next run (it cannot before STOPPED), so a
     * new run's first writes are never swept away with the old board. */
    if (bocpy_noticeboard_clear() < 0) {
        PyErr_WriteUnraisable(NULL);
    }
    atomic_store_explicit(&bocpy_cancelling, false, memory_order_relaxed); /* see its definition */
    lc_lock_acquire();
    tls_lifecycle_owner = false;
    lc_transition(LC_STOPPED);
    pthread_mutex_unlock(&lc_lock);
}

/* The stopper gives up (timeout, Ctrl-C, held cowns): DRAINING -> RUNNING. */
static void stop_abandoned(void) {
    lc_lock_acquire();
    assert(lc_state == LC_DRAINING && tls_lifecycle_owner);
    tls_lifecycle_owner = false;
    lc_transition(LC_RUNNING);
    pthread_mutex_unlock(&lc_lock);
}

/* The main thread holds a cown while behaviors are in flight: one of them
 * may need it, and waiting would then never end.  Checked on every slice,
 * since another thread may schedule on a held cown at any time. */
static int check_no_main_holds(boc_runtime *rt) {
    if (bocpy_main_holds() > 0 && boc_runtime_live(rt) > 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the main thread still holds acquired cowns while behaviors are in "
                        "flight; release() them (or leave their 'with' block) before waiting");
        return -1;
    }
    return 0;
}

/* The board as the run leaves it, for wait(noticeboard=True): taken after
 * the last behavior and before the stop clears the board.  A new reference,
 * or NULL with an exception set. */
static PyObject *board_snapshot(bocpy_state *st) {
    PyObject *view = bocpy_noticeboard(st, true);
    if (view == NULL) {
        return NULL;
    }
    PyObject *board = PyObject_CallMethod(view, "to_dict", NULL);
    Py_DECREF(view);
    return board;
}

/* wait()/quiesce() with no runtime: no stats, and the board as it is (only
 * notice_seed can have written it, for the next run; it is not cleared). */
static PyObject *no_runtime_result(bocpy_state *st, PyObject **board) {
    if (board != NULL && (*board = board_snapshot(st)) == NULL) {
        return NULL;
    }
    return PyList_New(0);
}

PyObject *bocpy_wait(bocpy_state *st, PyObject *timeout_obj, bool stop, PyObject **board) {
    const char *name = stop ? "wait" : "quiesce";
    if (check_main(st, name) < 0) {
        return NULL;
    }
    if (bocpy_pumping()) {
        PyErr_Format(PyExc_RuntimeError,
                     "bocpy.%s() cannot be called from inside a pinned behavior: the "
                     "behavior itself is still running",
                     name);
        return NULL;
    }
    if (tls_pins > 0 || tls_lifecycle_owner) {
        PyErr_Format(PyExc_RuntimeError,
                     "bocpy.%s() cannot be called while this thread is scheduling a behavior "
                     "or stopping the runtime (from a __reduce__ or signal handler?)",
                     name);
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
    uint64_t start = boc_now_ns();
    uint64_t budget = timeout < 0 ? UINT64_MAX : bocpy_seconds_to_ns(timeout);

    /* quiesce() pins the runtime for as long as it looks at it; wait() takes
     * the runtime from RUNNING to DRAINING (another thread's wait() in
     * progress does the job for both: wait for it to end). */
    boc_runtime *rt = NULL;
    bool pinned = false;
    if (!stop) {
        rt = bocpy_runtime_pin(st, BOCPY_PIN_QUIESCE, &pinned);
        if (rt == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            bocpy_garbage_drain(st->interp);
            return no_runtime_result(st, board);
        }
    } else {
        for (;;) {
            lc_lock_acquire();
            lifecycle_state state = lc_state;
            uint64_t seen = lc_generation;
            if (state == LC_RUNNING) {
                /* relaxed: written under lc_lock, which we hold. */
                rt = atomic_load_explicit(&current_runtime, memory_order_relaxed);
                tls_lifecycle_owner = true;
                lc_transition(LC_DRAINING);
                pthread_mutex_unlock(&lc_lock);
                break;
            }
            pthread_mutex_unlock(&lc_lock);
            if (state == LC_STOPPED) {
                bocpy_garbage_drain(st->interp);
                return no_runtime_result(st, board);
            }
            if (lc_wait_for_change(seen) < 0) {
                return NULL;
            }
        }
    }
    /* From here to the end of the loop this thread sleeps on the internal
     * wake fd, which the quiescent hook signals only while someone watches:
     * watch before the first look at the live count (see
     * boc_runtime_watch_quiescence). */
    boc_runtime_watch_quiescence(rt, true);
    for (;;) {
        if (check_no_main_holds(rt) < 0) {
            goto failed;
        }
        /* Pinned behaviors run here, on the main thread, while we wait. */
        bocpy_pump_result pumped;
        if (bocpy_pump_run(st, 0, 0, false, false, &pumped) < 0) {
            goto failed; /* a pinned body raised KeyboardInterrupt or SystemExit */
        }
        if (stop) {
            /* The one place DRAINING becomes JOINING: with no pins left,
             * nobody but the behaviors themselves can add work, and with
             * none live nothing can.  acquire (in boc_runtime_live): the
             * work of every completed behavior is visible. */
            lc_lock_acquire();
            bool done = lc_pins == 0 && boc_runtime_live(rt) == 0;
            if (done) {
                atomic_store_explicit(&current_runtime, NULL, memory_order_release);
                lc_transition(LC_JOINING);
            }
            pthread_mutex_unlock(&lc_lock);
            if (done) {
                break;
            }
        } else if (boc_runtime_wait_quiescent(rt, 0) == 0) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            goto failed; /* Ctrl-C: the runtime keeps running */
        }
        uint64_t elapsed = boc_now_ns() - start;
        if (budget != UINT64_MAX && elapsed >= budget) {
            char seconds[32]; /* PyErr_Format has no floating-point conversions */
            snprintf(seconds, sizeof(seconds), "%.3g", timeout);
            PyErr_Format(PyExc_TimeoutError,
                         "%llu behaviors were still in flight after %s s; the runtime keeps "
                         "running: call %s() again to keep waiting",
                         (unsigned long long)boc_runtime_live(rt), seconds, name);
            goto failed;
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
    boc_runtime_watch_quiescence(rt, false);
    PyObject *stats = collect_stats(rt);
    if (stats != NULL && board != NULL && (*board = board_snapshot(st)) == NULL) {
        Py_CLEAR(stats);
    }
    if (stop) {
        /* Stop even when the stats could not be made: JOINING is final. */
        stop_runtime(rt);
        bocpy_garbage_drain(st->interp);
    } else {
        bocpy_runtime_unpin(pinned);
    }
    return stats;
failed:
    boc_runtime_watch_quiescence(rt, false);
    if (stop) {
        stop_abandoned();
    } else {
        bocpy_runtime_unpin(pinned);
    }
    return NULL;
}

PyObject *bocpy_close_pool(bocpy_state *st) {
    if (check_main(st, "_close_pool") < 0) {
        return NULL;
    }
    lc_lock_acquire();
    bool stopped = lc_state == LC_STOPPED;
    pthread_mutex_unlock(&lc_lock);
    if (!stopped || bocpy_workers_alive() > 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the bocpy runtime is running (or starting or stopping its workers); "
                        "call bocpy.wait() before ending its worker interpreters");
        return NULL;
    }
    bocpy_pool_trim(0);
    bocpy_report_lost_values();
    Py_RETURN_NONE;
}

static void interrupt_body(void *arg) {
    bocpy_interp *rec = arg;
    /* Raised in the body at its next bytecode; a body blocked in C (a
     * sleep, a lock) sees it when that call returns.  relaxed: we hold the
     * worker's GIL, which its body runs under, so this read is ordered. */
    if (atomic_load_explicit(&rec->in_body, memory_order_relaxed)) {
        PyThreadState_SetAsyncExc(rec->thread_ident, PyExc_KeyboardInterrupt);
    }
}

/* Interrupts the threads-backend body of `rec`, if one runs (see
 * bocpy_body_record for the states).  The caller is a main-interpreter
 * thread with its thread state attached. */
static void interrupt_thread_body(bocpy_body_record *rec) {
    int expected = BOCPY_BODY_IN_BODY;
    /* seq_cst: after bocpy_cancel's seq_cst store of bocpy_cancelling, the
     * other half of the race closed in call_recorded (threads_backend.c);
     * it also pairs with the worker's CASes on the same word. */
    if (!atomic_compare_exchange_strong_explicit(&rec->state, &expected, BOCPY_BODY_INTERRUPTING,
                                                 memory_order_seq_cst, memory_order_seq_cst)) {
        return; /* not in a body, or already interrupted */
    }
    /* Raised in the body at its next bytecode; a body blocked in C (a
     * sleep, a lock) sees it when that call returns.  The worker cannot
     * leave the body's state meanwhile: it waits for INTERRUPTED. */
    PyThreadState_SetAsyncExc(rec->thread_ident, PyExc_KeyboardInterrupt);
    /* release: the pending exception is set before the worker sees this. */
    atomic_store_explicit(&rec->state, BOCPY_BODY_INTERRUPTED, memory_order_release);
}

PyObject *bocpy_cancel(bocpy_state *st) {
    /* From now on workers skip bodies: each queued behavior completes at
     * once with a "did not run" exception on its result cown, which frees
     * its cowns for the next one, so the whole graph drains quickly. */
    atomic_store_explicit(&bocpy_cancelling, true, memory_order_seq_cst); /* see its definition */
    /* The pin keeps worker_records alive while we look at them. */
    bool pinned;
    boc_runtime *rt = bocpy_runtime_pin(st, BOCPY_PIN_PEEK, &pinned);
    for (unsigned i = 0; rt != NULL && i < worker_records_len; i++) {
        bocpy_interp *rec = worker_records[i];
        /* relaxed: a hint (bocpy_interp.in_body); interrupt_body checks again. */
        if (rec != NULL && atomic_load_explicit(&rec->in_body, memory_order_relaxed)) {
            bocpy_interp_call_in(rec, interrupt_body, rec);
        }
        if (thread_records[i] != NULL) {
            interrupt_thread_body(thread_records[i]);
        }
    }
    bocpy_runtime_unpin(pinned);
    Py_RETURN_NONE;
}

PyObject *bocpy_running_behaviors(bocpy_state *st) {
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    /* The pin keeps worker_records alive while we look at them. */
    bool pinned;
    boc_runtime *rt = bocpy_runtime_pin(st, BOCPY_PIN_PEEK, &pinned);
    for (unsigned i = 0; rt != NULL && i < worker_records_len; i++) {
        bocpy_interp *rec = worker_records[i];
        bocpy_body_record *trec = thread_records[i];
        int64_t id;
        /* relaxed: a name for a report (bocpy_interp.in_body,
         * bocpy_body_record); a body that just ended is harmless. */
        if (rec != NULL && atomic_load_explicit(&rec->in_body, memory_order_relaxed)) {
            id = atomic_load_explicit(&rec->running_code, memory_order_relaxed);
        } else if (trec != NULL &&
                   atomic_load_explicit(&trec->state, memory_order_relaxed) != BOCPY_BODY_IDLE) {
            id = atomic_load_explicit(&trec->running_code, memory_order_relaxed);
        } else {
            continue;
        }
        PyObject *name = bocpy_registry_name(st, id);
        PyObject *entry = name ? PyUnicode_FromFormat("worker %u: %U", i, name) : NULL;
        Py_XDECREF(name);
        if (entry == NULL || PyList_Append(list, entry) < 0) {
            Py_XDECREF(entry);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(entry);
    }
    bocpy_runtime_unpin(pinned);
    return list;
}

/* ------------------------------------------------------------------- fork */

/* An audit hook (PEP 578): os.fork() audits "os.fork" before it forks, and
 * fails if a hook fails.  CPython aborts a child forked while other
 * interpreters have threads in them ("PyThreadState_Get: ... the GIL is
 * released"), and multiprocessing's fork start method answers a dead child
 * by forking the next one, endlessly.  So a fork while any worker exists
 * fails here, in the parent, once, saying what to do instead.  (With no
 * workers, bocpy/__init__.py's before-fork hook ends the idle worker
 * interpreters kept for the next run, and the child is usable.)  The same
 * hook sees thread starts, for the threads backend (below).  Called for
 * every audited event in every interpreter: it only compares strings
 * unless the event is a fork or a thread start. */
static int fork_guard(const char *event, PyObject *args, void *user) {
    (void)user;
    if (strncmp(event, "_thread.start_", 14) == 0 &&
        (strcmp(event + 14, "new_thread") == 0 || strcmp(event + 14, "joinable_thread") == 0)) {
        /* Not about forks: the threads backend tells the threads that bodies
         * start from the program's (threads_backend.c). */
        return bocpy_threads_audit_thread_start(args);
    }
    if (strcmp(event, "os.fork") != 0 && strcmp(event, "os.forkpty") != 0) {
        return 0;
    }
    lc_lock_acquire();
    bool stopped = lc_state == LC_STOPPED;
    pthread_mutex_unlock(&lc_lock);
    if (stopped && bocpy_workers_alive() == 0) {
        return 0;
    }
    PyErr_SetString(PyExc_RuntimeError,
                    "cannot fork while the bocpy runtime is running: CPython aborts a child "
                    "forked from a process whose worker interpreters are alive. Call "
                    "bocpy.wait() before forking, or use the 'spawn' or 'forkserver' start "
                    "method of multiprocessing (multiprocessing.get_context('spawn'))");
    return -1;
}

int bocpy_fork_guard_install(void) {
    static bool installed; /* main interpreter, GIL held */
    if (installed) {
        return 0;
    }
    if (PySys_AddAuditHook(fork_guard, NULL) < 0) {
        return -1;
    }
    installed = true;
    return 0;
}
