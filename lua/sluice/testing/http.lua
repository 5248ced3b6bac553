-- sluice.testing.http: an HTTP/1.1 client and an EventSource client over
-- luasocket, for specs against a real server on loopback. Every read has a
-- deadline, so a spec never hangs.
--
--   http.request(host, port, { method=, path=, headers=, cookies=, query=,
--                              body=, timeout= })
--     -> { status, headers (lower-case names), header_list, body, json }
--   http.stream(host, port, path, { headers=, cookies=, query=,
--                                   last_event_id=, timeout=, http10= })
--     -> stream (see Stream below)
local socket = require "socket"
local json = require "sluice.json"
local sse = require "sluice.testing.sse"

local find, sub, format, lower = string.find, string.sub, string.format, string.lower
local concat = table.concat

local M = {}

local function now() return socket.gettime() end

-- ---- building requests -----------------------------------------------------

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", c:byte()) end))
end
M.urlencode = urlencode

-- A query table in a stable order: { a = 1, b = "x y" } -> "a=1&b=x%20y";
-- a list value repeats the name.
local function query_string(q)
  if type(q) == "string" then return q end
  local names = {}
  for k in pairs(q) do names[#names + 1] = k end
  table.sort(names)
  local parts = {}
  for _, k in ipairs(names) do
    local v = q[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(x) end
    elseif v == true then
      parts[#parts + 1] = urlencode(k)
    else
      parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(v)
    end
  end
  return concat(parts, "&")
end
M.query_string = query_string

local function target(path, query)
  path = path or "/"
  if query == nil then return path end
  local qs = query_string(query)
  if qs == "" then return path end
  return path .. (find(path, "?", 1, true) and "&" or "?") .. qs
end

local function has_header(headers, name)
  for k in pairs(headers) do
    if lower(k) == name then return true end
  end
  return false
end

-- The request bytes. A table body is sent as JSON.
function M.build(opts)
  local method = opts.method or "GET"
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local body = opts.body
  if type(body) == "table" then
    body = json.encode(body)
    if not has_header(headers, "content-type") then headers["Content-Type"] = "application/json" end
  end
  if opts.cookies then
    local names, parts = {}, {}
    for k in pairs(opts.cookies) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. tostring(opts.cookies[k]) end
    if #parts > 0 then headers["Cookie"] = concat(parts, "; ") end
  end
  local lines = { format("%s %s HTTP/%s", method, target(opts.path, opts.query), opts.http10 and "1.0" or "1.1") }
  if not has_header(headers, "host") then lines[#lines + 1] = "Host: 127.0.0.1" end
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do lines[#lines + 1] = k .. ": " .. tostring(headers[k]) end
  if body and not has_header(headers, "content-length") then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  return concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- ---- a buffered connection ------------------------------------------------

local Conn = {}
Conn.__index = Conn

function M.connect(host, port, timeout)
  local c = assert(socket.tcp())
  c:settimeout(timeout or 5)
  local ok, err = c:connect(host or "127.0.0.1", port)
  if not ok then
    c:close()
    return nil, format("connect %s:%s: %s", tostring(host), tostring(port), tostring(err))
  end
  return setmetatable({ sock = c, buf = "", closed = false }, Conn)
end

-- Reads what arrives within timeout into buf; true if anything came.
function Conn:fill(timeout)
  if self.closed then return false end
  -- receive(n) waits for all n bytes: wait (bounded) for one, then take
  -- what else is there without waiting. No socket.select: it refuses
  -- descriptors past FD_SETSIZE, and a spec may hold many streams.
  self.sock:settimeout(math.max(0, timeout))
  local first, err = self.sock:receive(1)
  local data = first
  if first then
    self.sock:settimeout(0)
    local more, e2, part = self.sock:receive(65536)
    data = first .. (more or part or "")
    if e2 == "closed" then err = "closed" end
  end
  if err == "closed" then self.closed = true end
  if data and #data > 0 then
    self.buf = self.buf .. data
    return true
  end
  return false
end

-- Waits until buf holds n bytes or the string s; false on deadline/close.
function Conn:want(what, deadline)
  while true do
    if type(what) == "number" then
      if #self.buf >= what then return true end
    elseif find(self.buf, what, 1, true) then
      return true
    end
    local left = deadline - now()
    if self.closed or left <= 0 then return false end
    self:fill(left)
  end
end

function Conn:take(n)
  local s = sub(self.buf, 1, n)
  self.buf = sub(self.buf, n + 1)
  return s
end

function Conn:send(bytes)
  return self.sock:send(bytes)
end

function Conn:close()
  if not self.closed then self.sock:close() end
  self.closed = true
end

-- A connection is anything with buf, closed and these methods: the
-- in-process mode (sluice.testing.app) gives its own, without a socket.
M.Conn = Conn

local function parse_head(head)
  local status = tonumber(head:match("^HTTP/%d%.%d (%d%d%d)"))
  local headers, list = {}, {}
  local pos = (find(head, "\r\n", 1, true) or #head) + 2
  while pos <= #head do
    local e = find(head, "\r\n", pos, true) or (#head + 1)
    local line = sub(head, pos, e - 1)
    pos = e + 2
    local colon = find(line, ":", 1, true)
    if colon then
      local k = lower(sub(line, 1, colon - 1))
      local v = sub(line, colon + 1):match("^[ \t]*(.-)[ \t]*$")
      list[#list + 1] = { k, v }
      headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
    end
  end
  return status, headers, list
end

-- Reads a response head; status, headers, header_list | nil, reason.
function Conn:read_head(deadline)
  if not self:want("\r\n\r\n", deadline) then
    return nil, self.closed and "connection closed before a response head" or "timeout waiting for a response head"
  end
  local e = find(self.buf, "\r\n\r\n", 1, true)
  local head = self:take(e + 3)
  local status, headers, list = parse_head(sub(head, 1, -3))
  if not status then return nil, "not an HTTP response: " .. head:sub(1, 80) end
  return status, headers, list
end

local function is_json(headers)
  local ct = lower(headers["content-type"] or "")
  return find(ct, "application/json", 1, true) or find(ct, "+json", 1, true)
end

-- Reads a response body framed by Content-Length, chunks or the close.
function Conn:read_body(method, status, headers, deadline)
  if method == "HEAD" or status < 200 or status == 204 or status == 304 then return "" end
  if find(lower(headers["transfer-encoding"] or ""), "chunked", 1, true) then
    local parts = {}
    while true do
      if not self:want("\r\n", deadline) then return nil, "chunked body cut short" end
      local ln = find(self.buf, "\r\n", 1, true)
      local size = tonumber(self:take(ln + 1):match("^(%x+)"), 16)
      if not size then return nil, "bad chunk size line" end
      if not self:want(size + 2, deadline) then return nil, "chunk cut short" end
      local chunk = self:take(size + 2)
      if size == 0 then break end
      parts[#parts + 1] = sub(chunk, 1, size)
    end
    return concat(parts)
  end
  local n = tonumber(headers["content-length"])
  if n then
    if not self:want(n, deadline) then
      return nil, format("body cut short: %d of %d bytes", #self.buf, n)
    end
    return self:take(n)
  end
  while not self.closed and now() < deadline do self:fill(deadline - now()) end
  return self:take(#self.buf)
end

local function response(status, headers, list, body)
  local r = { status = status, headers = headers, header_list = list, body = body }
  if is_json(headers) and body ~= "" then
    local ok, v = pcall(json.decode, body)
    if ok then r.json = v end
  end
  return r
end

M.response = response

-- One request on a fresh connection (Connection: close).
function M.request(host, port, opts)
  opts = opts or {}
  local c, err = M.connect(host, port, opts.timeout or 5)
  if not c then error(err, 2) end
  return M.exchange(c, opts, 3)
end

-- Sends one request (Connection: close) on the connection c and reads the
-- answer; errors are raised at level.
function M.exchange(c, opts, level)
  local deadline = now() + (opts.timeout or 5)
  local o = setmetatable({ headers = {} }, { __index = opts })
  for k, v in pairs(opts.headers or {}) do o.headers[k] = v end
  if not has_header(o.headers, "connection") then o.headers["Connection"] = "close" end
  local ok, serr = c:send(M.build(o))
  local status, headers, list = c:read_head(deadline)
  if not status then
    c:close()
    error(format("%s %s: no response (%s%s)", opts.method or "GET", opts.path or "/", headers,
                 ok and "" or ", send: " .. tostring(serr)), level or 2)
  end
  local body, berr = c:read_body(opts.method, status, headers, deadline)
  c:close()
  if not body then error(format("%s %s: %s", opts.method or "GET", opts.path or "/", berr), level or 2) end
  return response(status, headers, list, body)
end

-- ---- EventSource ------------------------------------------------------------

local Stream = {}
Stream.__index = Stream
M.Stream = Stream

-- Sends the GET and reads the head. A response that is not a 200
-- text/event-stream is a refusal: its body is read and the stream is
-- ended (.refused = true, .body).
function Stream:open()
  local o = self.opts
  local timeout = o.timeout or 5
  local deadline = now() + timeout
  local c, err = self:connect(timeout)
  if not c then error(err, 3) end
  local headers = { Accept = "text/event-stream" }
  for k, v in pairs(o.headers or {}) do headers[k] = v end
  local last = self.parser.last_event_id
  if last ~= "" then
    headers["Last-Event-ID"] = last
  elseif o.last_event_id then
    headers["Last-Event-ID"] = o.last_event_id
  end
  self.request_headers = headers
  assert(c:send(M.build { method = "GET", path = self.path, query = o.query, headers = headers,
                               cookies = o.cookies, http10 = o.http10 }))
  local status, h, list = c:read_head(deadline)
  if not status then
    c:close()
    error(format("GET %s: no stream response (%s)", self.path, h), 3)
  end
  self.conn, self.status, self.headers, self.header_list = c, status, h, list
  self.chunked = find(lower(h["transfer-encoding"] or ""), "chunked", 1, true) ~= nil
  self.ended, self.refused, self.body = false, false, nil
  self.chunk_left = nil
  self.connections = (self.connections or 0) + 1
  if status ~= 200 or not find(lower(h["content-type"] or ""), "text/event-stream", 1, true) then
    self.refused = true
    self.body = c:read_body("GET", status, h, deadline) or ""
    local r = response(status, h, list, self.body)
    self.json = r.json
    c:close()
    self.ended = true
  end
  return self
end

-- The connection a stream (re)opens on.
function Stream:connect(timeout)
  return M.connect(self.host, self.port, timeout)
end

function M.stream(host, port, path, opts)
  local s = setmetatable({ host = host or "127.0.0.1", port = port, path = path, opts = opts or {},
                           parser = sse.parser(), queue = {}, received = {} }, Stream)
  s.comments = s.parser.comments
  return s:open()
end

-- De-chunks what the connection holds into the parser. Returns true when
-- it passed on any body bytes.
function Stream:pump()
  local c = self.conn
  local got = false
  if not self.chunked then
    if #c.buf > 0 then
      self:deliver(c:take(#c.buf))
      got = true
    end
    if c.closed then self:finish() end
    return got
  end
  while true do
    if self.chunk_left == nil then
      local ln = find(c.buf, "\r\n", 1, true)
      if not ln then break end
      local size = tonumber(c:take(ln + 1):match("^(%x+)"), 16)
      if not size then error("stream " .. self.path .. ": bad chunk size line") end
      if size == 0 then
        self:finish()
        return got
      end
      self.chunk_left = size + 2   -- data and its CRLF
    end
    if #c.buf == 0 then break end
    local left = self.chunk_left
    local n = math.min(left, #c.buf)
    -- the last 2 of the chunk's bytes are its CRLF, not data
    local part = sub(c:take(n), 1, math.max(0, math.min(n, left - 2)))
    self.chunk_left = left - n
    if self.chunk_left == 0 then self.chunk_left = nil end
    if #part > 0 then
      self:deliver(part)
      got = true
    end
  end
  if c.closed then self:finish() end
  return got
end

function Stream:deliver(bytes)
  self.bytes = (self.bytes or 0) + #bytes
  for _, ev in ipairs(self.parser:feed(bytes)) do
    self.queue[#self.queue + 1] = ev
    self.received[#self.received + 1] = ev
  end
  self.retry = self.parser.retry
  self.last_event_id = self.parser.last_event_id
end

function Stream:finish()
  if not self.ended then
    self.parser:finish()
    self.ended = true
  end
end

-- Reads for up to timeout seconds; true if body bytes arrived.
function Stream:fill(timeout)
  if self.ended then return false end
  local deadline = now() + (timeout or 5)
  -- body bytes may have come in with the head
  if self:pump() then return true end
  repeat
    self.conn:fill(math.max(0, deadline - now()))
    if self:pump() then return true end
  until self.ended or now() >= deadline
  return false
end

-- The next event, or nil and "timeout" | "ended" within timeout seconds.
function Stream:next(timeout)
  local deadline = now() + (timeout or 5)
  while #self.queue == 0 do
    if self.ended then return nil, self.refused and "refused" or "ended" end
    local left = deadline - now()
    if left <= 0 then return nil, "timeout" end
    self:fill(left)
  end
  return table.remove(self.queue, 1)
end

-- Events until there are n of them, or until stop(ev) is true (the event
-- that matched included), or the time runs out: fewer then.
function Stream:events_until(n, timeout)
  local out = {}
  local deadline = now() + (timeout or 5)
  while true do
    if type(n) == "number" and #out >= n then break end
    local ev = self:next(math.max(0, deadline - now()))
    if not ev then break end
    out[#out + 1] = ev
    if type(n) == "function" and n(ev) then break end
  end
  return out
end

-- Waits (bounded) until n comments (heartbeats) arrived; their count.
function Stream:wait_comments(n, timeout)
  local deadline = now() + (timeout or 5)
  while #self.comments < n and not self.ended and now() < deadline do
    self:fill(deadline - now())
  end
  return #self.comments
end

-- Waits (bounded) for the server to end the stream; true if it did.
function Stream:wait_closed(timeout)
  local deadline = now() + (timeout or 5)
  while not self.ended and now() < deadline do self:fill(deadline - now()) end
  return self.ended
end

function Stream:close()
  if self.conn then self.conn:close() end
  self:finish()
end

-- Reconnects as EventSource does: a new request with Last-Event-ID set to
-- the last id seen (when there is one). opts.wait = true first sleeps the
-- server's retry hint (capped at opts.max_wait, default 5 s). Events
-- already queued are kept. Returns the stream.
function Stream:reconnect(opts)
  opts = opts or {}
  self:close()
  if opts.wait and self.retry then
    socket.sleep(math.min(self.retry / 1000, opts.max_wait or 5))
  end
  -- a new connection starts a fresh line state; the last id persists
  local last = self.parser.last_event_id
  self.parser = sse.parser()
  self.parser.last_event_id = last
  self.parser.retry = self.retry
  self.parser.comments = self.comments
  return self:open()
end

return M
