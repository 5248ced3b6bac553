#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "json_escape.h"

enum log_level log_threshold = LOG_INFO;
enum log_format log_format = LOG_FORMAT_TEXT;

static const char *const names[] = { "debug", "info", "warn", "error" };

int log_parse_level(const char *name, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

int log_parse_format(const char *name, enum log_format *out)
{
    if (strcmp(name, "text") == 0)
        *out = LOG_FORMAT_TEXT;
    else if (strcmp(name, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return -1;
    return 0;
}

/* {"time":...,"level":...,"msg":...}: the message is formatted into msg
 * (as large as line), then escaped into line, cut short rather than
 * broken if it does not fit. */
static size_t format_json(char *line, char *msg, size_t size, const char *stamp,
                          enum log_level level, const char *fmt, va_list ap)
{
    int m = vsnprintf(msg, size, fmt, ap);
    size_t mlen = m < 0 ? 0 : (size_t)m >= size ? size - 1 : (size_t)m;
    int n = snprintf(line, size, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"",
                     stamp, names[level]);
    size_t o = (size_t)n;
    o += json_escape(line + o, size - o - 3, msg, mlen, NULL);
    memcpy(line + o, "\"}\n", 3);
    return o + 3;
}

/* One line: time stamp, level, message, newline; returns its length.
 * msg is scratch of the same size, for the JSON form. */
static size_t format_line(char *line, char *msg, size_t size, enum log_level level,
                          const char *fmt, va_list ap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (log_format == LOG_FORMAT_JSON) {
        char stamp[40];
        size_t k = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(stamp + k, sizeof stamp - k, ".%03ldZ", ts.tv_nsec / 1000000);
        return format_json(line, msg, size, stamp, level, fmt, ap);
    }
    int n = (int)strftime(line, size, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, size - (size_t)n, ".%03ldZ [%s] ",
                  ts.tv_nsec / 1000000, names[level]);
    int m = vsnprintf(line + n, size - (size_t)n - 1, fmt, ap);
    n = (m < 0 || (size_t)(n + m) >= size - 1) ? (int)size - 2 : n + m;
    line[n++] = '\n';
    return (size_t)n;
}

void log_at(enum log_level level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    char line[2048], msg[2048];
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, msg, sizeof line, level, fmt, ap);
    va_end(ap);
    /* One write(2) per line keeps lines whole when several threads or
     * processes share the log, without a lock; a failed log write has
     * nowhere better to be reported. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}
