/* channel.c against a recording fake stream (fake_stream.c, linked in
 * place of stream.c): fan-out, history, resume and the history bound,
 * with a clock the tests move by hand. */
#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "channel.h"
#include "check.h"
#include "fake_stream.h"
#include "frame.h"
#include "sse.h"

static double now_s;

static double test_clock(void)
{
    return now_s;
}

static struct channels *new_channels(size_t history_len, double ttl, size_t bytes)
{
    struct channels *cs = channels_new(ev_default_loop(0), history_len, ttl, bytes);
    if (!cs) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    now_s = 1000;
    channels_set_clock(cs, test_clock);
    fake_reset();
    return cs;
}

static void done(struct channels *cs, struct sse_stream *streams, int n)
{
    for (int i = 0; i < n; i++)
        channels_unsubscribe(cs, &streams[i]);
    channels_free(cs);
    fake_reset();
}

static uint64_t publish(struct channels *cs, const char *ch, const char *data,
                        uint32_t *reached)
{
    struct publish_result r = { 0 };
    int rc = channels_publish(cs, ch, strlen(ch), NULL, 0, data, strlen(data), &r);
    CHECK_EQ(rc, 0);
    if (reached)
        *reached = r.reached;
    return r.id;
}

static void subscribe(struct channels *cs, struct sse_stream *s, const char *const *names,
                      const int *views, int n, const char *last_raw)
{
    struct subscription_req reqs[8];
    for (int i = 0; i < n; i++)
        reqs[i] = (struct subscription_req){ names[i], strlen(names[i]), views ? views[i] : 0 };
    uint64_t last = last_raw ? strtoull(last_raw, NULL, 10) : 0;
    CHECK_EQ(channels_subscribe(cs, s, reqs, n, last_raw, last), 0);
}

static void subscribe_one(struct channels *cs, struct sse_stream *s, const char *name)
{
    subscribe(cs, s, &name, NULL, 1, NULL);
}

/* The event text of a frame (the chunk's body). */
static int body_has(const struct frame *f, const char *needle)
{
    return f && contains(f->data + f->body_off, f->body_len, needle);
}

static int is_id(const struct delivery *d, uint64_t id)
{
    return d && d->frame && d->frame->id == id;
}

static void id_text(char *out, size_t n, uint64_t id)
{
    snprintf(out, n, "%" PRIu64, id);
}

/* View 1 gets a masked copy, view 2 drops every event. */
static struct frame *test_framer(void *ctx, int view, const struct event_src *src)
{
    (void)ctx;
    if (view != 1)
        return NULL;
    struct sse_event ev = { .data = "masked", .data_len = 6, .retry_ms = -1 };
    (void)src;
    struct frame *f = frame_sse(&ev);
    if (f)
        f->flags |= FRAME_EVENT;
    return f;
}

static int framer_calls;

/* test_framer, counting its calls; the masked text says which call made
 * it, so a test can tell a kept frame from a new one. */
static struct frame *counting_framer(void *ctx, int view, const struct event_src *src)
{
    (void)ctx;
    (void)src;
    framer_calls++;
    if (view != 1)
        return NULL;
    char text[32];
    int n = snprintf(text, sizeof text, "masked %d", framer_calls);
    struct sse_event ev = { .data = text, .data_len = (size_t)n, .retry_ms = -1 };
    struct frame *f = frame_sse(&ev);
    if (f)
        f->flags |= FRAME_EVENT;
    return f;
}

/* ---- fan-out ----------------------------------------------------------- */

static void publish_to_no_one(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    uint32_t reached = 99;
    uint64_t id1 = publish(cs, "a", "x", &reached);
    CHECK_EQ(reached, 0);
    uint64_t id2 = publish(cs, "b", "y", &reached);
    CHECK_EQ(id2, id1 + 1);   /* one sequence for all channels */
    CHECK_EQ(channels_last_id(cs), id2);
    CHECK_EQ(fake_count, 0);
    uint64_t published, delivered;
    channels_traffic(cs, &published, &delivered);
    CHECK_EQ(published, 2);
    CHECK_EQ(delivered, 0);
    done(cs, NULL, 0);
}

static void publish_to_one(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    struct sse_stream s;
    fake_stream_open(&s);
    subscribe_one(cs, &s, "a");
    uint32_t reached;
    uint64_t id = publish(cs, "a", "hello", &reached);
    CHECK_EQ(reached, 1);
    CHECK_EQ(fake_count, 1);
    CHECK(is_id(fake_nth(&s, 0), id));
    CHECK(!fake_nth(&s, 0)->replay);
    CHECK(body_has(fake_nth(&s, 0)->frame, "data: hello\n"));
    CHECK(fake_nth(&s, 0)->frame->flags & FRAME_EVENT);
    publish(cs, "b", "elsewhere", &reached);   /* another channel: not ours */
    CHECK_EQ(reached, 0);
    CHECK_EQ(fake_count_for(&s), 1);
    CHECK_EQ(channels_subscribers(cs, "a", 1), 1);
    done(cs, &s, 1);
}

/* N subscribers over two views get one frame per view, shared by
 * reference; a view whose transform drops the event reaches no one. */
static void publish_to_many_on_views(void)
{
    enum { N = 40 };
    struct channels *cs = new_channels(10, 60, 0);
    channels_set_framer(cs, test_framer, NULL);
    struct sse_stream s[N];
    for (int i = 0; i < N; i++) {
        fake_stream_open(&s[i]);
        const char *name = "a";
        int view = i % 4 == 3 ? 2 : i % 2;   /* views 0, 1 and a dropping 2 */
        subscribe(cs, &s[i], &name, &view, 1, NULL);
    }
    uint32_t reached;
    uint64_t id = publish(cs, "a", "secret", &reached);
    CHECK_EQ(reached, 30);   /* 20 on view 0, 10 on view 1, 10 dropped */
    struct frame *raw = NULL, *masked = NULL;
    for (int i = 0; i < N; i++) {
        const struct delivery *d = fake_nth(&s[i], 0);
        if (i % 4 == 3) {
            CHECK(d == NULL);
            continue;
        }
        CHECK(is_id(d, id));
        if (!d)
            continue;
        struct frame **seen = i % 2 ? &masked : &raw;
        if (!*seen)
            *seen = d->frame;
        CHECK(d->frame == *seen);   /* the same frame, not a copy */
    }
    CHECK(raw && masked && raw != masked);
    CHECK(body_has(raw, "data: secret\n"));
    CHECK(body_has(masked, "data: masked\n") && !body_has(masked, "secret"));
    uint64_t published, delivered;
    channels_traffic(cs, &published, &delivered);
    CHECK_EQ(published, 1);
    CHECK_EQ(delivered, 30);
    done(cs, s, N);
}

static void closed_stream_not_reached(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    struct sse_stream s[3];
    for (int i = 0; i < 3; i++) {
        fake_stream_open(&s[i]);
        subscribe_one(cs, &s[i], "a");
    }
    s[1].open = false;   /* closed by its slow-consumer policy, say */
    uint32_t reached;
    publish(cs, "a", "x", &reached);
    CHECK_EQ(reached, 2);
    CHECK_EQ(fake_count_for(&s[1]), 0);
    uint64_t published, delivered;
    channels_traffic(cs, &published, &delivered);
    CHECK_EQ(delivered, 2);
    done(cs, s, 3);
}

/* ---- history and resume ------------------------------------------------ */

static void history_by_count(void)
{
    struct channels *cs = new_channels(3, 60, 0);
    uint64_t id[6];
    for (int i = 1; i <= 5; i++)
        id[i] = publish(cs, "a", "e", NULL);
    size_t nch, nsubs, nev, hbytes;
    channels_counts(cs, &nch, &nsubs, &nev, &hbytes);
    CHECK_EQ(nev, 3);

    char last[24];
    struct sse_stream s, t;
    fake_stream_open(&s);
    id_text(last, sizeof last, id[2]);   /* missed 3..5: all still kept */
    const char *name = "a";
    subscribe(cs, &s, &name, NULL, 1, last);
    CHECK_EQ(fake_count_for(&s), 3);
    for (int i = 0; i < 3; i++) {
        CHECK(is_id(fake_nth(&s, i), id[3 + i]));
        CHECK(fake_nth(&s, i) && fake_nth(&s, i)->replay);
    }

    fake_stream_open(&t);
    id_text(last, sizeof last, id[1]);   /* missed 2, which is gone */
    subscribe(cs, &t, &name, NULL, 1, last);
    CHECK_EQ(fake_count_for(&t), 1);
    const struct delivery *d = fake_nth(&t, 0);
    CHECK(d && !d->replay && body_has(d->frame, "event: sluice-reset\n"));
    CHECK(d && body_has(d->frame, "\"reason\":\"history-expired\""));
    channels_unsubscribe(cs, &s);
    channels_unsubscribe(cs, &t);
    done(cs, NULL, 0);
}

static void history_by_ttl(void)
{
    struct channels *cs = new_channels(100, 10, 0);
    uint64_t e1 = publish(cs, "a", "one", NULL);
    now_s += 1;
    uint64_t e2 = publish(cs, "a", "two", NULL);
    now_s += 4;
    uint64_t e3 = publish(cs, "a", "three", NULL);
    (void)e3;

    now_s = 1000 + 10.5;   /* e1 (at 1000) is 10.5 s old: gone; e2 stays */
    char last[24];
    id_text(last, sizeof last, e1);
    const char *name = "a";
    struct sse_stream s, t;
    fake_stream_open(&s);
    subscribe(cs, &s, &name, NULL, 1, last);
    CHECK_EQ(fake_count_for(&s), 2);
    CHECK(is_id(fake_nth(&s, 0), e2));
    CHECK(is_id(fake_nth(&s, 1), e3));
    channels_unsubscribe(cs, &s);

    now_s = 1000 + 11.5;   /* now e2 is gone too, which t missed */
    fake_stream_open(&t);
    subscribe(cs, &t, &name, NULL, 1, last);
    const struct delivery *d = fake_nth(&t, 0);
    CHECK(d && body_has(d->frame, "\"reason\":\"history-expired\""));
    CHECK_EQ(fake_count_for(&t), 1);   /* the reset, no partial replay */
    size_t nch, nsubs, nev, hbytes;
    channels_counts(cs, &nch, &nsubs, &nev, &hbytes);
    CHECK_EQ(nev, 1);
    done(cs, &t, 1);
}

static void resume_merged_across_channels(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    uint64_t a1 = publish(cs, "a", "a1", NULL);
    uint64_t b2 = publish(cs, "b", "b2", NULL);
    uint64_t a3 = publish(cs, "a", "a3", NULL);
    uint64_t b4 = publish(cs, "b", "b4", NULL);
    publish(cs, "c", "not subscribed", NULL);
    char last[24];
    id_text(last, sizeof last, a1);
    struct sse_stream s;
    fake_stream_open(&s);
    const char *names[] = { "a", "b" };
    subscribe(cs, &s, names, NULL, 2, last);
    CHECK_EQ(fake_count_for(&s), 3);
    CHECK(is_id(fake_nth(&s, 0), b2));
    CHECK(is_id(fake_nth(&s, 1), a3));
    CHECK(is_id(fake_nth(&s, 2), b4));
    /* Live events follow the replay. */
    uint32_t reached;
    uint64_t b6 = publish(cs, "b", "b6", &reached);
    CHECK_EQ(reached, 1);
    CHECK(is_id(fake_nth(&s, 3), b6));
    CHECK(fake_nth(&s, 3) && !fake_nth(&s, 3)->replay);
    done(cs, &s, 1);
}

/* A resume storm on masked views: every stream gets its replay, and each
 * view's transform runs once per event, not once per stream; a view that
 * drops the event is remembered too; a reload (views changed) frames
 * afresh. */
static void resume_frames_once_per_view(void)
{
    enum { N = 20, EVENTS = 5 };
    struct channels *cs = new_channels(10, 60, 0);
    channels_set_framer(cs, counting_framer, NULL);
    uint64_t first = publish(cs, "a", "e0", NULL);
    for (int i = 1; i < EVENTS; i++)
        publish(cs, "a", "e", NULL);
    char last[24];
    id_text(last, sizeof last, first);
    framer_calls = 0;
    struct sse_stream s[N];
    for (int i = 0; i < N; i++) {
        fake_stream_open(&s[i]);
        const char *name = "a";
        int view = i % 2 ? 1 : 2;   /* masked, or a view that drops every event */
        subscribe(cs, &s[i], &name, &view, 1, last);
        CHECK_EQ(fake_count_for(&s[i]), i % 2 ? EVENTS - 1 : 0);
    }
    CHECK_EQ(framer_calls, 2 * (EVENTS - 1));   /* per view, not per stream */
    const struct delivery *d1 = fake_nth(&s[1], 0), *d3 = fake_nth(&s[3], 0);
    CHECK(d1 && d3 && d1->frame == d3->frame && d1->replay);
    CHECK(d1 && body_has(d1->frame, "data: masked 5\n"));   /* after view 2 framed 4 */
    channels_views_changed(cs);
    struct sse_stream t;
    fake_stream_open(&t);
    const char *name = "a";
    int view = 1;
    subscribe(cs, &t, &name, &view, 1, last);
    CHECK_EQ(framer_calls, 3 * (EVENTS - 1));
    CHECK(fake_nth(&t, 0) && body_has(fake_nth(&t, 0)->frame, "data: masked 9\n"));
    channels_unsubscribe(cs, &t);
    done(cs, s, N);
}

static void reset_unknown_id(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    publish(cs, "a", "x", NULL);
    struct sse_stream s, t;
    fake_stream_open(&s);
    const char *name = "a\"q";   /* quoted in the JSON */
    publish(cs, name, "y", NULL);
    subscribe(cs, &s, &name, NULL, 1, "5");   /* an id from another run */
    CHECK_EQ(fake_count_for(&s), 1);
    const struct delivery *d = fake_nth(&s, 0);
    CHECK(d && body_has(d->frame, "event: sluice-reset\n"
                                  "data: {\"channel\":\"a\\\"q\",\"reason\":\"unknown-id\","
                                  "\"last_event_id\":\"5\"}\n\n"));

    /* A stream's own reset event name; an id from the future. */
    fake_stream_open(&t);
    struct stream_extra named = { .reset_event = "missed" };
    t.extra = &named;
    char last[24];
    id_text(last, sizeof last, channels_last_id(cs) + 1);
    const char *a = "a";
    subscribe(cs, &t, &a, NULL, 1, last);
    d = fake_nth(&t, 0);
    CHECK(d && body_has(d->frame, "event: missed\n"));
    CHECK(d && body_has(d->frame, "\"reason\":\"unknown-id\""));
    CHECK_EQ(fake_count_for(&t), 1);
    t.extra = NULL;
    channels_unsubscribe(cs, &s);
    channels_unsubscribe(cs, &t);
    done(cs, NULL, 0);
}

/* The same publishes, with and without a bound just under what they
 * need: the bounded one drops the oldest event of all channels, a1,
 * though a has a newer event and b's one is newer still. */
static void history_bytes_bound(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    channels_configure(cs, "z", 0, 60);   /* z keeps nothing */
    static char big[2000];
    memset(big, 'x', sizeof big - 1);
    publish(cs, "z", "z", NULL);
    publish(cs, "a", big, NULL);
    publish(cs, "b", big, NULL);
    publish(cs, "a", big, NULL);
    publish(cs, "c", big, NULL);
    size_t nch, nsubs, nev, unbounded;
    channels_counts(cs, &nch, &nsubs, &nev, &unbounded);
    CHECK_EQ(nev, 4);
    channels_free(cs);

    cs = new_channels(10, 60, unbounded - 1);
    channels_configure(cs, "z", 0, 60);
    uint64_t z1 = publish(cs, "z", "z", NULL);
    publish(cs, "a", big, NULL);
    uint64_t b3 = publish(cs, "b", big, NULL);
    publish(cs, "a", big, NULL);
    uint64_t c5 = publish(cs, "c", big, NULL);
    size_t hbytes;
    channels_counts(cs, &nch, &nsubs, &nev, &hbytes);
    CHECK_EQ(nev, 3);
    CHECK(hbytes <= unbounded - 1);

    char last[24];
    id_text(last, sizeof last, z1);
    struct sse_stream s, t;
    fake_stream_open(&s);
    const char *a = "a";
    subscribe(cs, &s, &a, NULL, 1, last);   /* missed a2, dropped */
    CHECK(fake_nth(&s, 0) && body_has(fake_nth(&s, 0)->frame, "\"reason\":\"history-expired\""));
    CHECK_EQ(fake_count_for(&s), 1);   /* the reset, no partial replay */
    fake_stream_open(&t);
    const char *bc[] = { "b", "c" };
    subscribe(cs, &t, bc, NULL, 2, last);   /* b and c complete */
    CHECK_EQ(fake_count_for(&t), 2);
    CHECK(is_id(fake_nth(&t, 0), b3));
    CHECK(is_id(fake_nth(&t, 1), c5));
    channels_unsubscribe(cs, &s);
    channels_unsubscribe(cs, &t);
    done(cs, NULL, 0);
}

static void unsubscribe_frees_records(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    channels_configure(cs, "quiet", 0, 60);
    struct sse_stream s;
    fake_stream_open(&s);
    const char *names[] = { "quiet", "kept" };
    int views[] = { 0, 1 };
    subscribe(cs, &s, names, views, 2, NULL);
    size_t nch, nsubs, nev, hbytes;
    channels_counts(cs, &nch, &nsubs, &nev, &hbytes);
    CHECK_EQ(nch, 2);
    CHECK_EQ(nsubs, 2);
    CHECK(s.subs != NULL);
    publish(cs, "kept", "x", NULL);   /* history keeps this record */
    channels_unsubscribe(cs, &s);
    CHECK(s.subs == NULL);
    channels_counts(cs, &nch, &nsubs, &nev, &hbytes);
    CHECK_EQ(nsubs, 0);
    CHECK_EQ(nch, 1);   /* "quiet" had nothing left: freed */
    CHECK_EQ(channels_subscribers(cs, "kept", 4), 0);
    CHECK_EQ(channels_subscribers(cs, "quiet", 5), 0);
    uint32_t reached;
    publish(cs, "kept", "y", &reached);
    CHECK_EQ(reached, 0);
    done(cs, NULL, 0);
}

static void describe_names_each_channel_once(void)
{
    struct channels *cs = new_channels(10, 60, 0);
    struct sse_stream s, t;
    fake_stream_open(&s);
    fake_stream_open(&t);
    const char *names[] = { "a", "b", "a" };
    int views[] = { 0, 0, 1 };
    subscribe(cs, &s, names, views, 3, NULL);
    subscribe_one(cs, &t, "a");
    struct buf b = { 0 };
    channels_describe_stream(&s, &b);
    CHECK(b.len && contains(b.data, b.len, "\"channels\":[") &&
          contains(b.data, b.len, "\"a\"") && contains(b.data, b.len, "\"b\"") &&
          !contains(b.data, b.len, "\"channel\":"));
    buf_free(&b);
    b = (struct buf){ 0 };
    channels_describe_stream(&t, &b);
    CHECK(b.len == strlen("\"channel\":\"a\",\"channels\":[\"a\"]") &&
          memcmp(b.data, "\"channel\":\"a\",\"channels\":[\"a\"]", b.len) == 0);
    buf_free(&b);
    channels_unsubscribe(cs, &s);
    channels_unsubscribe(cs, &t);
    done(cs, NULL, 0);
}

int main(void)
{
    RUN(publish_to_no_one);
    RUN(publish_to_one);
    RUN(publish_to_many_on_views);
    RUN(closed_stream_not_reached);
    RUN(history_by_count);
    RUN(history_by_ttl);
    RUN(resume_merged_across_channels);
    RUN(resume_frames_once_per_view);
    RUN(reset_unknown_id);
    RUN(history_bytes_bound);
    RUN(unsubscribe_frees_records);
    RUN(describe_names_each_channel_once);
    return CHECK_SUMMARY("channel_test");
}
