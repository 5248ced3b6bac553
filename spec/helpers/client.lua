-- A small HTTP/1.1 and EventSource client over luasocket, for specs. Every
-- read has a deadline, so a spec never hangs.
local socket = require "socket"
local sse = require "sluice.testing.sse"

local client = {}

function client.connect(port, host, timeout)
  local c = assert(socket.tcp())
  c:settimeout(timeout or 5)
  assert(c:connect(host or "127.0.0.1", port))
  return c
end

-- Reads a response head; returns status, headers (lower-case names).
function client.read_head(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  while true do
    local l, e = c:receive("*l")
    if not l then return nil, e end
    if l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = k:lower()
      headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
    end
  end
  return status, headers
end

-- Reads a whole response with a Content-Length body.
function client.read_response(c, method)
  local status, headers = client.read_head(c)
  if not status then return nil, headers end
  local body = ""
  local n = tonumber(headers["content-length"] or "0")
  if method ~= "HEAD" and n > 0 then
    local b, err = c:receive(n)
    if not b then return nil, err end
    body = b
  end
  return { status = status, headers = headers, body = body }
end

local function build(method, path, headers, body)
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: 127.0.0.1" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end
client.build = build

-- One request on a fresh connection.
function client.request(port, method, path, headers, body)
  local c = client.connect(port)
  assert(c:send(build(method, path, headers, body)))
  local r, err = client.read_response(c, method)
  c:close()
  assert(r, "no response: " .. tostring(err))
  return r
end

-- ---- EventSource ------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- Opens a stream; returns the stream (with .status and .headers).
function client.stream(port, path, headers, opts)
  opts = opts or {}
  local c = client.connect(port, nil, opts.timeout or 5)
  local req = ("GET %s HTTP/%s\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"):format(path, opts.http10 and "1.0" or "1.1")
  for k, v in pairs(headers or {}) do req = req .. k .. ": " .. v .. "\r\n" end
  assert(c:send(req .. "\r\n"))
  local status, h = client.read_head(c)
  local parser = sse.parser()
  local s = setmetatable({ sock = c, status = status, headers = h or {}, buf = "",
                           chunked = h and (h["transfer-encoding"] or ""):find("chunked") ~= nil,
                           raw = "", parser = parser, comments = parser.comments, retry = nil,
                           last_id = "", ended = false }, Stream)
  return s
end

-- Reads some body bytes (de-chunked) within timeout; false when the
-- stream ended or nothing came in time.
function Stream:fill(timeout)
  if self.ended then return false end
  self.sock:settimeout(timeout or 5)
  if not self.chunked then
    local data, err, partial = self.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then
      self.buf = self.buf .. data
      return true
    end
    if err == "closed" then self.ended = true end
    return false
  end
  local line, err = self.sock:receive("*l")
  if not line then
    if err == "closed" then self.ended = true end
    return false
  end
  local size = tonumber(line:match("^(%x+)"), 16)
  if not size then error("bad chunk size line: " .. line) end
  if size == 0 then
    self.sock:receive("*l")
    self.ended = true
    return false
  end
  local data = assert(self.sock:receive(size))
  assert(self.sock:receive("*l") == "", "chunk not followed by CRLF")
  self.chunks = (self.chunks or 0) + 1
  self.buf = self.buf .. data
  return true
end

-- Parses whole events out of the buffer: the test kit's parser, which
-- follows the WHATWG EventSource rules (sluice.testing.sse). ev.id is the
-- event's own id line (nil when it had none), ev.last_id the last id seen.
local function parse_events(self)
  local events = self.parser:feed(self.buf)
  self.buf = ""
  for _, ev in ipairs(events) do ev.last_id = ev.last_event_id end
  self.last_id = self.parser.last_event_id
  self.retry = self.parser.retry
  return events
end

-- Returns the next event, or nil if none arrives within timeout.
function Stream:next_event(timeout)
  self.queue = self.queue or {}
  local deadline = socket.gettime() + (timeout or 5)
  while #self.queue == 0 do
    for _, ev in ipairs(parse_events(self)) do self.queue[#self.queue + 1] = ev end
    if #self.queue > 0 then break end
    local left = deadline - socket.gettime()
    if left <= 0 or not self:fill(left) then
      for _, ev in ipairs(parse_events(self)) do self.queue[#self.queue + 1] = ev end
      if #self.queue == 0 then return nil end
    end
  end
  return table.remove(self.queue, 1)
end

-- Collects n events (or fewer if the time runs out).
function Stream:events(n, timeout)
  local out = {}
  local deadline = socket.gettime() + (timeout or 5)
  while #out < n do
    local ev = self:next_event(math.max(0.01, deadline - socket.gettime()))
    if not ev then break end
    out[#out + 1] = ev
  end
  return out
end

-- Waits until the parsed comments reach n (heartbeats), bounded.
function Stream:wait_comments(n, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while #self.comments < n and socket.gettime() < deadline do
    self:fill(math.max(0.01, deadline - socket.gettime()))
    for _, ev in ipairs(parse_events(self)) do
      self.queue = self.queue or {}
      self.queue[#self.queue + 1] = ev
    end
  end
  return #self.comments
end

function Stream:close()
  self.sock:close()
end

return client
