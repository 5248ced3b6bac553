#include "tags.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/queue.h>

#include "keyhash.h"

struct tag_entry {
    TAILQ_ENTRY(tag_entry) link;
    unsigned wid;
    double handle;
    uint8_t ntags;
    bool found;               /* a disconnect has taken it */
    uint64_t name[TAGS_MAX], value[TAGS_MAX];
    uint32_t nch, chcap;
    uint64_t *channels;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static TAILQ_HEAD(, tag_entry) all = TAILQ_HEAD_INITIALIZER(all);
static size_t count;

/* A name's hash and a value's are taken apart (a name could equal a value). */
static uint64_t name_hash(const char *s, size_t n)
{
    return keyhash2("tag", 3, s, n);
}

static uint64_t value_hash(const char *s, size_t n)
{
    return keyhash2("value", 5, s, n);
}

static uint64_t channel_hash(const char *s, size_t n)
{
    return keyhash2("channel", 7, s, n);
}

struct tag_entry *tags_new(unsigned wid, double handle)
{
    struct tag_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->wid = wid;
    e->handle = handle;
    pthread_mutex_lock(&lock);
    TAILQ_INSERT_TAIL(&all, e, link);
    count++;
    pthread_mutex_unlock(&lock);
    return e;
}

bool tags_set(struct tag_entry *e, const char *name, size_t nlen,
              const char *value, size_t vlen)
{
    uint64_t n = name_hash(name, nlen), v = value_hash(value, vlen);
    bool ok = true;
    pthread_mutex_lock(&lock);
    int i = 0;
    while (i < e->ntags && e->name[i] != n)
        i++;
    if (i == e->ntags) {
        if (e->ntags == TAGS_MAX)
            ok = false;
        else
            e->name[e->ntags++] = n;
    }
    if (ok)
        e->value[i] = v;
    pthread_mutex_unlock(&lock);
    return ok;
}

bool tags_add_channel(struct tag_entry *e, const char *name, size_t len)
{
    uint64_t h = channel_hash(name, len);
    bool ok = true;
    pthread_mutex_lock(&lock);
    for (uint32_t i = 0; i < e->nch; i++)
        if (e->channels[i] == h)
            goto out;
    if (e->nch == e->chcap) {
        uint32_t cap = e->chcap ? e->chcap * 2 : 2;
        uint64_t *grown = realloc(e->channels, sizeof *grown * cap);
        if (!grown) {
            ok = false;
            goto out;
        }
        e->channels = grown;
        e->chcap = cap;
    }
    e->channels[e->nch++] = h;
out:
    pthread_mutex_unlock(&lock);
    return ok;
}

void tags_remove(struct tag_entry *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&lock);
    TAILQ_REMOVE(&all, e, link);
    count--;
    pthread_mutex_unlock(&lock);
    free(e->channels);
    free(e);
}

void tags_criterion(struct tags_match *m, const char *name, size_t nlen,
                    const char *value, size_t vlen)
{
    if (m->ntags == sizeof m->name / sizeof m->name[0])
        return;
    m->name[m->ntags] = name_hash(name, nlen);
    m->value[m->ntags++] = value_hash(value, vlen);
}

void tags_criterion_channel(struct tags_match *m, const char *name, size_t len)
{
    m->has_channel = true;
    m->channel = channel_hash(name, len);
}

static bool matches(const struct tag_entry *e, const struct tags_match *m)
{
    for (size_t k = 0; k < m->ntags; k++) {
        int i = 0;
        while (i < e->ntags && e->name[i] != m->name[k])
            i++;
        if (i == e->ntags || e->value[i] != m->value[k])
            return false;
    }
    if (m->has_channel) {
        for (uint32_t i = 0; i < e->nch; i++)
            if (e->channels[i] == m->channel)
                return true;
        return false;
    }
    return true;
}

long tags_find(const struct tags_match *m, struct tags_found **out)
{
    *out = NULL;
    size_t n = 0, cap = 0;
    long rc = 0;
    pthread_mutex_lock(&lock);
    struct tag_entry *e;
    TAILQ_FOREACH(e, &all, link) {
        if (e->found || !matches(e, m))
            continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 16;
            struct tags_found *grown = realloc(*out, sizeof *grown * c);
            if (!grown) {
                rc = -1;
                break;
            }
            *out = grown;
            cap = c;
        }
        e->found = true;
        (*out)[n++] = (struct tags_found){ e->wid, e->handle };
    }
    if (rc < 0) {   /* none taken after all */
        for (size_t i = 0; i < n; i++)
            TAILQ_FOREACH(e, &all, link)
                if (e->wid == (*out)[i].wid && e->handle == (*out)[i].handle)
                    e->found = false;
    }
    pthread_mutex_unlock(&lock);
    if (rc < 0) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return (long)n;
}

size_t tags_count(void)
{
    pthread_mutex_lock(&lock);
    size_t n = count;
    pthread_mutex_unlock(&lock);
    return n;
}
