/*
 * messaging.c: Erlang-style channels -- send(tag, contents) and a selective,
 * blocking receive(tags) -- usable from any thread of any interpreter.
 *
 * One process-wide table maps each tag to a FIFO of serialised messages.
 * Everything is guarded by one mutex, and every send broadcasts one
 * condition variable: a receiver checks its tags and sleeps under the same
 * mutex, so a message can never arrive between its check and its sleep (no
 * lost wake-ups), whatever the number of senders and receivers.  Receivers
 * sleep in slices of at most 50 ms with their GIL released, so Ctrl-C
 * reaches a receive() blocked on the main thread.  There is no cap on tags.
 */
#include "bocpy.h"

#include <string.h>
#include <time.h>

typedef struct message {
    struct message *next;
    bocpy_blob *blob;
} message;

typedef struct channel {
    message *head, *tail;
    size_t length;
} channel;

static pthread_mutex_t channels_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t channels_cond = PTHREAD_COND_INITIALIZER;
static bocpy_strtable channels; /* tag -> channel */

#define RECEIVE_SLICE_NS (50 * 1000 * 1000)

/* The channel for `tag` (created if `create`), or NULL.  Lock held. */
static channel *channel_find(const char *tag, size_t len, bool create) {
    bocpy_strtable_slot *slot = bocpy_strtable_find(&channels, tag, len, create);
    if (slot == NULL) {
        return NULL;
    }
    if (slot->value == NULL) {
        slot->value = calloc(1, sizeof(channel));
    }
    return slot->value;
}

static void channel_clear(channel *ch) {
    message *m = ch->head;
    while (m != NULL) {
        message *next = m->next;
        bocpy_blob_free(m->blob);
        free(m);
        m = next;
    }
    ch->head = ch->tail = NULL;
    ch->length = 0;
}

/* A tuple of tag strings from a str or a sequence of str (maybe empty). */
static PyObject *tags_tuple(PyObject *tags) {
    PyObject *tuple = PyUnicode_Check(tags) ? PyTuple_Pack(1, tags) : PySequence_Tuple(tags);
    if (tuple == NULL) {
        /* Only "not a sequence" is ours to reword; Ctrl-C and the like pass. */
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "tags must be a str or a sequence of str, not '%.200s'",
                         Py_TYPE(tags)->tp_name);
        }
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        const char *tag;
        size_t len;
        if (bocpy_str_arg(PyTuple_GET_ITEM(tuple, i), "a message tag", &tag, &len) < 0) {
            Py_DECREF(tuple);
            return NULL;
        }
    }
    return tuple;
}

static void lock_channels(void) {
    /* Never wait for this mutex while holding a GIL that the holder might
     * need (it never does, but unpickling is done outside the lock anyway). */
    if (pthread_mutex_trylock(&channels_lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
            pthread_mutex_lock(&channels_lock);
        Py_END_ALLOW_THREADS
    }
}

PyObject *bocpy_send(bocpy_state *st, PyObject *tag, PyObject *contents) {
    const char *name;
    size_t len;
    if (bocpy_str_arg(tag, "a message tag", &name, &len) < 0) {
        return NULL;
    }
    bocpy_blob *blob = bocpy_serialise(st, contents);
    if (blob == NULL) {
        return NULL;
    }
    message *m = malloc(sizeof(*m));
    if (m == NULL) {
        bocpy_blob_free(blob);
        return PyErr_NoMemory();
    }
    m->next = NULL;
    m->blob = blob;
    lock_channels();
    channel *ch = channel_find(name, len, true);
    if (ch == NULL) {
        pthread_mutex_unlock(&channels_lock);
        bocpy_blob_free(blob);
        free(m);
        return PyErr_NoMemory();
    }
    if (ch->tail != NULL) {
        ch->tail->next = m;
    } else {
        ch->head = m;
    }
    ch->tail = m;
    ch->length++;
    pthread_cond_broadcast(&channels_cond);
    pthread_mutex_unlock(&channels_lock);
    Py_RETURN_NONE;
}

/* Pops the first message of the first non-empty channel among `tags`.
 * Lock held. */
static message *take(PyObject *tags, PyObject **which) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tags); i++) {
        PyObject *tag = PyTuple_GET_ITEM(tags, i);
        Py_ssize_t len;
        const char *name = PyUnicode_AsUTF8AndSize(tag, &len); /* checked: tags_tuple */
        channel *ch = channel_find(name, (size_t)len, false);
        if (ch != NULL && ch->head != NULL) {
            message *m = ch->head;
            ch->head = m->next;
            if (ch->head == NULL) {
                ch->tail = NULL;
            }
            ch->length--;
            *which = tag;
            return m;
        }
    }
    return NULL;
}

PyObject *bocpy_receive(bocpy_state *st, PyObject *tags_obj, PyObject *timeout_obj,
                        PyObject *after) {
    PyObject *tags = tags_tuple(tags_obj);
    if (tags == NULL) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(tags) == 0) {
        Py_DECREF(tags);
        PyErr_SetString(PyExc_RuntimeError,
                        "receive() needs at least one tag to wait for, got an empty sequence");
        return NULL;
    }
    double timeout = -1;
    if (timeout_obj != Py_None && bocpy_float_arg(timeout_obj, "timeout", &timeout) < 0) {
        Py_DECREF(tags);
        return NULL;
    }
    if (after != Py_None && !PyCallable_Check(after)) {
        Py_DECREF(tags);
        PyErr_Format(PyExc_TypeError, "after must be callable or None, not '%.200s'",
                     Py_TYPE(after)->tp_name);
        return NULL;
    }
    uint64_t start = boc_now_ns();
    uint64_t budget = timeout < 0 ? UINT64_MAX : bocpy_seconds_to_ns(timeout);
    PyObject *which = NULL;
    message *m = NULL;
    lock_channels();
    for (;;) {
        m = take(tags, &which);
        if (m != NULL) {
            break;
        }
        uint64_t elapsed = boc_now_ns() - start;
        if (budget != UINT64_MAX && elapsed >= budget) {
            break;
        }
        uint64_t slice = RECEIVE_SLICE_NS;
        if (budget != UINT64_MAX && budget - elapsed < slice) {
            slice = budget - elapsed;
        }
        struct timespec at;
        clock_gettime(CLOCK_REALTIME, &at);
        uint64_t ns = (uint64_t)at.tv_nsec + slice;
        at.tv_sec += (time_t)(ns / 1000000000u);
        at.tv_nsec = (long)(ns % 1000000000u);
        int signalled;
        Py_BEGIN_ALLOW_THREADS
            pthread_cond_timedwait(&channels_cond, &channels_lock, &at);
        Py_END_ALLOW_THREADS
        /* Re-taking the GIL with the channel lock held is safe: no thread
         * waits for the channel lock while holding a GIL (lock_channels). */
        pthread_mutex_unlock(&channels_lock);
        signalled = PyErr_CheckSignals();
        if (signalled < 0) {
            Py_DECREF(tags);
            return NULL; /* Ctrl-C while blocked */
        }
        lock_channels();
    }
    pthread_mutex_unlock(&channels_lock);
    if (m == NULL) {
        Py_DECREF(tags);
        if (after != Py_None) {
            return PyObject_CallNoArgs(after);
        }
        return Py_BuildValue("(sO)", BOCPY_TIMEOUT_TAG, Py_None);
    }
    Py_INCREF(which);
    Py_DECREF(tags);
    PyObject *contents = bocpy_deserialise(st, m->blob);
    bocpy_blob_free(m->blob);
    free(m);
    if (contents == NULL) {
        Py_DECREF(which);
        return NULL;
    }
    PyObject *pair = PyList_New(2);
    if (pair == NULL) {
        Py_DECREF(which);
        Py_DECREF(contents);
        return NULL;
    }
    PyList_SET_ITEM(pair, 0, which);
    PyList_SET_ITEM(pair, 1, contents);
    return pair;
}

PyObject *bocpy_drain(PyObject *tags_obj) {
    PyObject *tags = tags_tuple(tags_obj);
    if (tags == NULL) {
        return NULL;
    }
    lock_channels();
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tags); i++) {
        Py_ssize_t len;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(tags, i), &len);
        channel *ch = channel_find(name, (size_t)len, false);
        if (ch != NULL) {
            channel_clear(ch);
        }
    }
    pthread_mutex_unlock(&channels_lock);
    Py_DECREF(tags);
    Py_RETURN_NONE;
}

PyObject *bocpy_set_tags(PyObject *tags_obj) {
    PyObject *tags = tags_tuple(tags_obj);
    if (tags == NULL) {
        return NULL;
    }
    lock_channels();
    /* Every queue is cleared; with no channel cap, "assigning" tags only
     * means their channels exist from now on (an empty list assigns none:
     * tags get channels on first use, as before). */
    for (size_t i = 0; i < channels.cap; i++) {
        if (channels.slots[i].key != NULL && channels.slots[i].value != NULL) {
            channel_clear(channels.slots[i].value);
        }
    }
    bool out_of_memory = false;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tags) && !out_of_memory; i++) {
        Py_ssize_t len;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(tags, i), &len);
        out_of_memory = channel_find(name, (size_t)len, true) == NULL;
    }
    pthread_mutex_unlock(&channels_lock);
    Py_DECREF(tags);
    if (out_of_memory) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}
