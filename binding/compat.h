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

/* PyErr_GetRaisedException exists from 3.12 on: nothing to do.  Keep the
 * version gate above as the single statement of our floor. */

#endif /* BOCPY_COMPAT_H */
