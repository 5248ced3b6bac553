-- Connections pinned to a worker, for specs of --workers N: a keep-alive
-- connection asks GET /who (the app answers sluice.worker_id()) until one
-- lands on the wanted worker; a stream opened on it then runs there. Raw
-- bytes are read (chunk framing included): enough to find an event's
-- text or the end of a stream. Every wait is bounded.
local socket = require "socket"
local client = require "client"
local multi = require "multi"

local pinned = {}

function pinned.connect(port, wid)
  for _ = 1, 300 do
    local c = multi.connect(port, { timeout = 5 })
    assert(c:send(client.build("GET", "/who")))
    local r = assert(client.read_response(c))
    if wid == nil or tonumber(r.body) == wid then return c, tonumber(r.body) end
    c:close()
  end
  error("no connection landed on worker " .. tostring(wid))
end

-- A request on a connection of worker wid (nil: any); returns
-- { sock, status, headers, body (plain answers), text (stream bytes) }.
function pinned.open(port, wid, path, headers)
  local c, on = pinned.connect(port, wid)
  assert(c:send(client.build("GET", path, headers)))
  local status, h = client.read_head(c)
  assert(status, "no answer to GET " .. path)
  local s = { sock = c, status = status, headers = h, text = "", worker = on }
  if status ~= 200 then
    local n = tonumber(h["content-length"] or "0")
    s.body = n > 0 and c:receive(n) or ""
  end
  return s
end

-- Reads until text appears (true) or timeout / the end (false).
function pinned.wait_text(s, text, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while not s.text:find(text, 1, true) do
    local left = deadline - socket.gettime()
    if left <= 0 or s.closed then return false end
    s.sock:settimeout(math.min(left, 0.2))
    local data, err, partial = s.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then s.text = s.text .. data end
    if err == "closed" then s.closed = true end
  end
  return true
end

-- True once the server closed the stream (within timeout).
function pinned.wait_closed(s, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while not s.closed and socket.gettime() < deadline do
    s.sock:settimeout(0.2)
    local data, err, partial = s.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then s.text = s.text .. data end
    if err == "closed" then s.closed = true end
  end
  return s.closed == true
end

function pinned.close(s)
  s.sock:close()
  s.closed = true
end

return pinned
