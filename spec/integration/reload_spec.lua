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

-- A script that answers GET path with body.
local function answer(path, body)
  return ([[
local sluice = require "sluice"
local app = sluice.app()
app:get("%s", function() return 200, "%s" end)
return app
]]):format(path, body)
end

describe("the reload debounce", function()
  local srv
  after_each(function() if srv then srv:stop() end srv = nil end)

  -- Editors, `git checkout` and deploy tools delete a file and write it
  -- again a moment later; the route must not disappear in between. Before
  -- the fix only the very first change waited for the quiet period: after
  -- one reload every change reloaded at once.
  it("keeps a script's routes while it is deleted and rewritten 50 ms later", function()
    srv = server.start {
      apps = { ["a.lua"] = answer("/a", "a0"), ["other.lua"] = answer("/other", "o0") },
      args = { "--reload-debounce", "0.3" },
    }
    -- A first reload, after which the bug showed.
    srv:write_app("other.lua", answer("/other", "o1"))
    local t0 = socket.gettime()
    repeat socket.sleep(0.02)
    until client.request(srv.port, "GET", "/other").body == "o1" or socket.gettime() - t0 > 3
    assert.equal("o1", client.request(srv.port, "GET", "/other").body)

    local polls, missing = 0, 0
    local function poll_for(seconds)
      local until_t = socket.gettime() + seconds
      repeat
        polls = polls + 1
        if client.request(srv.port, "GET", "/a").status ~= 200 then missing = missing + 1 end
        socket.sleep(0.005)
      until socket.gettime() > until_t
    end
    for round = 1, 6 do
      os.remove(srv.apps .. "/a.lua")
      poll_for(0.05)
      srv:write_app("a.lua", answer("/a", "a" .. round))
      poll_for(0.45)                -- past the quiet period: the reload is done
    end
    assert.equal(0, missing, ("%d of %d requests to /a failed while a.lua was rewritten"):format(missing, polls))
    assert.equal("a6", client.request(srv.port, "GET", "/a").body)
  end)

  it("waits for the quiet period after every change, not only the first", function()
    srv = server.start { apps = { ["a.lua"] = answer("/a", "a0") }, args = { "--reload-debounce", "0.5" } }
    for i = 1, 3 do
      srv:write_app("a.lua", answer("/a", "a" .. i))
      socket.sleep(0.15)
      -- Well inside the quiet period: still the previous version.
      assert.equal("a" .. (i - 1), client.request(srv.port, "GET", "/a").body,
                   ("change %d was applied before the quiet period ended"):format(i))
      local t0 = socket.gettime()
      repeat socket.sleep(0.02)
      until client.request(srv.port, "GET", "/a").body == "a" .. i or socket.gettime() - t0 > 3
      assert.equal("a" .. i, client.request(srv.port, "GET", "/a").body)
    end
  end)
end)

-- Releases deployed side by side and switched with a symbolic link
-- (`ln -sfn v2 tmp && mv -T tmp current`), as atomic deploys and
-- Kubernetes ConfigMap volumes do.
describe("a symbolically linked apps directory", function()
  local srv, dir
  local function sh(cmd)
    assert(os.execute(cmd) == 0, "failed: " .. cmd)
  end
  local function body(path)
    return client.request(srv.port, "GET", path).body
  end
  local function wait_body(path, want, timeout)
    local t0 = socket.gettime()
    while socket.gettime() - t0 < (timeout or 3) do
      if body(path) == want then return true end
      socket.sleep(0.05)
    end
    return body(path) == want
  end
  -- dir/releases/v1 and v2 each serve /v; link is what --apps names.
  local function releases(sub)
    dir = server.tmpdir()
    for i = 1, 2 do
      local d = ("%s/releases/v%d%s"):format(dir, i, sub or "")
      sh("mkdir -p " .. d)
      server.write_file(d .. "/app.lua", answer("/v", tostring(i)))
    end
  end
  local function swap(link, to)   -- exactly what deploy tools do
    sh(("cd %s && ln -sfn %s tmp-link && mv -T tmp-link %s"):format(dir, to, link))
  end
  after_each(function() if srv then srv:stop() end srv = nil end)

  it("reloads when the link is swapped to another release, and watches the new one", function()
    releases()
    sh(("ln -s releases/v1 %s/current"):format(dir))
    srv = server.start { dir = dir, apps_dir = dir .. "/current", args = { "--reload-debounce", "0.05" } }
    assert.equal("1", body("/v"))
    swap("current", "releases/v2")
    assert.is_true(wait_body("/v", "2"), "the swap to v2 was not picked up without a SIGHUP; log:\n" .. srv:log())
    -- The watch moved with the link: an edit inside v2 reloads...
    local tmp = dir .. "/releases/v2/.app.tmp"
    server.write_file(tmp, answer("/v", "2b"))
    os.rename(tmp, dir .. "/releases/v2/app.lua")
    assert.is_true(wait_body("/v", "2b"), "an edit inside the new release did not reload")
    -- ...and one inside the old release is not what is served.
    server.write_file(dir .. "/releases/v1/app.lua", answer("/v", "1b"))
    socket.sleep(0.3)
    assert.equal("2b", body("/v"))
  end)

  it("follows the link on SIGHUP when the swap itself cannot be seen", function()
    -- The link is above --apps (current/apps): no event names it, so the
    -- operator sends SIGHUP; from then on the new release is watched.
    releases("/apps")
    sh(("ln -s releases/v1 %s/current"):format(dir))
    srv = server.start { dir = dir, apps_dir = dir .. "/current/apps", args = { "--reload-debounce", "0.05" } }
    assert.equal("1", body("/v"))
    swap("current", "releases/v2")
    srv:signal("HUP")
    assert.is_true(wait_body("/v", "2"), "SIGHUP did not load the new release")
    local tmp = dir .. "/releases/v2/apps/.app.tmp"
    server.write_file(tmp, answer("/v", "2b"))
    os.rename(tmp, dir .. "/releases/v2/apps/app.lua")
    assert.is_true(wait_body("/v", "2b"),
      "after SIGHUP an edit inside the new release did not reload (the watch stayed on the old one)")
  end)

  it("reloads when a ConfigMap-style ..data link is swapped inside the directory", function()
    -- Kubernetes: apps/app.lua -> ..data/app.lua, ..data -> ..v1; an update
    -- writes ..v2 and renames a new ..data link over the old one.
    dir = server.tmpdir()
    local apps = dir .. "/apps"
    sh(("mkdir -p %s/..v1 %s/..v2"):format(apps, apps))
    server.write_file(apps .. "/..v1/app.lua", answer("/v", "1"))
    server.write_file(apps .. "/..v2/app.lua", answer("/v", "2"))
    sh(("cd %s && ln -s ..v1 ..data && ln -s ..data/app.lua app.lua"):format(apps))
    srv = server.start { dir = dir, apps_dir = apps, args = { "--reload-debounce", "0.05" } }
    assert.equal("1", body("/v"))
    sh(("cd %s && ln -s ..v2 ..data_tmp && mv -T ..data_tmp ..data"):format(apps))
    assert.is_true(wait_body("/v", "2"), "the ConfigMap-style swap was not picked up")
  end)
end)
