/*
 * movebuf: a tiny downstream extension for tests/test_move_hook.py.
 *
 * movebuf.Buffer owns a malloc'd byte buffer and registers itself with
 * <bocpy/move.h>, so a Buffer in a cown crosses bocpy's interpreters by
 * handing that buffer over.  It is written the way a third-party extension
 * would be: multi-phase init, a heap type per interpreter, no link against
 * bocpy.  `address` exposes the buffer's address so that a test can see no
 * copy was made, and live_buffers() counts buffers not yet freed (process
 * wide) so that a test can see a payload nobody attached was freed.
 */
#include <bocpy/move.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Buffers allocated and not yet freed, in every interpreter.  relaxed: a
 * counter read by tests after the work that changes it has finished. */
static atomic_long live_buffers;

typedef struct {
    PyObject_HEAD unsigned char *data; /* NULL when empty or stale */
    Py_ssize_t size;
    Py_ssize_t exports; /* memoryviews alive: the buffer must not move */
    int stale;          /* the buffer was moved away */
} BufferObject;

/* What crosses: plain C memory, freeable from any thread. */
typedef struct {
    unsigned char *data;
    Py_ssize_t size;
} payload;

static unsigned char *alloc_data(Py_ssize_t size) {
    unsigned char *data = malloc(size > 0 ? (size_t)size : 1);
    if (data != NULL) {
        atomic_fetch_add_explicit(&live_buffers, 1, memory_order_relaxed);
    }
    return data;
}

static void free_data(unsigned char *data) {
    if (data != NULL) {
        free(data);
        atomic_fetch_sub_explicit(&live_buffers, 1, memory_order_relaxed);
    }
}

static int check_live(BufferObject *self) {
    if (self->stale) {
        BocPyMove_SetStaleError((PyObject *)self);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------- move callbacks */

static void *buffer_detach(PyObject *obj) {
    BufferObject *self = (BufferObject *)obj;
    if (check_live(self) < 0) {
        return NULL;
    }
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError,
                        "this Buffer cannot move while a memoryview of it is alive; release "
                        "the memoryview first");
        return NULL;
    }
    payload *p = malloc(sizeof(*p));
    if (p == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    p->data = self->data;
    p->size = self->size;
    self->data = NULL;
    self->stale = 1;
    return p;
}

static void buffer_restore(PyObject *obj, void *vp) {
    BufferObject *self = (BufferObject *)obj;
    payload *p = vp;
    self->data = p->data;
    self->size = p->size;
    self->stale = 0;
    free(p);
}

static PyObject *buffer_attach(PyTypeObject *type, void *vp) {
    payload *p = vp;
    BufferObject *self = (BufferObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL; /* the payload stays with bocpy */
    }
    self->data = p->data;
    self->size = p->size;
    free(p);
    return (PyObject *)self;
}

static void buffer_free_payload(void *vp) {
    payload *p = vp;
    free_data(p->data);
    free(p);
}

static const BocPyMoveType buffer_move = {
    BOCPY_MOVE_ABI_VERSION, buffer_detach, buffer_restore, buffer_attach, buffer_free_payload,
};

/* --------------------------------------------------------------- the type */

static PyObject *Buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"size", "fill", NULL};
    Py_ssize_t size;
    int fill = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|i:Buffer", kwlist, &size, &fill)) {
        return NULL;
    }
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "Buffer size must be >= 0, not %zd", size);
        return NULL;
    }
    BufferObject *self = (BufferObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->data = alloc_data(size);
    if (self->data == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->size = size;
    memset(self->data, fill & 0xff, (size_t)size);
    return (PyObject *)self;
}

static void Buffer_dealloc(BufferObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    free_data(self->data);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *Buffer_get_address(BufferObject *self, void *closure) {
    (void)closure;
    if (check_live(self) < 0) {
        return NULL;
    }
    return PyLong_FromVoidPtr(self->data);
}

static PyObject *Buffer_get_size(BufferObject *self, void *closure) {
    (void)closure;
    if (check_live(self) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(self->size);
}

static PyObject *Buffer_get_stale(BufferObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->stale);
}

static int index_arg(BufferObject *self, PyObject *arg, Py_ssize_t *out) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (i < 0 || i >= self->size) {
        PyErr_Format(PyExc_IndexError, "Buffer index %zd out of range [0, %zd)", i, self->size);
        return -1;
    }
    *out = i;
    return 0;
}

static Py_ssize_t Buffer_length(BufferObject *self) {
    return check_live(self) < 0 ? -1 : self->size;
}

/* buf[i] and buf[i] = v, like a bytearray (negative indices are already
 * adjusted by the sequence protocol). */
static PyObject *Buffer_item(BufferObject *self, Py_ssize_t i) {
    if (check_live(self) < 0) {
        return NULL;
    }
    if (i < 0 || i >= self->size) {
        PyErr_Format(PyExc_IndexError, "Buffer index %zd out of range [0, %zd)", i, self->size);
        return NULL;
    }
    return PyLong_FromLong(self->data[i]);
}

static int Buffer_ass_item(BufferObject *self, Py_ssize_t i, PyObject *value) {
    if (check_live(self) < 0) {
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "Buffer items cannot be deleted");
        return -1;
    }
    if (i < 0 || i >= self->size) {
        PyErr_Format(PyExc_IndexError, "Buffer index %zd out of range [0, %zd)", i, self->size);
        return -1;
    }
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    self->data[i] = (unsigned char)(v & 0xff);
    return 0;
}

static PyObject *Buffer_get(BufferObject *self, PyObject *arg) {
    Py_ssize_t i;
    if (check_live(self) < 0 || index_arg(self, arg, &i) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->data[i]);
}

static PyObject *Buffer_set(BufferObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t i;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "Buffer.set(index, value) takes 2 arguments");
        return NULL;
    }
    if (check_live(self) < 0 || index_arg(self, args[0], &i) < 0) {
        return NULL;
    }
    long v = PyLong_AsLong(args[1]);
    if (v == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self->data[i] = (unsigned char)(v & 0xff);
    Py_RETURN_NONE;
}

static PyObject *Buffer_checksum(BufferObject *self, PyObject *unused) {
    (void)unused;
    if (check_live(self) < 0) {
        return NULL;
    }
    unsigned long long sum = 0;
    for (Py_ssize_t i = 0; i < self->size; i++) {
        sum += self->data[i];
    }
    return PyLong_FromUnsignedLongLong(sum);
}

/* Pickling copies (plain pickle.dumps, and bocpy's copying paths). */
static PyObject *Buffer_reduce(BufferObject *self, PyObject *unused) {
    (void)unused;
    if (check_live(self) < 0) {
        return NULL;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)self->data, self->size);
    if (bytes == NULL) {
        return NULL;
    }
    PyObject *rebuild = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "_from_bytes");
    PyObject *result = rebuild ? Py_BuildValue("O(O)", rebuild, bytes) : NULL;
    Py_XDECREF(rebuild);
    Py_DECREF(bytes);
    return result;
}

static PyObject *Buffer_from_bytes(PyObject *cls, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "Buffer._from_bytes() needs bytes, not '%.200s'",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    BufferObject *self = (BufferObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->size = PyBytes_GET_SIZE(arg);
    self->data = alloc_data(self->size);
    if (self->data == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memcpy(self->data, PyBytes_AS_STRING(arg), (size_t)self->size);
    return (PyObject *)self;
}

static int Buffer_getbuffer(BufferObject *self, Py_buffer *view, int flags) {
    if (check_live(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void Buffer_releasebuffer(BufferObject *self, Py_buffer *view) {
    (void)view;
    self->exports--;
}

static PyMethodDef Buffer_methods[] = {
    {"get", (PyCFunction)Buffer_get, METH_O, "The byte at an index."},
    {"set", (PyCFunction)(void (*)(void))Buffer_set, METH_FASTCALL, "Set the byte at an index."},
    {"checksum", (PyCFunction)Buffer_checksum, METH_NOARGS, "The sum of all bytes."},
    {"__reduce__", (PyCFunction)Buffer_reduce, METH_NOARGS, NULL},
    {"_from_bytes", Buffer_from_bytes, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Buffer_getset[] = {
    {"address", (getter)Buffer_get_address, NULL, "The buffer's address.", NULL},
    {"size", (getter)Buffer_get_size, NULL, "The buffer's size in bytes.", NULL},
    {"stale", (getter)Buffer_get_stale, NULL, "True once the buffer moved away.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Buffer_slots[] = {
    {Py_tp_new, Buffer_new},
    {Py_tp_dealloc, Buffer_dealloc},
    {Py_tp_methods, Buffer_methods},
    {Py_tp_getset, Buffer_getset},
    {Py_sq_length, Buffer_length},
    {Py_sq_item, Buffer_item},
    {Py_sq_ass_item, Buffer_ass_item},
    {Py_bf_getbuffer, Buffer_getbuffer},
    {Py_bf_releasebuffer, Buffer_releasebuffer},
    {0, NULL},
};

static PyType_Spec Buffer_spec = {
    .name = "movebuf.Buffer",
    .basicsize = sizeof(BufferObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Buffer_slots,
};

/* ------------------------------------------------------------- the module */

static PyObject *movebuf_live_buffers(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyLong_FromLong(atomic_load_explicit(&live_buffers, memory_order_relaxed));
}

static void *never_detach(PyObject *obj) {
    (void)obj;
    return NULL;
}

/* Registration error paths, for the test: registers the Buffer type with
 * a spec broken in the named way. */
static PyObject *movebuf_register_broken(PyObject *module, PyObject *arg) {
    const char *how = PyUnicode_AsUTF8(arg);
    if (how == NULL) {
        return NULL;
    }
    PyObject *type = PyObject_GetAttrString(module, "Buffer");
    if (type == NULL) {
        return NULL;
    }
    BocPyMoveType spec = buffer_move;
    int rc;
    if (strcmp(how, "abi") == 0) {
        spec.abi_version = BOCPY_MOVE_ABI_VERSION + 1;
        rc = BocPyMove_Register((PyTypeObject *)type, &spec);
    } else if (strcmp(how, "missing") == 0) {
        spec.restore = NULL;
        rc = BocPyMove_Register((PyTypeObject *)type, &spec);
    } else if (strcmp(how, "not-a-type") == 0) {
        rc = BocPyMove_Register((PyTypeObject *)module, &spec);
    } else if (strcmp(how, "other-callbacks") == 0) {
        spec.detach = never_detach;
        rc = BocPyMove_Register((PyTypeObject *)type, &spec);
    } else if (strcmp(how, "again") == 0) {
        rc = BocPyMove_Register((PyTypeObject *)type, &spec);
    } else {
        PyErr_Format(PyExc_ValueError, "unknown breakage %R", arg);
        rc = -1;
    }
    Py_DECREF(type);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef movebuf_methods[] = {
    {"live_buffers", movebuf_live_buffers, METH_NOARGS,
     "Buffers not yet freed (all interpreters)."},
    {"register_broken", movebuf_register_broken, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static int movebuf_exec(PyObject *module) {
    PyObject *type = PyType_FromModuleAndSpec(module, &Buffer_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, (PyTypeObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    /* In every interpreter that imports us: bocpy finds the type by name. */
    int rc = BocPyMove_Register((PyTypeObject *)type, &buffer_move);
    Py_DECREF(type);
    return rc;
}

static PyModuleDef_Slot movebuf_slots[] = {
    {Py_mod_exec, movebuf_exec},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED}, /* free-threaded builds: no GIL needed */
#endif
    {0, NULL},
};

static struct PyModuleDef movebuf_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "movebuf",
    .m_doc = "A buffer type that crosses bocpy interpreters by move (test extension).",
    .m_size = 0,
    .m_methods = movebuf_methods,
    .m_slots = movebuf_slots,
};

PyMODINIT_FUNC PyInit_movebuf(void) { return PyModuleDef_Init(&movebuf_def); }
