/*
 * matrix.h: the Matrix type's C surface inside the binding.
 *
 * A Matrix is a Python object wrapping a `bocpy_matrix_buffer`: a plain C
 * struct (data pointer, rows, columns) that owns one separately allocated,
 * 64-byte aligned block of `rows * columns` doubles in row-major order.
 * Nothing in the buffer refers to any interpreter, so the buffer can be
 * detached from a Matrix in one interpreter and attached to a new Matrix in
 * another without copying the numbers (see bocpy_matrix_detach/attach).
 */
#ifndef BOCPY_MATRIX_H
#define BOCPY_MATRIX_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>

typedef struct bocpy_state bocpy_state;

/* The numbers of one matrix.  `data` is NULL only in a Matrix whose buffer
 * was detached (moved away); otherwise rows >= 1, columns >= 1 and `data`
 * holds rows * columns doubles, 64-byte aligned, freed with
 * bocpy_matrix_buffer_free.  Needs no GIL and no interpreter. */
typedef struct bocpy_matrix_buffer {
    double *data;
    Py_ssize_t rows;
    Py_ssize_t columns;
} bocpy_matrix_buffer;

/* Creates the Matrix type and `_matrix_rebuild` for `module` (exec slot). */
int bocpy_matrix_register(PyObject *module, bocpy_state *st);

/* Registers Matrix with the move registry through the public <bocpy/move.h>
 * table (after bocpy_move_module_init has published it): 0 or -1. */
int bocpy_matrix_register_move(PyObject *module, bocpy_state *st);

/* True when `obj` is a Matrix of any interpreter's bocpy._core. */
bool bocpy_matrix_check(PyObject *obj);

/* Takes the buffer out of Matrix `obj` into `out`; `obj` is left stale
 * (every later use raises RuntimeError).  -1 with BufferError while a
 * memoryview or NumPy array exports the buffer, or RuntimeError when it was
 * already detached. */
int bocpy_matrix_detach(PyObject *obj, bocpy_matrix_buffer *out);

/* A new Matrix of the calling interpreter owning `buf` (which is emptied).
 * On failure (NULL, exception set) the buffer is left with the caller. */
PyObject *bocpy_matrix_attach(bocpy_state *st, bocpy_matrix_buffer *buf);

/* Frees a buffer that no Matrix owns (any thread, no GIL needed). */
void bocpy_matrix_buffer_free(bocpy_matrix_buffer *buf);

#endif /* BOCPY_MATRIX_H */
