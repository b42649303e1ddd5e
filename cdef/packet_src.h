/* SPDX-License-Identifier: GPL-2.0-or-later
 * The parsed-packet record shared by the NFQUEUE and NFLOG helpers
 * (declared for Python in cdef/packet.h). */
#ifndef NFB_PACKET_SRC_H
#define NFB_PACKET_SRC_H
enum {
    NFB_F_ID,
    NFB_F_ATTRS,
    NFB_F_HWPROTO,
    NFB_F_HOOK,
    NFB_F_FAMILY,
    NFB_F_QUEUE,
    NFB_F_MARK,
    NFB_F_UID,
    NFB_F_GID,
    NFB_F_PRIORITY,
    NFB_F_SKBINFO,
    NFB_F_CAPLEN,
    NFB_F_CTINFO,
    NFB_F_INDEV,
    NFB_F_OUTDEV,
    NFB_F_PHYSINDEV,
    NFB_F_PHYSOUTDEV,
    NFB_F_TS_SEC_HI,
    NFB_F_TS_SEC_LO,
    NFB_F_TS_USEC,
    NFB_F_VLAN_PROTO,
    NFB_F_VLAN_TCI,
    NFB_F_PAYLOAD_OFF,
    NFB_F_PAYLOAD_LEN,
    NFB_F_HWADDR_OFF,
    NFB_F_HWADDR_LEN,
    NFB_F_L2HDR_OFF,
    NFB_F_L2HDR_LEN,
    NFB_F_SECCTX_OFF,
    NFB_F_SECCTX_LEN,
    NFB_F_CT_OFF,
    NFB_F_CT_LEN,
    NFB_F_EXP_OFF,
    NFB_F_EXP_LEN,
    NFB_F_PREFIX_OFF,
    NFB_F_PREFIX_LEN,
    NFB_F_SEQ,
    NFB_F_SEQ_GLOBAL,
    NFB_F_HWTYPE,
    NFB_F_HWHDR_OFF,
    NFB_F_HWHDR_LEN,
    NFB_F_COUNT
};

enum {
    NFB_A_MARK = 1u << 0,
    NFB_A_UID = 1u << 1,
    NFB_A_GID = 1u << 2,
    NFB_A_PRIORITY = 1u << 3,
    NFB_A_SKBINFO = 1u << 4,
    NFB_A_CAPLEN = 1u << 5,
    NFB_A_CTINFO = 1u << 6,
    NFB_A_INDEV = 1u << 7,
    NFB_A_OUTDEV = 1u << 8,
    NFB_A_PHYSINDEV = 1u << 9,
    NFB_A_PHYSOUTDEV = 1u << 10,
    NFB_A_TIMESTAMP = 1u << 11,
    NFB_A_VLAN = 1u << 12,
    NFB_A_PAYLOAD = 1u << 13,
    NFB_A_HWADDR = 1u << 14,
    NFB_A_L2HDR = 1u << 15,
    NFB_A_SECCTX = 1u << 16,
    NFB_A_CT = 1u << 17,
    NFB_A_EXP = 1u << 18,
    NFB_A_PREFIX = 1u << 19,
    NFB_A_SEQ = 1u << 20,
    NFB_A_SEQ_GLOBAL = 1u << 21,
    NFB_A_HWTYPE = 1u << 22,
    NFB_A_HWHDR = 1u << 23,
};

/* ---- helpers both parsers use (NFQA_* and NFULA_* share these shapes) ---- */

/* The attributes of a packet message after its offset-byte header, within
 * nlmsg_len.  libmnl's mnl_attr_for_each() walks to the aligned end, so with
 * an unaligned nlmsg_len an attribute could take up to 3 bytes past the
 * message (past the buffer, when the message ends it). */
#define nfb_attr_for_each(attr, nlh, offset)                                  \
    for ((attr) = mnl_nlmsg_get_payload_offset((nlh), (offset));             \
         mnl_attr_ok((attr), (int)((const char *)(nlh) + (nlh)->nlmsg_len -  \
                                   (const char *)(attr)));                   \
         (attr) = mnl_attr_next(attr))

static inline uint32_t nfb_get_be32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

static inline uint64_t nfb_get_be64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

/* NFQA_TIMESTAMP / NFULA_TIMESTAMP: struct { be64 sec; be64 usec; } */
static inline int nfb_rec_timestamp(uint32_t *rec, const char *p, uint16_t len)
{
    uint64_t sec;
    if (len < 16)
        return 0;
    sec = nfb_get_be64(p);
    rec[NFB_F_TS_SEC_HI] = (uint32_t)(sec >> 32);
    rec[NFB_F_TS_SEC_LO] = (uint32_t)sec;
    rec[NFB_F_TS_USEC] = (uint32_t)nfb_get_be64(p + 8);
    return 1;
}

/* NFQA_HWADDR / NFULA_HWADDR: struct nfqnl_msg_packet_hw or
 * nfulnl_msg_packet_hw (be16 hw_addrlen, pad, hw_addr[8]). */
#define NFB_REC_HWADDR(rec, p, len, base, hwtype) ({                          \
        const hwtype *hw_ = (const void *)(p);                                \
        int ok_ = (len) >= sizeof(hwtype);                                    \
        if (ok_) {                                                            \
            uint16_t alen_ = ntohs(hw_->hw_addrlen);                          \
            if (alen_ > sizeof(hw_->hw_addr))                                 \
                alen_ = sizeof(hw_->hw_addr);                                 \
            (rec)[NFB_F_HWADDR_OFF] = (uint32_t)((const char *)hw_->hw_addr - (base)); \
            (rec)[NFB_F_HWADDR_LEN] = alen_;                                  \
        }                                                                     \
        ok_;                                                                  \
    })

/* An attribute's bytes as (offset, length) in the words off_field, off_field+1. */
static inline void nfb_rec_range(uint32_t *rec, int off_field, uint32_t off, uint16_t len)
{
    rec[off_field] = off;
    rec[off_field + 1] = len;
}

/* A string attribute without its trailing NULs. */
static inline void nfb_rec_string(uint32_t *rec, int off_field, const char *p, uint32_t off,
                                  uint16_t len)
{
    while (len > 0 && p[len - 1] == '\0')
        len--;
    nfb_rec_range(rec, off_field, off, len);
}

/* NFQA_VLAN / NFULA_VLAN: nested be16 proto and TCI. */
static inline void nfb_rec_vlan(uint32_t *rec, const struct nlattr *attr,
                                uint16_t proto_type, uint16_t tci_type)
{
    const struct nlattr *va;
    mnl_attr_for_each_nested(va, attr) {
        if (mnl_attr_get_payload_len(va) < 2)
            continue;
        if (mnl_attr_get_type(va) == proto_type)
            rec[NFB_F_VLAN_PROTO] = ntohs(mnl_attr_get_u16(va));
        else if (mnl_attr_get_type(va) == tci_type)
            rec[NFB_F_VLAN_TCI] = ntohs(mnl_attr_get_u16(va));
    }
}
#endif
