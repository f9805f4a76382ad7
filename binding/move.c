/*
 * move.c: types whose objects cross interpreters by moving their buffer.
 *
 * A C extension type that owns a plain buffer registers four callbacks
 * (detach, restore, attach, free_payload; see src/bocpy/include/bocpy/
 * move.h, the public contract) and its objects then leave an interpreter
 * as that buffer -- an opaque payload of plain C memory -- instead of as a
 * pickled copy.  transfer.c decides when a value moves (a cown's value) and
 * carries the payloads in blobs; this file keeps the registry and calls the
 * callbacks.
 *
 * Two levels of registry:
 *   - process-wide, one entry per stable type name ("module.qualname"),
 *     holding the callbacks.  Appended under `entries_lock` and never freed
 *     or changed once published, so a blob on any thread may point at one;
 *   - per interpreter (bocpy_move_state, in the module state, touched only
 *     with that interpreter's GIL): which type object of THIS interpreter
 *     goes with which entry, in both directions, and the pickler dispatch
 *     table that sends those types through transfer.c's move reducer.
 *
 * Extensions reach register_type through the capsule bocpy._core._C_API,
 * so they never link against this module.
 */
#include "bocpy.h"

#include <string.h>

static pthread_mutex_t entries_lock = PTHREAD_MUTEX_INITIALIZER;
static bocpy_move_entry *entries; /* guarded by entries_lock */

/* ---------------------------------------------------------- the registry */

static bool same_callbacks(const BocPyMoveType *a, const BocPyMoveType *b) {
    return a->detach == b->detach && a->restore == b->restore && a->attach == b->attach &&
           a->free_payload == b->free_payload;
}

/* The entry for `name`, made if new; NULL with an exception when the name
 * is taken by other callbacks, or out of memory. */
static bocpy_move_entry *entry_for(const char *name, const char *module,
                                   const BocPyMoveType *spec) {
    pthread_mutex_lock(&entries_lock);
    bocpy_move_entry *e = entries;
    while (e != NULL && strcmp(e->name, name) != 0) {
        e = e->next;
    }
    if (e != NULL) {
        pthread_mutex_unlock(&entries_lock);
        if (!same_callbacks(&e->spec, spec)) {
            PyErr_Format(PyExc_ValueError,
                         "a different extension already registered a move type named '%s' "
                         "with other callbacks; two types must not share a module and "
                         "qualified name",
                         name);
            return NULL;
        }
        return e;
    }
    e = calloc(1, sizeof(*e));
    if (e != NULL) {
        e->name = strdup(name);
        e->module = strdup(module);
    }
    if (e == NULL || e->name == NULL || e->module == NULL) {
        pthread_mutex_unlock(&entries_lock);
        if (e != NULL) {
            free(e->name);
            free(e->module);
            free(e);
        }
        PyErr_NoMemory();
        return NULL;
    }
    e->spec = *spec;
    e->next = entries;
    entries = e;
    pthread_mutex_unlock(&entries_lock);
    return e;
}

static int check_spec(PyTypeObject *type, const BocPyMoveType *spec) {
    if (type == NULL || !PyType_Check((PyObject *)type)) {
        PyErr_Format(PyExc_TypeError, "BocPyMove_Register() needs a type object, not '%.200s'",
                     type ? Py_TYPE(type)->tp_name : "NULL");
        return -1;
    }
    if (spec == NULL) {
        PyErr_Format(PyExc_ValueError, "BocPyMove_Register(%.200s): the BocPyMoveType is NULL",
                     type->tp_name);
        return -1;
    }
    if (spec->abi_version != BOCPY_MOVE_ABI_VERSION) {
        PyErr_Format(PyExc_ValueError,
                     "BocPyMove_Register(%.200s): the BocPyMoveType says ABI version %d, this "
                     "bocpy speaks %d; set abi_version to BOCPY_MOVE_ABI_VERSION and rebuild",
                     type->tp_name, spec->abi_version, BOCPY_MOVE_ABI_VERSION);
        return -1;
    }
    const char *missing = spec->detach == NULL         ? "detach"
                          : spec->restore == NULL      ? "restore"
                          : spec->attach == NULL       ? "attach"
                          : spec->free_payload == NULL ? "free_payload"
                                                       : NULL;
    if (missing != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "BocPyMove_Register(%.200s): the '%s' callback is NULL; a movable type "
                     "must provide all four callbacks",
                     type->tp_name, missing);
        return -1;
    }
    return 0;
}

/* The capsule's register_type: registers `type` in the calling
 * interpreter (whose GIL the caller holds). */
static int move_register_type(PyTypeObject *type, const BocPyMoveType *spec) {
    if (check_spec(type, spec) < 0) {
        return -1;
    }
    bocpy_interp *rec = bocpy_interp_current();
    bocpy_state *st = rec != NULL ? rec->state : NULL;
    if (st == NULL || st->move.types == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "BocPyMove_Register(): bocpy._core is not initialised in this "
                        "interpreter (import bocpy first)");
        return -1;
    }
    PyObject *module = PyObject_GetAttrString((PyObject *)type, "__module__");
    PyObject *qualname = module ? PyType_GetQualName(type) : NULL;
    if (qualname == NULL) {
        Py_XDECREF(module);
        return -1;
    }
    if (!PyUnicode_Check(module)) {
        PyErr_Format(PyExc_TypeError,
                     "BocPyMove_Register(%.200s): the type's __module__ must be a str (its "
                     "module is imported where the type is needed), not '%.200s'",
                     type->tp_name, Py_TYPE(module)->tp_name);
        Py_DECREF(module);
        Py_DECREF(qualname);
        return -1;
    }
    PyObject *name = PyUnicode_FromFormat("%U.%U", module, qualname);
    const char *name_utf8 = name ? PyUnicode_AsUTF8(name) : NULL;
    const char *module_utf8 = name_utf8 ? PyUnicode_AsUTF8(module) : NULL;
    bocpy_move_entry *e = module_utf8 ? entry_for(name_utf8, module_utf8, spec) : NULL;
    PyObject *address = e ? PyLong_FromVoidPtr(e) : NULL;
    PyObject *reducer = address ? PyObject_GetAttrString(st->module, "_move_reduce") : NULL;
    int rc = -1;
    if (reducer != NULL && PyDict_SetItem(st->move.types, (PyObject *)type, address) == 0 &&
        PyDict_SetItem(st->move.names, name, (PyObject *)type) == 0 &&
        PyDict_SetItem(st->move.dispatch, (PyObject *)type, reducer) == 0) {
        rc = 0;
    }
    if (rc < 0 && address != NULL) {
        /* Leave this interpreter's tables as they were: all three or none. */
        PyObject *exc = PyErr_GetRaisedException();
        if (PyDict_DelItem(st->move.types, (PyObject *)type) < 0 ||
            PyDict_DelItem(st->move.dispatch, (PyObject *)type) < 0) {
            PyErr_Clear();
        }
        PyErr_SetRaisedException(exc);
    }
    Py_XDECREF(reducer);
    Py_XDECREF(address);
    Py_XDECREF(name);
    Py_DECREF(module);
    Py_DECREF(qualname);
    return rc;
}

static const BocPyMoveAPI move_api = {
    .abi_version = BOCPY_MOVE_ABI_VERSION,
    .size = sizeof(BocPyMoveAPI),
    .register_type = move_register_type,
};

const bocpy_move_entry *bocpy_move_entry_of(bocpy_state *st, PyObject *obj) {
    if (!bocpy_move_any(st)) {
        return NULL;
    }
    /* Exact type only: a subclass may carry state the buffer does not. */
    /* A strong reference: on free-threaded builds another thread may
     * register the type again meanwhile, replacing (and freeing) the value. */
    PyObject *address;
    if (bocpy_dict_get_ref(st->move.types, (PyObject *)Py_TYPE(obj), &address) <= 0) {
        PyErr_Clear(); /* a type key hashes by identity: no error to keep */
        return NULL;
    }
    const bocpy_move_entry *e = PyLong_AsVoidPtr(address);
    Py_DECREF(address);
    return e;
}

/* ---------------------------------------------------------- the callbacks */

void *bocpy_move_detach(const bocpy_move_entry *type, PyObject *obj) {
    void *payload = type->spec.detach(obj);
    if (payload == NULL && !PyErr_Occurred()) {
        PyErr_Format(PyExc_SystemError,
                     "the detach callback of movable type '%s' returned NULL without "
                     "setting an exception",
                     type->name);
    }
    assert(payload == NULL || !PyErr_Occurred());
    return payload;
}

void bocpy_move_restore(const bocpy_move_entry *type, PyObject *obj, void *payload) {
    type->spec.restore(obj, payload);
}

/* The type registered here under `type`'s name, importing its module if
 * needed (borrowed), or NULL with an exception. */
static PyObject *local_type(bocpy_state *st, const bocpy_move_entry *type) {
    PyObject *name = PyUnicode_FromString(type->name);
    if (name == NULL) {
        return NULL;
    }
    PyObject *local = PyDict_GetItemWithError(st->move.names, name);
    if (local == NULL && !PyErr_Occurred()) {
        /* First payload of this type here: importing the module runs its
         * exec slot, which registers the type in this interpreter. */
        PyObject *mod = PyImport_ImportModule(type->module);
        if (mod != NULL) {
            Py_DECREF(mod);
            local = PyDict_GetItemWithError(st->move.names, name);
            if (local == NULL && !PyErr_Occurred()) {
                PyErr_Format(PyExc_RuntimeError,
                             "a '%s' was moved into this interpreter, but importing '%s' did "
                             "not register that type here; call BocPyMove_Register() from the "
                             "module's exec slot, so that it runs in every interpreter",
                             type->name, type->module);
            }
        }
    }
    Py_DECREF(name);
    return local;
}

PyObject *bocpy_move_attach(bocpy_state *st, const bocpy_move_entry *type, void **payload) {
    if (*payload == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "the buffer of a moved '%s' is gone: an earlier attempt to rebuild this "
                     "value failed after taking it",
                     type->name);
        return NULL;
    }
    PyObject *local = local_type(st, type);
    if (local == NULL) {
        return NULL;
    }
    PyObject *obj = type->spec.attach((PyTypeObject *)local, *payload);
    if (obj == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_SystemError,
                         "the attach callback of movable type '%s' returned NULL without "
                         "setting an exception",
                         type->name);
        }
        return NULL; /* the payload is still ours */
    }
    *payload = NULL; /* the object owns it now */
    return obj;
}

void bocpy_move_free(const bocpy_move_entry *type, void *payload) {
    if (payload != NULL) {
        type->spec.free_payload(payload);
    }
}

/* ------------------------------------------------------- module functions */

static PyObject *core_move_reduce(PyObject *module, PyObject *obj) {
    return bocpy_transfer_reduce_move(bocpy_state_of_module(module), obj);
}

static PyObject *core_rebuild_moved(PyObject *module, PyObject *arg) {
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return bocpy_transfer_take_move(bocpy_state_of_module(module), index);
}

static PyObject *core_move_types(PyObject *module, PyObject *unused) {
    (void)unused;
    /* The stable names registered in this interpreter (for tests and
     * diagnostics). */
    return PyDict_Keys(bocpy_state_of_module(module)->move.names);
}

static PyMethodDef move_methods[] = {
    {"_move_reduce", core_move_reduce, METH_O, NULL},
    {"_rebuild_moved", core_rebuild_moved, METH_O, NULL},
    {"_move_types", core_move_types, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

int bocpy_move_module_init(PyObject *module, bocpy_state *st) {
    bocpy_move_state *m = &st->move;
    m->types = PyDict_New();
    m->names = PyDict_New();
    m->dispatch = PyDict_New();
    if (m->types == NULL || m->names == NULL || m->dispatch == NULL ||
        PyModule_AddFunctions(module, move_methods) < 0) {
        return -1;
    }
    m->rebuild = PyObject_GetAttrString(module, "_rebuild_moved");
    PyObject *pickle = m->rebuild ? PyImport_ImportModule("pickle") : NULL;
    m->pickler = pickle ? PyObject_GetAttrString(pickle, "Pickler") : NULL;
    Py_XDECREF(pickle);
    PyObject *io = m->pickler ? PyImport_ImportModule("io") : NULL;
    m->bytesio = io ? PyObject_GetAttrString(io, "BytesIO") : NULL;
    Py_XDECREF(io);
    if (m->bytesio == NULL) {
        return -1;
    }
    /* The table is static and the same in every interpreter. */
    PyObject *capsule = PyCapsule_New((void *)&move_api, BOCPY_MOVE_CAPSULE, NULL);
    if (capsule == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "_C_API", capsule);
    Py_DECREF(capsule);
    return rc;
}

int bocpy_move_traverse(bocpy_state *st, visitproc visit, void *arg) {
    Py_VISIT(st->move.types);
    Py_VISIT(st->move.names);
    Py_VISIT(st->move.dispatch);
    Py_VISIT(st->move.rebuild);
    Py_VISIT(st->move.pickler);
    Py_VISIT(st->move.bytesio);
    return 0;
}

void bocpy_move_clear(bocpy_state *st) {
    Py_CLEAR(st->move.types);
    Py_CLEAR(st->move.names);
    Py_CLEAR(st->move.dispatch);
    Py_CLEAR(st->move.rebuild);
    Py_CLEAR(st->move.pickler);
    Py_CLEAR(st->move.bytesio);
}
