/*
 * <bocpy/move.h>: let objects of a C extension type cross bocpy's
 * interpreters by MOVE instead of by copy.
 *
 * bocpy runs behaviors on worker sub-interpreters.  A cown's value normally
 * crosses from one interpreter to another as a pickled copy.  A type that
 * owns a large plain buffer (a matrix, an image, a byte arena) can do much
 * better: hand the buffer itself over.  This header is the whole contract.
 *
 * The type supplies four callbacks in a BocPyMoveType:
 *
 *   detach(obj)             source interpreter, its GIL held.  Take the
 *                           object's buffer out of it and return it as an
 *                           opaque payload of plain C memory (never a
 *                           PyObject).  `obj` is left STALE: every later use
 *                           of it must raise RuntimeError (see
 *                           BocPyMove_SetStaleError) and must never touch
 *                           the buffer.  On failure (the object is already
 *                           stale, or its buffer is exported through the
 *                           buffer protocol...) return NULL with an exception
 *                           set and leave `obj` as it was.
 *   restore(obj, payload)   source interpreter, its GIL held.  Undo a detach
 *                           whose transfer was abandoned: give the payload
 *                           back to the object it came from, which becomes
 *                           usable again.  Must not fail.
 *   attach(type, payload)   target interpreter, its GIL held.  Return a new
 *                           object of `type` (the type as registered in THIS
 *                           interpreter) that owns the payload.  On failure
 *                           return NULL with an exception set; the payload
 *                           then still belongs to bocpy, which keeps it for a
 *                           later attempt or frees it.
 *   free_payload(payload)   ANY thread, with or without a GIL, possibly while
 *                           interpreters are shutting down.  Free a payload
 *                           that will never be attached.  Must not call the
 *                           Python C API.
 *
 * and registers them in every interpreter that imports the extension,
 * typically in its module's Py_mod_exec slot:
 *
 *     static const BocPyMoveType spec = {
 *         BOCPY_MOVE_ABI_VERSION, buf_detach, buf_restore, buf_attach, buf_free,
 *     };
 *     if (BocPyMove_Register(state->buf_type, &spec) < 0) {
 *         return -1;
 *     }
 *
 * A type is known to bocpy by its stable name, "<__module__>.<__qualname__>".
 * When a payload arrives in an interpreter where that name is not yet
 * registered, bocpy imports the type's module there first (which runs its
 * exec slot, and so its registration).
 *
 * What moves: the value of a Cown, whether it is an object of the type
 * itself or a container (list, dict, tuple, object attributes...) holding
 * such objects, moves when the cown is created or released -- the objects
 * left behind in the releasing interpreter are stale.  Only objects of the
 * exact registered type move; subclasses are pickled.  Every other path
 * (behavior captures, messages, the noticeboard, behavior results, plain
 * pickle.dumps) copies through the type's own pickling support
 * (__reduce__), so the type should still be picklable.
 *
 * A payload is in exactly one place at a time: inside one object, or owned
 * by bocpy between a detach and the attach (or free_payload) that ends its
 * trip.  So a moved buffer is never reachable from two interpreters.
 *
 * Linking: none.  The helpers below reach bocpy at run time through the
 * capsule "bocpy._core._C_API" (PyCapsule_Import), so the extension does
 * not link against bocpy.  Build with include_dirs=[bocpy.get_include()]
 * and sources += bocpy.get_sources().
 *
 * Versioning: BOCPY_MOVE_ABI_VERSION is bumped on any incompatible change to
 * the structures below.  BocPyMove_Import() checks, at import time, that the
 * running bocpy speaks the version this header was compiled with, and fails
 * with ImportError naming both versions if not.  Later compatible versions
 * only append fields to BocPyMoveAPI (its `size` says how many there are).
 *
 * Written in C against the public CPython API only; it includes Python.h
 * itself.
 */
#ifndef BOCPY_MOVE_H
#define BOCPY_MOVE_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BOCPY_MOVE_ABI_VERSION 1
#define BOCPY_MOVE_CAPSULE "bocpy._core._C_API"

/* What a movable type provides.  bocpy copies it at registration, so it
 * may live on the stack, though a static const is the usual form. */
typedef struct BocPyMoveType {
    int abi_version; /* BOCPY_MOVE_ABI_VERSION */
    void *(*detach)(PyObject *obj);
    void (*restore)(PyObject *obj, void *payload);
    PyObject *(*attach)(PyTypeObject *type, void *payload);
    void (*free_payload)(void *payload);
} BocPyMoveType;

/* The table bocpy publishes in its capsule. */
typedef struct BocPyMoveAPI {
    int abi_version; /* BOCPY_MOVE_ABI_VERSION of the running bocpy */
    size_t size;     /* sizeof(BocPyMoveAPI) as bocpy was built */
    /* Registers `type` in the calling interpreter (GIL held).  0, or -1
     * with an exception (TypeError/ValueError naming what is wrong). */
    int (*register_type)(PyTypeObject *type, const BocPyMoveType *spec);
} BocPyMoveAPI;

/* The running bocpy's table (imports bocpy._core in the calling
 * interpreter), or NULL with ImportError set: bocpy is not installed, or
 * speaks another ABI version.  An extension for which bocpy is optional
 * may clear that error and carry on without moves. */
static inline const BocPyMoveAPI *BocPyMove_Import(void) {
    const BocPyMoveAPI *api = (const BocPyMoveAPI *)PyCapsule_Import(BOCPY_MOVE_CAPSULE, 0);
    if (api == NULL) {
        return NULL;
    }
    if (api->abi_version != BOCPY_MOVE_ABI_VERSION || api->size < sizeof(BocPyMoveAPI)) {
        PyErr_Format(PyExc_ImportError,
                     "this extension was built against bocpy move ABI %d, but the installed "
                     "bocpy provides ABI %d; rebuild the extension against the installed bocpy "
                     "(include_dirs=[bocpy.get_include()])",
                     BOCPY_MOVE_ABI_VERSION, api->abi_version);
        return NULL;
    }
    return api;
}

/* Registers `type` as movable in the calling interpreter: 0, or -1 with an
 * exception set. */
static inline int BocPyMove_Register(PyTypeObject *type, const BocPyMoveType *spec) {
    const BocPyMoveAPI *api = BocPyMove_Import();
    if (api == NULL) {
        return -1;
    }
    return api->register_type(type, spec);
}

/* Sets the RuntimeError every use of a stale object should raise, and
 * returns NULL so that a method can `return BocPyMove_SetStaleError(self);`. */
static inline PyObject *BocPyMove_SetStaleError(PyObject *obj) {
    PyErr_Format(PyExc_RuntimeError,
                 "this %.200s was moved to another behavior/interpreter: putting it in a "
                 "Cown, or releasing a cown that holds it, hands its buffer over; reach it "
                 "through the cown that holds it now (or keep a copy())",
                 Py_TYPE(obj)->tp_name);
    return NULL;
}

#ifdef __cplusplus
}
#endif

#endif /* BOCPY_MOVE_H */
