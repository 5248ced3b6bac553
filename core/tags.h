/* Stream tags, for admin actions: a process-wide registry of the streams
 * a handler tagged (s:tag("user", id)), with the channels they subscribe
 * to, so that sluice.disconnect{...} in any worker finds every matching
 * stream of every worker, and counts them, without asking the workers.
 * Tags and channels are held as keyhash values; an untagged stream is
 * not in the registry and costs nothing. One mutex: tagging, subscribing
 * a tagged stream, its end and a disconnect's scan take it. */
#ifndef SLUICE_TAGS_H
#define SLUICE_TAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TAGS_MAX 4            /* tags per stream */
#define TAG_NAME_MAX 32       /* bytes of a tag's name */
#define TAG_VALUE_MAX 128     /* bytes of a tag's value */
#define TAGS_CRITERIA_MAX (TAGS_MAX + 8)   /* tags one disconnect may name */

struct tag_entry;

/* A stream of worker wid (handle: its Lua handle) with no tags yet.
 * NULL when out of memory. */
struct tag_entry *tags_new(unsigned wid, double handle);

/* Sets name = value (replacing the value of a name set before). False
 * past TAGS_MAX names. */
bool tags_set(struct tag_entry *e, const char *name, size_t nlen,
              const char *value, size_t vlen);

/* The stream subscribed to a channel. False when out of memory. */
bool tags_add_channel(struct tag_entry *e, const char *name, size_t len);

/* The stream ended: out of the registry, freed. */
void tags_remove(struct tag_entry *e);

struct tags_match {
    size_t ntags;
    uint64_t name[TAGS_CRITERIA_MAX], value[TAGS_CRITERIA_MAX];   /* hashes */
    bool has_channel;
    uint64_t channel;
};

/* Hashes for a criterion (the registry's own way). */
void tags_criterion(struct tags_match *m, const char *name, size_t nlen,
                    const char *value, size_t vlen);
void tags_criterion_channel(struct tags_match *m, const char *name, size_t len);

struct tags_found {
    unsigned wid;
    double handle;
};

/* Every stream that carries all the tags of m (and the channel, if any)
 * and was not found by an earlier call: marked found, so a second
 * disconnect does not count it again. *out (malloc'd, the caller frees):
 * the streams; returns how many, or -1 when out of memory. */
long tags_find(const struct tags_match *m, struct tags_found **out);

/* Tagged streams now. */
size_t tags_count(void);

#endif
