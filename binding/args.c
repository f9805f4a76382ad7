/*
 * args.c: argument checks shared by the module's functions, so that every
 * bad value gets the same kind of message: it names the parameter and the
 * value, and says what is accepted.  Numbers too large for C become
 * ValueError (out of range), never a bare OverflowError -- except the
 * millisecond bounds of the pinned-cown functions, which raise
 * OverflowError past BOCPY_MAX_MS, as the established API does.
 */
#include "bocpy.h"

int bocpy_str_arg(PyObject *obj, const char *what, const char **key, size_t *len) {
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not '%.200s' (%R)", what,
                     Py_TYPE(obj)->tp_name, obj);
        return -1;
    }
    Py_ssize_t n;
    *key = PyUnicode_AsUTF8AndSize(obj, &n);
    if (*key == NULL) {
        return -1;
    }
    *len = (size_t)n;
    return 0;
}

int bocpy_float_arg(PyObject *obj, const char *what, double *out) {
    if (PyBool_Check(obj) || !(PyLong_Check(obj) || PyFloat_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "%s must be a number, not '%.200s' (%R)", what,
                     Py_TYPE(obj)->tp_name, obj);
        return -1;
    }
    double value = PyFloat_AsDouble(obj);
    if (value == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s is out of range: %R", what, obj);
        return -1;
    }
    if (value != value) {
        PyErr_Format(PyExc_ValueError, "%s must be a number, not NaN (got %R)", what, obj);
        return -1;
    }
    *out = value;
    return 0;
}

int bocpy_int_arg(PyObject *obj, const char *what, long long lo, long long hi, long long *out) {
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not '%.200s' (%R)", what,
                     Py_TYPE(obj)->tp_name, obj);
        return -1;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || value < lo || value > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be between %lld and %lld, got %R", what, lo, hi,
                     obj);
        return -1;
    }
    *out = value;
    return 0;
}

uint64_t bocpy_seconds_to_ns(double seconds) {
    /* Beyond ~584 years a limit is as good as none, and would overflow. */
    return seconds >= 1.8e10 ? UINT64_MAX : (uint64_t)(seconds * 1e9);
}

int bocpy_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, Py_ssize_t nparams, Py_ssize_t nrequired,
                     PyObject **out) {
    assert(nrequired <= nparams);
    if (nargs > nparams) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd argument%s (%zd given)", fname,
                     nparams, nparams == 1 ? "" : "s", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nparams; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        /* Keyword names are always str (the interpreter checks). */
        while (i < nparams && PyUnicode_CompareWithASCIIString(kw, names[i]) != 0) {
            i++;
        }
        if (i == nparams) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         kw);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s' (pos %zd)", fname,
                         names[i], i + 1);
            return -1;
        }
    }
    return 0;
}

int bocpy_positive_int_arg(PyObject *obj, const char *what, bool none_ok, bool milliseconds,
                           long long *out) {
    const char *accepted = none_ok ? "None or a positive int" : "a positive int";
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, not '%.200s' (%R)", what, accepted,
                     Py_TYPE(obj)->tp_name, obj);
        return -1;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && value <= 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %R", what, accepted, obj);
        return -1;
    }
    if (milliseconds && (overflow > 0 || value > BOCPY_MAX_MS)) {
        PyErr_Format(PyExc_OverflowError,
                     "%s=%R is past the largest supported number of milliseconds (%lld)%s", what,
                     obj, (long long)BOCPY_MAX_MS, none_ok ? "; pass None for no limit" : "");
        return -1;
    }
    /* A count too large for C is no bound at all. */
    *out = overflow > 0 ? LLONG_MAX : value;
    return 0;
}
