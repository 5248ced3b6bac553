/* Checks of the stream parser (every split of a tricky response must give
 * the same events) and of the histogram. Run by `make -C bench check`. */
#include "hist.h"
#include "stream_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                         \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #cond);                           \
			failures++;                                         \
		}                                                           \
	} while (0)

struct seen {
	int status;
	int sse;
	int chunked;
	int events;
	int comments;
	size_t body;
	char log[2048];
	size_t log_len;
};

static void logf_(struct seen *s, const char *text, size_t n)
{
	if (s->log_len + n + 2 < sizeof s->log) {
		memcpy(s->log + s->log_len, text, n);
		s->log_len += n;
		s->log[s->log_len++] = '|';
		s->log[s->log_len] = 0;
	}
}

static int cb_head(void *ctx, const struct sp_head *h)
{
	struct seen *s = ctx;
	s->status = h->status;
	s->sse = h->is_event_stream;
	s->chunked = h->chunked;
	return 0;
}

static int cb_body(void *ctx, size_t n)
{
	((struct seen *)ctx)->body += n;
	return 0;
}

static int cb_event(void *ctx, const struct sp_event *ev)
{
	struct seen *s = ctx;
	char tmp[512];
	int n = snprintf(tmp, sizeof tmp, "id=%.*s data=%.*s", ev->has_id ? (int)ev->id_len : 1,
			 ev->has_id ? ev->id : "-", (int)ev->data_len, ev->data);
	logf_(s, tmp, (size_t)n);
	s->events++;
	return 0;
}

static int cb_comment(void *ctx, const char *t, size_t n)
{
	(void)t;
	(void)n;
	((struct seen *)ctx)->comments++;
	return 0;
}

static const struct sp_callbacks cbs = { cb_head, cb_body, cb_event, cb_comment };

/* SSE body: retry line, comment, two events in one chunk, an event split
 * mid-line across chunks, CRLF line ends, multi-line data, a heartbeat. */
static const char *const body_parts[] = {
	"retry: 3000\n\n",
	": hello\n\nid: 1\ndata: {\"seq\":0,\"ts\":5}\n\nid: 2\ndata: {\"seq\":1,\"ts\":6}\n\n",
	"id: 3\nda",
	"ta: {\"seq\":2,\"ts\":7}\n",
	"\n",
	"id: 4\r\ndata: a\r\ndata: b\r\n\r\n",
	":\n\n",
	"data: 9 11\n\n",
};

static size_t build_response(char *out, size_t cap)
{
	size_t n = (size_t)snprintf(out, cap,
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
		"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n");
	for (size_t i = 0; i < sizeof body_parts / sizeof body_parts[0]; i++) {
		size_t L = strlen(body_parts[i]);
		/* odd casing and an extension, both legal */
		n += (size_t)snprintf(out + n, cap - n, i == 2 ? "%zX;ext=1\r\n%s\r\n" : "%zx\r\n%s\r\n",
				      L, body_parts[i]);
	}
	n += (size_t)snprintf(out + n, cap - n, "0\r\n\r\n");
	return n;
}

static const char expected_log[] =
	"id=1 data={\"seq\":0,\"ts\":5}|id=2 data={\"seq\":1,\"ts\":6}|"
	"id=3 data={\"seq\":2,\"ts\":7}|id=4 data=a\nb|id=- data=9 11|";

static void feed_in_pieces(const char *resp, size_t n, size_t piece, unsigned seed)
{
	struct stream_parser p;
	struct seen s;
	sp_init(&p);
	memset(&s, 0, sizeof s);
	enum sp_result r = SP_MORE;
	for (size_t off = 0; off < n && r == SP_MORE;) {
		size_t k = piece;
		if (piece == 0) {	/* random piece sizes */
			seed = seed * 1103515245u + 12345u;
			k = 1 + (seed >> 16) % 17;
		}
		if (k > n - off)
			k = n - off;
		r = sp_feed(&p, resp + off, k, &cbs, &s);
		off += k;
	}
	CHECK(r == SP_END);
	CHECK(s.status == 200 && s.sse && s.chunked);
	CHECK(s.events == 5);
	CHECK(s.comments == 2);
	if (strcmp(s.log, expected_log) != 0) {
		fprintf(stderr, "piece %zu: got %s\n", piece, s.log);
		failures++;
	}
}

static void test_parser(void)
{
	char resp[4096];
	size_t n = build_response(resp, sizeof resp);
	for (size_t piece = 1; piece <= n; piece++)
		feed_in_pieces(resp, n, piece, 0);
	for (unsigned seed = 1; seed < 200; seed++)
		feed_in_pieces(resp, n, 0, seed);
}

static void test_reject_and_errors(void)
{
	struct stream_parser p;
	struct seen s;
	const char r401[] = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
	sp_init(&p);
	memset(&s, 0, sizeof s);
	CHECK(sp_feed(&p, r401, sizeof r401 - 1, &cbs, &s) == SP_MORE);
	CHECK(s.status == 401 && !s.sse);

	const char bad[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
	sp_init(&p);
	memset(&s, 0, sizeof s);
	CHECK(sp_feed(&p, bad, sizeof bad - 1, &cbs, &s) == SP_ERROR);

	const char nocrlf[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX";
	sp_init(&p);
	memset(&s, 0, sizeof s);
	CHECK(sp_feed(&p, nocrlf, sizeof nocrlf - 1, &cbs, &s) == SP_ERROR);

	/* close-delimited body (no chunking) still yields events */
	const char ident[] = "HTTP/1.0 200 OK\nContent-Type: text/event-stream\n\ndata: 1 2\n\n";
	sp_init(&p);
	memset(&s, 0, sizeof s);
	CHECK(sp_feed(&p, ident, sizeof ident - 1, &cbs, &s) == SP_MORE);
	CHECK(s.events == 1 && !s.chunked);
}

static void test_payload(void)
{
	uint64_t seq, ts;
	const char j[] = "{\"seq\":17,\"ts\":123456789,\"pad\":\"xx\"}";
	CHECK(sp_parse_payload(j, sizeof j - 1, &seq, &ts) == 0 && seq == 17 && ts == 123456789);
	CHECK(sp_parse_payload("17 99", 5, &seq, &ts) == 0 && seq == 17 && ts == 99);
	CHECK(sp_parse_payload("{\"seq\":1}", 9, &seq, &ts) != 0);
	CHECK(sp_parse_payload("hello", 5, &seq, &ts) != 0);
	const char reordered[] = "{\"user\":\"0f3a\",\"ts\":42,\"card\":\"[redacted]\",\"seq\":3}";
	CHECK(sp_parse_payload(reordered, sizeof reordered - 1, &seq, &ts) == 0 && seq == 3 &&
	      ts == 42);
	const char spaced[] = " { \"ts\" : 1e2 , \"seq\" : 5.0 } ";
	CHECK(sp_parse_payload(spaced, sizeof spaced - 1, &seq, &ts) == 0 && seq == 5 && ts == 100);
	const char neg[] = "{\"seq\":-1,\"ts\":2}";
	CHECK(sp_parse_payload(neg, sizeof neg - 1, &seq, &ts) != 0);
	const char frac[] = "{\"seq\":1.5,\"ts\":2}";
	CHECK(sp_parse_payload(frac, sizeof frac - 1, &seq, &ts) != 0);
	const char nested[] = "{\"x\":{\"seq\":1,\"ts\":1},\"y\":[\"seq\",\"ts\"]}";
	CHECK(sp_parse_payload(nested, sizeof nested - 1, &seq, &ts) != 0);
	const char esc[] = "{\"s\\u0065q\":1,\"seq\":2,\"ts\":3,\"k\":\"a\\\\\"}";
	CHECK(sp_parse_payload(esc, sizeof esc - 1, &seq, &ts) == 0 && seq == 2 && ts == 3);
	const char big[] = "{\"seq\":18446744073709551615,\"ts\":18446744073709551616}";
	CHECK(sp_parse_payload(big, sizeof big - 1, &seq, &ts) != 0);
	CHECK(sp_parse_payload("[1,2]", 5, &seq, &ts) != 0);
	CHECK(sp_parse_payload("17  99 trailing", 15, &seq, &ts) == 0 && seq == 17 && ts == 99);
	CHECK(sp_parse_payload("17x99", 5, &seq, &ts) != 0);

	struct sp_head h;
	size_t hl;
	const char r[] = "HTTP/1.1 202 Accepted\r\nContent-Length: 31\r\n\r\n{\"id\":\"1\"";
	CHECK(sp_parse_response_head(r, sizeof r - 1, &h, &hl) == 1);
	CHECK(h.status == 202 && h.content_length == 31 && hl == sizeof r - 1 - 9);
	CHECK(sp_parse_response_head(r, 20, &h, &hl) == 0);
}

/* Payloads as masked views re-encode them: keys in any order, long
 * fields before seq/ts, decoys in strings and nested values; lines far
 * longer than any buffer; every split. */
struct payloads {
	char log[1024];
	size_t log_len;
	int events;
	int comments;
	size_t comment_len;
};

static int pl_event(void *ctx, const struct sp_event *ev)
{
	struct payloads *s = ctx;
	char tmp[64];
	int n = ev->payload_ok ? snprintf(tmp, sizeof tmp, "%llu/%llu|", (unsigned long long)ev->seq,
					  (unsigned long long)ev->ts)
			       : snprintf(tmp, sizeof tmp, "bad|");
	if (s->log_len + (size_t)n + 1 < sizeof s->log) {
		memcpy(s->log + s->log_len, tmp, (size_t)n + 1);
		s->log_len += (size_t)n;
	}
	s->events++;
	return 0;
}

static int pl_comment(void *ctx, const char *t, size_t n)
{
	struct payloads *s = ctx;
	(void)t;
	s->comments++;
	s->comment_len += n;
	return 0;
}

static const struct sp_callbacks pl_cbs = { NULL, NULL, pl_event, pl_comment };

static void test_payload_stream(void)
{
	static char body[16384], resp[20000];
	size_t b = 0;
	char pad[1201];
	memset(pad, 'x', sizeof pad - 1);
	pad[sizeof pad - 1] = 0;
	b += (size_t)snprintf(body + b, sizeof body - b,
		"data: {\"pad\":\"%s\",\"ts\":123,\"seq\":7}\n\n", pad);
	b += (size_t)snprintf(body + b, sizeof body - b,
		"data: {\"user\":\"[redacted]\",\"note\":\"\\\"seq\\\":9,\\\"ts\\\":1\","
		"\"a\":{\"seq\":1,\"ts\":2},\"b\":[{\"seq\":3}],\"ts\":5,\"seq\":8}\r\n\r\n");
	b += (size_t)snprintf(body + b, sizeof body - b, "data:{ \"seq\" : 4 , \"ts\" : 1.5e3 }\n\n");
	b += (size_t)snprintf(body + b, sizeof body - b, "data: {\"seq\":2,\ndata: \"ts\":6}\n\n");
	b += (size_t)snprintf(body + b, sizeof body - b, ": %s\n", pad);	/* long comment */
	b += (size_t)snprintf(body + b, sizeof body - b, "data: 9 11\n\n");
	b += (size_t)snprintf(body + b, sizeof body - b, "data: {\"seq\":\"1\",\"ts\":2}\n\n");
	b += (size_t)snprintf(body + b, sizeof body - b, "data: {\"seq\":1}\n\n");
	b += (size_t)snprintf(body + b, sizeof body - b, "data\n\n");
	b += (size_t)snprintf(body + b, sizeof body - b, "event: x\nid: 5\ndata: {\"a\":\"%s\",\"seq\":3,"
			      "\"ts\":4,\"seq\":99}\n\n", pad);
	size_t n = (size_t)snprintf(resp, sizeof resp,
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n%s", body);
	CHECK(n < sizeof resp);
	const char *want = "7/123|8/5|4/1500|2/6|9/11|bad|bad|bad|3/4|";
	for (size_t piece = 1; piece <= n; piece += piece < 64 ? 1 : 97) {
		struct stream_parser p;
		struct payloads s;
		sp_init(&p);
		memset(&s, 0, sizeof s);
		for (size_t off = 0; off < n; off += piece)
			CHECK(sp_feed(&p, resp + off, off + piece <= n ? piece : n - off, &pl_cbs, &s) ==
			      SP_MORE);
		if (strcmp(s.log, want) != 0) {
			fprintf(stderr, "payload stream, piece %zu: got %s\n", piece, s.log);
			failures++;
		}
		CHECK(s.comments == 1 && s.comment_len == SP_LINE_MAX);
	}
}

static void test_hist(void)
{
	static struct hist h;
	hist_init(&h);
	CHECK(hist_quantile(&h, 0.5) == 0);
	for (uint64_t v = 1; v <= 100000; v++)
		hist_add(&h, v * 1000);	/* 1 us .. 100 ms */
	uint64_t p50 = hist_quantile(&h, 0.50), p99 = hist_quantile(&h, 0.99);
	CHECK(p50 >= 50000000 && p50 <= 50000000 + 50000000 / 60);
	CHECK(p99 >= 99000000 && p99 <= 99000000 + 99000000 / 60);
	CHECK(hist_quantile(&h, 1.0) == 100000000 && h.min == 1000);
	hist_init(&h);
	for (uint64_t v = 0; v < 100; v++)
		hist_add(&h, v);	/* small values are exact */
	CHECK(hist_quantile(&h, 0.5) == 49);
	hist_add(&h, UINT64_MAX);
	CHECK(hist_quantile(&h, 1.0) == UINT64_MAX);
}

int main(void)
{
	test_parser();
	test_reject_and_errors();
	test_payload();
	test_payload_stream();
	test_hist();
	if (failures) {
		fprintf(stderr, "test_parse: %d failure(s)\n", failures);
		return 1;
	}
	printf("test_parse: all checks passed\n");
	return 0;
}
