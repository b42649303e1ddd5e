/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._fastq: the per-packet dispatch loop of the packet channels,
 * compiled.  Optional: without it the channels use their Python loop.
 *
 * QueueLoop.run() is NfQueue._dispatch's loop over one batch (nfbind/queue.py
 * holds the same loop in Python, the reference for what this one does): it
 * makes each packet object, hands it to the handler and keeps what the
 * handler returned when that is None or a plain verdict.  Anything else
 * (an Exception from the handler, any other return value) ends the call
 * with that packet, for Python to handle as its loop does; Python then calls
 * run() again for the rest of the batch.  An exception that is not an
 * Exception (KeyboardInterrupt ...) leaves the call with the batch's
 * position (pos, cur) exactly where the Python loop leaves it.
 *
 * LogLoop.run() is NfLog's loop over one batch (nfbind/log.py, _dispatch and
 * _dispatch_hot): every packet goes to the handler; an Exception from it is
 * counted (the first one kept), anything else ends the call, which then
 * says where, for Python to keep the packets not handed out.
 *
 * The objects' slots (Packet._b, Flight.pos ...) are written at the offsets
 * their member descriptors give, looked up and checked once, when the loop
 * is made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* struct nfb_hot and its NFB_HOT_* bits, as cdef/core.c fills them */
#include "../cdef/records.h"

#define FQ_MAX_PLAIN 8

/* the hot slots, in this order */
enum { H_PAYLOAD_LEN, H_MARK, H_INDEV, H_HW_PROTOCOL, H_TIMESTAMP, H_COUNT };
static const char *const hot_names[H_COUNT] = {
    "payload_len", "mark", "indev", "hw_protocol", "timestamp",
};

/* A packet class (nfbind.packet.PacketBase's) and its hot variant, with the
 * offsets of the slots both loops fill: the batch, the record offset and,
 * in the hot variant, the hot fields. */
typedef struct {
    PyTypeObject *cls;
    PyTypeObject *hot_cls;      /* nfbind.packet.hot_variant(cls, ...) */
    Py_ssize_t off_b, off_o;
    Py_ssize_t off_hot[H_COUNT];
} PacketClasses;

typedef struct {
    PyObject_HEAD
    PacketClasses pk;           /* Packet */
    PyTypeObject *flight_cls;
    PyObject *verdict_cls;      /* nfbind.Verdict */
    Py_ssize_t off_id;
    Py_ssize_t off_n, off_vbuf, off_recs, off_pos, off_cur;
    long long plain[FQ_MAX_PLAIN];
    int nplain;
    Py_ssize_t nf, f_id, f_queue;
    int64_t deferred, done;
} QueueLoop;

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/* Store ``v`` (a new reference, or NULL: then an error is set) in a slot. */
static inline int slot_put(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old;

    if (v == NULL)
        return -1;
    old = SLOT(o, off);
    SLOT(o, off) = v;
    Py_XDECREF(old);
    return 0;
}

/* The offset of the writable object slot ``name`` of ``type`` (its member
 * descriptor's), or -1 with an error set. */
static Py_ssize_t slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    PyMemberDescrObject *md;
    Py_ssize_t off = -1;

    if (d == NULL)
        return -1;
    if (!PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
        goto done;
    }
    md = (PyMemberDescrObject *)d;
    if (md->d_member->type != T_OBJECT_EX || (md->d_member->flags & READONLY)
            || !PyType_IsSubtype(type, PyDescr_TYPE(md))
            || md->d_member->offset < (Py_ssize_t)sizeof(PyObject)
            || md->d_member->offset + (Py_ssize_t)sizeof(PyObject *) > type->tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot",
                     type->tp_name, name);
        goto done;
    }
    off = md->d_member->offset;
done:
    Py_DECREF(d);
    return off;
}

static int check_type(PyObject *o, const char *what)
{
    if (!PyType_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a class", what);
        return -1;
    }
    return 0;
}

/* Keep the classes ``cls`` and ``hot_cls`` in ``pk`` with their slots'
 * offsets: the hot variant must be a subclass that keeps its base's layout
 * and has the hot slots.  0, or -1 with an error set (``pk`` then holds
 * what it took, for the caller's clear). */
static int classes_init(PacketClasses *pk, PyObject *cls, PyObject *hot_cls)
{
    int k;

    if (check_type(cls, "packet") < 0 || check_type(hot_cls, "hot_packet") < 0)
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)hot_cls, (PyTypeObject *)cls)) {
        PyErr_SetString(PyExc_TypeError, "hot_packet must be a subclass of packet");
        return -1;
    }
    Py_INCREF(cls);
    pk->cls = (PyTypeObject *)cls;
    Py_INCREF(hot_cls);
    pk->hot_cls = (PyTypeObject *)hot_cls;
    if ((pk->off_b = slot_offset(pk->cls, "_b")) < 0
            || (pk->off_o = slot_offset(pk->cls, "_o")) < 0)
        return -1;
    if (slot_offset(pk->hot_cls, "_b") != pk->off_b
            || slot_offset(pk->hot_cls, "_o") != pk->off_o) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "hot_packet lays out its base's slots otherwise");
        return -1;
    }
    for (k = 0; k < H_COUNT; k++)
        if ((pk->off_hot[k] = slot_offset(pk->hot_cls, hot_names[k])) < 0)
            return -1;
    return 0;
}

static int classes_traverse(PacketClasses *pk, visitproc visit, void *arg)
{
    Py_VISIT(pk->cls);
    Py_VISIT(pk->hot_cls);
    return 0;
}

static void classes_clear(PacketClasses *pk)
{
    Py_CLEAR(pk->cls);
    Py_CLEAR(pk->hot_cls);
}

static int as_index(PyObject *o, Py_ssize_t *out)
{
    Py_ssize_t v = PyLong_AsSsize_t(o);

    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0) {
        PyErr_SetString(PyExc_ValueError, "index must not be negative");
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *QueueLoop_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {
        "packet", "hot_packet", "flight", "verdict", "plain", "nf", "f_id", "f_queue",
        "deferred", "done", NULL,
    };
    PyObject *cls, *hot_cls, *flight_cls, *verdict_cls, *plain, *o_nf, *o_fid, *o_fq;
    PyObject *o_def, *o_done;
    PyObject *seq = NULL;
    QueueLoop *self;
    long long v;
    int k;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOOO:QueueLoop", kwlist,
                                     &cls, &hot_cls, &flight_cls, &verdict_cls, &plain,
                                     &o_nf, &o_fid, &o_fq, &o_def, &o_done))
        return NULL;
    if (check_type(flight_cls, "flight") < 0 || check_type(verdict_cls, "verdict") < 0)
        return NULL;
    self = (QueueLoop *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (classes_init(&self->pk, cls, hot_cls) < 0)
        goto fail;
    Py_INCREF(flight_cls);
    self->flight_cls = (PyTypeObject *)flight_cls;
    Py_INCREF(verdict_cls);
    self->verdict_cls = verdict_cls;

    if ((self->off_id = slot_offset(self->pk.cls, "id")) < 0)
        goto fail;
    if (slot_offset(self->pk.hot_cls, "id") != self->off_id) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "hot_packet lays out its base's slots otherwise");
        goto fail;
    }
    if ((self->off_n = slot_offset(self->flight_cls, "n")) < 0
            || (self->off_vbuf = slot_offset(self->flight_cls, "vbuf")) < 0
            || (self->off_recs = slot_offset(self->flight_cls, "recs")) < 0
            || (self->off_pos = slot_offset(self->flight_cls, "pos")) < 0
            || (self->off_cur = slot_offset(self->flight_cls, "cur")) < 0)
        goto fail;

    seq = PySequence_Fast(plain, "plain must be an iterable of ints");
    if (seq == NULL)
        goto fail;
    if (PySequence_Fast_GET_SIZE(seq) > FQ_MAX_PLAIN) {
        PyErr_SetString(PyExc_ValueError, "too many plain verdicts");
        goto fail;
    }
    self->nplain = 0;
    for (k = 0; k < PySequence_Fast_GET_SIZE(seq); k++) {
        v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, k));
        if (v == -1 && PyErr_Occurred())
            goto fail;
        self->plain[self->nplain++] = v;
    }
    Py_CLEAR(seq);

    if (as_index(o_nf, &self->nf) < 0 || as_index(o_fid, &self->f_id) < 0
            || as_index(o_fq, &self->f_queue) < 0)
        goto fail;
    if (self->nf == 0 || self->f_id >= self->nf || self->f_queue >= self->nf) {
        PyErr_SetString(PyExc_ValueError, "record indices out of range");
        goto fail;
    }
    self->deferred = PyLong_AsLongLong(o_def);
    if (self->deferred == -1 && PyErr_Occurred())
        goto fail;
    self->done = PyLong_AsLongLong(o_done);
    if (self->done == -1 && PyErr_Occurred())
        goto fail;
    return (PyObject *)self;
fail:
    Py_XDECREF(seq);
    Py_DECREF(self);
    return NULL;
}

static int QueueLoop_traverse(QueueLoop *self, visitproc visit, void *arg)
{
    Py_VISIT(self->flight_cls);
    Py_VISIT(self->verdict_cls);
    return classes_traverse(&self->pk, visit, arg);
}

static int QueueLoop_clear(QueueLoop *self)
{
    classes_clear(&self->pk);
    Py_CLEAR(self->flight_cls);
    Py_CLEAR(self->verdict_cls);
    return 0;
}

static void QueueLoop_dealloc(QueueLoop *self)
{
    PyObject_GC_UnTrack(self);
    QueueLoop_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A slot's int, or -1 with an error set (unset, or not an int >= 0). */
static Py_ssize_t slot_index(PyObject *o, Py_ssize_t off, const char *name)
{
    PyObject *v = SLOT(o, off);
    Py_ssize_t r;

    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "the batch has no %s", name);
        return -1;
    }
    r = PyLong_AsSsize_t(v);
    if (r == -1 && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "the batch's %s is negative", name);
    return r;
}

/* ``v`` (an exact int or a Verdict) as a plain verdict, or -1. */
static long long plain_value(QueueLoop *self, PyObject *v)
{
    int overflow;
    long long x;
    int k;

    if (Py_TYPE(v) != &PyLong_Type && (PyObject *)Py_TYPE(v) != self->verdict_cls)
        return -1;
    x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    for (k = 0; k < self->nplain; k++)
        if (self->plain[k] == x)
            return x;
    return -1;
}

/* Fill the hot slots (at off[H_*]) of the new packet ``p`` from ``h``. */
static int fill_hot(PyObject *p, const Py_ssize_t *off, const struct nfb_hot *h)
{
    if (slot_put(p, off[H_HW_PROTOCOL], PyLong_FromUnsignedLong(h->hw_protocol)) < 0
            || slot_put(p, off[H_PAYLOAD_LEN], PyLong_FromUnsignedLong(h->payload_len)) < 0)
        return -1;
    if (h->code & NFB_HOT_MARK) {
        if (slot_put(p, off[H_MARK], PyLong_FromUnsignedLong(h->mark)) < 0)
            return -1;
    } else {
        Py_INCREF(Py_None);
        SLOT(p, off[H_MARK]) = Py_None;
    }
    if (h->code & NFB_HOT_INDEV) {
        if (slot_put(p, off[H_INDEV], PyLong_FromUnsignedLong(h->indev)) < 0)
            return -1;
    } else {
        Py_INCREF(Py_None);
        SLOT(p, off[H_INDEV]) = Py_None;
    }
    if (h->code & NFB_HOT_TIMESTAMP) {
        if (slot_put(p, off[H_TIMESTAMP], PyFloat_FromDouble(h->timestamp)) < 0)
            return -1;
    } else {
        Py_INCREF(Py_None);
        SLOT(p, off[H_TIMESTAMP]) = Py_None;
    }
    return 0;
}

/* A new packet of batch ``b`` at record offset ``o``: of the hot variant
 * with its hot slots filled from ``h``, or of the lazy class (``h`` NULL).
 * NULL on error. */
static PyObject *new_packet(const PacketClasses *pk, PyObject *b, Py_ssize_t o,
                            const struct nfb_hot *h)
{
    PyTypeObject *cls = h != NULL ? pk->hot_cls : pk->cls;
    PyObject *p = cls->tp_alloc(cls, 0);

    if (p == NULL)
        return NULL;
    Py_INCREF(b);
    SLOT(p, pk->off_b) = b;
    if (slot_put(p, pk->off_o, PyLong_FromSsize_t(o)) < 0
            || (h != NULL && fill_hot(p, pk->off_hot, h) < 0)) {
        Py_DECREF(p);
        return NULL;
    }
    return p;
}

/* The packet object of entry ``i`` of the batch ``fl``, its slots filled;
 * NULL on error. */
static PyObject *make_packet(QueueLoop *self, PyObject *fl, const uint32_t *rec, Py_ssize_t i,
                             const struct nfb_hot *hot)
{
    PyObject *p = new_packet(&self->pk, fl, i * self->nf, hot != NULL ? hot + i : NULL);

    if (p != NULL && slot_put(p, self->off_id, PyLong_FromUnsignedLong(rec[self->f_id])) < 0)
        Py_CLEAR(p);
    return p;
}

/* The exception being raised, normalized with its traceback attached, as a
 * new reference; the error indicator is cleared. */
static PyObject *take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;

    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

PyDoc_STRVAR(run_doc,
"run(handler, fl, pending, floor, multi, hot) -> (handed, packet, result, exc)\n\n"
"Hand the packets of the batch ``fl`` from ``fl.pos`` on to ``handler``,\n"
"as NfQueue._dispatch's loop does: a packet whose handler returned None and\n"
"that has no verdict goes into ``pending`` (under its id, with ``multi``\n"
"also its queue << 32), a plain verdict into its slot of ``fl.vbuf``.\n"
"``hot``: the batch's struct nfb_hot, or None.  Returns how many packets it\n"
"handed out, and: packet None when the batch is done; else the packet\n"
"whose handler returned ``result`` (anything else) or raised ``exc`` (an\n"
"Exception), left with fl.cur at its index for the caller to handle.");

static PyObject *QueueLoop_run(QueueLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *handler, *fl, *pending, *hot_obj;
    PyObject *vbuf_obj, *recs_obj;
    Py_buffer vview, rview, hview;
    int have_v = 0, have_r = 0, have_h = 0;
    const struct nfb_hot *hot = NULL;
    const uint32_t *recs;
    int64_t *vbuf;
    long long floor;
    int multi;
    Py_ssize_t n, i, handed = 0;
    PyObject *p = NULL, *v = NULL, *exc = NULL, *ret = NULL;

    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "run() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    handler = args[0];
    fl = args[1];
    pending = args[2];
    floor = PyLong_AsLongLong(args[3]);
    if (floor == -1 && PyErr_Occurred())
        return NULL;
    multi = PyObject_IsTrue(args[4]);
    if (multi < 0)
        return NULL;
    hot_obj = args[5];
    if (!PyObject_TypeCheck(fl, self->flight_cls)) {
        PyErr_Format(PyExc_TypeError, "fl must be a %s", self->flight_cls->tp_name);
        return NULL;
    }
    if (!PyDict_Check(pending)) {
        PyErr_SetString(PyExc_TypeError, "pending must be a dict");
        return NULL;
    }
    n = slot_index(fl, self->off_n, "n");
    if (n < 0)
        return NULL;
    i = slot_index(fl, self->off_pos, "pos");
    if (i < 0)
        return NULL;
    vbuf_obj = SLOT(fl, self->off_vbuf);
    recs_obj = SLOT(fl, self->off_recs);
    if (vbuf_obj == NULL || recs_obj == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the batch has no vbuf or recs");
        return NULL;
    }
    /* the buffers stay exported (and their objects alive) for the whole
     * call, whatever the handler does with the batch */
    if (PyObject_GetBuffer(vbuf_obj, &vview, PyBUF_WRITABLE) < 0)
        goto out;
    have_v = 1;
    if (PyObject_GetBuffer(recs_obj, &rview, PyBUF_SIMPLE) < 0)
        goto out;
    have_r = 1;
    if (vview.len < n * (Py_ssize_t)sizeof(int64_t)
            || rview.len < n * self->nf * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "the batch's buffers are shorter than its packets");
        goto out;
    }
    if (hot_obj != Py_None) {
        if (PyObject_GetBuffer(hot_obj, &hview, PyBUF_SIMPLE) < 0)
            goto out;
        have_h = 1;
        if (hview.len < n * (Py_ssize_t)sizeof(struct nfb_hot)) {
            PyErr_SetString(PyExc_ValueError, "hot is shorter than the batch");
            goto out;
        }
        hot = (const struct nfb_hot *)hview.buf;
    }
    vbuf = (int64_t *)vview.buf;
    recs = (const uint32_t *)rview.buf;

    while (i < n) {
        const uint32_t *rec = recs + i * self->nf;
        int64_t expect;
        long long x;

        if (__atomic_load_n(&vbuf[i], __ATOMIC_ACQUIRE) != self->deferred) {
            /* settled by a batch verdict meanwhile */
            i++;
            if (slot_put(fl, self->off_pos, PyLong_FromSsize_t(i)) < 0)
                goto out;
            continue;
        }
        if ((long long)rec[self->f_id] <= floor) {
            /* ... by one before it was read */
            __atomic_store_n(&vbuf[i], self->done, __ATOMIC_RELEASE);
            i++;
            if (slot_put(fl, self->off_pos, PyLong_FromSsize_t(i)) < 0)
                goto out;
            continue;
        }
        p = make_packet(self, fl, rec, i, hot);
        if (p == NULL)
            goto out;
        if (slot_put(fl, self->off_cur, PyLong_FromSsize_t(i)) < 0
                || slot_put(fl, self->off_pos, PyLong_FromSsize_t(i + 1)) < 0)
            goto out;
        handed++;
        v = PyObject_CallOneArg(handler, p);
        if (v == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto out;       /* KeyboardInterrupt ...: fl.cur, fl.pos stay */
            exc = take_exception();
            goto stop;
        }
        if (v == Py_None) {
            if (__atomic_load_n(&vbuf[i], __ATOMIC_ACQUIRE) == self->deferred) {
                PyObject *key;
                unsigned long long k = rec[self->f_id];

                if (multi)
                    k |= (unsigned long long)rec[self->f_queue] << 32;
                key = PyLong_FromUnsignedLongLong(k);
                if (key == NULL)
                    goto out;
                if (PyDict_SetItem(pending, key, p) < 0) {
                    Py_DECREF(key);
                    goto out;
                }
                Py_DECREF(key);
            }
        } else {
            x = plain_value(self, v);
            expect = self->deferred;
            if (x < 0 || !__atomic_compare_exchange_n(&vbuf[i], &expect, (int64_t)x, 0,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                goto stop;      /* not a plain verdict, or the packet has one */
        }
        Py_CLEAR(v);
        Py_CLEAR(p);
        if (slot_put(fl, self->off_cur, PyLong_FromLong(-1)) < 0)
            goto out;
        i++;
    }
stop:
    ret = Py_BuildValue("(nOOO)", handed, p != NULL ? p : Py_None, v != NULL ? v : Py_None,
                        exc != NULL ? exc : Py_None);
out:
    Py_XDECREF(p);
    Py_XDECREF(v);
    Py_XDECREF(exc);
    if (have_h)
        PyBuffer_Release(&hview);
    if (have_r)
        PyBuffer_Release(&rview);
    if (have_v)
        PyBuffer_Release(&vview);
    return ret;
}

static PyMethodDef QueueLoop_methods[] = {
    {"run", (PyCFunction)(void (*)(void))QueueLoop_run, METH_FASTCALL, run_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(QueueLoop_doc,
"QueueLoop(packet, hot_packet, flight, verdict, plain, nf, f_id, f_queue,\n"
"          deferred, done)\n\n"
"NfQueue's dispatch loop for these classes and constants (see run()).");

static PyTypeObject QueueLoop_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nfbind._fastq.QueueLoop",
    .tp_basicsize = sizeof(QueueLoop),
    .tp_dealloc = (destructor)QueueLoop_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = QueueLoop_doc,
    .tp_traverse = (traverseproc)QueueLoop_traverse,
    .tp_clear = (inquiry)QueueLoop_clear,
    .tp_methods = QueueLoop_methods,
    .tp_new = QueueLoop_new,
};

/* -- NfLog ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PacketClasses pk;           /* LogPacket; its hot variant has a prefix slot */
    Py_ssize_t off_prefix;
    Py_ssize_t nf;
} LogLoop;

static PyObject *LogLoop_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {
        "packet", "hot_packet", "nf", NULL,
    };
    PyObject *cls, *hot_cls, *o_nf;
    LogLoop *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:LogLoop", kwlist, &cls, &hot_cls, &o_nf))
        return NULL;
    self = (LogLoop *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (classes_init(&self->pk, cls, hot_cls) < 0)
        goto fail;
    if ((self->off_prefix = slot_offset(self->pk.hot_cls, "prefix")) < 0)
        goto fail;
    if (as_index(o_nf, &self->nf) < 0)
        goto fail;
    if (self->nf == 0) {
        PyErr_SetString(PyExc_ValueError, "nf must not be 0");
        goto fail;
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static int LogLoop_traverse(LogLoop *self, visitproc visit, void *arg)
{
    return classes_traverse(&self->pk, visit, arg);
}

static int LogLoop_clear(LogLoop *self)
{
    classes_clear(&self->pk);
    return 0;
}

static void LogLoop_dealloc(LogLoop *self)
{
    PyObject_GC_UnTrack(self);
    LogLoop_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(log_run_doc,
"run(handler, b, n, hot, names, prefix_number) -> (o, errors, error, stop)\n\n"
"Hand the ``n`` packets of the fresh batch ``b`` to ``handler``, as\n"
"NfLog._dispatch's loop does (``hot`` None), or as _dispatch_hot's (``hot``:\n"
"the batch's struct nfb_hot; a packet's prefix is ``names[number]``, or\n"
"``prefix_number(b, o, number)`` for a number beyond the list).  Returns the\n"
"record offset of the first packet not handed out, how many handlers raised\n"
"an Exception, the first of those (or None), and ``stop``: None, or the\n"
"exception that ended the loop (one that is not an Exception from the\n"
"handler, or any from making a packet), for the caller to raise once it\n"
"kept the packets from ``o`` on.");

static PyObject *LogLoop_run(LogLoop *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *handler, *b, *hot_obj, *names, *prefix_number;
    Py_buffer hview;
    int have_h = 0;
    const struct nfb_hot *hot = NULL;
    Py_ssize_t n, i, o = 0, errors = 0;
    PyObject *p = NULL, *v, *error = NULL, *stop = NULL, *ret = NULL;

    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "run() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    handler = args[0];
    b = args[1];
    if (as_index(args[2], &n) < 0)
        return NULL;
    hot_obj = args[3];
    names = args[4];
    prefix_number = args[5];
    if (hot_obj != Py_None) {
        if (!PyList_Check(names)) {
            PyErr_SetString(PyExc_TypeError, "names must be a list");
            return NULL;
        }
        if (PyObject_GetBuffer(hot_obj, &hview, PyBUF_SIMPLE) < 0)
            return NULL;
        have_h = 1;
        if (hview.len < n * (Py_ssize_t)sizeof(struct nfb_hot)) {
            PyErr_SetString(PyExc_ValueError, "hot is shorter than the batch");
            goto out;
        }
        hot = (const struct nfb_hot *)hview.buf;
    }

    for (i = 0; i < n; i++, o += self->nf) {
        const struct nfb_hot *h = hot != NULL ? hot + i : NULL;

        p = new_packet(&self->pk, b, o, h);
        if (p == NULL)
            goto stopped;
        if (h != NULL) {
            PyObject *name;

            /* names may grow in prefix_number(): read its size each time */
            if ((Py_ssize_t)h->extra < PyList_GET_SIZE(names)) {
                name = PyList_GET_ITEM(names, h->extra);
                Py_INCREF(name);
            } else {
                name = PyObject_CallFunction(prefix_number, "OnI", b, o, (unsigned int)h->extra);
            }
            if (slot_put(p, self->off_prefix, name) < 0)
                goto stopped;
        }
        v = PyObject_CallOneArg(handler, p);
        Py_CLEAR(p);
        if (v != NULL) {
            Py_DECREF(v);
            continue;
        }
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            o += self->nf;      /* this packet was handed out */
            goto stopped;
        }
        errors++;
        if (error == NULL)
            error = take_exception();
        else
            PyErr_Clear();
    }
    ret = Py_BuildValue("(nnOO)", o, errors, error != NULL ? error : Py_None, Py_None);
    goto out;
stopped:
    stop = take_exception();
    ret = Py_BuildValue("(nnOO)", o, errors, error != NULL ? error : Py_None,
                        stop != NULL ? stop : Py_None);
out:
    Py_XDECREF(p);
    Py_XDECREF(error);
    Py_XDECREF(stop);
    if (have_h)
        PyBuffer_Release(&hview);
    return ret;
}

static PyMethodDef LogLoop_methods[] = {
    {"run", (PyCFunction)(void (*)(void))LogLoop_run, METH_FASTCALL, log_run_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(LogLoop_doc,
"LogLoop(packet, hot_packet, nf)\n\n"
"NfLog's dispatch loop for these classes and constants (see run()).");

static PyTypeObject LogLoop_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nfbind._fastq.LogLoop",
    .tp_basicsize = sizeof(LogLoop),
    .tp_dealloc = (destructor)LogLoop_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = LogLoop_doc,
    .tp_traverse = (traverseproc)LogLoop_traverse,
    .tp_clear = (inquiry)LogLoop_clear,
    .tp_methods = LogLoop_methods,
    .tp_new = LogLoop_new,
};

static struct PyModuleDef fastq_module = {
    PyModuleDef_HEAD_INIT, "nfbind._fastq",
    "The packet channels' dispatch loop, compiled.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastq(void)
{
    PyObject *m;

    if (PyType_Ready(&QueueLoop_Type) < 0 || PyType_Ready(&LogLoop_Type) < 0)
        return NULL;
    m = PyModule_Create(&fastq_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&QueueLoop_Type);
    if (PyModule_AddObject(m, "QueueLoop", (PyObject *)&QueueLoop_Type) < 0) {
        Py_DECREF(&QueueLoop_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LogLoop_Type);
    if (PyModule_AddObject(m, "LogLoop", (PyObject *)&LogLoop_Type) < 0) {
        Py_DECREF(&LogLoop_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
