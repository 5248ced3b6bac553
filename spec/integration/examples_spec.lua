-- The apps and examples shipped in the repository load, and do what their
-- comments say.
local server = require "server"
local client = require "client"
local json = require "cjson"

local ROOT = os.getenv("SLUICE_ROOT") or "."

-- Starts the real binary on a copy of one of the repository's app dirs.
local function start_copy(dir, env)
  local tmp = server.tmpdir()
  os.execute(("mkdir -p %s/apps && cp %s/%s/*.lua %s/apps/"):format(tmp, ROOT, dir, tmp))
  return server.start { dir = tmp, env = env }
end

describe("shipped apps and examples", function()
  for _, dir in ipairs { "apps", "examples/orders", "examples/rollout" } do
    it(dir .. " passes sluice --check", function()
      local out = server.sh(("%s/sluice --check %s/%s --lua-path %s/lua 2>&1; echo \"exit=$?\"")
                            :format(ROOT, ROOT, dir, ROOT))
      assert.matches("exit=0", out)
    end)
  end

  it("apps/ (what make run serves) streams the clock and answers /health", function()
    local srv = start_copy("apps")
    assert.equal("ok\n", client.request(srv.port, "GET", "/health").body)
    local s = client.stream(srv.port, "/clock")
    local ev = s:next_event(3)
    assert.equal("tick", ev.event)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", ev.data)
    s:close()
    local room = client.stream(srv.port, "/rooms/spec")
    local r = client.request(srv.port, "POST", "/rooms/spec", {}, "hi there")
    assert.equal(1, json.decode(r.body).reached)
    assert.equal("hi there", room:next_event(2).data)
    room:close()
    srv:stop()
  end)

  it("examples/rollout serves the candidate from its own file, with its own view", function()
    local srv = start_copy("examples/rollout")
    local s = client.stream(srv.port, "/feed", { ["X-Traffic-Color"] = "green" })
    assert.equal("green", s.headers["x-variant"])
    assert.equal("you are on the green variant", s:next_event(2).data)
    local tick = s:next_event(3)
    assert.equal("tick", tick.event)
    assert.matches('"time":', tick.data)   -- the candidate's view renamed the field
    s:close()
    local stable = client.stream(srv.port, "/feed?user=someone-on-stable")
    if stable.headers["x-variant"] == "stable" then
      assert.matches('"at":', stable:next_event(3).data)
    end
    stable:close()
    srv:stop()
  end)

  it("examples/orders authorizes with a token from examples/token.lua", function()
    local srv = start_copy("examples/orders", "JWT_SECRET=spec-secret-0123456789")
    local token = server.sh(("cd %s && JWT_SECRET=spec-secret-0123456789 luajit examples/token.lua 42 customer")
                            :format(ROOT)):gsub("%s+$", "")
    assert.equal(401, client.request(srv.port, "GET", "/orders/42").status)
    local s = client.stream(srv.port, "/orders/42?access_token=" .. token)
    assert.equal(200, s.status)
    local r = client.request(srv.port, "POST", "/orders/42/events", { Authorization = "Bearer " .. token },
                             '{"status":"shipped"}')
    assert.equal(202, r.status)
    local ev = s:next_event(2)
    assert.equal("order", ev.event)
    assert.equal("shipped", json.decode(ev.data).status)
    s:close()
    srv:stop()
  end)
end)
