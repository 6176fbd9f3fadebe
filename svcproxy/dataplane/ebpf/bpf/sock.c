// SPDX-License-Identifier: GPL-2.0
/* svcproxy ebpf mode: Services resolved when a local socket connects.
 *
 * Programs on a cgroup v2's socket-address hooks rewrite the address a process hands to
 * connect() or sendto() from a Service address (ClusterIP, NodePort on a node address,
 * externalIP, LoadBalancer IP) to one endpoint, chosen at random among the endpoints
 * kube-proxy's selection gives (computed in Python; here only the slots). Packets then carry
 * the endpoint's address from the first one: no DNAT, no conntrack NAT entry. For UDP and for
 * getpeername() the reverse mapping makes the socket see the Service address again.
 *
 * Maps (every address is 16 bytes: IPv4 in the first 4, the rest zero; ports in network order):
 *   services  (addr, port, proto) -> (id, count, affinity timeout, flags)
 *   slots     (id, slot)          -> endpoint (addr, port); slots 0..count-1 are filled, an
 *                                    endpoint of weight w fills w slots
 *   endpoints (id, addr, port)    -> connections sent there; also says "is still an endpoint"
 *   affinity  (netns, id)         -> (last use, endpoint) for ClientIP session affinity (LRU)
 *   revnat    (socket, addr, port)-> Service address, for recvmsg and getpeername (LRU)
 * Where a lookup misses (not a Service, a slot being rewritten), the program leaves the
 * address alone: the nftables rules the daemon also keeps then handle the packet. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define ECONNREFUSED 111
#define VERDICT_PROCEED 1
#define VERDICT_REJECT 0

#define SVC_F_REJECT 1 /* no usable endpoint anywhere: fail as kube-proxy's REJECT does */
#define SVC_F_PASS 2   /* endpoints exist but none under this policy: leave it to nftables (drop) */

struct addr { __u32 w[4]; };

struct svc_key { struct addr addr; __u16 port; __u8 proto; __u8 pad; };
struct svc_val { __u32 id; __u32 count; __u32 affinity_timeout; __u32 flags; };
struct slot_key { __u32 id; __u32 slot; };
struct backend { struct addr addr; __u16 port; __u16 pad; };
struct ep_key { __u32 id; struct addr addr; __u16 port; __u16 pad; };
struct aff_key { __u64 netns; __u32 id; __u32 pad; };
struct aff_val { __u64 last_ns; struct backend be; __u32 pad; };
struct rnat_key { __u64 cookie; struct addr addr; __u16 port; __u16 pad; __u32 pad2; };
struct rnat_val { struct addr addr; __u16 port; __u16 pad; };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct slot_key);
	__type(value, struct backend);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ep_key);
	__type(value, __u64);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct aff_key);
	__type(value, struct aff_val);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rnat_key);
	__type(value, struct rnat_val);
} revnat SEC(".maps");

/* Is be still one of the service's endpoints? Its counter exists exactly while it is. */
static __always_inline __u64 *ep_counter(__u32 id, const struct backend *be)
{
	struct ep_key k = { .id = id, .addr = be->addr, .port = be->port };
	return bpf_map_lookup_elem(&endpoints, &k);
}

/* The endpoint for one new connection: the client's affine one while it is fresh and still an
 * endpoint, else a random slot. NULL: a slot missing while Python rewrites it (leave the
 * address alone). The client of ClientIP affinity is the network namespace: a pod's one IP. */
static __always_inline int pick(void *ctx, const struct svc_val *svc, struct backend *out)
{
	struct aff_key ak = { .netns = bpf_get_netns_cookie(ctx), .id = svc->id };
	__u64 now = bpf_ktime_get_ns();
	__u64 *counter;

	if (svc->affinity_timeout) {
		struct aff_val *av = bpf_map_lookup_elem(&affinity, &ak);
		if (av && now - av->last_ns <= (__u64)svc->affinity_timeout * 1000000000ULL) {
			counter = ep_counter(svc->id, &av->be);
			if (counter) {
				*out = av->be;
				goto chosen;
			}
		}
	}
	struct slot_key sk = { .id = svc->id, .slot = bpf_get_prandom_u32() % svc->count };
	struct backend *be = bpf_map_lookup_elem(&slots, &sk);
	if (!be)
		return -1;
	*out = *be;
	counter = ep_counter(svc->id, out);
chosen:
	if (counter)
		__sync_fetch_and_add(counter, 1);
	if (svc->affinity_timeout) {
		struct aff_val nv = { .last_ns = now, .be = *out };
		bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
	}
	return 0;
}

/* Look the destination up and choose. 1: rewrite to *be; 0: leave it; -1: refuse. */
static __always_inline int resolve(struct bpf_sock_addr *ctx, const struct addr *dst,
				   struct backend *be)
{
	struct svc_key key = { .addr = *dst, .port = (__u16)ctx->user_port, .proto = (__u8)ctx->protocol };
	struct svc_val *svc = bpf_map_lookup_elem(&services, &key);

	if (!svc)
		return 0;
	if (svc->flags & SVC_F_REJECT)
		return -1;
	if ((svc->flags & SVC_F_PASS) || svc->count == 0)
		return 0;
	struct svc_val copy = *svc;
	if (pick(ctx, &copy, be) < 0)
		return 0;
	/* Remember the Service address for this socket's replies and getpeername(). */
	struct rnat_key rk = { .cookie = bpf_get_socket_cookie(ctx), .addr = be->addr, .port = be->port };
	struct rnat_val rv = { .addr = *dst, .port = key.port };
	bpf_map_update_elem(&revnat, &rk, &rv, BPF_ANY);
	return 1;
}

/* connect() and sendmsg(): refusing sets the errno the process sees (ECONNREFUSED, as the
 * ICMP port unreachable of kube-proxy's REJECT); a hook returning 0 alone gives EPERM. */
static __always_inline int refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return VERDICT_REJECT;
}

static __always_inline int forward4(struct bpf_sock_addr *ctx)
{
	struct addr dst = { .w = { ctx->user_ip4, 0, 0, 0 } };
	struct backend be;
	int r = resolve(ctx, &dst, &be);

	if (r < 0)
		return refuse();
	if (r > 0) {
		ctx->user_ip4 = be.addr.w[0];
		ctx->user_port = be.port;
	}
	return VERDICT_PROCEED;
}

static __always_inline int forward6(struct bpf_sock_addr *ctx)
{
	struct addr dst = { .w = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] } };
	struct backend be;
	int r = resolve(ctx, &dst, &be);

	if (r < 0)
		return refuse();
	if (r > 0) {
		ctx->user_ip6[0] = be.addr.w[0];
		ctx->user_ip6[1] = be.addr.w[1];
		ctx->user_ip6[2] = be.addr.w[2];
		ctx->user_ip6[3] = be.addr.w[3];
		ctx->user_port = be.port;
	}
	return VERDICT_PROCEED;
}

/* recvmsg() and getpeername(): show the Service address where the socket was redirected. */
static __always_inline int reverse4(struct bpf_sock_addr *ctx)
{
	struct rnat_key rk = { .cookie = bpf_get_socket_cookie(ctx),
			       .addr = { .w = { ctx->user_ip4, 0, 0, 0 } }, .port = (__u16)ctx->user_port };
	struct rnat_val *rv = bpf_map_lookup_elem(&revnat, &rk);

	if (rv) {
		ctx->user_ip4 = rv->addr.w[0];
		ctx->user_port = rv->port;
	}
	return VERDICT_PROCEED;
}

static __always_inline int reverse6(struct bpf_sock_addr *ctx)
{
	struct rnat_key rk = { .cookie = bpf_get_socket_cookie(ctx),
			       .addr = { .w = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] } },
			       .port = (__u16)ctx->user_port };
	struct rnat_val *rv = bpf_map_lookup_elem(&revnat, &rk);

	if (rv) {
		ctx->user_ip6[0] = rv->addr.w[0];
		ctx->user_ip6[1] = rv->addr.w[1];
		ctx->user_ip6[2] = rv->addr.w[2];
		ctx->user_ip6[3] = rv->addr.w[3];
		ctx->user_port = rv->port;
	}
	return VERDICT_PROCEED;
}

SEC("cgroup/connect4") int svcproxy_connect4(struct bpf_sock_addr *ctx) { return forward4(ctx); }
SEC("cgroup/connect6") int svcproxy_connect6(struct bpf_sock_addr *ctx) { return forward6(ctx); }
SEC("cgroup/sendmsg4") int svcproxy_sendmsg4(struct bpf_sock_addr *ctx) { return forward4(ctx); }
SEC("cgroup/sendmsg6") int svcproxy_sendmsg6(struct bpf_sock_addr *ctx) { return forward6(ctx); }
SEC("cgroup/recvmsg4") int svcproxy_recvmsg4(struct bpf_sock_addr *ctx) { return reverse4(ctx); }
SEC("cgroup/recvmsg6") int svcproxy_recvmsg6(struct bpf_sock_addr *ctx) { return reverse6(ctx); }
SEC("cgroup/getpeername4") int svcproxy_getpeername4(struct bpf_sock_addr *ctx) { return reverse4(ctx); }
SEC("cgroup/getpeername6") int svcproxy_getpeername6(struct bpf_sock_addr *ctx) { return reverse6(ctx); }

char _license[] SEC("license") = "GPL";
