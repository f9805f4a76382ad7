/*
 * transfer.c: values on their way between interpreters.
 *
 * A value crosses by copy: it is pickled in the interpreter that owns it
 * into a "blob" (plain C memory, freeable from any thread) and unpickled in
 * the interpreter that needs it.  Cowns inside a value do not travel as
 * copies: their handles are collected into the blob, which keeps each cown
 * alive until the blob is freed, and the pickle refers to them by index.
 *
 * The fast path is the C pickler.  Only when it refuses a value (a lambda,
 * a function defined inside another function) do we retry with the
 * extended pickler in bocpy/_pickling.py, which sends such functions through
 * the code registry.  A value that neither can send raises TypeError naming
 * its type, at the point where the user stored or captured it.
 */
#include "bocpy.h"

#include <string.h>

/* The cowns collected by the pickle under way on this thread. */
typedef struct serialise_context {
    bocpy_cown **cowns;
    size_t count, capacity;
} serialise_context;

static _Thread_local serialise_context *tls_serialising;
static _Thread_local const bocpy_blob *tls_deserialising;

Py_ssize_t bocpy_transfer_add_cown(bocpy_cown *cown) {
    serialise_context *ctx = tls_serialising;
    if (ctx == NULL) {
        return -1;
    }
    if (ctx->count == ctx->capacity) {
        size_t capacity = ctx->capacity ? ctx->capacity * 2 : 4;
        bocpy_cown **grown = realloc(ctx->cowns, capacity * sizeof(*grown));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -2;
        }
        ctx->cowns = grown;
        ctx->capacity = capacity;
    }
    boc_cown_incref(&cown->base);
    ctx->cowns[ctx->count] = cown;
    return (Py_ssize_t)ctx->count++;
}

bocpy_cown *bocpy_transfer_get_cown(Py_ssize_t index) {
    const bocpy_blob *blob = tls_deserialising;
    if (blob == NULL || index < 0 || (size_t)index >= blob->ncowns) {
        return NULL;
    }
    return blob->cowns[index];
}

static void context_reset(serialise_context *ctx) {
    for (size_t i = 0; i < ctx->count; i++) {
        boc_cown_decref(&ctx->cowns[i]->base);
    }
    ctx->count = 0;
}

static PyObject *fallback_dumps(bocpy_state *st) {
    if (st->fallback_dumps == NULL) {
        PyObject *mod = PyImport_ImportModule("bocpy._pickling");
        if (mod == NULL) {
            return NULL;
        }
        st->fallback_dumps = PyObject_GetAttrString(mod, "dumps");
        Py_DECREF(mod);
    }
    return st->fallback_dumps;
}

/* Replaces the pending exception by the TypeError users see, chained to it. */
static void raise_untransferable(PyObject *obj) {
    PyObject *cause = PyErr_GetRaisedException();
    PyObject *detail = cause ? PyObject_Str(cause) : NULL;
    if (detail == NULL) {
        PyErr_Clear();
    }
    PyErr_Format(PyExc_TypeError,
                 "cannot send a value of type '%.200s' to another interpreter "
                 "(%.200s%s%U); values that cross interpreters must be picklable: keep "
                 "such objects inside a single behavior, or make them picklable",
                 Py_TYPE(obj)->tp_name, cause ? Py_TYPE(cause)->tp_name : "error",
                 detail ? ": " : "", detail ? detail : Py_None);
    Py_XDECREF(detail);
    if (cause != NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        PyException_SetCause(exc, cause); /* steals cause */
        PyErr_SetRaisedException(exc);
    }
}

bocpy_blob *bocpy_serialize(bocpy_state *st, PyObject *obj) {
    serialise_context ctx = {0};
    serialise_context *outer = tls_serialising;
    tls_serialising = &ctx;

    PyObject *args[2] = {obj, st->protocol};
    PyObject *bytes = PyObject_Vectorcall(st->dumps, args, 2, NULL);
    if (bytes == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        /* The C pickler gave up; the extended one may know how.  (Anything
         * else -- KeyboardInterrupt, MemoryError's cousins -- propagates.) */
        PyObject *first = PyErr_GetRaisedException();
        context_reset(&ctx);
        PyObject *fallback = fallback_dumps(st);
        if (fallback != NULL) {
            bytes = PyObject_CallOneArg(fallback, obj);
        }
        if (bytes == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
            /* Report the C pickler's reason: it is the one users know. */
            PyErr_Clear();
            PyErr_SetRaisedException(first);
            raise_untransferable(obj);
        } else {
            Py_DECREF(first);
        }
    }
    tls_serialising = outer;
    if (bytes == NULL) {
        context_reset(&ctx);
        free(ctx.cowns);
        return NULL;
    }

    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(bytes, &data, &size) < 0) {
        Py_DECREF(bytes);
        context_reset(&ctx);
        free(ctx.cowns);
        return NULL;
    }
    bocpy_blob *blob = malloc(sizeof(*blob) + (size_t)size);
    if (blob == NULL) {
        Py_DECREF(bytes);
        context_reset(&ctx);
        free(ctx.cowns);
        PyErr_NoMemory();
        return NULL;
    }
    blob->size = (size_t)size;
    blob->ncowns = ctx.count;
    blob->cowns = ctx.cowns;
    memcpy(blob->data, data, (size_t)size);
    Py_DECREF(bytes);
    return blob;
}

PyObject *bocpy_deserialize(bocpy_state *st, const bocpy_blob *blob) {
    const bocpy_blob *outer = tls_deserialising;
    tls_deserialising = blob;
    /* Zero-copy view: the unpickler copies whatever it keeps. */
    PyObject *view =
        PyMemoryView_FromMemory((char *)blob->data, (Py_ssize_t)blob->size, PyBUF_READ);
    PyObject *value = NULL;
    if (view != NULL) {
        value = PyObject_CallOneArg(st->loads, view);
        Py_DECREF(view);
    }
    tls_deserialising = outer;
    return value;
}

void bocpy_blob_free(bocpy_blob *blob) {
    if (blob == NULL) {
        return;
    }
    for (size_t i = 0; i < blob->ncowns; i++) {
        boc_cown_decref(&blob->cowns[i]->base);
    }
    free(blob->cowns);
    free(blob);
}

static bool is_plain_immutable(bocpy_state *st, PyObject *obj, int depth) {
    if (obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj) || PyFloat_CheckExact(obj) ||
        PyUnicode_CheckExact(obj) || PyBytes_CheckExact(obj) || PyComplex_CheckExact(obj)) {
        return true;
    }
    if (bocpy_cown_check(st, obj)) {
        return true;
    }
    if (PyTuple_CheckExact(obj) && depth < 2 && PyTuple_GET_SIZE(obj) <= 16) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++) {
            if (!is_plain_immutable(st, PyTuple_GET_ITEM(obj, i), depth + 1)) {
                return false;
            }
        }
        return true;
    }
    return false;
}

bool bocpy_is_plain_immutable(bocpy_state *st, PyObject *obj) {
    return is_plain_immutable(st, obj, 0);
}
