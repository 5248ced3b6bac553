-- Heartbeats bound a stream's silence: with --heartbeat S, a proxy in
-- front never sees a stream quiet for much longer than S, whether the
-- stream never had an event or went quiet after some (a proxy that cuts
-- idle connections at 20 s must be safe with --heartbeat 15).
local socket = require "socket"
local server = require "server"
local raw = require "raw"
local multi = require "multi"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/s/:ch", function(req, s) s:subscribe(req.params.ch) end)
app:post("/pub/:ch", function(req)
  sluice.publish(req.params.ch, { data = "tick" })
  return "ok"
end)
return app
]]

-- Allowed lateness of a heartbeat past the interval: timers on a loaded
-- machine, not a second interval.
local SLACK = 0.35

-- Opens a stream, reads it for `seconds` (publishing at the offsets in
-- `publish_at`), and answers the times bytes arrived, from the open.
local function silences(port, ch, seconds, publish_at)
  local c = assert(raw.connect(port))
  assert(c:send(raw.request("GET", "/s/" .. ch)))
  assert(c:wait_for("\r\n\r\n", 3), "no stream head")
  local t0 = socket.gettime()
  local arrivals = {}
  local next_pub = 1
  while socket.gettime() - t0 < seconds do
    local now = socket.gettime() - t0
    if publish_at[next_pub] and now >= publish_at[next_pub] then
      local r = multi.request(port, "POST", "/pub/" .. ch)
      assert.equal(200, r.status)
      next_pub = next_pub + 1
    end
    local before = #c.buf
    c:fill(0.02)
    assert.is_false(c.closed, "stream closed")
    if #c.buf > before then arrivals[#arrivals + 1] = socket.gettime() - t0 end
  end
  c:close()
  -- the longest stretch with nothing written, from the open to the end
  local longest, from = 0, 0
  for _, t in ipairs(arrivals) do
    longest = math.max(longest, t - from)
    from = t
  end
  longest = math.max(longest, seconds - from)
  return longest, arrivals
end

local function fmt(ts)
  local out = {}
  for i, t in ipairs(ts) do out[i] = ("%.2f"):format(t) end
  return table.concat(out, " ")
end

describe("heartbeats", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch", "--heartbeat", "1" } }
  end)
  teardown(function() srv:stop() end)

  it("come within the interval on a stream that never had an event", function()
    local longest, arrivals = silences(srv.port, "quiet", 3.3, {})
    assert.is_true(#arrivals >= 2, "heartbeats: " .. fmt(arrivals))
    assert.is_true(arrivals[1] <= 1 + SLACK, "first heartbeat at " .. fmt(arrivals))
    assert.is_true(longest <= 1 + SLACK,
      ("silent for %.2f s with --heartbeat 1 (writes at %s)"):format(longest, fmt(arrivals)))
  end)

  it("come within the interval after the last event on a stream that goes quiet", function()
    -- events every 0.7 s (each one postpones the heartbeat), then nothing
    local longest, arrivals = silences(srv.port, "busy", 4.2, { 0.7, 1.4, 2.1 })
    assert.is_true(longest <= 1 + SLACK,
      ("silent for %.2f s with --heartbeat 1 (writes at %s)"):format(longest, fmt(arrivals)))
  end)
end)
