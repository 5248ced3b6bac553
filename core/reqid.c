#include "reqid.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

/* xoshiro256**: fast, 256 bits of state, good enough for ids that must
 * not collide (not for secrets). One per thread, so workers share nothing. */
static _Thread_local uint64_t rng[4];
static _Thread_local bool seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static void seed(void)
{
    if (getrandom(rng, sizeof rng, GRND_NONBLOCK) != (ssize_t)sizeof rng) {
        /* Early boot or an old kernel: ids need to be unique, not secret. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec ^
                     (uint64_t)(uintptr_t)&ts;
        for (int i = 0; i < 4; i++) {   /* splitmix64 */
            x += 0x9e3779b97f4a7c15u;
            uint64_t z = x;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
            rng[i] = z ^ (z >> 31);
        }
    }
    if (!(rng[0] | rng[1] | rng[2] | rng[3]))
        rng[0] = 1;   /* the one state xoshiro cannot leave */
    seeded = true;
}

static uint64_t next(void)
{
    if (!seeded)
        seed();
    uint64_t result = rotl(rng[1] * 5, 7) * 9;
    uint64_t t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

/* n random bytes, not all zero (W3C forbids all-zero ids). */
static void random_bytes(uint8_t *out, size_t n)
{
    for (;;) {
        uint64_t acc = 0;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = next();
            size_t k = n - i < 8 ? n - i : 8;
            memcpy(out + i, &v, k);
            acc |= v;
        }
        if (acc)
            return;
    }
}

void reqid_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
}

bool reqid_valid_id(const char *s, size_t n)
{
    if (n == 0 || n > REQID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;   /* W3C: upper-case hex is invalid */
}

/* n bytes from 2n lower-case hex digits; false on a bad digit or all zero. */
static bool unhex(const char *s, size_t n, uint8_t *out)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
        acc |= out[i];
    }
    return acc != 0;
}

bool reqid_parse_traceparent(const char *s, size_t n, uint8_t trace[16],
                             uint8_t parent[8], uint8_t *flags)
{
    if (n != REQID_TRACEPARENT_LEN || s[0] != '0' || s[1] != '0' || s[2] != '-' ||
        s[35] != '-' || s[52] != '-')
        return false;
    if (!unhex(s + 3, 16, trace) || !unhex(s + 36, 8, parent))
        return false;
    int hi = hexval(s[53]), lo = hexval(s[54]);
    if (hi < 0 || lo < 0)
        return false;
    *flags = (uint8_t)(hi << 4 | lo);
    return true;
}

void reqid_init(struct request_ids *ids, const char *xrid, size_t xrid_len,
                const char *traceparent, size_t tp_len)
{
    if (xrid && reqid_valid_id(xrid, xrid_len)) {
        memcpy(ids->id, xrid, xrid_len);
        ids->id_len = (uint8_t)xrid_len;
    } else {
        uint8_t raw[16];
        random_bytes(raw, sizeof raw);
        reqid_hex(raw, sizeof raw, ids->id);
        ids->id_len = 32;
    }
    ids->has_parent = traceparent &&
        reqid_parse_traceparent(traceparent, tp_len, ids->trace, ids->parent, &ids->flags);
    if (!ids->has_parent) {
        random_bytes(ids->trace, sizeof ids->trace);
        memset(ids->parent, 0, sizeof ids->parent);
        ids->flags = 0;
    }
    random_bytes(ids->span, sizeof ids->span);
}

void reqid_traceparent(const struct request_ids *ids, char out[REQID_TRACEPARENT_LEN])
{
    memcpy(out, "00-", 3);
    reqid_hex(ids->trace, 16, out + 3);
    out[35] = '-';
    reqid_hex(ids->span, 8, out + 36);
    out[52] = '-';
    reqid_hex(&ids->flags, 1, out + 53);
}
