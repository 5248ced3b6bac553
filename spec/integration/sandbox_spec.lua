-- What app scripts can and cannot do to the server: every way script code
-- is called (message handlers, metamethods, finalizers) stays under the
-- CPU budget; calls that would block every client or kill the process are
-- refused or turned into a drain; scripts do not share the standard
-- library with each other.
local server = require "server"
local client = require "client"
local raw = require "raw"
local socket = require "socket"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")

-- One request with a bounded wait: the response, or nil and why.
local function request(port, path, headers, timeout)
  local c = client.connect(port, nil, timeout or 3)
  c:send(client.build("GET", path, headers))
  local r, err = client.read_response(c, "GET")
  c:close()
  return r, err
end

-- Answered, and within a second (the bug gives a hang or a 2 s stall).
local function prompt(port, path)
  local t0 = socket.gettime()
  local r = request(port, path, nil, 3)
  return r, socket.gettime() - t0
end

local ESCAPES = [[
local sluice = require "sluice"
local app = sluice.app()
local function spin() while true do end end
app:get("/ok", function() return "ok" end)
app:get("/xpcall", function() return tostring(xpcall(spin, spin)) end)
app:get("/tostring", function()
  local ok, u = pcall(newproxy, true)
  if not ok then error(u) end
  getmetatable(u).__tostring = spin
  return 200, u
end)
app:get("/file-tostring", function()
  local mt = getmetatable(io.stdout)
  if type(mt) ~= "table" then error("the file metatable is hidden") end
  mt.__tostring = spin
  return 200, io.stdout
end)
app:get("/index-headers", function()
  return 200, "x", setmetatable({}, { __index = spin })
end, { cors = { origins = { "https://a.example" } } })
app:get("/plant-gc", function()
  local ok, u = pcall(newproxy, true)
  if ok then getmetatable(u).__gc = spin end
  local okf, ffi = pcall(require, "ffi")
  if okf then ffi.gc(ffi.new("char[1]"), spin) end
  return tostring(ok) .. " " .. tostring(okf)
end)
return app
]]

describe("the CPU budget covers every call into script code", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = ESCAPES }, args = { "--lua-cpu-budget", "100" } }
  end)
  teardown(function() srv:stop() end)

  it("stops an xpcall whose message handler loops too, and keeps the process", function()
    local r = request(srv.port, "/xpcall")
    assert.is_truthy(r, "no answer")
    assert.is_true(r.status == 500 or r.status == 200)
    socket.sleep(1.2)   -- the process used to abort after ten budgets
    assert.is_true(srv:running())
    assert.equal("ok", request(srv.port, "/ok").body)
  end)

  it("stops a __tostring that loops in what a handler returned", function()
    local r = request(srv.port, "/tostring")
    assert.is_truthy(r, "no answer: the server hangs in __tostring")
    assert.equal(500, r.status)
    local ok = request(srv.port, "/ok")
    assert.equal("ok", ok and ok.body)
  end)

  it("does not let a script patch the metatable of files the server uses", function()
    local r = request(srv.port, "/file-tostring")
    assert.is_truthy(r, "no answer: the server hangs in __tostring")
    assert.equal(500, r.status)
    local ok = request(srv.port, "/ok")
    assert.equal("ok", ok and ok.body)
  end)

  it("stops an __index that loops in the headers a handler returned", function()
    local r = request(srv.port, "/index-headers", { Origin = "https://a.example" })
    assert.is_truthy(r, "no answer: the server hangs in __index")
    assert.is_true(r.status == 200 or r.status == 500)
    local ok = request(srv.port, "/ok")
    assert.equal("ok", ok and ok.body)
  end)

  it("leaves no looping finalizer for a reload to hang in", function()
    local r = request(srv.port, "/plant-gc")
    assert.is_truthy(r)
    srv:write_app("other.lua", 'local a = require("sluice").app() a:get("/other", function() return "o" end) return a')
    local got
    raw.eventually(function()
      got = request(srv.port, "/other", nil, 1)
      return got and got.status == 200
    end, 4)
    assert.is_truthy(got, "no answer after the reload")
    assert.equal("o", got.body)
    assert.equal("ok", request(srv.port, "/ok").body)
  end)
end)

local BLOCKING = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/ok", function() return "ok" end)
app:get("/execute", function() os.execute("sleep 2") return "slept" end)
app:get("/popen", function() local p = io.popen("sleep 2") p:read("*a") return "read" end)
app:get("/stdin", function() return tostring(io.read("*l")) end)
return app
]]

describe("calls that would block every client", function()
  local srv
  setup(function() srv = server.start { apps = { ["app.lua"] = BLOCKING } } end)
  teardown(function() srv:stop() end)

  for _, case in ipairs { { "/execute", "os%.execute is not available to app scripts" },
                          { "/popen", "io%.popen is not available to app scripts" },
                          { "/stdin", "io%.read is not available to app scripts" } } do
    it(("refuses %s with a clear error, and a concurrent request is answered at once"):format(case[1]), function()
      local c = client.connect(srv.port, nil, 5)
      c:send(client.build("GET", case[1]))
      local r, dt = prompt(srv.port, "/ok")
      assert.is_truthy(r)
      assert.equal("ok", r.body)
      assert.is_true(dt < 1, ("the concurrent request waited %.2f s"):format(dt))
      local answer = client.read_response(c, "GET")
      c:close()
      assert.equal(500, answer.status)
      assert.is_true(srv:wait_log("GET " .. case[1] .. ": [^\n]*app%.lua:%d+: " .. case[2], 2))
    end)
  end
end)

local A = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/a/patch", function()
  string.rep = function() return "patched" end
  local ok = pcall(function() getmetatable("").__index.rep = string.rep end)
  local ok2 = pcall(function() sluice.publish = nil end)
  return string.rep("x", 2) .. " " .. tostring(ok) .. " " .. tostring(ok2)
end)
app:get("/a/rep", function() return string.rep("x", 2) .. ("y"):rep(2) end)
return app
]]

local B = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/b/rep", function() return string.rep("x", 2) .. ("y"):rep(2) .. type(sluice.publish) end)
return app
]]

describe("each script has its own view of the standard library", function()
  local srv
  setup(function() srv = server.start { apps = { ["a.lua"] = A, ["b.lua"] = B } } end)
  teardown(function() srv:stop() end)

  it("keeps string.rep = f in script A out of script B, of string methods, and of A's reload", function()
    assert.equal("patched false false", request(srv.port, "/a/patch").body)
    assert.equal("patchedyy", request(srv.port, "/a/rep").body)
    assert.equal("xxyyfunction", request(srv.port, "/b/rep").body)
    srv:write_app("a.lua", A .. "\n-- changed\n")
    assert.is_true(srv:wait_log("reload done", 3))
    local r
    raw.eventually(function()
      r = request(srv.port, "/a/rep")
      return r and r.body == "xxyy"
    end, 3)
    assert.equal("xxyy", r and r.body)
  end)
end)

-- os.exit from a script drains as SIGTERM does; the exit status is
-- recorded by the shell that started the server.
describe("os.exit from a script", function()
  local dir, code_path, log_path, pid_path
  after_each(function()
    local pid = tonumber((server.read_file(pid_path) or ""):match("%d+") or "")
    if pid and server.alive(pid) then os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
    os.execute("rm -rf " .. dir)
  end)

  it("logs, gives open streams their goodbye and exits 0", function()
    dir = server.tmpdir()
    os.execute("mkdir -p " .. dir .. "/apps")
    server.write_file(dir .. "/apps/app.lua", [[
local app = require("sluice").app()
app:stream("/events", function(req, s) s:subscribe("main") end)
app:get("/quit", function() os.exit(3) end)
return app
]])
    code_path, log_path, pid_path = dir .. "/code", dir .. "/sluice.log", dir .. "/sluice.pid"
    local inner = ("%s --listen 127.0.0.1:0 --apps %s/apps --lua-path %s/lua --pid-file %s --no-watch --retry 1500 >%s 2>&1; echo $? >%s")
      :format(BIN, dir, ROOT, pid_path, log_path, code_path)
    os.execute(("sh -c '%s' </dev/null >/dev/null 2>&1 &"):format(inner))
    local port
    raw.eventually(function()
      port = tonumber(((server.read_file(log_path) or ""):match("listening on 127%.0%.0%.1:(%d+)")))
      return port ~= nil
    end, 10)
    assert.is_truthy(port, "server did not start")
    local c = assert(raw.connect(port))
    assert(c:send("GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n"))
    assert(c:wait_for("retry: 1500\n\n", 3))
    request(port, "/quit")
    assert.is_true(c:wait_closed(5), "the stream was not ended")
    assert.is_truthy(c.buf:find("0\r\n\r\n", 1, true), "no terminating chunk: " .. c.buf)
    local code
    raw.eventually(function()
      code = tonumber(((server.read_file(code_path) or ""):match("%d+")))
      return code ~= nil
    end, 8)
    assert.equal(0, code)
    assert.is_truthy((server.read_file(log_path) or ""):find("app%.lua:3 called os%.exit%(3%): draining"))
  end)
end)

-- The route's policy (CORS, authorization, rollout) runs library code and
-- script callbacks on every request: under the same budget as handlers.
local POLICY = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/ok", function() return "ok" end)
app:get("/split", function() return "served" end, {
  rollout = { variants = { "stable", "green" }, split = { green = 50 },
              key = function(req) while true do end end },
})
app:get("/split", function() return "green" end, { variant = "green" })
return app
]]

describe("a route's policy", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = POLICY }, args = { "--lua-cpu-budget", "100" } }
  end)
  teardown(function() srv:stop() end)

  it("runs under the CPU budget: a rollout key that loops is stopped with a 500", function()
    local r = request(srv.port, "/split")
    assert.is_truthy(r, "no answer: the policy loops outside the budget")
    assert.equal(500, r.status)
    assert.is_true(srv:wait_log("GET /split: [^\n]*app%.lua:6: script exceeded its CPU budget", 2))
    local ok = request(srv.port, "/ok")
    assert.equal("ok", ok and ok.body)
  end)
end)
