/*
 * pump.c: PinnedCown, pump(), and how the main thread learns that pinned
 * work is waiting.
 *
 * A PinnedCown's value is a plain object of the main interpreter and never
 * leaves it.  libboc routes every behavior whose request set holds a pinned
 * cown to its pinned lane; only the main thread drains that lane, here, in
 * pump() (called by the host's event loop) or inside wait()/quiesce().
 *
 * Wake-ups.  When the lane goes from empty to non-empty, libboc calls
 * pinned_ready on whichever thread scheduled the work.  That hook must not
 * touch Python, so it only:
 *   - writes the public eventfd (bocpy.wake_fd()), which stays readable until
 *     pump() clears it: event loops watch it (asyncio add_reader, Tk
 *     createfilehandler, a Qt socket notifier);
 *   - writes the internal eventfd that wait()/quiesce() poll (the quiescent
 *     hook writes it too), so waiting never sleeps through work;
 *   - if the host registered a wake callback, asks the main interpreter to
 *     run it (Py_AddPendingCall), so it never runs in a worker's interpreter.
 * pump() clears the public fd *before* it drains the lane, so work that
 * arrives after the drain always re-arms it: no wake-up is lost.  If pump()
 * stops early (deadline, max_behaviors) it re-arms the fd itself.
 *
 * The watchdog is a small C thread, started by set_pump_watchdog(), that
 * looks at how long the lane has been non-empty.  It never touches Python
 * either: it hands the warning to the main interpreter as a pending call,
 * which runs on the main thread (even one wedged in a Python loop) and calls
 * the host's on_starve or logs through `logging`.
 */
#include "bocpy.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int public_wake_fd = -1;
static int internal_wake_fd = -1;

/* The host's wake callback (a main-interpreter object, changed only with
 * the main GIL held); the hook only reads whether one is set. */
static PyObject *wake_callback;
static atomic_bool wake_callback_set;
/* A call of run_wake_callback is queued (Py_AddPendingCall) and has not
 * started yet: the hook queues at most one.  Set by the hook (release
 * exchange), cleared by the call before it runs the callback (acquire
 * exchange): see bocpy_pinned_ready_hook for why no wake-up is lost. */
static atomic_bool wake_callback_pending;

/* pump() must not be re-entered from a pinned body on the same thread. */
static _Thread_local bool tls_pumping;
/* Threads inside pump() (one at most: see pump_enter). */
static atomic_int pumpers;
static atomic_long wait_poll_ms = BOCPY_DEFAULT_WAIT_POLL_MS;

/* ---------------------------------------------------------------- hooks */

static void fd_signal(int fd) {
    if (fd >= 0) {
        /* An eventfd write only fails when the counter would overflow, and
         * then it is already readable: nothing is lost either way. */
        (void)eventfd_write(fd, 1);
    }
}

static void fd_clear(int fd) {
    eventfd_t value;
    if (fd >= 0) {
        (void)eventfd_read(fd, &value); /* non-blocking: EAGAIN when clear */
    }
}

static int run_wake_callback(void *arg) {
    (void)arg;
    /* acquire, and a read-modify-write: it reads the `true` of the last hook
     * that found a call already queued, so that hook's pinned work is
     * visible to the callback (and to the pump() it calls). */
    (void)atomic_exchange_explicit(&wake_callback_pending, false, memory_order_acquire);
    if (wake_callback == NULL) {
        return 0;
    }
    PyObject *callback = Py_NewRef(wake_callback);
    PyObject *rv = PyObject_CallNoArgs(callback);
    Py_DECREF(callback);
    if (rv == NULL) {
        /* The host's callback failed: report it where it would have been
         * seen had the host called it, without breaking unrelated code. */
        PyErr_WriteUnraisable(wake_callback);
        return 0;
    }
    Py_DECREF(rv);
    return 0;
}

void bocpy_pinned_ready_hook(void *user) {
    (void)user;
    fd_signal(public_wake_fd);
    fd_signal(internal_wake_fd);
    /* wake_callback_set: relaxed, a lone flag -- a hook that misses a
     * callback just set still signals the fds, and one that sees a callback
     * just cleared queues a call that finds none.
     * wake_callback_pending: a duplicate signal (two queued calls) only runs
     * the callback twice, and pump() finds nothing the second time.  No
     * signal is lost: the exchange reads the latest value, so a hook that
     * finds `true` comes before the clearing exchange of the queued call,
     * which then runs after it; release here and acquire there make this
     * hook's pinned work (pushed before) visible to that call.  A hook that
     * finds `false` queues its own call (Py_AddPendingCall's lock orders
     * the push before it). */
    if (atomic_load_explicit(&wake_callback_set, memory_order_relaxed) &&
        !atomic_exchange_explicit(&wake_callback_pending, true, memory_order_release)) {
        if (Py_AddPendingCall(run_wake_callback, NULL) < 0) {
            /* relaxed: no call was queued, so nothing pairs with this; the
             * next hook queues one (the fds stay signalled meanwhile). */
            atomic_store_explicit(&wake_callback_pending, false, memory_order_relaxed);
        }
    }
}

void bocpy_quiescent_hook(void *user) {
    (void)user;
    fd_signal(internal_wake_fd);
}

/* A forked child would share the parent's eventfds (one kernel object
 * behind both descriptors): its pump() would swallow the parent's wake-ups
 * and the other way round.  In the child, each is replaced by a fresh
 * eventfd under the same number, so that whatever the child's code already
 * holds (an event loop's add_reader on wake_fd()) keeps working on its own
 * counter.  Runs in the child right after fork(): system calls only. */
static void renew_fd(int fd) {
    if (fd < 0) {
        return;
    }
    int fresh = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fresh < 0) {
        return; /* keep the shared one: wake-ups may be lost, nothing breaks */
    }
    /* dup3 keeps O_NONBLOCK (a file status flag) and sets close-on-exec. */
    (void)dup3(fresh, fd, O_CLOEXEC);
    close(fresh);
}

static void renew_fds_in_child(void) {
    renew_fd(public_wake_fd);
    renew_fd(internal_wake_fd);
}

int bocpy_pinned_init_fds(void) {
    if (public_wake_fd >= 0) {
        return 0;
    }
    public_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    internal_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (public_wake_fd < 0 || internal_wake_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int rc = pthread_atfork(NULL, NULL, renew_fds_in_child);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* Sleeps (GIL released by the caller) until pinned work or quiescence is
 * signalled, or `timeout_ms` passes. */
void bocpy_pinned_wait_for_wake(int64_t timeout_ms) {
    /* relaxed: a lone setting; a slice that misses a new value uses the
     * old one once. */
    long poll_ms = atomic_load_explicit(&wait_poll_ms, memory_order_relaxed);
    if (timeout_ms > poll_ms) {
        timeout_ms = poll_ms;
    }
    struct pollfd pfd = {.fd = internal_wake_fd, .events = POLLIN};
    if (poll(&pfd, 1, (int)timeout_ms) > 0) {
        fd_clear(internal_wake_fd);
    }
}

/* ---------------------------------------------------------------- pump */

bool bocpy_pumping(void) { return tls_pumping; }

/* Runs pinned behaviors on the calling (main) thread.  `deadline_ns` 0 and
 * `max_behaviors` 0 mean unbounded.  Returns -1 with an exception set when a
 * body raised a BaseException that must propagate, or when raise_on_error
 * is set and a body raised. */
int bocpy_pump_run(bocpy_state *st, uint64_t deadline_ns, uint64_t max_behaviors,
                   bool raise_on_error, bool busy_is_error, bocpy_pump_result *out) {
    memset(out, 0, sizeof(*out));
    /* Clear before draining (see the top of the file).  Always: a cheap
     * non-blocking read, and any cleverer "only if armed" flag races with a
     * writer between its write and its flag and leaves the fd readable. */
    fd_clear(public_wake_fd);
    /* Pinned: another thread's wait() cannot free it while we pop. */
    bool pinned;
    boc_runtime *rt = bocpy_runtime_pin(st, BOCPY_PIN_PEEK, &pinned);
    if (rt == NULL) {
        return 0;
    }
    /* One pumper at a time: the lane has a single consumer.  On free-threaded
     * builds a second concurrent pump() is an error (the single-pumper rule);
     * with a GIL it can only happen while a pinned body has released the
     * GIL, and the second caller simply finds nothing to do.  wait() and
     * quiesce() pump too (busy_is_error false): finding another thread
     * pumping, they go on waiting, as on a GIL build. */
    int expected = 0;
    /* acquire pairs with the release that ends the previous pump: its pops
     * (and the bodies it ran) happen before ours. */
    if (!atomic_compare_exchange_strong_explicit(&pumpers, &expected, 1, memory_order_acquire,
                                                 memory_order_relaxed)) {
        bocpy_runtime_unpin(pinned);
#ifdef Py_GIL_DISABLED
        if (!busy_is_error) {
            return 0;
        }
        PyErr_SetString(PyExc_RuntimeError,
                        "another thread is already running bocpy.pump(); only one thread at a "
                        "time may pump");
        return -1;
#else
        return 0;
#endif
    }
    uint64_t start = boc_now_ns();
    PyObject *raise = NULL;
    for (;;) {
        if (max_behaviors != 0 && out->executed >= max_behaviors) {
            break;
        }
        if (deadline_ns != 0 && boc_now_ns() - start >= deadline_ns) {
            out->deadline_reached = boc_pinned_depth(rt) > 0;
            break;
        }
        boc_behavior *b = boc_pinned_pop(rt);
        if (b == NULL) {
            break;
        }
        /* relaxed: a lone flag that publishes nothing; a pump that misses a
         * cancel() just made runs one more body, as if cancel() came later. */
        bool cancelled = atomic_load_explicit(&bocpy_cancelling, memory_order_relaxed);
        bocpy_outcome outcome = {0};
        tls_pumping = true;
        bocpy_run_behavior(st, st->interp, b, cancelled, &outcome, NULL);
        tls_pumping = false;
        boc_behavior_complete(b);
        out->executed++;
        if (outcome.body_raised) {
            out->raised++;
        }
        if (outcome.propagate != NULL) {
            /* KeyboardInterrupt, SystemExit, GeneratorExit: cleanup done,
             * the rest of the lane waits for the next pump. */
            Py_XDECREF(outcome.first_error);
            raise = outcome.propagate;
            break;
        }
        if (outcome.first_error != NULL) {
            if (raise_on_error) {
                raise = outcome.first_error;
                break;
            }
            Py_DECREF(outcome.first_error);
        }
    }
    if (boc_pinned_depth(rt) > 0) {
        fd_signal(public_wake_fd); /* still work: keep the fd readable */
    }
    /* release: the next pumper sees this one's pops complete.  Cleared on
     * every exit path, BaseException propagation included. */
    atomic_store_explicit(&pumpers, 0, memory_order_release);
    bocpy_runtime_unpin(pinned);
    if (raise != NULL) {
        PyErr_SetRaisedException(raise);
        return -1;
    }
    return 0;
}

/* A positive-int bound, or 0 for None (no bound). */
static int parse_bound(PyObject *obj, const char *name, bool milliseconds, long long *out) {
    *out = 0;
    if (obj == Py_None) {
        return 0;
    }
    return bocpy_positive_int_arg(obj, name, true, milliseconds, out);
}

PyObject *bocpy_pump(bocpy_state *st, PyObject *deadline_obj, PyObject *max_obj,
                     int raise_on_error) {
    if (!bocpy_is_program_thread(st)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "bocpy.pump() runs pinned behaviors on the main thread: call it from "
                        "the main interpreter, not from inside a behavior");
        return NULL;
    }
    if (tls_pumping) {
        PyErr_SetString(PyExc_RuntimeError,
                        "bocpy.pump() is not reentrant: it was called from inside a pinned "
                        "behavior; return from the behavior and let the running pump go on");
        return NULL;
    }
    long long deadline_ms, max_behaviors;
    if (parse_bound(deadline_obj, "deadline_ms", true, &deadline_ms) < 0 ||
        parse_bound(max_obj, "max_behaviors", false, &max_behaviors) < 0) {
        return NULL;
    }
    bocpy_pump_result result;
    /* 0 means "no bound" to bocpy_pump_run; BOCPY_MAX_MS keeps the product
     * within an int64. */
    uint64_t deadline_ns = (uint64_t)deadline_ms * 1000000u;
    uint64_t max_count = (uint64_t)max_behaviors;
    int rc = bocpy_pump_run(st, deadline_ns, max_count, raise_on_error != 0, true, &result);
    bocpy_garbage_drain(st->interp);
    if (rc < 0) {
        return NULL;
    }
    return PyObject_CallFunction(st->pump_result_type, "KOK", (unsigned long long)result.executed,
                                 result.deadline_reached ? Py_True : Py_False,
                                 (unsigned long long)result.raised);
}

/* ------------------------------------------------------------ settings */

PyObject *bocpy_wake_fd(void) { return PyLong_FromLong(public_wake_fd); }

PyObject *bocpy_set_wake_callback(bocpy_state *st, PyObject *callback) {
    if (!bocpy_is_program_thread(st)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "set_wake_callback() is for the main interpreter's event loop");
        return NULL;
    }
    if (callback != Py_None && !PyCallable_Check(callback)) {
        PyErr_Format(PyExc_TypeError, "the wake callback must be callable or None, not '%.200s'",
                     Py_TYPE(callback)->tp_name);
        return NULL;
    }
    Py_XSETREF(wake_callback, callback == Py_None ? NULL : Py_NewRef(callback));
    /* relaxed: see bocpy_pinned_ready_hook (a hook that reads a stale flag
     * still signals the fds; the callback itself is read with the GIL). */
    atomic_store_explicit(&wake_callback_set, wake_callback != NULL, memory_order_relaxed);
    Py_RETURN_NONE;
}

PyObject *bocpy_set_wait_pump_poll(PyObject *ms_obj) {
    long long ms;
    if (bocpy_positive_int_arg(ms_obj, "ms (the poll period in milliseconds)", false, false, &ms) <
        0) {
        return NULL;
    }
    /* relaxed: a lone setting, read afresh by each wait slice. */
    atomic_store_explicit(&wait_poll_ms, ms > LONG_MAX ? LONG_MAX : (long)ms, memory_order_relaxed);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ watchdog */

static pthread_mutex_t watchdog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_cond = PTHREAD_COND_INITIALIZER;
static pthread_t watchdog_thread;
static bool watchdog_started, watchdog_stop;
/* Milliseconds, or -1 when disabled (the default: no call, no watchdog). */
static atomic_llong watchdog_warn_ms = -1;
static PyObject *watchdog_on_starve; /* main interpreter; main GIL */
/* The episode (nonempty_since) already reported, and the report to give. */
static uint64_t watchdog_reported_since;
/* The report's numbers, and whether a fire_watchdog call is queued (one at
 * most).  All relaxed: the numbers are a diagnostic, so a report that reads
 * a newer episode's age with an older depth, or the numbers of the report
 * before, is still true enough; a duplicate (two queued calls) only warns
 * twice.  No report is lost: the exchange reads the latest value, so a
 * watchdog that finds `true` comes before the queued call's clear. */
static atomic_ullong watchdog_report_age_ms, watchdog_report_depth;
static atomic_bool watchdog_report_pending;

static int fire_watchdog(void *arg) {
    (void)arg;
    /* relaxed: see the declaration (a diagnostic, duplicates harmless). */
    atomic_store_explicit(&watchdog_report_pending, false, memory_order_relaxed);
    unsigned long long age = atomic_load_explicit(&watchdog_report_age_ms, memory_order_relaxed);
    unsigned long long depth = atomic_load_explicit(&watchdog_report_depth, memory_order_relaxed);
    if (atomic_load_explicit(&watchdog_warn_ms, memory_order_relaxed) < 0) {
        return 0; /* disabled since the report was queued (relaxed: a lone setting) */
    }
    PyObject *message = PyUnicode_FromFormat(
        "bocpy: the pinned queue has been non-empty for %llu ms (depth %llu); the main "
        "thread is not calling bocpy.pump() often enough (is the event loop blocked?)",
        age, depth);
    if (message == NULL) {
        return -1;
    }
    PyObject *rv;
    if (watchdog_on_starve != NULL) {
        PyObject *callback = Py_NewRef(watchdog_on_starve);
        /* (severity, message): 0 is the warning, the only severity so far. */
        rv = PyObject_CallFunction(callback, "iO", 0, message);
        Py_DECREF(callback);
    } else {
        rv = bocpy_logger_call("warning", message);
    }
    Py_DECREF(message);
    if (rv == NULL) {
        return -1; /* the host's on_starve raised: let it reach the main thread */
    }
    Py_DECREF(rv);
    return 0;
}

static void *watchdog_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&watchdog_lock);
    while (!watchdog_stop) {
        /* relaxed: a lone setting, read afresh each period. */
        long long warn_ms = atomic_load_explicit(&watchdog_warn_ms, memory_order_relaxed);
        long long period_ms = warn_ms < 0 ? 250 : warn_ms / 4;
        period_ms = period_ms < 5 ? 5 : (period_ms > 250 ? 250 : period_ms);
        struct timespec at;
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_nsec += (long)(period_ms % 1000) * 1000000L;
        at.tv_sec += (time_t)(period_ms / 1000) + at.tv_nsec / 1000000000L;
        at.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&watchdog_cond, &watchdog_lock, &at);
        if (watchdog_stop || warn_ms < 0) {
            continue;
        }
        /* The runtime cannot be freed while we look: stopping it takes
         * watchdog_lock (bocpy_pinned_runtime_gone). */
        boc_runtime *rt = bocpy_runtime();
        uint64_t since = rt ? boc_pinned_nonempty_since(rt) : 0;
        if (since == 0 || since == watchdog_reported_since) {
            continue;
        }
        uint64_t age_ms = (boc_now_ns() - since) / 1000000u;
        if ((long long)age_ms < warn_ms) {
            continue;
        }
        watchdog_reported_since = since; /* once per non-empty episode */
        /* relaxed: see the declarations of the report. */
        atomic_store_explicit(&watchdog_report_age_ms, age_ms, memory_order_relaxed);
        atomic_store_explicit(&watchdog_report_depth, boc_pinned_depth(rt), memory_order_relaxed);
        if (!atomic_exchange_explicit(&watchdog_report_pending, true, memory_order_relaxed)) {
            if (Py_AddPendingCall(fire_watchdog, NULL) < 0) {
                atomic_store_explicit(&watchdog_report_pending, false, memory_order_relaxed);
            }
        }
    }
    pthread_mutex_unlock(&watchdog_lock);
    return NULL;
}

/* Called (main thread, GIL released) before a runtime is freed. */
void bocpy_pinned_runtime_gone(void) {
    pthread_mutex_lock(&watchdog_lock);
    watchdog_reported_since = 0;
    pthread_mutex_unlock(&watchdog_lock);
}

PyObject *bocpy_set_pump_watchdog(bocpy_state *st, PyObject *warn_obj, PyObject *on_starve) {
    if (!bocpy_is_program_thread(st)) {
        PyErr_SetString(PyExc_RuntimeError, "set_pump_watchdog() is for the main interpreter");
        return NULL;
    }
    long long warn_ms;
    if (parse_bound(warn_obj, "warn_ms", true, &warn_ms) < 0) {
        return NULL;
    }
    if (on_starve != Py_None && !PyCallable_Check(on_starve)) {
        PyErr_Format(PyExc_TypeError,
                     "on_starve must be a callable taking (severity, message), or None, "
                     "not '%.200s'",
                     Py_TYPE(on_starve)->tp_name);
        return NULL;
    }
    Py_XSETREF(watchdog_on_starve, on_starve == Py_None ? NULL : Py_NewRef(on_starve));
    long long warn = warn_obj == Py_None ? -1 : warn_ms;
    /* relaxed: a lone setting; the watchdog reads it afresh each period. */
    atomic_store_explicit(&watchdog_warn_ms, warn, memory_order_relaxed);
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&watchdog_lock);
        if (!watchdog_started && warn_obj != Py_None) {
            watchdog_stop = false;
            rc = pthread_create(&watchdog_thread, NULL, watchdog_main, NULL);
            watchdog_started = rc == 0;
        }
        pthread_cond_broadcast(&watchdog_cond);
        pthread_mutex_unlock(&watchdog_lock);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

PyObject *bocpy_stop_watchdog(void) {
    Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&watchdog_lock);
        if (watchdog_started) {
            watchdog_stop = true;
            pthread_cond_broadcast(&watchdog_cond);
            pthread_mutex_unlock(&watchdog_lock);
            pthread_join(watchdog_thread, NULL);
            pthread_mutex_lock(&watchdog_lock);
            watchdog_started = false;
        }
        pthread_mutex_unlock(&watchdog_lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ----------------------------------------------------------- the type */

static PyObject *PinnedCown_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *value;
    bocpy_state *st = bocpy_cown_parse_new(type, args, kwds, "|O:PinnedCown", &value);
    if (st == NULL) {
        return NULL;
    }
    if (!bocpy_is_program_thread(st)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a PinnedCown can only be created in the main interpreter (its value "
                        "lives there); create it on the main thread and pass the handle to "
                        "behaviors");
        return NULL;
    }
    bocpy_cown *c = bocpy_cown_new_flags(BOC_COWN_PINNED);
    if (c == NULL) {
        return NULL;
    }
    /* No serialised copy, ever: the object itself is the value. */
    bocpy_cown_store(c, st->interp, value, false);
    return bocpy_cown_object_new(type, c);
}

PyDoc_STRVAR(PinnedCown_doc,
             "PinnedCown(value=None)\n--\n\n"
             "A cown whose value never leaves the main interpreter.  Behaviors that request "
             "it run on the main thread, inside bocpy.pump() or wait().");

static PyType_Slot PinnedCown_slots[] = {
    {Py_tp_new, PinnedCown_new},
    {Py_tp_doc, (void *)PinnedCown_doc},
    {0, NULL},
};

static PyType_Spec PinnedCown_spec = {
    .name = "bocpy.PinnedCown",
    .basicsize = sizeof(CownObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = PinnedCown_slots,
};

PyObject *bocpy_pinned_type_create(PyObject *module, PyObject *base) {
    return PyType_FromModuleAndSpec(module, &PinnedCown_spec, base);
}

PyObject *bocpy_logger_call(const char *level, PyObject *message) {
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "bocpy") : NULL;
    PyObject *rv = logger ? PyObject_CallMethod(logger, level, "sO", "%s", message) : NULL;
    Py_XDECREF(logger);
    Py_XDECREF(logging);
    return rv;
}

void bocpy_log_warning(PyObject *message) {
    PyObject *rv = message != NULL ? bocpy_logger_call("warning", message) : NULL;
    if (rv == NULL) {
        /* Not even logging works here (interpreter shutting down, or no
         * memory for the message): the last resort for a report. */
        PyErr_WriteUnraisable(message);
    }
    Py_XDECREF(rv);
    Py_XDECREF(message);
}
