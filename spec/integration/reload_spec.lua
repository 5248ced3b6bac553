-- Hot reload: scripts change under a running server without dropping a
-- stream or losing an event; broken edits keep the previous version.
local server = require "server"
local client = require "client"
local socket = require "socket"
local json = require "cjson"

-- Publishes a numbered event 100 times a second on channel "flow".
local PUBLISHER = [[
local sluice = require "sluice"
local app = sluice.app()
local seq = 0
app:every(0.01, function()
  seq = seq + 1
  sluice.publish("flow", { data = tostring(seq) })
end)
app:get("/seq", function() return 200, tostring(seq) end)
return app
]]

local function routes(version, mask_rules)
  return ([[
local sluice = require "sluice"
local app = sluice.app()
app:view("public", { mask = %s })
app:stream("/flow", function(req, s) s:subscribe("flow") end)
app:stream("/orders", function(req, s) s:subscribe("orders", { view = "public" }) end)
app:post("/orders", function(req) sluice.publish("orders", req.body) return 202 end)
app:get("/version", function() return 200, "%s" end)
return app
]]):format(mask_rules or '{ { "phone", "phone" } }', version)
end

local function version(srv)
  return client.request(srv.port, "GET", "/version").body
end

-- Polls /version until it says want (bounded); returns seconds taken.
local function wait_version(srv, want, timeout)
  local t0 = socket.gettime()
  while socket.gettime() - t0 < (timeout or 3) do
    if version(srv) == want then return socket.gettime() - t0 end
    socket.sleep(0.02)
  end
  return nil
end

describe("hot reload", function()
  local srv
  before_each(function()
    srv = server.start {
      apps = { ["pub.lua"] = PUBLISHER, ["routes.lua"] = routes("v1") },
      args = { "--reload-debounce", "0.05" },
    }
  end)
  after_each(function() srv:stop() end)

  it("keeps 500 open streams and every event while a script is edited", function()
    local streams = {}
    for i = 1, 500 do
      streams[i] = client.stream(srv.port, "/flow")
      assert.equal(200, streams[i].status)
    end
    socket.sleep(0.3)
    srv:write_app("routes.lua", routes("v2"))
    local took = wait_version(srv, "v2", 3)
    assert.is_truthy(took, "the edit was not picked up")
    assert.is_true(took < 1, "a new request saw the edit only after " .. took .. " s")
    socket.sleep(0.3)
    srv:write_app("routes.lua", routes("v3"))
    assert.is_truthy(wait_version(srv, "v3", 3))
    socket.sleep(0.3)
    -- Every stream is still open and saw a gap-free run of events with
    -- increasing ids, up to the sequence number published by now.
    local target = tonumber(client.request(srv.port, "GET", "/seq").body)
    local checked = 0
    for i, s in ipairs(streams) do
      local evs = {}
      local deadline = socket.gettime() + 5
      while socket.gettime() < deadline do
        local ev = s:next_event(1)
        if not ev then break end
        evs[#evs + 1] = ev
        if tonumber(ev.data) >= target then break end
      end
      assert.is_false(s.ended, "stream " .. i .. " was closed")
      assert.is_true(#evs >= 50, "stream " .. i .. " got only " .. #evs .. " events")
      for j = 2, #evs do
        assert.equal(tonumber(evs[j - 1].data) + 1, tonumber(evs[j].data), "gap or duplicate in stream " .. i)
        assert.is_true(tonumber(evs[j].id) > tonumber(evs[j - 1].id))
      end
      checked = checked + 1
      s:close()
    end
    assert.equal(500, checked)
  end)

  it("keeps the previous version when an edit is broken, and logs where", function()
    srv:write_app("routes.lua", routes("v2"):gsub("return app", "return app end"))
    assert.is_true(srv:wait_log("reload failed, keeping the previous version: [^\n]*routes%.lua:%d+", 3))
    assert.equal("v1", version(srv))
    srv:write_app("routes.lua", 'error("refusing to load")')
    assert.is_true(srv:wait_log("routes%.lua:1: refusing to load", 3))
    assert.equal("v1", version(srv))
    srv:write_app("routes.lua", routes("v4"))
    assert.is_truthy(wait_version(srv, "v4", 3))
  end)

  it("applies a masking fix to an open stream from its next event", function()
    local s = client.stream(srv.port, "/orders")
    local payload = json.encode { phone = "13812345678", email = "jane@example.com" }
    client.request(srv.port, "POST", "/orders", {}, payload)
    local before = json.decode(s:next_event(2).data)
    assert.equal("138****5678", before.phone)
    assert.equal("jane@example.com", before.email)   -- the leak being fixed
    srv:write_app("routes.lua", routes("v2", '{ { "phone", "phone" }, { "email", "email" } }'))
    assert.is_truthy(wait_version(srv, "v2", 3))
    client.request(srv.port, "POST", "/orders", {}, payload)
    local after = json.decode(s:next_event(2).data)
    assert.equal("j***@example.com", after.email)
    assert.is_false(s.ended)
    s:close()
  end)

  it("reloads on SIGHUP and with `sluice reload`", function()
    srv:stop()
    srv = server.start { apps = { ["routes.lua"] = routes("v1") } , args = { "--no-watch" } }
    local pidfile = srv.dir .. "/sluice.pid"
    server.write_file(pidfile, tostring(srv.pid))
    server.write_file(srv.apps .. "/routes.lua", routes("v2"))
    socket.sleep(0.3)
    assert.equal("v1", version(srv))   -- not watching: nothing yet
    srv:signal("HUP")
    assert.is_truthy(wait_version(srv, "v2", 3))
    server.write_file(srv.apps .. "/routes.lua", routes("v3"))
    local out = server.sh(("%s/sluice reload --pid-file %s 2>&1"):format(os.getenv("SLUICE_ROOT") or ".", pidfile))
    assert.matches("sent SIGHUP", out)
    assert.is_truthy(wait_version(srv, "v3", 3))
  end)

  it("frees old generations: Lua memory stays flat over 200 reloads", function()
    srv:stop()
    srv = server.start { apps = { ["routes.lua"] = routes("v0") }, args = { "--no-watch" } }
    local function memory()
      return json.decode(client.request(srv.port, "GET", "/stats-memory").body)
    end
    -- Compiled traces are LuaJIT's cache (bounded by its own limits) and
    -- grow with traffic, reload or not: flush them to see what scripts hold.
    local stats_route = 'app:get("/stats-memory", function() jit.flush() collectgarbage() collectgarbage() return 200, { m = sluice.stats().lua_memory } end)\n'
    local function version_src(i)
      return routes("v" .. i):gsub("return app\n$", stats_route .. "return app\n")
    end
    -- Warm up first: the JIT compiling the runtime's own hot paths takes
    -- memory in the first few hundred requests, reload or not.
    for i = 1, 30 do
      server.write_file(srv.apps .. "/routes.lua", version_src(i))
      srv:signal("HUP")
      assert.is_truthy(wait_version(srv, "v" .. i, 3))
    end
    local base = memory().m
    for i = 31, 230 do
      server.write_file(srv.apps .. "/routes.lua", version_src(i))
      srv:signal("HUP")
      assert.is_truthy(wait_version(srv, "v" .. i, 3))
    end
    local final = memory().m
    assert.is_true(final < base * 1.10, ("Lua memory %d -> %d after 200 more reloads"):format(base, final))
  end)
end)

describe("sluice --check", function()
  local ROOT = os.getenv("SLUICE_ROOT") or "."
  local function check(files)
    local dir = server.tmpdir()
    for name, src in pairs(files) do server.write_file(dir .. "/" .. name, src) end
    local out = server.sh(("%s/sluice --check %s --lua-path %s/lua 2>&1; echo \"exit=$?\""):format(ROOT, dir, ROOT))
    os.execute("rm -rf " .. dir)
    return out, tonumber(out:match("exit=(%d+)"))
  end

  it("passes good scripts", function()
    local out, code = check { ["a.lua"] = routes("v1") }
    assert.equal(0, code, out)
  end)

  it("catches a syntax error with file:line", function()
    local out, code = check { ["a.lua"] = routes("v1"), ["b.lua"] = "local x = = 1\n" }
    assert.equal(1, code)
    assert.matches("b%.lua:1:", out)
  end)

  it("catches a load error with file:line", function()
    local out, code = check { ["a.lua"] = "local sluice = require 'sluice'\nlocal app = sluice.app()\napp:get('/x', 42)\nreturn app\n" }
    assert.equal(1, code)
    assert.matches("a%.lua:3: GET /x: handler must be a function", out)
  end)

  it("catches a route conflict between scripts", function()
    local out, code = check { ["a.lua"] = routes("v1"), ["b.lua"] = routes("v2") }
    assert.equal(1, code)
    assert.matches("is already declared at [^\n]*a%.lua:%d+", out)
  end)
end)
