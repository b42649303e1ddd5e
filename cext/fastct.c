/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._fastct: building the Flow objects of a conntrack dump,
 * compiled.  Optional: without it nfbind builds them in Python.
 *
 * build_flows() does what nfbind.conntrack._records.build_flows does in
 * Python, record by record, with the same caches (addresses, statuses,
 * TCP info), the same enum tables and the same rules for absent fields;
 * the fields few flows have (counters, timestamps, labels, helper, security
 * context, master, sequence adjustment, synproxy) and NAT come from the
 * Python helpers the Python builder uses, called for those records only.
 *
 * Objects are allocated with their class's tp_alloc and their slots filled
 * at the offsets of the classes' member descriptors (looked up once, in
 * configure(), and checked there): what a twin instance with the same slots
 * plus a __class__ switch gives in Python, without the interpreter.
 *
 * The records are struct nfb_ct_rec of the core module (cdef/records.h,
 * the header cdef/core.c compiles too); layout() reports the layout this
 * module was compiled with, which nfbind compares with the core module's,
 * field by field, before it uses this module (a stale build fails it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* the records of cdef/core.c and their NFB_* bits */
#include "../cdef/records.h"

/* the attributes built by the Python helper `rare` */
#define A_RARE (NFB_CT_A_COUNTERS | NFB_CT_A_TS_START | NFB_CT_A_LABELS | NFB_CT_A_HELPER \
                | NFB_CT_A_SECCTX | NFB_CT_A_MASTER | NFB_CT_A_SEQADJ_ORIG \
                | NFB_CT_A_SEQADJ_REPLY | NFB_CT_A_SYNPROXY)

#define IPPROTO_TCP_ 6
#define IPPROTO_SCTP_ 132

/* -- what configure() was given ------------------------------------------------------------- */

enum { TUP_SRC, TUP_DST, TUP_PROTO, TUP_SPORT, TUP_DPORT, TUP_ICMP_TYPE, TUP_ICMP_CODE,
       TUP_ICMP_ID, TUP_ZONE, TUP_NFIELDS };
static const char *const tuple_names[TUP_NFIELDS] = {
    "src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code", "icmp_id", "zone",
};

enum { FL_ORIG, FL_REPLY, FL_FAMILY, FL_PROTO, FL_STATE, FL_STATUS, FL_TIMEOUT, FL_MARK,
       FL_SECMARK, FL_ZONE, FL_LABELS, FL_USE, FL_ID, FL_COUNTERS, FL_TIMESTAMPS, FL_NAT,
       FL_HELPER, FL_SECCTX, FL_MASTER, FL_TCP, FL_SEQ_ADJ, FL_SYNPROXY, FL_NFIELDS };
static const char *const flow_names[FL_NFIELDS] = {
    "orig", "reply", "family", "proto", "state", "status", "timeout", "mark", "secmark",
    "zone", "labels", "use", "id", "counters", "timestamps", "nat", "helper", "secctx",
    "master", "tcp", "seq_adj", "synproxy",
};
/* what the helper `rare` returns, in order, and where each goes */
static const int rare_fields[8] = {
    FL_COUNTERS, FL_TIMESTAMPS, FL_LABELS, FL_HELPER, FL_SECCTX, FL_MASTER, FL_SEQ_ADJ,
    FL_SYNPROXY,
};

typedef struct {
    int ready;
    PyTypeObject *tuple_type;
    PyTypeObject *flow_type;
    Py_ssize_t tuple_off[TUP_NFIELDS];
    Py_ssize_t flow_off[FL_NFIELDS];
    PyObject *ips;          /* raw address -> ipaddress object (a dict with __missing__) */
    PyObject *statuses;     /* int -> CtStatus */
    PyObject *tcpinfos;     /* packed rec.tcp -> TcpInfo */
    PyObject *protos;       /* tuple of 256: protocol number -> IPProto or int */
    PyObject *tcp_states;   /* tuple of 256 */
    PyObject *sctp_states;  /* tuple of 256 */
    PyObject *fam4;
    PyObject *fam6;
    PyObject *no_labels;
    PyObject *rare;         /* (recs, off, attrs, v6, data) -> 8-tuple */
    PyObject *nat_of;       /* (status, reply) -> Nat or None */
    uint32_t nat_bits;
    int af_inet6;
} config;

static config cfg;

static void config_clear(void)
{
    Py_CLEAR(cfg.tuple_type);
    Py_CLEAR(cfg.flow_type);
    Py_CLEAR(cfg.ips);
    Py_CLEAR(cfg.statuses);
    Py_CLEAR(cfg.tcpinfos);
    Py_CLEAR(cfg.protos);
    Py_CLEAR(cfg.tcp_states);
    Py_CLEAR(cfg.sctp_states);
    Py_CLEAR(cfg.fam4);
    Py_CLEAR(cfg.fam6);
    Py_CLEAR(cfg.no_labels);
    Py_CLEAR(cfg.rare);
    Py_CLEAR(cfg.nat_of);
    cfg.ready = 0;
}

/* The offset of slot `name` of `type` in its instances: the class must have
 * it as a writable object member descriptor (a __slots__ entry) inside the
 * instance, and no __dict__.  Returns -1 with an exception set otherwise. */
static Py_ssize_t slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    Py_ssize_t off = -1;

    if (d == NULL)
        return -1;
    if (Py_TYPE(d) == &PyMemberDescr_Type) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY)
                && ((PyMemberDescrObject *)d)->d_common.d_type == type
                && m->offset >= (Py_ssize_t)sizeof(PyObject)
                && m->offset + (Py_ssize_t)sizeof(PyObject *) <= type->tp_basicsize)
            off = m->offset;
    }
    Py_DECREF(d);
    if (off < 0)
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot of the class itself",
                     type->tp_name, name);
    return off;
}

static int check_type(PyObject *o, const char *what)
{
    PyTypeObject *t;

    if (!PyType_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a class", what);
        return -1;
    }
    t = (PyTypeObject *)o;
    if (t->tp_dictoffset != 0 || t->tp_itemsize != 0 || t->tp_alloc == NULL
            || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        PyErr_Format(PyExc_TypeError, "%s must be a class with __slots__ only", what);
        return -1;
    }
    return 0;
}

static int check_table(PyObject *o, const char *what)
{
    if (!PyTuple_CheckExact(o) || PyTuple_GET_SIZE(o) != 256) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of 256 items", what);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(configure_doc,
"configure(tuple_cls, flow_cls, ips, statuses, tcpinfos, protos, tcp_states,\n"
"          sctp_states, fam4, fam6, no_labels, rare, nat_of, nat_bits, af_inet6)\n"
"\n"
"What build_flows() builds with: the Tuple and Flow classes, the caches\n"
"(dicts whose __missing__ makes an entry: raw address -> ipaddress object,\n"
"status -> CtStatus, packed TCP info -> TcpInfo), the tables of 256\n"
"protocols, TCP states and SCTP states, Family.IPV4 and IPV6, the empty\n"
"label set, the helpers for the rare attributes and for NAT, the status\n"
"bits of NAT and AF_INET6.");

static PyObject *fastct_configure(PyObject *self, PyObject *args)
{
    PyObject *tuple_cls, *flow_cls, *ips, *statuses, *tcpinfos, *protos, *tcp_states,
             *sctp_states, *fam4, *fam6, *no_labels, *rare, *nat_of;
    unsigned long nat_bits;
    int af_inet6, i;
    Py_ssize_t toff[TUP_NFIELDS], foff[FL_NFIELDS];

    (void)self;
    if (!PyArg_ParseTuple(args, "OOO!O!O!OOOOOOOOki:configure", &tuple_cls, &flow_cls,
                          &PyDict_Type, &ips, &PyDict_Type, &statuses, &PyDict_Type,
                          &tcpinfos, &protos, &tcp_states, &sctp_states, &fam4, &fam6,
                          &no_labels, &rare, &nat_of, &nat_bits, &af_inet6))
        return NULL;
    if (check_type(tuple_cls, "tuple_cls") < 0 || check_type(flow_cls, "flow_cls") < 0
            || check_table(protos, "protos") < 0 || check_table(tcp_states, "tcp_states") < 0
            || check_table(sctp_states, "sctp_states") < 0)
        return NULL;
    if (!PyCallable_Check(rare) || !PyCallable_Check(nat_of)) {
        PyErr_SetString(PyExc_TypeError, "rare and nat_of must be callable");
        return NULL;
    }
    for (i = 0; i < TUP_NFIELDS; i++)
        if ((toff[i] = slot_offset((PyTypeObject *)tuple_cls, tuple_names[i])) < 0)
            return NULL;
    for (i = 0; i < FL_NFIELDS; i++)
        if ((foff[i] = slot_offset((PyTypeObject *)flow_cls, flow_names[i])) < 0)
            return NULL;
    config_clear();
    memcpy(cfg.tuple_off, toff, sizeof(toff));
    memcpy(cfg.flow_off, foff, sizeof(foff));
    Py_INCREF(tuple_cls);
    cfg.tuple_type = (PyTypeObject *)tuple_cls;
    Py_INCREF(flow_cls);
    cfg.flow_type = (PyTypeObject *)flow_cls;
#define KEEP(name) do { Py_INCREF(name); cfg.name = name; } while (0)
    KEEP(ips);
    KEEP(statuses);
    KEEP(tcpinfos);
    KEEP(protos);
    KEEP(tcp_states);
    KEEP(sctp_states);
    KEEP(fam4);
    KEEP(fam6);
    KEEP(no_labels);
    KEEP(rare);
    KEEP(nat_of);
#undef KEEP
    cfg.nat_bits = (uint32_t)nat_bits;
    cfg.af_inet6 = af_inet6;
    cfg.ready = 1;
    Py_RETURN_NONE;
}

/* -- building ------------------------------------------------------------------------------ */

/* cache[key] (its __missing__ makes a missing entry): a new reference.
 * Steals `key`. */
static PyObject *cached(PyObject *cache, PyObject *key)
{
    PyObject *v;

    if (key == NULL)
        return NULL;
    v = PyDict_GetItemWithError(cache, key);
    if (v != NULL)
        Py_INCREF(v);
    else if (!PyErr_Occurred())
        v = PyObject_GetItem(cache, key);
    Py_DECREF(key);
    return v;
}

/* The ipaddress object of a raw address: the key is a native u32 for IPv4
 * (as the Python builder's struct code "I"), the 16 bytes for IPv6. */
static PyObject *address(const uint8_t *raw, int v6)
{
    if (v6)
        return cached(cfg.ips, PyBytes_FromStringAndSize((const char *)raw, 16));
    else {
        uint32_t k;
        memcpy(&k, raw, 4);
        return cached(cfg.ips, PyLong_FromUnsignedLong(k));
    }
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* A new instance of `type` with every slot None (each one then replaced at
 * most once by set_slot, whose reference it steals).
 *
 * It is not tracked by the cyclic garbage collector: a Flow or Tuple built
 * here holds only objects that cannot lead back to it (addresses from the
 * cache, enum members, ints, strings, frozensets, None, and frozen records
 * built for it alone), so it can never be part of a reference cycle and
 * its reference count alone frees it, as CPython does for tuples of atomic
 * values.  Tracked, the tens of thousands of objects of a dump chunk would
 * be traversed by the next collection, and again by each older one while
 * they live, with nothing to find. */
static PyObject *new_record(PyTypeObject *type, const Py_ssize_t *offs, int n)
{
    PyObject *o = type->tp_alloc(type, 0);
    int i;

    if (o == NULL)
        return NULL;
    if (PyObject_IS_GC(o))
        PyObject_GC_UnTrack(o);
    for (i = 0; i < n; i++) {
        Py_INCREF(Py_None);
        SLOT(o, offs[i]) = Py_None;
    }
    return o;
}

/* Replace a None slot by v (stolen); -1 when v is NULL (an error is set). */
static inline int set_slot(PyObject *o, Py_ssize_t off, PyObject *v)
{
    if (v == NULL)
        return -1;
    Py_DECREF(SLOT(o, off));    /* None */
    SLOT(o, off) = v;
    return 0;
}

static inline PyObject *borrowed(PyObject *v)
{
    Py_INCREF(v);
    return v;
}

/* One Tuple.  `proto` borrowed; `src`/`dst` stolen. */
static PyObject *make_tuple(const struct nfb_ct_tuple *t, PyObject *src, PyObject *dst,
                            PyObject *proto, int with_zone)
{
    const Py_ssize_t *off = cfg.tuple_off;
    PyObject *o;

    if (src == NULL || dst == NULL) {
        Py_XDECREF(src);
        Py_XDECREF(dst);
        return NULL;
    }
    o = new_record(cfg.tuple_type, off, TUP_NFIELDS);
    if (o == NULL) {
        Py_DECREF(src);
        Py_DECREF(dst);
        return NULL;
    }
    set_slot(o, off[TUP_SRC], src);
    set_slot(o, off[TUP_DST], dst);
    set_slot(o, off[TUP_PROTO], borrowed(proto));
    if (t->has & NFB_T_PORTS) {
        if (set_slot(o, off[TUP_SPORT], PyLong_FromLong(t->sport)) < 0
                || set_slot(o, off[TUP_DPORT], PyLong_FromLong(t->dport)) < 0)
            goto fail;
    } else if (t->has & NFB_T_ICMP) {
        if (set_slot(o, off[TUP_ICMP_TYPE], PyLong_FromLong(t->icmp_type)) < 0
                || set_slot(o, off[TUP_ICMP_CODE], PyLong_FromLong(t->icmp_code)) < 0
                || set_slot(o, off[TUP_ICMP_ID], PyLong_FromLong(t->icmp_id)) < 0)
            goto fail;
    }
    if (with_zone && (t->has & NFB_T_ZONE)
            && set_slot(o, off[TUP_ZONE], PyLong_FromLong(t->zone)) < 0)
        goto fail;
    return o;
fail:
    Py_DECREF(o);
    return NULL;
}

/* The Flow of one record (`r`, a copy of the record at byte `off` of `recs`). */
static PyObject *make_flow(const struct nfb_ct_rec *r, PyObject *recs, Py_ssize_t off,
                           PyObject *data)
{
    const Py_ssize_t *fo = cfg.flow_off;
    const uint32_t attrs = r->attrs;
    const int v6 = r->family == cfg.af_inet6;
    const int zones = (attrs & NFB_CT_A_TUPLE_ZONE) != 0;
    const size_t w = v6 ? 16 : 4;
    PyObject *proto = PyTuple_GET_ITEM(cfg.protos, r->orig.proto);
    PyObject *osrc, *odst, *rsrc, *rdst, *orig, *reply, *f, *v;

    osrc = address(r->orig.src, v6);
    odst = osrc ? address(r->orig.dst, v6) : NULL;
    if (odst == NULL) {
        Py_XDECREF(osrc);
        return NULL;
    }
    if (attrs & NFB_CT_A_REPLY) {
        /* the reply's addresses are usually orig's swapped: reuse those objects */
        rsrc = memcmp(r->reply.src, r->orig.dst, w) == 0 ? borrowed(odst)
                                                         : address(r->reply.src, v6);
        if (rsrc == NULL) {
            Py_DECREF(osrc);
            Py_DECREF(odst);
            return NULL;
        }
        rdst = memcmp(r->reply.dst, r->orig.src, w) == 0 ? borrowed(osrc)
                                                         : address(r->reply.dst, v6);
        if (rdst == NULL) {
            Py_DECREF(osrc);
            Py_DECREF(odst);
            Py_DECREF(rsrc);
            return NULL;
        }
        orig = make_tuple(&r->orig, osrc, odst, proto, zones);
        if (orig == NULL) {
            Py_DECREF(rsrc);
            Py_DECREF(rdst);
            return NULL;
        }
        reply = make_tuple(&r->reply, rsrc, rdst, PyTuple_GET_ITEM(cfg.protos, r->reply.proto),
                           zones);
        if (reply == NULL) {
            Py_DECREF(orig);
            return NULL;
        }
    } else {
        orig = make_tuple(&r->orig, osrc, odst, proto, zones);
        if (orig == NULL)
            return NULL;
        reply = NULL;
    }
    f = new_record(cfg.flow_type, fo, FL_NFIELDS);
    if (f == NULL) {
        Py_DECREF(orig);
        Py_XDECREF(reply);
        return NULL;
    }
    set_slot(f, fo[FL_ORIG], orig);
    if (reply != NULL)
        set_slot(f, fo[FL_REPLY], reply);
    set_slot(f, fo[FL_FAMILY], borrowed(v6 ? cfg.fam6 : cfg.fam4));
    set_slot(f, fo[FL_PROTO], borrowed(proto));
    if (attrs & NFB_CT_A_STATE) {
        if (r->orig.proto == IPPROTO_TCP_)
            v = borrowed(PyTuple_GET_ITEM(cfg.tcp_states, r->state));
        else if (r->orig.proto == IPPROTO_SCTP_)
            v = borrowed(PyTuple_GET_ITEM(cfg.sctp_states, r->state));
        else
            v = PyLong_FromLong(r->state);
        if (set_slot(f, fo[FL_STATE], v) < 0)
            goto fail;
    }
    if (set_slot(f, fo[FL_STATUS], cached(cfg.statuses, PyLong_FromUnsignedLong(r->status))) < 0
            || ((attrs & NFB_CT_A_TIMEOUT)
                && set_slot(f, fo[FL_TIMEOUT], PyLong_FromUnsignedLong(r->timeout)) < 0)
            || set_slot(f, fo[FL_MARK], PyLong_FromUnsignedLong(r->mark)) < 0
            || set_slot(f, fo[FL_SECMARK], PyLong_FromUnsignedLong(r->secmark)) < 0
            || set_slot(f, fo[FL_ZONE], PyLong_FromLong(r->zone)) < 0
            || ((attrs & NFB_CT_A_USE)
                && set_slot(f, fo[FL_USE], PyLong_FromUnsignedLong(r->use)) < 0)
            || ((attrs & NFB_CT_A_ID)
                && set_slot(f, fo[FL_ID], PyLong_FromUnsignedLong(r->id)) < 0)
            || ((attrs & NFB_CT_A_TCP)
                && set_slot(f, fo[FL_TCP],
                            cached(cfg.tcpinfos, PyLong_FromUnsignedLongLong(r->tcp))) < 0))
        goto fail;
    if (attrs & A_RARE) {
        PyObject *got = PyObject_CallFunction(cfg.rare, "OnIiO", recs, off, (unsigned int)attrs,
                                              v6, data);
        int i;
        if (got == NULL)
            goto fail;
        if (!PyTuple_CheckExact(got) || PyTuple_GET_SIZE(got) != 8) {
            Py_DECREF(got);
            PyErr_SetString(PyExc_TypeError, "rare() must return a tuple of 8");
            goto fail;
        }
        for (i = 0; i < 8; i++)
            set_slot(f, fo[rare_fields[i]], borrowed(PyTuple_GET_ITEM(got, i)));
        Py_DECREF(got);
    } else if (set_slot(f, fo[FL_LABELS], borrowed(cfg.no_labels)) < 0) {
        goto fail;
    }
    if ((r->status & cfg.nat_bits)
            && set_slot(f, fo[FL_NAT], PyObject_CallFunction(cfg.nat_of, "kO",
                                                             (unsigned long)r->status,
                                                             reply ? reply : Py_None)) < 0)
        goto fail;
    return f;
fail:
    Py_DECREF(f);
    return NULL;
}

PyDoc_STRVAR(build_flows_doc,
"build_flows(recs, n, data, out)\n"
"\n"
"Append a Flow for each of the n struct nfb_ct_rec in the buffer recs to\n"
"the list out; data holds the batch's strings (security contexts).\n"
"Raises ValueError when recs is shorter than n records, RuntimeError\n"
"before configure().");

static PyObject *fastct_build_flows(PyObject *self, PyObject *args)
{
    PyObject *recs, *data, *out;
    Py_ssize_t n, i;
    Py_buffer buf;
    struct nfb_ct_rec r;

    (void)self;
    if (!PyArg_ParseTuple(args, "OnOO!:build_flows", &recs, &n, &data, &PyList_Type, &out))
        return NULL;
    if (!cfg.ready) {
        PyErr_SetString(PyExc_RuntimeError, "nfbind._fastct: configure() was not called");
        return NULL;
    }
    if (PyObject_GetBuffer(recs, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    if (n < 0 || n > buf.len / (Py_ssize_t)sizeof(r)) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_ValueError, "%zd records do not fit in %zd bytes", n, buf.len);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *f;
        int rc;
        Py_ssize_t off = i * (Py_ssize_t)sizeof(r);
        memcpy(&r, (const char *)buf.buf + off, sizeof(r));
        f = make_flow(&r, recs, off, data);
        if (f == NULL)
            break;
        rc = PyList_Append(out, f);
        Py_DECREF(f);
        if (rc < 0)
            break;
    }
    PyBuffer_Release(&buf);
    if (i < n)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(layout_doc,
"layout() -> tuple\n"
"\n"
"The record layout this module was compiled with: the sizes of struct\n"
"nfb_ct_rec and struct nfb_ct_tuple, then (name, offset) of each field\n"
"it reads, for comparison with the core module's.");

struct field { const char *name; Py_ssize_t off; };

static const struct field layout_fields[] = {
#define R(f) {#f, (Py_ssize_t)offsetof(struct nfb_ct_rec, f)}
#define T(f) {"tuple." #f, (Py_ssize_t)offsetof(struct nfb_ct_tuple, f)}
    R(o_packets), R(o_bytes), R(r_packets), R(r_bytes), R(ts_start), R(ts_stop),
    R(orig), R(reply), R(master), R(attrs), R(status), R(timeout), R(mark), R(secmark),
    R(use), R(id), R(secctx_off), R(secctx_len), R(zone), R(family), R(state), R(event),
    R(labels), R(helper), R(tcp), R(seqadj), R(synproxy),
    T(src), T(dst), T(sport), T(dport), T(icmp_id), T(zone), T(icmp_type), T(icmp_code),
    T(proto), T(has),
#undef R
#undef T
};

static PyObject *fastct_layout(PyObject *self, PyObject *unused)
{
    const size_t n = sizeof(layout_fields) / sizeof(layout_fields[0]);
    PyObject *fields = PyTuple_New((Py_ssize_t)n), *res;
    size_t i;

    (void)self;
    (void)unused;
    if (fields == NULL)
        return NULL;
    for (i = 0; i < n; i++) {
        PyObject *item = Py_BuildValue("(sn)", layout_fields[i].name, layout_fields[i].off);
        if (item == NULL) {
            Py_DECREF(fields);
            return NULL;
        }
        PyTuple_SET_ITEM(fields, (Py_ssize_t)i, item);
    }
    res = Py_BuildValue("nnN", (Py_ssize_t)sizeof(struct nfb_ct_rec),
                        (Py_ssize_t)sizeof(struct nfb_ct_tuple), fields);
    return res;
}

static PyMethodDef fastct_methods[] = {
    {"configure", fastct_configure, METH_VARARGS, configure_doc},
    {"build_flows", fastct_build_flows, METH_VARARGS, build_flows_doc},
    {"layout", fastct_layout, METH_NOARGS, layout_doc},
    {NULL, NULL, 0, NULL},
};

static void fastct_free(void *m)
{
    (void)m;
    config_clear();
}

static struct PyModuleDef fastct_module = {
    PyModuleDef_HEAD_INIT, "nfbind._fastct",
    "Conntrack flows built in C.", -1, fastct_methods,
    NULL, NULL, NULL, fastct_free,
};

PyMODINIT_FUNC PyInit__fastct(void)
{
    return PyModule_Create(&fastct_module);
}
