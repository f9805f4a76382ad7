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
 */
#include "bocpy.h"

#include <string.h>

typedef struct nb_version {
    struct nb_version *older;
    uint64_t version;
    bocpy_blob *blob; /* NULL: the key was deleted */
    atomic_int refs;  /* the chain's reference plus readers' */
} nb_version;

/* A live snapshot.  Pins form a list guarded by pins_lock. */
typedef struct nb_pin {
    struct nb_pin *prev, *next;
    atomic_uint_fast64_t version; /* 0: not pinned */
} nb_pin;

static pthread_rwlock_t board_lock = PTHREAD_RWLOCK_INITIALIZER;
static bocpy_strtable entries; /* key -> newest nb_version */
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

static void nb_lock_read(void) {
    if (pthread_rwlock_tryrdlock(&board_lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
            pthread_rwlock_rdlock(&board_lock);
        Py_END_ALLOW_THREADS
    }
}

static void nb_lock_write(void) {
    if (pthread_rwlock_trywrlock(&board_lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
            pthread_rwlock_wrlock(&board_lock);
        Py_END_ALLOW_THREADS
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
    uint64_t now = atomic_load_explicit(&board_version, memory_order_relaxed);
    atomic_store_explicit(&pin->version, now, memory_order_relaxed);
    return now;
}

/* The oldest version any pin can see (write lock held). */
static uint64_t oldest_pinned(uint64_t current) {
    uint64_t oldest = current;
    pthread_mutex_lock(&pins_lock);
    for (nb_pin *p = pins; p != NULL; p = p->next) {
        uint64_t v = atomic_load_explicit(&p->version, memory_order_relaxed);
        if (v != 0 && v < oldest) {
            oldest = v;
        }
    }
    pthread_mutex_unlock(&pins_lock);
    return oldest;
}

/* This thread's behavior snapshot, fixed at its first read. */
static uint64_t behavior_snapshot(void) {
    if (tls_pin == NULL) {
        tls_pin = pin_new();
        if (tls_pin == NULL) {
            return 0;
        }
    }
    uint64_t v = atomic_load_explicit(&tls_pin->version, memory_order_relaxed);
    if (v == 0) {
        nb_lock_read();
        v = pin_set(tls_pin);
        pthread_rwlock_unlock(&board_lock);
    }
    return v;
}

void bocpy_noticeboard_behavior_begin(void) { tls_in_behavior = true; }

void bocpy_noticeboard_behavior_end(void) {
    /* The next behavior on this thread takes a fresh snapshot. */
    tls_in_behavior = false;
    if (tls_pin != NULL) {
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

/* ------------------------------------------------------- the functions */

#define KEY_ARG(obj, name, len) bocpy_str_arg((obj), "a noticeboard key", &(name), &(len))

static int refuse_inside_update(const char *what) {
    if (tls_in_update) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s() cannot be called from inside a notice_update() function: the "
                     "function gets the current value and returns the new one",
                     what);
        return -1;
    }
    return 0;
}

PyObject *bocpy_notice_write(bocpy_state *st, PyObject *key, PyObject *value) {
    const char *name;
    size_t len;
    if (KEY_ARG(key, name, len) < 0 || refuse_inside_update("notice_write") < 0) {
        return NULL;
    }
    bocpy_blob *blob = bocpy_serialize(st, value);
    if (blob == NULL) {
        return NULL;
    }
    nb_lock_write();
    int rc = commit(name, len, blob);
    pthread_rwlock_unlock(&board_lock);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *bocpy_notice_delete(PyObject *key) {
    const char *name;
    size_t len;
    if (KEY_ARG(key, name, len) < 0 || refuse_inside_update("notice_delete") < 0) {
        return NULL;
    }
    nb_lock_write();
    int rc = commit(name, len, NULL);
    pthread_rwlock_unlock(&board_lock);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *bocpy_notice_update(bocpy_state *st, PyObject *key, PyObject *fn, PyObject *dflt,
                              PyObject *removed) {
    const char *name;
    size_t len;
    if (KEY_ARG(key, name, len) < 0 || refuse_inside_update("notice_update") < 0) {
        return NULL;
    }
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "notice_update() needs a callable, not '%.200s'",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    nb_lock_write();
    bocpy_strtable_slot *slot = bocpy_strtable_find(&entries, name, len, false);
    nb_version *v = slot ? slot->value : NULL;
    PyObject *current =
        (v != NULL && v->blob != NULL) ? bocpy_deserialize(st, v->blob) : Py_NewRef(dflt);
    PyObject *updated = NULL;
    int rc = -1;
    if (current != NULL) {
        tls_in_update = true;
        updated = PyObject_CallOneArg(fn, current);
        tls_in_update = false;
        Py_DECREF(current);
    }
    if (updated == removed) {
        rc = commit(name, len, NULL);
    } else if (updated != NULL) {
        bocpy_blob *blob = bocpy_serialize(st, updated);
        rc = blob ? commit(name, len, blob) : -1;
    }
    pthread_rwlock_unlock(&board_lock);
    Py_XDECREF(updated);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Reads `key` at `snapshot`: a new reference, or NULL with *found false. */
static PyObject *read_at(bocpy_state *st, const char *key, size_t len, uint64_t snapshot,
                         bool *found) {
    nb_lock_read();
    nb_version *v = visible(bocpy_strtable_find(&entries, key, len, false), snapshot);
    if (v != NULL && v->blob != NULL) {
        atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    } else {
        v = NULL;
    }
    pthread_rwlock_unlock(&board_lock);
    *found = v != NULL;
    if (v == NULL) {
        return NULL;
    }
    PyObject *value = bocpy_deserialize(st, v->blob);
    version_release(v);
    return value;
}

/* The snapshot a read uses: inside a behavior, the behavior's own; outside
 * one (the main thread between runs), the board as it is now -- read under
 * the read lock, so no pin is needed. */
static uint64_t current_snapshot(void) {
    return tls_in_behavior ? behavior_snapshot() : UINT64_MAX;
}

PyObject *bocpy_notice_read(bocpy_state *st, PyObject *key, PyObject *dflt) {
    const char *name;
    size_t len;
    if (KEY_ARG(key, name, len) < 0 || refuse_inside_update("notice_read") < 0) {
        return NULL;
    }
    uint64_t snapshot = current_snapshot();
    bool found;
    PyObject *value = read_at(st, name, len, snapshot, &found);
    if (!found && !PyErr_Occurred()) {
        return Py_NewRef(dflt);
    }
    return value;
}

/* ------------------------------------------------------ snapshot views */

/* noticeboard(): a read-only mapping fixed at one snapshot, with its own
 * pin (so it stays readable after the behavior that made it ends). */
typedef struct {
    PyObject_HEAD nb_pin *pin;
    uint64_t version;
} BoardView;

static void BoardView_dealloc(BoardView *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->pin != NULL) {
        pin_free(self->pin);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *BoardView_keys_list(BoardView *self) {
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    nb_lock_read();
    for (size_t i = 0; i < entries.cap; i++) {
        bocpy_strtable_slot *slot = &entries.slots[i];
        nb_version *v = visible(slot->key ? slot : NULL, self->version);
        if (v != NULL && v->blob != NULL) {
            PyObject *k = PyUnicode_FromStringAndSize(slot->key, (Py_ssize_t)slot->len);
            if (k == NULL || PyList_Append(list, k) < 0) {
                Py_XDECREF(k);
                pthread_rwlock_unlock(&board_lock);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(k);
        }
    }
    pthread_rwlock_unlock(&board_lock);
    if (PyList_Sort(list) < 0) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

static PyObject *BoardView_get(BoardView *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    const char *name;
    size_t len;
    if (KEY_ARG(args[0], name, len) < 0) {
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    bool found;
    PyObject *value = read_at(st, name, len, self->version, &found);
    if (!found && !PyErr_Occurred()) {
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    }
    return value;
}

static PyObject *BoardView_subscript(BoardView *self, PyObject *key) {
    const char *name;
    size_t len;
    if (KEY_ARG(key, name, len) < 0) {
        return NULL;
    }
    bool found;
    PyObject *value = read_at(bocpy_state_of_type(Py_TYPE(self)), name, len, self->version, &found);
    if (!found && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_KeyError, key);
    }
    return value;
}

static int BoardView_contains(BoardView *self, PyObject *key) {
    if (!PyUnicode_Check(key)) {
        return 0;
    }
    Py_ssize_t len;
    const char *name = PyUnicode_AsUTF8AndSize(key, &len);
    if (name == NULL) {
        return -1;
    }
    nb_lock_read();
    nb_version *v = visible(bocpy_strtable_find(&entries, name, (size_t)len, false), self->version);
    int present = v != NULL && v->blob != NULL;
    pthread_rwlock_unlock(&board_lock);
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

static PyObject *BoardView_keys(BoardView *self, PyObject *unused) {
    (void)unused;
    return BoardView_keys_list(self);
}

static PyObject *BoardView_items(BoardView *self, PyObject *unused) {
    (void)unused;
    PyObject *keys = BoardView_keys_list(self);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *items = PyList_New(0);
    for (Py_ssize_t i = 0; items != NULL && i < PyList_GET_SIZE(keys); i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        PyObject *v = BoardView_subscript(self, k);
        PyObject *pair = v ? PyTuple_Pack(2, k, v) : NULL;
        Py_XDECREF(v);
        if (pair == NULL || PyList_Append(items, pair) < 0) {
            Py_XDECREF(pair);
            Py_CLEAR(items);
            break;
        }
        Py_DECREF(pair);
    }
    Py_DECREF(keys);
    return items;
}

static PyObject *BoardView_values(BoardView *self, PyObject *unused) {
    PyObject *items = BoardView_items(self, unused);
    if (items == NULL) {
        return NULL;
    }
    PyObject *values = PyList_New(PyList_GET_SIZE(items));
    for (Py_ssize_t i = 0; values != NULL && i < PyList_GET_SIZE(items); i++) {
        PyList_SET_ITEM(values, i, Py_NewRef(PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 1)));
    }
    Py_DECREF(items);
    return values;
}

static PyObject *BoardView_to_dict(BoardView *self, PyObject *unused) {
    PyObject *items = BoardView_items(self, unused);
    if (items == NULL) {
        return NULL;
    }
    PyObject *dict = PyDict_New();
    for (Py_ssize_t i = 0; dict != NULL && i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (PyDict_SetItem(dict, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
            Py_CLEAR(dict);
        }
    }
    Py_DECREF(items);
    return dict;
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
    {"get", (PyCFunction)(void (*)(void))BoardView_get, METH_FASTCALL, "get(key, default=None)"},
    {"keys", (PyCFunction)BoardView_keys, METH_NOARGS, NULL},
    {"items", (PyCFunction)BoardView_items, METH_NOARGS, NULL},
    {"values", (PyCFunction)BoardView_values, METH_NOARGS, NULL},
    {"to_dict", (PyCFunction)BoardView_to_dict, METH_NOARGS, "A plain dict copy."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot BoardView_slots[] = {
    {Py_tp_dealloc, BoardView_dealloc},
    {Py_tp_repr, BoardView_repr},
    {Py_tp_iter, BoardView_iter},
    {Py_tp_methods, BoardView_methods},
    {Py_mp_subscript, BoardView_subscript},
    {Py_mp_length, BoardView_len},
    {Py_sq_contains, BoardView_contains},
    {Py_tp_doc, "A read-only snapshot of the noticeboard."},
    {0, NULL},
};

static PyType_Spec BoardView_spec = {
    .name = "bocpy.NoticeboardView",
    .basicsize = sizeof(BoardView),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = BoardView_slots,
};

PyObject *bocpy_board_view_type_create(PyObject *module) {
    return PyType_FromModuleAndSpec(module, &BoardView_spec, NULL);
}

PyObject *bocpy_noticeboard(bocpy_state *st, bool fresh) {
    if (refuse_inside_update("noticeboard") < 0) {
        return NULL;
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
    uint64_t behavior = (fresh || !tls_in_behavior) ? 0 : behavior_snapshot();
    nb_lock_read();
    /* The view's pin keeps the behavior's snapshot (or today's board). */
    if (behavior != 0) {
        atomic_store_explicit(&view->pin->version, behavior, memory_order_relaxed);
        view->version = behavior;
    } else {
        view->version = pin_set(view->pin);
    }
    pthread_rwlock_unlock(&board_lock);
    return (PyObject *)view;
}

/* REMOVED: returned by a notice_update function to delete the key.  One
 * instance per interpreter, pickled by reference to bocpy._core.REMOVED. */
static PyObject *Removed_repr(PyObject *self) {
    (void)self;
    return PyUnicode_FromString("bocpy.REMOVED");
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
