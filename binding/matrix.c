/*
 * matrix.c: bocpy.Matrix, a dense 2-D matrix of doubles that works in every
 * interpreter (the main one and each worker sub-interpreter).
 *
 * Layout.  A MatrixObject holds a `bocpy_matrix_buffer` (matrix.h): the data
 * pointer, rows and columns in a plain C struct.  The numbers live in their
 * own 64-byte aligned block, never inside the Python object, so the block can
 * be detached from a Matrix in one interpreter and attached to a new Matrix
 * in another (bocpy_matrix_detach/attach) with no copy.  A detached Matrix
 * has `data == NULL`; every operation on it raises RuntimeError, so a stale
 * reference left behind by a move never reads freed memory.
 *
 * Interpreters.  The type is a heap type made from a PyType_Spec per module
 * (module state holds it); this file has no static types and no C globals
 * holding Python objects.  Whether an object is a Matrix is decided by its
 * type's tp_dealloc being matrix_dealloc, which is the same C function in
 * every interpreter: a cheap check that needs no module state.
 *
 * Aliasing.  Matrices never share buffers (there are no views: slicing
 * copies), so two operands either are the same block or do not overlap at
 * all.  Element-wise kernels read element i of each input before writing
 * element i of the output, so `out=` and in-place forms may alias an input.
 *
 * Buffer exports.  memoryview/NumPy see the block itself.  While any export
 * is live (`exports > 0`) nothing may free, replace or reshape the block:
 * those operations raise BufferError.
 *
 * Speed.  The kernels are plain loops over `restrict` pointers that GCC and
 * Clang vectorise (with GCC on x86-64 glibc, also as AVX2 copies picked at
 * load time: MATRIX_CLONES); sums along axis 0 fold four rows per pass over
 * the accumulating row, and min/max run in independent lanes; `@` is a
 * cache-blocked kernel (B packed into panels, a 6x8 register tile
 * accumulated over a block of k), with an AVX2/FMA version picked at run
 * time on x86-64.  Methods use METH_FASTCALL and a small
 * keyword parser so that operations on 2-element vectors in a Python loop
 * cost little more than the object allocation.
 */
/* Element-wise loops are vectorised at -O3; contraction of a * b + c into
 * one fused operation is off so results are the same on every machine
 * (fma() is the explicit fused form). */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("O3", "fp-contract=off")
#endif

#include "matrix.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MATRIX_HAVE_AVX2_KERNEL 1
#endif

/* Element-wise kernels and sums are compiled twice on x86-64 with GCC and
 * glibc: once for AVX2 (4 doubles per instruction) and once for the baseline
 * (SSE2), the copy picked by an ifunc when the extension loads.  Elsewhere
 * (Clang, musl, other architectures, other systems) they are compiled once
 * for the baseline.  fp-contract is off, so both copies round alike. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) &&       \
    defined(__has_attribute)
#if __has_attribute(target_clones)
#define MATRIX_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef MATRIX_CLONES
#define MATRIX_CLONES
#endif

#include "bocpy.h"

#define MATRIX_ALIGN 64
/* Blocks at least this large are advised to use transparent huge pages:
 * a fresh multi-megabyte result otherwise costs one page fault per 4 KiB. */
#define MATRIX_HUGE_BYTES ((size_t)4 << 20)

typedef struct {
    PyObject_HEAD bocpy_matrix_buffer buf;
    /* Live buffer exports (memoryview, NumPy).  Touched with the owning
     * interpreter's GIL held only. */
    Py_ssize_t exports;
    /* Shape and strides handed to buffer consumers; valid while exported
     * (the shape cannot change then). */
    Py_ssize_t view_shape[2];
    Py_ssize_t view_strides[2];
} MatrixObject;

static void matrix_dealloc(PyObject *self);

bool bocpy_matrix_check(PyObject *obj) { return Py_TYPE(obj)->tp_dealloc == matrix_dealloc; }

#define IS_MATRIX(o) (Py_TYPE(o)->tp_dealloc == matrix_dealloc)
#define M(o) ((MatrixObject *)(o))

/* ------------------------------------------------------------- buffers */

/*
 * Blocks come from malloc, over-allocated by MATRIX_ALIGN and shifted up to
 * the next 64-byte boundary (posix_memalign costs several times more for
 * the small blocks of 2-element vectors).  The shift, 1..64 bytes, is kept
 * in the byte just below the data, so freeing needs only the data pointer:
 * always free with buffer_free.
 */
static double *buffer_alloc(Py_ssize_t count, bool zero) {
    assert(count >= 1);
    size_t bytes = (size_t)count * sizeof(double);
    unsigned char *block = malloc(bytes + MATRIX_ALIGN);
    if (block == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    unsigned char *data =
        (unsigned char *)(((uintptr_t)block + MATRIX_ALIGN) & ~(uintptr_t)(MATRIX_ALIGN - 1));
    data[-1] = (unsigned char)(data - block);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= MATRIX_HUGE_BYTES) {
        uintptr_t start = ((uintptr_t)data + 4095) & ~(uintptr_t)4095;
        uintptr_t end = ((uintptr_t)data + bytes) & ~(uintptr_t)4095;
        if (end > start) {
            (void)madvise((void *)start, end - start, MADV_HUGEPAGE); /* advice only */
        }
    }
#endif
    if (zero) {
        memset(data, 0, bytes);
    }
    return (double *)data;
}

static void buffer_free(double *data) {
    if (data != NULL) {
        unsigned char *p = (unsigned char *)data;
        free(p - p[-1]);
    }
}

void bocpy_matrix_buffer_free(bocpy_matrix_buffer *buf) {
    buffer_free(buf->data);
    buf->data = NULL;
    buf->rows = buf->columns = 0;
}

/* rows * columns, or -1 with ValueError when a dimension is not positive or
 * the block would not fit in memory's address range. */
static Py_ssize_t checked_size(Py_ssize_t rows, Py_ssize_t columns) {
    if (rows < 1 || columns < 1) {
        PyErr_Format(PyExc_AssertionError,
                     "Rows and columns must both be > 0 (got %zd x %zd); a Matrix cannot be "
                     "empty",
                     rows, columns);
        return -1;
    }
    if (columns > (PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) / rows) {
        PyErr_Format(PyExc_ValueError, "Matrix dimensions are too large (%zd x %zd)", rows,
                     columns);
        return -1;
    }
    return rows * columns;
}

/* 0 when `m` holds data, else -1 with the RuntimeError every movable type
 * raises once its buffer was handed over (<bocpy/move.h>). */
static inline int live(MatrixObject *m) {
    if (m->buf.data != NULL) {
        return 0;
    }
    (void)BocPyMove_SetStaleError((PyObject *)m);
    return -1;
}

static inline Py_ssize_t msize(MatrixObject *m) { return m->buf.rows * m->buf.columns; }

/* A new rows x columns Matrix of type `tp` (uninitialised unless `zero`). */
static MatrixObject *matrix_new(PyTypeObject *tp, Py_ssize_t rows, Py_ssize_t columns, bool zero) {
    Py_ssize_t n = checked_size(rows, columns);
    if (n < 0) {
        return NULL;
    }
    double *data = buffer_alloc(n, zero);
    if (data == NULL) {
        return NULL;
    }
    MatrixObject *m = PyObject_New(MatrixObject, tp);
    if (m == NULL) {
        buffer_free(data);
        return NULL;
    }
    m->buf.data = data;
    m->buf.rows = rows;
    m->buf.columns = columns;
    m->exports = 0;
    return m;
}

static void matrix_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    assert(M(self)->exports == 0);
    /* A stale Matrix (moved away) has data == NULL: the block belongs to
     * whoever holds it now, and buffer_free(NULL) does nothing. */
    bocpy_matrix_buffer_free(&M(self)->buf);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static int shape_error(const char *what, MatrixObject *m, Py_ssize_t rows, Py_ssize_t columns) {
    PyErr_Format(PyExc_ValueError, "%s shape %zdx%zd does not match result %zdx%zd", what,
                 m->buf.rows, m->buf.columns, rows, columns);
    return -1;
}

static int export_error(const char *what) {
    PyErr_Format(PyExc_BufferError,
                 "cannot %s a Matrix while a memoryview or NumPy array uses its buffer; "
                 "release the view first",
                 what);
    return -1;
}

/* ----------------------------------------------------------- arguments */

/*
 * Binds FASTCALL arguments to `nparams` parameters named `names`.  The first
 * `npos_only` are positional-only, those from `max_positional` on are
 * keyword-only, the first `nrequired` must be given.  Missing optional ones
 * are left NULL in `out` (borrowed references).
 */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int nparams, int npos_only, int max_positional,
                      int nrequired, PyObject **out) {
    if (nargs > max_positional) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional argument%s (%zd given)",
                     fname, max_positional, max_positional == 1 ? "" : "s", nargs);
        return -1;
    }
    for (int i = 0; i < nparams; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nkw; k++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            const char *kname = PyUnicode_AsUTF8(key);
            if (kname == NULL) {
                return -1;
            }
            int found = -1;
            for (int i = npos_only; i < nparams; i++) {
                if (strcmp(kname, names[i]) == 0) {
                    found = i;
                    break;
                }
            }
            if (found < 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%s'", fname,
                             kname);
                return -1;
            }
            if (out[found] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                             kname);
                return -1;
            }
            out[found] = args[nargs + k];
        }
    }
    for (int i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

/* A real number (int, bool, float or anything with __float__/__index__ that
 * is not a str/bytes) as a double: 1, 0 when `obj` is not a number (nothing
 * set), -1 on error (e.g. an int too large for a double). */
static int as_real(PyObject *obj, double *out) {
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 1;
    }
    if (PyLong_Check(obj)) {
        double v = PyLong_AsDouble(obj);
        if (v == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        *out = v;
        return 1;
    }
    if (PyFloat_Check(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 1;
    }
    PyNumberMethods *nb = Py_TYPE(obj)->tp_as_number;
    if (nb != NULL && (nb->nb_float != NULL || nb->nb_index != NULL) && !IS_MATRIX(obj)) {
        double v = PyFloat_AsDouble(obj);
        if (v == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        *out = v;
        return 1;
    }
    return 0;
}

/* A double argument named `what` of function `fname`. */
static int real_arg(const char *fname, const char *what, PyObject *obj, double *out) {
    int r = as_real(obj, out);
    if (r == 0) {
        PyErr_Format(PyExc_TypeError, "%s(): %s must be a real number, not '%.200s'", fname, what,
                     Py_TYPE(obj)->tp_name);
    }
    return r < 0 || r == 0 ? -1 : 0;
}

/* An axis argument: -1 for None, else 0 or 1 (negative counts from the end). */
static int axis_arg(PyObject *obj, int *axis) {
    if (obj == NULL || obj == Py_None) {
        *axis = -1;
        return 0;
    }
    if (PyBool_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "axis must be an int or None, not bool");
        return -1;
    }
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "axis must be an int or None, not '%.200s'",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow || v < -2 || v > 1) {
        PyErr_Format(PyExc_ValueError, "axis must be -2, -1, 0, or 1 (or None), not %R", obj);
        return -1;
    }
    *axis = v < 0 ? (int)(v + 2) : (int)v;
    return 0;
}

/* The 0/1 axis of take/put/concat: KeyError otherwise (the reference's type). */
static int axis01_arg(PyObject *obj, int *axis) {
    if (obj == NULL) {
        *axis = 0;
        return 0;
    }
    if (PyLong_Check(obj)) {
        int overflow = 0;
        long v = PyLong_AsLongAndOverflow(obj, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (!overflow && (v == 0 || v == 1)) {
            *axis = (int)v;
            return 0;
        }
    }
    PyErr_Format(PyExc_KeyError, "Invalid axis %R (must be 0 or 1)", obj);
    return -1;
}

static int bool_arg(PyObject *obj, bool *out) {
    if (obj == NULL) {
        *out = false;
        return 0;
    }
    int r = PyObject_IsTrue(obj);
    if (r < 0) {
        return -1;
    }
    *out = r != 0;
    return 0;
}

/* ------------------------------------------------------------ operands */

/*
 * An operand of an element-wise operation: a Matrix, a real number (a 1x1
 * block holding `scalar`) or a list/tuple of numbers (a 1xN row copied into
 * `owned`).  Broadcasting treats every dimension of size 1 as repeating.
 */
typedef struct {
    const double *data;
    Py_ssize_t rows, columns;
    double scalar;
    double *owned;
    bool is_matrix;
    bool is_scalar;
} operand;

static void operand_release(operand *op) {
    buffer_free(op->owned);
    op->owned = NULL;
}

/* Copies a list/tuple of numbers into a new block: 1 done, 0 not a
 * list/tuple (nothing set), -1 error. */
static int sequence_values(PyObject *obj, double **out, Py_ssize_t *count) {
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        return 0;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "cannot coerce an empty list/tuple to a matrix");
        return -1;
    }
    double *data = buffer_alloc(n, false);
    if (data == NULL) {
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(obj);
    for (Py_ssize_t i = 0; i < n; i++) {
        int r = as_real(items[i], &data[i]);
        if (r <= 0) {
            if (r == 0) {
                PyErr_Format(PyExc_TypeError,
                             "Expected a list/tuple of numbers, but item %zd is '%.200s'", i,
                             Py_TYPE(items[i])->tp_name);
            }
            buffer_free(data);
            return -1;
        }
    }
    *out = data;
    *count = n;
    return 1;
}

/* 1 filled, 0 unsupported type (nothing set), -1 error. */
static int operand_get(PyObject *obj, operand *op) {
    op->owned = NULL;
    op->is_matrix = op->is_scalar = false;
    if (IS_MATRIX(obj)) {
        MatrixObject *m = M(obj);
        if (live(m) < 0) {
            return -1;
        }
        op->data = m->buf.data;
        op->rows = m->buf.rows;
        op->columns = m->buf.columns;
        op->is_matrix = true;
        return 1;
    }
    int r = as_real(obj, &op->scalar);
    if (r != 0) {
        if (r < 0) {
            return -1;
        }
        op->data = &op->scalar;
        op->rows = op->columns = 1;
        op->is_scalar = true;
        return 1;
    }
    double *values;
    Py_ssize_t n;
    r = sequence_values(obj, &values, &n);
    if (r <= 0) {
        return r;
    }
    op->owned = values;
    op->data = values;
    op->rows = 1;
    op->columns = n;
    return 1;
}

/* operand_get for a method argument: an unsupported type is a TypeError. */
static int operand_arg(const char *fname, const char *what, PyObject *obj, operand *op) {
    int r = operand_get(obj, op);
    if (r == 0) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): %s must be a Matrix, a real number or a list/tuple of numbers, not "
                     "'%.200s'",
                     fname, what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return r < 0 ? -1 : 0;
}

/* The broadcast shape of two operands (each dimension equal, or one is 1). */
static int broadcast_shape(const operand *a, const operand *b, Py_ssize_t *rows,
                           Py_ssize_t *columns) {
    Py_ssize_t r, c;
    if (a->rows == b->rows || b->rows == 1) {
        r = a->rows;
    } else if (a->rows == 1) {
        r = b->rows;
    } else {
        goto mismatch;
    }
    if (a->columns == b->columns || b->columns == 1) {
        c = a->columns;
    } else if (a->columns == 1) {
        c = b->columns;
    } else {
        goto mismatch;
    }
    *rows = r;
    *columns = c;
    return 0;
mismatch:
    PyErr_Format(PyExc_ValueError,
                 "Dimension mismatch between operands: %zdx%zd and %zdx%zd do not broadcast "
                 "(each dimension must be equal or 1)",
                 a->rows, a->columns, b->rows, b->columns);
    return -1;
}

/* Whether `b` broadcasts to exactly `rows` x `columns`. */
static inline bool broadcasts_to(const operand *b, Py_ssize_t rows, Py_ssize_t columns) {
    return (b->rows == rows || b->rows == 1) && (b->columns == columns || b->columns == 1);
}

/* ------------------------------------------------------------- kernels */

enum binop { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE };

/*
 * One kernel per operation, in four inner-loop variants: both operands
 * advance along a row, only one does, or neither (the strides are 0 or 1).
 * A row stride of 0 repeats a row vector down the rows.  When both inputs
 * are full blocks the whole matrix is one long row.
 */
#define DEFINE_BINARY_KERNEL(NAME, EXPR)                                                           \
    MATRIX_CLONES static void NAME(double *restrict out, Py_ssize_t rows, Py_ssize_t cols,         \
                                   const double *restrict a, Py_ssize_t ars, Py_ssize_t acs,       \
                                   const double *restrict b, Py_ssize_t brs, Py_ssize_t bcs) {     \
        if (acs == 1 && bcs == 1 && ars == cols && brs == cols) {                                  \
            cols *= rows;                                                                          \
            rows = 1;                                                                              \
        }                                                                                          \
        for (Py_ssize_t i = 0; i < rows; i++) {                                                    \
            const double *restrict ar = a + i * ars;                                               \
            const double *restrict br = b + i * brs;                                               \
            double *restrict o = out + i * cols;                                                   \
            if (acs && bcs) {                                                                      \
                for (Py_ssize_t j = 0; j < cols; j++) {                                            \
                    double x = ar[j], y = br[j];                                                   \
                    o[j] = (EXPR);                                                                 \
                }                                                                                  \
            } else if (acs) {                                                                      \
                const double y = br[0];                                                            \
                for (Py_ssize_t j = 0; j < cols; j++) {                                            \
                    double x = ar[j];                                                              \
                    o[j] = (EXPR);                                                                 \
                }                                                                                  \
            } else if (bcs) {                                                                      \
                const double x = ar[0];                                                            \
                for (Py_ssize_t j = 0; j < cols; j++) {                                            \
                    double y = br[j];                                                              \
                    o[j] = (EXPR);                                                                 \
                }                                                                                  \
            } else {                                                                               \
                const double x = ar[0], y = br[0];                                                 \
                const double v = (EXPR);                                                           \
                for (Py_ssize_t j = 0; j < cols; j++) {                                            \
                    o[j] = v;                                                                      \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_BINARY_KERNEL(kernel_add, x + y)
DEFINE_BINARY_KERNEL(kernel_sub, x - y)
DEFINE_BINARY_KERNEL(kernel_mul, x *y)
DEFINE_BINARY_KERNEL(kernel_div, x / y)
DEFINE_BINARY_KERNEL(kernel_lt, x < y ? 1.0 : 0.0)
DEFINE_BINARY_KERNEL(kernel_le, x <= y ? 1.0 : 0.0)
DEFINE_BINARY_KERNEL(kernel_gt, x > y ? 1.0 : 0.0)
DEFINE_BINARY_KERNEL(kernel_ge, x >= y ? 1.0 : 0.0)
DEFINE_BINARY_KERNEL(kernel_eq, x == y ? 1.0 : 0.0)
DEFINE_BINARY_KERNEL(kernel_ne, x != y ? 1.0 : 0.0)

typedef void (*binary_kernel)(double *restrict, Py_ssize_t, Py_ssize_t, const double *restrict,
                              Py_ssize_t, Py_ssize_t, const double *restrict, Py_ssize_t,
                              Py_ssize_t);

static const binary_kernel binary_kernels[] = {
    [OP_ADD] = kernel_add, [OP_SUB] = kernel_sub, [OP_MUL] = kernel_mul, [OP_DIV] = kernel_div,
    [OP_LT] = kernel_lt,   [OP_LE] = kernel_le,   [OP_GT] = kernel_gt,   [OP_GE] = kernel_ge,
    [OP_EQ] = kernel_eq,   [OP_NE] = kernel_ne,
};

/* Runs `op` over two operands already known to broadcast to rows x cols.
 * `restrict` on the kernel's pointers is safe: blocks never overlap
 * partially, and an output that is an input is read at each index before it
 * is written at that index. */
static void binary_run(enum binop op, double *out, Py_ssize_t rows, Py_ssize_t cols,
                       const operand *a, const operand *b) {
    binary_kernels[op](out, rows, cols, a->data, a->rows == 1 ? 0 : a->columns,
                       a->columns == 1 ? 0 : 1, b->data, b->rows == 1 ? 0 : b->columns,
                       b->columns == 1 ? 0 : 1);
}

enum unop { UOP_NEG, UOP_ABS, UOP_SQRT, UOP_CEIL, UOP_FLOOR, UOP_ROUND };

#define DEFINE_UNARY_KERNEL(NAME, EXPR)                                                            \
    MATRIX_CLONES static void NAME(double *restrict out, const double *restrict a, Py_ssize_t n) { \
        for (Py_ssize_t i = 0; i < n; i++) {                                                       \
            double x = a[i];                                                                       \
            out[i] = (EXPR);                                                                       \
        }                                                                                          \
    }

DEFINE_UNARY_KERNEL(kernel_neg, -x)
DEFINE_UNARY_KERNEL(kernel_abs, fabs(x))
DEFINE_UNARY_KERNEL(kernel_sqrt, sqrt(x))
DEFINE_UNARY_KERNEL(kernel_ceil, ceil(x))
DEFINE_UNARY_KERNEL(kernel_floor, floor(x))
/* rint rounds halves to even in the default rounding mode (banker's). */
DEFINE_UNARY_KERNEL(kernel_round, rint(x))

typedef void (*unary_kernel)(double *restrict, const double *restrict, Py_ssize_t);
static const unary_kernel unary_kernels[] = {
    [UOP_NEG] = kernel_neg,   [UOP_ABS] = kernel_abs,     [UOP_SQRT] = kernel_sqrt,
    [UOP_CEIL] = kernel_ceil, [UOP_FLOOR] = kernel_floor, [UOP_ROUND] = kernel_round,
};

/* Sum of n contiguous doubles with eight independent accumulators (the
 * compiler may not reorder a single floating-point chain by itself). */
MATRIX_CLONES static double sum_contiguous(const double *restrict a, Py_ssize_t n) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; k++) {
            s[k] += a[i + k];
        }
    }
    double t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) {
        t += a[i];
    }
    return t;
}

MATRIX_CLONES static double sumsq_contiguous(const double *restrict a, Py_ssize_t n) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; k++) {
            s[k] += a[i + k] * a[i + k];
        }
    }
    double t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) {
        t += a[i] * a[i];
    }
    return t;
}

/* ---------------------------------------------------------------- matmul */

/*
 * C (m x n) = A (m x k) @ B (k x n), all row-major.  Small products use a
 * plain i-k-j loop.  Larger ones block k by MM_KC and n by MM_NC, copy each
 * B block into MM_NR-column panels (contiguous, zero-padded at the right
 * edge), and run a MM_MR x MM_NR register tile over each panel: the tile's
 * accumulators stay in registers across the whole k block and are added to
 * C once.  The packed block (MM_KC * MM_NC doubles, 512 KiB) stays in L2;
 * the MM_MR rows of A a tile reads (12 KiB) stay in L1.
 */
#define MM_MR 6
#define MM_NR 8
#define MM_KC 256
#define MM_NC 256
#define MM_SMALL (48 * 48 * 48)

static void pack_b(double *restrict packed, const double *restrict b, Py_ssize_t ldb, Py_ssize_t kc,
                   Py_ssize_t nc) {
    for (Py_ssize_t j0 = 0; j0 < nc; j0 += MM_NR) {
        Py_ssize_t w = nc - j0 < MM_NR ? nc - j0 : MM_NR;
        for (Py_ssize_t p = 0; p < kc; p++) {
            const double *src = b + p * ldb + j0;
            Py_ssize_t j = 0;
            for (; j < w; j++) {
                packed[j] = src[j];
            }
            for (; j < MM_NR; j++) {
                packed[j] = 0.0;
            }
            packed += MM_NR;
        }
    }
}

/* Adds the tile `acc` (MM_MR x MM_NR) into the mr x nr corner of C. */
static void tile_store(double *restrict c, Py_ssize_t ldc, const double *restrict acc, int mr,
                       int nr) {
    for (int r = 0; r < mr; r++) {
        for (int j = 0; j < nr; j++) {
            c[r * ldc + j] += acc[r * MM_NR + j];
        }
    }
}

static void tile_generic(Py_ssize_t kc, const double *const *arow, const double *restrict bp,
                         double *restrict c, Py_ssize_t ldc, int mr, int nr) {
    double acc[MM_MR * MM_NR] = {0};
    for (Py_ssize_t p = 0; p < kc; p++) {
        const double *restrict bv = bp + p * MM_NR;
        for (int r = 0; r < MM_MR; r++) {
            const double av = arow[r][p];
            for (int j = 0; j < MM_NR; j++) {
                acc[r * MM_NR + j] += av * bv[j];
            }
        }
    }
    tile_store(c, ldc, acc, mr, nr);
}

#ifdef MATRIX_HAVE_AVX2_KERNEL
__attribute__((target("avx2,fma"))) static void tile_avx2(Py_ssize_t kc, const double *const *arow,
                                                          const double *restrict bp,
                                                          double *restrict c, Py_ssize_t ldc,
                                                          int mr, int nr) {
    __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
    __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
    __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
    __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
    __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
    __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
    const double *a0 = arow[0], *a1 = arow[1], *a2 = arow[2];
    const double *a3 = arow[3], *a4 = arow[4], *a5 = arow[5];
    for (Py_ssize_t p = 0; p < kc; p++) {
        /* Panels start 64-byte aligned and each step is 64 bytes. */
        __m256d b0 = _mm256_load_pd(bp + p * MM_NR);
        __m256d b1 = _mm256_load_pd(bp + p * MM_NR + 4);
        __m256d av = _mm256_broadcast_sd(a0 + p);
        c00 = _mm256_fmadd_pd(av, b0, c00);
        c01 = _mm256_fmadd_pd(av, b1, c01);
        av = _mm256_broadcast_sd(a1 + p);
        c10 = _mm256_fmadd_pd(av, b0, c10);
        c11 = _mm256_fmadd_pd(av, b1, c11);
        av = _mm256_broadcast_sd(a2 + p);
        c20 = _mm256_fmadd_pd(av, b0, c20);
        c21 = _mm256_fmadd_pd(av, b1, c21);
        av = _mm256_broadcast_sd(a3 + p);
        c30 = _mm256_fmadd_pd(av, b0, c30);
        c31 = _mm256_fmadd_pd(av, b1, c31);
        av = _mm256_broadcast_sd(a4 + p);
        c40 = _mm256_fmadd_pd(av, b0, c40);
        c41 = _mm256_fmadd_pd(av, b1, c41);
        av = _mm256_broadcast_sd(a5 + p);
        c50 = _mm256_fmadd_pd(av, b0, c50);
        c51 = _mm256_fmadd_pd(av, b1, c51);
    }
    double acc[MM_MR * MM_NR] __attribute__((aligned(32)));
    _mm256_store_pd(acc + 0, c00);
    _mm256_store_pd(acc + 4, c01);
    _mm256_store_pd(acc + 8, c10);
    _mm256_store_pd(acc + 12, c11);
    _mm256_store_pd(acc + 16, c20);
    _mm256_store_pd(acc + 20, c21);
    _mm256_store_pd(acc + 24, c30);
    _mm256_store_pd(acc + 28, c31);
    _mm256_store_pd(acc + 32, c40);
    _mm256_store_pd(acc + 36, c41);
    _mm256_store_pd(acc + 40, c50);
    _mm256_store_pd(acc + 44, c51);
    tile_store(c, ldc, acc, mr, nr);
}
#endif

typedef void (*tile_kernel)(Py_ssize_t, const double *const *, const double *restrict,
                            double *restrict, Py_ssize_t, int, int);

static tile_kernel pick_tile_kernel(void) {
#ifdef MATRIX_HAVE_AVX2_KERNEL
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return tile_avx2;
    }
#endif
    return tile_generic;
}

/* `c` must be zeroed.  -1 with MemoryError when the packing block cannot be
 * allocated. */
static int matmul(double *restrict c, const double *restrict a, const double *restrict b,
                  Py_ssize_t m, Py_ssize_t k, Py_ssize_t n) {
    if ((double)m * (double)n * (double)k <= (double)MM_SMALL) {
        for (Py_ssize_t i = 0; i < m; i++) {
            double *restrict ci = c + i * n;
            for (Py_ssize_t p = 0; p < k; p++) {
                const double aip = a[i * k + p];
                const double *restrict bp = b + p * n;
                for (Py_ssize_t j = 0; j < n; j++) {
                    ci[j] += aip * bp[j];
                }
            }
        }
        return 0;
    }
    tile_kernel tile = pick_tile_kernel();
    double *packed = buffer_alloc(MM_KC * MM_NC, false);
    double *zero_row = buffer_alloc(MM_KC, true);
    if (packed == NULL || zero_row == NULL) {
        buffer_free(packed);
        buffer_free(zero_row);
        return -1;
    }
    for (Py_ssize_t jc = 0; jc < n; jc += MM_NC) {
        Py_ssize_t nc = n - jc < MM_NC ? n - jc : MM_NC;
        for (Py_ssize_t pc = 0; pc < k; pc += MM_KC) {
            Py_ssize_t kc = k - pc < MM_KC ? k - pc : MM_KC;
            pack_b(packed, b + pc * n + jc, n, kc, nc);
            for (Py_ssize_t ic = 0; ic < m; ic += MM_MR) {
                int mr = m - ic < MM_MR ? (int)(m - ic) : MM_MR;
                const double *arow[MM_MR];
                for (int r = 0; r < MM_MR; r++) {
                    arow[r] = r < mr ? a + (ic + r) * k + pc : zero_row;
                }
                for (Py_ssize_t jr = 0; jr < nc; jr += MM_NR) {
                    int nr = nc - jr < MM_NR ? (int)(nc - jr) : MM_NR;
                    tile(kc, arow, packed + (jr / MM_NR) * kc * MM_NR, c + ic * n + jc + jr, n, mr,
                         nr);
                }
            }
        }
    }
    buffer_free(packed);
    buffer_free(zero_row);
    return 0;
}

/* ------------------------------------------------------ element-wise ops */

/* a op b into `out` (when given: must have the result's shape) or into a
 * new Matrix of type `tp`. */
static PyObject *binary_op(PyTypeObject *tp, enum binop op, const operand *a, const operand *b,
                           MatrixObject *out) {
    Py_ssize_t rows, cols;
    if (broadcast_shape(a, b, &rows, &cols) < 0) {
        return NULL;
    }
    if (out != NULL) {
        if (live(out) < 0) {
            return NULL;
        }
        if (out->buf.rows != rows || out->buf.columns != cols) {
            shape_error("out", out, rows, cols);
            return NULL;
        }
        binary_run(op, out->buf.data, rows, cols, a, b);
        return Py_NewRef((PyObject *)out);
    }
    MatrixObject *res = matrix_new(tp, rows, cols, false);
    if (res != NULL) {
        binary_run(op, res->buf.data, rows, cols, a, b);
    }
    return (PyObject *)res;
}

/* The number-protocol form: NotImplemented for an operand of another type. */
static PyObject *nb_binary(PyObject *l, PyObject *r, enum binop op) {
    if (IS_MATRIX(l) && IS_MATRIX(r)) {
        /* Fast path: two matrices of one shape. */
        MatrixObject *a = M(l), *b = M(r);
        if (a->buf.data != NULL && b->buf.data != NULL && a->buf.rows == b->buf.rows &&
            a->buf.columns == b->buf.columns) {
            MatrixObject *res = matrix_new(Py_TYPE(l), a->buf.rows, a->buf.columns, false);
            if (res != NULL) {
                binary_kernels[op](res->buf.data, 1, msize(a), a->buf.data, 0, 1, b->buf.data, 0,
                                   1);
            }
            return (PyObject *)res;
        }
    }
    operand a, b;
    int ra = operand_get(l, &a);
    if (ra <= 0) {
        return ra < 0 ? NULL : Py_NewRef(Py_NotImplemented);
    }
    int rb = operand_get(r, &b);
    if (rb <= 0) {
        operand_release(&a);
        return rb < 0 ? NULL : Py_NewRef(Py_NotImplemented);
    }
    PyObject *res = binary_op(IS_MATRIX(l) ? Py_TYPE(l) : Py_TYPE(r), op, &a, &b, NULL);
    operand_release(&a);
    operand_release(&b);
    return res;
}

static PyObject *nb_inplace(PyObject *self, PyObject *other, enum binop op) {
    if (!IS_MATRIX(self)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        return NULL;
    }
    operand a = {.data = m->buf.data, .rows = m->buf.rows, .columns = m->buf.columns};
    operand b;
    int rb = operand_get(other, &b);
    if (rb <= 0) {
        return rb < 0 ? NULL : Py_NewRef(Py_NotImplemented);
    }
    PyObject *res = NULL;
    if (!broadcasts_to(&b, m->buf.rows, m->buf.columns)) {
        PyErr_Format(PyExc_ValueError,
                     "Dimension mismatch between operands: an in-place operation on a %zdx%zd "
                     "Matrix needs a right operand that broadcasts to that shape, not %zdx%zd",
                     m->buf.rows, m->buf.columns, b.rows, b.columns);
    } else {
        binary_run(op, m->buf.data, m->buf.rows, m->buf.columns, &a, &b);
        res = Py_NewRef(self);
    }
    operand_release(&b);
    return res;
}

static PyObject *nb_add(PyObject *l, PyObject *r) { return nb_binary(l, r, OP_ADD); }
static PyObject *nb_sub(PyObject *l, PyObject *r) { return nb_binary(l, r, OP_SUB); }
static PyObject *nb_mul(PyObject *l, PyObject *r) { return nb_binary(l, r, OP_MUL); }
static PyObject *nb_div(PyObject *l, PyObject *r) { return nb_binary(l, r, OP_DIV); }
static PyObject *nb_iadd(PyObject *l, PyObject *r) { return nb_inplace(l, r, OP_ADD); }
static PyObject *nb_isub(PyObject *l, PyObject *r) { return nb_inplace(l, r, OP_SUB); }
static PyObject *nb_imul(PyObject *l, PyObject *r) { return nb_inplace(l, r, OP_MUL); }
static PyObject *nb_idiv(PyObject *l, PyObject *r) { return nb_inplace(l, r, OP_DIV); }

/* Operands of `@`: matrices, or lists/tuples (1xN rows); not scalars. */
static int matmul_operand(PyObject *obj, operand *op) {
    if (!IS_MATRIX(obj) && !PyList_Check(obj) && !PyTuple_Check(obj)) {
        return 0;
    }
    return operand_get(obj, op);
}

static MatrixObject *matmul_new(PyTypeObject *tp, const operand *a, const operand *b) {
    if (a->columns != b->rows) {
        PyErr_Format(PyExc_ValueError,
                     "M0xN0 @ M1xN1 needs N0 == M1: the left operand is %zdx%zd and the right "
                     "%zdx%zd",
                     a->rows, a->columns, b->rows, b->columns);
        return NULL;
    }
    MatrixObject *res = matrix_new(tp, a->rows, b->columns, true);
    if (res != NULL &&
        matmul(res->buf.data, a->data, b->data, a->rows, a->columns, b->columns) < 0) {
        Py_CLEAR(res);
    }
    return res;
}

static PyObject *nb_matmul(PyObject *l, PyObject *r) {
    operand a, b;
    int ra = matmul_operand(l, &a);
    if (ra <= 0) {
        return ra < 0 ? NULL : Py_NewRef(Py_NotImplemented);
    }
    int rb = matmul_operand(r, &b);
    if (rb <= 0) {
        operand_release(&a);
        return rb < 0 ? NULL : Py_NewRef(Py_NotImplemented);
    }
    PyObject *res = (PyObject *)matmul_new(IS_MATRIX(l) ? Py_TYPE(l) : Py_TYPE(r), &a, &b);
    operand_release(&a);
    operand_release(&b);
    return res;
}

/* Replaces `m`'s buffer with `fresh`'s (a temporary of the same type), which
 * is then freed.  BufferError while exported (the old block would vanish
 * under the view). */
static int adopt_buffer(MatrixObject *m, MatrixObject *fresh) {
    if (m->exports > 0) {
        return export_error("reshape");
    }
    bocpy_matrix_buffer old = m->buf;
    m->buf = fresh->buf;
    fresh->buf = old;
    return 0;
}

static PyObject *nb_imatmul(PyObject *l, PyObject *r) {
    if (!IS_MATRIX(l)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    MatrixObject *m = M(l);
    if (live(m) < 0) {
        return NULL;
    }
    if (m->exports > 0) {
        export_error("reshape (@=)");
        return NULL;
    }
    PyObject *res = nb_matmul(l, r);
    if (res == NULL || res == Py_NotImplemented) {
        return res;
    }
    adopt_buffer(m, M(res));
    Py_DECREF(res);
    return Py_NewRef(l);
}

static PyObject *unary_op(MatrixObject *self, enum unop op, bool in_place, MatrixObject *out) {
    if (live(self) < 0) {
        return NULL;
    }
    MatrixObject *target;
    if (out != NULL) {
        if (in_place) {
            PyErr_SetString(PyExc_ValueError, "out and in_place are mutually exclusive");
            return NULL;
        }
        if (live(out) < 0) {
            return NULL;
        }
        if (out->buf.rows != self->buf.rows || out->buf.columns != self->buf.columns) {
            shape_error("out", out, self->buf.rows, self->buf.columns);
            return NULL;
        }
        target = (MatrixObject *)Py_NewRef(out);
    } else if (in_place) {
        target = (MatrixObject *)Py_NewRef(self);
    } else {
        target = matrix_new(Py_TYPE(self), self->buf.rows, self->buf.columns, false);
        if (target == NULL) {
            return NULL;
        }
    }
    unary_kernels[op](target->buf.data, self->buf.data, msize(self));
    return (PyObject *)target;
}

static PyObject *nb_negative(PyObject *self) { return unary_op(M(self), UOP_NEG, false, NULL); }
static PyObject *nb_absolute(PyObject *self) { return unary_op(M(self), UOP_ABS, false, NULL); }

/* The `out=` argument: NULL/None for none, else a Matrix. */
static int out_arg(PyObject *obj, MatrixObject **out) {
    if (obj == NULL || obj == Py_None) {
        *out = NULL;
        return 0;
    }
    if (!IS_MATRIX(obj)) {
        PyErr_Format(PyExc_TypeError, "out must be a Matrix, not '%.200s'", Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = M(obj);
    return 0;
}

#define DEFINE_UNARY_METHOD(NAME, OP)                                                              \
    static PyObject *matrix_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs,        \
                                   PyObject *kwnames) {                                            \
        static const char *const names[] = {"in_place", "out"};                                    \
        PyObject *v[2];                                                                            \
        bool in_place;                                                                             \
        MatrixObject *out;                                                                         \
        if (parse_args(#NAME, args, nargs, kwnames, names, 2, 0, 1, 0, v) < 0 ||                   \
            bool_arg(v[0], &in_place) < 0 || out_arg(v[1], &out) < 0) {                            \
            return NULL;                                                                           \
        }                                                                                          \
        return unary_op(M(self), OP, in_place, out);                                               \
    }

DEFINE_UNARY_METHOD(negate, UOP_NEG)
DEFINE_UNARY_METHOD(abs, UOP_ABS)
DEFINE_UNARY_METHOD(sqrt, UOP_SQRT)
DEFINE_UNARY_METHOD(ceil, UOP_CEIL)
DEFINE_UNARY_METHOD(floor, UOP_FLOOR)
DEFINE_UNARY_METHOD(round, UOP_ROUND)

/* add/subtract/multiply/divide(other, /, *, out=None) */
static PyObject *method_binary(const char *fname, PyObject *self, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames, enum binop op) {
    static const char *const names[] = {"other", "out"};
    PyObject *v[2];
    MatrixObject *out;
    if (parse_args(fname, args, nargs, kwnames, names, 2, 1, 1, 1, v) < 0 ||
        out_arg(v[1], &out) < 0 || live(M(self)) < 0) {
        return NULL;
    }
    operand a, b;
    operand_get(self, &a);
    if (operand_arg(fname, "other", v[0], &b) < 0) {
        return NULL;
    }
    PyObject *res = binary_op(Py_TYPE(self), op, &a, &b, out);
    operand_release(&b);
    return res;
}

#define DEFINE_BINARY_METHOD(NAME, OP)                                                             \
    static PyObject *matrix_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs,        \
                                   PyObject *kwnames) {                                            \
        return method_binary(#NAME, self, args, nargs, kwnames, OP);                               \
    }

DEFINE_BINARY_METHOD(add, OP_ADD)
DEFINE_BINARY_METHOD(subtract, OP_SUB)
DEFINE_BINARY_METHOD(multiply, OP_MUL)
DEFINE_BINARY_METHOD(divide, OP_DIV)

/* less ... not_equal(other): a new 0/1 mask. */
static PyObject *method_compare(const char *fname, PyObject *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames, enum binop op) {
    static const char *const names[] = {"other"};
    PyObject *v[1];
    if (parse_args(fname, args, nargs, kwnames, names, 1, 0, 1, 1, v) < 0 || live(M(self)) < 0) {
        return NULL;
    }
    operand a, b;
    operand_get(self, &a);
    if (operand_arg(fname, "other", v[0], &b) < 0) {
        return NULL;
    }
    PyObject *res = binary_op(Py_TYPE(self), op, &a, &b, NULL);
    operand_release(&b);
    return res;
}

#define DEFINE_COMPARE_METHOD(NAME, OP)                                                            \
    static PyObject *matrix_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs,        \
                                   PyObject *kwnames) {                                            \
        return method_compare(#NAME, self, args, nargs, kwnames, OP);                              \
    }

DEFINE_COMPARE_METHOD(less, OP_LT)
DEFINE_COMPARE_METHOD(less_equal, OP_LE)
DEFINE_COMPARE_METHOD(greater, OP_GT)
DEFINE_COMPARE_METHOD(greater_equal, OP_GE)
DEFINE_COMPARE_METHOD(equal, OP_EQ)
DEFINE_COMPARE_METHOD(not_equal, OP_NE)

/* Where the result of an in_place-able method goes: self, or a fresh copy
 * of self (so the computation can always work in place on `target`). */
static MatrixObject *target_for(MatrixObject *self, bool in_place) {
    if (in_place) {
        return (MatrixObject *)Py_NewRef(self);
    }
    MatrixObject *t = matrix_new(Py_TYPE(self), self->buf.rows, self->buf.columns, false);
    if (t != NULL) {
        memcpy(t->buf.data, self->buf.data, (size_t)msize(self) * sizeof(double));
    }
    return t;
}

/* An operand of fma/scaled_add: a Matrix or a real number, broadcasting to
 * self's shape. */
static int broadcast_arg(const char *fname, const char *what, PyObject *obj, MatrixObject *self,
                         operand *op) {
    if (!IS_MATRIX(obj)) {
        int r = as_real(obj, &op->scalar);
        if (r <= 0) {
            if (r == 0) {
                PyErr_Format(PyExc_TypeError,
                             "%s: %s must be a Matrix or a real number, not '%.200s'", fname, what,
                             Py_TYPE(obj)->tp_name);
            }
            return -1;
        }
        op->data = &op->scalar;
        op->rows = op->columns = 1;
        op->owned = NULL;
        return 0;
    }
    if (operand_get(obj, op) < 0) {
        return -1;
    }
    if (!broadcasts_to(op, self->buf.rows, self->buf.columns)) {
        PyErr_Format(PyExc_ValueError, "%s: %s shape %zdx%zd incompatible with self %zdx%zd", fname,
                     what, op->rows, op->columns, self->buf.rows, self->buf.columns);
        return -1;
    }
    return 0;
}

static PyObject *matrix_fma(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    static const char *const names[] = {"b", "c", "in_place"};
    PyObject *v[3];
    bool in_place;
    MatrixObject *m = M(self);
    operand b, c;
    if (parse_args("fma", args, nargs, kwnames, names, 3, 2, 3, 2, v) < 0 ||
        bool_arg(v[2], &in_place) < 0 || live(m) < 0 ||
        broadcast_arg("fma", "b", v[0], m, &b) < 0 || broadcast_arg("fma", "c", v[1], m, &c) < 0) {
        return NULL;
    }
    MatrixObject *t = in_place ? (MatrixObject *)Py_NewRef(m)
                               : matrix_new(Py_TYPE(self), m->buf.rows, m->buf.columns, false);
    if (t == NULL) {
        return NULL;
    }
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    Py_ssize_t brs = b.rows == 1 ? 0 : b.columns, bcs = b.columns == 1 ? 0 : 1;
    Py_ssize_t crs = c.rows == 1 ? 0 : c.columns, ccs = c.columns == 1 ? 0 : 1;
    const double *a = m->buf.data;
    double *o = t->buf.data;
    for (Py_ssize_t i = 0; i < rows; i++) {
        for (Py_ssize_t j = 0; j < cols; j++) {
            o[i * cols + j] =
                fma(a[i * cols + j], b.data[i * brs + j * bcs], c.data[i * crs + j * ccs]);
        }
    }
    return (PyObject *)t;
}

static PyObject *matrix_scaled_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    static const char *const names[] = {"s", "x", "in_place"};
    PyObject *v[3];
    bool in_place;
    MatrixObject *m = M(self);
    operand s;
    if (parse_args("scaled_add", args, nargs, kwnames, names, 3, 2, 3, 2, v) < 0 ||
        bool_arg(v[2], &in_place) < 0 || live(m) < 0 ||
        broadcast_arg("scaled_add", "s", v[0], m, &s) < 0) {
        return NULL;
    }
    if (!IS_MATRIX(v[1])) {
        PyErr_Format(PyExc_TypeError, "scaled_add: x must be a Matrix, not '%.200s'",
                     Py_TYPE(v[1])->tp_name);
        return NULL;
    }
    MatrixObject *x = M(v[1]);
    if (live(x) < 0) {
        return NULL;
    }
    if (x->buf.rows != m->buf.rows || x->buf.columns != m->buf.columns) {
        PyErr_Format(PyExc_ValueError, "scaled_add: x shape %zdx%zd does not match self %zdx%zd",
                     x->buf.rows, x->buf.columns, m->buf.rows, m->buf.columns);
        return NULL;
    }
    MatrixObject *t = in_place ? (MatrixObject *)Py_NewRef(m)
                               : matrix_new(Py_TYPE(self), m->buf.rows, m->buf.columns, false);
    if (t == NULL) {
        return NULL;
    }
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    Py_ssize_t srs = s.rows == 1 ? 0 : s.columns, scs = s.columns == 1 ? 0 : 1;
    const double *a = m->buf.data, *xd = x->buf.data;
    double *o = t->buf.data;
    for (Py_ssize_t i = 0; i < rows; i++) {
        for (Py_ssize_t j = 0; j < cols; j++) {
            double prod = s.data[i * srs + j * scs] * xd[i * cols + j];
            o[i * cols + j] = a[i * cols + j] + prod;
        }
    }
    return (PyObject *)t;
}

static PyObject *matrix_clip(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    static const char *const names[] = {"min", "max"};
    PyObject *v[2];
    MatrixObject *m = M(self);
    if (parse_args("clip", args, nargs, kwnames, names, 2, 0, 2, 0, v) < 0 || live(m) < 0) {
        return NULL;
    }
    bool has_lo = v[0] != NULL && v[0] != Py_None, has_hi = v[1] != NULL && v[1] != Py_None;
    if (!has_lo && !has_hi) {
        PyErr_SetString(PyExc_ValueError, "clip: must provide min and/or max");
        return NULL;
    }
    double lo = -INFINITY, hi = INFINITY;
    if ((has_lo && real_arg("clip", "min", v[0], &lo) < 0) ||
        (has_hi && real_arg("clip", "max", v[1], &hi) < 0)) {
        return NULL;
    }
    if (has_lo && has_hi && hi < lo) {
        PyErr_Format(PyExc_AssertionError, "clip: maxval < minval (%R < %R)", v[1], v[0]);
        return NULL;
    }
    MatrixObject *t = matrix_new(Py_TYPE(self), m->buf.rows, m->buf.columns, false);
    if (t == NULL) {
        return NULL;
    }
    const double *restrict a = m->buf.data;
    double *restrict o = t->buf.data;
    Py_ssize_t n = msize(m);
    /* A NaN bound compares false and so bounds nothing; NaN elements stay. */
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = a[i];
        x = x < lo ? lo : x;
        o[i] = x > hi ? hi : x;
    }
    return (PyObject *)t;
}

/* ------------------------------------------------------------ reductions */

enum reduction { RED_SUM, RED_MEAN, RED_MAG, RED_MAGSQ, RED_MIN, RED_MAX, RED_ARGMIN, RED_ARGMAX };

/* min/max (fmin/fmax: NaN ignored unless all NaN) and argmin/argmax (the
 * first element seeds the extreme; a NaN there pins the answer) over n
 * elements `stride` apart. */
static double extreme_strided(const double *p, Py_ssize_t n, Py_ssize_t stride,
                              enum reduction kind) {
    double best = p[0];
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        double x = p[i * stride];
        switch (kind) {
        case RED_MIN:
            best = fmin(best, x);
            break;
        case RED_MAX:
            best = fmax(best, x);
            break;
        case RED_ARGMIN:
            if (x < best) {
                best = x;
                at = i;
            }
            break;
        default:
            if (x > best) {
                best = x;
                at = i;
            }
            break;
        }
    }
    return (kind == RED_ARGMIN || kind == RED_ARGMAX) ? (double)at : best;
}

/* The fmin/fmax step of the scans below, inline and vectorisable: x
 * replaces m when it is smaller (larger), or when m is NaN (so a NaN is kept
 * only while nothing else has been seen).  It agrees with fmin/fmax except
 * when m and x are zeros of opposite sign, where either may come out; the
 * callers redo a zero answer with extreme_strided, so results match it. */
#define MIN_STEP(m, x) (((x) < (m)) | ((m) != (m)) ? (x) : (m))
#define MAX_STEP(m, x) (((x) > (m)) | ((m) != (m)) ? (x) : (m))

/* Lanes of extreme_contiguous: the array is scanned as rows of this many
 * columns, each column a running min/max (vectorised like column_extremes). */
#define EXTREME_LANES 32

/* min (want_max false) or max of n contiguous doubles, n >= 1, in
 * EXTREME_LANES independent lanes; a zero answer is recomputed in order
 * (see MIN_STEP). */
MATRIX_CLONES static double extreme_contiguous(const double *restrict a, Py_ssize_t n,
                                               bool want_max) {
    if (n < 2 * EXTREME_LANES) {
        return extreme_strided(a, n, 1, want_max ? RED_MAX : RED_MIN);
    }
    double m[EXTREME_LANES];
    memcpy(m, a, sizeof m);
    Py_ssize_t i = EXTREME_LANES;
    for (; i + EXTREME_LANES <= n; i += EXTREME_LANES) {
        const double *restrict r = a + i;
        if (want_max) {
            for (int k = 0; k < EXTREME_LANES; k++) {
                m[k] = MAX_STEP(m[k], r[k]);
            }
        } else {
            for (int k = 0; k < EXTREME_LANES; k++) {
                m[k] = MIN_STEP(m[k], r[k]);
            }
        }
    }
    double r = m[0];
    for (int k = 1; k < EXTREME_LANES; k++) {
        r = want_max ? MAX_STEP(r, m[k]) : MIN_STEP(r, m[k]);
    }
    for (; i < n; i++) {
        r = want_max ? MAX_STEP(r, a[i]) : MIN_STEP(r, a[i]);
    }
    return r == 0.0 ? extreme_strided(a, n, 1, want_max ? RED_MAX : RED_MIN) : r;
}

/* Per-column sums (of squares) of a rows x cols block into o (cols doubles,
 * overwritten), four rows per pass over o.  Each column is still summed top
 * to bottom, one row at a time, so the results are those of a plain loop. */
MATRIX_CLONES static void column_sums(double *restrict o, const double *restrict a, Py_ssize_t rows,
                                      Py_ssize_t cols, bool squares) {
    /* 0.0 + x, as a sum starting from zero gives (-0.0 becomes 0.0). */
    for (Py_ssize_t j = 0; j < cols; j++) {
        o[j] = 0.0 + (squares ? a[j] * a[j] : a[j]);
    }
    Py_ssize_t i = 1;
    for (; i + 4 <= rows; i += 4) {
        const double *restrict r0 = a + i * cols, *restrict r1 = r0 + cols;
        const double *restrict r2 = r1 + cols, *restrict r3 = r2 + cols;
        if (squares) {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] = (((o[j] + r0[j] * r0[j]) + r1[j] * r1[j]) + r2[j] * r2[j]) + r3[j] * r3[j];
            }
        } else {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] = (((o[j] + r0[j]) + r1[j]) + r2[j]) + r3[j];
            }
        }
    }
    for (; i < rows; i++) {
        const double *restrict r = a + i * cols;
        if (squares) {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] += r[j] * r[j];
            }
        } else {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] += r[j];
            }
        }
    }
}

/* Per-column min (want_max false) or max into o, row by row over
 * contiguous memory; a zero answer is recomputed down its column. */
MATRIX_CLONES static void column_extremes(double *restrict o, const double *restrict a,
                                          Py_ssize_t rows, Py_ssize_t cols, bool want_max) {
    memcpy(o, a, (size_t)cols * sizeof(double));
    for (Py_ssize_t i = 1; i < rows; i++) {
        const double *restrict r = a + i * cols;
        if (want_max) {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] = MAX_STEP(o[j], r[j]);
            }
        } else {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] = MIN_STEP(o[j], r[j]);
            }
        }
    }
    for (Py_ssize_t j = 0; j < cols; j++) {
        if (o[j] == 0.0) {
            o[j] = extreme_strided(a + j, rows, cols, want_max ? RED_MAX : RED_MIN);
        }
    }
}

static double finish(enum reduction kind, double s, Py_ssize_t count) {
    switch (kind) {
    case RED_MEAN:
        return s / (double)count;
    case RED_MAG:
        return sqrt(s);
    default:
        return s;
    }
}

static PyObject *reduce(MatrixObject *self, enum reduction kind, int axis) {
    if (live(self) < 0) {
        return NULL;
    }
    const double *a = self->buf.data;
    Py_ssize_t rows = self->buf.rows, cols = self->buf.columns, n = rows * cols;
    bool squares = kind == RED_MAG || kind == RED_MAGSQ;
    bool extreme = kind >= RED_MIN;
    bool minmax = kind == RED_MIN || kind == RED_MAX;
    if (axis < 0) {
        if (minmax) {
            return PyFloat_FromDouble(extreme_contiguous(a, n, kind == RED_MAX));
        }
        if (extreme) {
            double r = extreme_strided(a, n, 1, kind);
            return kind >= RED_ARGMIN ? PyLong_FromSsize_t((Py_ssize_t)r) : PyFloat_FromDouble(r);
        }
        double s = squares ? sumsq_contiguous(a, n) : sum_contiguous(a, n);
        return PyFloat_FromDouble(finish(kind, s, n));
    }
    MatrixObject *res = axis == 0 ? matrix_new(Py_TYPE(self), 1, cols, false)
                                  : matrix_new(Py_TYPE(self), rows, 1, false);
    if (res == NULL) {
        return NULL;
    }
    double *restrict o = res->buf.data;
    if (axis == 0) {
        if (minmax) {
            column_extremes(o, a, rows, cols, kind == RED_MAX);
        } else if (extreme) {
            for (Py_ssize_t j = 0; j < cols; j++) {
                o[j] = extreme_strided(a + j, rows, cols, kind);
            }
        } else {
            /* Row by row into the accumulating row: contiguous, vectorised. */
            column_sums(o, a, rows, cols, squares);
            if (kind != RED_SUM && kind != RED_MAGSQ) {
                for (Py_ssize_t j = 0; j < cols; j++) {
                    o[j] = finish(kind, o[j], rows);
                }
            }
        }
    } else {
        for (Py_ssize_t i = 0; i < rows; i++) {
            const double *r = a + i * cols;
            if (minmax) {
                o[i] = extreme_contiguous(r, cols, kind == RED_MAX);
            } else if (extreme) {
                o[i] = extreme_strided(r, cols, 1, kind);
            } else {
                double s = squares ? sumsq_contiguous(r, cols) : sum_contiguous(r, cols);
                o[i] = finish(kind, s, cols);
            }
        }
    }
    return (PyObject *)res;
}

#define DEFINE_REDUCTION(NAME, KIND)                                                               \
    static PyObject *matrix_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs,        \
                                   PyObject *kwnames) {                                            \
        static const char *const names[] = {"axis"};                                               \
        PyObject *v[1];                                                                            \
        int axis;                                                                                  \
        if (parse_args(#NAME, args, nargs, kwnames, names, 1, 0, 1, 0, v) < 0 ||                   \
            axis_arg(v[0], &axis) < 0) {                                                           \
            return NULL;                                                                           \
        }                                                                                          \
        return reduce(M(self), KIND, axis);                                                        \
    }

DEFINE_REDUCTION(sum, RED_SUM)
DEFINE_REDUCTION(mean, RED_MEAN)
DEFINE_REDUCTION(magnitude, RED_MAG)
DEFINE_REDUCTION(magnitude_squared, RED_MAGSQ)
DEFINE_REDUCTION(min, RED_MIN)
DEFINE_REDUCTION(max, RED_MAX)
DEFINE_REDUCTION(argmin, RED_ARGMIN)
DEFINE_REDUCTION(argmax, RED_ARGMAX)

static PyObject *matrix_vecdot(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"other", "axis"};
    PyObject *v[2];
    int axis;
    if (parse_args("vecdot", args, nargs, kwnames, names, 2, 0, 2, 1, v) < 0 ||
        axis_arg(v[1], &axis) < 0 || live(M(self)) < 0) {
        return NULL;
    }
    operand a, b;
    operand_get(self, &a);
    int r = operand_get(v[0], &b);
    if (r <= 0 || b.is_scalar) {
        if (r > 0 || r == 0) {
            PyErr_Format(PyExc_TypeError,
                         "vecdot(): other must be a Matrix or a list/tuple of numbers, not "
                         "'%.200s'",
                         Py_TYPE(v[0])->tp_name);
        }
        return NULL;
    }
    Py_ssize_t rows, cols;
    if (broadcast_shape(&a, &b, &rows, &cols) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "vecdot: lhs %zdx%zd incompatible with rhs %zdx%zd", a.rows,
                     a.columns, b.rows, b.columns);
        operand_release(&b);
        return NULL;
    }
    MatrixObject *prod = matrix_new(Py_TYPE(self), rows, cols, false);
    PyObject *res = NULL;
    if (prod != NULL) {
        binary_run(OP_MUL, prod->buf.data, rows, cols, &a, &b);
        res = reduce(prod, RED_SUM, axis);
        Py_DECREF(prod);
    }
    operand_release(&b);
    return res;
}

/* -------------------------------------------------------------- geometry */

/* How a matrix holds 2-D or 3-D vectors: `count` vectors of `comp`
 * components, element c of vector v at data[v * vstride + c * cstride]. */
typedef struct {
    int comp;
    Py_ssize_t count, vstride, cstride;
    bool by_rows; /* components along a row (Nx2, Nx3) */
} vector_layout;

static bool is_single_vector(Py_ssize_t rows, Py_ssize_t cols, int comp) {
    return (rows == 1 || cols == 1) && rows * cols == comp;
}

/* The layout of a batch of vectors with `allowed` components at most (2 or
 * 3).  A single vector is a batch of one.  The square shapes are read by
 * rows unless axis == 0. 2xN/Nx2 win over 3xN/Nx3. */
static bool batch_layout(Py_ssize_t rows, Py_ssize_t cols, int axis, int allowed,
                         vector_layout *l) {
    int comp;
    bool by_rows;
    if (is_single_vector(rows, cols, 2)) {
        comp = 2;
        by_rows = rows == 1;
    } else if (allowed >= 3 && is_single_vector(rows, cols, 3)) {
        comp = 3;
        by_rows = rows == 1;
    } else if (rows == 2 && cols == 2) {
        comp = 2;
        by_rows = axis != 0;
    } else if (cols == 2) {
        comp = 2;
        by_rows = true;
    } else if (rows == 2) {
        comp = 2;
        by_rows = false;
    } else if (allowed >= 3 && rows == 3 && cols == 3) {
        comp = 3;
        by_rows = axis != 0;
    } else if (allowed >= 3 && cols == 3) {
        comp = 3;
        by_rows = true;
    } else if (allowed >= 3 && rows == 3) {
        comp = 3;
        by_rows = false;
    } else {
        return false;
    }
    l->comp = comp;
    l->by_rows = by_rows;
    l->count = by_rows ? rows : cols;
    l->vstride = by_rows ? cols : 1;
    l->cstride = by_rows ? 1 : cols;
    return true;
}

/* Per-vector results: a column (Mx1) for row batches, a row (1xN) for
 * column batches. */
static MatrixObject *per_vector_result(MatrixObject *self, const vector_layout *l) {
    return l->by_rows ? matrix_new(Py_TYPE(self), l->count, 1, false)
                      : matrix_new(Py_TYPE(self), 1, l->count, false);
}

static PyObject *matrix_cross(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    static const char *const names[] = {"other", "axis"};
    PyObject *v[2];
    int axis;
    MatrixObject *m = M(self);
    if (parse_args("cross", args, nargs, kwnames, names, 2, 0, 2, 1, v) < 0 ||
        axis_arg(v[1], &axis) < 0 || live(m) < 0) {
        return NULL;
    }
    if (!IS_MATRIX(v[0])) {
        PyErr_Format(PyExc_TypeError, "cross(): other must be a Matrix, not '%.200s'",
                     Py_TYPE(v[0])->tp_name);
        return NULL;
    }
    MatrixObject *o = M(v[0]);
    if (live(o) < 0) {
        return NULL;
    }
    vector_layout l;
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    if (!batch_layout(rows, cols, axis, 3, &l)) {
        PyErr_Format(PyExc_ValueError,
                     "cross requires a 2D or 3D vector or Nx2 or 2xN or Nx3 or 3xN matrix, not "
                     "%zdx%zd",
                     rows, cols);
        return NULL;
    }
    bool single = is_single_vector(rows, cols, l.comp);
    /* The other operand: the same shape (vector by vector), or one vector
     * used against every vector of self. */
    Py_ssize_t ovs, ocs;
    if (!single && o->buf.rows == rows && o->buf.columns == cols) {
        ovs = l.vstride;
        ocs = l.cstride;
    } else if (is_single_vector(o->buf.rows, o->buf.columns, l.comp)) {
        ovs = 0;
        ocs = 1;
    } else {
        PyErr_Format(PyExc_ValueError, "cross: %s lhs %zdx%zd incompatible with rhs %zdx%zd",
                     single        ? (l.comp == 2 ? "2D vector" : "3D vector")
                     : l.comp == 2 ? (l.by_rows ? "Nx2 batch" : "2xN batch")
                                   : (l.by_rows ? "Nx3 batch" : "3xN batch"),
                     rows, cols, o->buf.rows, o->buf.columns);
        return NULL;
    }
    const double *a = m->buf.data, *b = o->buf.data;
    if (l.comp == 2) {
        if (single) {
            return PyFloat_FromDouble(a[0] * b[1] - a[1] * b[0]);
        }
        MatrixObject *res = per_vector_result(m, &l);
        if (res == NULL) {
            return NULL;
        }
        for (Py_ssize_t k = 0; k < l.count; k++) {
            const double *p = a + k * l.vstride, *q = b + k * ovs;
            res->buf.data[k] = p[0] * q[ocs] - p[l.cstride] * q[0];
        }
        return (PyObject *)res;
    }
    MatrixObject *res = matrix_new(Py_TYPE(self), rows, cols, false);
    if (res == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < l.count; k++) {
        const double *p = a + k * l.vstride, *q = b + k * ovs;
        double ax = p[0], ay = p[l.cstride], az = p[2 * l.cstride];
        double bx = q[0], by = q[ocs], bz = q[2 * ocs];
        double *r = res->buf.data + k * l.vstride;
        r[0] = ay * bz - az * by;
        r[l.cstride] = az * bx - ax * bz;
        r[2 * l.cstride] = ax * by - ay * bx;
    }
    return (PyObject *)res;
}

static PyObject *matrix_angle(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    static const char *const names[] = {"axis"};
    PyObject *v[1];
    int axis;
    MatrixObject *m = M(self);
    if (parse_args("angle", args, nargs, kwnames, names, 1, 0, 1, 0, v) < 0 ||
        axis_arg(v[0], &axis) < 0 || live(m) < 0) {
        return NULL;
    }
    vector_layout l;
    if (!batch_layout(m->buf.rows, m->buf.columns, axis, 2, &l)) {
        PyErr_Format(PyExc_ValueError,
                     "angle requires a 2D vector or Nx2 or 2xN matrix, not %zdx%zd", m->buf.rows,
                     m->buf.columns);
        return NULL;
    }
    const double *a = m->buf.data;
    if (is_single_vector(m->buf.rows, m->buf.columns, 2)) {
        return PyFloat_FromDouble(atan2(a[1], a[0]));
    }
    MatrixObject *res = per_vector_result(m, &l);
    if (res == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < l.count; k++) {
        const double *p = a + k * l.vstride;
        res->buf.data[k] = atan2(p[l.cstride], p[0]);
    }
    return (PyObject *)res;
}

static PyObject *matrix_perpendicular(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames) {
    static const char *const names[] = {"axis", "in_place"};
    PyObject *v[2];
    int axis;
    bool in_place;
    MatrixObject *m = M(self);
    if (parse_args("perpendicular", args, nargs, kwnames, names, 2, 0, 2, 0, v) < 0 ||
        axis_arg(v[0], &axis) < 0 || bool_arg(v[1], &in_place) < 0 || live(m) < 0) {
        return NULL;
    }
    vector_layout l;
    if (!batch_layout(m->buf.rows, m->buf.columns, axis, 2, &l)) {
        PyErr_Format(PyExc_ValueError,
                     "perpendicular requires a 2D vector or Nx2 or 2xN matrix, not %zdx%zd",
                     m->buf.rows, m->buf.columns);
        return NULL;
    }
    MatrixObject *t = target_for(m, in_place);
    if (t == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < l.count; k++) {
        double *p = t->buf.data + k * l.vstride;
        double x = p[0];
        p[0] = -p[l.cstride];
        p[l.cstride] = x;
    }
    return (PyObject *)t;
}

/* Multiplies by 1/|v|, leaving zero vectors exactly zero. */
static inline double inverse_or_zero(double magnitude_squared) {
    return magnitude_squared > 0.0 ? 1.0 / sqrt(magnitude_squared) : 0.0;
}

static PyObject *matrix_normalize(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    static const char *const names[] = {"axis", "in_place"};
    PyObject *v[2];
    int axis;
    bool in_place;
    MatrixObject *m = M(self);
    if (parse_args("normalize", args, nargs, kwnames, names, 2, 0, 2, 0, v) < 0 ||
        axis_arg(v[0], &axis) < 0 || bool_arg(v[1], &in_place) < 0 || live(m) < 0) {
        return NULL;
    }
    MatrixObject *t = target_for(m, in_place);
    if (t == NULL) {
        return NULL;
    }
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    double *d = t->buf.data;
    if (axis < 0) {
        double s = inverse_or_zero(sumsq_contiguous(d, rows * cols));
        for (Py_ssize_t i = 0; i < rows * cols; i++) {
            d[i] *= s;
        }
    } else if (axis == 1) {
        for (Py_ssize_t i = 0; i < rows; i++) {
            double *r = d + i * cols;
            double s = inverse_or_zero(sumsq_contiguous(r, cols));
            for (Py_ssize_t j = 0; j < cols; j++) {
                r[j] *= s;
            }
        }
    } else {
        double *scale = buffer_alloc(cols, true);
        if (scale == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < rows; i++) {
            for (Py_ssize_t j = 0; j < cols; j++) {
                scale[j] += d[i * cols + j] * d[i * cols + j];
            }
        }
        for (Py_ssize_t j = 0; j < cols; j++) {
            scale[j] = inverse_or_zero(scale[j]);
        }
        for (Py_ssize_t i = 0; i < rows; i++) {
            for (Py_ssize_t j = 0; j < cols; j++) {
                d[i * cols + j] *= scale[j];
            }
        }
        buffer_free(scale);
    }
    return (PyObject *)t;
}

static void transpose_into(double *restrict out, const double *restrict a, Py_ssize_t rows,
                           Py_ssize_t cols) {
    /* 32x32 tiles keep both the reads and the writes within cache lines. */
    for (Py_ssize_t i0 = 0; i0 < rows; i0 += 32) {
        Py_ssize_t i1 = i0 + 32 < rows ? i0 + 32 : rows;
        for (Py_ssize_t j0 = 0; j0 < cols; j0 += 32) {
            Py_ssize_t j1 = j0 + 32 < cols ? j0 + 32 : cols;
            for (Py_ssize_t i = i0; i < i1; i++) {
                for (Py_ssize_t j = j0; j < j1; j++) {
                    out[j * rows + i] = a[i * cols + j];
                }
            }
        }
    }
}

static PyObject *transpose(MatrixObject *m, bool in_place) {
    if (live(m) < 0) {
        return NULL;
    }
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    if (in_place && rows == cols) {
        for (Py_ssize_t i = 0; i < rows; i++) {
            for (Py_ssize_t j = i + 1; j < cols; j++) {
                double x = m->buf.data[i * cols + j];
                m->buf.data[i * cols + j] = m->buf.data[j * cols + i];
                m->buf.data[j * cols + i] = x;
            }
        }
        return Py_NewRef((PyObject *)m);
    }
    if (in_place && m->exports > 0) {
        export_error("transpose in place");
        return NULL;
    }
    MatrixObject *t = matrix_new(Py_TYPE(m), cols, rows, false);
    if (t == NULL) {
        return NULL;
    }
    transpose_into(t->buf.data, m->buf.data, rows, cols);
    if (!in_place) {
        return (PyObject *)t;
    }
    adopt_buffer(m, t);
    Py_DECREF(t);
    return Py_NewRef((PyObject *)m);
}

static PyObject *matrix_transpose(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    static const char *const names[] = {"in_place"};
    PyObject *v[1];
    bool in_place;
    if (parse_args("transpose", args, nargs, kwnames, names, 1, 0, 1, 0, v) < 0 ||
        bool_arg(v[0], &in_place) < 0) {
        return NULL;
    }
    return transpose(M(self), in_place);
}

/* -------------------------------------------------------------- indexing */

/* The indices one key selects along one dimension. */
typedef struct {
    Py_ssize_t *idx; /* `count` indices, each in [0, dimension) */
    Py_ssize_t count;
    Py_ssize_t one; /* storage for a single index */
    bool is_int;    /* an int key: the dimension is dropped from a float result */
    bool is_list;
    bool is_full; /* the bare ':' */
} selection;

static void selection_release(selection *s) {
    if (s->idx != &s->one) {
        free(s->idx);
    }
    s->idx = NULL;
}

static int index_error(const char *what, Py_ssize_t i, Py_ssize_t dim) {
    PyErr_Format(PyExc_IndexError, "%s index %zd out of range for dimension of size %zd", what, i,
                 dim);
    return -1;
}

/* A list/tuple of int indices (bools count as 0/1; negative from the end). */
static int index_list(PyObject *seq, Py_ssize_t dim, const char *what, selection *s) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        PyErr_SetString(PyExc_IndexError, "index sequence must not be empty");
        return -1;
    }
    Py_ssize_t *idx = malloc((size_t)n * sizeof(Py_ssize_t));
    if (idx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!PyLong_Check(items[k])) {
            PyErr_Format(PyExc_TypeError, "an integer is required as index %zd, not '%.200s'", k,
                         Py_TYPE(items[k])->tp_name);
            free(idx);
            return -1;
        }
        Py_ssize_t i = PyLong_AsSsize_t(items[k]);
        if (i == -1 && PyErr_Occurred()) {
            free(idx);
            return -1;
        }
        Py_ssize_t j = i < 0 ? i + dim : i;
        if (j < 0 || j >= dim) {
            free(idx);
            return index_error(what, i, dim);
        }
        idx[k] = j;
    }
    s->idx = idx;
    s->count = n;
    s->is_list = true;
    return 0;
}

/* One key (int, slice, list/tuple of ints) along a dimension of size dim. */
static int selection_parse(PyObject *key, Py_ssize_t dim, const char *what, selection *s) {
    s->idx = &s->one;
    s->count = 1;
    s->is_int = s->is_list = s->is_full = false;
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
            return -1;
        }
        Py_ssize_t n = PySlice_AdjustIndices(dim, &start, &stop, step);
        if (n == 0) {
            PyErr_Format(PyExc_IndexError,
                         "slice %R selects no %ss of a dimension of size %zd (a Matrix cannot "
                         "be empty)",
                         key, what, dim);
            return -1;
        }
        PySliceObject *sl = (PySliceObject *)key;
        s->is_full = sl->start == Py_None && sl->stop == Py_None && sl->step == Py_None;
        if (n > 1) {
            s->idx = malloc((size_t)n * sizeof(Py_ssize_t));
            if (s->idx == NULL) {
                PyErr_NoMemory();
                return -1;
            }
        }
        for (Py_ssize_t k = 0; k < n; k++) {
            s->idx[k] = start + k * step;
        }
        s->count = n;
        return 0;
    }
    if (PyList_Check(key) || PyTuple_Check(key)) {
        return index_list(key, dim, what, s);
    }
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return -1;
        }
        Py_ssize_t j = i < 0 ? i + dim : i;
        if (j < 0 || j >= dim) {
            return index_error(what, i, dim);
        }
        s->one = j;
        s->is_int = true;
        return 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "Matrix indices must be ints, slices, lists of ints or a (row, column) tuple "
                 "of those, not '%.200s'",
                 Py_TYPE(key)->tp_name);
    return -1;
}

/* A whole-dimension selection. */
static int selection_all(Py_ssize_t dim, selection *s) {
    s->is_int = s->is_list = false;
    s->is_full = true;
    s->count = dim;
    s->idx = dim == 1 ? &s->one : malloc((size_t)dim * sizeof(Py_ssize_t));
    if (s->idx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < dim; k++) {
        s->idx[k] = k;
    }
    return 0;
}

/*
 * Parses a subscript into row and column selections.
 *   m[i]: row i (a 1xC Matrix), or element i of a column vector
 *   m[i, j], m[rows, cols]: ints, slices, and lists with a bare ':'
 *   m[[r0, r1]], m[[r0, r1], :]: rows;  m[:, [c0, c1]]: columns
 */
static int subscript_parse(MatrixObject *m, PyObject *key, selection *r, selection *c) {
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    if (PyTuple_Check(key)) {
        if (PyTuple_GET_SIZE(key) != 2) {
            PyErr_Format(PyExc_KeyError,
                         "Index must be one dimension (row) or two dimensions (row, column), "
                         "not %zd",
                         PyTuple_GET_SIZE(key));
            return -1;
        }
        if (selection_parse(PyTuple_GET_ITEM(key, 0), rows, "row", r) < 0) {
            return -1;
        }
        if (selection_parse(PyTuple_GET_ITEM(key, 1), cols, "column", c) < 0) {
            selection_release(r);
            return -1;
        }
        if ((r->is_list && !c->is_full) || (c->is_list && !r->is_full)) {
            selection_release(r);
            selection_release(c);
            PyErr_SetString(PyExc_IndexError,
                            "fancy indexing supports only m[[rows]], m[[rows], :] or "
                            "m[:, [cols]]; use take() or put() for other selections");
            return -1;
        }
        return 0;
    }
    if (cols == 1 && !PySlice_Check(key) && !PyList_Check(key) && PyIndex_Check(key)) {
        /* A column vector reads like a sequence of numbers. */
        if (selection_parse(key, rows, "row", r) < 0) {
            return -1;
        }
        c->idx = &c->one;
        c->one = 0;
        c->count = 1;
        c->is_int = true;
        c->is_list = c->is_full = false;
        return 0;
    }
    if (selection_parse(key, rows, "row", r) < 0) {
        return -1;
    }
    if (selection_all(cols, c) < 0) {
        selection_release(r);
        return -1;
    }
    return 0;
}

static PyObject *gather(MatrixObject *m, const selection *r, const selection *c) {
    Py_ssize_t cols = m->buf.columns;
    const double *a = m->buf.data;
    if (r->is_int && c->is_int) {
        return PyFloat_FromDouble(a[r->idx[0] * cols + c->idx[0]]);
    }
    MatrixObject *res = matrix_new(Py_TYPE(m), r->count, c->count, false);
    if (res == NULL) {
        return NULL;
    }
    double *o = res->buf.data;
    for (Py_ssize_t i = 0; i < r->count; i++) {
        const double *row = a + r->idx[i] * cols;
        if (c->is_full) {
            memcpy(o + i * cols, row, (size_t)cols * sizeof(double));
        } else {
            for (Py_ssize_t j = 0; j < c->count; j++) {
                o[i * c->count + j] = row[c->idx[j]];
            }
        }
    }
    return (PyObject *)res;
}

static PyObject *matrix_subscript(PyObject *self, PyObject *key) {
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        return NULL;
    }
    /* Fast paths: m[i] and m[i, j] with plain ints. */
    if (PyLong_CheckExact(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError), rows = m->buf.rows;
        if (i == -1 && PyErr_Occurred()) {
            return NULL;
        }
        Py_ssize_t j = i < 0 ? i + rows : i;
        if (j < 0 || j >= rows) {
            index_error("row", i, rows);
            return NULL;
        }
        if (m->buf.columns == 1) {
            return PyFloat_FromDouble(m->buf.data[j]);
        }
        MatrixObject *res = matrix_new(Py_TYPE(self), 1, m->buf.columns, false);
        if (res != NULL) {
            memcpy(res->buf.data, m->buf.data + j * m->buf.columns,
                   (size_t)m->buf.columns * sizeof(double));
        }
        return (PyObject *)res;
    }
    selection r, c;
    if (subscript_parse(m, key, &r, &c) < 0) {
        return NULL;
    }
    PyObject *res = gather(m, &r, &c);
    selection_release(&r);
    selection_release(&c);
    return res;
}

/*
 * The right-hand side of an assignment into an nr x nc selection: a real
 * number or 1x1 Matrix (repeated), a Matrix that broadcasts to the
 * selection, or a list/tuple of exactly nr * nc numbers in row-major order.
 * A Matrix that is `m` itself is copied first (the selection may overlap
 * the rows it is read from).
 */
static int assign_value(MatrixObject *m, PyObject *value, Py_ssize_t nr, Py_ssize_t nc,
                        operand *op) {
    int r = operand_get(value, op);
    if (r == 0) {
        PyErr_Format(PyExc_TypeError,
                     "Invalid value: a Matrix element can be set from a real number, a Matrix "
                     "or a list/tuple of numbers, not '%.200s'",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (r < 0) {
        return -1;
    }
    if (op->owned != NULL) {
        /* A list/tuple fills the selection in row-major order. */
        if (op->columns != nr * nc) {
            PyErr_Format(PyExc_ValueError,
                         "cannot assign %zd values to a selection of shape %zdx%zd (%zd "
                         "elements)",
                         op->columns, nr, nc, nr * nc);
            operand_release(op);
            return -1;
        }
        op->rows = nr;
        op->columns = nc;
        return 0;
    }
    if (!broadcasts_to(op, nr, nc)) {
        PyErr_Format(PyExc_ValueError,
                     "cannot assign %zdx%zd matrix to a selection of shape %zdx%zd", op->rows,
                     op->columns, nr, nc);
        return -1;
    }
    if (op->is_matrix && op->data == m->buf.data) {
        Py_ssize_t n = op->rows * op->columns;
        double *copy = buffer_alloc(n, false);
        if (copy == NULL) {
            return -1;
        }
        memcpy(copy, op->data, (size_t)n * sizeof(double));
        op->owned = copy;
        op->data = copy;
    }
    return 0;
}

static void scatter(MatrixObject *m, const selection *r, const selection *c, const operand *v,
                    bool accumulate) {
    Py_ssize_t cols = m->buf.columns;
    Py_ssize_t vrs = v->rows == 1 ? 0 : v->columns, vcs = v->columns == 1 ? 0 : 1;
    for (Py_ssize_t i = 0; i < r->count; i++) {
        double *row = m->buf.data + r->idx[i] * cols;
        const double *src = v->data + i * vrs;
        for (Py_ssize_t j = 0; j < c->count; j++) {
            if (accumulate) {
                row[c->idx[j]] += src[j * vcs];
            } else {
                row[c->idx[j]] = src[j * vcs];
            }
        }
    }
}

static int matrix_ass_subscript(PyObject *self, PyObject *key, PyObject *value) {
    MatrixObject *m = M(self);
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "Matrix elements cannot be deleted");
        return -1;
    }
    if (live(m) < 0) {
        return -1;
    }
    selection r, c;
    if (subscript_parse(m, key, &r, &c) < 0) {
        return -1;
    }
    operand v;
    int rc = assign_value(m, value, r.count, c.count, &v);
    if (rc == 0) {
        scatter(m, &r, &c, &v, false);
        operand_release(&v);
    }
    selection_release(&r);
    selection_release(&c);
    return rc;
}

/* take/put: indices along axis 0 (rows) or 1 (columns). */
static int take_put_selection(MatrixObject *m, PyObject *indices, int axis, selection *r,
                              selection *c) {
    if (!PyList_Check(indices) && !PyTuple_Check(indices)) {
        PyErr_Format(PyExc_TypeError,
                     "Indices must be specified as a list or a tuple of ints, not '%.200s'",
                     Py_TYPE(indices)->tp_name);
        return -1;
    }
    selection *listed = axis == 0 ? r : c, *whole = axis == 0 ? c : r;
    listed->is_int = listed->is_full = false;
    if (index_list(indices, axis == 0 ? m->buf.rows : m->buf.columns, axis == 0 ? "row" : "column",
                   listed) < 0) {
        return -1;
    }
    if (selection_all(axis == 0 ? m->buf.columns : m->buf.rows, whole) < 0) {
        selection_release(listed);
        return -1;
    }
    return 0;
}

static PyObject *matrix_take(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    static const char *const names[] = {"indices", "axis"};
    PyObject *v[2];
    int axis;
    MatrixObject *m = M(self);
    selection r, c;
    if (parse_args("take", args, nargs, kwnames, names, 2, 0, 2, 1, v) < 0 ||
        axis01_arg(v[1], &axis) < 0 || live(m) < 0 ||
        take_put_selection(m, v[0], axis, &r, &c) < 0) {
        return NULL;
    }
    PyObject *res = gather(m, &r, &c);
    selection_release(&r);
    selection_release(&c);
    return res;
}

static PyObject *matrix_put(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    static const char *const names[] = {"indices", "value", "axis", "accumulate"};
    PyObject *v[4];
    int axis;
    bool accumulate;
    MatrixObject *m = M(self);
    selection r, c;
    if (parse_args("put", args, nargs, kwnames, names, 4, 0, 4, 2, v) < 0 ||
        axis01_arg(v[2], &axis) < 0 || bool_arg(v[3], &accumulate) < 0 || live(m) < 0 ||
        take_put_selection(m, v[0], axis, &r, &c) < 0) {
        return NULL;
    }
    operand val;
    PyObject *res = NULL;
    if (!IS_MATRIX(v[1]) && as_real(v[1], &val.scalar) == 0 && !PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError,
                     "put(): value must be a Matrix or a real number, not '%.200s'",
                     Py_TYPE(v[1])->tp_name);
    } else if (!PyErr_Occurred() && assign_value(m, v[1], r.count, c.count, &val) == 0) {
        scatter(m, &r, &c, &val, accumulate);
        operand_release(&val);
        res = Py_NewRef(self);
    }
    selection_release(&r);
    selection_release(&c);
    return res;
}

static Py_ssize_t matrix_length(PyObject *self) {
    MatrixObject *m = M(self);
    return live(m) < 0 ? -1 : m->buf.rows;
}

/* Iteration (via the sequence protocol): rows, or numbers of a column. */
static PyObject *matrix_item(PyObject *self, Py_ssize_t i) {
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        return NULL;
    }
    if (i < 0 || i >= m->buf.rows) {
        PyErr_SetString(PyExc_IndexError, "Matrix row index out of range");
        return NULL;
    }
    if (m->buf.columns == 1) {
        return PyFloat_FromDouble(m->buf.data[i]);
    }
    MatrixObject *res = matrix_new(Py_TYPE(self), 1, m->buf.columns, false);
    if (res != NULL) {
        memcpy(res->buf.data, m->buf.data + i * m->buf.columns,
               (size_t)m->buf.columns * sizeof(double));
    }
    return (PyObject *)res;
}

static PyObject *matrix_iter(PyObject *self) {
    if (live(M(self)) < 0) {
        return NULL;
    }
    return PySeqIter_New(self);
}

/* ---------------------------------------------------------- constructors */

/* Copies a C-contiguous 2-D float64 buffer into a new Matrix. */
static PyObject *from_buffer(PyTypeObject *tp, PyObject *obj) {
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "Matrix.from_buffer() needs an object with the buffer protocol (such as a "
                     "2-D float64 NumPy array), not '%.200s'",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "Matrix.from_buffer() needs a C-contiguous buffer; this '%.200s' is not "
                     "(copy it first, e.g. numpy.ascontiguousarray(x, dtype=float))",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const char *fmt = view.format != NULL ? view.format : "B";
    if (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == (PY_LITTLE_ENDIAN ? '<' : '>')) {
        fmt++;
    }
    PyObject *res = NULL;
    if (strcmp(fmt, "d") != 0 || view.itemsize != (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError,
                     "Matrix.from_buffer() needs float64 items (format 'd'), not format '%s' "
                     "(convert it first, e.g. x.astype(float))",
                     view.format != NULL ? view.format : "B");
    } else if (view.ndim != 2) {
        PyErr_Format(PyExc_ValueError,
                     "Matrix.from_buffer() needs a 2-D buffer, not %d-D (reshape it to (rows, "
                     "columns) first)",
                     view.ndim);
    } else {
        MatrixObject *m = matrix_new(tp, view.shape[0], view.shape[1], false);
        if (m != NULL) {
            memcpy(m->buf.data, view.buf, (size_t)msize(m) * sizeof(double));
        }
        res = (PyObject *)m;
    }
    PyBuffer_Release(&view);
    return res;
}

static int dimension_arg(PyObject *obj, const char *what, Py_ssize_t *out) {
    if (!PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not '%.200s'", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyNumber_AsSsize_t(obj, PyExc_ValueError);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *matrix_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"rows", "columns", "values", NULL};
    PyObject *rows_obj, *cols_obj = NULL, *values = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:Matrix", kwlist, &rows_obj, &cols_obj,
                                     &values)) {
        return NULL;
    }
    if (cols_obj == NULL) {
        if (!PyObject_CheckBuffer(rows_obj)) {
            PyErr_SetString(PyExc_TypeError,
                            "Matrix() needs rows and columns: Matrix(rows, columns, "
                            "values=None), or one 2-D float64 buffer such as a NumPy array");
            return NULL;
        }
        return from_buffer(tp, rows_obj);
    }
    Py_ssize_t rows, cols;
    if (dimension_arg(rows_obj, "rows", &rows) < 0 ||
        dimension_arg(cols_obj, "columns", &cols) < 0) {
        return NULL;
    }
    MatrixObject *m = matrix_new(tp, rows, cols, values == Py_None);
    if (m == NULL || values == Py_None) {
        return (PyObject *)m;
    }
    Py_ssize_t n = msize(m);
    double x;
    int r = as_real(values, &x);
    if (r > 0) {
        for (Py_ssize_t i = 0; i < n; i++) {
            m->buf.data[i] = x;
        }
        return (PyObject *)m;
    }
    if (r == 0 && (PyList_Check(values) || PyTuple_Check(values)) &&
        PySequence_Fast_GET_SIZE(values) == n) {
        PyObject **items = PySequence_Fast_ITEMS(values);
        for (Py_ssize_t i = 0; i < n; i++) {
            r = as_real(items[i], &m->buf.data[i]);
            if (r <= 0) {
                break;
            }
        }
        if (r > 0) {
            return (PyObject *)m;
        }
    }
    if (r == 0) {
        PyErr_Format(PyExc_TypeError,
                     "Values must be either a number or a list/tuple of MxN numbers (%zd for a "
                     "%zdx%zd Matrix), not %R",
                     n, rows, cols, values);
    }
    Py_DECREF(m);
    return NULL;
}

static int size_arg(const char *fname, PyObject *size, Py_ssize_t *rows, Py_ssize_t *cols) {
    if ((!PyTuple_Check(size) && !PyList_Check(size)) || PySequence_Fast_GET_SIZE(size) != 2) {
        PyErr_Format(PyExc_TypeError, "%s(): size must be a (rows, columns) tuple, not %R", fname,
                     size);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(size);
    if (dimension_arg(items[0], "rows", rows) < 0 || dimension_arg(items[1], "columns", cols) < 0) {
        return -1;
    }
    return checked_size(*rows, *cols) < 0 ? -1 : 0;
}

static PyObject *filled(PyTypeObject *tp, const char *fname, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames, double value) {
    static const char *const names[] = {"size"};
    PyObject *v[1];
    Py_ssize_t rows, cols;
    if (parse_args(fname, args, nargs, kwnames, names, 1, 0, 1, 1, v) < 0 ||
        size_arg(fname, v[0], &rows, &cols) < 0) {
        return NULL;
    }
    MatrixObject *m = matrix_new(tp, rows, cols, value == 0.0);
    if (m != NULL && value != 0.0) {
        for (Py_ssize_t i = 0; i < rows * cols; i++) {
            m->buf.data[i] = value;
        }
    }
    return (PyObject *)m;
}

static PyObject *matrix_zeros(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    return filled((PyTypeObject *)cls, "zeros", args, nargs, kwnames, 0.0);
}

static PyObject *matrix_ones(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    return filled((PyTypeObject *)cls, "ones", args, nargs, kwnames, 1.0);
}

static PyObject *matrix_vector(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"values", "as_column"};
    PyObject *v[2];
    bool as_column;
    if (parse_args("vector", args, nargs, kwnames, names, 2, 0, 2, 1, v) < 0 ||
        bool_arg(v[1], &as_column) < 0) {
        return NULL;
    }
    double *data;
    Py_ssize_t n;
    int r = sequence_values(v[0], &data, &n);
    if (r <= 0) {
        if (r == 0) {
            PyErr_Format(PyExc_TypeError,
                         "Expected a list/tuple of numbers for vector(), not '%.200s'",
                         Py_TYPE(v[0])->tp_name);
        }
        return NULL;
    }
    MatrixObject *m = PyObject_New(MatrixObject, (PyTypeObject *)cls);
    if (m == NULL) {
        buffer_free(data);
        return NULL;
    }
    m->buf.data = data;
    m->buf.rows = as_column ? n : 1;
    m->buf.columns = as_column ? 1 : n;
    m->exports = 0;
    return (PyObject *)m;
}

static PyObject *matrix_concat(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"values", "axis"};
    PyObject *v[2];
    int axis;
    if (parse_args("concat", args, nargs, kwnames, names, 2, 0, 2, 1, v) < 0 ||
        axis01_arg(v[1], &axis) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(v[0], "concat(): values must be a list or tuple of matrices");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *res = NULL;
    operand *ops = count > 0 ? calloc((size_t)count, sizeof(operand)) : NULL;
    Py_ssize_t got = 0, rows = 0, cols = 0;
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "concat(): values must hold at least one matrix");
        goto done;
    }
    if (ops == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < count; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got);
        operand *op = &ops[got];
        if (!IS_MATRIX(item) && !PyList_Check(item) && !PyTuple_Check(item)) {
            PyErr_Format(PyExc_TypeError,
                         "concat(): item %zd must be a Matrix, list or tuple, not '%.200s'", got,
                         Py_TYPE(item)->tp_name);
            goto done;
        }
        if (operand_get(item, op) < 0) {
            goto done;
        }
        if (op->owned != NULL && axis == 1) {
            /* A plain sequence is a row when stacking rows, a column when
             * stacking columns. */
            op->rows = op->columns;
            op->columns = 1;
        }
        if (got == 0) {
            rows = op->rows;
            cols = op->columns;
        } else if (axis == 0 ? op->columns != cols : op->rows != rows) {
            PyErr_Format(PyExc_AssertionError,
                         "all sub-matrices must have the same number of %s (item %zd is "
                         "%zdx%zd, item 0 has %zd)",
                         axis == 0 ? "columns" : "rows", got, op->rows, op->columns,
                         axis == 0 ? cols : rows);
            got++;
            goto done;
        } else if (axis == 0) {
            rows += op->rows;
        } else {
            cols += op->columns;
        }
    }
    MatrixObject *m = matrix_new((PyTypeObject *)cls, rows, cols, false);
    if (m == NULL) {
        goto done;
    }
    Py_ssize_t offset = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        const operand *op = &ops[k];
        for (Py_ssize_t i = 0; i < op->rows; i++) {
            double *dst =
                axis == 0 ? m->buf.data + (offset + i) * cols : m->buf.data + i * cols + offset;
            memcpy(dst, op->data + i * op->columns, (size_t)op->columns * sizeof(double));
        }
        offset += axis == 0 ? op->rows : op->columns;
    }
    res = (PyObject *)m;
done:
    for (Py_ssize_t k = 0; k < got && ops != NULL; k++) {
        operand_release(&ops[k]);
    }
    free(ops);
    Py_DECREF(seq);
    return res;
}

static PyObject *matrix_from_buffer(PyObject *cls, PyObject *obj) {
    return from_buffer((PyTypeObject *)cls, obj);
}

static PyObject *matrix_copy(PyObject *self, PyObject *unused) {
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        return NULL;
    }
    return (PyObject *)target_for(m, false);
}

/* ---------------------------------------------------------------- random */

/*
 * xoshiro256** per thread: draws on different threads never race, and a
 * seed() makes the calling thread's later draws reproducible.  A thread that
 * never seeds starts from the clock and its own address.
 */
static _Thread_local uint64_t rng_state[4];
static _Thread_local bool rng_seeded;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        rng_state[i] = splitmix64(&seed);
    }
    rng_seeded = true;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(void) {
    if (!rng_seeded) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rng_seed((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                 (uint64_t)(uintptr_t)&rng_state);
    }
    uint64_t *s = rng_state;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform on [0, 1). */
static inline double rng_unit(void) { return (double)(rng_next() >> 11) * 0x1.0p-53; }

static double rng_normal(void) {
    double u1 = 1.0 - rng_unit(); /* (0, 1]: log is finite */
    double u2 = rng_unit();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static PyObject *random_draw(PyObject *cls, const char *fname, const char *const *names,
                             PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                             double dflt0, double dflt1, bool normal) {
    PyObject *v[3];
    double p0 = dflt0, p1 = dflt1;
    if (parse_args(fname, args, nargs, kwnames, names, 3, 0, 3, 0, v) < 0 ||
        (v[0] != NULL && v[0] != Py_None && real_arg(fname, names[0], v[0], &p0) < 0) ||
        (v[1] != NULL && v[1] != Py_None && real_arg(fname, names[1], v[1], &p1) < 0)) {
        return NULL;
    }
    if (v[2] == NULL || v[2] == Py_None) {
        return PyFloat_FromDouble(normal ? p0 + p1 * rng_normal() : p0 + (p1 - p0) * rng_unit());
    }
    Py_ssize_t rows, cols;
    if (size_arg(fname, v[2], &rows, &cols) < 0) {
        return NULL;
    }
    MatrixObject *m = matrix_new((PyTypeObject *)cls, rows, cols, false);
    if (m == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < rows * cols; i++) {
        m->buf.data[i] = normal ? p0 + p1 * rng_normal() : p0 + (p1 - p0) * rng_unit();
    }
    return (PyObject *)m;
}

static PyObject *matrix_uniform(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    static const char *const names[] = {"minval", "maxval", "size"};
    return random_draw(cls, "uniform", names, args, nargs, kwnames, 0.0, 1.0, false);
}

static PyObject *matrix_normal(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"mean", "stddev", "size"};
    return random_draw(cls, "normal", names, args, nargs, kwnames, 0.0, 1.0, true);
}

static PyObject *matrix_seed(PyObject *cls, PyObject *value) {
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "seed(): value must be an int, not '%.200s'",
                     Py_TYPE(value)->tp_name);
        return NULL;
    }
    unsigned long long s = PyLong_AsUnsignedLongLongMask(value);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    rng_seed((uint64_t)s);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------- where/allclose */

static int matrix_arg(const char *fname, const char *what, PyObject *obj, MatrixObject **out) {
    if (!IS_MATRIX(obj)) {
        PyErr_Format(PyExc_TypeError, "%s(): %s must be a Matrix, not '%.200s'", fname, what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = M(obj);
    return live(*out);
}

static PyObject *matrix_allclose(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    static const char *const names[] = {"lhs", "rhs", "rtol", "atol", "equal_nan"};
    PyObject *v[5];
    MatrixObject *a, *b;
    double rtol = 1e-05, atol = 1e-08;
    bool equal_nan;
    if (parse_args("allclose", args, nargs, kwnames, names, 5, 0, 5, 2, v) < 0 ||
        matrix_arg("allclose", "lhs", v[0], &a) < 0 ||
        matrix_arg("allclose", "rhs", v[1], &b) < 0 ||
        (v[2] != NULL && real_arg("allclose", "rtol", v[2], &rtol) < 0) ||
        (v[3] != NULL && real_arg("allclose", "atol", v[3], &atol) < 0) ||
        bool_arg(v[4], &equal_nan) < 0) {
        return NULL;
    }
    if (a->buf.rows != b->buf.rows || a->buf.columns != b->buf.columns) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t n = msize(a);
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = a->buf.data[i], y = b->buf.data[i];
        if (isnan(x) || isnan(y)) {
            if (equal_nan && isnan(x) && isnan(y)) {
                continue;
            }
            Py_RETURN_FALSE;
        }
        if (x == y) {
            continue; /* also equal infinities */
        }
        if (!(fabs(x - y) <= atol + rtol * fabs(y))) {
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

/* A where() operand: a scalar (1x1 repeated) or exactly the mask's shape. */
static int where_operand(PyObject *obj, MatrixObject *mask, operand *op) {
    int r = operand_get(obj, op);
    if (r == 0) {
        PyErr_Format(PyExc_TypeError,
                     "where() operands must each be a Matrix, a scalar, or a list/tuple of "
                     "numbers, not '%.200s'",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (r < 0) {
        return -1;
    }
    if (!op->is_scalar && (op->rows != mask->buf.rows || op->columns != mask->buf.columns)) {
        PyErr_Format(PyExc_ValueError,
                     "where() matrix or list/tuple operands must match the mask shape %zdx%zd, "
                     "not %zdx%zd",
                     mask->buf.rows, mask->buf.columns, op->rows, op->columns);
        operand_release(op);
        return -1;
    }
    return 0;
}

static PyObject *matrix_where(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    static const char *const names[] = {"mask", "a", "b"};
    PyObject *v[3];
    MatrixObject *mask;
    operand a, b;
    if (parse_args("where", args, nargs, kwnames, names, 3, 0, 3, 3, v) < 0 ||
        matrix_arg("where", "mask", v[0], &mask) < 0 || where_operand(v[1], mask, &a) < 0) {
        return NULL;
    }
    if (where_operand(v[2], mask, &b) < 0) {
        operand_release(&a);
        return NULL;
    }
    MatrixObject *res = matrix_new((PyTypeObject *)cls, mask->buf.rows, mask->buf.columns, false);
    if (res != NULL) {
        Py_ssize_t n = msize(mask), as = a.is_scalar ? 0 : 1, bs = b.is_scalar ? 0 : 1;
        for (Py_ssize_t i = 0; i < n; i++) {
            /* NaN != 0.0, so a NaN mask element selects a. */
            res->buf.data[i] = mask->buf.data[i] != 0.0 ? a.data[i * as] : b.data[i * bs];
        }
    }
    operand_release(&a);
    operand_release(&b);
    return (PyObject *)res;
}

/* --------------------------------------------------------- rich compare */

/*
 * The operators compare like tuples, element by element in row-major
 * order, and return one bool; a NaN pair never decides.  == and != are
 * total (anything that cannot be compared is simply unequal); the orderings
 * raise on a shape mismatch.  The element-wise masks are less() etc.
 */
static PyObject *matrix_richcompare(PyObject *self, PyObject *other, int opid) {
    if (!IS_MATRIX(self)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        return NULL;
    }
    bool equality = opid == Py_EQ || opid == Py_NE;
    operand b;
    int r = operand_get(other, &b);
    if (r < 0) {
        if (!equality) {
            return NULL;
        }
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            return NULL; /* a stale Matrix: not a question of equality */
        }
        PyErr_Clear();
        return PyBool_FromLong(opid == Py_NE);
    }
    if (r == 0) {
        if (equality) {
            return PyBool_FromLong(opid == Py_NE);
        }
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t rows = m->buf.rows, cols = m->buf.columns;
    if (!b.is_scalar && (b.rows != rows || b.columns != cols)) {
        operand_release(&b);
        if (equality) {
            return PyBool_FromLong(opid == Py_NE);
        }
        PyErr_Format(PyExc_ValueError,
                     "ordering comparison requires a matrix, list, or tuple operand of the same "
                     "shape (or a scalar operand): %zdx%zd against %zdx%zd",
                     rows, cols, b.rows, b.columns);
        return NULL;
    }
    Py_ssize_t n = rows * cols, bs = b.is_scalar ? 0 : 1;
    int order = 0; /* -1 self first, 1 other first, 0 all (non-NaN) equal */
    for (Py_ssize_t i = 0; i < n && order == 0; i++) {
        double x = m->buf.data[i], y = b.data[i * bs];
        if (x < y) {
            order = -1;
        } else if (x > y) {
            order = 1;
        }
    }
    operand_release(&b);
    bool result;
    switch (opid) {
    case Py_LT:
        result = order < 0;
        break;
    case Py_LE:
        result = order <= 0;
        break;
    case Py_GT:
        result = order > 0;
        break;
    case Py_GE:
        result = order >= 0;
        break;
    case Py_EQ:
        result = order == 0;
        break;
    default:
        result = order != 0;
        break;
    }
    return PyBool_FromLong(result);
}

/* ------------------------------------------------------------ properties */

static PyObject *get_rows(PyObject *self, void *closure) {
    return live(M(self)) < 0 ? NULL : PyLong_FromSsize_t(M(self)->buf.rows);
}

static PyObject *get_columns(PyObject *self, void *closure) {
    return live(M(self)) < 0 ? NULL : PyLong_FromSsize_t(M(self)->buf.columns);
}

static PyObject *get_shape(PyObject *self, void *closure) {
    MatrixObject *m = M(self);
    return live(m) < 0 ? NULL : Py_BuildValue("(nn)", m->buf.rows, m->buf.columns);
}

static PyObject *get_size(PyObject *self, void *closure) {
    return live(M(self)) < 0 ? NULL : PyLong_FromSsize_t(msize(M(self)));
}

static PyObject *get_T(PyObject *self, void *closure) { return transpose(M(self), false); }

static PyObject *get_length(PyObject *self, void *closure) {
    MatrixObject *m = M(self);
    return live(m) < 0 ? NULL : PyFloat_FromDouble(sqrt(sumsq_contiguous(m->buf.data, msize(m))));
}

static PyObject *get_acquired(PyObject *self, void *closure) {
    return PyBool_FromLong(M(self)->buf.data != NULL);
}

static const char component_names[] = "xyzw";

static int component_index(MatrixObject *m, void *closure, Py_ssize_t *out) {
    Py_ssize_t i = (Py_ssize_t)(intptr_t)closure;
    if (live(m) < 0) {
        return -1;
    }
    if (i >= msize(m)) {
        PyErr_Format(PyExc_IndexError,
                     "a %zdx%zd Matrix has no .%c (it needs at least %zd elements)", m->buf.rows,
                     m->buf.columns, component_names[i], i + 1);
        return -1;
    }
    *out = i;
    return 0;
}

static PyObject *get_component(PyObject *self, void *closure) {
    Py_ssize_t i;
    return component_index(M(self), closure, &i) < 0 ? NULL
                                                     : PyFloat_FromDouble(M(self)->buf.data[i]);
}

static int set_component(PyObject *self, PyObject *value, void *closure) {
    Py_ssize_t i;
    double x;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Matrix components cannot be deleted");
        return -1;
    }
    char what[3] = {component_names[(intptr_t)closure], 0, 0};
    if (component_index(M(self), closure, &i) < 0 || real_arg("set", what, value, &x) < 0) {
        return -1;
    }
    M(self)->buf.data[i] = x;
    return 0;
}

/* --------------------------------------------------------- buffer export */

static int matrix_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        view->obj = NULL;
        return -1;
    }
    view->buf = m->buf.data;
    view->obj = Py_NewRef(self);
    view->len = msize(m) * (Py_ssize_t)sizeof(double);
    view->readonly = 0;
    view->itemsize = sizeof(double);
    view->format = (flags & PyBUF_FORMAT) ? "d" : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    m->view_shape[0] = m->buf.rows;
    m->view_shape[1] = m->buf.columns;
    m->view_strides[0] = m->buf.columns * (Py_ssize_t)sizeof(double);
    m->view_strides[1] = sizeof(double);
    if ((flags & PyBUF_ND) == PyBUF_ND) {
        view->ndim = 2;
        view->shape = m->view_shape;
        view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? m->view_strides : NULL;
    } else {
        /* A plain request sees the block as unsigned bytes. */
        view->ndim = 1;
        view->shape = NULL;
        view->strides = NULL;
        view->itemsize = 1;
        view->format = NULL;
    }
    m->exports++;
    return 0;
}

static void matrix_releasebuffer(PyObject *self, Py_buffer *view) {
    assert(M(self)->exports > 0);
    M(self)->exports--;
}

/* -------------------------------------------------------------- pickling */

static PyObject *matrix_reduce(PyObject *self, PyObject *unused) {
    MatrixObject *m = M(self);
    if (live(m) < 0) {
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_type(Py_TYPE(self));
    if (st == NULL) {
        return NULL;
    }
    PyObject *bytes =
        PyBytes_FromStringAndSize((const char *)m->buf.data, msize(m) * (Py_ssize_t)sizeof(double));
    if (bytes == NULL) {
        return NULL;
    }
    return Py_BuildValue("O(nnN)", st->matrix_rebuild, m->buf.rows, m->buf.columns, bytes);
}

/* _core._matrix_rebuild(rows, columns, data): the unpickling side. */
static PyObject *matrix_rebuild(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "_matrix_rebuild(rows, columns, data: bytes)");
        return NULL;
    }
    Py_ssize_t rows, cols;
    if (dimension_arg(args[0], "rows", &rows) < 0 || dimension_arg(args[1], "columns", &cols) < 0 ||
        checked_size(rows, cols) < 0) {
        return NULL;
    }
    if (PyBytes_GET_SIZE(args[2]) != rows * cols * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "_matrix_rebuild: %zd bytes cannot hold a %zdx%zd Matrix",
                     PyBytes_GET_SIZE(args[2]), rows, cols);
        return NULL;
    }
    bocpy_state *st = bocpy_state_of_module(module);
    MatrixObject *m = matrix_new(st->matrix_type, rows, cols, false);
    if (m != NULL) {
        memcpy(m->buf.data, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]));
    }
    return (PyObject *)m;
}

/* ------------------------------------------------------------ repr / str */

/* One number as the reference prints it: %g, with nan/inf unsigned-nan. */
static int format_number(char *out, size_t cap, double x) {
    if (isnan(x)) {
        return snprintf(out, cap, "nan");
    }
    return snprintf(out, cap, "%g", x);
}

#define NUMBER_CAP 32

static PyObject *matrix_repr(PyObject *self) {
    MatrixObject *m = M(self);
    if (m->buf.data == NULL) {
        return PyUnicode_FromString("Matrix(<moved to another interpreter>)");
    }
    Py_ssize_t n = msize(m);
    size_t cap = (size_t)n * (NUMBER_CAP + 2) + 96;
    char *text = malloc(cap);
    if (text == NULL) {
        return PyErr_NoMemory();
    }
    size_t len = (size_t)snprintf(text, cap, "Matrix(%zd, %zd, [", m->buf.rows, m->buf.columns);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i > 0) {
            text[len++] = ',';
            text[len++] = ' ';
        }
        len += (size_t)format_number(text + len, NUMBER_CAP, m->buf.data[i]);
    }
    text[len++] = ']';
    text[len++] = ')';
    PyObject *res = PyUnicode_FromStringAndSize(text, (Py_ssize_t)len);
    free(text);
    return res;
}

/* NumPy-like: [[a b]\n [c d]], every number right-aligned to one width. */
static PyObject *matrix_str(PyObject *self) {
    MatrixObject *m = M(self);
    if (m->buf.data == NULL) {
        return matrix_repr(self);
    }
    Py_ssize_t n = msize(m), rows = m->buf.rows, cols = m->buf.columns;
    int width = 1;
    char num[NUMBER_CAP];
    for (Py_ssize_t i = 0; i < n; i++) {
        int w = format_number(num, sizeof num, m->buf.data[i]);
        width = w > width ? w : width;
    }
    size_t cap = (size_t)n * ((size_t)width + 1) + (size_t)rows * 4 + 8;
    char *text = malloc(cap);
    if (text == NULL) {
        return PyErr_NoMemory();
    }
    size_t len = 0;
    text[len++] = '[';
    for (Py_ssize_t i = 0; i < rows; i++) {
        if (i > 0) {
            text[len++] = '\n';
            text[len++] = ' ';
        }
        text[len++] = '[';
        for (Py_ssize_t j = 0; j < cols; j++) {
            if (j > 0) {
                text[len++] = ' ';
            }
            format_number(num, sizeof num, m->buf.data[i * cols + j]);
            len += (size_t)snprintf(text + len, cap - len, "%*s", width, num);
        }
        text[len++] = ']';
    }
    text[len++] = ']';
    PyObject *res = PyUnicode_FromStringAndSize(text, (Py_ssize_t)len);
    free(text);
    return res;
}

/* ------------------------------------------------------- move interface */

int bocpy_matrix_detach(PyObject *obj, bocpy_matrix_buffer *out) {
    assert(bocpy_matrix_check(obj));
    MatrixObject *m = M(obj);
    if (live(m) < 0) {
        return -1;
    }
    if (m->exports > 0) {
        return export_error("move");
    }
    *out = m->buf;
    m->buf.data = NULL;
    return 0;
}

/* A new Matrix of `type` owning `buf` (which is emptied); on failure the
 * buffer stays with the caller. */
static PyObject *attach_to(PyTypeObject *type, bocpy_matrix_buffer *buf) {
    assert(buf->data != NULL && buf->rows >= 1 && buf->columns >= 1);
    MatrixObject *m = PyObject_New(MatrixObject, type);
    if (m == NULL) {
        return NULL;
    }
    m->buf = *buf;
    m->exports = 0;
    buf->data = NULL;
    return (PyObject *)m;
}

PyObject *bocpy_matrix_attach(bocpy_state *st, bocpy_matrix_buffer *buf) {
    return attach_to(st->matrix_type, buf);
}

/*
 * The <bocpy/move.h> callbacks: Matrix crosses interpreters through the
 * same public hook as any downstream type.  The payload is a malloc'd
 * bocpy_matrix_buffer (data pointer and shape): plain C memory that any
 * thread may free.
 */
static void *move_detach(PyObject *obj) {
    if (live(M(obj)) < 0) {
        return NULL;
    }
    if (M(obj)->exports > 0) {
        PyErr_SetString(PyExc_BufferError,
                        "cannot move a Matrix while a memoryview or NumPy array uses its buffer "
                        "(putting it in a Cown, or releasing the cown that holds it, moves it); "
                        "release the view first, or put a copy() in the cown");
        return NULL;
    }
    bocpy_matrix_buffer *payload = malloc(sizeof(*payload));
    if (payload == NULL) {
        PyErr_NoMemory();
        return NULL; /* obj unchanged */
    }
    if (bocpy_matrix_detach(obj, payload) < 0) {
        free(payload);
        return NULL;
    }
    return payload;
}

static void move_restore(PyObject *obj, void *payload) {
    bocpy_matrix_buffer *buf = payload;
    assert(bocpy_matrix_check(obj) && M(obj)->buf.data == NULL && M(obj)->exports == 0);
    M(obj)->buf = *buf;
    free(buf);
}

static PyObject *move_attach(PyTypeObject *type, void *payload) {
    bocpy_matrix_buffer *buf = payload;
    PyObject *m = attach_to(type, buf);
    if (m != NULL) {
        free(buf); /* the Matrix owns the block now; only the holder goes */
    }
    return m;
}

static void move_free_payload(void *payload) {
    bocpy_matrix_buffer *buf = payload;
    bocpy_matrix_buffer_free(buf); /* never plain free: the block is shifted */
    free(buf);
}

static const BocPyMoveType matrix_move = {
    BOCPY_MOVE_ABI_VERSION, move_detach, move_restore, move_attach, move_free_payload,
};

int bocpy_matrix_register_move(PyObject *module, bocpy_state *st) {
    /* What BocPyMove_Register() does, except for finding the table: its
     * PyCapsule_Import would look for `_core` on the `bocpy` package, which
     * gets that attribute only once this exec slot has returned.  So the
     * capsule is read from the module being executed; the checks and the
     * registration are the public ones. */
    PyObject *capsule = PyObject_GetAttrString(module, "_C_API");
    if (capsule == NULL) {
        return -1;
    }
    const BocPyMoveAPI *api = PyCapsule_GetPointer(capsule, BOCPY_MOVE_CAPSULE);
    Py_DECREF(capsule);
    if (api == NULL) {
        return -1;
    }
    assert(api->abi_version == BOCPY_MOVE_ABI_VERSION && api->size >= sizeof(BocPyMoveAPI));
    return api->register_type(st->matrix_type, &matrix_move);
}

/* ------------------------------------------------------------------ type */

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)
#define CLASSKW (METH_FASTCALL | METH_KEYWORDS | METH_CLASS)
#define METHOD(NAME, FLAGS, DOC)                                                                   \
    {#NAME, (PyCFunction)(void (*)(void))matrix_##NAME, FLAGS, PyDoc_STR(DOC)}

static PyMethodDef matrix_methods[] = {
    METHOD(transpose, FASTKW, "``transpose(in_place=False)``: the transposed matrix."),
    METHOD(sum, FASTKW,
           "``sum(axis=None)``: total (float), column sums (axis=0) or row sums (axis=1)."),
    METHOD(mean, FASTKW, "``mean(axis=None)``: arithmetic mean, overall or along an axis."),
    METHOD(magnitude, FASTKW, "``magnitude(axis=None)``: Euclidean (L2) norm."),
    METHOD(magnitude_squared, FASTKW, "``magnitude_squared(axis=None)``: sum of squares."),
    METHOD(min, FASTKW, "``min(axis=None)``: minimum (NaN ignored unless all NaN)."),
    METHOD(max, FASTKW, "``max(axis=None)``: maximum (NaN ignored unless all NaN)."),
    METHOD(argmin, FASTKW, "``argmin(axis=None)``: index of the first minimum."),
    METHOD(argmax, FASTKW, "``argmax(axis=None)``: index of the first maximum."),
    METHOD(vecdot, FASTKW, "``vecdot(other, axis=None)``: sum of element-wise products."),
    METHOD(cross, FASTKW, "``cross(other, axis=None)``: 2-D (scalar) or 3-D cross products."),
    METHOD(angle, FASTKW, "``angle(axis=None)``: atan2(y, x) of 2-D vectors."),
    METHOD(perpendicular, FASTKW,
           "``perpendicular(axis=None, in_place=False)``: (x, y) -> (-y, x)."),
    METHOD(normalize, FASTKW, "``normalize(axis=None, in_place=False)``: divide by the magnitude."),
    METHOD(fma, FASTKW, "``fma(b, c, /, in_place=False)``: self * b + c rounded once."),
    METHOD(scaled_add, FASTKW, "``scaled_add(s, x, /, in_place=False)``: self + s * x."),
    METHOD(add, FASTKW, "``add(other, /, *, out=None)``: self + other."),
    METHOD(subtract, FASTKW, "``subtract(other, /, *, out=None)``: self - other."),
    METHOD(multiply, FASTKW, "``multiply(other, /, *, out=None)``: self * other (element-wise)."),
    METHOD(divide, FASTKW, "``divide(other, /, *, out=None)``: self / other."),
    METHOD(negate, FASTKW, "``negate(in_place=False, *, out=None)``: -self."),
    METHOD(abs, FASTKW, "``abs(in_place=False, *, out=None)``: the absolute values."),
    METHOD(sqrt, FASTKW, "``sqrt(in_place=False, *, out=None)``: square roots (NaN below zero)."),
    METHOD(ceil, FASTKW, "``ceil(in_place=False, *, out=None)``: round up."),
    METHOD(floor, FASTKW, "``floor(in_place=False, *, out=None)``: round down."),
    METHOD(round, FASTKW, "``round(in_place=False, *, out=None)``: round half to even."),
    METHOD(less, FASTKW, "``less(other)``: 0/1 mask of self < other."),
    METHOD(less_equal, FASTKW, "``less_equal(other)``: 0/1 mask of self <= other."),
    METHOD(greater, FASTKW, "``greater(other)``: 0/1 mask of self > other."),
    METHOD(greater_equal, FASTKW, "``greater_equal(other)``: 0/1 mask of self >= other."),
    METHOD(equal, FASTKW, "``equal(other)``: 0/1 mask of self == other."),
    METHOD(not_equal, FASTKW, "``not_equal(other)``: 0/1 mask of self != other."),
    METHOD(clip, FASTKW, "``clip(min=None, max=None)``: a copy clamped to [min, max]."),
    METHOD(take, FASTKW, "``take(indices, axis=0)``: the selected rows or columns."),
    METHOD(put, FASTKW,
           "``put(indices, value, axis=0, accumulate=False)``: assign into rows or columns."),
    METHOD(copy, METH_NOARGS, "``copy()``: a new Matrix with the same values."),
    {"__reduce__", matrix_reduce, METH_NOARGS, PyDoc_STR("Pickle support.")},
    METHOD(allclose, CLASSKW, "``allclose(lhs, rhs, rtol=1e-05, atol=1e-08, equal_nan=False)``."),
    METHOD(where, CLASSKW, "``where(mask, a, b)``: a where mask is non-zero, else b."),
    METHOD(zeros, CLASSKW, "``zeros(size)``: a (rows, columns) matrix of zeros."),
    METHOD(ones, CLASSKW, "``ones(size)``: a (rows, columns) matrix of ones."),
    METHOD(uniform, CLASSKW, "``uniform(minval=0.0, maxval=1.0, size=None)``: uniform draws."),
    METHOD(normal, CLASSKW, "``normal(mean=0.0, stddev=1.0, size=None)``: Gaussian draws."),
    METHOD(seed, METH_O | METH_CLASS, "``seed(value)``: seed this thread's random generator."),
    METHOD(vector, CLASSKW, "``vector(values, as_column=False)``: a 1xN (or Nx1) matrix."),
    METHOD(concat, CLASSKW, "``concat(values, axis=0)``: stack matrices by rows or columns."),
    METHOD(from_buffer, METH_O | METH_CLASS,
           "``from_buffer(obj)``: a copy of a C-contiguous 2-D float64 buffer."),
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef matrix_getset[] = {
    {"rows", get_rows, NULL, PyDoc_STR("The number of rows."), NULL},
    {"columns", get_columns, NULL, PyDoc_STR("The number of columns."), NULL},
    {"shape", get_shape, NULL, PyDoc_STR("(rows, columns)."), NULL},
    {"size", get_size, NULL, PyDoc_STR("rows * columns."), NULL},
    {"T", get_T, NULL, PyDoc_STR("A transposed copy."), NULL},
    {"length", get_length, NULL, PyDoc_STR("The Frobenius (L2) magnitude."), NULL},
    {"acquired", get_acquired, NULL,
     PyDoc_STR("Whether this interpreter holds the data (False once moved away)."), NULL},
    {"x", get_component, set_component, PyDoc_STR("Element 0."), (void *)0},
    {"y", get_component, set_component, PyDoc_STR("Element 1."), (void *)1},
    {"z", get_component, set_component, PyDoc_STR("Element 2."), (void *)2},
    {"w", get_component, set_component, PyDoc_STR("Element 3."), (void *)3},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot matrix_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("Matrix(rows, columns, values=None) or Matrix(buffer)\n--\n\n"
                                  "A dense 2-D matrix of float64, usable in every interpreter.")},
    {Py_tp_new, matrix_tp_new},
    {Py_tp_dealloc, matrix_dealloc},
    {Py_tp_repr, matrix_repr},
    {Py_tp_str, matrix_str},
    {Py_tp_hash, PyObject_HashNotImplemented},
    {Py_tp_richcompare, matrix_richcompare},
    {Py_tp_iter, matrix_iter},
    {Py_tp_methods, matrix_methods},
    {Py_tp_getset, matrix_getset},
    {Py_nb_add, nb_add},
    {Py_nb_subtract, nb_sub},
    {Py_nb_multiply, nb_mul},
    {Py_nb_true_divide, nb_div},
    {Py_nb_matrix_multiply, nb_matmul},
    {Py_nb_inplace_add, nb_iadd},
    {Py_nb_inplace_subtract, nb_isub},
    {Py_nb_inplace_multiply, nb_imul},
    {Py_nb_inplace_true_divide, nb_idiv},
    {Py_nb_inplace_matrix_multiply, nb_imatmul},
    {Py_nb_negative, nb_negative},
    {Py_nb_absolute, nb_absolute},
    {Py_mp_subscript, matrix_subscript},
    {Py_mp_ass_subscript, matrix_ass_subscript},
    {Py_mp_length, matrix_length},
    {Py_sq_length, matrix_length},
    {Py_sq_item, matrix_item},
    {Py_bf_getbuffer, matrix_getbuffer},
    {Py_bf_releasebuffer, matrix_releasebuffer},
    {0, NULL},
};

static PyType_Spec matrix_spec = {
    .name = "bocpy.Matrix",
    .basicsize = sizeof(MatrixObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = matrix_slots,
};

/* _core._matrix_address(m): the address of m's numbers, so that tests can
 * see (in any interpreter, where NumPy and ctypes may not load) that a move
 * handed the block over instead of copying it.  Private. */
static PyObject *matrix_address(PyObject *module, PyObject *obj) {
    (void)module;
    if (!IS_MATRIX(obj)) {
        PyErr_Format(PyExc_TypeError, "_matrix_address() needs a Matrix, not '%.200s'",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (live(M(obj)) < 0) {
        return NULL;
    }
    return PyLong_FromVoidPtr(M(obj)->buf.data);
}

static PyMethodDef address_def = {"_matrix_address", matrix_address, METH_O,
                                  PyDoc_STR("The address of a Matrix's numbers (for tests).")};

static PyMethodDef rebuild_def = {"_matrix_rebuild", (PyCFunction)(void (*)(void))matrix_rebuild,
                                  METH_FASTCALL, PyDoc_STR("Unpickles a Matrix.")};

int bocpy_matrix_register(PyObject *module, bocpy_state *st) {
    st->matrix_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &matrix_spec, NULL);
    if (st->matrix_type == NULL || PyModule_AddType(module, st->matrix_type) < 0) {
        return -1;
    }
    PyObject *name = PyModule_GetNameObject(module);
    if (name == NULL) {
        return -1;
    }
    st->matrix_rebuild = PyCFunction_NewEx(&rebuild_def, module, name);
    PyObject *address = PyCFunction_NewEx(&address_def, module, name);
    Py_DECREF(name);
    int rc = -1;
    if (st->matrix_rebuild != NULL && address != NULL &&
        PyModule_AddObjectRef(module, "_matrix_rebuild", st->matrix_rebuild) == 0 &&
        PyModule_AddObjectRef(module, "_matrix_address", address) == 0) {
        rc = 0;
    }
    Py_XDECREF(address);
    return rc;
}
