/* Keyed 64-bit hashing (SipHash-2-4) with a per-process random seed: quota
 * keys and stream tags are kept as hashes, never as the text a client
 * sent, and a client cannot choose keys that collide. */
#ifndef SLUICE_KEYHASH_H
#define SLUICE_KEYHASH_H

#include <stddef.h>
#include <stdint.h>

/* The hash of data under this process's seed (drawn once, thread-safe). */
uint64_t keyhash(const void *data, size_t len);

/* The hash of two strings together: keyhash2(a, b) != keyhash2(a', b')
 * whenever (a, b) != (a', b'), short of a collision. */
uint64_t keyhash2(const void *a, size_t alen, const void *b, size_t blen);

#endif
