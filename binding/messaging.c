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
    char *tag;
    uint64_t hash;
    message *head, *tail;
    size_t length;
} channel;

static pthread_mutex_t channels_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t channels_cond = PTHREAD_COND_INITIALIZER;
static channel *channels; /* open addressing; tag == NULL is empty */
static size_t channels_cap, channels_len;

#define RECEIVE_SLICE_NS (50 * 1000 * 1000)

static uint64_t hash_tag(const char *tag) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)tag; *p; p++) {
        h = (h ^ *p) * 0x100000001b3ULL;
    }
    return h;
}

/* The channel for `tag` (created if `create`), or NULL.  Lock held. */
static channel *channel_find(const char *tag, bool create) {
    uint64_t h = hash_tag(tag);
    if (channels_cap > 0) {
        for (size_t i = h & (channels_cap - 1); channels[i].tag != NULL;
             i = (i + 1) & (channels_cap - 1)) {
            if (channels[i].hash == h && strcmp(channels[i].tag, tag) == 0) {
                return &channels[i];
            }
        }
    }
    if (!create) {
        return NULL;
    }
    if (2 * (channels_len + 1) > channels_cap) {
        size_t cap = channels_cap ? channels_cap * 2 : 64;
        channel *grown = calloc(cap, sizeof(*grown));
        if (grown == NULL) {
            return NULL;
        }
        for (size_t i = 0; i < channels_cap; i++) {
            if (channels[i].tag != NULL) {
                size_t j = channels[i].hash & (cap - 1);
                while (grown[j].tag != NULL) {
                    j = (j + 1) & (cap - 1);
                }
                grown[j] = channels[i];
            }
        }
        free(channels);
        channels = grown;
        channels_cap = cap;
    }
    size_t i = h & (channels_cap - 1);
    while (channels[i].tag != NULL) {
        i = (i + 1) & (channels_cap - 1);
    }
    channels[i].tag = strdup(tag);
    if (channels[i].tag == NULL) {
        return NULL;
    }
    channels[i].hash = h;
    channels_len++;
    return &channels[i];
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

static const char *tag_utf8(PyObject *tag) {
    if (!PyUnicode_Check(tag)) {
        PyErr_Format(PyExc_TypeError, "message tags are str, not '%.200s' (%R)",
                     Py_TYPE(tag)->tp_name, tag);
        return NULL;
    }
    return PyUnicode_AsUTF8(tag);
}

/* A tuple of tag strings from a str or a sequence of str. */
static PyObject *tags_tuple(PyObject *tags) {
    if (PyUnicode_Check(tags)) {
        return PyTuple_Pack(1, tags);
    }
    PyObject *tuple = PySequence_Tuple(tags);
    if (tuple == NULL) {
        PyErr_Format(PyExc_TypeError, "tags must be a str or a sequence of str, not '%.200s'",
                     Py_TYPE(tags)->tp_name);
        return NULL;
    }
    if (PyTuple_GET_SIZE(tuple) == 0) {
        Py_DECREF(tuple);
        PyErr_SetString(PyExc_ValueError, "tags must name at least one tag");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        if (tag_utf8(PyTuple_GET_ITEM(tuple, i)) == NULL) {
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
    const char *name = tag_utf8(tag);
    if (name == NULL) {
        return NULL;
    }
    bocpy_blob *blob = bocpy_serialize(st, contents);
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
    channel *ch = channel_find(name, true);
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
        channel *ch = channel_find(PyUnicode_AsUTF8(tag), false);
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
    double timeout = -1;
    if (timeout_obj != Py_None) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1 && PyErr_Occurred()) {
            Py_DECREF(tags);
            PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds, not '%.200s'",
                         Py_TYPE(timeout_obj)->tp_name);
            return NULL;
        }
        if (timeout != timeout) {
            Py_DECREF(tags);
            PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
            return NULL;
        }
    }
    if (after != Py_None && !PyCallable_Check(after)) {
        Py_DECREF(tags);
        PyErr_Format(PyExc_TypeError, "after must be callable or None, not '%.200s'",
                     Py_TYPE(after)->tp_name);
        return NULL;
    }
    uint64_t start = boc_now_ns();
    uint64_t budget = timeout < 0 ? UINT64_MAX : (uint64_t)(timeout * 1e9);
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
    PyObject *contents = bocpy_deserialize(st, m->blob);
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

PyObject *bocpy_drain(PyObject *tags_obj, bool forget) {
    PyObject *tags = tags_tuple(tags_obj);
    if (tags == NULL) {
        return NULL;
    }
    lock_channels();
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tags); i++) {
        channel *ch = channel_find(PyUnicode_AsUTF8(PyTuple_GET_ITEM(tags, i)), forget);
        if (ch != NULL) {
            channel_clear(ch);
        }
    }
    pthread_mutex_unlock(&channels_lock);
    Py_DECREF(tags);
    Py_RETURN_NONE;
}
