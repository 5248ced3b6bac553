-- Admin actions: streams carry tags the handler sets, and
-- sluice.disconnect{...} ends exactly the matching streams on every
-- worker, each with a final event saying why, and returns how many; the
-- access log says admin_disconnect.
local server = require "server"
local client = require "client"
local pinned = require "pinned"
local cjson = require "cjson"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/who", function() return 200, tostring(sluice.worker_id()) end)
-- /s?user=u&tenant=t&ch=a
app:stream("/s", function(req, s)
  local q = req.query
  if q.user then s:tag("user", q.user) end
  if q.tenant then s:tag("tenant", q.tenant) end
  s:subscribe(q.ch or "a")
  if q.late then   -- tagged after it opened, and subscribed again after that
    s:after(0.01, function() s:tag("user", q.late); s:subscribe("late") end)
  end
end)
app:post("/kick", function(req)
  local spec = {}
  for k, v in pairs(req.query) do spec[k] = v end
  return 200, tostring(sluice.disconnect(spec))
end)
app:post("/pub/:ch", function(req) sluice.publish(req.params.ch, req.body) return 204 end)
app:get("/stats", function() local st = sluice.stats(); return 200, { n = st.admin_disconnected, tagged = st.tagged_streams } end)
return app
]]

local function kick(port, query)
  local r = client.request(port, "POST", "/kick?" .. query)
  assert.equal(200, r.status, r.body)
  return tonumber(r.body)
end

local function pub(port, ch, text)
  assert.equal(204, client.request(port, "POST", "/pub/" .. ch, nil, text).status)
end

local function read_log(path)
  local lines = {}
  local f = io.open(path, "r")
  if not f then return lines end
  for line in f:lines() do lines[#lines + 1] = cjson.decode(line) end
  f:close()
  return lines
end

describe("sluice.disconnect", function()
  local srv, log_path
  before_each(function()
    log_path = os.tmpname()
    srv = server.start { apps = { ["app.lua"] = APP }, workers = 2,
                         args = { "--no-watch", "--access-log", log_path } }
  end)
  after_each(function()
    srv:stop()
    os.remove(log_path)
  end)

  it("ends exactly the tagged streams on both workers, with the final event, and counts them", function()
    local targets = { pinned.open(srv.port, 0, "/s?user=u1"), pinned.open(srv.port, 1, "/s?user=u1") }
    local others = { pinned.open(srv.port, 0, "/s?user=u2"), pinned.open(srv.port, 1, "/s?user=u2"),
                     pinned.open(srv.port, 1, "/s") }
    for _, s in ipairs(targets) do assert.equal(200, s.status) end
    for _, s in ipairs(others) do assert.equal(200, s.status) end
    assert.equal(2, kick(srv.port, "user=u1&reason=rights%20revoked"))
    for _, s in ipairs(targets) do
      assert.is_true(pinned.wait_text(s, 'event: sluice-disconnect\ndata: {"reason":"rights revoked"}\n'),
                     "worker " .. s.worker .. ": " .. s.text)
      assert.is_true(pinned.wait_closed(s, 5))
    end
    -- The others keep streaming.
    pub(srv.port, "a", "after")
    for _, s in ipairs(others) do
      assert.is_true(pinned.wait_text(s, "data: after"))
      assert.is_false(s.text:find("sluice-disconnect", 1, true) ~= nil)
    end
    -- Nothing left to find: counted once.
    assert.equal(0, kick(srv.port, "user=u1"))
    for _, s in ipairs(others) do pinned.close(s) end
    -- The access log says why each ended.
    local ends
    local deadline = socket.gettime() + 5
    repeat
      ends = {}
      for _, l in ipairs(read_log(log_path)) do
        if l.type == "stream" then ends[l["end"]] = (ends[l["end"]] or 0) + 1 end
      end
      if (ends.client_gone or 0) >= 3 then break end
      socket.sleep(0.05)
    until socket.gettime() > deadline
    assert.equal(2, ends.admin_disconnect)
    assert.equal(3, ends.client_gone)
  end)

  it("matches every criterion given: tags and channel, with the app's event name", function()
    local a = pinned.open(srv.port, 0, "/s?user=u1&tenant=t1&ch=a")
    local b = pinned.open(srv.port, 1, "/s?user=u1&tenant=t1&ch=b")
    local c = pinned.open(srv.port, 1, "/s?user=u1&tenant=t2&ch=b")
    assert.equal(1, kick(srv.port, "user=u1&tenant=t1&channel=b&event=revoked"))
    assert.is_true(pinned.wait_text(b, 'event: revoked\ndata: {"reason":"disconnected"}\n'))
    assert.is_true(pinned.wait_closed(b, 5))
    pub(srv.port, "a", "still-a")
    pub(srv.port, "b", "still-b")
    assert.is_true(pinned.wait_text(a, "data: still-a"))
    assert.is_true(pinned.wait_text(c, "data: still-b"))
    -- A stream tagged after it opened is found, by a channel it
    -- subscribed to before and after the tag.
    local late = pinned.open(srv.port, 1, "/s?late=z&ch=a")
    assert.is_true(pinned.wait_text(late, "retry:"))
    socket.sleep(0.1)
    assert.equal(1, kick(srv.port, "user=z&channel=late"))
    assert.is_true(pinned.wait_closed(late, 5))
    pinned.close(a); pinned.close(c)
  end)

  it("refuses a disconnect with no tag", function()
    local r = client.request(srv.port, "POST", "/kick?channel=a")
    assert.equal(500, r.status)
  end)
end)
