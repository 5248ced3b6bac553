-- Helpers for specs that hold many streams or read a lot of events:
-- a fast SSE reader (no O(n^2) buffer copies, so 1,000 streams x 1,000
-- events stay cheap), pipelined requests, a JSON endpoint reader, memory
-- probes of the server process and a quicker server stop. Loopback only; every wait has a
-- deadline.
--
-- The reader de-chunks HTTP/1.1 bodies and parses events on "\n\n"
-- boundaries (sluice frames events with LF line ends, see core/sse.c; a
-- CR before LF is tolerated). It does not wait with socket.select, which
-- refuses descriptors >= FD_SETSIZE (1024) and a fan-out spec holds more;
-- it blocks in receive() with a timeout instead.
local socket = require "socket"
local cjson = require "cjson"

local multi = {}

local gettime = socket.gettime

function multi.json(text)
  local ok, v = pcall(cjson.decode, text)
  if not ok then error("not JSON: " .. tostring(text) .. " (" .. tostring(v) .. ")", 2) end
  return v
end

-- TCP_MAXSEG before connect: the MSS this end announces, which bounds the
-- segments the server sends. On loopback the MSS is ~64 KiB and the
-- server's send buffer autotunes to megabytes for a client that never
-- reads; a small MSS keeps what the kernel holds for it small. luasocket
-- has no option for it, LuaJIT's FFI calls setsockopt directly.
local ffi = require "ffi"
pcall(ffi.cdef, "int setsockopt(int fd, int level, int name, const void *val, unsigned int len);")
local IPPROTO_TCP, TCP_MAXSEG = 6, 2
local function set_mss(c, mss)
  local v = ffi.new("int[1]", mss)
  assert(ffi.C.setsockopt(c:getfd(), IPPROTO_TCP, TCP_MAXSEG, v, ffi.sizeof("int")) == 0,
         "setsockopt TCP_MAXSEG failed")
end

-- A TCP connection to 127.0.0.1:port. opts.rcvbuf sets SO_RCVBUF and
-- opts.mss TCP_MAXSEG before connecting (socket.tcp4() creates the
-- descriptor at once, so options can be set; socket.tcp() would create it
-- only at connect).
function multi.connect(port, opts)
  opts = opts or {}
  local c = assert(socket.tcp4())
  if opts.rcvbuf then
    assert(c:setoption("recv-buffer-size", opts.rcvbuf))
  end
  if opts.mss then set_mss(c, opts.mss) end
  c:settimeout(opts.timeout or 5)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then
    c:close()
    error("connect 127.0.0.1:" .. tostring(port) .. ": " .. tostring(err), 2)
  end
  return c
end

local function read_head(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  for _ = 1, 200 do
    local l, e = c:receive("*l")
    if not l then return nil, e end
    if l == "" then return status, headers end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[k:lower()] = v end
  end
  return nil, "too many header lines"
end
multi.read_head = read_head

-- ---- requests ------------------------------------------------------------

local function build(method, path, headers, body)
  local t = { method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n" }
  for k, v in pairs(headers or {}) do t[#t + 1] = k .. ": " .. v .. "\r\n" end
  if body then t[#t + 1] = "Content-Length: " .. #body .. "\r\n" end
  t[#t + 1] = "\r\n"
  t[#t + 1] = body or ""
  return table.concat(t)
end
multi.build = build

local function read_response(c)
  local status, headers = read_head(c)
  if not status then return nil, headers end
  local n = tonumber(headers["content-length"] or "0")
  local body = ""
  if n > 0 then
    local b, err = c:receive(n)
    if not b then return nil, err end
    body = b
  end
  return { status = status, headers = headers, body = body }
end

-- One request on a fresh connection; the response or an error.
function multi.request(port, method, path, body, headers)
  local c = multi.connect(port)
  assert(c:send(build(method, path, headers, body)))
  local r, err = read_response(c)
  c:close()
  assert(r, ("%s %s: no response: %s"):format(method, path, tostring(err)))
  return r
end

-- Sends every request of reqs ({ method, path, body }) on one connection
-- in one write (HTTP/1.1 pipelining), then reads the answers in order.
function multi.pipeline(port, reqs, timeout)
  local c = multi.connect(port, { timeout = timeout or 20 })
  local parts = {}
  for i, r in ipairs(reqs) do parts[i] = build(r[1], r[2], r[3] and {} or nil, r[3]) end
  assert(c:send(table.concat(parts)))
  local out = {}
  for i = 1, #reqs do
    local r, err = read_response(c)
    if not r then
      c:close()
      error(("pipelined request %d of %d: no response: %s"):format(i, #reqs, tostring(err)), 2)
    end
    out[i] = r
  end
  c:close()
  return out
end

-- The JSON a GET endpoint answers (the specs' apps serve sluice.stats()).
function multi.get_json(port, path)
  local r = multi.request(port, "GET", path)
  assert(r.status == 200, ("GET %s: %d %s"):format(path, r.status, r.body))
  return multi.json(r.body)
end

-- Polls fn() until it returns a true value or timeout; returns its value.
function multi.wait_for(fn, timeout, interval)
  local deadline = gettime() + (timeout or 5)
  repeat
    local v = fn()
    if v then return v end
    socket.sleep(interval or 0.02)
  until gettime() > deadline
  return fn()
end

-- ---- server memory --------------------------------------------------------

local function status_field(pid, field)
  local f = io.open("/proc/" .. pid .. "/status", "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

-- Resident set and its high-water mark, KiB, read without forking a shell.
function multi.rss_kib(pid) return status_field(pid, "VmRSS") end
function multi.hwm_kib(pid) return status_field(pid, "VmHWM") end

-- Resets the high-water mark to the current RSS (Linux: clear_refs "5").
-- False if the kernel or permissions do not allow it.
function multi.reset_hwm(pid)
  local f = io.open("/proc/" .. pid .. "/clear_refs", "wb")
  if not f then return false end
  local ok = f:write("5")
  f:close()
  return ok and true or false
end

-- ---- servers --------------------------------------------------------------

-- spec/helpers/server.lua decides a server has exited with kill -0, which
-- also succeeds on a zombie; here the zombie is reaped about 2 s late, so
-- every stop() waited that long. This instance override counts a zombie
-- as exited (server.lua itself is not ours to change).
local function alive(self)
  local f = self.pid and io.open("/proc/" .. self.pid .. "/stat", "rb")
  if not f then return false end
  local st = f:read("*a") or ""
  f:close()
  local state = st:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- server.start(opts) with the override above.
function multi.start(opts)
  local srv = require("server").start(opts)
  srv.running = alive
  return srv
end

-- Whether the binary under test is built with AddressSanitizer (make
-- asan): its quarantine and shadow memory make RSS figures meaningless.
function multi.sanitized()
  local bin = os.getenv("SLUICE_BIN") or ((os.getenv("SLUICE_ROOT") or ".") .. "/sluice")
  local p = io.popen("ldd '" .. bin:gsub("'", "") .. "' 2>/dev/null")
  if not p then return false end
  local out = p:read("*a") or ""
  p:close()
  return out:find("libasan", 1, true) ~= nil
end

-- ---- streams --------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- Opens an SSE stream (GET path). Returns the stream; .status, .headers.
-- opts: rcvbuf, http10, timeout (for the head), no_head (send only; call
-- s:finish_open() later, so many streams can be opened in parallel).
function multi.open(port, path, headers, opts)
  opts = opts or {}
  local c = multi.connect(port, opts)
  local req = { ("GET %s HTTP/%s\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n")
                :format(path, opts.http10 and "1.0" or "1.1") }
  for k, v in pairs(headers or {}) do req[#req + 1] = k .. ": " .. v .. "\r\n" end
  req[#req + 1] = "\r\n"
  assert(c:send(table.concat(req)))
  local s = setmetatable({
    sock = c, raw = "", rpos = 1, chunk_left = nil, text = "", tpos = 1,
    queue = {}, qhead = 1, qtail = 0, last_id = nil, ended = false,
    err = nil, bytes = 0, events_seen = 0, ignored = 0,
  }, Stream)
  if not opts.no_head then s:finish_open(opts.timeout) end
  return s
end

function Stream:finish_open(timeout)
  self.sock:settimeout(timeout or 5)
  local status, headers = read_head(self.sock)
  if not status then error("stream: no response head: " .. tostring(headers), 2) end
  self.status, self.headers = status, headers
  self.chunked = (headers["transfer-encoding"] or ""):find("chunked") ~= nil
  return self
end

local function push_event(self, ev)
  self.qtail = self.qtail + 1
  self.queue[self.qtail] = ev
  self.events_seen = self.events_seen + 1
end

-- Parses complete events out of self.text.
local function parse_text(self)
  local text, pos = self.text, self.tpos
  while true do
    local s, e = text:find("\r?\n\r?\n", pos)
    if not s then break end
    local ev, data, has_data = { event = "message" }, nil, false
    for line in (text:sub(pos, s - 1) .. "\n"):gmatch("([^\n]*)\n") do
      if line:byte(-1) == 13 then line = line:sub(1, -2) end
      if line:byte(1) ~= 58 then   -- ':' starts a comment
        local field, value = line:match("^([^:]*):? ?(.*)$")
        if field == "data" then
          data = has_data and (data .. "\n" .. value) or value
          has_data = true
        elseif field == "event" then ev.event = value
        elseif field == "id" then self.last_id = value; ev.id = value
        elseif field == "retry" then self.retry = tonumber(value) end
      end
    end
    if has_data then
      ev.data = data
      ev.last_id = self.last_id
      push_event(self, ev)
    else
      self.ignored = self.ignored + 1
    end
    pos = e + 1
  end
  if pos > 1 then
    self.text = text:sub(pos)
    self.tpos = 1
  end
end

-- Takes raw body bytes: de-chunks them into self.text.
local function feed(self, data)
  self.bytes = self.bytes + #data
  if not self.chunked then
    self.text = self.text .. data
    return parse_text(self)
  end
  local raw = self.raw .. data
  local pos, pieces = 1, {}
  while true do
    if self.chunk_left then
      local avail = #raw - pos + 1
      if avail < self.chunk_left + 2 then break end
      pieces[#pieces + 1] = raw:sub(pos, pos + self.chunk_left - 1)
      if raw:sub(pos + self.chunk_left, pos + self.chunk_left + 1) ~= "\r\n" then
        self.err = "chunk not followed by CRLF"
        self.ended = true
        break
      end
      pos = pos + self.chunk_left + 2
      self.chunk_left = nil
    else
      local s, e, hex = raw:find("^(%x+)[^\r\n]*\r\n", pos)
      if not s then
        if #raw - pos > 32 then
          self.err = "bad chunk size line: " .. raw:sub(pos, pos + 31):gsub("[\r\n]", ".")
          self.ended = true
        end
        break
      end
      local size = tonumber(hex, 16)
      pos = e + 1
      if size == 0 then
        self.ended = true
        self.clean_end = true
        break
      end
      self.chunk_left = size
    end
  end
  self.raw = raw:sub(pos)
  if #pieces > 0 then
    self.text = self.text .. table.concat(pieces)
    parse_text(self)
  end
end

-- Reads what has arrived, waiting up to timeout for the first byte.
-- max_bytes caps how much is read (the rest stays unread). Returns true if
-- bytes came; false on timeout or end of stream (then self.ended).
function Stream:pump(timeout, max_bytes)
  if self.ended then return false end
  local want = max_bytes or 262144
  local c = self.sock
  c:settimeout(0)
  local data, err, partial = c:receive(want)
  data = data or partial
  if (not data or #data == 0) and err == "timeout" and (timeout or 0) > 0 then
    c:settimeout(timeout)
    data, err, partial = c:receive(1)   -- blocks for the first byte only
    data = data or partial
    if data and #data > 0 and want > 1 then
      c:settimeout(0)
      local more, err2, partial2 = c:receive(want - 1)
      more = more or partial2
      if more and #more > 0 then data = data .. more end
      if err2 and err2 ~= "timeout" then err = err2 end
    end
  end
  if data and #data > 0 then feed(self, data) end
  if err and err ~= "timeout" then
    self.ended = true
    self.close_reason = err    -- "closed" (EOF) or a reset
  end
  return data ~= nil and #data > 0
end

-- The next event, or nil when none arrives within timeout.
function Stream:next(timeout)
  local deadline = gettime() + (timeout or 5)
  while self.qhead > self.qtail do
    if self.ended then return nil end
    local left = deadline - gettime()
    if left <= 0 then return nil end
    self:pump(left)
  end
  local ev = self.queue[self.qhead]
  self.queue[self.qhead] = nil
  self.qhead = self.qhead + 1
  return ev
end

-- Up to n events within timeout.
function Stream:take(n, timeout)
  local out = {}
  local deadline = gettime() + (timeout or 5)
  while #out < n do
    local ev = self:next(math.max(0, deadline - gettime()))
    if not ev then break end
    out[#out + 1] = ev
  end
  return out
end

-- Events until stop(ev) is true (that event included), the stream ends
-- or timeout. Returns the events and whether stop was reached.
function Stream:take_until(stop, timeout, max)
  local out = {}
  local deadline = gettime() + (timeout or 5)
  for _ = 1, max or 1e7 do
    local ev = self:next(math.max(0, deadline - gettime()))
    if not ev then return out, false end
    out[#out + 1] = ev
    if stop(ev) then return out, true end
  end
  return out, false
end

-- Reads until the server ends the stream or timeout; returns the events
-- read and whether the end was seen.
function Stream:drain(timeout)
  local out = {}
  local deadline = gettime() + (timeout or 5)
  while true do
    while self.qhead <= self.qtail do out[#out + 1] = self:next(0) end
    if self.ended then break end
    local left = deadline - gettime()
    if left <= 0 then break end
    self:pump(math.min(left, 0.5))
  end
  return out, self.ended
end

-- Whether queued events are waiting (already read from the socket).
function Stream:pending()
  return self.qtail - self.qhead + 1
end

function Stream:close()
  self.sock:close()
  self.ended = true
end

-- ---- checks ----------------------------------------------------------------

-- Compares a list of events to the expected { id=, data= } list; returns
-- nil when equal, else a message naming the first difference.
function multi.diff_events(got, want, label)
  label = label or "stream"
  for i = 1, math.max(#got, #want) do
    local g, w = got[i], want[i]
    if not g then
      return ("%s: %d events, expected %d; first missing #%d data=%s id=%s")
        :format(label, #got, #want, i, tostring(w.data), tostring(w.id))
    end
    if not w then
      return ("%s: %d events, expected %d; first extra #%d data=%s id=%s")
        :format(label, #got, #want, i, tostring(g.data), tostring(g.id))
    end
    if (w.data ~= nil and g.data ~= w.data) or (w.id ~= nil and g.id ~= w.id)
       or (w.event ~= nil and g.event ~= w.event) then
      return ("%s: event #%d is %s/%s/%s, expected %s/%s/%s"):format(label, i,
        tostring(g.event), tostring(g.id), tostring(g.data),
        tostring(w.event or g.event), tostring(w.id), tostring(w.data))
    end
  end
  return nil
end

return multi
