/*
 * compat.h: the one place where the binding papers over differences between
 * the CPython versions it supports (3.12, 3.13, 3.14).  Only public or
 * "unstable" API is used; each shim names the version that needs it.
 */
#ifndef BOCPY_COMPAT_H
#define BOCPY_COMPAT_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030C0000
#error "bocpy needs Python 3.12 or newer (per-interpreter GIL, PEP 684)"
#endif

/* 3.12 spells the unchecked current-thread-state getter with an underscore. */
#if PY_VERSION_HEX < 0x030D0000
#define bocpy_tstate_unchecked() _PyThreadState_UncheckedGet()
#else
#define bocpy_tstate_unchecked() PyThreadState_GetUnchecked()
#endif

/* 3.12 spells "is the runtime finalizing" with an underscore too. */
#if PY_VERSION_HEX < 0x030D0000
#define bocpy_is_finalizing() _Py_IsFinalizing()
#else
#define bocpy_is_finalizing() Py_IsFinalizing()
#endif

/*
 * Locks for state that a GIL build's interpreter lock used to serialise
 * (Py_GIL_DISABLED, 3.13t and later): several threads of one interpreter
 * now run binding code at once.  On free-threaded builds this is PyMutex:
 * zero-initialised means unlocked (module state is zeroed), it is one byte,
 * an uncontended lock/unlock is one compare-and-swap each, and a blocked
 * PyMutex_Lock detaches the thread state while it waits, so a holder that
 * triggers a stop-the-world collection never waits on a thread blocked here.
 * Holders must not call back into Python code (which might take the same
 * lock) while holding one.  On GIL builds the GIL already serialises these
 * sections (none of them releases it), so the lock compiles to nothing.
 */
#ifdef Py_GIL_DISABLED
typedef PyMutex bocpy_ft_mutex;
#define bocpy_ft_lock(m) PyMutex_Lock(m)
#define bocpy_ft_unlock(m) PyMutex_Unlock(m)
#else
typedef struct bocpy_ft_mutex {
    char unused;
} bocpy_ft_mutex;
#define bocpy_ft_lock(m) ((void)(m))
#define bocpy_ft_unlock(m) ((void)(m))
#endif

/* A strong reference to d[key] in *out (NULL when absent): 1 found, 0
 * absent, -1 error.  3.13 has PyDict_GetItemRef, which free-threaded builds
 * need (a borrowed result may be freed by a concurrent store to the key). */
#if PY_VERSION_HEX < 0x030D0000
static inline int bocpy_dict_get_ref(PyObject *d, PyObject *key, PyObject **out) {
    *out = Py_XNewRef(PyDict_GetItemWithError(d, key));
    return *out != NULL ? 1 : (PyErr_Occurred() ? -1 : 0);
}
#else
#define bocpy_dict_get_ref(d, key, out) PyDict_GetItemRef((d), (key), (out))
#endif

/* PyErr_GetRaisedException exists from 3.12 on: nothing to do.  Keep the
 * version gate above as the single statement of our floor. */

#endif /* BOCPY_COMPAT_H */
