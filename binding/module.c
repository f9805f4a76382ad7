/*
 * module.c: the bocpy._core module -- its per-interpreter state and the
 * functions the Python layer (src/bocpy/__init__.py) builds the public API
 * from.  Multi-phase initialisation with module state and heap types, so
 * that every worker sub-interpreter gets its own independent copy, and the
 * module declares support for a per-interpreter GIL.
 */
#include "bocpy.h"

PyObject *bocpy_start(bocpy_state *st, PyObject *count, PyObject *header, PyObject *values);
PyObject *bocpy_wait(bocpy_state *st, PyObject *timeout, bool stop);
PyObject *bocpy_cancel(bocpy_state *st);
PyObject *bocpy_pump(bocpy_state *st, PyObject *deadline, PyObject *max_behaviors,
                     int raise_on_error);
PyObject *bocpy_wake_fd(void);
PyObject *bocpy_set_wake_callback(bocpy_state *st, PyObject *callback);
PyObject *bocpy_set_wait_pump_poll(PyObject *ms);
PyObject *bocpy_set_pump_watchdog(bocpy_state *st, PyObject *warn_ms, PyObject *on_starve);
PyObject *bocpy_stop_watchdog(void);
PyObject *bocpy_close_pool(bocpy_state *st);
PyObject *bocpy_add_late_bind(bocpy_state *st, PyObject *name, PyObject *value);

static struct PyModuleDef bocpy_module_def;

bocpy_state *bocpy_state_of_module(PyObject *module) { return PyModule_GetState(module); }

bocpy_state *bocpy_state_of_type(PyTypeObject *tp) {
    PyObject *module = PyType_GetModuleByDef(tp, &bocpy_module_def);
    return module ? PyModule_GetState(module) : NULL;
}

/* ------------------------------------------------------------ functions */

static PyObject *core_whencall(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError,
                        "whencall(func, args, captures=None) takes 2 or 3 arguments");
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_module(module);
    PyObject *cowns = args[1];
    if (!PyList_Check(cowns) && !PyTuple_Check(cowns)) {
        PyErr_Format(PyExc_TypeError,
                     "whencall() args must be a list of cowns (or lists of cowns), not '%.200s'",
                     Py_TYPE(cowns)->tp_name);
        return NULL;
    }
    PyObject *extra = NULL;
    if (nargs == 3 && args[2] != Py_None) {
        if (!PyList_Check(args[2]) && !PyTuple_Check(args[2])) {
            PyErr_Format(PyExc_TypeError,
                         "whencall() captures must be a list of values, not '%.200s'",
                         Py_TYPE(args[2])->tp_name);
            return NULL;
        }
        extra = PySequence_Tuple(args[2]);
        if (extra == NULL) {
            return NULL;
        }
    }
    PyObject *tuple = PySequence_Tuple(cowns);
    PyObject *result = tuple ? bocpy_whencall(st, args[0], tuple, extra) : NULL;
    Py_XDECREF(tuple);
    Py_XDECREF(extra);
    return result;
}

static PyObject *core_start(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_core.start(worker_count, header, values)");
        return NULL;
    }
    return bocpy_start(bocpy_state_of_module(module), args[0], args[1], args[2]);
}

static PyObject *core_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_core.wait(timeout, stop)");
        return NULL;
    }
    int stop = PyObject_IsTrue(args[1]);
    if (stop < 0) {
        return NULL;
    }
    return bocpy_wait(bocpy_state_of_module(module), args[0], stop);
}

static PyObject *core_cancel(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return bocpy_cancel(bocpy_state_of_module(module));
}

static PyObject *core_rebuild_cown(PyObject *module, PyObject *arg) {
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    bocpy_cown *c = bocpy_transfer_get_cown(index);
    if (c == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "_rebuild_cown() is internal to bocpy: it only works while bocpy "
                        "unpickles a value");
        return NULL;
    }
    return bocpy_cown_wrap(bocpy_state_of_module(module), c);
}

static PyObject *core_rebuild_function(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_rebuild_function(code_id, defaults, kwdefaults, cells)");
        return NULL;
    }
    long long id = PyLong_AsLongLong(args[0]);
    if (id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return bocpy_build_function(bocpy_state_of_module(module), id, args[1], args[2], args[3]);
}

static PyObject *core_register_code(PyObject *module, PyObject *func) {
    if (!PyFunction_Check(func)) {
        PyErr_Format(PyExc_TypeError, "_register_code() needs a function, not '%.200s'",
                     Py_TYPE(func)->tp_name);
        return NULL;
    }
    int64_t id = bocpy_registry_id_for(bocpy_state_of_module(module), func);
    return id < 0 ? NULL : PyLong_FromLongLong(id);
}

static PyObject *core_bootstrap_header(PyObject *module, PyObject *unused) {
    (void)unused;
    const bocpy_bootstrap *boot = bocpy_current_bootstrap();
    if (boot->header == NULL) {
        Py_RETURN_NONE;
    }
    return bocpy_deserialize(bocpy_state_of_module(module), boot->header);
}

static PyObject *core_bootstrap_value(PyObject *module, PyObject *arg) {
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const bocpy_bootstrap *boot = bocpy_current_bootstrap();
    if (index < 0 || (size_t)index >= boot->nvalues || boot->values[index] == NULL) {
        PyErr_Format(PyExc_LookupError, "no bootstrap value %zd", index);
        return NULL;
    }
    return bocpy_deserialize(bocpy_state_of_module(module), boot->values[index]);
}

static PyObject *core_set_starter(PyObject *module, PyObject *func) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_XSETREF(st->starter, Py_NewRef(func));
    Py_RETURN_NONE;
}

static PyObject *core_is_main_interpreter(PyObject *module, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(bocpy_state_of_module(module)->interp->is_main);
}

static PyObject *core_is_transferable(PyObject *module, PyObject *obj) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (bocpy_is_plain_immutable(st, obj)) {
        Py_RETURN_TRUE;
    }
    bocpy_blob *blob = bocpy_serialize(st, obj);
    if (blob == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    bocpy_blob_free(blob);
    Py_RETURN_TRUE;
}

static PyObject *core_runtime_info(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    unsigned workers;
    uint64_t live;
    bool running = bocpy_runtime_snapshot(&workers, &live);
    return Py_BuildValue("(OIK)", running ? Py_True : Py_False, workers, (unsigned long long)live);
}

static PyObject *core_running(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_running_behaviors(bocpy_state_of_module(module));
}

static PyObject *core_close_pool(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_close_pool(bocpy_state_of_module(module));
}

static PyObject *core_pool_size(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(bocpy_pool_size());
}

static PyObject *core_registry_size(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(bocpy_registry_size());
}

static PyObject *core_code_cache_size(PyObject *module, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(bocpy_state_of_module(module)->codemap_len);
}

static PyObject *core_forget_code(PyObject *module, PyObject *unused) {
    (void)unused;
    /* A reused worker interpreter re-runs the script's defs: the code
     * objects the cache holds for the old ones would otherwise pile up. */
    bocpy_registry_clear_state(bocpy_state_of_module(module));
    Py_RETURN_NONE;
}

static PyObject *core_pump(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_core.pump(deadline_ms, max_behaviors, raise_on_error)");
        return NULL;
    }
    int raise_on_error = PyObject_IsTrue(args[2]);
    if (raise_on_error < 0) {
        return NULL;
    }
    return bocpy_pump(bocpy_state_of_module(module), args[0], args[1], raise_on_error);
}

static PyObject *core_wake_fd(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return bocpy_wake_fd();
}

static PyObject *core_set_wake_callback(PyObject *module, PyObject *callback) {
    return bocpy_set_wake_callback(bocpy_state_of_module(module), callback);
}

static PyObject *core_set_wait_pump_poll(PyObject *module, PyObject *ms) {
    (void)module;
    return bocpy_set_wait_pump_poll(ms);
}

static PyObject *core_set_pump_watchdog(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_core.set_pump_watchdog(warn_ms, on_starve)");
        return NULL;
    }
    return bocpy_set_pump_watchdog(bocpy_state_of_module(module), args[0], args[1]);
}

static PyObject *core_stop_watchdog(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return bocpy_stop_watchdog();
}

static PyObject *core_add_late_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_add_late_bind(name, value)");
        return NULL;
    }
    return bocpy_add_late_bind(bocpy_state_of_module(module), args[0], args[1]);
}

static PyObject *core_set_pump_result(PyObject *module, PyObject *cls) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_XSETREF(st->pump_result_type, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyObject *core_notice_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "notice_write(key, value)");
        return NULL;
    }
    return bocpy_notice_write(bocpy_state_of_module(module), args[0], args[1]);
}

static PyObject *core_notice_seed(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (!st->interp->is_main || bocpy_pumping()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "notice_seed() is for the main thread between runs; inside a behavior "
                        "use notice_write()");
        return NULL;
    }
    return core_notice_write(module, args, nargs);
}

static PyObject *core_notice_delete(PyObject *module, PyObject *key) {
    (void)module;
    return bocpy_notice_delete(key);
}

static PyObject *core_notice_update(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "notice_update(key, fn, default=None)");
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_module(module);
    return bocpy_notice_update(st, args[0], args[1], nargs == 3 ? args[2] : Py_None, st->removed);
}

static PyObject *core_notice_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "notice_read(key, default=None)");
        return NULL;
    }
    return bocpy_notice_read(bocpy_state_of_module(module), args[0],
                             nargs == 2 ? args[1] : Py_None);
}

static PyObject *core_noticeboard(PyObject *module, PyObject *unused) {
    (void)unused;
    return bocpy_noticeboard(bocpy_state_of_module(module), false);
}

static PyObject *core_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(tag, contents)");
        return NULL;
    }
    return bocpy_send(bocpy_state_of_module(module), args[0], args[1]);
}

static PyObject *core_receive(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_core.receive(tags, timeout, after)");
        return NULL;
    }
    return bocpy_receive(bocpy_state_of_module(module), args[0], args[1], args[2]);
}

static PyObject *core_drain(PyObject *module, PyObject *tags) {
    (void)module;
    return bocpy_drain(tags, false);
}

static PyObject *core_set_tags(PyObject *module, PyObject *tags) {
    bocpy_state *st = bocpy_state_of_module(module);
    if (!st->interp->is_main) {
        PyErr_SetString(PyExc_RuntimeError, "set_tags() is for the main interpreter");
        return NULL;
    }
    return bocpy_drain(tags, true);
}

PyDoc_STRVAR(when_doc, "when(*cowns)\n--\n\n"
                       "Decorator: schedule the function as a behavior that runs once it has "
                       "exclusive access to every cown (a list is a group of cowns, passed as a "
                       "list).  The decorated name becomes the result Cown.");

static PyMethodDef core_methods[] = {
    {"when", (PyCFunction)(void (*)(void))bocpy_when, METH_FASTCALL, when_doc},
    {"whencall", (PyCFunction)(void (*)(void))core_whencall, METH_FASTCALL,
     "whencall(func, args, captures=None): schedule func on the cowns in args."},
    {"start", (PyCFunction)(void (*)(void))core_start, METH_FASTCALL, NULL},
    {"wait", (PyCFunction)(void (*)(void))core_wait, METH_FASTCALL, NULL},
    {"_cancel", core_cancel, METH_NOARGS, NULL},
    {"pump", (PyCFunction)(void (*)(void))core_pump, METH_FASTCALL, NULL},
    {"wake_fd", core_wake_fd, METH_NOARGS, NULL},
    {"set_wake_callback", core_set_wake_callback, METH_O, NULL},
    {"set_wait_pump_poll", core_set_wait_pump_poll, METH_O, NULL},
    {"set_pump_watchdog", (PyCFunction)(void (*)(void))core_set_pump_watchdog, METH_FASTCALL, NULL},
    {"_stop_watchdog", core_stop_watchdog, METH_NOARGS, NULL},
    {"_set_pump_result", core_set_pump_result, METH_O, NULL},
    {"notice_write", (PyCFunction)(void (*)(void))core_notice_write, METH_FASTCALL, NULL},
    {"notice_seed", (PyCFunction)(void (*)(void))core_notice_seed, METH_FASTCALL, NULL},
    {"notice_delete", core_notice_delete, METH_O, NULL},
    {"notice_update", (PyCFunction)(void (*)(void))core_notice_update, METH_FASTCALL, NULL},
    {"notice_read", (PyCFunction)(void (*)(void))core_notice_read, METH_FASTCALL, NULL},
    {"noticeboard", core_noticeboard, METH_NOARGS, NULL},
    {"send", (PyCFunction)(void (*)(void))core_send, METH_FASTCALL, NULL},
    {"receive", (PyCFunction)(void (*)(void))core_receive, METH_FASTCALL, NULL},
    {"drain", core_drain, METH_O, NULL},
    {"set_tags", core_set_tags, METH_O, NULL},
    {"_add_late_bind", (PyCFunction)(void (*)(void))core_add_late_bind, METH_FASTCALL, NULL},
    {"_rebuild_cown", core_rebuild_cown, METH_O, NULL},
    {"_rebuild_function", (PyCFunction)(void (*)(void))core_rebuild_function, METH_FASTCALL, NULL},
    {"_register_code", core_register_code, METH_O, NULL},
    {"_bootstrap_header", core_bootstrap_header, METH_NOARGS, NULL},
    {"_bootstrap_value", core_bootstrap_value, METH_O, NULL},
    {"_set_starter", core_set_starter, METH_O, NULL},
    {"_is_main_interpreter", core_is_main_interpreter, METH_NOARGS, NULL},
    {"_is_transferable", core_is_transferable, METH_O, NULL},
    {"_runtime_info", core_runtime_info, METH_NOARGS, NULL},
    {"_close_pool", core_close_pool, METH_NOARGS, NULL},
    {"_running", core_running, METH_NOARGS, NULL},
    {"_pool_size", core_pool_size, METH_NOARGS, NULL},
    {"_registry_size", core_registry_size, METH_NOARGS, NULL},
    {"_forget_code", core_forget_code, METH_NOARGS, NULL},
    {"_code_cache_size", core_code_cache_size, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* ----------------------------------------------------------- lifecycle */

static int core_exec(PyObject *module) {
    bocpy_state *st = bocpy_state_of_module(module);
    st->module = module;
    PyInterpreterState *interp = PyInterpreterState_Get();
    st->interp = bocpy_interp_acquire_record(interp, interp == PyInterpreterState_Main());
    if (st->interp == NULL) {
        return -1;
    }
    st->interp->state = st;

    st->cown_type = (PyTypeObject *)bocpy_cown_type_spec_create(module);
    if (st->cown_type == NULL || PyModule_AddType(module, st->cown_type) < 0) {
        return -1;
    }
    st->pinned_type = (PyTypeObject *)bocpy_pinned_type_create(module, (PyObject *)st->cown_type);
    if (st->pinned_type == NULL || PyModule_AddType(module, st->pinned_type) < 0) {
        return -1;
    }
    if (st->interp->is_main && (bocpy_pinned_init_fds() < 0 || bocpy_fork_guard_install() < 0)) {
        return -1;
    }
    st->board_view_type = (PyTypeObject *)bocpy_board_view_type_create(module);
    st->removed = bocpy_removed_create(module);
    if (st->board_view_type == NULL || st->removed == NULL ||
        PyModule_AddObjectRef(module, "REMOVED", st->removed) < 0 ||
        PyModule_AddStringConstant(module, "TIMEOUT", BOCPY_TIMEOUT_TAG) < 0) {
        return -1;
    }
    st->when_type = (PyTypeObject *)bocpy_when_type_create(module);
    if (st->when_type == NULL) {
        return -1;
    }
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) {
        return -1;
    }
    st->dumps = PyObject_GetAttrString(pickle, "dumps");
    st->loads = PyObject_GetAttrString(pickle, "loads");
    st->protocol = PyObject_GetAttrString(pickle, "HIGHEST_PROTOCOL");
    Py_DECREF(pickle);
    PyObject *marshal = PyImport_ImportModule("marshal");
    if (marshal == NULL) {
        return -1;
    }
    st->marshal_dumps = PyObject_GetAttrString(marshal, "dumps");
    st->marshal_loads = PyObject_GetAttrString(marshal, "loads");
    Py_DECREF(marshal);
    st->rebuild_cown = PyObject_GetAttrString(module, "_rebuild_cown");
    if (st->dumps == NULL || st->loads == NULL || st->protocol == NULL ||
        st->marshal_dumps == NULL || st->marshal_loads == NULL || st->rebuild_cown == NULL) {
        return -1;
    }
    return 0;
}

static int core_traverse(PyObject *module, visitproc visit, void *arg) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_VISIT(st->cown_type);
    Py_VISIT(st->pinned_type);
    Py_VISIT(st->board_view_type);
    Py_VISIT(st->removed);
    Py_VISIT(st->pump_result_type);
    Py_VISIT(st->when_type);
    Py_VISIT(st->starter);
    Py_VISIT(st->main_dict);
    Py_VISIT(st->fallback_dumps);
    Py_VISIT(st->dumps);
    Py_VISIT(st->loads);
    Py_VISIT(st->protocol);
    Py_VISIT(st->marshal_dumps);
    Py_VISIT(st->marshal_loads);
    Py_VISIT(st->rebuild_cown);
    return 0;
}

static int core_clear(PyObject *module) {
    bocpy_state *st = bocpy_state_of_module(module);
    Py_CLEAR(st->cown_type);
    Py_CLEAR(st->pinned_type);
    Py_CLEAR(st->board_view_type);
    Py_CLEAR(st->removed);
    Py_CLEAR(st->pump_result_type);
    Py_CLEAR(st->when_type);
    Py_CLEAR(st->dumps);
    Py_CLEAR(st->loads);
    Py_CLEAR(st->protocol);
    Py_CLEAR(st->marshal_dumps);
    Py_CLEAR(st->marshal_loads);
    Py_CLEAR(st->fallback_dumps);
    Py_CLEAR(st->rebuild_cown);
    Py_CLEAR(st->starter);
    Py_CLEAR(st->main_dict);
    bocpy_registry_clear_state(st);
    return 0;
}

static void core_free(void *module) {
    bocpy_state *st = bocpy_state_of_module(module);
    core_clear(module);
    if (st->interp != NULL) {
        bocpy_interp_release_record(st->interp);
        st->interp = NULL;
    }
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
    {0, NULL},
};

static struct PyModuleDef bocpy_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bocpy._core",
    .m_doc = "The C core of bocpy: cowns, behaviors and worker sub-interpreters.",
    .m_size = sizeof(bocpy_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&bocpy_module_def); }
