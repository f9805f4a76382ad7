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
 *
 * A cown's value may instead MOVE (bocpy_serialise_move): objects of types
 * registered with <bocpy/move.h> (move.c) give up their buffer, which the
 * blob carries as a payload; the pickle refers to it by index, and reading
 * the blob attaches it to a new object.  The move is all or nothing: if
 * the pickle fails after some buffers were detached, they are restored to
 * the objects they came from before the error is reported.
 */
#include "bocpy.h"

#include <stddef.h>
#include <string.h>

/* A buffer detached by the pickle under way, with the object it came from
 * (a strong reference: restored into it if the pickle fails). */
typedef struct detached {
    const bocpy_move_entry *type;
    PyObject *source;
    void *payload;
} detached;

/* The cowns collected by the pickle under way on this thread, and, when it
 * moves (`move`), the buffers detached so far. */
typedef struct serialise_context {
    bocpy_cown **cowns;
    size_t count, capacity;
    bool move;
    detached *moves;
    size_t nmoves, moves_capacity;
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
    /* The pickle failed: the buffers go back where they came from (last
     * first, though each restore only touches its own object). */
    while (ctx->nmoves > 0) {
        detached *d = &ctx->moves[--ctx->nmoves];
        bocpy_move_restore(d->type, d->source, d->payload);
        Py_DECREF(d->source);
    }
}

PyObject *bocpy_transfer_reduce_move(bocpy_state *st, PyObject *obj) {
    serialise_context *ctx = tls_serialising;
    const bocpy_move_entry *type = bocpy_move_entry_of(st, obj);
    if (ctx == NULL || !ctx->move || type == NULL) {
        /* Not a move under way: pickle it as the type itself would. */
        return PyObject_CallMethod(obj, "__reduce_ex__", "O", st->protocol);
    }
    if (ctx->nmoves == ctx->moves_capacity) {
        size_t capacity = ctx->moves_capacity ? ctx->moves_capacity * 2 : 4;
        detached *grown = realloc(ctx->moves, capacity * sizeof(*grown));
        if (grown == NULL) {
            return PyErr_NoMemory();
        }
        ctx->moves = grown;
        ctx->moves_capacity = capacity;
    }
    void *payload = bocpy_move_detach(type, obj);
    if (payload == NULL) {
        return NULL;
    }
    ctx->moves[ctx->nmoves] = (detached){type, Py_NewRef(obj), payload};
    return Py_BuildValue("O(n)", st->move.rebuild, (Py_ssize_t)ctx->nmoves++);
}

PyObject *bocpy_transfer_take_move(bocpy_state *st, Py_ssize_t index) {
    const bocpy_blob *blob = tls_deserialising;
    if (blob == NULL || index < 0 || (size_t)index >= blob->nmoves) {
        PyErr_SetString(PyExc_ValueError,
                        "_rebuild_moved() is internal to bocpy: it only works while bocpy "
                        "rebuilds a cown's value");
        return NULL;
    }
    bocpy_moved *m = &blob->moves[index];
    return bocpy_move_attach(st, m->type, &m->payload);
}

/* Borrowed; imported on first use.  Free-threaded builds: two threads of
 * one interpreter may both import it; st->ft_lock makes exactly one result
 * stick (the other is dropped after the lock is released, so no destructor
 * runs under it), and the stored one lives as long as the module state. */
static PyObject *fallback_dumps(bocpy_state *st) {
    bocpy_ft_lock(&st->ft_lock);
    PyObject *found = st->fallback_dumps;
    bocpy_ft_unlock(&st->ft_lock);
    if (found != NULL) {
        return found;
    }
    PyObject *mod = PyImport_ImportModule("bocpy._pickling");
    if (mod == NULL) {
        return NULL;
    }
    PyObject *dumps = PyObject_GetAttrString(mod, "dumps");
    Py_DECREF(mod);
    if (dumps == NULL) {
        return NULL;
    }
    bocpy_ft_lock(&st->ft_lock);
    if (st->fallback_dumps == NULL) {
        st->fallback_dumps = Py_NewRef(dumps);
    }
    found = st->fallback_dumps;
    bocpy_ft_unlock(&st->ft_lock);
    Py_DECREF(dumps);
    return found;
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

/* pickle.dumps, except that registered move types go through the move
 * reducer (a dispatch_table only a Pickler instance can have). */
static PyObject *move_dumps(bocpy_state *st, PyObject *obj) {
    PyObject *buffer = PyObject_CallNoArgs(st->move.bytesio);
    if (buffer == NULL) {
        return NULL;
    }
    PyObject *args[2] = {buffer, st->protocol};
    PyObject *pickler = PyObject_Vectorcall(st->move.pickler, args, 2, NULL);
    PyObject *bytes = NULL;
    if (pickler != NULL &&
        PyObject_SetAttrString(pickler, "dispatch_table", st->move.dispatch) == 0) {
        /* One argument, passed as such: PyObject_CallMethod(..., "O", obj)
         * would take a tuple obj as the argument list and pickle obj[0]. */
        PyObject *name = PyUnicode_FromString("dump");
        PyObject *done = name ? PyObject_CallMethodOneArg(pickler, name, obj) : NULL;
        Py_XDECREF(name);
        if (done != NULL) {
            Py_DECREF(done);
            bytes = PyObject_CallMethod(buffer, "getvalue", NULL);
        }
    }
    Py_XDECREF(pickler);
    Py_DECREF(buffer);
    return bytes;
}

static void context_free(serialise_context *ctx) {
    context_reset(ctx);
    free(ctx->cowns);
    free(ctx->moves);
}

/* The bytes a blob of `size` data bytes takes (what it is allocated and
 * freed with). */
static inline size_t blob_bytes(size_t size) { return offsetof(bocpy_blob, data) + size; }

/* Small blobs (captures, results, the values of cowns: usually made by one
 * thread and freed by another, as behaviors are) come from libboc's
 * recycled blocks, which skip malloc's arena lock; larger ones from malloc,
 * since a block is zeroed (boc_block_alloc is calloc-like) and a big
 * pickle would be zero-filled only to be copied over. */
#define BLOB_BLOCK_MAX 512

static bocpy_blob *blob_alloc(size_t size) {
    size_t bytes = blob_bytes(size);
    return bytes <= BLOB_BLOCK_MAX ? boc_block_alloc(bytes) : malloc(bytes);
}

/* Frees `blob`, of `size` data bytes (blob->size once it is set). */
static void blob_release(bocpy_blob *blob, size_t size) {
    size_t bytes = blob_bytes(size);
    if (bytes <= BLOB_BLOCK_MAX) {
        boc_block_free(blob, bytes);
    } else {
        free(blob);
    }
}

/* A blob of `size` pickle bytes taking over the context's cowns and moved
 * buffers (the context is left empty), or NULL with MemoryError. */
static bocpy_blob *blob_new(serialise_context *ctx, const char *data, size_t size) {
    if (ctx->count > UINT32_MAX || ctx->nmoves > UINT32_MAX) {
        PyErr_SetString(PyExc_MemoryError, "a value holds more than 2**32 cowns or buffers");
        return NULL;
    }
    bocpy_blob *blob = blob_alloc(size);
    bocpy_moved *moves = ctx->nmoves ? malloc(ctx->nmoves * sizeof(*moves)) : NULL;
    if (blob == NULL || (ctx->nmoves > 0 && moves == NULL)) {
        if (blob != NULL) {
            blob_release(blob, size);
        }
        free(moves);
        PyErr_NoMemory();
        return NULL;
    }
    blob->size = size;
    blob->ncowns = (uint32_t)ctx->count;
    blob->cowns = ctx->cowns;
    blob->nmoves = (uint32_t)ctx->nmoves;
    blob->moves = moves;
    blob->whole = false;
    blob->compact = false;
    for (size_t i = 0; i < ctx->nmoves; i++) {
        moves[i] = (bocpy_moved){ctx->moves[i].type, ctx->moves[i].payload};
        Py_DECREF(ctx->moves[i].source); /* stale now: the blob has its buffer */
    }
    if (size > 0) {
        memcpy(blob->data, data, size);
    }
    free(ctx->moves);
    *ctx = (serialise_context){0};
    return blob;
}

/* A value that is itself a movable object: its buffer is the whole blob,
 * no pickle needed (the chain-of-behaviors fast path). */
static bocpy_blob *serialise_whole(const bocpy_move_entry *type, PyObject *obj) {
    void *payload = bocpy_move_detach(type, obj);
    if (payload == NULL) {
        return NULL;
    }
    serialise_context ctx = {.move = true};
    detached one = {type, Py_NewRef(obj), payload};
    ctx.moves = malloc(sizeof(one));
    if (ctx.moves == NULL) {
        bocpy_move_restore(type, obj, payload);
        Py_DECREF(obj);
        PyErr_NoMemory();
        return NULL;
    }
    ctx.moves[0] = one;
    ctx.nmoves = ctx.moves_capacity = 1;
    bocpy_blob *blob = blob_new(&ctx, NULL, 0);
    if (blob == NULL) {
        context_free(&ctx);
        return NULL;
    }
    blob->whole = true;
    return blob;
}

/* ------------------------------------------------------- compact values
 *
 * The commonest values to cross -- a behavior's small captures, an int or
 * str a cown holds, a result -- are plain immutable data.  Pickling them
 * costs more than the behavior: a Pickler and its memo made and freed, and
 * on the way in a Python-level call to loads.  Such values are instead
 * encoded here, in a few bytes read back by C:
 *
 *   'N' None   'T' True   'F' False
 *   'i' int that fits in int64_t, then its 8 bytes
 *   'f' float, then its 8 bytes
 *   's' str, then a uint32_t length and its UTF-8 bytes
 *   'b' bytes, then a uint32_t length and the bytes
 *   't' tuple, then a uint32_t length and each item
 *   'l' list, only as the whole value (depth 0), then a uint32_t length and
 *       each item
 *   'c' Cown (exact Cown or PinnedCown), then a uint32_t index into the
 *       blob's cowns (a strong reference each, as pickled cowns have)
 *   'g' a function defined inside another one (its __qualname__ holds
 *       "<locals>", so the pickler would send it by code too, see
 *       _pickling.py), then its int64_t registry id, its defaults (a value:
 *       None or a tuple), a uint32_t count of closure cells and each cell's
 *       content, where 'S' stands for the function itself (a launcher that
 *       schedules its own next step).  Not with keyword-only defaults, an
 *       empty cell, or the same function twice in the value (the pickler
 *       would keep one object): those go to the pickler.
 *
 * Only exact types qualify (a subclass may pickle itself differently), and
 * only immutable containers inside: a pickle keeps the aliasing of mutable
 * objects (`[a, a]` shares `a`), which a tree encoding would lose.  A list
 * as the whole value has nothing to alias it (one inside itself is not at
 * depth 0, so it goes to the pickler), which is why it may be compact: a
 * list of cowns, say, a script's global sent to every worker (bootstrap.c)
 * -- the pickler's memo and per-cown reduce tuples cost it hundreds of
 * bytes per item in both interpreters.  Anything else -- a bigger int, a
 * str with lone surrogates, a list inside a value, a nesting deeper than
 * COMPACT_DEPTH -- makes the whole value go to the pickler as before.  The
 * decoded value equals what unpickling would give. */

#define COMPACT_DEPTH 8
#define COMPACT_MAX_LEN 0x7fffffff

#define COMPACT_FUNCTIONS 4

typedef struct compact_buffer {
    char *data;
    size_t len, capacity;
    /* Functions encoded so far (only compared, never used: the value
     * being encoded holds them). */
    PyObject *functions[COMPACT_FUNCTIONS];
    int nfunctions;
    char small[256];
} compact_buffer;

static inline bool compact_reserve(compact_buffer *buf, size_t more) {
    if (buf->len + more <= buf->capacity) {
        return true;
    }
    size_t capacity = buf->capacity * 2;
    while (capacity < buf->len + more) {
        capacity *= 2;
    }
    char *grown = buf->data == buf->small ? malloc(capacity) : realloc(buf->data, capacity);
    if (grown == NULL) {
        PyErr_NoMemory();
        return false;
    }
    if (buf->data == buf->small) {
        memcpy(grown, buf->small, buf->len);
    }
    buf->data = grown;
    buf->capacity = capacity;
    return true;
}

static inline bool compact_put(compact_buffer *buf, char tag, const void *bytes, size_t size) {
    if (!compact_reserve(buf, 1 + size)) {
        return false;
    }
    buf->data[buf->len++] = tag;
    if (size > 0) {
        memcpy(buf->data + buf->len, bytes, size);
        buf->len += size;
    }
    return true;
}

static inline bool compact_put_sized(compact_buffer *buf, char tag, const char *bytes,
                                     size_t size) {
    uint32_t n = (uint32_t)size;
    if (!compact_put(buf, tag, &n, sizeof(n)) || !compact_reserve(buf, size)) {
        return false;
    }
    memcpy(buf->data + buf->len, bytes, size);
    buf->len += size;
    return true;
}

static int compact_encode(bocpy_state *st, compact_buffer *buf, PyObject *obj, int depth);

/* `n` items under `tag` ('t' or 'l'): a count, then each item, with
 * compact_encode's results. */
static int compact_encode_items(bocpy_state *st, compact_buffer *buf, char tag,
                                PyObject *const *items, Py_ssize_t n, int depth) {
    if (n > COMPACT_MAX_LEN) {
        return 0;
    }
    uint32_t n32 = (uint32_t)n;
    if (!compact_put(buf, tag, &n32, sizeof(n32))) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int rc = compact_encode(st, buf, items[i], depth + 1);
        if (rc <= 0) {
            return rc;
        }
    }
    return 1;
}

/* New references to `func`'s __qualname__ and __defaults__ (None when it has
 * none).  With a GIL, read from CPython's public PyFunctionObject fields
 * (cpython/funcobject.h): nothing else of this interpreter runs meanwhile.
 * Free-threaded, through getattr, as safe as CPython's own getters are
 * against another thread replacing them (a getattr by name costs about
 * 1,700 instructions; the threads backend, the default there, sends no
 * captures at all). */
static PyObject *function_field(PyObject *func, bool qualname) {
#ifdef Py_GIL_DISABLED
    return PyObject_GetAttrString(func, qualname ? "__qualname__" : "__defaults__");
#else
    const PyFunctionObject *f = (const PyFunctionObject *)func;
    if (qualname) {
        return Py_NewRef(f->func_qualname);
    }
    return Py_NewRef(f->func_defaults != NULL ? f->func_defaults : Py_None);
#endif
}

/* A function defined inside another (see 'g' above), with compact_encode's
 * results. */
static int compact_encode_function(bocpy_state *st, compact_buffer *buf, PyObject *func,
                                   int depth) {
    if (depth >= COMPACT_DEPTH || buf->nfunctions == COMPACT_FUNCTIONS ||
        PyFunction_GET_KW_DEFAULTS(func) != NULL) {
        return 0;
    }
    for (int i = 0; i < buf->nfunctions; i++) {
        if (buf->functions[i] == func) {
            return 0; /* twice in one value: the pickler keeps one object */
        }
    }
    /* New references: on free-threaded builds another thread may replace
     * either meanwhile (the closure tuple itself cannot be replaced). */
    PyObject *qualname = function_field(func, true);
    if (qualname == NULL) {
        return -1;
    }
    const char *text = PyUnicode_Check(qualname) ? PyUnicode_AsUTF8(qualname) : NULL;
    bool local = text != NULL && strstr(text, "<locals>") != NULL;
    Py_DECREF(qualname);
    if (!local) {
        PyErr_Clear(); /* a str with lone surrogates: not ours either */
        return 0;      /* maybe importable: the pickler sends it by name */
    }
    int64_t id = bocpy_registry_id_for(st, func);
    if (id < 0) {
        PyErr_Clear(); /* the pickler reports why it cannot be sent */
        return 0;
    }
    buf->functions[buf->nfunctions++] = func;
    if (!compact_put(buf, 'g', &id, sizeof(id))) {
        return -1;
    }
    PyObject *defaults = function_field(func, false);
    if (defaults == NULL) {
        return -1;
    }
    int rc = compact_encode(st, buf, defaults, depth + 1);
    Py_DECREF(defaults);
    if (rc <= 0) {
        return rc;
    }
    PyObject *closure = PyFunction_GET_CLOSURE(func);
    Py_ssize_t n = closure != NULL ? PyTuple_GET_SIZE(closure) : 0;
    uint32_t n32 = (uint32_t)n;
    if (!compact_put(buf, 'n', &n32, sizeof(n32))) {
        return -1;
    }
    for (Py_ssize_t i = 0; rc > 0 && i < n; i++) {
        /* A new reference (PyCell_Get): another thread may rebind the
         * variable meanwhile on free-threaded builds. */
        PyObject *content = PyCell_Get(PyTuple_GET_ITEM(closure, i));
        if (content == NULL) {
            rc = PyErr_Occurred() ? -1 : 0; /* an empty cell: the pickler's way */
        } else if (content == func) {
            rc = compact_put(buf, 'S', NULL, 0) ? 1 : -1;
        } else {
            rc = compact_encode(st, buf, content, depth + 1);
        }
        Py_XDECREF(content);
    }
    return rc;
}

/* 1: encoded; 0: not a compact value (no exception; the buffer may hold
 * part of it, and the context cowns it collected); -1: exception set. */
static int compact_encode(bocpy_state *st, compact_buffer *buf, PyObject *obj, int depth) {
    PyTypeObject *type = Py_TYPE(obj);
    if (obj == Py_None) {
        return compact_put(buf, 'N', NULL, 0) ? 1 : -1;
    }
    if (obj == Py_True || obj == Py_False) {
        return compact_put(buf, obj == Py_True ? 'T' : 'F', NULL, 0) ? 1 : -1;
    }
    if (type == &PyLong_Type) {
        int64_t v64;
        if (PyUnstable_Long_IsCompact((PyLongObject *)obj)) {
            v64 = (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)obj); /* one digit */
        } else {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
            if (overflow != 0) {
                return 0;
            }
            v64 = (int64_t)v;
        }
        return compact_put(buf, 'i', &v64, sizeof(v64)) ? 1 : -1;
    }
    if (type == &PyFloat_Type) {
        double v = PyFloat_AS_DOUBLE(obj);
        return compact_put(buf, 'f', &v, sizeof(v)) ? 1 : -1;
    }
    if (type == &PyUnicode_Type) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &size);
        if (utf8 == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                return -1;
            }
            PyErr_Clear(); /* lone surrogates: the pickler knows how */
            return 0;
        }
        if (size > COMPACT_MAX_LEN) {
            return 0;
        }
        return compact_put_sized(buf, 's', utf8, (size_t)size) ? 1 : -1;
    }
    if (type == &PyBytes_Type) {
        Py_ssize_t size = PyBytes_GET_SIZE(obj);
        if (size > COMPACT_MAX_LEN) {
            return 0;
        }
        return compact_put_sized(buf, 'b', PyBytes_AS_STRING(obj), (size_t)size) ? 1 : -1;
    }
    if (type == &PyTuple_Type) {
        if (depth >= COMPACT_DEPTH) {
            return 0;
        }
        return compact_encode_items(st, buf, 't', PySequence_Fast_ITEMS(obj), PyTuple_GET_SIZE(obj),
                                    depth);
    }
    if (type == &PyList_Type && depth == 0) {
        /* A snapshot (PyList_AsTuple copies the items under the list's own
         * lock on free-threaded builds) rather than a read of the list
         * itself: the tuple owns its items, so another thread changing the
         * list meanwhile cannot free an item under us.  (A critical section
         * around the read is not enough: encoding a str may block on the
         * str's own lock, which suspends the list's.) */
        if (PyList_GET_SIZE(obj) > COMPACT_MAX_LEN) { /* a hint; checked again */
            return 0;
        }
        PyObject *items = PyList_AsTuple(obj);
        if (items == NULL) {
            return -1;
        }
        int rc = compact_encode_items(st, buf, 'l', PySequence_Fast_ITEMS(items),
                                      PyTuple_GET_SIZE(items), depth);
        Py_DECREF(items);
        return rc;
    }
    if (type == &PyFunction_Type) {
        return compact_encode_function(st, buf, obj, depth);
    }
    if (type == st->cown_type || type == st->pinned_type) {
        Py_ssize_t index = bocpy_transfer_add_cown(((CownObject *)obj)->cown);
        if (index < 0) {
            return -1; /* memory error: the serialising context is always set here */
        }
        uint32_t i32 = (uint32_t)index;
        return compact_put(buf, 'c', &i32, sizeof(i32)) ? 1 : -1;
    }
    return 0;
}

typedef struct compact_reader {
    const char *at, *end;
    const bocpy_blob *blob;
} compact_reader;

static inline bool compact_take(compact_reader *r, void *out, size_t size) {
    if ((size_t)(r->end - r->at) < size) {
        return false;
    }
    memcpy(out, r->at, size);
    r->at += size;
    return true;
}

static PyObject *compact_corrupt(void) {
    PyErr_SetString(PyExc_SystemError, "bocpy: a compact value blob is corrupt");
    return NULL;
}

static PyObject *compact_decode(bocpy_state *st, compact_reader *r);

/* The rest of a 'g' (see the encoding above): a new function of this
 * interpreter, built as _core._rebuild_function would. */
static PyObject *compact_decode_function(bocpy_state *st, compact_reader *r) {
    int64_t id;
    if (!compact_take(r, &id, sizeof(id))) {
        return compact_corrupt();
    }
    PyObject *defaults = compact_decode(st, r);
    if (defaults == NULL) {
        return NULL;
    }
    char tag;
    uint32_t n;
    if (!compact_take(r, &tag, 1) || tag != 'n' || !compact_take(r, &n, sizeof(n)) ||
        (size_t)(r->end - r->at) < n) {
        Py_DECREF(defaults);
        return compact_corrupt();
    }
    /* Empty cells first: the function exists before its contents are
     * decoded, so that 'S' can refer to it.  The function the last
     * behavior of this code left (bocpy_function_done) has them already:
     * only its defaults and contents are set. */
    PyObject *func = bocpy_take_spare_local(st, id, (Py_ssize_t)n);
    PyObject *cells = NULL;
    if (func != NULL) {
        cells = Py_NewRef(PyFunction_GET_CLOSURE(func)); /* filled below */
    } else {
        cells = PyTuple_New((Py_ssize_t)n);
    }
    for (uint32_t i = 0; func == NULL && cells != NULL && i < n; i++) {
        PyObject *cell = PyCell_New(NULL);
        if (cell == NULL) {
            Py_CLEAR(cells);
            break;
        }
        PyTuple_SET_ITEM(cells, (Py_ssize_t)i, cell);
    }
    PyObject *template = func == NULL && cells != NULL ? bocpy_registry_function(st, id) : NULL;
    if (template != NULL) {
        PyObject *code = PyFunction_GET_CODE(template);
        if (PyCode_GetNumFree((PyCodeObject *)code) != (Py_ssize_t)n) {
            compact_corrupt();
        } else {
            func = PyFunction_New(code, PyFunction_GET_GLOBALS(template));
        }
    }
    if (func != NULL && defaults != Py_None && PyFunction_SetDefaults(func, defaults) < 0) {
        Py_CLEAR(func);
    }
    Py_DECREF(defaults);
    if (func != NULL && n > 0 && PyFunction_GET_CLOSURE(func) != cells &&
        PyFunction_SetClosure(func, cells) < 0) {
        Py_CLEAR(func);
    }
    for (uint32_t i = 0; func != NULL && i < n; i++) {
        PyObject *content;
        if (r->at < r->end && *r->at == 'S') {
            r->at++;
            content = Py_NewRef(func);
        } else {
            content = compact_decode(st, r);
        }
        if (content == NULL || PyCell_Set(PyTuple_GET_ITEM(cells, (Py_ssize_t)i), content) < 0) {
            Py_XDECREF(content);
            Py_CLEAR(func);
            break;
        }
        Py_DECREF(content);
    }
    Py_XDECREF(cells);
    return func;
}

static PyObject *compact_decode(bocpy_state *st, compact_reader *r) {
    char tag;
    if (!compact_take(r, &tag, 1)) {
        return compact_corrupt();
    }
    switch (tag) {
    case 'N':
        Py_RETURN_NONE;
    case 'T':
        Py_RETURN_TRUE;
    case 'F':
        Py_RETURN_FALSE;
    case 'i': {
        int64_t v;
        return compact_take(r, &v, sizeof(v)) ? PyLong_FromLongLong((long long)v)
                                              : compact_corrupt();
    }
    case 'f': {
        double v;
        return compact_take(r, &v, sizeof(v)) ? PyFloat_FromDouble(v) : compact_corrupt();
    }
    case 's':
    case 'b': {
        uint32_t n;
        if (!compact_take(r, &n, sizeof(n)) || (size_t)(r->end - r->at) < n) {
            return compact_corrupt();
        }
        const char *bytes = r->at;
        r->at += n;
        return tag == 's' ? PyUnicode_DecodeUTF8(bytes, (Py_ssize_t)n, "strict")
                          : PyBytes_FromStringAndSize(bytes, (Py_ssize_t)n);
    }
    case 't':
    case 'l': {
        uint32_t n;
        if (!compact_take(r, &n, sizeof(n)) || (size_t)(r->end - r->at) < n) {
            return compact_corrupt(); /* each item takes at least a byte */
        }
        bool tuple = tag == 't';
        PyObject *seq = tuple ? PyTuple_New((Py_ssize_t)n) : PyList_New((Py_ssize_t)n);
        for (uint32_t i = 0; seq != NULL && i < n; i++) {
            PyObject *item = compact_decode(st, r);
            if (item == NULL) {
                Py_CLEAR(seq);
                break;
            }
            if (tuple) {
                PyTuple_SET_ITEM(seq, (Py_ssize_t)i, item);
            } else {
                PyList_SET_ITEM(seq, (Py_ssize_t)i, item);
            }
        }
        return seq;
    }
    case 'c': {
        uint32_t index;
        if (!compact_take(r, &index, sizeof(index)) || index >= r->blob->ncowns) {
            return compact_corrupt();
        }
        return bocpy_cown_wrap(st, r->blob->cowns[index]);
    }
    case 'g':
        return compact_decode_function(st, r);
    default:
        return compact_corrupt();
    }
}

static void compact_begin(compact_buffer *buf) {
    buf->data = buf->small;
    buf->len = 0;
    buf->capacity = sizeof(buf->small);
    buf->nfunctions = 0;
}

/* The blob of `buf` when `rc` (compact_encode's result) is 1, else NULL
 * (with compact_encode's exception, if any); frees `buf`.  On NULL the
 * context is reset. */
static bocpy_blob *compact_end(serialise_context *ctx, compact_buffer *buf, int rc) {
    bocpy_blob *blob = rc > 0 ? blob_new(ctx, buf->data, buf->len) : NULL;
    if (buf->data != buf->small) {
        free(buf->data);
    }
    if (blob == NULL) {
        context_reset(ctx);
        return NULL;
    }
    blob->compact = true;
    return blob;
}

/* A compact blob for `obj`, NULL with no exception when `obj` is not a
 * compact value, or NULL with an exception.  Called with `ctx` installed
 * as this thread's serialising context; on NULL the context is reset. */
static bocpy_blob *compact_serialise(bocpy_state *st, serialise_context *ctx, PyObject *obj) {
    compact_buffer buf;
    compact_begin(&buf);
    return compact_end(ctx, &buf, compact_encode(st, &buf, obj, 0));
}

#define CELLS_MAX 16

bocpy_blob *bocpy_serialise_cells(bocpy_state *st, PyObject *closure) {
    Py_ssize_t n = PyTuple_GET_SIZE(closure);
    if (n > CELLS_MAX) {
        return NULL;
    }
    /* Each cell read once, with PyCell_Get (a new reference: safe on
     * free-threaded builds while another thread rebinds the cell), and
     * held until the blob is made: the encoder compares functions by
     * address (compact_buffer.functions). */
    PyObject *contents[CELLS_MAX];
    Py_ssize_t taken = 0;
    while (taken < n && (contents[taken] = PyCell_Get(PyTuple_GET_ITEM(closure, taken))) != NULL) {
        taken++;
    }
    bocpy_blob *blob = NULL;
    if (taken == n) { /* else a cell is empty (no exception: they are cells) */
        serialise_context ctx = {0};
        serialise_context *outer = tls_serialising;
        tls_serialising = &ctx;
        compact_buffer buf;
        compact_begin(&buf);
        /* Encoded as the tuple of contents would be, at depth 0. */
        int rc = compact_encode_items(st, &buf, 't', contents, n, 0);
        blob = compact_end(&ctx, &buf, rc);
        tls_serialising = outer;
        context_free(&ctx);
    }
    for (Py_ssize_t i = 0; i < taken; i++) {
        Py_DECREF(contents[i]);
    }
    return blob;
}

static bocpy_blob *serialise(bocpy_state *st, PyObject *obj, bool move) {
    move = move && bocpy_move_any(st);
    if (move) {
        const bocpy_move_entry *type = bocpy_move_entry_of(st, obj);
        if (type != NULL) {
            return serialise_whole(type, obj);
        }
    }
    serialise_context ctx = {.move = move};
    serialise_context *outer = tls_serialising;
    tls_serialising = &ctx;

    /* No compact value holds a movable object: `move` changes nothing. */
    bocpy_blob *compact = compact_serialise(st, &ctx, obj);
    if (compact != NULL || PyErr_Occurred()) {
        tls_serialising = outer;
        context_free(&ctx);
        return compact;
    }

    PyObject *bytes;
    if (PyExceptionInstance_Check(obj)) {
        /* Exceptions go to the extended pickler straight away: the standard
         * recipe loses __cause__/__context__ and calls __init__ with
         * whatever args ended up as, which many exception classes refuse
         * (see bocpy/_pickling.py). */
        PyObject *fallback = fallback_dumps(st);
        if (fallback == NULL) {
            bytes = NULL;
        } else if (move) {
            bytes = PyObject_CallFunctionObjArgs(fallback, obj, st->move.dispatch, NULL);
        } else {
            bytes = PyObject_CallOneArg(fallback, obj);
        }
        if (bytes == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
            raise_untransferable(obj);
        }
    } else if (move) {
        bytes = move_dumps(st, obj);
    } else {
        PyObject *args[2] = {obj, st->protocol};
        bytes = PyObject_Vectorcall(st->dumps, args, 2, NULL);
    }
    if (bytes == NULL && !PyExceptionInstance_Check(obj) &&
        PyErr_ExceptionMatches(PyExc_Exception)) {
        /* The C pickler gave up; the extended one may know how.  (Anything
         * else -- KeyboardInterrupt, MemoryError's cousins -- propagates.) */
        PyObject *first = PyErr_GetRaisedException();
        context_reset(&ctx);
        PyObject *fallback = fallback_dumps(st);
        if (fallback != NULL) {
            bytes = move ? PyObject_CallFunctionObjArgs(fallback, obj, st->move.dispatch, NULL)
                         : PyObject_CallOneArg(fallback, obj);
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
    char *data;
    Py_ssize_t size;
    if (bytes == NULL || PyBytes_AsStringAndSize(bytes, &data, &size) < 0) {
        Py_XDECREF(bytes);
        context_free(&ctx);
        return NULL;
    }
    bocpy_blob *blob = blob_new(&ctx, data, (size_t)size);
    Py_DECREF(bytes);
    if (blob == NULL) {
        context_free(&ctx);
    }
    return blob;
}

bocpy_blob *bocpy_serialise(bocpy_state *st, PyObject *obj) { return serialise(st, obj, false); }

bocpy_blob *bocpy_serialise_move(bocpy_state *st, PyObject *obj) {
    return serialise(st, obj, true);
}

/*
 * The unpickler, called from a Python frame.  Worker threads rebuild values
 * from C with no Python frame on their stack, where a reducer that needs
 * one (`eval`, `exec`, `globals()`) fails with "SystemError: frame does not
 * exist"; messages, unpickled under receive() from Python code, have one.
 * So st->loads is replaced, the first time, by a one-line Python function
 * (bocpy._pickling._loads_in_frame) whose globals are this interpreter's
 * __main__ namespace -- what a behavior of the script sees -- with
 * pickle.loads as its default argument; it is rebuilt when __main__ changes
 * (a kept worker gets a fresh one at each start).  Returns a borrowed
 * reference, or NULL with an exception set.
 */
static PyObject *loads_in_frame(bocpy_state *st) {
    PyObject *main = PyImport_AddModule("__main__"); /* borrowed */
    PyObject *globals = main != NULL ? PyModule_GetDict(main) : NULL;
    if (globals == NULL) {
        return NULL;
    }
    PyObject *plain = st->loads;
    if (PyFunction_Check(st->loads)) {
        if (PyFunction_GET_GLOBALS(st->loads) == globals) {
            return st->loads;
        }
        plain = PyTuple_GET_ITEM(PyFunction_GET_DEFAULTS(st->loads), 0);
    }
    PyObject *pickling = PyImport_ImportModule("bocpy._pickling");
    PyObject *model = pickling ? PyObject_GetAttrString(pickling, "_loads_in_frame") : NULL;
    Py_XDECREF(pickling);
    if (model == NULL) {
        return NULL;
    }
    if (!PyFunction_Check(model)) {
        Py_DECREF(model);
        PyErr_SetString(PyExc_SystemError, "bocpy._pickling._loads_in_frame is not a function");
        return NULL;
    }
    PyObject *func = PyFunction_New(PyFunction_GET_CODE(model), globals);
    Py_DECREF(model);
    PyObject *defaults = func ? PyTuple_Pack(1, plain) : NULL;
    if (defaults == NULL || PyFunction_SetDefaults(func, defaults) < 0) {
        Py_XDECREF(defaults);
        Py_XDECREF(func);
        return NULL;
    }
    Py_DECREF(defaults);
    Py_SETREF(st->loads, func);
    return func;
}

PyObject *bocpy_deserialise(bocpy_state *st, const bocpy_blob *blob) {
    if (blob->whole) {
        return bocpy_move_attach(st, blob->moves[0].type, &blob->moves[0].payload);
    }
    if (blob->compact) {
        compact_reader reader = {blob->data, blob->data + blob->size, blob};
        PyObject *value = compact_decode(st, &reader);
        if (value != NULL && reader.at != reader.end) {
            Py_DECREF(value);
            return compact_corrupt();
        }
        return value;
    }
    PyObject *loads = loads_in_frame(st);
    if (loads == NULL) {
        return NULL;
    }
    const bocpy_blob *outer = tls_deserialising;
    tls_deserialising = blob;
    /* Zero-copy view: the unpickler copies whatever it keeps. */
    PyObject *view =
        PyMemoryView_FromMemory((char *)blob->data, (Py_ssize_t)blob->size, PyBUF_READ);
    PyObject *value = NULL;
    if (view != NULL) {
        value = PyObject_CallOneArg(loads, view);
        Py_DECREF(view);
    }
    tls_deserialising = outer;
    return value;
}

int bocpy_deserialise_cells(bocpy_state *st, const bocpy_blob *blob, PyObject *closure) {
    if (!blob->compact) {
        return 0;
    }
    compact_reader reader = {blob->data, blob->data + blob->size, blob};
    char tag;
    uint32_t n;
    if (!compact_take(&reader, &tag, 1) || tag != 't' || !compact_take(&reader, &n, sizeof(n)) ||
        (Py_ssize_t)n != PyTuple_GET_SIZE(closure)) {
        return 0; /* a mismatch is reported by the general way */
    }
    for (uint32_t i = 0; i < n; i++) {
        PyObject *content = compact_decode(st, &reader);
        if (content == NULL) {
            return -1;
        }
        int rc = PyCell_Set(PyTuple_GET_ITEM(closure, (Py_ssize_t)i), content);
        Py_DECREF(content);
        if (rc < 0) {
            return -1;
        }
    }
    if (reader.at != reader.end) {
        compact_corrupt();
        return -1;
    }
    return 1;
}

void bocpy_blob_free(bocpy_blob *blob) {
    if (blob == NULL) {
        return;
    }
    for (size_t i = 0; i < blob->ncowns; i++) {
        boc_cown_decref(&blob->cowns[i]->base);
    }
    /* Buffers never attached: their type frees them (no GIL needed). */
    for (size_t i = 0; i < blob->nmoves; i++) {
        bocpy_move_free(blob->moves[i].type, blob->moves[i].payload);
    }
    free(blob->cowns);
    free(blob->moves);
    blob_release(blob, blob->size);
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
