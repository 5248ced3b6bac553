/* Incremental parser for one HTTP/1.1 SSE response: status line and
 * headers, then the chunked (or close-delimited) body, then SSE lines.
 * Pure: no I/O, no clock, so it can be fed arbitrary splits in tests. */
#ifndef BENCH_STREAM_PARSE_H
#define BENCH_STREAM_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Buffers are per connection (10k of them), so keep them small: the head
 * of an SSE response is a few hundred bytes. SSE lines are parsed as they
 * stream in, never buffered whole, so a data line may be of any length:
 * seq and ts are picked out of it by an incremental scanner (struct
 * sp_scan) wherever they sit, and only the first SP_DATA_MAX bytes of the
 * data are kept for the callback. Comments are cut at SP_LINE_MAX. */
#define SP_HEAD_MAX 1024
#define SP_LINE_MAX 256
#define SP_DATA_MAX 160
#define SP_ID_MAX 48
#define SP_NUM_MAX 32

struct sp_head {
	int status;		/* e.g. 200, 401 */
	int is_event_stream;	/* Content-Type: text/event-stream */
	int chunked;		/* Transfer-Encoding: chunked */
	long long content_length; /* -1 if absent */
};

struct sp_event {
	const char *data;	/* data field(s), joined by '\n' (first SP_DATA_MAX bytes) */
	size_t data_len;
	int data_truncated;	/* data longer than SP_DATA_MAX */
	const char *id;		/* id field of this event block, if any */
	size_t id_len;
	int has_id;
	int payload_ok;		/* the whole data had a bench payload: seq and ts */
	uint64_t seq;
	uint64_t ts;
};

/* Incremental scanner for a bench payload, fed the event data byte by
 * byte (any length, any split). Accepts
 *   - a JSON object with members "seq" and "ts" (non-negative integers;
 *     1e3 or 5.0 style numbers are fine when integral) anywhere at its top
 *     level, in any order, among any other members; keys inside nested
 *     values and inside strings do not count; the first "seq"/"ts" wins;
 *   - the bare form "SEQ TS" (decimal, separated by spaces).
 * Masked views re-encode the JSON, so key order and spacing may change. */
struct sp_scan {
	uint8_t state;
	uint8_t depth;		/* object/array nesting, saturating */
	uint8_t in_string;
	uint8_t escape;
	uint8_t expect_key;	/* next string at depth 1 is a member name */
	uint8_t is_key;		/* the current string is a depth-1 member name */
	uint8_t key_len;	/* bytes of the member name, saturating */
	uint8_t after_key;	/* 1 = "seq", 2 = "ts" just ended, ':' next */
	uint8_t target;		/* the number being read: 1 seq, 2 ts */
	uint8_t num_len;
	uint8_t have;		/* bit 0: seq found, bit 1: ts found */
	uint8_t bare_field;	/* bare form: 0 = seq, 1 = ts */
	uint8_t bad;		/* bare form or a number was malformed */
	char key[4];
	char num[SP_NUM_MAX];
	uint64_t seq;
	uint64_t ts;
};

void sp_scan_init(struct sp_scan *sc);
void sp_scan_feed(struct sp_scan *sc, const char *s, size_t n);
/* Ends the input; 0 and seq/ts filled if both were found, else -1. */
int sp_scan_finish(struct sp_scan *sc, uint64_t *seq, uint64_t *ts);

/* Callbacks return 0 to continue, non-zero to stop parsing (sp_feed then
 * returns SP_STOPPED and the caller is expected to drop the connection). */
struct sp_callbacks {
	int (*on_head)(void *ctx, const struct sp_head *head);
	int (*on_body)(void *ctx, size_t decoded_bytes);
	int (*on_event)(void *ctx, const struct sp_event *ev);
	int (*on_comment)(void *ctx, const char *text, size_t len);
};

enum sp_result {
	SP_MORE = 0,	/* consumed everything, wants more input */
	SP_END,		/* terminating chunk seen: stream ended cleanly */
	SP_STOPPED,	/* a callback asked to stop */
	SP_ERROR,	/* malformed input; sp_error() says why */
};

struct stream_parser {
	uint8_t state;
	uint8_t prev_cr;	/* SSE: last byte was '\r' (CRLF is one break) */
	uint8_t line_state;	/* SSE line: field name, value start, value */
	uint8_t field;		/* SSE line: which field the value belongs to */
	uint8_t name_len;	/* field name bytes seen, saturating */
	uint8_t data_truncated;
	uint8_t has_data;
	uint8_t has_id;
	uint8_t size_digits;
	uint8_t bom_checked;
	uint16_t head_len;
	uint16_t line_len;	/* comment text kept in buf */
	uint16_t data_len;
	uint16_t id_len;
	uint64_t chunk_left;
	const char *error;
	char name[8];
	char buf[SP_HEAD_MAX];	/* head while in RS_HEAD, then comment text */
	char data[SP_DATA_MAX];
	char id[SP_ID_MAX];
	struct sp_scan scan;	/* seq/ts of the data of the current event */
};

void sp_init(struct stream_parser *p);
enum sp_result sp_feed(struct stream_parser *p, const char *in, size_t n,
		       const struct sp_callbacks *cb, void *ctx);
const char *sp_error(const struct stream_parser *p);

/* Parses a whole response head at the start of buf, for plain (non-stream)
 * responses. 1 = complete (*head_len = bytes incl. the blank line),
 * 0 = incomplete, -1 = malformed. */
int sp_parse_response_head(const char *buf, size_t len, struct sp_head *h,
			   size_t *head_len);

/* Bench payload: {"seq":N,"ts":T,...} in any key order (or the bare form
 * "N T"), see struct sp_scan. Returns 0 and fills seq/ts on success, -1 if
 * either is missing. */
int sp_parse_payload(const char *data, size_t len, uint64_t *seq, uint64_t *ts);

#endif
