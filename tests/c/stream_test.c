/* stream.c with the real channels above it and a fake transport below
 * (the stream_owner_* hooks, defined here): the slow-consumer policies,
 * the gap notice, replay credit and the end of a stream. */
#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "check.h"
#include "frame.h"
#include "stream.h"

static int flushes, writes_now, aborts, ends;
/* Loop times of the output queued on the streams heartbeat tests watch. */
#define MAX_FLUSH_TIMES 64
static struct sse_stream *watched[2];
static ev_tstamp flush_at[2][MAX_FLUSH_TIMES];
static int nflush[2];

void stream_owner_flush(struct sse_stream *s)
{
    flushes++;
    for (int i = 0; i < 2; i++)
        if (s == watched[i] && nflush[i] < MAX_FLUSH_TIMES) {
            flush_at[i][nflush[i]++] = ev_now(s->env->loop);
            outbuf_clear(&s->out, NULL);   /* a client reading all it gets */
        }
}

void stream_owner_write_now(struct sse_stream *s)
{
    (void)s;   /* a client that reads nothing: the socket takes nothing */
    writes_now++;
}

void stream_owner_abort(struct sse_stream *s)
{
    s->open = false;
    aborts++;
}

void stream_owner_ended(struct sse_stream *s)
{
    s->open = false;
    ends++;
}

static struct stream_env env;

static void setup(void)
{
    env = (struct stream_env){ .loop = ev_default_loop(0), .max_queued = 200,
                               .describe_subs = channels_describe_stream };
    flushes = writes_now = aborts = ends = 0;
}

static void open_stream(struct sse_stream *s, enum slow_policy policy)
{
    memset(s, 0, sizeof *s);
    stream_init(s, &env);
    s->open = true;
    s->chunked = true;
    s->slow_policy = policy;
}

static struct channels *new_channels(void)
{
    struct channels *cs = channels_new(env.loop, 10, 60, 0);
    if (!cs)
        exit(2);
    return cs;
}

static void subscribe(struct channels *cs, struct sse_stream *s, const char *const *names,
                      int n, const char *last_raw)
{
    struct subscription_req reqs[4];
    for (int i = 0; i < n; i++)
        reqs[i] = (struct subscription_req){ names[i], strlen(names[i]), 0 };
    uint64_t last = last_raw ? strtoull(last_raw, NULL, 10) : 0;
    CHECK_EQ(channels_subscribe(cs, s, reqs, n, last_raw, last), 0);
}

static uint32_t publish(struct channels *cs, const char *ch, size_t data_len, uint64_t *id)
{
    static char data[1024];
    memset(data, 'x', sizeof data);
    struct publish_result r = { 0 };
    CHECK_EQ(channels_publish(cs, ch, strlen(ch), NULL, 0, data, data_len, &r), 0);
    if (id)
        *id = r.id;
    return r.reached;
}

/* The text of the first slice a client would read next. */
static const struct frame *front(const struct sse_stream *s)
{
    const struct slice *sl = outbuf_first_unstarted(&s->out);
    return sl ? sl->frame : NULL;
}

static int frame_has(const struct frame *f, const char *needle)
{
    return f && contains(f->data, f->len, needle);
}

static void gap_notice_names_channels(void)
{
    setup();
    struct channels *cs = new_channels();
    struct sse_stream s;
    open_stream(&s, SLOW_DROP_OLDEST);
    const char *names[] = { "alpha", "beta" };
    subscribe(cs, &s, names, 2, NULL);
    CHECK_EQ(publish(cs, "alpha", 150, NULL), 1);   /* an empty queue takes it */
    CHECK_EQ(s.out.count, 1);
    CHECK_EQ(publish(cs, "beta", 150, NULL), 1);    /* over the cap: drop the oldest */
    CHECK_EQ(writes_now, 1);
    CHECK_EQ(env.slow_gapped, 1);
    CHECK_EQ(aborts, 0);
    CHECK_EQ(s.out.count, 2);   /* the notice, then the new event */
    const struct frame *f = front(&s);
    CHECK(s.extra && f == s.extra->gap_marker);
    CHECK(frame_has(f, "event: sluice-reset\n"));
    CHECK(frame_has(f, "\"channels\":[") && frame_has(f, "\"alpha\"") &&
          frame_has(f, "\"beta\""));
    CHECK(frame_has(f, "\"reason\":\"slow-consumer\",\"dropped\":1,\"last_event_id\":null}"));
    /* A second drop while the notice waits: one notice with the sum. */
    CHECK_EQ(publish(cs, "alpha", 150, NULL), 1);
    CHECK_EQ(env.slow_gapped, 2);
    CHECK_EQ(s.out.count, 2);
    CHECK(frame_has(front(&s), "\"dropped\":2,"));
    channels_unsubscribe(cs, &s);
    stream_release(&s);
    channels_free(cs);
}

static void slow_close_is_not_reached(void)
{
    setup();
    struct channels *cs = new_channels();
    struct sse_stream s, fast;
    open_stream(&s, SLOW_CLOSE);
    open_stream(&fast, SLOW_CLOSE);
    const char *name = "a";
    subscribe(cs, &s, &name, 1, NULL);
    subscribe(cs, &fast, &name, 1, NULL);
    CHECK_EQ(publish(cs, "a", 150, NULL), 2);
    outbuf_clear(&fast.out, NULL);   /* fast read everything */
    CHECK_EQ(publish(cs, "a", 150, NULL), 1);
    CHECK_EQ(aborts, 1);
    CHECK(!s.open && fast.open);
    CHECK_EQ(env.slow_closed, 1);
    outbuf_clear(&fast.out, NULL);
    CHECK_EQ(publish(cs, "a", 10, NULL), 1);   /* closed: stays out */
    uint64_t published, delivered;
    channels_traffic(cs, &published, &delivered);
    CHECK_EQ(delivered, 4);
    channels_unsubscribe(cs, &s);
    channels_unsubscribe(cs, &fast);
    stream_release(&s);
    stream_release(&fast);
    channels_free(cs);
}

/* A resume may replay more than the cap; the cap grows by it until the
 * client has read it. */
static void replay_credit(void)
{
    setup();
    struct channels *cs = new_channels();
    uint64_t first;
    publish(cs, "r", 10, &first);
    for (int i = 0; i < 3; i++)
        publish(cs, "r", 150, NULL);
    struct sse_stream s;
    open_stream(&s, SLOW_CLOSE);
    char last[24];
    snprintf(last, sizeof last, "%" PRIu64, first);
    const char *name = "r";
    subscribe(cs, &s, &name, 1, last);
    CHECK(s.open);
    CHECK_EQ(aborts, 0);
    CHECK_EQ(s.out.count, 3);
    CHECK(s.out.bytes > env.max_queued);
    CHECK_EQ(s.replay_credit, s.out.bytes);
    stream_wrote(&s, s.out.bytes + 100);   /* the owner wrote 100 bytes */
    CHECK_EQ(s.replay_credit, s.out.bytes - 100);
    channels_unsubscribe(cs, &s);
    stream_release(&s);
    channels_free(cs);
}

static void end_and_goodbye(void)
{
    setup();
    struct sse_stream s;
    open_stream(&s, SLOW_CLOSE);
    stream_goodbye(&s, 2500);
    CHECK_EQ(ends, 1);
    CHECK(!s.open);
    CHECK_EQ(s.out.count, 2);   /* the retry hint, the terminating chunk */
    const struct slice *sl = outbuf_first_unstarted(&s.out);
    CHECK(sl && frame_has(sl->frame, "retry: 2500\n"));
    struct frame *f = frame_copy("x", 1);
    CHECK(!stream_send(&s, f));   /* ended: takes nothing more */
    frame_unref(f);
    stream_end(&s);               /* a second end changes nothing */
    CHECK_EQ(ends, 1);
    stream_release(&s);
}

static struct sse_stream *chatty;
static struct frame *tick_event;

static void on_event_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
    stream_send(chatty, tick_event);
}

static void on_stop(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Two streams on the worker's wheel: a silent one hears a heartbeat about
 * every interval and is never silent much longer; one with an event more
 * often than the interval hears none. An empty wheel holds no memory. */
static void heartbeats(void)
{
    setup();
    struct ev_loop *loop = env.loop;
    struct sse_stream silent, busy;
    open_stream(&silent, SLOW_CLOSE);
    open_stream(&busy, SLOW_CLOSE);
    watched[0] = &silent;
    watched[1] = &busy;
    nflush[0] = nflush[1] = 0;
    chatty = &busy;
    tick_event = frame_copy("data: x\n\n", 9);
    CHECK(tick_event != NULL);
    struct frame *first = frame_copy(":ok\n\n", 5);
    ev_now_update(loop);
    ev_tstamp t0 = ev_now(loop);
    stream_start(&silent, first, 0.25);
    stream_start(&busy, first, 0.25);
    frame_unref(first);
    CHECK(env.heartbeats.slots != NULL);
    CHECK_EQ(env.heartbeats.count, 2);
    ev_timer events, stop;
    ev_timer_init(&events, on_event_tick, 0.1, 0.1);
    ev_timer_init(&stop, on_stop, 1.3, 0);
    ev_timer_start(loop, &events);
    ev_timer_start(loop, &stop);
    ev_run(loop, 0);
    ev_timer_stop(loop, &events);
    ev_tstamp end = ev_now(loop);

    /* silent: a heartbeat about every 0.25 s (never late; early by less
     * than a tick), the first one counted from the open */
    CHECK(nflush[0] >= 4 && nflush[0] <= 8);
    ev_tstamp from = t0, longest = 0;
    for (int i = 1; i < nflush[0]; i++) {   /* [0]: the opening comment */
        longest = flush_at[0][i] - from > longest ? flush_at[0][i] - from : longest;
        from = flush_at[0][i];
    }
    longest = end - from > longest ? end - from : longest;
    CHECK(longest <= 0.25 + 0.2);
    /* busy: its events alone (the opening comment, then one each 0.1 s) */
    CHECK(nflush[1] >= 5);
    CHECK(nflush[1] <= 1 + (int)((end - t0) / 0.1) + 1);

    stream_end(&busy);
    CHECK_EQ(env.heartbeats.count, 1);
    stream_release(&busy);
    stream_release(&silent);
    CHECK_EQ(env.heartbeats.count, 0);
    CHECK(env.heartbeats.slots == NULL);
    CHECK(!ev_is_active(&env.heartbeats.timer));
    frame_unref(tick_event);
    watched[0] = watched[1] = NULL;
}

int main(void)
{
    RUN(gap_notice_names_channels);
    RUN(slow_close_is_not_reached);
    RUN(replay_credit);
    RUN(end_and_goodbye);
    RUN(heartbeats);
    return CHECK_SUMMARY("stream_test");
}
