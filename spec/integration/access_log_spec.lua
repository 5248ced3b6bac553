-- The access log (--access-log) on the real binary: one JSON line per
-- answered request and one per stream when it ends, with the ids, route,
-- status, bytes, duration, the app's req:log fields, and for streams the
-- channels, events written, how the stream ended and whether it resumed.
-- Never a token or a cookie value. SIGUSR1 reopens the file.
local server = require "server"
local client = require "client"
local multi = require "multi"
local raw = require "raw"
local jwt = require "sluice.jwt"
local cjson = require "cjson"
local socket = require "socket"

local SECRET = "access-log-spec-secret-long-enough-123"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
local SECRET = "]] .. SECRET .. [["

app:history("h.", { size = 100 })

app:get("/plain/:name", function(req)
  req:log("user", req.params.name)
  req:log("tenant", "acme")
  req:log("n", 42)
  req:log("vip", true)
  return 200, "hello " .. req.params.name
end)

app:get("/many", function(req)
  local kept = 0
  for i = 1, 20 do if req:log("k" .. i, i) then kept = kept + 1 end end
  return 200, tostring(kept)
end)

app:stream("/s/:ch", function(req, s)
  req:log("user", "sub-" .. req.params.ch)
  s:subscribe(req.params.ch)
end)

app:stream("/closing", function(req, s)
  s:send { event = "bye", data = "x" }
  s:close()
end)

app:stream("/boom", function(req, s)
  s:subscribe("boom")
  s:after(0.05, function() error("stream timer fails") end)
end)

app:stream("/later", function(req, s)
  s:subscribe("later")
  s:after(0.05, function() req:log("late", "yes") end)
end)

app:stream("/orders/:user", function(req, s)
  s:subscribe("orders." .. req.params.user)
end, { auth = { algs = { "HS256" }, secret = SECRET, from = { "cookie", "query" } } })

app:post("/pub/:ch", function(req)
  local n = tonumber(req.query.n) or 1
  local size = tonumber(req.query.size) or 10
  local data = string.rep("x", size)
  local id
  for _ = 1, n do id = sluice.publish(req.params.ch, { data = data }) end
  return 200, { id = tostring(id) }
end)

return app
]]

local function token(claims)
  claims.exp = claims.exp or (os.time() + 3600)
  return jwt.sign(claims, { alg = "HS256", secret = SECRET })
end

local function read_lines(path)
  local f = io.open(path, "rb")
  if not f then return {} end
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  return lines
end

-- The decoded lines of the file whose "id" is id (every line must parse).
local function entries(path, id)
  local out = {}
  for _, line in ipairs(read_lines(path)) do
    local ok, v = pcall(cjson.decode, line)
    assert(ok and type(v) == "table", "not a JSON object: " .. line)
    if v.id == id then out[#out + 1] = v end
  end
  return out
end

-- Waits (bounded) for the line with this id (of this type).
local function wait_entry(path, id, typ, timeout)
  local found
  raw.eventually(function()
    for _, e in ipairs(entries(path, id)) do
      if typ == nil or e.type == typ then found = e; return true end
    end
    return false
  end, timeout or 5)
  assert(found, ("no access-log line with id %s (type %s) in:\n%s"):format(
    id, tostring(typ), table.concat(read_lines(path), "\n")))
  return found
end

local seq = 0
local function new_id(tag)
  seq = seq + 1
  return ("spec-%s-%d"):format(tag, seq)
end

describe("access log", function()
  local srv, dir, path
  setup(function()
    dir = server.tmpdir()
    path = dir .. "/access.log"
    srv = server.start { apps = { ["app.lua"] = APP },
                         args = { "--heartbeat 0", "--max-queued-bytes 4096",
                                  "--access-log " .. path, "--shutdown-grace 2" } }
  end)
  teardown(function()
    if srv then srv:stop() end
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("writes one JSON line per plain request with its fields", function()
    local id = new_id("plain")
    local r = client.request(srv.port, "GET", "/plain/bob?lang=en", { ["X-Request-ID"] = id })
    assert.equal(200, r.status)
    local e = wait_entry(path, id)
    assert.equal("request", e.type)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", e.time)
    assert.equal("GET", e.method)
    assert.equal("/plain/:name", e.route)
    assert.equal("/plain/bob", e.path)
    assert.equal("lang=en", e.query)
    assert.equal(200, e.status)
    assert.equal("127.0.0.1", e.remote)
    assert.equal("string", type(e.variant))
    assert.is_true(e.bytes > #"hello bob" + 40, "bytes counts the head and the body")
    assert.equal("number", type(e.duration_ms))
    assert.is_true(e.duration_ms >= 0 and e.duration_ms < 5000)
    assert.matches("^%x+$", e.trace_id)
    assert.equal(32, #e.trace_id)
    assert.equal(16, #e.span_id)
    assert.same({ user = "bob", tenant = "acme", n = 42, vip = true }, e.fields)
    assert.equal(1, #entries(path, id), "one line per request")
  end)

  it("bounds what an app may add: a few keys", function()
    local id = new_id("many")
    local r = client.request(srv.port, "GET", "/many", { ["X-Request-ID"] = id })
    assert.equal("8", r.body)
    local e = wait_entry(path, id)
    local n = 0
    for _ in pairs(e.fields) do n = n + 1 end
    assert.equal(8, n)
  end)

  it("logs answers the router and the core give (404, 400)", function()
    local id = new_id("404")
    assert.equal(404, client.request(srv.port, "GET", "/nowhere", { ["X-Request-ID"] = id }).status)
    local e = wait_entry(path, id)
    assert.equal(404, e.status)
    assert.equal(cjson.null, e.route)
    assert.equal("/nowhere", e.path)
    local c = raw.connect(srv.port)
    c:send("GET /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    local resp = c:read_response()
    c:close()
    assert.equal(400, resp.status)
    local rid = resp.headers["x-request-id"]
    assert.is_truthy(rid)
    assert.equal(400, wait_entry(path, rid).status)
  end)

  it("logs a refused request (401) without the token or the cookie", function()
    local id = new_id("401")
    local r = client.request(srv.port, "GET", "/orders/42", { ["X-Request-ID"] = id })
    assert.equal(401, r.status)
    local e = wait_entry(path, id)
    assert.equal(401, e.status)
    assert.equal("/orders/:user", e.route)
    assert.equal("request", e.type)
  end)

  it("logs a stream when the client goes, with its channels and events", function()
    local id = new_id("gone")
    local s = client.stream(srv.port, "/s/ch.gone", { ["X-Request-ID"] = id })
    assert.equal(200, s.status)
    client.request(srv.port, "POST", "/pub/ch.gone?n=3")
    assert.equal(3, #s:events(3, 5))
    s:close()
    local e = wait_entry(path, id, "stream")
    assert.equal("client_gone", e["end"])
    assert.same({ "ch.gone" }, e.channels)
    assert.equal(3, e.events)
    assert.is_false(e.resumed)
    assert.is_nil(e.resume)
    assert.equal("/s/:ch", e.route)
    assert.equal(200, e.status)
    assert.is_true(e.bytes > 3 * 10, "bytes written over the stream's life")
    assert.equal("sub-ch.gone", e.fields.user)
    assert.is_true(e.duration_ms > 0)
  end)

  it("logs a stream the app closed", function()
    local id = new_id("app")
    local s = client.stream(srv.port, "/closing", { ["X-Request-ID"] = id })
    assert.equal(1, #s:events(1, 5))
    local e = wait_entry(path, id, "stream")
    s:close()
    assert.equal("closed_by_app", e["end"])
    assert.equal(1, e.events)
  end)

  it("logs a stream ended by a script error", function()
    local id = new_id("boom")
    local s = client.stream(srv.port, "/boom", { ["X-Request-ID"] = id })
    local e = wait_entry(path, id, "stream")
    s:close()
    assert.equal("script_error", e["end"])
  end)

  it("takes req:log fields set after the stream opened", function()
    local id = new_id("later")
    local s = client.stream(srv.port, "/later", { ["X-Request-ID"] = id })
    socket.sleep(0.3)
    s:close()
    local e = wait_entry(path, id, "stream")
    assert.equal("yes", e.fields.late)
  end)

  it("logs a stream whose token expired", function()
    local id = new_id("exp")
    local s = client.stream(srv.port, "/orders/42?access_token=" .. token { sub = "42", exp = os.time() + 1 },
                            { ["X-Request-ID"] = id })
    assert.equal(200, s.status)
    local e = wait_entry(path, id, "stream", 8)
    s:close()
    assert.equal("token_expired", e["end"])
    assert.equal("access_token=[redacted]", e.query)
  end)

  it("logs a slow consumer", function()
    local id = new_id("slow")
    local s = multi.open(srv.port, "/s/ch.slow", { ["X-Request-ID"] = id }, { rcvbuf = 4096, mss = 536 })
    assert.equal(200, s.status)
    client.request(srv.port, "POST", "/pub/ch.slow?n=2000&size=1024")
    local e = wait_entry(path, id, "stream")
    s.sock:close()
    assert.equal("slow_consumer", e["end"])
    assert.is_true(e.events < 2000)
  end)

  it("flags resumed streams, exact or reset", function()
    local first = client.stream(srv.port, "/s/h.res")
    client.request(srv.port, "POST", "/pub/h.res?n=2")
    local evs = first:events(2, 5)
    first:close()
    local exact_id, reset_id = new_id("exact"), new_id("reset")
    local exact = client.stream(srv.port, "/s/h.res", { ["X-Request-ID"] = exact_id, ["Last-Event-ID"] = evs[1].id })
    assert.equal(1, #exact:events(1, 5))
    exact:close()
    local reset = client.stream(srv.port, "/s/h.res", { ["X-Request-ID"] = reset_id, ["Last-Event-ID"] = "12" })
    assert.equal("sluice-reset", reset:next_event(5).event)
    reset:close()
    local e1 = wait_entry(path, exact_id, "stream")
    assert.is_true(e1.resumed)
    assert.equal("exact", e1.resume)
    assert.equal(evs[1].id, e1.last_event_id)
    local e2 = wait_entry(path, reset_id, "stream")
    assert.is_true(e2.resumed)
    assert.equal("reset", e2.resume)
    assert.equal("12", e2.last_event_id)
  end)

  it("never writes a token or a cookie value", function()
    local t = token { sub = "7" }
    local id1, id2 = new_id("tok"), new_id("ck")
    local s = client.stream(srv.port, "/orders/7?access_token=" .. t .. "&my_jwt=" .. t .. "&k=v",
                            { ["X-Request-ID"] = id1 })
    assert.equal(200, s.status)
    s:close()
    local s2 = client.stream(srv.port, "/orders/7", { ["X-Request-ID"] = id2,
                             Cookie = "access_token=" .. t .. "; session=cookie-secret-value" })
    assert.equal(200, s2.status)
    s2:close()
    client.request(srv.port, "GET", "/plain/x?password=hunter2&api_key=abc123&note=" .. t)
    local e = wait_entry(path, id1, "stream")
    wait_entry(path, id2, "stream")
    assert.equal("access_token=[redacted]&my_jwt=[redacted]&k=v", e.query)
    local text = table.concat(read_lines(path), "\n")
    assert.is_nil(text:find(t, 1, true), "the token is in the access log")
    assert.is_nil(text:find(t:sub(1, 20), 1, true), "part of the token is in the access log")
    assert.is_nil(text:find("cookie-secret-value", 1, true), "a cookie value is in the access log")
    assert.is_nil(text:find("hunter2", 1, true), "a password is in the access log")
    assert.is_nil(text:find("abc123", 1, true), "a key is in the access log")
    assert.is_nil(text:lower():find("cookie", 1, true), "a header is in the access log")
  end)

  it("reopens the file on SIGUSR1 (logrotate)", function()
    local before = new_id("rot1")
    client.request(srv.port, "GET", "/plain/a", { ["X-Request-ID"] = before })
    wait_entry(path, before)
    assert.is_true(os.rename(path, path .. ".1"))
    srv:signal("USR1")
    assert.is_true(srv:wait_log("reopened the access log", 5, true))
    local after = new_id("rot2")
    client.request(srv.port, "GET", "/plain/b", { ["X-Request-ID"] = after })
    wait_entry(path, after)
    assert.equal(1, #entries(path .. ".1", before))
    assert.equal(0, #entries(path .. ".1", after), "a line after SIGUSR1 went to the renamed file")
    assert.equal(0, #entries(path, before))
    assert.is_true(srv:running(), "SIGUSR1 must not end the server")
  end)

  it("logs the streams a shutdown ends (last: stops the server)", function()
    local id = new_id("shut")
    local s = client.stream(srv.port, "/s/ch.shut", { ["X-Request-ID"] = id })
    assert.equal(200, s.status)
    client.request(srv.port, "POST", "/pub/ch.shut?n=1")
    assert.equal(1, #s:events(1, 5))
    srv:signal("TERM")
    local e = wait_entry(path, id, "stream", 8)
    s:close()
    assert.equal("shutdown", e["end"])
    assert.is_true(srv:wait_exit(10))
    srv:stop()
    srv = nil
  end)
end)
