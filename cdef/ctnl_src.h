/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Conntrack requests keyed by a packet, over ctnetlink, without
 * libnetfilter_conntrack: used by NFQUEUE (and NFLOG) when the kernel is
 * built without CONFIG_NETFILTER_NETLINK_GLUE_CT and so can neither attach
 * conntrack information to queued packets nor apply NFQA_CT in a verdict.
 */
#ifndef NFB_CTNL_SRC_H
#define NFB_CTNL_SRC_H
#include <netinet/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

/* Put CTA_TUPLE_ORIG for the connection of the L3 packet p[0..len). */
static int nfb_put_pkt_tuple(struct nlmsghdr *nlh, const unsigned char *p,
                             uint32_t len, uint8_t *family)
{
    struct nlattr *tuple, *ip, *proto;
    const unsigned char *l4;
    uint32_t l4len;
    uint8_t l4proto;

    if (len < 1)
        return -EINVAL;
    tuple = mnl_attr_nest_start(nlh, CTA_TUPLE_ORIG);
    ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
    if ((p[0] >> 4) == 4) {
        const struct iphdr *h = (const void *)p;
        uint32_t hl;
        if (len < sizeof(*h))
            return -EINVAL;
        hl = h->ihl * 4u;
        if (hl < sizeof(*h) || hl > len)
            return -EINVAL;
        if (ntohs(h->frag_off) & 0x1FFF)   /* a later fragment has no L4 header */
            return -EPROTONOSUPPORT;
        mnl_attr_put_u32(nlh, CTA_IP_V4_SRC, h->saddr);
        mnl_attr_put_u32(nlh, CTA_IP_V4_DST, h->daddr);
        *family = AF_INET;
        l4proto = h->protocol;
        l4 = p + hl;
        l4len = len - hl;
    } else if ((p[0] >> 4) == 6) {
        const struct ipv6hdr *h = (const void *)p;
        if (len < sizeof(*h))
            return -EINVAL;
        mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, &h->saddr);
        mnl_attr_put(nlh, CTA_IP_V6_DST, 16, &h->daddr);
        *family = AF_INET6;
        l4proto = h->nexthdr;    /* extension headers are not walked */
        l4 = p + sizeof(*h);
        l4len = len - sizeof(*h);
    } else {
        return -EPROTONOSUPPORT;
    }
    mnl_attr_nest_end(nlh, ip);
    proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
    mnl_attr_put_u8(nlh, CTA_PROTO_NUM, l4proto);
    switch (l4proto) {
    case IPPROTO_TCP:
    case IPPROTO_UDP:
    case IPPROTO_UDPLITE:
    case IPPROTO_SCTP:
    case IPPROTO_DCCP: {
        uint16_t sp, dp;
        if (l4len < 4)
            return -EINVAL;
        memcpy(&sp, l4, 2);
        memcpy(&dp, l4 + 2, 2);
        mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, sp);
        mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, dp);
        break;
    }
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6: {
        uint16_t id;
        uint8_t type = l4len >= 1 ? l4[0] : 0, code = l4len >= 2 ? l4[1] : 0;
        int v6 = l4proto == IPPROTO_ICMPV6;
        if (l4len < 8)
            return -EINVAL;
        memcpy(&id, l4 + 4, 2);
        mnl_attr_put_u16(nlh, v6 ? CTA_PROTO_ICMPV6_ID : CTA_PROTO_ICMP_ID, id);
        mnl_attr_put_u8(nlh, v6 ? CTA_PROTO_ICMPV6_TYPE : CTA_PROTO_ICMP_TYPE, type);
        mnl_attr_put_u8(nlh, v6 ? CTA_PROTO_ICMPV6_CODE : CTA_PROTO_ICMP_CODE, code);
        break;
    }
    default:
        break;
    }
    mnl_attr_nest_end(nlh, proto);
    mnl_attr_nest_end(nlh, tuple);
    return 0;
}

/* Look up (set_mark == 0) or re-mark (set_mark != 0) the connection of an L3
 * packet.  On a lookup the conntrack attributes (the payload after the
 * nfgenmsg header) are copied to out[0..*out_len).  Returns 0 or -errno
 * (-ENOENT: the kernel has no such connection, e.g. not yet confirmed). */
int nfb_ct_by_packet(int fd, const char *pkt, uint32_t len, uint16_t zone,
                     int set_mark, uint32_t mark, char *out, uint32_t out_cap,
                     uint32_t *out_len)
{
    char buf[1024];
    char *rx = NULL;
    struct nlmsghdr *nlh;
    struct nfgenmsg *nfg;
    uint8_t family = AF_UNSPEC;
    static uint32_t seq_counter;
    uint32_t seq;
    int rc, done = 0, got = 0;
    const size_t rxcap = 65536;

    if (out_len)
        *out_len = 0;
    memset(buf, 0, sizeof(buf));
    nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) |
                      (set_mark ? IPCTNL_MSG_CT_NEW : IPCTNL_MSG_CT_GET);
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    seq = __atomic_add_fetch(&seq_counter, 1, __ATOMIC_RELAXED) + (uint32_t)time(NULL);
    nlh->nlmsg_seq = seq;
    nfg = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfg));
    nfg->version = NFNETLINK_V0;
    rc = nfb_put_pkt_tuple(nlh, (const unsigned char *)pkt, len, &family);
    if (rc < 0)
        return rc;
    nfg->nfgen_family = family;
    if (zone)
        mnl_attr_put_u16(nlh, CTA_ZONE, htons(zone));
    if (set_mark)
        mnl_attr_put_u32(nlh, CTA_MARK, htonl(mark));
    if (send(fd, buf, nlh->nlmsg_len, 0) < 0)
        return -errno;
    rx = malloc(rxcap);
    if (!rx)
        return -ENOMEM;
    rc = -ETIMEDOUT;
    while (!done) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        const struct nlmsghdr *h;
        ssize_t n;
        int remaining, pr = poll(&pfd, 1, 1000);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        n = recv(fd, rx, rxcap, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        h = (const struct nlmsghdr *)rx;
        remaining = (int)n;
        for (; nfb_nlmsg_ok(h, remaining); h = mnl_nlmsg_next(h, &remaining)) {
            if (h->nlmsg_seq != seq)
                continue;     /* a stale answer to an earlier request */
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = mnl_nlmsg_get_payload(h);
                rc = h->nlmsg_len < mnl_nlmsg_size(sizeof(*e)) ? -EBADMSG : e->error;
                if (rc == 0 && !set_mark && !got)
                    rc = -ENOENT;
                done = 1;
                break;
            }
            if (!set_mark && out && h->nlmsg_len > NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
                uint32_t l = h->nlmsg_len - NLMSG_HDRLEN - sizeof(struct nfgenmsg);
                if (l > out_cap)
                    l = out_cap;
                memcpy(out, (const char *)mnl_nlmsg_get_payload(h) + sizeof(struct nfgenmsg), l);
                if (out_len)
                    *out_len = l;
                got = 1;
            }
        }
    }
    free(rx);
    return rc;
}
#endif
