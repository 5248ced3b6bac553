#include "stream_parse.h"

#include <stdlib.h>
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
	sp_scan_init(&p->scan);
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

/* ---- SSE lines, parsed as they stream in ---------------------------------
 * A line is a field name, ':', an optional space, then the value. The name
 * is at most a few bytes for the fields we care about; the value goes
 * straight to where it belongs (data buffer + payload scanner, id buffer,
 * comment text), so no line is ever buffered whole and a line of any
 * length is handled. */

enum { LS_NAME, LS_VALUE_START, LS_VALUE };
enum { F_NONE, F_DATA, F_ID, F_COMMENT, F_OTHER };

static int name_is(const struct stream_parser *p, const char *lit)
{
	size_t k = strlen(lit);
	return p->name_len == k && memcmp(p->name, lit, k) == 0;
}

static void data_bytes(struct stream_parser *p, const char *s, size_t n)
{
	sp_scan_feed(&p->scan, s, n);
	if (p->data_truncated)
		return;
	size_t room = SP_DATA_MAX - p->data_len;
	size_t take = n < room ? n : room;
	memcpy(p->data + p->data_len, s, take);
	p->data_len = (uint16_t)(p->data_len + take);
	if (take < n)
		p->data_truncated = 1;
}

/* A data field begins: multi-line data is joined with '\n'. */
static void data_begin(struct stream_parser *p)
{
	if (p->has_data)
		data_bytes(p, "\n", 1);
	p->has_data = 1;
}

static void field_begin(struct stream_parser *p, int with_colon)
{
	if (with_colon && p->name_len == 0) {
		p->field = F_COMMENT;
		p->line_len = 0;
	} else if (name_is(p, "data")) {
		p->field = F_DATA;
		data_begin(p);
	} else if (name_is(p, "id")) {
		p->field = F_ID;
		p->id_len = 0;
		p->has_id = 1;
	} else {
		p->field = F_OTHER;	/* event:, retry:, unknown: not our business */
	}
}

static enum sp_result dispatch_event(struct stream_parser *p, const struct sp_callbacks *cb,
				     void *ctx)
{
	int stop = 0;
	if (p->has_data && cb->on_event) {
		struct sp_event ev = {
			.data = p->data, .data_len = p->data_len,
			.data_truncated = p->data_truncated,
			.id = p->id, .id_len = p->id_len, .has_id = p->has_id,
		};
		ev.payload_ok = sp_scan_finish(&p->scan, &ev.seq, &ev.ts) == 0;
		stop = cb->on_event(ctx, &ev);
	}
	p->has_data = 0;
	p->data_len = 0;
	p->data_truncated = 0;
	p->has_id = 0;
	p->id_len = 0;
	sp_scan_init(&p->scan);
	return stop ? SP_STOPPED : SP_MORE;
}

static enum sp_result line_end(struct stream_parser *p, const struct sp_callbacks *cb,
			       void *ctx)
{
	enum sp_result r = SP_MORE;
	if (p->line_state == LS_NAME) {
		if (p->name_len == 0)
			r = dispatch_event(p, cb, ctx);	/* blank line */
		else
			field_begin(p, 0);	/* "data" alone: a field with an empty value */
	} else if (p->field == F_COMMENT && cb->on_comment &&
		   cb->on_comment(ctx, p->buf, p->line_len)) {
		r = SP_STOPPED;
	}
	p->line_state = LS_NAME;
	p->field = F_NONE;
	p->name_len = 0;
	p->line_len = 0;
	return r;
}

/* Value bytes of the current line, s[0..n) holding no line break. */
static void value_bytes(struct stream_parser *p, const char *s, size_t n)
{
	switch (p->field) {
	case F_DATA:
		data_bytes(p, s, n);
		break;
	case F_ID: {
		size_t room = SP_ID_MAX - p->id_len;
		size_t take = n < room ? n : room;
		memcpy(p->id + p->id_len, s, take);
		p->id_len = (uint16_t)(p->id_len + take);
		break;
	}
	case F_COMMENT: {
		size_t room = SP_LINE_MAX - p->line_len;
		size_t take = n < room ? n : room;
		memcpy(p->buf + p->line_len, s, take);
		p->line_len = (uint16_t)(p->line_len + take);
		break;
	}
	default:
		break;
	}
}

/* Decoded body bytes: split into SSE lines (LF, CRLF or CR end a line). */
static enum sp_result sse_bytes(struct stream_parser *p, const char *s, size_t n,
				const struct sp_callbacks *cb, void *ctx)
{
	if (cb->on_body && n > 0 && cb->on_body(ctx, n))
		return SP_STOPPED;
	size_t i = 0;
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		if (!p->bom_checked) {
			/* a UTF-8 BOM may open the stream; skip it whole */
			if (c == 0xEF || c == 0xBB || c == 0xBF) {
				i++;
				continue;
			}
			p->bom_checked = 1;
		}
		if (c == '\n' && p->prev_cr) {
			p->prev_cr = 0;
			i++;
			continue;
		}
		p->prev_cr = 0;
		if (c == '\r' || c == '\n') {
			p->prev_cr = (c == '\r');
			i++;
			enum sp_result r = line_end(p, cb, ctx);
			if (r != SP_MORE)
				return r;
			continue;
		}
		if (p->line_state == LS_NAME) {
			i++;
			if (c == ':') {
				field_begin(p, 1);
				/* a comment keeps its text verbatim; fields drop one space */
				p->line_state = p->field == F_COMMENT ? LS_VALUE : LS_VALUE_START;
			} else {
				if (p->name_len < sizeof p->name)
					p->name[p->name_len] = (char)c;
				if (p->name_len < 255)
					p->name_len++;
			}
			continue;
		}
		if (p->line_state == LS_VALUE_START) {
			p->line_state = LS_VALUE;
			if (c == ' ') {	/* the spec strips exactly one leading space */
				i++;
				continue;
			}
		}
		/* the rest of the value up to the next line break, in one go */
		size_t j = i;
		while (j < n && s[j] != '\r' && s[j] != '\n')
			j++;
		value_bytes(p, s + i, j - i);
		i = j;
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

/* ---- bench payload scanner ---------------------------------------------- */

enum { SC_START, SC_JSON, SC_NUM_WAIT, SC_NUM, SC_BARE_NUM, SC_BARE_SPACE, SC_DONE,
       SC_INVALID };

void sp_scan_init(struct sp_scan *sc)
{
	memset(sc, 0, sizeof *sc);
	sc->state = SC_START;
}

static int is_ws(int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* The number text in sc->num as a non-negative integer: plain digits
 * exactly, other JSON number forms (1e3, 5.0) when integral. */
static int scan_number(const struct sp_scan *sc, uint64_t *out)
{
	if (sc->num_len == 0 || sc->num_len >= SP_NUM_MAX)
		return -1;
	uint64_t v = 0;
	size_t i = 0;
	for (; i < sc->num_len && is_digit(sc->num[i]); i++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(sc->num[i] - '0');
	}
	if (i == sc->num_len) {
		*out = v;
		return 0;
	}
	char tmp[SP_NUM_MAX];
	memcpy(tmp, sc->num, sc->num_len);
	tmp[sc->num_len] = 0;
	char *end;
	double d = strtod(tmp, &end);
	if (end != tmp + sc->num_len || !(d >= 0) || d >= 18446744073709551616.0)
		return -1;	/* trailing junk, negative, NaN or too large */
	uint64_t u = (uint64_t)d;
	if ((double)u != d)
		return -1;	/* not an integer */
	*out = u;
	return 0;
}

static void scan_store(struct sp_scan *sc)
{
	uint64_t v;
	if (scan_number(sc, &v) != 0) {
		sc->bad = 1;
		return;
	}
	uint8_t bit = (uint8_t)(sc->target == 1 ? 1 : 2);
	if (sc->have & bit)
		return;	/* the first one wins */
	sc->have |= bit;
	if (sc->target == 1)
		sc->seq = v;
	else
		sc->ts = v;
}

/* One byte of a JSON value outside any number we are reading. */
static void scan_json(struct sp_scan *sc, int c)
{
	if (sc->in_string) {
		if (sc->escape) {
			sc->escape = 0;
			sc->key_len = 255;	/* an escaped name is not one of ours */
		} else if (c == '\\') {
			sc->escape = 1;
		} else if (c == '"') {
			sc->in_string = 0;
			if (sc->is_key) {
				sc->is_key = 0;
				if (sc->key_len == 3 && memcmp(sc->key, "seq", 3) == 0)
					sc->after_key = 1;
				else if (sc->key_len == 2 && memcmp(sc->key, "ts", 2) == 0)
					sc->after_key = 2;
			}
		} else if (sc->is_key) {
			if (sc->key_len < sizeof sc->key)
				sc->key[sc->key_len] = (char)c;
			if (sc->key_len < 255)
				sc->key_len++;
		}
		return;
	}
	if (is_ws(c))
		return;
	uint8_t after_key = sc->after_key;
	sc->after_key = 0;
	switch (c) {
	case '"':
		sc->in_string = 1;
		sc->is_key = sc->depth == 1 && sc->expect_key;
		sc->expect_key = 0;
		sc->key_len = 0;
		break;
	case ':':
		if (after_key) {
			sc->target = after_key;
			sc->state = SC_NUM_WAIT;
		}
		break;
	case ',':
		sc->expect_key = sc->depth == 1;
		break;
	case '{':
	case '[':
		if (sc->depth < 255)
			sc->depth++;
		sc->expect_key = 0;
		break;
	case '}':
	case ']':
		if (sc->depth > 0 && --sc->depth == 0)
			sc->state = SC_DONE;
		break;
	default:
		break;	/* literals and numbers of other members */
	}
}

static void scan_byte(struct sp_scan *sc, int c)
{
	switch (sc->state) {
	case SC_START:
		if (is_ws(c))
			return;
		if (c == '{') {
			sc->state = SC_JSON;
			sc->depth = 1;
			sc->expect_key = 1;
		} else if (is_digit(c)) {
			sc->state = SC_BARE_NUM;
			sc->num[0] = (char)c;
			sc->num_len = 1;
		} else {
			sc->state = SC_INVALID;
		}
		return;
	case SC_JSON:
		scan_json(sc, c);
		return;
	case SC_NUM_WAIT:
		if (is_ws(c))
			return;
		if (is_digit(c) || c == '-') {
			sc->state = SC_NUM;
			sc->num[0] = (char)c;
			sc->num_len = 1;
			return;
		}
		/* not a number ("seq":"7"): leave it unset, keep tokenizing */
		sc->state = SC_JSON;
		scan_json(sc, c);
		return;
	case SC_NUM:
		if (is_digit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
			if (sc->num_len < SP_NUM_MAX - 1)
				sc->num[sc->num_len++] = (char)c;
			else
				sc->bad = 1;	/* no integer we send is that long */
			return;
		}
		scan_store(sc);
		sc->state = SC_JSON;
		scan_json(sc, c);
		return;
	case SC_BARE_NUM:
		if (is_digit(c)) {
			if (sc->num_len < SP_NUM_MAX - 1)
				sc->num[sc->num_len++] = (char)c;
			else
				sc->bad = 1;
			return;
		}
		sc->target = (uint8_t)(sc->bare_field + 1);
		scan_store(sc);
		sc->num_len = 0;
		if (sc->bare_field == 0 && c == ' ') {
			sc->bare_field = 1;
			sc->state = SC_BARE_SPACE;
		} else {
			sc->state = SC_DONE;	/* trailing text is ignored */
		}
		return;
	case SC_BARE_SPACE:
		if (c == ' ')
			return;
		if (is_digit(c)) {
			sc->state = SC_BARE_NUM;
			sc->num[0] = (char)c;
			sc->num_len = 1;
		} else {
			sc->state = SC_INVALID;
		}
		return;
	default:
		return;	/* SC_DONE, SC_INVALID */
	}
}

void sp_scan_feed(struct sp_scan *sc, const char *s, size_t n)
{
	if (sc->state == SC_DONE || sc->state == SC_INVALID)
		return;
	for (size_t i = 0; i < n; i++)
		scan_byte(sc, (unsigned char)s[i]);
}

int sp_scan_finish(struct sp_scan *sc, uint64_t *seq, uint64_t *ts)
{
	if (sc->state == SC_NUM)
		scan_store(sc);	/* the data ended inside the number */
	else if (sc->state == SC_BARE_NUM) {
		sc->target = (uint8_t)(sc->bare_field + 1);
		scan_store(sc);
	}
	sc->state = SC_DONE;
	if (sc->bad || sc->have != 3)
		return -1;
	*seq = sc->seq;
	*ts = sc->ts;
	return 0;
}

int sp_parse_payload(const char *data, size_t len, uint64_t *seq, uint64_t *ts)
{
	struct sp_scan sc;
	sp_scan_init(&sc);
	sp_scan_feed(&sc, data, len);
	return sp_scan_finish(&sc, seq, ts);
}
