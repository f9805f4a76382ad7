/*
 * when.c: @when and whencall -- turning a Python function and its cowns
 * into a libboc behavior.
 *
 * Scheduling does, in order: validate the function and the cowns (so that a
 * mistake raises here, at the decorator, and not later in a worker); find
 * the function's registry id; snapshot its captures (trailing parameters
 * with defaults, closure variables, and whencall's extra arguments) into
 * one blob; build the behavior with the argument cowns plus a fresh result
 * cown; hand it to libboc.  The decorated name becomes the result cown.
 */
#include "bocpy.h"

#include <string.h>

/* See bocpy_payload: with one cown, a queued behavior stays a 160-byte
 * malloc chunk only while the payload's fixed part is 32 bytes. */
_Static_assert(sizeof(bocpy_payload) <= 32, "bocpy_payload outgrew 32 bytes");

const int32_t bocpy_ungrouped[BOCPY_UNGROUPED_MAX] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                      -1, -1, -1, -1, -1, -1, -1, -1};

typedef struct {
    PyObject_HEAD PyObject *args; /* tuple: each a Cown or a list of Cowns */
    vectorcallfunc vectorcall;    /* When_vectorcall: calling it makes no tuple */
} WhenObject;

/* Checks one @when argument; returns its cown count or -1. */
static Py_ssize_t check_argument(bocpy_state *st, PyObject *arg, Py_ssize_t position) {
    if (bocpy_cown_check(st, arg)) {
        return 1;
    }
    if (PyList_Check(arg)) {
        Py_ssize_t n = PyList_GET_SIZE(arg);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(arg, i);
            if (!bocpy_cown_check(st, item)) {
                PyErr_Format(PyExc_TypeError,
                             "@when argument %zd is a list whose item %zd is a '%.200s', not a "
                             "Cown; a list passed to @when is a group of cowns: wrap values "
                             "in Cown(...)",
                             position, i, Py_TYPE(item)->tp_name);
                return -1;
            }
        }
        return n;
    }
    PyErr_Format(PyExc_TypeError,
                 "@when argument %zd must be a Cown or a list of Cowns, not '%.200s' (%R); wrap "
                 "the value in Cown(...), or pass it as a default parameter to capture it",
                 position, Py_TYPE(arg)->tp_name, arg);
    return -1;
}

static PyObject *function_name(PyObject *func) {
    PyObject *name = PyObject_GetAttrString(func, "__qualname__");
    if (name == NULL) {
        PyErr_Clear();
        name = PyUnicode_FromString("<behavior>");
    }
    return name;
}

/* What check_function found wrong with a behavior function. */
typedef enum {
    FUNCTION_OK,
    FUNCTION_ASYNC,
    FUNCTION_GENERATOR,
    FUNCTION_TOO_FEW,
    FUNCTION_TOO_MANY,
    FUNCTION_KWONLY,
} function_problem;

/* Raises TypeError for `problem` (not FUNCTION_OK), naming the behavior. */
static void raise_function_problem(PyObject *func, function_problem problem, Py_ssize_t ngiven) {
    PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(func);
    PyObject *defaults = PyFunction_GET_DEFAULTS(func);
    Py_ssize_t nparams = code->co_argcount;
    Py_ssize_t nrequired = nparams - (defaults ? PyTuple_GET_SIZE(defaults) : 0);
    PyObject *name = function_name(func);
    if (name == NULL) {
        return;
    }
    switch (problem) {
    case FUNCTION_ASYNC:
        PyErr_Format(PyExc_TypeError,
                     "behavior '%U' is an 'async def' function; behaviors run to completion "
                     "on a worker and cannot be awaited: define it with plain 'def'",
                     name);
        break;
    case FUNCTION_GENERATOR:
        PyErr_Format(PyExc_TypeError,
                     "behavior '%U' is a generator function (it uses 'yield'); a behavior "
                     "runs once and returns its result: return a list instead",
                     name);
        break;
    case FUNCTION_TOO_FEW:
        PyErr_Format(PyExc_TypeError,
                     "behavior '%U' has %zd parameters without defaults but @when gives it "
                     "%zd argument%s; give one cown (or list of cowns) per parameter, and "
                     "give extra parameters default values (they are captured)",
                     name, nrequired, ngiven, ngiven == 1 ? "" : "s");
        break;
    case FUNCTION_TOO_MANY:
        PyErr_Format(PyExc_TypeError,
                     "behavior '%U' takes %zd parameter%s but @when gives it %zd "
                     "arguments; add a parameter per cown (or use *args)",
                     name, nparams, nparams == 1 ? "" : "s", ngiven);
        break;
    case FUNCTION_KWONLY:
        PyErr_Format(PyExc_TypeError,
                     "behavior '%U' has keyword-only parameters without defaults; behaviors "
                     "receive only their cowns, so give those parameters default values",
                     name);
        break;
    case FUNCTION_OK:
        break;
    }
    Py_DECREF(name);
}

/* 0 when `func` can be a behavior given `ngiven` arguments, else -1 with a
 * TypeError.  The name is looked up only for the message (a getattr by
 * name costs ~600 instructions, at every @when). */
static int check_function(PyObject *func, Py_ssize_t ngiven) {
    if (!PyFunction_Check(func)) {
        PyErr_Format(PyExc_TypeError, "@when decorates a function defined with 'def', not '%.200s'",
                     Py_TYPE(func)->tp_name);
        return -1;
    }
    PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(func);
    PyObject *defaults = PyFunction_GET_DEFAULTS(func);
    Py_ssize_t nparams = code->co_argcount;
    Py_ssize_t nrequired = nparams - (defaults ? PyTuple_GET_SIZE(defaults) : 0);
    PyObject *kwdefaults = PyFunction_GET_KW_DEFAULTS(func);
    Py_ssize_t nkwdefaults = kwdefaults ? PyDict_GET_SIZE(kwdefaults) : 0;
    function_problem problem = FUNCTION_OK;
    if (code->co_flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR)) {
        problem = FUNCTION_ASYNC;
    } else if (code->co_flags & CO_GENERATOR) {
        problem = FUNCTION_GENERATOR;
    } else if (ngiven < nrequired) {
        problem = FUNCTION_TOO_FEW;
    } else if (ngiven > nparams && !(code->co_flags & CO_VARARGS)) {
        problem = FUNCTION_TOO_MANY;
    } else if (code->co_kwonlyargcount > nkwdefaults) {
        problem = FUNCTION_KWONLY;
    }
    if (problem == FUNCTION_OK) {
        return 0;
    }
    raise_function_problem(func, problem, ngiven);
    return -1;
}

/* Sets *out to (extra_args, defaults, kwdefaults, closure), or to NULL when
 * there is nothing to capture; closure cells become (True, value) or
 * (False,) when empty.  0, or -1 with an exception (*out NULL). */
static int captures_of(PyObject *func, PyObject *extra, PyObject **out) {
    *out = NULL;
    PyObject *defaults = PyFunction_GET_DEFAULTS(func);
    PyObject *kwdefaults = PyFunction_GET_KW_DEFAULTS(func);
    PyObject *closure = PyFunction_GET_CLOSURE(func);
    if (extra == NULL && defaults == NULL && kwdefaults == NULL && closure == NULL) {
        return 0;
    }
    PyObject *cells = Py_None;
    if (closure != NULL) {
        Py_ssize_t n = PyTuple_GET_SIZE(closure);
        cells = PyTuple_New(n);
        if (cells == NULL) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *content = PyCell_GET(PyTuple_GET_ITEM(closure, i));
            PyObject *entry =
                content ? PyTuple_Pack(2, Py_True, content) : PyTuple_Pack(1, Py_False);
            if (entry == NULL) {
                Py_DECREF(cells);
                return -1;
            }
            PyTuple_SET_ITEM(cells, i, entry);
        }
    } else {
        Py_INCREF(cells);
    }
    *out = PyTuple_Pack(4, extra ? extra : Py_None, defaults ? defaults : Py_None,
                        kwdefaults ? kwdefaults : Py_None, cells);
    Py_DECREF(cells);
    return *out == NULL ? -1 : 0;
}

/* The contents of `func`'s closure cells, as a tuple; NULL without an
 * exception when it has no closure or a cell is empty (then the general
 * snapshot of captures_of says which are), NULL with one when out of
 * memory.  Each cell is read once, with PyCell_Get (a new reference, taken
 * safely on free-threaded builds while another thread rebinds it). */
static PyObject *closure_contents(PyObject *func) {
    PyObject *closure = PyFunction_GET_CLOSURE(func);
    if (closure == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(closure);
    PyObject *contents = PyTuple_New(n);
    if (contents == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *content = PyCell_Get(PyTuple_GET_ITEM(closure, i));
        if (content == NULL) { /* empty (no exception: it is a cell) */
            Py_DECREF(contents);
            return NULL;
        }
        PyTuple_SET_ITEM(contents, i, content);
    }
    return contents;
}

/* After the snapshot failed to serialise: find the culprit and say so. */
static void explain_capture_failure(bocpy_state *st, PyObject *func, PyObject *extra) {
    PyObject *cause = PyErr_GetRaisedException();
    PyObject *name = function_name(func);
    PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(func);
    PyObject *culprit_name = NULL, *culprit = NULL;

    PyObject *defaults = PyFunction_GET_DEFAULTS(func);
    PyObject *closure = PyFunction_GET_CLOSURE(func);
    PyObject *varnames = PyObject_GetAttrString((PyObject *)code, "co_varnames");
    PyObject *freevars = PyObject_GetAttrString((PyObject *)code, "co_freevars");
    PyErr_Clear();
    /* Candidates: extra arguments, defaults (named after their parameter),
     * closure cells (named after their free variable). */
    if (extra != NULL) {
        for (Py_ssize_t i = 0; culprit == NULL && i < PyTuple_GET_SIZE(extra); i++) {
            bocpy_blob *blob = bocpy_serialise(st, PyTuple_GET_ITEM(extra, i));
            if (blob == NULL) {
                PyErr_Clear();
                culprit = PyTuple_GET_ITEM(extra, i);
                culprit_name = PyUnicode_FromFormat("extra argument %zd", i);
            }
            bocpy_blob_free(blob);
        }
    }
    if (defaults != NULL && varnames != NULL) {
        Py_ssize_t first = code->co_argcount - PyTuple_GET_SIZE(defaults);
        for (Py_ssize_t i = 0; culprit == NULL && i < PyTuple_GET_SIZE(defaults); i++) {
            bocpy_blob *blob = bocpy_serialise(st, PyTuple_GET_ITEM(defaults, i));
            if (blob == NULL) {
                PyErr_Clear();
                culprit = PyTuple_GET_ITEM(defaults, i);
                culprit_name = Py_XNewRef(PyTuple_GetItem(varnames, first + i));
            }
            bocpy_blob_free(blob);
        }
    }
    if (closure != NULL && freevars != NULL) {
        for (Py_ssize_t i = 0; culprit == NULL && i < PyTuple_GET_SIZE(closure); i++) {
            PyObject *content = PyCell_GET(PyTuple_GET_ITEM(closure, i));
            if (content == NULL) {
                continue;
            }
            bocpy_blob *blob = bocpy_serialise(st, content);
            if (blob == NULL) {
                PyErr_Clear();
                culprit = content;
                culprit_name = Py_XNewRef(PyTuple_GetItem(freevars, i));
            }
            bocpy_blob_free(blob);
        }
    }
    PyErr_Clear();
    if (culprit != NULL && culprit_name != NULL) {
        PyErr_Format(PyExc_TypeError,
                     "behavior '%U' captures '%U', a '%.200s' that cannot be sent to a worker "
                     "(%S); captured values (parameters with defaults, variables of enclosing "
                     "functions) are copied when the behavior is scheduled: keep such objects "
                     "in a module, create them inside the behavior, or make them picklable",
                     name, culprit_name, Py_TYPE(culprit)->tp_name, cause);
    } else {
        PyErr_Format(PyExc_TypeError,
                     "the captures of behavior '%U' cannot be sent to a worker: %S", name, cause);
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyException_SetCause(exc, cause);
    PyErr_SetRaisedException(exc);
    Py_XDECREF(culprit_name);
    Py_XDECREF(varnames);
    Py_XDECREF(freevars);
    Py_XDECREF(name);
}

PyObject *bocpy_whencall(bocpy_state *st, PyObject *func, PyObject *args, PyObject *extra) {
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t nextra = extra ? PyTuple_GET_SIZE(extra) : 0;
    if (nargs > UINT16_MAX) {
        PyErr_Format(PyExc_TypeError,
                     "@when takes at most %d arguments, got %zd; pass many cowns as one "
                     "list (a group)",
                     UINT16_MAX, nargs);
        return NULL;
    }
    if (check_function(func, nargs + nextra) < 0) {
        return NULL;
    }
    Py_ssize_t ncowns = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_ssize_t n = check_argument(st, PyTuple_GET_ITEM(args, i), i);
        if (n < 0) {
            return NULL;
        }
        ncowns += n;
    }
    int64_t code_id = bocpy_registry_id_for(st, func);
    if (code_id < 0) {
        return NULL;
    }
    /* Pinned from here until boc_schedule has counted the behavior: the
     * runtime cannot be stopped, let alone freed, while the captures are
     * pickled (Python code, which may let other threads run).  This may
     * start a runtime, or wait for one that is starting or stopping. */
    bool pinned;
    boc_runtime *rt = bocpy_runtime_pin(st, BOCPY_PIN_SCHEDULE, &pinned);
    if (rt == NULL) {
        return NULL;
    }
    /* Late binds carry new __main__ globals to worker interpreters; the
     * threads backend's workers read __main__ itself (the backend cannot
     * change while the runtime is pinned). */
    if (st->interp->is_main && !bocpy_backend_shares_values() && bocpy_late_binds_refresh(st) < 0) {
        bocpy_runtime_unpin(pinned);
        return NULL;
    }

    bocpy_blob *captures = NULL;
    PyObject *snapshot;
    /* The commonest captures, `def step(c, n=n)`, travel as the defaults
     * tuple alone: no snapshot tuple to build, copy and take apart. */
    PyObject *defaults = PyFunction_GET_DEFAULTS(func);
    bool defaults_only = nextra == 0 && defaults != NULL &&
                         PyFunction_GET_KW_DEFAULTS(func) == NULL &&
                         PyFunction_GET_CLOSURE(func) == NULL;
    /* The next commonest, a closure over the caller's variables, travels
     * as the tuple of the cells' contents (when no cell is empty); encoded
     * straight from the cells when they hold compact values. */
    bool plain_closure = nextra == 0 && defaults == NULL &&
                         PyFunction_GET_KW_DEFAULTS(func) == NULL &&
                         PyFunction_GET_CLOSURE(func) != NULL;
    bool closure_only = false;
    if (defaults_only) {
        snapshot = Py_NewRef(defaults);
    } else if (plain_closure && !bocpy_backend_shares_values() &&
               (captures = bocpy_serialise_cells(st, PyFunction_GET_CLOSURE(func))) != NULL) {
        snapshot = NULL;
        closure_only = true;
    } else if (plain_closure && !PyErr_Occurred() && (snapshot = closure_contents(func)) != NULL) {
        closure_only = true;
    } else if (PyErr_Occurred() || captures_of(func, nextra ? extra : NULL, &snapshot) < 0) {
        bocpy_runtime_unpin(pinned);
        return NULL;
    }
    /* The threads backend runs the body in this interpreter: the snapshot
     * travels as it is (taken now, like the pickled one: a closure variable
     * rebound after @when does not change what the behavior sees; the
     * objects themselves are shared, not copied). */
    PyObject *live = NULL;
    if (snapshot != NULL && bocpy_backend_shares_values()) {
        live = snapshot;
    } else if (snapshot != NULL) {
        captures = bocpy_serialise(st, snapshot);
        Py_DECREF(snapshot);
        if (captures == NULL) {
            /* Ctrl-C (or any non-Exception) while pickling propagates as is. */
            if (PyErr_ExceptionMatches(PyExc_Exception)) {
                explain_capture_failure(st, func, nextra ? extra : NULL);
            }
            bocpy_runtime_unpin(pinned);
            return NULL;
        }
    }

    bocpy_cown *result = bocpy_cown_new();
    if (result == NULL) {
        bocpy_blob_free(captures);
        Py_XDECREF(live);
        bocpy_runtime_unpin(pinned);
        return NULL;
    }
    PyObject *wrapper = bocpy_cown_wrap(st, result);
    boc_cown_decref(&result->base); /* the wrapper holds it now */
    if (wrapper == NULL) {
        bocpy_blob_free(captures);
        Py_XDECREF(live);
        bocpy_runtime_unpin(pinned);
        return NULL;
    }

    bool grouped = nargs > BOCPY_UNGROUPED_MAX;
    for (Py_ssize_t i = 0; !grouped && i < nargs; i++) {
        grouped = PyList_Check(PyTuple_GET_ITEM(args, i));
    }
    size_t payload_size = sizeof(bocpy_payload) + (size_t)ncowns * sizeof(bocpy_cown *) +
                          (grouped ? (size_t)nargs * sizeof(int32_t) : 0);
    boc_behavior *b = boc_behavior_new((size_t)ncowns + 1, payload_size);
    if (b == NULL) {
        bocpy_blob_free(captures);
        Py_XDECREF(live);
        Py_DECREF(wrapper);
        bocpy_runtime_unpin(pinned);
        return PyErr_NoMemory();
    }
    bocpy_payload *p = boc_behavior_payload(b);
    p->code_id = code_id;
    p->live = live != NULL;
    if (p->live) {
        p->live_captures = live; /* the payload owns it now (captures is NULL) */
    } else {
        p->captures = captures;
    }
    p->defaults_only = defaults_only;
    p->closure_only = closure_only;
    p->grouped = grouped;
    p->result = result;
    p->nargs = (uint16_t)nargs;
    p->ncowns = (uint32_t)ncowns;
    int32_t *groups = grouped ? (int32_t *)(p->cowns + ncowns) : NULL;
    size_t slot = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *arg = PyTuple_GET_ITEM(args, i);
        if (PyList_Check(arg)) {
            Py_ssize_t n = PyList_GET_SIZE(arg);
            groups[i] = (int32_t)n; /* a list: grouped */
            for (Py_ssize_t j = 0; j < n; j++) {
                bocpy_cown *c = ((CownObject *)PyList_GET_ITEM(arg, j))->cown;
                p->cowns[slot] = c;
                boc_behavior_set_cown(b, slot++, &c->base);
            }
        } else {
            bocpy_cown *c = ((CownObject *)arg)->cown;
            if (groups != NULL) {
                groups[i] = -1;
            }
            p->cowns[slot] = c;
            boc_behavior_set_cown(b, slot++, &c->base);
        }
    }
    boc_behavior_set_cown(b, slot, &result->base);
    boc_schedule(rt, b); /* counted as live before it returns */
    bocpy_runtime_unpin(pinned);
    return wrapper;
}

/* ------------------------------------------------------ the decorator */

static PyObject *When_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    WhenObject *self = (WhenObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_SetString(PyExc_TypeError, "@when(...) takes the function only");
        return NULL;
    }
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError,
                     "@when(...) takes the function only, as its one argument (%zd given)", nargs);
        return NULL;
    }
    PyObject *func = args[0];
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (PyFunction_Check(func)) {
        return bocpy_whencall(st, func, self->args, NULL);
    }
    /* A bound method or a staticmethod: bocpy._as_behavior makes a function
     * of it (the receiver captured), or returns it for check_function. */
    PyObject *bocpy = PyImport_ImportModule("bocpy");
    PyObject *made =
        bocpy ? PyObject_CallMethod(bocpy, "_as_behavior", "On", func, PyTuple_GET_SIZE(self->args))
              : NULL;
    Py_XDECREF(bocpy);
    if (made == NULL) {
        return NULL;
    }
    PyObject *rv = bocpy_whencall(st, made, self->args, NULL);
    Py_DECREF(made);
    return rv;
}

static void When_dealloc(WhenObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->args);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *When_repr(WhenObject *self) {
    return PyUnicode_FromFormat("<bocpy.when decorator for %zd argument(s)>",
                                PyTuple_GET_SIZE(self->args));
}

static PyMemberDef When_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(WhenObject, vectorcall), Py_READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot When_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, When_members},
    {Py_tp_dealloc, When_dealloc},
    {Py_tp_repr, When_repr},
    {0, NULL},
};

static PyType_Spec When_spec = {
    .name = "bocpy._core.When",
    .basicsize = sizeof(WhenObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = When_slots,
};

PyObject *bocpy_when_type_create(PyObject *module) {
    return PyType_FromModuleAndSpec(module, &When_spec, NULL);
}

/* when(*args): checks the arguments now, so the error points at @when. */
PyObject *bocpy_when(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    bocpy_state *st = bocpy_state_of_module(module);
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (check_argument(st, args[i], i) < 0) {
            return NULL;
        }
    }
    PyObject *tuple = PyTuple_New(nargs);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    }
    WhenObject *self = PyObject_New(WhenObject, st->when_type);
    if (self == NULL) {
        Py_DECREF(tuple);
        return NULL;
    }
    self->args = tuple;
    self->vectorcall = When_vectorcall;
    return (PyObject *)self;
}
