/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The records the C core fills for Python, and their flag bits: a plain C
 * header, included by cdef/core.c and by the compiled speedups in cext/
 * (which read the same records), so that every part of nfbind compiles
 * one definition of them.  cdef/core.h declares them for cffi.
 */
#ifndef NFB_RECORDS_H
#define NFB_RECORDS_H
#include <stdint.h>

/* The hot fields of one packet record, as Python values want them: the
 * timestamp already in seconds (the same double Python computes from the
 * record's words), absent values flagged in code. */
struct nfb_hot {
    uint32_t code;          /* NFB_HOT_* bits: the attributes the packet has */
    uint32_t hw_protocol;
    uint32_t mark;          /* 0 when absent */
    uint32_t indev;         /* 0 when absent */
    uint32_t payload_len;   /* 0 without a payload */
    uint32_t extra;         /* the channel's: NFQUEUE the packet id, NFLOG the prefix number */
    double timestamp;       /* 0 when absent */
};

enum {
    NFB_HOT_MARK = 1u << 0,
    NFB_HOT_INDEV = 1u << 1,
    NFB_HOT_TIMESTAMP = 1u << 2,
};

/* One direction of a connection.  Ports and ids in host order. */
struct nfb_ct_tuple {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;
    uint16_t dport;
    uint16_t icmp_id;
    uint16_t zone;
    uint8_t icmp_type;
    uint8_t icmp_code;
    uint8_t proto;
    uint8_t has;            /* NFB_T_* */
};

enum {
    NFB_T_ADDR = 1u << 0,
    NFB_T_PROTO = 1u << 1,
    NFB_T_PORTS = 1u << 2,
    NFB_T_ICMP = 1u << 3,
    NFB_T_ZONE = 1u << 4,
    NFB_T_V6 = 1u << 5,     /* the addresses are IPv6 ones */
};

/* One flow.  attrs has one NFB_CT_A_* bit per attribute the kernel sent. */
struct nfb_ct_rec {
    uint64_t o_packets;
    uint64_t o_bytes;
    uint64_t r_packets;
    uint64_t r_bytes;
    uint64_t ts_start;
    uint64_t ts_stop;
    struct nfb_ct_tuple orig;
    struct nfb_ct_tuple reply;
    struct nfb_ct_tuple master;
    uint32_t attrs;
    uint32_t status;
    uint32_t timeout;
    uint32_t mark;
    uint32_t secmark;
    uint32_t use;
    uint32_t id;
    uint32_t secctx_off;
    uint32_t secctx_len;
    uint16_t zone;
    uint8_t family;
    uint8_t state;          /* TCP, SCTP or DCCP state */
    uint8_t event;          /* the event type (conntrack events), 0 otherwise */
    uint8_t labels[16];
    char helper[16];
    uint64_t tcp;           /* CTA_PROTOINFO_TCP packed: see NFB_TCP_* */
    uint32_t seqadj[6];     /* CTA_SEQ_ADJ_ORIG, _REPLY: correction_pos,
                             * offset_before, offset_after each */
    uint32_t synproxy[3];   /* CTA_SYNPROXY: isn, its, tsoff */
};

enum {
    NFB_CT_A_ORIG = 1u << 0,
    NFB_CT_A_REPLY = 1u << 1,
    NFB_CT_A_STATUS = 1u << 2,
    NFB_CT_A_TIMEOUT = 1u << 3,
    NFB_CT_A_MARK = 1u << 4,
    NFB_CT_A_SECMARK = 1u << 5,
    NFB_CT_A_USE = 1u << 6,
    NFB_CT_A_ID = 1u << 7,
    NFB_CT_A_ZONE = 1u << 8,
    NFB_CT_A_STATE = 1u << 9,
    NFB_CT_A_COUNTERS = 1u << 10,
    NFB_CT_A_TS_START = 1u << 11,
    NFB_CT_A_TS_STOP = 1u << 12,
    NFB_CT_A_LABELS = 1u << 13,
    NFB_CT_A_HELPER = 1u << 14,
    NFB_CT_A_SECCTX = 1u << 15,
    NFB_CT_A_MASTER = 1u << 16,
    NFB_CT_A_TCP = 1u << 17,
    NFB_CT_A_SEQADJ_ORIG = 1u << 18,
    NFB_CT_A_SEQADJ_REPLY = 1u << 19,
    NFB_CT_A_SYNPROXY = 1u << 20,
    NFB_CT_A_TUPLE_ZONE = 1u << 21,     /* orig or reply has NFB_T_ZONE */
};

#endif /* NFB_RECORDS_H */
