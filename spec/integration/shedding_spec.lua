-- Load shedding: past --max-streams open streams (or --shed-queued-bytes
-- of queued output) a new stream gets 503 with Retry-After while the open
-- ones keep receiving; sluice.stats() says whether it is shedding and why.
local server = require "server"
local client = require "client"
local multi = require "multi"
local pinned = require "pinned"
local socket = require "socket"
local cjson = require "cjson"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/who", function() return 200, tostring(sluice.worker_id()) end)
app:stream("/feed", function(req, s) s:subscribe("feed") end)
app:post("/pub", function(req) sluice.publish("feed", req.body) return 204 end)
app:post("/big", function(req)
  local blob = ("x"):rep(65536)
  for _ = 1, tonumber(req.query.n) do sluice.publish("feed", blob) end
  return 204
end)
app:get("/stats", function()
  local st = sluice.stats()
  return 200, { shedding = st.shedding, shedding_reason = st.shedding_reason,
                shed_refused = st.shed_refused, open_streams = st.open_streams }
end)
return app
]]

local function stats(port)
  return cjson.decode(client.request(port, "GET", "/stats").body)
end

local function eventually(fn, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    if fn() then return true end
    socket.sleep(0.05)
  until socket.gettime() > deadline
  return false
end

describe("load shedding", function()
  local srv
  after_each(function() if srv then srv:stop() end end)

  it("answers new streams 503 with Retry-After past --max-streams; open ones keep streaming", function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch", "--max-streams", "2" } }
    local s1 = pinned.open(srv.port, nil, "/feed")
    local s2 = pinned.open(srv.port, nil, "/feed")
    assert.equal(200, s1.status)
    assert.equal(200, s2.status)
    local over = pinned.open(srv.port, nil, "/feed")
    assert.equal(503, over.status)
    assert.equal("5", over.headers["retry-after"])
    pinned.close(over)
    local st = stats(srv.port)
    assert.is_true(st.shedding)
    assert.equal("streams", st.shedding_reason)
    assert.equal(1, st.shed_refused.streams)
    -- Plain requests are served; open streams keep receiving.
    client.request(srv.port, "POST", "/pub", nil, "still here")
    assert.is_true(pinned.wait_text(s1, "data: still here"))
    assert.is_true(pinned.wait_text(s2, "data: still here"))
    -- One ends: a new stream is welcome again.
    pinned.close(s1)
    assert.is_true(eventually(function() return stats(srv.port).shedding == false end))
    local s3 = pinned.open(srv.port, nil, "/feed")
    assert.equal(200, s3.status)
    pinned.close(s2); pinned.close(s3)
  end)

  it("answers new streams 503 past --shed-queued-bytes of queued output", function()
    srv = server.start { apps = { ["app.lua"] = APP },
                         args = { "--no-watch", "--shed-queued-bytes", "262144",
                                  "--max-queued-bytes", "16777216", "--send-timeout", "30" } }
    -- A subscriber that reads nothing, with small kernel buffers: what is
    -- published for it stays queued in the server.
    local c = multi.connect(srv.port, { rcvbuf = 4096, mss = 1024, timeout = 5 })
    assert(c:send(client.build("GET", "/feed")))
    local status = client.read_head(c)
    assert.equal(200, status)
    client.request(srv.port, "POST", "/big?n=40", nil, "")   -- 2.5 MiB
    assert.is_true(eventually(function() return stats(srv.port).shedding == true end))
    assert.equal("queued_bytes", stats(srv.port).shedding_reason)
    local over = pinned.open(srv.port, nil, "/feed")
    assert.equal(503, over.status)
    assert.equal("5", over.headers["retry-after"])
    pinned.close(over)
    c:close()
    assert.is_true(eventually(function() return stats(srv.port).shedding == false end))
    local ok = pinned.open(srv.port, nil, "/feed")
    assert.equal(200, ok.status)
    pinned.close(ok)
  end)
end)
