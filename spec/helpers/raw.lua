-- Raw HTTP over luasocket for specs that need byte-level control: exact
-- request bytes, writes split anywhere, several responses on one
-- connection, and telling "answered then closed" from "still open".
-- Every read has a deadline, so a spec never hangs.
local socket = require "socket"

local raw = {}

local Conn = {}
Conn.__index = Conn

-- Opens a connection to 127.0.0.1:port. opts.nodelay sends small writes
-- as they are (so the server sees the split points).
function raw.connect(port, opts)
  opts = opts or {}
  local sock = assert(socket.tcp())
  sock:settimeout(opts.timeout or 5)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  sock:settimeout(0)
  return setmetatable({ sock = sock, buf = "", closed = false, err = nil }, Conn)
end

-- Sends all of data (bounded wait). Returns true, or nil and the error.
function Conn:send(data, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = partial + 1
      if socket.gettime() > deadline then return nil, "send timeout" end
      socket.select(nil, { self.sock }, math.max(0.001, deadline - socket.gettime()))
    else
      return nil, err
    end
  end
  return true
end

-- Sends data in pieces ending at the given byte offsets (each piece is
-- its own write, with a short pause so the server reads it separately).
function Conn:send_split(data, cuts, pause)
  local from = 1
  local points = {}
  for _, c in ipairs(cuts) do
    if c > 0 and c < #data then points[#points + 1] = c end
  end
  table.sort(points)
  points[#points + 1] = #data
  for _, to in ipairs(points) do
    if to >= from then
      local ok, err = self:send(data:sub(from, to))
      if not ok then return nil, err end
      from = to + 1
      socket.sleep(pause or 0.005)
    end
  end
  return true
end

-- Reads what is available within timeout into the buffer. Returns true if
-- bytes came, false on timeout or end of stream (self.closed tells which).
function Conn:fill(timeout)
  if self.closed then return false end
  local deadline = socket.gettime() + (timeout or 5)
  while true do
    local data, err, partial = self.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then
      self.buf = self.buf .. data
      if err and err ~= "timeout" then self.closed, self.err = true, err end
      return true
    end
    if err and err ~= "timeout" then
      self.closed, self.err = true, err   -- "closed" or a reset
      return false
    end
    local left = deadline - socket.gettime()
    if left <= 0 then return false end
    socket.select({ self.sock }, nil, math.min(left, 0.5))
  end
end

-- Reads until the buffer holds n bytes (number) or matches a pattern.
-- Returns true when it does, false when time ran out or the peer closed.
function Conn:wait_for(what, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  local function have()
    if type(what) == "number" then return #self.buf >= what end
    return self.buf:find(what) ~= nil
  end
  while not have() do
    local left = deadline - socket.gettime()
    if left <= 0 then return false end
    if not self:fill(left) and self.closed then return have() end
  end
  return true
end

-- Takes n bytes off the front of the buffer.
function Conn:take(n)
  local s = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return s
end

local function parse_head(head)
  local status_line, rest = head:match("^([^\r\n]*)\r\n(.*)$")
  status_line = status_line or head
  local version, status, reason = status_line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
  local headers, list = {}, {}
  for line in (rest or ""):gmatch("([^\r\n]*)\r\n") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then
      list[#list + 1] = { k, v }
      k = k:lower()
      headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
    end
  end
  return { version = version, status = tonumber(status), reason = reason,
           headers = headers, header_list = list, status_line = status_line }
end

-- Reads one response. opts.method = "HEAD" (no body expected);
-- opts.timeout. Returns the response { status, headers, body, head } or
-- nil and a reason ("timeout", "closed", ...). A body without a length is
-- read until the peer closes.
function Conn:read_response(opts)
  opts = opts or {}
  local deadline = socket.gettime() + (opts.timeout or 5)
  local function left() return math.max(0, deadline - socket.gettime()) end
  if not self:wait_for("\r\n\r\n", left()) then
    return nil, self.closed and ("closed" .. (self.buf ~= "" and " mid-head" or "")) or "timeout"
  end
  local e = self.buf:find("\r\n\r\n", 1, true)
  local head = self:take(e + 3)
  local r = parse_head(head)
  r.head = head
  local s = r.status
  if opts.method == "HEAD" or (s and (s < 200 or s == 204 or s == 304)) then
    r.body = ""
    return r
  end
  local te = (r.headers["transfer-encoding"] or ""):lower()
  if te:find("chunked") then
    local parts = {}
    while true do
      if not self:wait_for("\r\n", left()) then return nil, "chunk size: timeout or closed" end
      local ln = self.buf:find("\r\n", 1, true)
      local size = tonumber(self:take(ln + 1):match("^(%x+)"), 16)
      if not size then return nil, "bad chunk size line" end
      if not self:wait_for(size + 2, left()) then return nil, "chunk data: timeout or closed" end
      local chunk = self:take(size + 2)
      if size == 0 then break end
      parts[#parts + 1] = chunk:sub(1, size)
    end
    r.body = table.concat(parts)
    return r
  end
  local n = tonumber(r.headers["content-length"])
  if n then
    if not self:wait_for(n, left()) then
      return nil, ("body: %d of %d bytes"):format(#self.buf, n)
    end
    r.body = self:take(n)
    return r
  end
  -- until the connection closes
  while not self.closed and left() > 0 do self:fill(left()) end
  r.body = self:take(#self.buf)
  r.until_close = true
  return r
end

-- Waits (bounded) for the peer to close. Returns true if it did; any bytes
-- that arrive meanwhile stay in the buffer.
function Conn:wait_closed(timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while not self.closed do
    local left = deadline - socket.gettime()
    if left <= 0 then return false end
    self:fill(left)
  end
  return true
end

-- True if the peer has not closed and sent nothing within timeout.
function Conn:still_open(timeout)
  self:fill(timeout or 0.1)
  return not self.closed
end

-- Resets instead of closing politely (SO_LINGER 0).
function Conn:reset()
  self.sock:setoption("linger", { on = true, timeout = 0 })
  self.sock:close()
  self.closed = true
end

function Conn:close()
  self.sock:close()
  self.closed = true
end

-- One exchange on a fresh connection: sends bytes, reads one response.
function raw.exchange(port, bytes, opts)
  local c = assert(raw.connect(port))
  assert(c:send(bytes))
  local r, err = c:read_response(opts)
  return r, err, c
end

-- A request with Host and, when there is a body, Content-Length.
function raw.request(method, path, headers, body, version)
  local lines = { ("%s %s %s"):format(method, path, version or "HTTP/1.1") }
  local has_host = false
  for _, h in ipairs(headers or {}) do
    lines[#lines + 1] = h[1] .. ": " .. h[2]
    if h[1]:lower() == "host" then has_host = true end
  end
  if not has_host then table.insert(lines, 2, "Host: 127.0.0.1") end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- Polls fn() until it returns a truthy value or timeout; returns the last
-- value.
function raw.eventually(fn, timeout, step)
  local deadline = socket.gettime() + (timeout or 5)
  local v
  repeat
    v = fn()
    if v then return v end
    socket.sleep(step or 0.05)
  until socket.gettime() > deadline
  return v
end

-- A free loopback port: bind port 0, read it, close.
function raw.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

return raw
