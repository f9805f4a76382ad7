/*
 * noticeboard.c: a process-wide key/value store for data that does not
 * warrant a cown, with one consistent snapshot per behavior.
 *
 * Storage is multi-version.  Each key has a chain of versions, newest first;
 * a version is a serialised value (or a deletion) stamped with the board
 * version that committed it.  A reader fixes a snapshot -- the board version
 * when it first reads, held for the rest of its behavior -- and sees, for
 * each key, the newest version not newer than its snapshot.  So a behavior
 * pays for the keys it reads, never for copying the board, and its view
 * never changes under it.
 *
 * Concurrency.  Mutations commit synchronously, in the order each thread
 * makes them, under the write side of one rwlock; notice_update runs the
 * caller's function inside that critical section, which makes it an atomic
 * read-modify-write.  Readers look up under the read side and take a
 * reference on the version they found, so they can unpickle it after
 * letting go of the lock.  Every live snapshot is registered as a "pin";
 * when a commit adds a version it frees the versions of that key that no
 * pin can see any more.  Pins are published under the read lock, so a
 * committing writer (write lock) either sees a pin or is seen by it.
 * Nothing here waits for a lock while holding a GIL (see nb_lock_*).
 *
 * Lifetime.  The board belongs to a runtime: wait() clears it when it ends
 * one (bocpy_noticeboard_clear), quiesce() keeps it.  Only notice_seed may
 * write from the main interpreter while no runtime runs (it seeds the next
 * run); the other writers refuse, since nothing would read what they wrote.
 *
 * Every rwlock call's result is checked.  The one way to misuse the lock
 * from Python -- reading a noticeboard() view from inside a notice_update
 * function, i.e. re-locking for reading on the thread that holds the write
 * lock -- is refused before it reaches the lock (tls_in_update).
 */
#include "bocpy.h"

#include <string.h>

typedef struct nb_version {
    struct nb_version *older;
    uint64_t version;
    bocpy_blob *blob; /* NULL: the key was deleted */
    atomic_int refs;  /* the chain's reference plus readers' (see version_release) */
} nb_version;

/* A live snapshot.  Pins form a list guarded by pins_lock.
 *
 * `version` is relaxed everywhere.  It is set only under the board's read
 * lock (pin_set, the view's copy in bocpy_noticeboard), and read by a
 * committing writer only under the write lock: the rwlock orders every set
 * before or after the writer's whole commit, so a writer either sees the pin
 * or commits a version the pin is taken after (and then needs nothing older
 * kept).  It is cleared (0) without the lock by its own thread when the
 * behavior ends: a writer that still sees the old value keeps versions a
 * little longer (harmless); one that sees 0 frees versions this thread no
 * longer reads, since its next snapshot is taken under the read lock, after
 * that commit.  The owner's own reads (behavior_snapshot) see its own last
 * store. */
typedef struct nb_pin {
    struct nb_pin *prev, *next;
    atomic_uint_fast64_t version; /* 0: not pinned */
} nb_pin;

static pthread_rwlock_t board_lock = PTHREAD_RWLOCK_INITIALIZER;
static bocpy_strtable entries; /* key -> newest nb_version */
/* Written only under the write lock; read under either side (relaxed: the
 * rwlock orders every read after the commit that wrote it). */
static atomic_uint_fast64_t board_version = 1;
static size_t live_keys;

static pthread_mutex_t pins_lock = PTHREAD_MUTEX_INITIALIZER;
static nb_pin *pins;

/* The pin of the behavior running on this thread (its snapshot), and
 * whether a behavior is running on this thread at all. */
static _Thread_local nb_pin *tls_pin;
static _Thread_local bool tls_in_behavior;
/* Set while notice_update's function runs: the board is write-locked. */
static _Thread_local bool tls_in_update;

/* ------------------------------------------------------------- locking */

/* Reports a failed rwlock call; returns -1 (the caller's error value). */
/* Reports a failed rwlock call; returns -1 (the caller's error value). */
static int nb_lock_failed(int rc, const char *what) {
    PyErr_Format(PyExc_RuntimeError, "bocpy noticeboard: %s failed: %s", what, strerror(rc));
    return -1;
}

/* Takes the read side; -1 with an exception if the lock refuses. */
static int nb_lock_read(void) {
    int rc = pthread_rwlock_tryrdlock(&board_lock);
    if (rc == EBUSY) {
        Py_BEGIN_ALLOW_THREADS
            rc = pthread_rwlock_rdlock(&board_lock);
        Py_END_ALLOW_THREADS
    }
    return rc == 0 ? 0 : nb_lock_failed(rc, "taking the read lock");
}

static int nb_lock_write(void) {
    int rc = pthread_rwlock_trywrlock(&board_lock);
    if (rc == EBUSY) {
        Py_BEGIN_ALLOW_THREADS
            rc = pthread_rwlock_wrlock(&board_lock);
        Py_END_ALLOW_THREADS
    }
    return rc == 0 ? 0 : nb_lock_failed(rc, "taking the write lock");
}

/* Unlocking a lock this thread holds cannot fail unless the board's own
 * bookkeeping is broken: nothing sane is left to do then. */
static void nb_unlock(void) {
    int rc = pthread_rwlock_unlock(&board_lock);
    if (rc != 0) {
        Py_FatalError("bocpy noticeboard: unlocking the board lock failed");
    }
}

static void version_release(nb_version *v) {
    /* acq_rel: the last owner sees every use of the version before freeing. */
    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) {
        bocpy_blob_free(v->blob);
        free(v);
    }
}

/* --------------------------------------------------------------- pins */

static nb_pin *pin_new(void) {
    nb_pin *pin = calloc(1, sizeof(*pin));
    if (pin == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&pins_lock);
    pin->next = pins;
    if (pins != NULL) {
        pins->prev = pin;
    }
    pins = pin;
    pthread_mutex_unlock(&pins_lock);
    return pin;
}

static void pin_free(nb_pin *pin) {
    pthread_mutex_lock(&pins_lock);
    if (pin->prev != NULL) {
        pin->prev->next = pin->next;
    } else {
        pins = pin->next;
    }
    if (pin->next != NULL) {
        pin->next->prev = pin->prev;
    }
    pthread_mutex_unlock(&pins_lock);
    free(pin);
}

/* Fixes `pin` at the current board version (read lock held). */
static uint64_t pin_set(nb_pin *pin) {
    /* relaxed: see nb_pin and board_version. */
    uint64_t now = atomic_load_explicit(&board_version, memory_order_relaxed);
    atomic_store_explicit(&pin->version, now, memory_order_relaxed);
    return now;
}

/* The oldest version any pin can see (write lock held). */
static uint64_t oldest_pinned(uint64_t current) {
    uint64_t oldest = current;
    pthread_mutex_lock(&pins_lock);
    for (nb_pin *p = pins; p != NULL; p = p->next) {
        uint64_t v = atomic_load_explicit(&p->version, memory_order_relaxed); /* see nb_pin */
        if (v != 0 && v < oldest) {
            oldest = v;
        }
    }
    pthread_mutex_unlock(&pins_lock);
    return oldest;
}

/* This thread's behavior snapshot, fixed at its first read; 0 with an
 * exception set on failure. */
static uint64_t behavior_snapshot(void) {
    if (tls_pin == NULL) {
        tls_pin = pin_new();
        if (tls_pin == NULL) {
            PyErr_NoMemory();
            return 0;
        }
    }
    /* relaxed: our own pin; only this thread changes it outside the lock. */
    uint64_t v = atomic_load_explicit(&tls_pin->version, memory_order_relaxed);
    if (v == 0) {
        if (nb_lock_read() < 0) {
            return 0;
        }
        v = pin_set(tls_pin);
        nb_unlock();
    }
    return v;
}

void bocpy_noticeboard_behavior_begin(void) { tls_in_behavior = true; }

void bocpy_noticeboard_behavior_end(void) {
    /* The next behavior on this thread takes a fresh snapshot. */
    tls_in_behavior = false;
    if (tls_pin != NULL) {
        /* relaxed: a writer that misses it keeps versions longer (nb_pin). */
        atomic_store_explicit(&tls_pin->version, 0, memory_order_relaxed);
    }
}

void bocpy_noticeboard_thread_exit(void) {
    if (tls_pin != NULL) {
        pin_free(tls_pin);
        tls_pin = NULL;
    }
}

/* -------------------------------------------------------------- table */

static nb_version *visible(bocpy_strtable_slot *slot, uint64_t snapshot) {
    nb_version *v = slot ? slot->value : NULL;
    while (v != NULL && v->version > snapshot) {
        v = v->older;
    }
    return v;
}

/* Write lock held.  Adds a version for `key` (blob NULL deletes) and frees
 * the versions no snapshot can see.  Takes ownership of `blob`. */
static int commit(const char *key, size_t len, bocpy_blob *blob) {
    bocpy_strtable_slot *slot = bocpy_strtable_find(&entries, key, len, blob != NULL);
    if (slot == NULL) {
        if (blob == NULL) {
            return 0; /* deleting a key that never existed */
        }
        bocpy_blob_free(blob);
        PyErr_NoMemory();
        return -1;
    }
    nb_version *v = malloc(sizeof(*v));
    if (v == NULL) {
        bocpy_blob_free(blob);
        PyErr_NoMemory();
        return -1;
    }
    nb_version *newest = slot->value;
    bool was_live = newest != NULL && newest->blob != NULL;
    /* relaxed: we hold the write lock, under which alone it changes. */
    uint64_t version = atomic_load_explicit(&board_version, memory_order_relaxed) + 1;
    v->version = version;
    v->blob = blob;
    atomic_init(&v->refs, 1);
    v->older = newest;
    slot->value = v;
    live_keys += (blob != NULL) - was_live;
    /* Readers pin under the read lock, so none can pin while we hold the
     * write lock: the relaxed store is published by the unlock. */
    atomic_store_explicit(&board_version, version, memory_order_relaxed);

    /* Keep the newest version each pin can see; free the rest. */
    uint64_t oldest = oldest_pinned(version);
    nb_version *keep = v;
    while (keep->older != NULL && keep->version > oldest) {
        keep = keep->older;
    }
    nb_version *drop = keep->older;
    keep->older = NULL;
    while (drop != NULL) {
        nb_version *older = drop->older;
        version_release(drop);
        drop = older;
    }
    return 0;
}

/* Whether any snapshot is fixed (write lock held, so none is being fixed). */
static bool any_pinned(void) {
    bool pinned = false;
    pthread_mutex_lock(&pins_lock);
    for (nb_pin *p = pins; p != NULL && !pinned; p = p->next) {
        pinned = atomic_load_explicit(&p->version, memory_order_relaxed) != 0; /* see nb_pin */
    }
    pthread_mutex_unlock(&pins_lock);
    return pinned;
}

int bocpy_noticeboard_clear(void) {
    if (nb_lock_write() < 0) {
        return -1;
    }
    int rc = 0;
    if (!any_pinned()) {
        /* Nobody can look at any version: drop the whole table, keys and
         * all, so that a program using new keys each run does not grow. */
        for (size_t i = 0; i < entries.cap; i++) {
            bocpy_strtable_slot *slot = &entries.slots[i];
            nb_version *v = slot->key ? slot->value : NULL;
            while (v != NULL) {
                nb_version *older = v->older;
                version_release(v);
                v = older;
            }
            free(slot->key);
        }
        free(entries.slots);
        entries = (bocpy_strtable){0};
        live_keys = 0;
        /* board_version keeps counting: versions stay unique over time. */
    } else {
        /* A view made during the run is still alive: delete every key in
         * a new version, which that view does not see. */
        for (size_t i = 0; i < entries.cap && rc == 0; i++) {
            bocpy_strtable_slot *slot = &entries.slots[i];
            nb_version *v = slot->key ? slot->value : NULL;
            if (v != NULL && v->blob != NULL) {
                rc = commit(slot->key, slot->len, NULL);
            }
        }
    }
    nb_unlock();
    return rc;
}

/* ------------------------------------------------------- the functions */

/* A noticeboard key: a str without NUL characters. */
static int key_arg(PyObject *obj, const char **name, size_t *len) {
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "noticeboard key must be a str, not '%.200s' (%R)",
                     Py_TYPE(obj)->tp_name, obj);
        return -1;
    }
    Py_ssize_t n;
    *name = PyUnicode_AsUTF8AndSize(obj, &n);
    if (*name == NULL) {
        return -1;
    }
    if (memchr(*name, '\0', (size_t)n) != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "noticeboard key must not contain NUL characters (\"\\0\"), got %R", obj);
        return -1;
    }
    *len = (size_t)n;
    return 0;
}

static int refuse_inside_update(const char *what) {
    if (tls_in_update) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s cannot be used from inside a notice_update() function (the board is "
                     "locked for that update): the function gets the current value and returns "
                     "the new one; read other keys before calling notice_update()",
                     what);
        return -1;
    }
    return 0;
}

/* Writers other than notice_seed need a run whose board they write to. */
static int refuse_without_runtime(bocpy_state *st, const char *what) {
    if (st->interp->is_main && bocpy_runtime() == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s needs a running bocpy runtime: the noticeboard belongs to a run, and "
                     "none is running (none has started yet, or wait() ended the last one, "
                     "clearing its board); to put values on the board for the next run, call "
                     "notice_seed(key, value) on the main thread",
                     what);
        return -1;
    }
    return 0;
}

PyObject *bocpy_notice_write(bocpy_state *st, PyObject *key, PyObject *value, bool seed) {
    const char *name;
    size_t len;
    const char *what = seed ? "notice_seed()" : "notice_write()";
    if (key_arg(key, &name, &len) < 0 || refuse_inside_update(what) < 0 ||
        (!seed && refuse_without_runtime(st, what) < 0)) {
        return NULL;
    }
    bocpy_blob *blob = bocpy_serialise(st, value);
    if (blob == NULL) {
        return NULL;
    }
    if (nb_lock_write() < 0) {
        bocpy_blob_free(blob);
        return NULL;
    }
    int rc = commit(name, len, blob);
    nb_unlock();
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *bocpy_notice_delete(bocpy_state *st, PyObject *key) {
    const char *name;
    size_t len;
    if (key_arg(key, &name, &len) < 0 || refuse_inside_update("notice_delete()") < 0 ||
        refuse_without_runtime(st, "notice_delete()") < 0 || nb_lock_write() < 0) {
        return NULL;
    }
    int rc = commit(name, len, NULL);
    nb_unlock();
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *bocpy_notice_update(bocpy_state *st, PyObject *key, PyObject *fn, PyObject *dflt,
                              PyObject *removed) {
    const char *name;
    size_t len;
    if (key_arg(key, &name, &len) < 0 || refuse_inside_update("notice_update()") < 0 ||
        refuse_without_runtime(st, "notice_update()") < 0) {
        return NULL;
    }
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError,
                     "notice_update() needs a callable fn (current value -> new value), not "
                     "'%.200s'",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (nb_lock_write() < 0) {
        return NULL;
    }
    /* From here to the unlock this thread holds the write lock: any Python
     * code that runs (fn, and the values' pickling hooks) must not touch the
     * board, or it would re-lock it. */
    tls_in_update = true;
    bocpy_strtable_slot *slot = bocpy_strtable_find(&entries, name, len, false);
    nb_version *v = slot ? slot->value : NULL;
    PyObject *current =
        (v != NULL && v->blob != NULL) ? bocpy_deserialise(st, v->blob) : Py_NewRef(dflt);
    PyObject *updated = NULL;
    int rc = -1;
    if (current != NULL) {
        updated = PyObject_CallOneArg(fn, current);
        Py_DECREF(current);
    }
    if (updated == removed) {
        rc = commit(name, len, NULL);
    } else if (updated != NULL) {
        bocpy_blob *blob = bocpy_serialise(st, updated);
        rc = blob ? commit(name, len, blob) : -1;
    }
    tls_in_update = false;
    nb_unlock();
    Py_XDECREF(updated);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Reads `key` at `snapshot`: a new reference, or NULL -- with *found false
 * and no exception when the key is absent, with an exception on error. */
static PyObject *read_at(bocpy_state *st, const char *key, size_t len, uint64_t snapshot,
                         bool *found) {
    *found = false;
    if (nb_lock_read() < 0) {
        return NULL;
    }
    nb_version *v = visible(bocpy_strtable_find(&entries, key, len, false), snapshot);
    if (v != NULL && v->blob != NULL) {
        /* relaxed: the read lock orders this against the commit that
         * could drop the chain's reference. */
        atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    } else {
        v = NULL;
    }
    nb_unlock();
    if (v == NULL) {
        return NULL;
    }
    *found = true;
    PyObject *value = bocpy_deserialise(st, v->blob);
    version_release(v);
    return value;
}

/* The snapshot a read uses: inside a behavior, the behavior's own; outside
 * one (the main thread between runs), the board as it is now -- read under
 * the read lock, so no pin is needed.  0 with an exception on failure. */
static uint64_t current_snapshot(void) {
    return tls_in_behavior ? behavior_snapshot() : UINT64_MAX;
}

PyObject *bocpy_notice_read(bocpy_state *st, PyObject *key, PyObject *dflt) {
    const char *name;
    size_t len;
    if (key_arg(key, &name, &len) < 0 || refuse_inside_update("notice_read()") < 0) {
        return NULL;
    }
    uint64_t snapshot = current_snapshot();
    if (snapshot == 0) {
        return NULL;
    }
    bool found;
    PyObject *value = read_at(st, name, len, snapshot, &found);
    if (!found && !PyErr_Occurred()) {
        return Py_NewRef(dflt);
    }
    return value;
}

/* ------------------------------------------------------ snapshot views */

/* noticeboard(): a read-only Mapping fixed at one snapshot, with its own
 * pin (so it stays readable after the behavior that made it ends).  The
 * Python layer registers the type as a collections.abc.Mapping; keys(),
 * items() and values() return the collections.abc views over it. */
typedef struct {
    PyObject_HEAD nb_pin *pin;
    uint64_t version;
} BoardView;

#define VIEW_GUARD() refuse_inside_update("a noticeboard() view")

static void BoardView_dealloc(BoardView *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->pin != NULL) {
        pin_free(self->pin);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* The view's keys, sorted.  Key bytes are copied under the read lock and
 * made into str objects after it: Python code (a GC finaliser) must never
 * run while this thread holds the board lock. */
static PyObject *BoardView_keys_list(BoardView *self) {
    if (VIEW_GUARD() < 0 || nb_lock_read() < 0) {
        return NULL;
    }
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < entries.cap; i++) {
        bocpy_strtable_slot *slot = &entries.slots[i];
        nb_version *v = visible(slot->key ? slot : NULL, self->version);
        if (v != NULL && v->blob != NULL) {
            n++;
            bytes += slot->len;
        }
    }
    size_t *lens = malloc((n + 1) * sizeof(*lens));
    char *text = malloc(bytes + 1);
    if (lens == NULL || text == NULL) {
        nb_unlock();
        free(lens);
        free(text);
        return PyErr_NoMemory();
    }
    size_t k = 0, at = 0;
    for (size_t i = 0; i < entries.cap; i++) {
        bocpy_strtable_slot *slot = &entries.slots[i];
        nb_version *v = visible(slot->key ? slot : NULL, self->version);
        if (v != NULL && v->blob != NULL) {
            memcpy(text + at, slot->key, slot->len);
            lens[k++] = slot->len;
            at += slot->len;
        }
    }
    nb_unlock();
    PyObject *list = PyList_New((Py_ssize_t)n);
    at = 0;
    for (size_t i = 0; list != NULL && i < n; i++) {
        PyObject *key = PyUnicode_DecodeUTF8(text + at, (Py_ssize_t)lens[i], NULL);
        if (key == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, key);
        at += lens[i];
    }
    free(lens);
    free(text);
    if (list != NULL && PyList_Sort(list) < 0) {
        Py_CLEAR(list);
    }
    return list;
}

/* The UTF-8 bytes of a key a view looks up; NULL with no exception for a
 * key that cannot be on the board (not a str, or not encodable), NULL with
 * an exception on other errors. */
static const char *view_key(PyObject *key, Py_ssize_t *len) {
    if (!PyUnicode_Check(key)) {
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8AndSize(key, len);
    if (name == NULL && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        PyErr_Clear();
    }
    return name;
}

/* self[key]: NULL with *found false and no exception when absent (a key
 * that is not a valid noticeboard key is simply absent, as in a dict). */
static PyObject *BoardView_lookup(BoardView *self, PyObject *key, bool *found) {
    *found = false;
    if (VIEW_GUARD() < 0) {
        return NULL;
    }
    Py_ssize_t len;
    const char *name = view_key(key, &len);
    if (name == NULL) {
        return NULL;
    }
    return read_at(bocpy_state_of_type(Py_TYPE(self)), name, (size_t)len, self->version, found);
}

static PyObject *BoardView_get(BoardView *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes 1 or 2 arguments (key, default=None), got %zd",
                     nargs);
        return NULL;
    }
    bool found;
    PyObject *value = BoardView_lookup(self, args[0], &found);
    if (!found && !PyErr_Occurred()) {
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    }
    return value;
}

static PyObject *BoardView_subscript(BoardView *self, PyObject *key) {
    bool found;
    PyObject *value = BoardView_lookup(self, key, &found);
    if (!found && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_KeyError, key);
    }
    return value;
}

static int BoardView_contains(BoardView *self, PyObject *key) {
    if (VIEW_GUARD() < 0) {
        return -1;
    }
    Py_ssize_t len;
    const char *name = view_key(key, &len);
    if (name == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (nb_lock_read() < 0) {
        return -1;
    }
    nb_version *v = visible(bocpy_strtable_find(&entries, name, (size_t)len, false), self->version);
    int present = v != NULL && v->blob != NULL;
    nb_unlock();
    return present;
}

static Py_ssize_t BoardView_len(BoardView *self) {
    PyObject *keys = BoardView_keys_list(self);
    if (keys == NULL) {
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    Py_DECREF(keys);
    return n;
}

static PyObject *BoardView_iter(BoardView *self) {
    PyObject *keys = BoardView_keys_list(self);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

/* collections.abc.<name>(self): the Mapping views, lazy over this view. */
static PyObject *abc_view(BoardView *self, const char *name) {
    PyObject *abc = PyImport_ImportModule("collections.abc");
    if (abc == NULL) {
        return NULL;
    }
    PyObject *view = PyObject_CallMethod(abc, name, "O", (PyObject *)self);
    Py_DECREF(abc);
    return view;
}

static PyObject *BoardView_keys(BoardView *self, PyObject *unused) {
    (void)unused;
    return abc_view(self, "KeysView");
}

static PyObject *BoardView_items(BoardView *self, PyObject *unused) {
    (void)unused;
    return abc_view(self, "ItemsView");
}

static PyObject *BoardView_values(BoardView *self, PyObject *unused) {
    (void)unused;
    return abc_view(self, "ValuesView");
}

static PyObject *BoardView_to_dict(BoardView *self, PyObject *unused) {
    (void)unused;
    PyObject *keys = BoardView_keys_list(self);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *dict = PyDict_New();
    for (Py_ssize_t i = 0; dict != NULL && i < PyList_GET_SIZE(keys); i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        PyObject *v = BoardView_subscript(self, k);
        if (v == NULL || PyDict_SetItem(dict, k, v) < 0) {
            Py_CLEAR(dict);
        }
        Py_XDECREF(v);
    }
    Py_DECREF(keys);
    return dict;
}

/* == and != compare contents with any other Mapping, as Mapping does. */
static PyObject *BoardView_richcompare(BoardView *self, PyObject *other, int op) {
    if (op != Py_EQ && op != Py_NE) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *abc = PyImport_ImportModule("collections.abc");
    PyObject *mapping = abc ? PyObject_GetAttrString(abc, "Mapping") : NULL;
    Py_XDECREF(abc);
    if (mapping == NULL) {
        return NULL;
    }
    int is_mapping = PyObject_IsInstance(other, mapping);
    Py_DECREF(mapping);
    if (is_mapping <= 0) {
        if (is_mapping < 0) {
            return NULL;
        }
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *mine = BoardView_to_dict(self, NULL);
    PyObject *theirs = mine ? PyDict_New() : NULL;
    if (theirs != NULL && PyDict_Merge(theirs, other, 1) < 0) {
        Py_CLEAR(theirs);
    }
    PyObject *result = theirs ? PyObject_RichCompare(mine, theirs, op) : NULL;
    Py_XDECREF(mine);
    Py_XDECREF(theirs);
    return result;
}

static PyObject *BoardView_repr(BoardView *self) {
    PyObject *d = BoardView_to_dict(self, NULL);
    if (d == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("noticeboard(%R)", d);
    Py_DECREF(d);
    return r;
}

static PyMethodDef BoardView_methods[] = {
    {"get", (PyCFunction)(void (*)(void))BoardView_get, METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\n"
     "The value of key in this snapshot, or default when it is absent."},
    {"keys", (PyCFunction)BoardView_keys, METH_NOARGS,
     "keys($self, /)\n--\n\nA set-like view of the keys (collections.abc.KeysView)."},
    {"items", (PyCFunction)BoardView_items, METH_NOARGS,
     "items($self, /)\n--\n\nA set-like view of the (key, value) pairs "
     "(collections.abc.ItemsView)."},
    {"values", (PyCFunction)BoardView_values, METH_NOARGS,
     "values($self, /)\n--\n\nA view of the values (collections.abc.ValuesView)."},
    {"to_dict", (PyCFunction)BoardView_to_dict, METH_NOARGS,
     "to_dict($self, /)\n--\n\nA plain dict copy of this snapshot."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot BoardView_slots[] = {
    {Py_tp_dealloc, BoardView_dealloc},
    {Py_tp_repr, BoardView_repr},
    {Py_tp_iter, BoardView_iter},
    {Py_tp_richcompare, BoardView_richcompare},
    {Py_tp_methods, BoardView_methods},
    {Py_mp_subscript, BoardView_subscript},
    {Py_mp_length, BoardView_len},
    {Py_sq_contains, BoardView_contains},
    {Py_tp_doc, "A read-only snapshot of the noticeboard: a collections.abc.Mapping of str "
                "keys, fixed for the behavior (or the moment) that made it."},
    {0, NULL},
};

static PyType_Spec BoardView_spec = {
    .name = "bocpy._core.NoticeboardView",
    .basicsize = sizeof(BoardView),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_MAPPING,
    .slots = BoardView_slots,
};

PyObject *bocpy_board_view_type_create(PyObject *module) {
    return PyType_FromModuleAndSpec(module, &BoardView_spec, NULL);
}

PyObject *bocpy_noticeboard(bocpy_state *st, bool fresh) {
    if (refuse_inside_update("noticeboard()") < 0) {
        return NULL;
    }
    uint64_t behavior = 0;
    if (!fresh && tls_in_behavior) {
        behavior = behavior_snapshot();
        if (behavior == 0) {
            return NULL;
        }
    }
    nb_pin *pin = pin_new();
    if (pin == NULL) {
        return PyErr_NoMemory();
    }
    BoardView *view = PyObject_New(BoardView, st->board_view_type);
    if (view == NULL) {
        pin_free(pin);
        return NULL;
    }
    view->pin = pin;
    view->version = 0;
    if (nb_lock_read() < 0) {
        Py_DECREF(view);
        return NULL;
    }
    /* The view's pin keeps the behavior's snapshot (or today's board). */
    if (behavior != 0) {
        /* relaxed: under the read lock, like pin_set (see nb_pin). */
        atomic_store_explicit(&view->pin->version, behavior, memory_order_relaxed);
        view->version = behavior;
    } else {
        view->version = pin_set(view->pin);
    }
    nb_unlock();
    return (PyObject *)view;
}

/* REMOVED: returned by a notice_update function to delete the key.  One
 * instance per interpreter, pickled by reference to bocpy._core.REMOVED. */
static PyObject *Removed_repr(PyObject *self) {
    (void)self;
    return PyUnicode_FromString("REMOVED");
}

static PyObject *Removed_reduce(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString("REMOVED");
}

static PyMethodDef Removed_methods[] = {
    {"__reduce__", Removed_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Removed_slots[] = {
    {Py_tp_repr, Removed_repr},
    {Py_tp_methods, Removed_methods},
    {Py_tp_doc, "Return bocpy.REMOVED from a notice_update function to delete the key."},
    {0, NULL},
};

static PyType_Spec Removed_spec = {
    .name = "bocpy._core.RemovedType",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Removed_slots,
};

PyObject *bocpy_removed_create(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Removed_spec, NULL);
    if (type == NULL) {
        return NULL;
    }
    PyObject *removed = PyObject_New(PyObject, (PyTypeObject *)type);
    Py_DECREF(type);
    return removed;
}
