/* Log lines on stderr: one line per event, a level, a UTC time stamp;
 * as text or as JSON (--log-format).
 * Thread-safe: each line is one write(2). */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

extern enum log_level log_threshold;

/* --log-format: text (default) or one JSON object per line,
 * {"time":...,"level":...,"msg":...}. Set before any thread starts. */
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };
extern enum log_format log_format;

int log_parse_level(const char *name, enum log_level *out);
int log_parse_format(const char *name, enum log_format *out);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void log_at(enum log_level level, const char *fmt, ...);


#define log_debug(...) \
    do { if (log_threshold <= LOG_DEBUG) log_at(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_at(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)

#endif
