-- Request ids and W3C trace context on the real binary: X-Request-ID kept
-- when well-formed, replaced when not, generated when absent, sent back on
-- every answer and stream, visible to Lua as req.id; a valid traceparent
-- continued with a new span id (same trace id), an invalid one replaced;
-- tracestate passed through with the trace it belongs to. And the
-- server's own log lines as JSON (--log-format json).
local server = require "server"
local client = require "client"
local raw = require "raw"
local cjson = require "cjson"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:get("/ids", function(req)
  return 200, { id = req.id, trace_id = req.trace_id, span_id = req.span_id,
                parent_span_id = req.parent_span_id or "none", traceparent = req.traceparent }
end)

-- An app cannot send a second id of its own.
app:get("/own", function(req)
  return 200, "x", { ["X-Request-ID"] = "from-the-app", traceparent = "00-x" }
end)

-- An app puts the trace id into what it publishes.
app:stream("/s", function(req, s) s:subscribe("traced") end)
app:post("/pub", function(req)
  sluice.publish("traced", { data = { trace_id = req.trace_id } })
  return 202
end)

app:get("/fail", function() error('a "quoted"\nmessage') end)
return app
]]

local TRACE = "0af7651916cd43dd8448eb211c80319c"
local PARENT = "b7ad6b7169203331"
local VALID = "00-" .. TRACE .. "-" .. PARENT .. "-01"

local function ids(srv, headers)
  local r = client.request(srv.port, "GET", "/ids", headers)
  assert.equal(200, r.status)
  return cjson.decode(r.body), r.headers
end

describe("request ids", function()
  local srv
  setup(function() srv = server.start { apps = { ["app.lua"] = APP }, args = { "--heartbeat 0" } } end)
  teardown(function() srv:stop() end)

  it("keeps a well-formed X-Request-ID and sends it back", function()
    local id = "abc-DEF_123.456"
    local body, h = ids(srv, { ["X-Request-ID"] = id })
    assert.equal(id, body.id)
    assert.equal(id, h["x-request-id"])
    local long = string.rep("a", 128)
    assert.equal(long, (ids(srv, { ["X-Request-ID"] = long })).id)
  end)

  it("replaces a malformed one and generates one when absent", function()
    for _, bad in ipairs { "has space", "semi;colon", string.rep("a", 129), "quote\"", "é" } do
      local body, h = ids(srv, { ["X-Request-ID"] = bad })
      assert.matches("^%x+$", body.id, bad)
      assert.equal(32, #body.id, bad)
      assert.equal(body.id, h["x-request-id"])
    end
    local a, b = ids(srv), ids(srv)
    assert.equal(32, #a.id)
    assert.matches("^%x+$", a.id)
    assert.are_not.equal(a.id, b.id)
  end)

  it("sends the ids on every answer: 404, 400, streams, and never twice", function()
    local r = client.request(srv.port, "GET", "/nowhere")
    assert.equal(404, r.status)
    assert.matches("^%x+$", r.headers["x-request-id"])
    assert.matches("^00%-%x+%-%x+%-%x%x$", r.headers.traceparent)
    local bad, _, conn = raw.exchange(srv.port, "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    conn:close()
    assert.equal(400, bad.status)
    assert.matches("\r\nX%-Request%-ID: %x+\r\n", bad.head)
    local s = client.stream(srv.port, "/s", { ["X-Request-ID"] = "stream-1", traceparent = VALID })
    assert.equal(200, s.status)
    assert.equal("stream-1", s.headers["x-request-id"])
    assert.equal(TRACE, s.headers.traceparent:sub(4, 35))
    s:close()
    local own = client.request(srv.port, "GET", "/own", { ["X-Request-ID"] = "mine" })
    assert.equal("mine", own.headers["x-request-id"], "exactly one X-Request-ID, the request's")
    assert.matches("^00%-%x+%-%x+%-%x%x$", own.headers.traceparent)
  end)

  it("continues a valid traceparent with a new span id, and passes tracestate", function()
    local body, h = ids(srv, { traceparent = VALID, tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" })
    assert.equal(TRACE, body.trace_id)
    assert.equal(PARENT, body.parent_span_id)
    assert.equal(16, #body.span_id)
    assert.are_not.equal(PARENT, body.span_id)
    assert.equal("00-" .. TRACE .. "-" .. body.span_id .. "-01", body.traceparent)
    assert.equal(body.traceparent, h.traceparent)
    assert.equal("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", h.tracestate)
  end)

  it("replaces an invalid traceparent, and drops its tracestate", function()
    local invalid = {
      "00-" .. string.rep("0", 32) .. "-" .. PARENT .. "-01",   -- zero trace id
      "00-" .. TRACE .. "-" .. string.rep("0", 16) .. "-01",    -- zero parent id
      "00-" .. TRACE:upper() .. "-" .. PARENT .. "-01",          -- upper-case hex
      "ff-" .. TRACE .. "-" .. PARENT .. "-01",                  -- version ff
      "00-" .. TRACE .. "-" .. PARENT .. "-01-extra",            -- too long
      "00-" .. TRACE .. "-" .. PARENT,                           -- no flags
    }
    for _, tp in ipairs(invalid) do
      local body, h = ids(srv, { traceparent = tp, tracestate = "a=b" })
      assert.are_not.equal(TRACE, body.trace_id, tp)
      assert.are_not.equal(TRACE:lower(), body.trace_id, tp)
      assert.matches("^%x+$", body.trace_id)
      assert.equal(32, #body.trace_id)
      assert.equal("none", body.parent_span_id, tp)
      assert.equal("00-" .. body.trace_id .. "-" .. body.span_id .. "-00", h.traceparent)
      assert.is_nil(h.tracestate, tp)
    end
  end)

  it("lets an app put the trace id into the events it publishes", function()
    local s = client.stream(srv.port, "/s")
    local r = client.request(srv.port, "POST", "/pub", { traceparent = VALID })
    assert.equal(202, r.status)
    local ev = s:next_event(5)
    s:close()
    assert.equal(TRACE, cjson.decode(ev.data).trace_id)
  end)
end)

describe("--log-format", function()
  it("writes the server's own lines as JSON objects", function()
    local srv = server.start { apps = { ["app.lua"] = APP }, args = { "--log-format json" } }
    assert.equal(500, client.request(srv.port, "GET", "/fail").status)
    srv:stop()
    local n, saw_error = 0, false
    for line in srv:log():gmatch("[^\n]+") do
      local ok, v = pcall(cjson.decode, line)
      assert.is_true(ok and type(v) == "table", "not JSON: " .. line)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", v.time)
      assert.is_truthy(({ debug = 1, info = 1, warn = 1, error = 1 })[v.level], line)
      assert.equal("string", type(v.msg))
      if v.level == "error" and v.msg:find('a "quoted"\nmessage', 1, true) then saw_error = true end
      n = n + 1
    end
    assert.is_true(n >= 3, "too few lines")
    assert.is_true(saw_error, "the script error, quotes and line break kept")
  end)

  it("stays text by default", function()
    local srv = server.start { apps = { ["app.lua"] = APP } }
    srv:stop()
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z %[info%] ", srv:log())
  end)
end)
