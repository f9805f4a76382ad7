/*
 * args.c: argument checks shared by the module's functions, so that every
 * bad value gets the same kind of message: it names the parameter and the
 * value, and says what is accepted.  Numbers too large for C become
 * ValueError (out of range), never a bare OverflowError.
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
