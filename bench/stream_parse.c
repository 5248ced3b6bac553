#include "stream_parse.h"

#include <string.h>

enum {
	RS_HEAD,
	RS_CHUNK_SIZE,		/* hex digits of a chunk-size line */
	RS_CHUNK_EXT,		/* ";ext" after the size: skipped to LF */
	RS_CHUNK_DATA,
	RS_CHUNK_DATA_CR,	/* CRLF after chunk data */
	RS_CHUNK_DATA_LF,
	RS_TRAILER,		/* after the 0 chunk: lines until an empty one */
	RS_IDENTITY,		/* no chunking: body runs until close */
	RS_DONE,
	RS_FAILED,
};

void sp_init(struct stream_parser *p)
{
	memset(p, 0, sizeof *p);
	p->state = RS_HEAD;
}

const char *sp_error(const struct stream_parser *p)
{
	return p->error ? p->error : "no error";
}

static enum sp_result fail(struct stream_parser *p, const char *why)
{
	p->error = why;
	p->state = RS_FAILED;
	return SP_ERROR;
}

static int lower(int c)
{
	return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive: does [s, s+n) start with the lowercase literal lit? */
static int starts_with_ci(const char *s, size_t n, const char *lit)
{
	size_t k = strlen(lit);
	if (n < k)
		return 0;
	for (size_t i = 0; i < k; i++)
		if (lower((unsigned char)s[i]) != lit[i])
			return 0;
	return 1;
}

/* Case-insensitive substring search for a lowercase literal. */
static int contains_ci(const char *s, size_t n, const char *lit)
{
	size_t k = strlen(lit);
	for (size_t i = 0; i + k <= n; i++)
		if (starts_with_ci(s + i, n - i, lit))
			return 1;
	return 0;
}

static const char *skip_ws(const char *s, const char *end)
{
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	return s;
}

/* Parses a complete head in buf[0..len). */
static int parse_head(const char *buf, size_t len, struct sp_head *h)
{
	const char *s = buf, *end = buf + len;
	memset(h, 0, sizeof *h);
	h->content_length = -1;

	const char *eol = memchr(s, '\n', len);
	if (!eol || !starts_with_ci(s, (size_t)(eol - s), "http/1."))
		return -1;
	const char *c = memchr(s, ' ', (size_t)(eol - s));
	if (!c || eol - c < 4)
		return -1;
	int status = 0;
	for (int i = 1; i <= 3; i++) {
		if (c[i] < '0' || c[i] > '9')
			return -1;
		status = status * 10 + (c[i] - '0');
	}
	h->status = status;

	for (s = eol + 1; s < end; s = eol + 1) {
		eol = memchr(s, '\n', (size_t)(end - s));
		if (!eol)
			break;
		size_t n = (size_t)(eol - s);
		const char *colon = memchr(s, ':', n);
		if (!colon)
			continue;	/* the blank line or junk: ignore */
		const char *v = skip_ws(colon + 1, eol);
		size_t vn = (size_t)(eol - v);
		size_t name_len = (size_t)(colon - s);
		if (name_len == 12 && starts_with_ci(s, n, "content-type")) {
			h->is_event_stream = starts_with_ci(v, vn, "text/event-stream");
		} else if (name_len == 17 && starts_with_ci(s, n, "transfer-encoding")) {
			h->chunked = contains_ci(v, vn, "chunked");
		} else if (name_len == 14 && starts_with_ci(s, n, "content-length")) {
			long long cl = 0;
			const char *d = v;
			for (; d < eol && *d >= '0' && *d <= '9'; d++) {
				if (cl > (1LL << 50))
					return -1;
				cl = cl * 10 + (*d - '0');
			}
			if (d == v)
				return -1;
			h->content_length = cl;
		}
	}
	return 0;
}

static int field_is(const char *name, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(name, lit, n) == 0;
}

/* One complete SSE line (without its terminator). */
static enum sp_result sse_line(struct stream_parser *p, const struct sp_callbacks *cb,
			       void *ctx)
{
	const char *line = p->buf;
	size_t n = p->line_len;

	if (n == 0) {
		/* blank line: dispatch the event block, if it had data */
		int stop = 0;
		if (p->has_data && cb->on_event) {
			struct sp_event ev = {
				.data = p->data, .data_len = p->data_len,
				.data_truncated = p->data_truncated,
				.id = p->id, .id_len = p->id_len, .has_id = p->has_id,
			};
			stop = cb->on_event(ctx, &ev);
		}
		p->has_data = 0;
		p->data_len = 0;
		p->data_truncated = 0;
		p->has_id = 0;
		p->id_len = 0;
		return stop ? SP_STOPPED : SP_MORE;
	}
	if (line[0] == ':') {
		if (cb->on_comment && cb->on_comment(ctx, line + 1, n - 1))
			return SP_STOPPED;
		return SP_MORE;
	}
	const char *colon = memchr(line, ':', n);
	size_t name_len = colon ? (size_t)(colon - line) : n;
	const char *v = colon ? colon + 1 : line + n;
	if (v < line + n && *v == ' ')
		v++;	/* the spec strips exactly one leading space */
	size_t vn = (size_t)(line + n - v);

	if (field_is(line, name_len, "data")) {
		if (p->has_data && !p->data_truncated) {
			if (p->data_len < SP_DATA_MAX)
				p->data[p->data_len++] = '\n';
			else
				p->data_truncated = 1;
		}
		size_t room = SP_DATA_MAX - p->data_len;
		size_t take = vn < room ? vn : room;
		memcpy(p->data + p->data_len, v, take);
		p->data_len = (uint16_t)(p->data_len + take);
		if (take < vn)
			p->data_truncated = 1;
		p->has_data = 1;
	} else if (field_is(line, name_len, "id")) {
		size_t take = vn < SP_ID_MAX ? vn : SP_ID_MAX;
		memcpy(p->id, v, take);
		p->id_len = (uint16_t)take;
		p->has_id = 1;
	}
	/* event:, retry: and unknown fields do not matter to the bench */
	return SP_MORE;
}

/* Decoded body bytes: split into SSE lines (LF, CRLF or CR end a line). */
static enum sp_result sse_bytes(struct stream_parser *p, const char *s, size_t n,
				const struct sp_callbacks *cb, void *ctx)
{
	if (cb->on_body && n > 0 && cb->on_body(ctx, n))
		return SP_STOPPED;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!p->bom_checked) {
			/* a UTF-8 BOM may open the stream; skip it whole */
			if (c == 0xEF || c == 0xBB || c == 0xBF)
				continue;
			p->bom_checked = 1;
		}
		if (c == '\n' && p->prev_cr) {
			p->prev_cr = 0;
			continue;
		}
		p->prev_cr = 0;
		if (c == '\r' || c == '\n') {
			p->prev_cr = (c == '\r');
			/* an overlong line is not one the bench sent: drop it */
			enum sp_result r = p->line_overflow ? SP_MORE : sse_line(p, cb, ctx);
			p->line_len = 0;
			p->line_overflow = 0;
			if (r != SP_MORE)
				return r;
			continue;
		}
		if (p->line_len < SP_LINE_MAX)
			p->buf[p->line_len++] = (char)c;
		else
			p->line_overflow = 1;
	}
	return SP_MORE;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Consumes the head; returns how many bytes of in[] it used, or -1. */
static long feed_head(struct stream_parser *p, const char *in, size_t n,
		      const struct sp_callbacks *cb, void *ctx, enum sp_result *r)
{
	for (size_t i = 0; i < n; i++) {
		if (p->head_len >= SP_HEAD_MAX) {
			*r = fail(p, "response head too long");
			return -1;
		}
		p->buf[p->head_len++] = in[i];
		size_t L = p->head_len;
		int done = (L >= 2 && p->buf[L - 1] == '\n' && p->buf[L - 2] == '\n') ||
			   (L >= 4 && memcmp(p->buf + L - 4, "\r\n\r\n", 4) == 0);
		if (!done)
			continue;
		struct sp_head h;
		if (parse_head(p->buf, L, &h) != 0) {
			*r = fail(p, "malformed response head");
			return -1;
		}
		p->state = h.chunked ? RS_CHUNK_SIZE : RS_IDENTITY;
		p->line_len = 0;	/* buf now holds SSE lines */
		if (cb->on_head && cb->on_head(ctx, &h)) {
			*r = SP_STOPPED;
			return -1;
		}
		return (long)(i + 1);
	}
	return (long)n;
}

enum sp_result sp_feed(struct stream_parser *p, const char *in, size_t n,
		       const struct sp_callbacks *cb, void *ctx)
{
	size_t i = 0;
	enum sp_result r = SP_MORE;

	while (i < n) {
		switch (p->state) {
		case RS_HEAD: {
			long used = feed_head(p, in + i, n - i, cb, ctx, &r);
			if (used < 0)
				return r;
			i += (size_t)used;
			break;
		}
		case RS_CHUNK_SIZE: {
			int c = (unsigned char)in[i++];
			int v = hexval(c);
			if (v >= 0) {
				if (p->chunk_left > (1ULL << 40))
					return fail(p, "chunk size too large");
				p->chunk_left = p->chunk_left * 16 + (uint64_t)v;
				p->size_digits = 1;
			} else if (c == ';' || c == ' ' || c == '\t') {
				p->state = RS_CHUNK_EXT;
			} else if (c == '\r') {
				p->state = RS_CHUNK_EXT;	/* wait for the LF */
			} else if (c == '\n') {
				goto size_line_done;
			} else {
				return fail(p, "bad chunk size");
			}
			break;
		}
		case RS_CHUNK_EXT: {
			const char *lf = memchr(in + i, '\n', n - i);
			if (!lf) {
				i = n;
				break;
			}
			i = (size_t)(lf - in) + 1;
			goto size_line_done;
		}
		case RS_CHUNK_DATA: {
			size_t avail = n - i;
			size_t take = p->chunk_left < avail ? (size_t)p->chunk_left : avail;
			r = sse_bytes(p, in + i, take, cb, ctx);
			i += take;
			p->chunk_left -= take;
			if (p->chunk_left == 0)
				p->state = RS_CHUNK_DATA_CR;
			if (r != SP_MORE)
				return r;
			break;
		}
		case RS_CHUNK_DATA_CR: {
			char c = in[i++];
			if (c == '\r')
				p->state = RS_CHUNK_DATA_LF;
			else if (c == '\n')
				p->state = RS_CHUNK_SIZE;	/* bare LF: tolerate */
			else
				return fail(p, "missing CRLF after chunk data");
			break;
		}
		case RS_CHUNK_DATA_LF:
			if (in[i++] != '\n')
				return fail(p, "missing LF after chunk data");
			p->state = RS_CHUNK_SIZE;
			break;
		case RS_TRAILER: {
			char c = in[i++];
			if (c == '\n') {
				if (p->line_len == 0) {
					p->state = RS_DONE;
					return SP_END;
				}
				p->line_len = 0;
			} else if (c != '\r') {
				p->line_len = 1;	/* a trailer field: not empty */
			}
			break;
		}
		case RS_IDENTITY:
			r = sse_bytes(p, in + i, n - i, cb, ctx);
			i = n;
			if (r != SP_MORE)
				return r;
			break;
		case RS_DONE:
			return fail(p, "bytes after the terminating chunk");
		default:
			return SP_ERROR;
		}
		continue;

size_line_done:
		if (!p->size_digits)
			return fail(p, "empty chunk size");
		p->size_digits = 0;
		if (p->chunk_left == 0) {
			p->state = RS_TRAILER;
			p->line_len = 0;
		} else {
			p->state = RS_CHUNK_DATA;
		}
	}
	return p->state == RS_DONE ? SP_END : SP_MORE;
}

int sp_parse_response_head(const char *buf, size_t len, struct sp_head *h,
			   size_t *head_len)
{
	for (size_t i = 0; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		size_t end = 0;
		if (i >= 1 && buf[i - 1] == '\n')
			end = i + 1;
		else if (i >= 3 && memcmp(buf + i - 3, "\r\n\r\n", 4) == 0)
			end = i + 1;
		if (end == 0)
			continue;
		if (parse_head(buf, end, h) != 0)
			return -1;
		*head_len = end;
		return 1;
	}
	return 0;
}

static int find_number(const char *s, size_t n, const char *key, uint64_t *out)
{
	size_t k = strlen(key);
	for (size_t i = 0; i + k <= n; i++) {
		if (memcmp(s + i, key, k) != 0)
			continue;
		size_t j = i + k;
		while (j < n && (s[j] == ' ' || s[j] == ':'))
			j++;
		uint64_t v = 0;
		size_t start = j;
		for (; j < n && s[j] >= '0' && s[j] <= '9'; j++) {
			if (v > UINT64_MAX / 10 - 9)
				return -1;
			v = v * 10 + (uint64_t)(s[j] - '0');
		}
		if (j == start)
			return -1;
		*out = v;
		return 0;
	}
	return -1;
}

int sp_parse_payload(const char *data, size_t len, uint64_t *seq, uint64_t *ts)
{
	if (len > 0 && data[0] == '{')
		return (find_number(data, len, "\"seq\"", seq) == 0 &&
			find_number(data, len, "\"ts\"", ts) == 0) ? 0 : -1;
	/* bare form: "SEQ TS" */
	uint64_t v[2] = { 0, 0 };
	size_t j = 0;
	for (int f = 0; f < 2; f++) {
		while (j < len && data[j] == ' ')
			j++;
		size_t start = j;
		for (; j < len && data[j] >= '0' && data[j] <= '9'; j++) {
			if (v[f] > UINT64_MAX / 10 - 9)
				return -1;
			v[f] = v[f] * 10 + (uint64_t)(data[j] - '0');
		}
		if (j == start)
			return -1;
	}
	*seq = v[0];
	*ts = v[1];
	return 0;
}
