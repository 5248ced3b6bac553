/* Incremental parser for one HTTP/1.1 SSE response: status line and
 * headers, then the chunked (or close-delimited) body, then SSE lines.
 * Pure: no I/O, no clock, so it can be fed arbitrary splits in tests. */
#ifndef BENCH_STREAM_PARSE_H
#define BENCH_STREAM_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Buffers are per connection (10k of them), so keep them small: the head
 * of an SSE response is a few hundred bytes and bench payloads start with
 * seq and ts, so a truncated data field still carries what we need. */
#define SP_HEAD_MAX 1024
#define SP_LINE_MAX 256
#define SP_DATA_MAX 160
#define SP_ID_MAX 48

struct sp_head {
	int status;		/* e.g. 200, 401 */
	int is_event_stream;	/* Content-Type: text/event-stream */
	int chunked;		/* Transfer-Encoding: chunked */
	long long content_length; /* -1 if absent */
};

struct sp_event {
	const char *data;	/* data field(s), joined by '\n' */
	size_t data_len;
	int data_truncated;	/* data longer than SP_DATA_MAX */
	const char *id;		/* id field of this event block, if any */
	size_t id_len;
	int has_id;
};

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
	uint8_t line_overflow;
	uint8_t data_truncated;
	uint8_t has_data;
	uint8_t has_id;
	uint8_t size_digits;
	uint8_t bom_checked;
	uint16_t head_len;
	uint16_t line_len;
	uint16_t data_len;
	uint16_t id_len;
	uint64_t chunk_left;
	const char *error;
	char buf[SP_HEAD_MAX];	/* head while in RS_HEAD, then one SSE line */
	char data[SP_DATA_MAX];
	char id[SP_ID_MAX];
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

/* Bench payload: {"seq":N,"ts":T,...} (or the bare form "N T").
 * Returns 0 and fills seq/ts on success, -1 if either is missing. */
int sp_parse_payload(const char *data, size_t len, uint64_t *seq, uint64_t *ts);

#endif
