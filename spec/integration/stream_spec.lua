-- SSE streams on the real binary: headers, framing, heartbeats, timers.
local server = require "server"
local client = require "client"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:stream("/events", function(req, s)
  s:header("Access-Control-Allow-Origin", "*")
  s:subscribe("main")
end)

-- sends every payload of the framing table at open
app:stream("/tricky", function(req, s)
  s:send { event = "multi", data = "line one\nline two\nline three" }
  s:send { event = "crlf", data = "a\r\nb\rc\nd" }
  s:send { event = "empty", data = "" }
  s:send { event = "unicode", data = "héllo ✓ 日本語 🚀" }
  s:send { event = "trailing", data = "ends with newline\n" }
  s:send { event = "spaces", data = "  two leading spaces" }
  s:send { event = "json", data = { n = 1 } }
  s:send { id = "custom-7", data = "with id" }
end)

app:stream("/bad-event", function(req, s)
  local ok, err = pcall(s.send, s, { event = "a\nb", data = "x" })
  s:send { event = "result", data = tostring(err) }
  local ok2, err2 = pcall(s.send, s, { id = "1\r2", data = "x" })
  s:send { event = "result", data = tostring(err2) }
end)

app:stream("/big", function(req, s)
  s:send { event = "big", data = string.rep("x", 1024 * 1024) }
end)

app:stream("/quiet", function(req, s) s:heartbeat(0.2) end)

app:stream("/clock", function(req, s)
  local n = 0
  s:every(0.05, function()
    n = n + 1
    s:send { event = "tick", data = tostring(n) }
    if n == 3 then s:close() end
  end)
end)

app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { event = req.query.event, data = req.body })
  return 202, { id = id, subscribers = n }
end)

return app
]]

describe("SSE streams", function()
  local srv
  setup(function() srv = server.start { apps = { ["app.lua"] = APP } } end)
  teardown(function() srv:stop() end)

  it("answers with the SSE headers, chunked, and a retry hint at once", function()
    local s = client.stream(srv.port, "/events")
    assert.equal(200, s.status)
    assert.equal("text/event-stream", s.headers["content-type"])
    assert.equal("no-cache", s.headers["cache-control"])
    assert.equal("no", s.headers["x-accel-buffering"])
    assert.equal("chunked", s.headers["transfer-encoding"])
    assert.equal("*", s.headers["access-control-allow-origin"])
    assert.is_nil(s.headers["content-length"])
    -- the first chunk arrives without any event being published
    assert.is_true(s:fill(2))
    assert.equal("retry: 3000\n\n", s.buf)
    s:close()
  end)

  it("delivers a published event to a subscriber", function()
    local s = client.stream(srv.port, "/events")
    local r = client.request(srv.port, "POST", "/pub/main?event=greeting", {}, "hello")
    assert.equal(202, r.status)
    assert.matches('"subscribers":1', r.body)
    local ev = s:next_event(2)
    assert.same("greeting", ev.event)
    assert.same("hello", ev.data)
    assert.matches("^%d+$", ev.id)
    s:close()
  end)

  it("frames tricky payloads so an EventSource client reads them back", function()
    local s = client.stream(srv.port, "/tricky")
    local evs = s:events(8, 3)
    assert.equal(8, #evs)
    assert.same({ "multi", "line one\nline two\nline three" }, { evs[1].event, evs[1].data })
    -- CRLF, CR and LF are all line breaks
    assert.same({ "crlf", "a\nb\nc\nd" }, { evs[2].event, evs[2].data })
    assert.same({ "empty", "" }, { evs[3].event, evs[3].data })
    assert.same({ "unicode", "héllo ✓ 日本語 🚀" }, { evs[4].event, evs[4].data })
    assert.same({ "trailing", "ends with newline\n" }, { evs[5].event, evs[5].data })
    assert.same({ "spaces", "  two leading spaces" }, { evs[6].event, evs[6].data })
    assert.same({ "json", '{"n":1}' }, { evs[7].event, evs[7].data })
    assert.same({ "custom-7", "with id" }, { evs[8].id, evs[8].data })
    s:close()
  end)

  it("refuses an event or id with a line break with a clear Lua error", function()
    local s = client.stream(srv.port, "/bad-event")
    local evs = s:events(2, 3)
    assert.equal(2, #evs)
    assert.matches("event name contains a line break", evs[1].data)
    assert.matches("event id contains a line break", evs[2].data)
    s:close()
  end)

  it("delivers a 1 MiB payload whole", function()
    local s = client.stream(srv.port, "/big")
    local ev = s:next_event(5)
    assert.equal("big", ev.event)
    assert.equal(1024 * 1024, #ev.data)
    assert.equal(string.rep("x", 1024 * 1024), ev.data)
    s:close()
  end)

  it("sends heartbeat comments on a quiet stream", function()
    local s = client.stream(srv.port, "/quiet")
    local n = s:wait_comments(3, 3)
    assert.is_true(n >= 3, "expected 3 heartbeats, got " .. n)
    s:close()
  end)

  it("runs stream timers and ends the stream with the terminating chunk", function()
    local s = client.stream(srv.port, "/clock")
    local evs = s:events(3, 3)
    assert.same({ "1", "2", "3" }, { evs[1].data, evs[2].data, evs[3].data })
    assert.is_nil(s:next_event(2))
    assert.is_true(s.ended)
    s:close()
  end)

  it("streams to an HTTP/1.0 client without chunking, closing at the end", function()
    local s = client.stream(srv.port, "/clock", nil, { http10 = true })
    assert.equal(200, s.status)
    assert.is_false(s.chunked)
    assert.equal("close", s.headers.connection)
    local evs = s:events(3, 3)
    assert.equal(3, #evs)
    assert.is_nil(s:next_event(2))
    assert.is_true(s.ended)
    s:close()
  end)
end)
