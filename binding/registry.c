/*
 * registry.c: how behavior code reaches the interpreter that runs it.
 *
 * A behavior names its function by a registry id.  The process-wide
 * registry maps an id to the function's marshalled code object and the name
 * of its defining module; it only grows, and entries are never moved or
 * freed, so a looked-up entry stays valid without the lock.  Equal code from
 * the same module gets the same id, whichever interpreter registers it.
 *
 * Each interpreter caches, in its module state:
 *   codemap    code object (by identity) -> id, so that the hot path of
 *              @when costs one pointer hash lookup;
 *   functions  id -> a function built from the code against this
 *              interpreter's import of the defining module (a worker never
 *              re-runs a `__main__` script: it gets the image that
 *              bocpy._bootstrap applied to its own `__main__`).
 */
#include "bocpy.h"

#include <string.h>

typedef struct registry_entry {
    char *code;
    size_t code_size;
    char *module;
    uint64_t hash;
} registry_entry;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
/* Entries live in fixed-size chunks so that a pointer to one never moves,
 * and the directory of chunks is a fixed array that is never reallocated:
 * readers index it without the lock (a directory grown with realloc was
 * freed under them).  A chunk pointer is written, under the lock, before
 * the release store of registry_len that publishes its first entry, and is
 * never written again.  16,384 chunks hold 16 million codes. */
#define REGISTRY_CHUNK 1024
#define REGISTRY_MAX_CHUNKS 16384
static registry_entry *registry_chunks[REGISTRY_MAX_CHUNKS];
static size_t registry_chunk_count;
static atomic_size_t registry_len;
/* Open-addressing index: hash -> id + 1 (0 is empty). */
static int64_t *registry_index;
static size_t registry_index_cap;

static uint64_t hash_bytes(uint64_t h, const char *p, size_t n) {
    /* FNV-1a: plenty for de-duplication, and collisions are checked. */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static registry_entry *registry_get(int64_t id) {
    /* acquire (a debug check): pairs with registry_intern's release. */
    assert(id >= 0 && (size_t)id < atomic_load_explicit(&registry_len, memory_order_acquire) + 1);
    return &registry_chunks[id / REGISTRY_CHUNK][id % REGISTRY_CHUNK];
}

static int registry_index_insert(int64_t *index, size_t cap, uint64_t hash, int64_t id) {
    for (size_t i = hash & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (index[i] == 0) {
            index[i] = id + 1;
            return 0;
        }
    }
}

/* Returns the id of (code, module), adding it if new; -1 on memory error. */
static int64_t registry_intern(const char *code, size_t code_size, const char *module) {
    uint64_t hash = hash_bytes(0xcbf29ce484222325ULL, code, code_size);
    hash = hash_bytes(hash, module, strlen(module) + 1);
    pthread_mutex_lock(&registry_lock);
    /* relaxed: only registry_lock holders write it, and we hold it. */
    size_t len = atomic_load_explicit(&registry_len, memory_order_relaxed);
    if (registry_index_cap > 0) {
        for (size_t i = hash & (registry_index_cap - 1); registry_index[i] != 0;
             i = (i + 1) & (registry_index_cap - 1)) {
            registry_entry *e = registry_get(registry_index[i] - 1);
            if (e->hash == hash && e->code_size == code_size && strcmp(e->module, module) == 0 &&
                memcmp(e->code, code, code_size) == 0) {
                int64_t id = registry_index[i] - 1;
                pthread_mutex_unlock(&registry_lock);
                return id;
            }
        }
    }
    if (2 * (len + 1) > registry_index_cap) {
        size_t cap = registry_index_cap ? registry_index_cap * 2 : 256;
        int64_t *index = calloc(cap, sizeof(*index));
        if (index == NULL) {
            goto oom;
        }
        for (size_t id = 0; id < len; id++) {
            registry_index_insert(index, cap, registry_get((int64_t)id)->hash, (int64_t)id);
        }
        free(registry_index);
        registry_index = index;
        registry_index_cap = cap;
    }
    if (len / REGISTRY_CHUNK == registry_chunk_count) {
        if (registry_chunk_count == REGISTRY_MAX_CHUNKS) {
            pthread_mutex_unlock(&registry_lock);
            PyErr_Format(PyExc_RuntimeError,
                         "bocpy's code registry is full (%zu distinct behavior codes); "
                         "define behaviors once (at module level) rather than generating "
                         "new code for each call",
                         len);
            return -1;
        }
        registry_chunks[registry_chunk_count] = calloc(REGISTRY_CHUNK, sizeof(registry_entry));
        if (registry_chunks[registry_chunk_count] == NULL) {
            goto oom;
        }
        registry_chunk_count++;
    }
    registry_entry *e = registry_get((int64_t)len);
    e->code = malloc(code_size);
    e->module = strdup(module);
    if (e->code == NULL || e->module == NULL) {
        free(e->code);
        free(e->module);
        goto oom;
    }
    memcpy(e->code, code, code_size);
    e->code_size = code_size;
    e->hash = hash;
    registry_index_insert(registry_index, registry_index_cap, hash, (int64_t)len);
    /* release: a reader that sees the new length also sees the entry. */
    atomic_store_explicit(&registry_len, len + 1, memory_order_release);
    pthread_mutex_unlock(&registry_lock);
    return (int64_t)len;
oom:
    pthread_mutex_unlock(&registry_lock);
    PyErr_NoMemory();
    return -1;
}

/* ------------------------------------------------------ per-interpreter */

static size_t codemap_slot(PyObject *code, size_t cap) {
    uintptr_t p = (uintptr_t)code;
    p ^= p >> 17;
    p *= 0x9E3779B97F4A7C15ULL;
    return (size_t)(p >> 20) & (cap - 1);
}

static int64_t codemap_find(bocpy_state *st, PyObject *code) {
    if (st->codemap_cap == 0) {
        return -1;
    }
    for (size_t i = codemap_slot(code, st->codemap_cap); st->codemap[i].code != NULL;
         i = (i + 1) & (st->codemap_cap - 1)) {
        if (st->codemap[i].code == code) {
            return st->codemap[i].id;
        }
    }
    return -1;
}

static int codemap_add(bocpy_state *st, PyObject *code, int64_t id) {
    if (2 * (st->codemap_len + 1) > st->codemap_cap) {
        size_t cap = st->codemap_cap ? st->codemap_cap * 2 : 64;
        bocpy_codemap_entry *map = PyMem_Calloc(cap, sizeof(*map));
        if (map == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < st->codemap_cap; i++) {
            bocpy_codemap_entry *old = &st->codemap[i];
            if (old->code != NULL) {
                size_t j = codemap_slot(old->code, cap);
                while (map[j].code != NULL) {
                    j = (j + 1) & (cap - 1);
                }
                map[j] = *old;
            }
        }
        PyMem_Free(st->codemap);
        st->codemap = map;
        st->codemap_cap = cap;
    }
    size_t i = codemap_slot(code, st->codemap_cap);
    while (st->codemap[i].code != NULL) {
        i = (i + 1) & (st->codemap_cap - 1);
    }
    st->codemap[i].code = Py_NewRef(code);
    st->codemap[i].id = id;
    st->codemap_len++;
    return 0;
}

static int functions_set(bocpy_state *st, int64_t id, PyObject *func) {
    /* Only ever fills an empty slot (callers check), so no old function is
     * released here: nothing runs a destructor while st->ft_lock is held. */
    if ((size_t)id >= st->functions_cap) {
        size_t cap = st->functions_cap ? st->functions_cap : 64;
        while (cap <= (size_t)id) {
            cap *= 2;
        }
        PyObject **grown = PyMem_Realloc(st->functions, cap * sizeof(*grown));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(grown + st->functions_cap, 0, (cap - st->functions_cap) * sizeof(*grown));
        st->functions = grown;
        st->functions_cap = cap;
    }
    assert(st->functions[id] == NULL);
    st->functions[id] = Py_NewRef(func);
    return 0;
}

/* The cached function for `id` (borrowed), or NULL.  st->ft_lock held. */
static PyObject *functions_get(bocpy_state *st, int64_t id) {
    return id >= 0 && (size_t)id < st->functions_cap ? st->functions[id] : NULL;
}

/*
 * Records code -> id and, when the slot is empty, id -> func in this
 * interpreter's caches; returns the cached function for `id` (borrowed: a
 * slot, once filled, only empties in bocpy_registry_clear_state, which runs
 * when the module is cleared or a pooled worker forgets its code), or NULL
 * with an exception.
 *
 * Free-threaded builds: several threads of one interpreter (user threads
 * calling @when, the threads backend's workers) build and read the caches at
 * once, so every look and change happens under st->ft_lock.  Building the
 * function (marshal, imports) stays outside the lock: two threads may both
 * build one, and the loser's copy is dropped after the lock is released.
 * Only PyMem allocation and reference increments run under the lock.
 */
static PyObject *caches_add(bocpy_state *st, PyObject *code, int64_t id, PyObject *func) {
    int rc = 0;
    bocpy_ft_lock(&st->ft_lock);
    if (codemap_find(st, code) < 0) {
        rc = codemap_add(st, code, id);
    }
    PyObject *cached = functions_get(st, id);
    if (rc == 0 && cached == NULL) {
        rc = functions_set(st, id, func);
        cached = func;
    }
    bocpy_ft_unlock(&st->ft_lock);
    return rc < 0 ? NULL : cached;
}

/* The module whose globals functions with this code should see. */
static PyObject *module_name_of(PyObject *func) {
    PyObject *name = PyFunction_GetModule(func);
    if (name != NULL && PyUnicode_Check(name)) {
        return Py_NewRef(name);
    }
    PyObject *globals = PyFunction_GET_GLOBALS(func);
    name = PyDict_GetItemString(globals, "__name__");
    if (name != NULL && PyUnicode_Check(name)) {
        return Py_NewRef(name);
    }
    PyErr_Format(PyExc_TypeError,
                 "behavior %R has no defining module (__module__ is not a str); define "
                 "behaviors in a module or script so that workers can import it",
                 func);
    return NULL;
}

int64_t bocpy_registry_id_for(bocpy_state *st, PyObject *func) {
    PyObject *code = PyFunction_GET_CODE(func);
    bocpy_ft_lock(&st->ft_lock); /* see caches_add */
    int64_t id = codemap_find(st, code);
    bocpy_ft_unlock(&st->ft_lock);
    if (id >= 0) {
        return id;
    }
    PyObject *module = module_name_of(func);
    if (module == NULL) {
        return -1;
    }
    PyObject *bytes = PyObject_CallOneArg(st->marshal_dumps, code);
    if (bytes == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        /* marshal reports an allocation that failed inside a code object
         * as ValueError("unmarshallable object") (CPython 3.12, 3.13), not
         * as MemoryError.  A code object that really cannot be marshalled
         * (one made by hand with odd constants) fails the same way twice;
         * a brief shortage of memory does not. */
        PyErr_Clear();
        bytes = PyObject_CallOneArg(st->marshal_dumps, code);
    }
    if (bytes == NULL) {
        Py_DECREF(module);
        return -1;
    }
    const char *modname = PyUnicode_AsUTF8(module);
    if (modname != NULL) {
        id = registry_intern(PyBytes_AS_STRING(bytes), (size_t)PyBytes_GET_SIZE(bytes), modname);
    }
    Py_DECREF(bytes);
    Py_DECREF(module);
    if (id < 0) {
        return -1;
    }
    /* The function as this interpreter would build it: same code, same
     * globals, no defaults or closure (those travel with each behavior). */
    PyObject *template = PyFunction_New(code, PyFunction_GET_GLOBALS(func));
    if (template == NULL) {
        return -1;
    }
    PyObject *cached = caches_add(st, code, id, template);
    Py_DECREF(template);
    return cached == NULL ? -1 : id;
}

static PyObject *globals_for(const char *module) {
    PyObject *mod;
    if (strcmp(module, "__main__") == 0) {
        mod = PyImport_AddModule("__main__"); /* borrowed */
        Py_XINCREF(mod);
    } else {
        mod = PyImport_ImportModule(module);
    }
    if (mod == NULL) {
        PyObject *cause = PyErr_GetRaisedException();
        PyErr_Format(PyExc_ImportError,
                     "the module '%s' that defines this behavior could not be imported in "
                     "the worker (%S); make sure it is importable from sys.path",
                     module, cause);
        PyObject *exc = PyErr_GetRaisedException();
        PyException_SetCause(exc, cause);
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    PyObject *globals = PyModule_GetDict(mod); /* borrowed */
    Py_XINCREF(globals);
    Py_DECREF(mod);
    return globals;
}

PyObject *bocpy_registry_function(bocpy_state *st, int64_t id) {
    bocpy_ft_lock(&st->ft_lock); /* see caches_add */
    PyObject *found = functions_get(st, id);
    bocpy_ft_unlock(&st->ft_lock);
    if (found != NULL) {
        return found;
    }
    /* acquire pairs with registry_intern's release of the length. */
    if (id < 0 || (size_t)id >= atomic_load_explicit(&registry_len, memory_order_acquire)) {
        PyErr_Format(PyExc_ValueError, "unknown behavior code id %lld", (long long)id);
        return NULL;
    }
    registry_entry *e = registry_get(id);
    PyObject *bytes = PyBytes_FromStringAndSize(e->code, (Py_ssize_t)e->code_size);
    if (bytes == NULL) {
        return NULL;
    }
    PyObject *code = PyObject_CallOneArg(st->marshal_loads, bytes);
    Py_DECREF(bytes);
    if (code == NULL) {
        return NULL;
    }
    PyObject *globals = globals_for(e->module);
    PyObject *func = globals ? PyFunction_New(code, globals) : NULL;
    Py_XDECREF(globals);
    PyObject *cached = func ? caches_add(st, code, id, func) : NULL;
    Py_DECREF(code);
    Py_XDECREF(func);
    return cached;
}

size_t bocpy_registry_size(void) {
    /* acquire, like every other read of the length outside the lock (a
     * count alone would do with relaxed). */
    return atomic_load_explicit(&registry_len, memory_order_acquire);
}

void bocpy_registry_clear_state(bocpy_state *st) {
    /* Runs when the module is cleared, or on a pooled worker between runs:
     * no other thread of the interpreter uses the caches then, so this
     * releases references (which may run destructors) without st->ft_lock. */
    for (size_t i = 0; i < st->codemap_cap; i++) {
        Py_CLEAR(st->codemap[i].code);
    }
    PyMem_Free(st->codemap);
    st->codemap = NULL;
    st->codemap_cap = st->codemap_len = 0;
    for (size_t i = 0; i < st->functions_cap; i++) {
        Py_CLEAR(st->functions[i]);
    }
    PyMem_Free(st->functions);
    st->functions = NULL;
    st->functions_cap = 0;
    Py_CLEAR(st->spare_closure);
    Py_CLEAR(st->spare_local);
}

/* What closure cell `i` holds, from `cells` in either form (see
 * bocpy_captures): borrowed, or NULL for an empty cell. */
static PyObject *cell_content(PyObject *cells, Py_ssize_t i, bool bare_cells) {
    PyObject *entry = PyTuple_GET_ITEM(cells, i);
    if (bare_cells) {
        return entry;
    }
    return PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 2 ? PyTuple_GET_ITEM(entry, 1) : NULL;
}

static bool function_unshared(PyObject *func, PyObject *template, bool any_defaults);
static PyObject *cached_function(bocpy_state *st, int64_t id);

/* Whether a kept function (`spare`, of code `id`) is still as it was kept:
 * unshared, like a new one, its cells empty.  Between two behaviors only
 * the cycle collector's view (gc.get_objects) can reach it, and a body
 * may have taken it from there. */
static bool spare_intact(bocpy_state *st, int64_t id, PyObject *spare) {
    if (!function_unshared(spare, cached_function(st, id), false)) {
        return false;
    }
    PyObject *closure = PyFunction_GET_CLOSURE(spare);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(closure); i++) {
        if (PyCell_GET(PyTuple_GET_ITEM(closure, i)) != NULL) {
            return false;
        }
    }
    return true;
}

/* Takes `*slot` (a kept function of code `id`): a new reference, or NULL
 * when it is not intact any more (then dropped). */
static PyObject *take_spare(bocpy_state *st, int64_t id, PyObject **slot) {
    PyObject *func = *slot;
    *slot = NULL;
    if (!spare_intact(st, id, func)) {
        Py_DECREF(func);
        return NULL;
    }
    return func;
}

PyObject *bocpy_take_spare_closure(bocpy_state *st, int64_t id) {
    if (st->spare_closure == NULL || st->spare_id != id) {
        return NULL;
    }
    return take_spare(st, id, &st->spare_closure);
}

/* Makes `func` (its reference passes) the function kept in `*slot` for
 * code `id`, dropping the one kept before (last: its release may run
 * code). */
static void set_spare(PyObject **slot, int64_t *slot_id, int64_t id, PyObject *func) {
    PyObject *old = *slot;
    *slot = func;
    *slot_id = id;
    Py_XDECREF(old);
}

void bocpy_return_spare_closure(bocpy_state *st, int64_t id, PyObject *func) {
    if (st->spare_closure != NULL) {
        Py_DECREF(func); /* another one became the spare meanwhile */
        return;
    }
    set_spare(&st->spare_closure, &st->spare_id, id, func);
}

PyObject *bocpy_build_function(bocpy_state *st, int64_t id, PyObject *defaults,
                               PyObject *kwdefaults, PyObject *cells, bool bare_cells) {
    PyObject *template = bocpy_registry_function(st, id);
    if (template == NULL) {
        return NULL;
    }
    PyObject *code = PyFunction_GET_CODE(template);
    Py_ssize_t nfree = PyCode_GetNumFree((PyCodeObject *)code);
    Py_ssize_t ncells = PyTuple_Check(cells) ? PyTuple_GET_SIZE(cells) : 0;
    if (nfree != ncells) {
        /* Calling code with free variables but no closure would crash. */
        PyErr_Format(PyExc_RuntimeError,
                     "behavior code %lld expects %zd closure variables but %zd were sent",
                     (long long)id, nfree, ncells);
        return NULL;
    }
    if (nfree == 0 && defaults == Py_None && kwdefaults == Py_None) {
        return Py_NewRef(template);
    }
    PyObject *spare =
        defaults == Py_None && kwdefaults == Py_None ? bocpy_take_spare_closure(st, id) : NULL;
    if (spare != NULL) {
        /* The last behavior of this code left its function unshared
         * (bocpy_function_done): only the cells' contents change. */
        PyObject *func = spare;
        PyObject *closure = PyFunction_GET_CLOSURE(func);
        for (Py_ssize_t i = 0; i < nfree; i++) {
            /* The cells are empty (bocpy_function_done): nothing is
             * released here, so no destructor runs half-way. */
            PyObject *content = cell_content(cells, i, bare_cells);
            if (PyCell_Set(PyTuple_GET_ITEM(closure, i), content) < 0) {
                Py_DECREF(func);
                return NULL;
            }
        }
        return func;
    }
    PyObject *func = PyFunction_New(code, PyFunction_GET_GLOBALS(template));
    if (func == NULL) {
        return NULL;
    }
    if (defaults != Py_None && PyFunction_SetDefaults(func, defaults) < 0) {
        goto fail;
    }
    if (kwdefaults != Py_None && PyFunction_SetKwDefaults(func, kwdefaults) < 0) {
        goto fail;
    }
    if (nfree > 0) {
        PyObject *closure = PyTuple_New(nfree);
        if (closure == NULL) {
            goto fail;
        }
        for (Py_ssize_t i = 0; i < nfree; i++) {
            PyObject *cell = PyCell_New(cell_content(cells, i, bare_cells));
            if (cell == NULL) {
                Py_DECREF(closure);
                goto fail;
            }
            PyTuple_SET_ITEM(closure, i, cell);
        }
        int rc = PyFunction_SetClosure(func, closure);
        Py_DECREF(closure);
        if (rc < 0) {
            goto fail;
        }
    }
    return func;
fail:
    Py_DECREF(func);
    return NULL;
}

/* Whether `func` (a function with a closure and nothing else set -- or,
 * with `any_defaults`, defaults too -- built from `template`'s code) is
 * referenced by its caller alone, and its
 * closure tuple and cells by it alone, and the body changed nothing else of
 * it: then no object the body made (an inner function over one of the
 * cells, a frame kept by a traceback or a generator, the function itself
 * returned or stored, a weak reference to it) can see a later behavior's
 * values, and a later behavior sees a function just like a new one.  Only
 * where one thread owns the interpreter's objects (a GIL build, each
 * worker with its own interpreter): reference counts are exact there.
 * The fields are those of CPython's public PyFunctionObject
 * (cpython/funcobject.h), which the PyFunction_GET_* macros read too. */
static bool function_unshared(PyObject *func, PyObject *template, bool any_defaults) {
#ifdef Py_GIL_DISABLED
    (void)func;
    (void)template;
    (void)any_defaults;
    return false;
#else
    if (bocpy_backend_shares_values() || template == NULL || !PyFunction_Check(func) ||
        Py_REFCNT(func) != 1 || (!any_defaults && PyFunction_GET_DEFAULTS(func) != NULL) ||
        PyFunction_GET_KW_DEFAULTS(func) != NULL) {
        return false;
    }
    const PyFunctionObject *f = (const PyFunctionObject *)func;
    const PyFunctionObject *t = (const PyFunctionObject *)template;
    /* Nothing added (attributes, weak references, annotations made on
     * demand), nothing replaced (__code__, __name__, __qualname__, __doc__,
     * __module__, __type_params__): else not kept. */
    if (f->func_dict != NULL || f->func_weakreflist != NULL || f->func_code != t->func_code ||
        f->func_globals != t->func_globals || f->func_name != t->func_name ||
        f->func_qualname != t->func_qualname || f->func_doc != t->func_doc ||
        f->func_module != t->func_module || f->func_annotations != t->func_annotations ||
        f->func_typeparams != t->func_typeparams) {
        return false;
    }
#if PY_VERSION_HEX >= 0x030E0000
    if (f->func_annotate != t->func_annotate) {
        return false;
    }
#endif
    PyObject *closure = PyFunction_GET_CLOSURE(func);
    if (closure == NULL || !PyTuple_CheckExact(closure) || Py_REFCNT(closure) != 1) {
        return false;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(closure); i++) {
        if (Py_REFCNT(PyTuple_GET_ITEM(closure, i)) != 1) {
            return false;
        }
    }
    return true;
#endif
}

/* The function cached for `id` in this interpreter (borrowed), or NULL
 * without an exception; never builds one. */
static PyObject *cached_function(bocpy_state *st, int64_t id) {
    bocpy_ft_lock(&st->ft_lock); /* see caches_add */
    PyObject *found = functions_get(st, id);
    bocpy_ft_unlock(&st->ft_lock);
    return found;
}

/* Whether `content`, the content of a closure cell about to be emptied, is
 * a function held only by that cell and by a cell of its own closure (a
 * launcher defined in a function, which schedules its next step: the
 * compact encoding's 'S', transfer.c) -- then its own cell is emptied
 * first, and emptying the other frees it at once.  Left as it is, each
 * behavior would leave a reference cycle for the cycle collector
 * (callgrind: about 1,200 instructions a behavior, in the worker's
 * collections).  The test needs exact reference counts: GIL builds only,
 * like function_unshared. */
static bool break_self_reference(PyObject *content) {
#ifdef Py_GIL_DISABLED
    (void)content;
    return false;
#else
    if (content == NULL || !PyFunction_Check(content) || Py_REFCNT(content) != 2) {
        return false;
    }
    PyObject *closure = PyFunction_GET_CLOSURE(content);
    if (closure == NULL || !PyTuple_CheckExact(closure) || Py_REFCNT(closure) != 1) {
        return false;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(closure); i++) {
        PyObject *cell = PyTuple_GET_ITEM(closure, i);
        if (PyCell_Check(cell) && Py_REFCNT(cell) == 1 && PyCell_GET(cell) == content) {
            (void)PyCell_Set(cell, NULL); /* its count is 2: nothing freed yet */
            return true;
        }
    }
    return false;
#endif
}

/* The registry id of `func`'s code in this interpreter, or -1 when it has
 * none yet; never adds one. */
static int64_t known_id(bocpy_state *st, PyObject *func) {
    bocpy_ft_lock(&st->ft_lock); /* see caches_add */
    int64_t id = codemap_find(st, PyFunction_GET_CODE(func));
    bocpy_ft_unlock(&st->ft_lock);
    return id;
}

/* Keeps `local` (a function whose self reference break_self_reference
 * emptied; a new reference, which passes) for the next compact decoding of
 * its code (bocpy_take_spare_local), emptied like a new one's: no closure
 * contents, no defaults.  Emptying may run destructors: take_spare checks
 * it again before any reuse. */
static void keep_local(bocpy_state *st, int64_t id, PyObject *local) {
    PyObject *closure = PyFunction_GET_CLOSURE(local);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(closure); i++) {
        (void)PyCell_Set(PyTuple_GET_ITEM(closure, i), NULL); /* fails only on a non-cell */
    }
    /* (Only when there are defaults: each set is a MODIFY_DEFAULTS event
     * for a function watcher.) */
    if (PyFunction_GET_DEFAULTS(local) != NULL && PyFunction_SetDefaults(local, Py_None) < 0) {
        PyErr_Clear(); /* fails only on a non-function */
        Py_DECREF(local);
        return;
    }
    set_spare(&st->spare_local, &st->spare_local_id, id, local);
}

PyObject *bocpy_take_spare_local(bocpy_state *st, int64_t id, Py_ssize_t ncells) {
    PyObject *func = st->spare_local;
    if (func == NULL || st->spare_local_id != id || PyFunction_GET_CLOSURE(func) == NULL ||
        PyTuple_GET_SIZE(PyFunction_GET_CLOSURE(func)) != ncells) {
        return NULL;
    }
    return take_spare(st, id, &st->spare_local);
}

void bocpy_function_done(bocpy_state *st, int64_t id, PyObject *func) {
    if (func == NULL) {
        return;
    }
    /* Every behavior comes here: most functions (the registry's template
     * for the defaults fast path, a body without a closure) fail this
     * cheap test, before any lookup. */
    if (Py_REFCNT(func) != 1 || !PyFunction_Check(func) || PyFunction_GET_CLOSURE(func) == NULL ||
        !function_unshared(func, cached_function(st, id), false)) {
        Py_DECREF(func);
        return;
    }
    /* Keep it, empty: the values go now (their destructors may run, and
     * may even build functions: st->spare_closure is not touched until
     * the cells are clear). */
    PyObject *closure = PyFunction_GET_CLOSURE(func);
    PyObject *local = NULL;
    int64_t local_id = -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(closure); i++) {
        PyObject *cell = PyTuple_GET_ITEM(closure, i);
        PyObject *content = PyCell_GET(cell);
        bool broken = break_self_reference(content);
        if (broken && local == NULL) {
            /* Held by this cell alone now: kept, if nothing about it
             * differs from a new one (with defaults, which are reset). */
            int64_t lid = known_id(st, content);
            if (lid >= 0 && function_unshared(content, cached_function(st, lid), true)) {
                local = Py_NewRef(content);
                local_id = lid;
            }
        }
        (void)PyCell_Set(cell, NULL); /* fails only on a non-cell */
    }
    if (local != NULL) {
        keep_local(st, local_id, local);
    }
    /* A destructor run by emptying the cells may have taken a reference
     * to the function, or cleared this state's caches: take_spare checks
     * it again before any reuse. */
    set_spare(&st->spare_closure, &st->spare_id, id, func);
}

PyObject *bocpy_registry_name(bocpy_state *st, int64_t id) {
    /* acquire pairs with registry_intern's release of the length. */
    if (id < 0 || (size_t)id >= atomic_load_explicit(&registry_len, memory_order_acquire)) {
        PyErr_Format(PyExc_ValueError, "unknown behavior code id %lld", (long long)id);
        return NULL;
    }
    registry_entry *e = registry_get(id);
    PyObject *bytes = PyBytes_FromStringAndSize(e->code, (Py_ssize_t)e->code_size);
    PyObject *code = bytes ? PyObject_CallOneArg(st->marshal_loads, bytes) : NULL;
    Py_XDECREF(bytes);
    PyObject *qualname = code ? PyObject_GetAttrString(code, "co_qualname") : NULL;
    Py_XDECREF(code);
    if (qualname == NULL) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromFormat("%s.%U", e->module, qualname);
    Py_DECREF(qualname);
    return name;
}
